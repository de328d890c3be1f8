/**
 * A real balancer: Debian's HAProxy, round-robin with health checks on /readyz, in front of three `berth serve` on
 * one Swift container (the deployment the README describes), passing the client address by PROXY v2; and in front
 * of three on a filesystem root by X-Forwarded-For for the login limit. Without a lock service what must hold is
 * that no interleaving loses a blob or serves wrong bytes (docs/security-storage.md); with memcached, that racing
 * PATCHes give one 202. fsck is clean after each case. Test clients connect from 127.0.0.2 and 127.0.0.3; only
 * HAProxy's 127.0.0.1 is a trusted proxy (so a request addressed straight to a process comes from 127.0.0.2).
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HAPROXY, startBalancer, type Balancer } from '../helpers/balancer.js';
import { importBusybox, selfSignedCert, startDockerd } from '../helpers/docker.js';
import { startMemcached, type MemcachedServer } from '../helpers/memcached.js';
import { blobDigest, writeLayout } from '../helpers/oci-layout.js';
import { slowPatch } from '../helpers/races.js';
import { basic, sha256 } from '../helpers/server.js';
import { storageYaml } from '../helpers/swift.js';

const run = promisify(execFile);
const USERS = `  secret: balancer-test-secret-0123456789abcdef\n  users:\n    - {name: alice, pass: alice-pw, access: write}\n`;
const ALICE = basic('alice', 'alice-pw');
const MiB = 1 << 20;

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/**
 * One request on a fresh connection from a chosen loopback address. `body` may be a function that writes it (to
 * stop mid-body); a connection cut by the server resolves with status 0.
 */
function request(url: string, method: string, path: string, o: { from?: string; headers?: Record<string, string | number>; body?: Buffer | ((req: http.ClientRequest) => void) } = {}): Promise<Answer> {
  return new Promise((resolve) => {
    const req = http.request(`${url}${path}`, { method, headers: o.headers, localAddress: o.from ?? '127.0.0.2', agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', () => resolve({ status: 0, headers: {}, body: Buffer.alloc(0) }));
    });
    req.on('error', () => resolve({ status: 0, headers: {}, body: Buffer.alloc(0) }));
    if (typeof o.body === 'function') o.body(req);
    else req.end(o.body);
  });
}

/** The upload's location with `digest=` added: the commit. */
const committing = (location: string, digest: string) => `${location}${location.includes('?') ? '&' : '?'}digest=${digest}`;
const patchHeaders = (offset: number, length: number) => ({ ...ALICE, 'Content-Range': `${offset}-${offset + length - 1}`, 'Content-Length': length, 'Content-Type': 'application/octet-stream' });

async function startUpload(lb: Balancer, repo: string): Promise<string> {
  const r = await request(lb.url, 'POST', `/v2/${repo}/blobs/uploads/`, { headers: ALICE });
  expect(r.status).toBe(202);
  return r.headers.location!;
}

/** A blob's bytes through the balancer, or null when it is not there. */
async function blobBytes(lb: Balancer, repo: string, digest: string): Promise<Buffer | null> {
  const r = await request(lb.url, 'GET', `/v2/${repo}/blobs/${digest}`, { headers: ALICE });
  if (r.status === 404) return null;
  expect(r.status).toBe(200);
  return r.body;
}

/**
 * One round of eight PATCHes racing at one offset (after a first chunk) through the balancer; each is answered,
 * accepted or refused with an OCI error. Returns their answers and the upload each would make.
 */
