/**
 * The pull-through cache with real parts: `berth serve` with `mirrors:` in front of Debian's CNCF Distribution 2.8
 * (htpasswd, Basic auth) behind tools/fault-proxy.mjs, and of a second `berth serve` with users and a secret (the
 * Bearer token flow), pulled by skopeo. Distribution's own access log counts the upstream GETs.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import bcrypt from 'bcryptjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blobDigest, writeLayout, writeTarLayout, type LayoutImage } from '../helpers/oci-layout.js';
import { runResult, startDockerd } from '../helpers/docker.js';
import { spawnServe, type ServeProcess } from '../helpers/server.js';
import { BACKENDS, storageYaml, swiftRaw } from '../helpers/swift.js';

const run = promisify(execFile);
const skopeo = (...args: string[]) => run('skopeo', ['--insecure-policy', ...args], { maxBuffer: 1 << 24, timeout: 60_000 });
const HAVE_DISTRIBUTION = existsSync('/usr/bin/docker-registry');
const SECRET = 'e2e-mirror-secret-0123456789abcdef0123456789';

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

async function waitHttp(url: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (await fetch(url).then(() => true, () => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} never answered`);
}

function stop(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

/** Distribution with htpasswd on a port, logging every response as JSON; `gets(digest)` counts blob GETs it answered 200. */
async function startDistribution(dir: string, port: number) {
  const hash = bcrypt.hashSync('dist-pw', 8);
  await writeFile(join(dir, 'htpasswd'), `dist:${hash}\n`);
  const file = join(dir, 'dist.yml');
  await writeFile(
    file,
    `version: 0.1\nlog: {level: info, formatter: json, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: ${dir}/dist-data}, delete: {enabled: true}}\n` +
      `http: {addr: "127.0.0.1:${port}"}\nauth: {htpasswd: {realm: dist, path: ${dir}/htpasswd}}\n`,
  );
  let log = '';
  const child = spawn('/usr/bin/docker-registry', ['serve', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (d) => (log += d));
  child.stderr!.on('data', (d) => (log += d));
  await waitHttp(`http://127.0.0.1:${port}/v2/`);
  return {
    child,
    gets: (digest: string) =>
      log.split('\n').filter((l) => l.includes('"response completed"') && l.includes('"http.request.method":"GET"') && l.includes(`/blobs/${digest}"`) && l.includes('"http.response.status":200')).length,
  };
}

async function startProxy(upstreamPort: number): Promise<{ child: ChildProcess; port: number; faults(rates: object): Promise<void> }> {
  const child = spawn(process.execPath, ['tools/fault-proxy.mjs', '--port', '0', '--upstream', `http://127.0.0.1:${upstreamPort}`, '--match', '^/v2/.+/blobs/sha256:'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => {
      out += d;
      const m = /listening on port (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`fault-proxy exited ${code}`)));
  });
  const faults = async (rates: object) => void (await (await fetch(`http://127.0.0.1:${port}/__faults`, { method: 'POST', body: JSON.stringify(rates) })).arrayBuffer());
  return { child, port, faults };
}

/** Manifest pulls the mirror answered for an upstream, whatever the result (its metrics). */
async function mirrored(server: ServeProcess, registry: string): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const re = new RegExp(`^berth_mirror_requests_total\\{registry="${registry.replace('.', '\\.')}",kind="manifest",result="[a-z]+"\\} (\\d+)$`, 'gm');
  return [...text.matchAll(re)].reduce((n, m) => n + Number(m[1]), 0);
}

const digestOf = async (url: string) => (await fetch(url, { method: 'HEAD' })).headers.get('docker-content-digest');

let dir: string;
let bearerUp: ServeProcess;
let bearerImage: LayoutImage;
/** A docker.io-style image that only the stand-in for Docker Hub (the Bearer upstream) holds. */
let hubImage: LayoutImage & { configDigest: string };
/** One private Docker engine for the file, started by the first dockerd case. */
let dockerd: Awaited<ReturnType<typeof startDockerd>> | undefined;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'berth-e2e-mirror-'));
  bearerUp = await spawnServe(
    `registry:\n  address: 127.0.0.1\n  port: 0\n  secret: ${SECRET}\n  anonymous-pull: false\n  users:\n    - {name: up, pass: up-pw, access: write}\n  storage: {driver: filesystem, root: ${dir}/bearer-data}\n`,
    dir,
  );
  bearerImage = await writeLayout(join(dir, 'bearer-src'), 'v1', [200_000, 3000]);
  await skopeo('copy', '--dest-tls-verify=false', '--dest-creds', 'up:up-pw', `oci:${bearerImage.dir}:v1`, `docker://127.0.0.1:${bearerUp.port}/team/tool:v1`);
  hubImage = await writeTarLayout(join(dir, 'hub-src'), 'v1', [3000]);
  await skopeo('copy', '--dest-tls-verify=false', '--dest-creds', 'up:up-pw', `oci:${hubImage.dir}:v1`, `docker://127.0.0.1:${bearerUp.port}/library/hubimg:v1`);
}, 60_000);

