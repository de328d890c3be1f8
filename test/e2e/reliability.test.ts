/**
 * The reliability tools run small in CI (their full-size figures come from running them by hand), plus what needs
 * no tool: one digest pushed by 8 clients at once, SIGTERM during an upload, and request ids reaching Swift.
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Pruner } from '../../src/registry/prune.js';
import { md5, pushBlob, pushImage, sha256, spawnServe } from '../helpers/server.js';
import { BACKENDS, dropContainer, ensureSwift, freshContainer, startServerOn, storageYaml } from '../helpers/swift.js';

const run = promisify(execFile);
// Killed before the test's own timeout, so a tool that hangs fails with what it printed, and does not linger.
const tool = (name: string, ...args: string[]) => toolWithin(110_000, name, ...args);
const toolWithin = (ms: number, name: string, ...args: string[]) =>
  run('node', [`tools/${name}`, ...args], { maxBuffer: 1 << 24, timeout: ms, killSignal: 'SIGKILL' }).then(
    (r) => ({ code: 0, out: r.stdout }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }),
  );

describe('reliability tools, small', () => {
  it('fault-run: with Swift failing and corrupting, nothing completes wrong, nothing is lost, fsck is clean', async () => {
    const r = await tool('fault-run.mjs', '--pushes', '4', '--seed', '11');
    expect(r.out).toMatch(/4 pushes attempted, \d+ completed, \d+ failed cleanly, 0 failed leaving a broken image, 0 completed-but-wrong, 0 lost after completion; fsck problems: 0; server never crashed/);
    expect(r.code).toBe(0);
  });

  it('lb-kill: pushes survive a SIGKILL of the serving process mid-chunk behind a round-robin balancer', async () => {
    const r = await tool('lb-kill.mjs', '--kills', '3');
    expect(r.out).toMatch(/^3\/3 pushes completed after a SIGKILL mid-chunk .*skopeo through the balancer: 1\/1$/m);
    expect(r.code).toBe(0);
  });

  it('fuzz: hostile requests get no 5xx, crash nothing, leak nothing', async () => {
    const r = await tool('fuzz.mjs', '--requests', '2000', '--seed', '5');
    expect(r.out).toMatch(/^2000 fuzzed requests: 0 crashes, 0 5xx, 0 responses leaking internals, 20\/20 accepted uploads verify; memory stable \(RSS \d+ -> \d+ MB after warm-up, limit \+\d+ MB\)/m);
    expect(r.code).toBe(0);
  });

  it('integrity-run: 8 clients pushing one digest leave one intact blob; fsck finds every corrupted blob and none is served', async () => {
    // all: Swift in both commit modes and the filesystem.
    const r = await toolWithin(410_000, 'integrity-run.mjs', '--backend', 'all', '--clients', '8', '--blob-mib', '1', '--images', '2', '--corrupt', '2', '--seed', '9');
    for (const backend of ['swift', 'filesystem']) {
      expect(r.out).toMatch(
        new RegExp(`^8 clients pushing one digest \\(${backend}\\): 8/8 succeeded, 1 intact blob, 0 uploads left, [01] parts director(y|ies) after prune \\(\\d+ before\\), prune exit 0, fsck exit 0$`, 'm'),
      );
    }
    // Link mode: the winner's upload directory holds the blob's segments, claimed, before and after prune (a join
    // that replaced the winner's after its check may leave more claimed directories until prune).
    const claimed = String.raw`claimed, no record, every segment in it`;
    expect(r.out).toMatch(
      new RegExp(
        String.raw`^8 clients pushing one digest \(swift-link\): 8/8 succeeded, 1 intact blob, \d+ upload director(y|ies) left \(claimed, no record, [^)]*\), ` +
          String.raw`1 after prune \(${claimed}, the same\), 0 parts directories \(0 before\), prune exit 0, fsck exit 0$`,
        'm',
      ),
    );
    for (const backend of ['swift', 'swift-link', 'filesystem']) {
      expect(r.out).toMatch(
        new RegExp(`^fsck \\(${backend}\\): 2/2 corrupted blobs found \\(exit 1\\), 0 other problems, 0 served clean \\(of 4 GETs .*\\), 2 quarantined, clean after repair, 2/2 restored by a re-push, final fsck exit 0$`, 'm'),
      );
    }
    expect(r.code).toBe(0);
  }, 420_000);
});

describe.each(BACKENDS)('concurrency and shutdown on %s', (backend) => {
  it('8 clients pushing one digest at once leave one intact blob', async () => {
    const s = await startServerOn(backend);
    try {
      const data = randomBytes(3 << 20);
      const results = await Promise.allSettled(Array.from({ length: 8 }, () => pushBlob(s.url, 'same/blob', data)));
      expect(results.filter((r) => r.status === 'fulfilled').length).toBe(8);
      const got = Buffer.from(await (await fetch(`${s.url}/v2/same/blob/blobs/${sha256(data)}`)).arrayBuffer());
      expect(md5(got)).toBe(md5(data));
      const uploads = [];
      for await (const o of s.registry.driver.list('_local/uploads')) uploads.push(o.path);
      // Nothing but the seals that commits leave where processes cannot lock each other out (prune's, later).
      expect(uploads.filter((p) => !p.endsWith('/sealed'))).toEqual([]);
      // Commits that lost the race delete their parts, or prune does once they are old: one upload's parts remain.
      await pushImage(s.url, 'same/blob', 'v1', [data]); // so prune keeps the blob
      const later = new Date(Date.now() + 2 * 3600_000);
      const silent = { debug() {}, info() {}, warn() {} };
      const report = await new Pruner(s.registry.driver).prune('_local', { uploadExpiry: 3600, now: later, log: silent, lockSettleMs: 10 });
      expect(report.failures).toBe(0);
      const again = Buffer.from(await (await fetch(`${s.url}/v2/same/blob/blobs/${sha256(data)}`)).arrayBuffer());
      expect(md5(again)).toBe(md5(data));
      const partDirs = new Set<string>();
      for await (const o of s.registry.driver.list(`_local/blobs/${sha256(data)}`)) {
        const m = /\/parts\/([^/]+)\//.exec(o.path);
        if (m) partDirs.add(m[1]);
      }
      expect(partDirs.size).toBeLessThanOrEqual(1);
    } finally {
      await s.close();
    }
  });

  it('SIGTERM during a PATCH: the server exits 0 and the upload goes on elsewhere from a consistent record', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'berth-term-'));
    const storage = await storageYaml(backend, dir);
    // idle: 1: the PATCH's keep-alive connection, idle once answered, would hold the draining server up for the
    // default 5 s (it exits when its last connection closes).
    const config = `registry:\n  address: 127.0.0.1\n  port: 0\n  timeouts: {idle: 1}\n${storage.yaml}`;
    try {
      const a = await spawnServe(config, dir);
      const data = randomBytes(6 << 20);
      const start = await fetch(`${a.url}/v2/term/app/blobs/uploads/`, { method: 'POST' });
      const location = start.headers.get('location')!;
      // A PATCH that streams slowly: half now, SIGTERM, the rest a moment later.
      const patch = new Promise<number>((resolve) => {
        const req = http.request(`${a.url}${location}`, { method: 'PATCH', headers: { 'Content-Length': data.length } }, (res) => {
          res.resume();
          resolve(res.statusCode!);
        });
        req.on('error', () => resolve(-1));
        req.write(data.subarray(0, 3 << 20));
        setTimeout(() => {
          a.child.kill('SIGTERM');
          setTimeout(() => req.end(data.subarray(3 << 20)), 200);
        }, 300);
      });
      const exited = new Promise<number | null>((resolve) => a.child.once('exit', (code) => resolve(code)));
      const status = await patch;
      expect(await exited).toBe(0);
      expect([202, -1]).toContain(status);
      // Another process continues from whatever the record says; every chunk it names is there.
      const b = await spawnServe(config, dir);
      const st = await fetch(`${b.url}${location}`);
      expect(st.status).toBe(204);
      const offset = Number(/^0-(\d+)$/.exec(st.headers.get('range')!)?.[1] ?? -1) + 1;
      expect(status === 202 ? offset : data.length).toBe(data.length);
      if (offset < data.length) {
        const more = await fetch(`${b.url}${location}`, {
          method: 'PATCH',
          headers: { 'Content-Range': `${offset}-${data.length - 1}` },
          body: new Uint8Array(data.subarray(offset)),
        });
        expect(more.status).toBe(202);
      }
      const put = await fetch(`${b.url}${location}?digest=${sha256(data)}`, { method: 'PUT' });
      expect(put.status).toBe(201);
      expect(md5(Buffer.from(await (await fetch(`${b.url}/v2/term/app/blobs/${sha256(data)}`)).arrayBuffer()))).toBe(md5(data));
      expect(await b.stop()).toBe(0);
    } finally {
      await storage.cleanup();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('request ids reach Swift', () => {
  let dir: string;
  let proxy: ReturnType<typeof spawn>;
  let proxyPort: number;
  const container = freshContainer();
  beforeAll(async () => {
    await ensureSwift();
    dir = await mkdtemp(join(tmpdir(), 'berth-txid-'));
    proxy = spawn('node', ['tools/fault-proxy.mjs', '--port', '0', '--log', join(dir, 'requests.log')], { stdio: ['ignore', 'pipe', 'ignore'] });
    proxyPort = await new Promise((resolve) => proxy.stdout!.on('data', (d: Buffer) => resolve(Number(/port (\d+)/.exec(String(d))![1]))));
  });
  afterAll(async () => {
    proxy.kill();
    await dropContainer(container);
    await rm(dir, { recursive: true, force: true });
  });

  it("each Swift request carries the Berth request id as X-Trans-Id-Extra", async () => {
    await writeFile(join(dir, 'clouds.yaml'), `clouds:\n  via-proxy:\n    auth_type: v1password\n    auth:\n      auth_url: http://127.0.0.1:${proxyPort}/auth/v1.0\n      username: test:tester\n      password: testing\n`);
    const s = await spawnServe(`registry:\n  address: 127.0.0.1\n  port: 0\n  storage:\n    driver: swift\n    cloud: via-proxy\n    container: ${container}\n    clouds-file: ${join(dir, 'clouds.yaml')}\n`, dir);
    try {
      const data = randomBytes(1000);
      const res = await fetch(`${s.url}/v2/txid/app/blobs/uploads/?digest=${sha256(data)}`, { method: 'POST', body: new Uint8Array(data) });
      expect(res.status).toBe(201);
      const id = res.headers.get('x-request-id')!.replace(/-/g, '');
      const lines = (await readFile(join(dir, 'requests.log'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { url: string; transExtra?: string });
      const tagged = lines.filter((l) => l.transExtra === id);
      expect(tagged.length).toBeGreaterThanOrEqual(3); // record, chunk, moves, SLO, link...
      expect(tagged.every((l) => l.url.includes(container))).toBe(true);
    } finally {
      expect(await s.stop()).toBe(0);
    }
  });
});