async function raceAtOneOffset(lb: Balancer, repo: string) {
  const first = randomBytes(256 * 1024);
  const location = await startUpload(lb, repo);
  const p = await request(lb.url, 'PATCH', location, { headers: patchHeaders(0, first.length), body: first });
  expect(p.status).toBe(202);
  const chunks = Array.from({ length: 8 }, () => randomBytes(256 * 1024));
  const racers = await Promise.all(chunks.map((c) => request(lb.url, 'PATCH', p.headers.location!, { headers: patchHeaders(first.length, c.length), body: c })));
  const statuses = racers.map((r) => r.status);
  for (const s of statuses) expect([202, 404, 416]).toContain(s);
  const winner = statuses.indexOf(202);
  expect(winner).toBeGreaterThanOrEqual(0);
  return { racers, statuses, winner, candidates: chunks.map((c) => Buffer.concat([first, c])) };
}

async function expectFsckClean(lb: Balancer): Promise<void> {
  await lb.allUp();
  const { code, out } = await lb.fsck();
  expect(out).toMatch(/; 0 problems/);
  expect(code).toBe(0);
}

/**
 * Wrong passwords from one client address until every process refuses it; then that address is refused with the
 * right password too, while another address still logs in. Returns how many attempts it took.
 */
async function exhaustLogins(lb: Balancer, spoof?: () => Record<string, string>): Promise<number> {
  let refusedInARow = 0;
  let attempts = 0;
  while (refusedInARow < 3) {
    attempts++;
    const r = await request(lb.url, 'GET', '/v2/', { from: '127.0.0.2', headers: { ...basic('alice', `wrong-${attempts}`), ...spoof?.() } });
    expect([401, 429]).toContain(r.status);
    refusedInARow = r.status === 429 ? refusedInARow + 1 : 0;
    // Ten failures per address per process (the default), three processes: the limit holds each process's share.
    expect(attempts).toBeLessThanOrEqual(3 * 10 + 3);
  }
  for (let i = 0; i < 3; i++) expect((await request(lb.url, 'GET', '/v2/', { from: '127.0.0.2', headers: ALICE })).status).toBe(429);
  // The token endpoint's password check counts the same address.
  const form = (from: string) =>
    request(lb.url, 'POST', '/auth/token', { from, headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body: Buffer.from('grant_type=password&username=alice&password=alice-pw') });
  expect((await form('127.0.0.2')).status).toBe(429);
  // Another client behind the same balancer: not refused, whatever the first one did.
  expect((await request(lb.url, 'GET', '/v2/', { from: '127.0.0.3', headers: basic('alice', 'wrong') })).status).toBe(401);
  for (let i = 0; i < 3; i++) expect((await request(lb.url, 'GET', '/v2/', { from: '127.0.0.3', headers: ALICE })).status).toBe(200);
  const other = await form('127.0.0.3');
  expect(other.status, other.body.toString()).toBe(200);
  return attempts;
}

