/**
 * The pull-through cache in process: a real Berth with users and a secret as the upstream (its Bearer token flow
 * is Docker Hub's), a second Berth with `mirrors:` in front of it, both on the filesystem, plain HTTP between them.
 * The upstream's requests are counted at its socket, so "one upstream GET per blob" is what the wire saw.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenIssuer } from '../../src/auth/tokens.js';
import { Users } from '../../src/auth/users.js';
import { MIRROR_DEFAULTS, type MirrorConfig } from '../../src/config/mirrors.js';
import { createApp } from '../../src/http/app.js';
import { Access } from '../../src/http/auth.js';
import { mirrorHook } from '../../src/http/mirror.js';
import { Mirror } from '../../src/mirror/mirror.js';
import { mirrorMetrics } from '../../src/mirror/metrics.js';
import { pruneMirror } from '../../src/mirror/prune.js';
import { Metrics } from '../../src/observability/metrics.js';
import { DEFAULT_NAMESPACE, paths } from '../../src/registry/paths.js';
import { Registry } from '../../src/registry/registry.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { basic, pushBlob, pushImage, sha256 } from '../helpers/server.js';

const log = pino({ level: process.env.BERTH_TEST_LOG ?? 'silent' });
const SECRET = 'f00dfeedc0ffee0123456789abcdef0123456789abcdef';
const UP = basic('up', 'up-password');

interface Served {
  url: string;
  requests: string[];
  /** `METHOD url status`, as each response finished. */
  answered: string[];
  close(): Promise<void>;
}

async function listen(handler: http.RequestListener): Promise<Served & { server: http.Server }> {
  const requests: string[] = [];
  const answered: string[] = [];
  const server = http.createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    res.once('finish', () => answered.push(`${req.method} ${req.url} ${res.statusCode}`));
    handler(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    server,
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    answered,
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

let dir: string;
let upstream: Served & { server: http.Server };
let mirror: Served;
let mirrorCore: Mirror;
let metrics: Metrics;

async function startMirror(config: Partial<MirrorConfig>[]): Promise<{ served: Served; core: Mirror; metrics: Metrics; root: string }> {
  const root = await mkdtemp(join(dir, 'mirror-'));
  const driver = await FilesystemDriver.open(root);
  const m = new Metrics();
  const full = config.map((c) => ({ registry: 'quay.io', url: upstream.url, username: 'up', password: 'up-password', tagTtl: 300, keep: MIRROR_DEFAULTS.keep, unprefixed: [] as string[], timeout: 5, maxBlobSize: MIRROR_DEFAULTS.maxBlobSize, maxFills: 4, maxFillsPerClient: 8, ...c }) as MirrorConfig);
  const core = new Mirror(full, driver, mirrorMetrics(m), log);
  const served = await listen(createApp(new Registry(driver), { log, metrics: m, mirror: mirrorHook(core) }));
  return { served, core, metrics: m, root };
}

/** Resolves once the cache holds the blob (a fill's storage write ends after its clients have their bytes). */
async function storedBlob(core: Mirror, digest: string, registry = 'quay.io'): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if ((await core.store.blobSize(registry, digest)) !== null) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`${digest} never reached the cache`);
}

/** Resolves once the cache holds the tag at `digest` (a fetched manifest is answered before it is written). */
async function storedTag(core: Mirror, name: string, tag: string, digest: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if ((await core.store.tag('quay.io', name, tag))?.digest === digest) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`${name}:${tag} never reached the cache`);
}

/** Blob GETs the upstream answered with the bytes (a first GET without a token gets 401 and no bytes). */
const blobGets = (s: Served, digest: string) => s.answered.filter((r) => r.startsWith('GET ') && r.includes(`/blobs/${digest} 200`)).length;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'berth-mirror-'));
  const upRoot = await mkdtemp(join(dir, 'up-'));
  const users = new Users([{ name: 'up', pass: 'up-password', access: 'write' }], DEFAULT_NAMESPACE, undefined, log);
  const access = new Access({ users, tokens: new TokenIssuer(SECRET, 'upstream'), defaultNamespace: DEFAULT_NAMESPACE, anonymousPull: false, log });
  upstream = await listen(createApp(new Registry(await FilesystemDriver.open(upRoot)), { log, access }));
  const started = await startMirror([{}]);
  mirror = started.served;
  mirrorCore = started.core;
  metrics = started.metrics;
});