afterAll(async () => {
  await dockerd?.stop();
  await bearerUp?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe.skipIf(!HAVE_DISTRIBUTION).each(BACKENDS)('berth serve as a pull-through cache (%s)', (backend) => {
  let work: string;
  let dist: Awaited<ReturnType<typeof startDistribution>>;
  let proxy: Awaited<ReturnType<typeof startProxy>>;
  let mirror: ServeProcess;
  let storage: { yaml: string; cleanup(): Promise<void> };
  let image: LayoutImage;
  const distPort = { value: 0 };
  const ref = (name: string) => `docker://127.0.0.1:${mirror.port}/${name}`;
  const pull = (name: string, out: string) => skopeo('copy', '--src-tls-verify=false', ref(name), `oci:${join(work, out)}:x`);
  const seed = (img: LayoutImage, name: string) => skopeo('copy', '--dest-tls-verify=false', '--dest-creds', 'dist:dist-pw', `oci:${img.dir}:${img.tag}`, `docker://127.0.0.1:${distPort.value}/${name}`);
  /** Whether the mirror's storage holds the blob (a file, or a Swift object). */
  let cachedObject: (digest: string) => Promise<boolean>;
  const cachedSoon = async (digest: string) => {
    for (let i = 0; i < 150 && !(await cachedObject(digest)); i++) await new Promise((r) => setTimeout(r, 100));
    return cachedObject(digest);
  };

  beforeAll(async () => {
    work = await mkdtemp(join(dir, `${backend}-`));
    distPort.value = await freePort();
    dist = await startDistribution(work, distPort.value);
    proxy = await startProxy(distPort.value);
    storage = await storageYaml(backend, work);
    // On Swift, 1 MiB objects: the 1.5 MB layer is stored as parts joined by an SLO, as a large layer would be.
    // and cached blobs are answered with redirects to temp URLs, as pushed ones are with temp-url-key.
    if (backend === 'swift') storage.yaml += '    segment-size: 1048576\n    temp-url-key: e2e-mirror-temp-url-key-0123456789\n';
    const container = /container: (\S+)/.exec(storage.yaml)?.[1];
    cachedObject = async (digest) => {
      const path = `mirror.cache/quay.io/blobs/${digest}/data`;
      if (backend === 'filesystem') return existsSync(join(work, 'data', path));
      const res = await swiftRaw(`${container}/${path}`, { method: 'HEAD' });
      return res.status === 200;
    };
    // The Distribution password comes through a placeholder, as a deployment would pass it.
    process.env.ZUUL_REGISTRY_DIST_PW = 'dist-pw';
    mirror = await spawnServe(
      `registry:\n  address: 127.0.0.1\n  port: 0\n${storage.yaml}  mirrors:\n` +
        `    - {registry: quay.io, url: "http://127.0.0.1:${proxy.port}", username: dist, password: "%(ZUUL_REGISTRY_DIST_PW)", tag-ttl: 1, timeout: 5}\n` +
        `    - {registry: ghcr.io, url: "http://127.0.0.1:${bearerUp.port}", username: up, password: up-pw}\n` +
        `    - {registry: docker.io, url: "http://127.0.0.1:${bearerUp.port}", username: up, password: up-pw, unprefixed: true}\n`,
      work,
    );
    image = await writeLayout(join(work, 'src'), 'v1', [1_500_000, 40_000]);
    await seed(image, 'org/app:v1');
  }, 60_000);

  afterAll(async () => {
    await mirror?.stop();
    await stop(proxy.child);
    await stop(dist.child);
    await storage?.cleanup();
  });

  it('a mirroring process streams 64 MiB to itself before it listens (its first fill is not its first transfer); the upstream Berth, without mirrors, does not', () => {
    const warmUps = (server: ServeProcess) =>
      server
        .output()
        .split('\n')
        .filter((l) => l.includes('"mirror: stream path warmed up"'))
        .map((l) => {
          const { bytes, ms } = JSON.parse(l) as { bytes: number; ms: number };
          return { bytes, ms };
        });
    expect(warmUps(mirror)).toEqual([{ bytes: 64 << 20, ms: expect.any(Number) }]);
    expect(warmUps(bearerUp)).toEqual([]);
  });

  it('skopeo copies by prefixed name, cold then warm: the digests are the upstream ones and the warm copy asks the upstream for no blob', async () => {
    await pull('quay.io/org/app:v1', 'cold');
    for (const d of image.layerDigests) expect(await blobDigest(join(work, 'cold'), d)).toBe(d);
    expect(JSON.parse(await readFile(join(work, 'cold', 'index.json'), 'utf8')).manifests[0].digest).toBe(image.manifestDigest);
    for (const d of image.layerDigests) expect(dist.gets(d)).toBe(1);
    await pull('quay.io/org/app:v1', 'warm');
    for (const d of image.layerDigests) expect(dist.gets(d)).toBe(1);
    // Stored at a quiet moment (a second after the last client of any fill read): polled, not assumed at once.
    for (const d of image.layerDigests) expect(await cachedSoon(d)).toBe(true);
    if (backend === 'swift') {
      // The 1.5 MB layer over 1 MiB objects: parts joined by an SLO, through the driver's concat.
      const container = /container: (\S+)/.exec(storage.yaml)![1];
      const head = await swiftRaw(`${container}/mirror.cache/quay.io/blobs/${image.layerDigests[0]}/data`, { method: 'HEAD' });
      expect(head.headers.get('x-static-large-object')).toBe('True');
      const redirect = await fetch(`${mirror.url}/v2/quay.io/org/app/blobs/${image.layerDigests[0]}`, { redirect: 'manual' });
      expect(redirect.status).toBe(307);
      expect(redirect.headers.get('location')).toMatch(/temp_url_sig=/);
    }
  });

  // What does not depend on the backend is defined for the filesystem only (the suite stays well under 90 s): not
  // skipped on Swift, simply not a Swift case.
  const fsOnly: (name: string, fn: () => Promise<void>) => void = backend === 'swift' ? () => {} : (name, fn) => it(name, fn);

  fsOnly('the Bearer flow of a Berth upstream with users: cold and warm copies of ghcr.io/team/tool', async () => {
    await pull('ghcr.io/team/tool:v1', 'bearer-cold');
    await pull('ghcr.io/team/tool:v1', 'bearer-warm');
    for (const d of bearerImage.layerDigests) expect(await blobDigest(join(work, 'bearer-warm'), d)).toBe(d);
  });

  it("podman with zuul-jobs' registries.conf: quay.io through HOST/quay.io, docker.io unprefixed through HOST", async () => {
    // podman refuses a runroot longer than 50 characters: a short directory of its own.
    const pdir = await mkdtemp(join(tmpdir(), 'bm-pod-'));
    const quay = await writeTarLayout(join(work, 'podman-src'), 'v1', [5000]);
    await seed(quay, 'org/podman:v1');
    const block = (registry: string, location: string) =>
      `[[registry]]\nprefix = "${registry}"\nlocation = "${registry}"\n[[registry.mirror]]\nlocation = "${location}"\ninsecure = true\n[[registry.mirror]]\nlocation = "${registry}"\n`;
    const host = `127.0.0.1:${mirror.port}`;
    await writeFile(join(pdir, 'registries.conf'), `unqualified-search-registries = ["docker.io"]\n\n${block('docker.io', host)}\n${block('quay.io', `${host}/quay.io`)}`);
    await writeFile(join(pdir, 'auth.json'), '{}');
    const podman = (...args: string[]) =>
      runResult('podman', ['--root', `${pdir}/root`, '--runroot', `${pdir}/run`, '--storage-driver', 'vfs', ...args], {
        CONTAINERS_REGISTRIES_CONF: join(pdir, 'registries.conf'),
        REGISTRY_AUTH_FILE: join(pdir, 'auth.json'),
      }, 60_000);
    try {
      const q = await podman('pull', 'quay.io/org/podman:v1');
      expect(q.code, q.stderr).toBe(0);
      const hub = await podman('pull', 'hubimg:v1');
      expect(hub.code, hub.stderr).toBe(0);
      const images = (await podman('images', '--format', '{{.Repository}}:{{.Tag}} {{.Digest}}')).stdout;
      expect(images).toContain(`quay.io/org/podman:v1 ${quay.manifestDigest}`);
      expect(images).toContain(`docker.io/library/hubimg:v1 ${hubImage.manifestDigest}`);
    } finally {
      await podman('rmi', '-a', '-f');
      await rm(pdir, { recursive: true, force: true });
    }
  });

  it("containerd with zuul-jobs' hosts.toml: /v2/quay.io and /v2/docker.io with override_path (and ?ns=)", async () => {
    const cdir = await mkdtemp(join(tmpdir(), 'bm-ctr-'));
    const socket = join(cdir, 'c.sock');
    const ctr = (...args: string[]) => runResult('ctr', ['--address', socket, '--namespace', 'berth-mirror', ...args], undefined, 60_000);
    const quay = await writeTarLayout(join(work, 'ctr-src'), 'v1', [6000]);
    await seed(quay, 'org/ctr:v1');
    const hosts = (registry: string) =>
      `server = "https://${registry}"\n\n[host."http://127.0.0.1:${mirror.port}/v2/${registry}"]\n  capabilities = ["pull", "resolve"]\n  override_path = true\n`;
    for (const r of ['quay.io', 'docker.io']) {
      await runResult('mkdir', ['-p', join(cdir, 'hosts', r)]);
      await writeFile(join(cdir, 'hosts', r, 'hosts.toml'), hosts(r));
    }
    await writeFile(join(cdir, 'config.toml'), `version = 2\nroot = "${cdir}/root"\nstate = "${cdir}/state"\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "${socket}"\n`);
    const containerd = spawn('containerd', ['--config', join(cdir, 'config.toml')], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 100 && (await ctr('version')).code !== 0; i++) await new Promise((r) => setTimeout(r, 100));
      const opts = ['--hosts-dir', join(cdir, 'hosts'), '--snapshotter', 'native'];
      const q = await ctr('images', 'pull', ...opts, 'quay.io/org/ctr:v1');
      expect(q.code, q.stderr).toBe(0);
      const hub = await ctr('images', 'pull', ...opts, 'docker.io/library/hubimg:v1');
      expect(hub.code, hub.stderr).toBe(0);
      const listed = (await ctr('images', 'ls')).stdout;
      expect(listed).toMatch(new RegExp(`quay.io/org/ctr:v1\\s+\\S+\\s+${quay.manifestDigest}`));
      expect(listed).toMatch(new RegExp(`docker.io/library/hubimg:v1\\s+\\S+\\s+${hubImage.manifestDigest}`));
    } finally {
      await stop(containerd);
      await rm(cdir, { recursive: true, force: true });
    }
  });

  it('dockerd with registry-mirrors: an unprefixed docker.io name only the stand-in upstream holds, through the mirror (unprefixed: true)', async () => {
    // One engine for both backends (its start is the slow part): pointed at this backend's mirror by a reload.
    dockerd ??= await startDockerd({});
    await dockerd.configure({ 'registry-mirrors': [`http://127.0.0.1:${mirror.port}`] });
    await dockerd.dockerResult(['image', 'rm', '-f', 'hubimg:v1']);
    const before = await mirrored(mirror, 'docker.io');
    const pull = await dockerd.dockerResult(['pull', 'hubimg:v1']);
    expect(pull.code, pull.stderr).toBe(0);
    const inspect = await dockerd.docker(['image', 'inspect', '--format', '{{.Id}} {{json .RepoDigests}}', 'hubimg:v1']);
    expect(inspect.stdout).toContain(hubImage.configDigest);
    expect(inspect.stdout).toContain(hubImage.manifestDigest);
    // Through the mirror's docker.io upstream, not from a copy the engine already had.
    expect(await mirrored(mirror, 'docker.io')).toBeGreaterThan(before);
  });

  fsOnly('six concurrent cold pulls of one image: the upstream answers one GET per blob', async () => {
    const fresh = await writeLayout(join(work, 'conc-src'), 'v1', [800_000, 600_000]);
    await seed(fresh, 'org/conc:v1');
    await Promise.all(Array.from({ length: 6 }, (_, i) => pull('quay.io/org/conc:v1', `conc-${i}`)));
    for (let i = 0; i < 6; i++) for (const d of fresh.layerDigests) expect(await blobDigest(join(work, `conc-${i}`), d)).toBe(d);
    for (const d of fresh.layerDigests) expect(dist.gets(d)).toBe(1);
  });

  fsOnly('a local push to the mirrored name shadows the upstream, and is not pushed upstream', async () => {
    const local = await writeLayout(join(work, 'local-src'), 'v1', [5000]);
    await skopeo('copy', '--dest-tls-verify=false', `oci:${local.dir}:v1`, ref('quay.io/org/app:v1'));
    expect(await digestOf(`${mirror.url}/v2/quay.io/org/app/manifests/v1`)).toBe(local.manifestDigest);
    await pull('quay.io/org/app:v1', 'shadow');
    expect(await blobDigest(join(work, 'shadow'), local.layerDigests[0])).toBe(local.layerDigests[0]);
    const up = await fetch(`http://127.0.0.1:${distPort.value}/v2/org/app/manifests/v1`, { method: 'HEAD', headers: { Authorization: `Basic ${Buffer.from('dist:dist-pw').toString('base64')}`, Accept: 'application/vnd.oci.image.manifest.v1+json' } });
    expect(up.headers.get('docker-content-digest')).toBe(image.manifestDigest);
  });

  it('a corrupting upstream: the client connection is cut, nothing is stored, and a clean retry fetches again', async () => {
    const bad = await writeLayout(join(work, 'bad-src'), 'v1', [2_000_000]);
    await seed(bad, 'org/bad:v1');
    const layer = bad.layerDigests[0];
    await proxy.faults({ flip: 1 });
    try {
      const res = await fetch(`${mirror.url}/v2/quay.io/org/bad/blobs/${layer}`);
      expect(res.status).toBe(200);
      await expect(res.arrayBuffer()).rejects.toThrow();
    } finally {
      await proxy.faults({ off: true });
    }
    expect(await cachedObject(layer)).toBe(false);
    const again = await fetch(`${mirror.url}/v2/quay.io/org/bad/blobs/${layer}`);
    const body = Buffer.from(await again.arrayBuffer());
    expect(body.length).toBe(Number(again.headers.get('content-length')));
    // Distribution writes its access-log line after the answer: it may reach us a moment after the body.
    for (let i = 0; i < 40 && dist.gets(layer) < 2; i++) await new Promise((r) => setTimeout(r, 50));
    expect(dist.gets(layer)).toBe(2);
  });

  fsOnly('a tag moved upstream is served with its new digest after the TTL', async () => {
    const moved = await writeLayout(join(work, 'moved-src'), 'v1', [7000]);
    await seed(moved, 'org/moving:v1');
    expect(await digestOf(`${mirror.url}/v2/quay.io/org/moving/manifests/v1`)).toBe(moved.manifestDigest);
    const next = await writeLayout(join(work, 'moved2-src'), 'v1', [8000]);
    await seed(next, 'org/moving:v1');
    await new Promise((r) => setTimeout(r, 1100));
    expect(await digestOf(`${mirror.url}/v2/quay.io/org/moving/manifests/v1`)).toBe(next.manifestDigest);
  });

  it('with the upstream stopped after warming, pulls still work and the tag is served stale; berth prune reports the cache', async () => {
    const warm = await writeLayout(join(work, 'warm-src'), 'v1', [300_000]);
    await seed(warm, 'org/warm:v1');
    await pull('quay.io/org/warm:v1', 'before-stop');
    await stop(dist.child);
    await new Promise((r) => setTimeout(r, 1100));
    await pull('quay.io/org/warm:v1', 'after-stop');
    expect(await blobDigest(join(work, 'after-stop'), warm.layerDigests[0])).toBe(warm.layerDigests[0]);
    const metrics = await (await fetch(`${mirror.url}/metrics`)).text();
    expect(metrics).toMatch(/berth_mirror_requests_total\{registry="quay.io",kind="manifest",result="stale"\} [1-9]/);
    expect(metrics).toMatch(/berth_mirror_upstream_errors_total\{registry="quay.io",reason="unreachable"\} [1-9]/);
    const res = await fetch(`${mirror.url}/v2/quay.io/org/never/manifests/v1`);
    expect(res.status).toBe(503);
    const cfg = join(work, 'prune.yaml');
    await writeFile(cfg, `registry:\n${storage.yaml}  mirrors:\n    - {registry: quay.io, url: "http://127.0.0.1:1"}\n`);
    const { stdout } = await run(process.execPath, ['dist/cli.js', '-c', cfg, 'prune', '--dry-run']);
    expect(stdout).toMatch(/mirror cache quay\.io \(dry run[^\n]*\n.*\n\s+tags\s+\d+\s+\d+\s+0\n\s+blobs\s+(\d+)\s+\1\s+0\n/);
  });
});