describe('HAProxy (PROXY v2) in front of three berth serve on one Swift container', () => {
  let dir: string;
  let lb: Balancer;
  let storage: { yaml: string; cleanup(): Promise<void> };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-lb-'));
    storage = await storageYaml('swift', dir);
    lb = await startBalancer({ dir, processes: 3, storage: storage.yaml, forward: 'proxy-protocol', extraYaml: USERS });
  }, 60_000);
  afterAll(async () => {
    await lb?.stop();
    await storage?.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  it('spreads requests over the three, each logging the client address HAProxy sent, not its own', async () => {
    for (let i = 0; i < 6; i++) expect((await request(lb.url, 'GET', '/v2/', { from: '127.0.0.3', headers: ALICE })).status).toBe(200);
    for (let i = 0; i < 3; i++) {
      const lines = lb.log(i).split('\n').filter((l) => l.includes('"path":"/v2/"'));
      expect(lines.length, `process ${i}`).toBeGreaterThan(0);
      for (const l of lines) expect(JSON.parse(l).client).toBe('127.0.0.3');
    }
  });

  it('a token from one process is accepted by the others: one public-url (the audience) and one secret', async () => {
    const t = await request(lb.url, 'GET', `/auth/token?service=${lb.host}&scope=repository:lb/tok:pull,push`, { headers: ALICE });
    expect(t.status).toBe(200);
    const token = (JSON.parse(t.body.toString()) as { token: string }).token;
    for (let i = 0; i < 6; i++) expect((await request(lb.url, 'GET', '/v2/lb/tok/tags/list', { headers: { Authorization: `Bearer ${token}` } })).status).toBe(404);
  });

  it('skopeo pushes an image through the balancer and pulls it back byte for byte', async () => {
    const image = await writeLayout(join(dir, 'src'), 'v1', [3_000_000, 1000, 300_000]);
    const ref = `docker://${lb.host}/lb/app:v1`;
    const creds = ['--creds', 'alice:alice-pw'];
    await run('skopeo', ['--insecure-policy', 'copy', '--dest-tls-verify=false', '--dest-creds', 'alice:alice-pw', `oci:${image.dir}:v1`, ref]);
    await run('skopeo', ['--insecure-policy', 'copy', '--src-tls-verify=false', '--src-creds', 'alice:alice-pw', ref, `oci:${join(dir, 'out')}:v1`]);
    for (const d of image.layerDigests) expect(await blobDigest(join(dir, 'out'), d)).toBe(d);
    const { stdout } = await run('skopeo', ['inspect', '--tls-verify=false', ...creds, '--raw', ref]);
    expect(sha256(stdout)).toBe(image.manifestDigest);
    await expectFsckClean(lb);
  });

  it('docker logs in, pushes and pulls through the balancer, and runs what it pulled', async () => {
    const d = await startDockerd();
    try {
      const base = await importBusybox(d);
      const tag = `${lb.host}/lb/docker:v1`;
      await d.docker(['tag', base, tag]);
      await d.docker(['login', '-u', 'alice', '-p', 'alice-pw', lb.host]);
      const pushed = /digest: (sha256:[0-9a-f]{64})/.exec((await d.docker(['push', tag])).stdout)![1];
      await d.docker(['rmi', tag, base]);
      expect((await d.docker(['pull', tag])).stdout).toContain(pushed);
      expect((await d.docker(['run', '--rm', '--network', 'none', tag, 'echo', 'pulled through haproxy'])).stdout.trim()).toBe('pulled through haproxy');
    } catch (err) {
      throw new Error(`${(err as Error).message}\nHAProxy's log:\n${lb.haproxyLog().slice(-4000)}`);
    } finally {
      await d.stop();
    }
    await expectFsckClean(lb);
  }, 120_000);

  it('eight PATCHes racing at one offset: every stored blob has its digest\u2019s bytes; the upload commits a 202\u2019s bytes or fails cleanly', async () => {
    const outcomes: string[] = [];
    for (let round = 0; round < 3; round++) {
      const repo = `lb/race${round}`;
      const { racers, statuses, winner, candidates } = await raceAtOneOffset(lb, repo);
      const digest = sha256(candidates[winner]);
      const put = await request(lb.url, 'PUT', committing(racers[winner].headers.location!, digest), { headers: ALICE });
      outcomes.push(`${statuses.filter((s) => s === 202).length}x202 -> ${put.status}`);
      if (put.status === 201) expect((await blobBytes(lb, repo, digest))?.equals(candidates[winner])).toBe(true);
      else {
        // Another racer's chunk is what the record kept: the commit is refused and nothing is stored under the digest.
        expect(put.status).toBe(400);
        expect(JSON.parse(put.body.toString()).errors[0].code).toBe('DIGEST_INVALID');
        expect(await blobBytes(lb, repo, digest)).toBeNull();
      }
      for (const c of candidates) {
        const got = await blobBytes(lb, repo, sha256(c));
        if (got) expect(got.equals(c)).toBe(true);
      }
    }
    console.log(`balancer race rounds: ${outcomes.join('; ')}`);
    await expectFsckClean(lb);
  });

  it('issue 23 reproduction 1: a PATCH streaming through the balancer while another process commits gets 404; a DELETE after leaves the blob whole', async () => {
    const repo = 'lb/repro1';
    const chunks = [randomBytes(MiB), randomBytes(MiB)];
    const first = Buffer.concat(chunks);
    const digest = sha256(first);
    let location = await startUpload(lb, repo);
    for (const [i, c] of chunks.entries()) {
      const p = await request(lb.url, 'PATCH', location, { headers: patchHeaders(i * MiB, c.length), body: c });
      expect(p.status).toBe(202);
      location = p.headers.location!;
    }
    const late = slowPatch(lb.url, location, first.length, randomBytes(MiB), { headers: ALICE, localAddress: '127.0.0.2' });
    let serving: number[] = [];
    for (let n = 0; serving.length !== 1; n++) {
      expect(n, 'HAProxy shows the streaming PATCH on one process').toBeLessThan(100);
      await new Promise((r) => setTimeout(r, 50));
      serving = await lb.serving();
    }
    // Lets the PATCH read the upload's state first; the assertions do not depend on it.
    await new Promise((r) => setTimeout(r, 300));
    // The commit goes straight to another process: round-robin would give it to the streaming one a third of the
    // time, where the in-process lock queues it behind the PATCH (no race to show).
    const other = lb.backends[(serving[0] + 1) % lb.backends.length];
    const put = await request(other.url, 'PUT', committing(location, digest), { headers: ALICE });
    expect(put.status, put.body.toString()).toBe(201);
    late.finish();
    expect(await late.answer).toEqual({ status: 404, code: 'BLOB_UPLOAD_UNKNOWN' });
    // Through the balancer, so that each process is asked once: the upload is gone everywhere, the blob whole.
    for (let i = 0; i < lb.backends.length; i++) expect((await request(lb.url, 'DELETE', location, { headers: ALICE })).status).toBe(404);
    for (let i = 0; i < lb.backends.length; i++) expect((await blobBytes(lb, repo, digest))?.equals(first)).toBe(true);
    await expectFsckClean(lb);
  });

  it('a process killed mid-chunk: the client resumes through the others from the reported offset (lb-kill)', async () => {
    const CHUNK = 1024 * 1024;
    let recoveries = 0;
    for (let n = 0; n < 2; n++) {
      const repo = `lb/kill${n}`;
      const blob = randomBytes(3 * CHUNK);
      let location = await startUpload(lb, repo);
      let killed = false;
      let restarted: Promise<void> | undefined;
      let serving: number[] = [];
      for (let offset = 0; offset < blob.length; ) {
        const chunk = blob.subarray(offset, offset + CHUNK);
        const kill = !killed && offset === CHUNK;
        const r = await request(lb.url, 'PATCH', location, {
          headers: patchHeaders(offset, chunk.length),
          body: (req) => {
            if (!kill) return req.end(chunk);
            req.write(chunk.subarray(0, CHUNK / 2));
            // Half a chunk in, SIGKILL the process HAProxy gave this request to (the only one serving).
            setTimeout(async () => {
              serving = await lb.serving();
              if (serving.length !== 1) return void req.destroy();
              killed = true;
              restarted = lb.killAndRestart(serving[0], () => req.end(chunk.subarray(CHUNK / 2)));
            }, 100);
          },
        });
        if (r.status === 202) {
          location = r.headers.location!;
          offset += chunk.length;
          continue;
        }
        // As the spec says: ask where the upload stands (HAProxy sends it to a live process) and go on from there.
        recoveries++;
        const status = await request(lb.url, 'GET', location, { headers: ALICE });
        expect(status.status).toBe(204);
        offset = Number(/^0-(\d+)$/.exec(String(status.headers.range))![1]) + 1;
        expect(offset % CHUNK).toBe(0);
      }
      expect(serving, 'processes serving the PATCH when it was cut').toHaveLength(1);
      expect(killed).toBe(true);
      await restarted;
      const digest = sha256(blob);
      const put = await request(lb.url, 'PUT', committing(location, digest), { headers: ALICE });
      expect(put.status).toBe(201);
      expect(createHash('sha256').update((await blobBytes(lb, repo, digest))!).digest('hex')).toBe(digest.slice(7));
    }
    expect(recoveries).toBeGreaterThanOrEqual(2);
    await expectFsckClean(lb);
  });

  it('failed logins are limited per client address (PROXY v2), not per balancer', async () => {
    await exhaustLogins(lb);
    const limited = [0, 1, 2].flatMap((i) => lb.log(i).split('\n')).filter((l) => l.includes('too many failed logins'));
    expect(limited.length).toBeGreaterThan(0);
    for (const l of limited) expect(JSON.parse(l).address).toBe('127.0.0.2');
  });
});