afterAll(async () => {
  await mirror?.close();
  mirrorCore?.close();
  await upstream?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('pull-through cache against a Berth upstream with the Bearer flow', () => {
  it('a cold pull by prefixed name fetches once through the token flow; a warm one asks the upstream nothing', async () => {
    const layer = Buffer.alloc(300_000, 7);
    const image = await pushImage(upstream.url, 'org/app', 'v1', [layer], {}, UP);
    const before = upstream.requests.length;
    const res = await fetch(`${mirror.url}/v2/quay.io/org/app/manifests/v1`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(image.digest);
    expect(Buffer.from(await res.arrayBuffer()).equals(image.body)).toBe(true);
    const blob = await fetch(`${mirror.url}/v2/quay.io/org/app/blobs/${sha256(layer)}`);
    expect(blob.status).toBe(200);
    expect(Buffer.from(await blob.arrayBuffer()).equals(layer)).toBe(true);
    const cold = upstream.requests.slice(before);
    expect(cold.some((r) => r.startsWith('GET /auth/token'))).toBe(true);
    // The token was reused for the blob: one token request for the repository.
    expect(cold.filter((r) => r.startsWith('GET /auth/token')).length).toBe(1);

    // The client had its bytes before the cache finished storing them; a pull from now on is warm.
    await storedBlob(mirrorCore, sha256(layer));
    const warmFrom = upstream.requests.length;
    const again = await fetch(`${mirror.url}/v2/quay.io/org/app/manifests/v1`);
    expect(again.headers.get('docker-content-digest')).toBe(image.digest);
    const blob2 = await fetch(`${mirror.url}/v2/quay.io/org/app/blobs/${sha256(layer)}`);
    expect(Buffer.from(await blob2.arrayBuffer()).equals(layer)).toBe(true);
    const byDigest = await fetch(`${mirror.url}/v2/quay.io/org/app/manifests/${image.digest}`);
    expect(byDigest.status).toBe(200);
    // A range of a cached blob comes from the cache; one past its end is 416 with the size.
    const part = await fetch(`${mirror.url}/v2/quay.io/org/app/blobs/${sha256(layer)}`, { headers: { Range: 'bytes=100-199' } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes 100-199/${layer.length}`);
    expect(Buffer.from(await part.arrayBuffer()).equals(layer.subarray(100, 200))).toBe(true);
    const beyond = await fetch(`${mirror.url}/v2/quay.io/org/app/blobs/${sha256(layer)}`, { headers: { Range: `bytes=${layer.length}-` } });
    expect(beyond.status).toBe(416);
    expect(beyond.headers.get('content-range')).toBe(`bytes */${layer.length}`);
    expect(upstream.requests.length).toBe(warmFrom);
    const text = await metrics.registry.getSingleMetricAsString('berth_mirror_requests_total');
    expect(text).toMatch(/registry="quay.io",kind="manifest",result="hit"} 2/);
    expect(text).toMatch(/registry="quay.io",kind="blob",result="miss"} 1/);
  });

  it('an unknown tag upstream stays a 404 MANIFEST_UNKNOWN; a name outside any mirror is not sent upstream', async () => {
    const before = upstream.requests.length;
    const res = await fetch(`${mirror.url}/v2/quay.io/org/app/manifests/nope`);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { errors: { code: string }[] }).errors[0].code).toBe('MANIFEST_UNKNOWN');
    const local = await fetch(`${mirror.url}/v2/org/app/manifests/v1`);
    expect(local.status).toBe(404);
    expect(upstream.requests.slice(before).filter((r) => r.includes('/manifests/v1'))).toEqual([]);
  });

  it('a cold manifest is answered before its cached copy is written; misses by tag and by digest meanwhile share that fetch', async () => {
    const image = await pushImage(upstream.url, 'org/early', 'v1', [Buffer.alloc(1000, 3)], {}, UP);
    const fs = await FilesystemDriver.open(await mkdtemp(join(dir, 'mirror-held-')));
    // The cache's write of the manifest's bytes waits until released.
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const driver = new Proxy(fs, {
      get: (target, prop) =>
        prop === 'put'
          ? async (...args: Parameters<FilesystemDriver['put']>) => (args[0] === paths.mirrorBlobData('quay.io', image.digest) && (await released), target.put(...args))
          : Reflect.get(target, prop, target),
    });
    const core = new Mirror([{ registry: 'quay.io', url: upstream.url, username: 'up', password: 'up-password', tagTtl: 300, keep: MIRROR_DEFAULTS.keep, unprefixed: [], timeout: 5, maxBlobSize: MIRROR_DEFAULTS.maxBlobSize, maxFills: 4, maxFillsPerClient: 8 }], driver, mirrorMetrics(new Metrics()), log);
    const served = await listen(createApp(new Registry(driver), { log, mirror: mirrorHook(core) }));
    try {
      const manifestGets = () => upstream.answered.filter((r) => r.startsWith('GET /v2/org/early/manifests/') && r.endsWith(' 200')).length;
      const before = manifestGets();
      const cold = await fetch(`${served.url}/v2/quay.io/org/early/manifests/v1`);
      expect(cold.status).toBe(200);
      expect(Buffer.from(await cold.arrayBuffer()).equals(image.body)).toBe(true);
      expect(await core.store.readManifest('quay.io', image.digest)).toBeNull();
      // containerd asks by digest next; another client by tag: neither goes upstream again.
      const byDigest = fetch(`${served.url}/v2/quay.io/org/early/manifests/${image.digest}`);
      const byTag = fetch(`${served.url}/v2/quay.io/org/early/manifests/v1`);
      release();
      for (const r of await Promise.all([byDigest, byTag])) {
        expect(r.status).toBe(200);
        expect(Buffer.from(await r.arrayBuffer()).equals(image.body)).toBe(true);
      }
      expect(manifestGets() - before).toBe(1);
      // Written after the answers, not before them.
      let cached = await core.store.readManifest('quay.io', image.digest);
      for (let i = 0; i < 200 && !cached; i++) cached = await new Promise((r) => setTimeout(r, 25)).then(() => core.store.readManifest('quay.io', image.digest));
      expect(cached?.body.equals(image.body)).toBe(true);
    } finally {
      await served.close();
      await core.close();
    }
  });

  it('concurrent cold pulls of one blob share one upstream GET, and every client gets the bytes', async () => {
    const layer = Buffer.alloc(4 * 1024 * 1024);
    for (let i = 0; i < layer.length; i += 4096) layer[i] = i % 251;
    const digest = await pushBlob(upstream.url, 'org/big', layer, UP);
    await pushImage(upstream.url, 'org/big', 'v1', [layer], {}, UP);
    const bodies = await Promise.all(Array.from({ length: 6 }, () => fetch(`${mirror.url}/v2/quay.io/org/big/blobs/${digest}`).then(async (r) => ({ status: r.status, body: Buffer.from(await r.arrayBuffer()) }))));
    for (const b of bodies) {
      expect(b.status).toBe(200);
      expect(sha256(b.body)).toBe(digest);
    }
    expect(blobGets(upstream, digest)).toBe(1);
  });

  it('a client that disconnects mid-fill does not abort it: the blob is cached for the next one', async () => {
    const layer = Buffer.alloc(8 * 1024 * 1024, 3);
    layer.write('unique-disconnect', 0);
    const digest = await pushBlob(upstream.url, 'org/cut', layer, UP);
    await new Promise<void>((resolve, reject) => {
      const req = http.get(`${mirror.url}/v2/quay.io/org/cut/blobs/${digest}`, (res) => {
        res.once('data', () => {
          req.destroy();
          resolve();
        });
      });
      req.on('error', () => {});
      req.on('close', () => resolve());
      setTimeout(() => reject(new Error('no first byte')), 5000);
    });
    // The fill goes on alone; poll the cache until it is there (each poll is a hit or joins/waits on the fill).
    const res = await fetch(`${mirror.url}/v2/quay.io/org/cut/blobs/${digest}`);
    expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(digest);
    expect(blobGets(upstream, digest)).toBe(1);
    for (let i = 0; i < 50 && (await mirrorCore.store.blobSize('quay.io', digest)) === null; i++) await new Promise((r) => setTimeout(r, 100));
    expect(await mirrorCore.store.blobSize('quay.io', digest)).toBe(layer.length);
  });

  it('local content wins: a manifest pushed to the mirrored name is served without asking upstream; the push stays local', async () => {
    const image = await pushImage(mirror.url, 'quay.io/org/app', 'v1', [Buffer.from('local layer')]);
    const before = upstream.requests.length;
    const res = await fetch(`${mirror.url}/v2/quay.io/org/app/manifests/v1`);
    expect(res.headers.get('docker-content-digest')).toBe(image.digest);
    expect(upstream.requests.length).toBe(before);
    // Nothing was pushed upstream.
    const up = await fetch(`${upstream.url}/v2/org/app/manifests/v1`, { headers: UP });
    expect(up.headers.get('docker-content-digest')).not.toBe(image.digest);
  });
});

describe('caps', () => {
  it('a client address may start max-fills-per-client fills at once; the next gets 429 while they run', async () => {
    const big = Buffer.alloc(24 * 1024 * 1024, 1);
    big.write('per-client cap', 0);
    const small = Buffer.from('per-client cap, second blob');
    const [bigDigest, smallDigest] = [await pushBlob(upstream.url, 'org/caps', big, UP), await pushBlob(upstream.url, 'org/caps', small, UP)];
    const started = await startMirror([{ maxFillsPerClient: 1 }]);
    try {
      // A client that does not read: its fill is held by backpressure, and still counts.
      let first: http.IncomingMessage | undefined;
      const req = http.get(`${started.served.url}/v2/quay.io/org/caps/blobs/${bigDigest}`, (res) => {
        first = res;
        res.pause();
      });
      req.on('error', () => {});
      for (let i = 0; i < 100 && !first; i++) await new Promise((r) => setTimeout(r, 50));
      expect(first?.statusCode).toBe(200);
      const second = await fetch(`${started.served.url}/v2/quay.io/org/caps/blobs/${smallDigest}`);
      expect(second.status).toBe(429);
      expect(((await second.json()) as { errors: { code: string }[] }).errors[0].code).toBe('TOOMANYREQUESTS');
      first!.resume();
      await new Promise((r) => first!.on('end', r));
      for (let i = 0; i < 50; i++) {
        const again = await fetch(`${started.served.url}/v2/quay.io/org/caps/blobs/${smallDigest}`);
        if (again.status === 200) {
          expect(Buffer.from(await again.arrayBuffer()).equals(small)).toBe(true);
          return;
        }
        await again.arrayBuffer();
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error('the second fill never started after the first ended');
    } finally {
      await started.served.close();
      started.core.close();
    }
  });
});

describe('prune beside a fill', () => {
  it('a prune that runs while a fill is held (even one that judges everything expired) leaves the blob whole or absent, never half', async () => {
    const big = Buffer.alloc(24 * 1024 * 1024, 2);
    big.write('prune beside a fill', 0);
    const digest = await pushBlob(upstream.url, 'org/prunefill', big, UP);
    const started = await startMirror([{}]);
    try {
      let held: http.IncomingMessage | undefined;
      const req = http.get(`${started.served.url}/v2/quay.io/org/prunefill/blobs/${digest}`, (res) => {
        held = res;
        res.pause();
      });
      req.on('error', () => {});
      for (let i = 0; i < 100 && !held; i++) await new Promise((r) => setTimeout(r, 50));
      const driver = await FilesystemDriver.open(started.root);
      const quiet = { debug() {}, info() {}, warn() {} };
      const config = { registry: 'quay.io', url: upstream.url, tagTtl: 300, keep: 60, unprefixed: [], timeout: 5, maxBlobSize: MIRROR_DEFAULTS.maxBlobSize, maxFills: 4, maxFillsPerClient: 8 } as MirrorConfig;
      // Now: the fill's touch is fresh, so it is kept. An hour later: everything looks expired and is swept.
      expect((await pruneMirror(driver, config, { log: quiet })).blobs.deleted).toBe(0);
      await pruneMirror(driver, config, { log: quiet, now: new Date(Date.now() + 3600_000) });
      held!.resume();
      const chunks: Buffer[] = [];
      for await (const c of held!) chunks.push(c as Buffer);
      expect(sha256(Buffer.concat(chunks))).toBe(digest);
      // Whatever the cache holds now is the whole blob, or nothing (and then the next pull fetches it again).
      const stored = await started.core.store.blobSize('quay.io', digest);
      expect([null, big.length]).toContain(stored);
      const again = await fetch(`${started.served.url}/v2/quay.io/org/prunefill/blobs/${digest}`);
      expect(sha256(Buffer.from(await again.arrayBuffer()))).toBe(digest);
    } finally {
      await started.served.close();
      started.core.close();
    }
  });
});

describe('tags, TTL and a failing upstream', () => {
  it('a moved tag is fetched again after the TTL; with the upstream gone, the cached tag is served stale and blobs still come', async () => {
    const started = await startMirror([{ tagTtl: 0 }]);
    try {
      const layer = Buffer.from('first layer of moving');
      const first = await pushImage(upstream.url, 'org/moving', 'latest', [layer], {}, UP);
      const get = () => fetch(`${started.served.url}/v2/quay.io/org/moving/manifests/latest`);
      expect((await get()).headers.get('docker-content-digest')).toBe(first.digest);
      await storedTag(started.core, 'org/moving', 'latest', first.digest);
      // Same digest: one HEAD revalidates, nothing is fetched again.
      const before = upstream.requests.length;
      expect((await get()).headers.get('docker-content-digest')).toBe(first.digest);
      expect(upstream.requests.slice(before).filter((r) => !r.startsWith('GET /auth/'))).toEqual(['HEAD /v2/org/moving/manifests/latest']);
      const second = await pushImage(upstream.url, 'org/moving', 'latest', [Buffer.from('second layer of moving')], {}, UP);
      expect((await get()).headers.get('docker-content-digest')).toBe(second.digest);
      await storedTag(started.core, 'org/moving', 'latest', second.digest);

      // Warm the blob, then stop the upstream.
      const blob = await fetch(`${started.served.url}/v2/quay.io/org/moving/blobs/${sha256(Buffer.from('second layer of moving'))}`);
      expect(blob.status).toBe(200);
      await blob.arrayBuffer();
      const port = new URL(upstream.url).port;
      await upstream.close();
      try {
        const stale = await get();
        expect(stale.status).toBe(200);
        expect(stale.headers.get('docker-content-digest')).toBe(second.digest);
        const warm = await fetch(`${started.served.url}/v2/quay.io/org/moving/blobs/${sha256(Buffer.from('second layer of moving'))}`);
        expect(Buffer.from(await warm.arrayBuffer()).toString()).toBe('second layer of moving');
        const cold = await fetch(`${started.served.url}/v2/quay.io/org/moving/manifests/never-pulled`);
        expect(cold.status).toBe(503);
        const text = await started.metrics.registry.getSingleMetricAsString('berth_mirror_requests_total');
        expect(text).toMatch(/result="stale"} 1/);
        expect(text).toMatch(/result="revalidated"} 1/);
      } finally {
        upstream.server.listen(Number(port), '127.0.0.1');
        await new Promise((resolve) => upstream.server.once('listening', resolve));
      }
    } finally {
      await started.served.close();
      started.core.close();
    }
  });

  it('a namespace the upstream is not allowed for sees only its own names; docker.io unprefixed names only where opted in', async () => {
    const layer = Buffer.from('hub layer');
    const image = await pushImage(upstream.url, 'library/hubby', 'v1', [layer], {}, UP);
    const started = await startMirror([{ registry: 'docker.io', unprefixed: ['_local'] }, { registry: 'quay.io', namespaces: ['elsewhere'] }]);
    try {
      const before = upstream.requests.length;
      expect((await fetch(`${started.served.url}/v2/quay.io/library/hubby/manifests/v1`)).status).toBe(404);
      expect(upstream.requests.length).toBe(before);
      for (const name of ['hubby', 'library/hubby', 'docker.io/hubby', 'docker.io/library/hubby']) {
        const res = await fetch(`${started.served.url}/v2/${name}/manifests/v1`);
        expect(res.headers.get('docker-content-digest'), name).toBe(image.digest);
      }
      const ns = await fetch(`${started.served.url}/v2/docker.io/library/hubby/manifests/v1?ns=docker.io`);
      expect(ns.headers.get('docker-content-digest')).toBe(image.digest);
    } finally {
      await started.served.close();
      started.core.close();
    }
  });

  it('nothing of the upstream login reaches the client or the cache', async () => {
    const res = await fetch(`${mirror.url}/v2/quay.io/org/app/manifests/nope`);
    const text = JSON.stringify([...res.headers]) + (await res.text());
    expect(text).not.toMatch(/up-password|Basic |Bearer /);
    const files = await readdir(dir, { recursive: true });
    expect(files.join('\n')).not.toMatch(/token/);
  });
});

describe('tenancy', () => {
  it("a tenant's local push is served to that tenant only; another tenant gets the upstream's, and cannot reach a disallowed upstream", async () => {
    const upImage = await pushImage(upstream.url, 'org/shared', 'v1', [Buffer.from('upstream layer of shared')], {}, UP);
    const root = await mkdtemp(join(dir, 'tenants-'));
    const driver = await FilesystemDriver.open(root);
    const users = new Users(
      [
        { name: 'alice', pass: 'alice-pw', access: 'write', namespace: 'team-a' },
        { name: 'bob', pass: 'bob-pw', access: 'write', namespace: 'team-b' },
      ],
      DEFAULT_NAMESPACE,
      undefined,
      log,
    );
    const access = new Access({ users, tokens: new TokenIssuer(SECRET, 'mirror'), defaultNamespace: DEFAULT_NAMESPACE, log });
    const base = { url: upstream.url, username: 'up', password: 'up-password', tagTtl: 300, keep: MIRROR_DEFAULTS.keep, unprefixed: [] as string[], timeout: 5, maxBlobSize: MIRROR_DEFAULTS.maxBlobSize, maxFills: 4, maxFillsPerClient: 8 };
    const core = new Mirror([{ ...base, registry: 'quay.io' }, { ...base, registry: 'ghcr.io', namespaces: ['team-a'] }], driver, mirrorMetrics(undefined), log);
    const served = await listen(createApp(new Registry(driver), { log, access, mirror: mirrorHook(core) }));
    const alice = basic('alice', 'alice-pw');
    const bob = basic('bob', 'bob-pw');
    const digest = async (path: string, headers: Record<string, string>) => {
      const res = await fetch(`${served.url}/v2/${path}`, { headers });
      return res.status === 200 ? res.headers.get('docker-content-digest') : res.status;
    };
    try {
      const secretLayer = Buffer.from("alice's private layer");
      const local = await pushImage(served.url, 'quay.io/org/shared', 'v1', [secretLayer], {}, alice);
      expect(await digest('quay.io/org/shared/manifests/v1', alice)).toBe(local.digest);
      expect(await digest('quay.io/org/shared/manifests/v1', bob)).toBe(upImage.digest);
      // Alice's blob is neither in Bob's namespace nor upstream.
      expect(await digest(`quay.io/org/shared/blobs/${sha256(secretLayer)}`, bob)).toBe(404);
      // Bob's push to a mirrored name lands in his namespace, not in the cache Alice reads.
      const bobs = await pushImage(served.url, 'quay.io/org/shared', 'v2', [Buffer.from("bob's layer")], {}, bob);
      expect(await digest('quay.io/org/shared/manifests/v2', bob)).toBe(bobs.digest);
      expect(await digest('quay.io/org/shared/manifests/v2', alice)).toBe(404);
      // ghcr.io is for team-a only: Bob's name is an ordinary (missing) local name, and the upstream is not asked.
      const before = upstream.requests.length;
      expect(await digest('ghcr.io/org/shared/manifests/v1', bob)).toBe(404);
      expect(upstream.requests.length).toBe(before);
      expect(await digest('ghcr.io/org/shared/manifests/v1', alice)).toBe(upImage.digest);
      // Without credentials: refused before anything is looked up.
      expect(await digest('quay.io/org/shared/manifests/v1', {})).toBe(401);
    } finally {
      await served.close();
      core.close();
    }
  });
});