describe('HAProxy in front of three berth serve on one Swift container, uploads locked in memcached', () => {
  let dir: string;
  let lb: Balancer;
  let memcached: MemcachedServer;
  let storage: { yaml: string; cleanup(): Promise<void> };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-lb-memcached-'));
    memcached = await startMemcached();
    storage = await storageYaml('swift', dir);
    const locks = `  locks:\n    memcached: [${memcached.address}]\n`;
    lb = await startBalancer({ dir, processes: 3, storage: storage.yaml, forward: 'proxy-protocol', extraYaml: USERS + locks });
  }, 60_000);
  afterAll(async () => {
    await lb?.stop();
    await memcached?.stop();
    await storage?.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  it('eight PATCHes racing at one offset through the balancer: exactly one 202, seven 416, and the upload commits that 202\u2019s bytes', async () => {
    const outcomes: string[] = [];
    for (let round = 0; round < 3; round++) {
      const repo = `lb/locked${round}`;
      const { racers, statuses, winner, candidates } = await raceAtOneOffset(lb, repo);
      outcomes.push(`${statuses.filter((s) => s === 202).length}x202`);
      expect(statuses.filter((s) => s === 202)).toHaveLength(1);
      expect(statuses.filter((s) => s === 416)).toHaveLength(7);
      const digest = sha256(candidates[winner]);
      expect((await request(lb.url, 'PUT', committing(racers[winner].headers.location!, digest), { headers: ALICE })).status).toBe(201);
      expect((await blobBytes(lb, repo, digest))?.equals(candidates[winner])).toBe(true);
    }
    console.log(`balancer race rounds with memcached: ${outcomes.join('; ')}`);
    await expectFsckClean(lb);
  });
});

it('etc/haproxy.cfg as shipped is valid for Debian\u2019s HAProxy (with a certificate in place)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-haproxy-cfg-'));
  try {
    const { cert, key } = await selfSignedCert(dir, ['127.0.0.1']);
    await writeFile(join(dir, 'registry.pem'), Buffer.concat([await readFile(cert), await readFile(key)]));
    const text = (await readFile('etc/haproxy.cfg', 'utf8')).replace('/etc/haproxy/certs/registry.pem', join(dir, 'registry.pem'));
    await writeFile(join(dir, 'haproxy.cfg'), text);
    await run(HAPROXY, ['-c', '-f', join(dir, 'haproxy.cfg')]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

describe('HAProxy (X-Forwarded-For) in front of three berth serve on a filesystem root', () => {
  let dir: string;
  let lb: Balancer;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-lb-xff-'));
    const storage = (await storageYaml('filesystem', dir)).yaml;
    lb = await startBalancer({ dir, processes: 3, storage, forward: 'x-forwarded-for', extraYaml: USERS });
  }, 60_000);
  afterAll(async () => {
    await lb?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('failed logins are limited per client address, and a client\u2019s own X-Forwarded-For is not believed', async () => {
    // Each guess claims a fresh address; HAProxy appends the real one, which is what counts.
    await exhaustLogins(lb, () => ({ 'X-Forwarded-For': `10.${randomBytes(3).join('.')}` }));
  });
});
