/**
 * Quotas across `berth serve` processes sharing one store, and `berth usage`: the overshoot of two processes
 * pushing at once stays within the bound docs/security-storage.md states, a restarted process still counts what
 * the others committed, and the CLI prints the figures prune recorded.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { computeUsage } from '../../src/registry/usage.js';
import { openStorage } from '../../src/storage/factory.js';
import { berthCli, pushImage, sha256, spawnServe, type ServeProcess } from '../helpers/server.js';
import { BACKENDS, storageYaml } from '../helpers/swift.js';
import { writeFile } from 'node:fs/promises';

const QUOTA = 8 << 20;
/** Swift here answers a push in a second or more when the host is busy: fewer, larger blobs fill the quota. */
const BLOB_OF = { filesystem: 128 << 10, swift: 512 << 10 };
/** registry.quota-interval: each process writes its commits and re-reads everyone's every second. */
const INTERVAL_S = 1;

const berth = berthCli;

/** Push BLOB-sized blobs one every `pauseMs` until the first refusal; what was accepted, and over how long. */
async function pushUntilRefused(url: string, pauseMs: number, BLOB: number): Promise<{ bytes: number; seconds: number; refusal: string }> {
  const started = Date.now();
  let bytes = 0;
  for (;;) {
    const data = randomBytes(BLOB);
    const res = await fetch(`${url}/v2/fill/blobs/uploads/?digest=${sha256(data)}`, { method: 'POST', body: data });
    if (res.status === 403) return { bytes, seconds: (Date.now() - started) / 1000, refusal: await res.text() };
    expect(res.status).toBe(201);
    bytes += BLOB;
    await new Promise((r) => setTimeout(r, pauseMs));
  }
}

describe.each(BACKENDS)('quotas across processes on %s', (backend) => {
  let dir: string;
  let config: string;
  let cleanup: () => Promise<void>;
  const servers: ServeProcess[] = [];
  let yaml: string;
  const BLOB = BLOB_OF[backend];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-quota-'));
    const storage = await storageYaml(backend, dir);
    cleanup = storage.cleanup;
    yaml = `registry:\n  address: 127.0.0.1\n  port: 0\n  quota: ${QUOTA}\n  quota-interval: ${INTERVAL_S}\n${storage.yaml}`;
    config = join(dir, 'registry.yaml');
    await writeFile(config, yaml);
    servers.push(await spawnServe(yaml, dir), await spawnServe(yaml, dir));
  }, 120_000);
  afterAll(async () => {
    for (const s of servers) await s.stop();
    await cleanup?.();
    await rm(dir, { recursive: true, force: true });
  });

  it('two processes pushing at once overshoot by at most (P-1) x rate x (2 intervals), plus a blob in flight', async () => {
    // About 1.2 MiB/s each: the quota fills in a few seconds, several intervals.
    const [a, b] = await Promise.all(servers.map((s) => pushUntilRefused(s.url, 100, BLOB)));
    expect(a.refusal).toContain(`quota is ${QUOTA} bytes`);
    await new Promise((r) => setTimeout(r, 2 * INTERVAL_S * 1000 + 500));
    const driver = await openStorage(loadConfig(config).storage);
    const stored = (await computeUsage(driver, '_local')).bytes;
    await driver.close();
    const rate = Math.max(a.bytes / a.seconds, b.bytes / b.seconds);
    // One more second than the two intervals: a request's own time, and the flush timer starting at a first commit.
    const bound = rate * (2 * INTERVAL_S + 1) + BLOB;
    console.log(`quota ${QUOTA}: stored ${stored} (overshoot ${stored - QUOTA}), accepted ${a.bytes} + ${b.bytes} at ${(rate / 2 ** 20).toFixed(2)} MiB/s; bound ${Math.round(bound)}`);
    expect(stored).toBe(a.bytes + b.bytes);
    expect(stored - QUOTA).toBeLessThanOrEqual(bound);
    // Nothing more gets in, through either process.
    for (const s of servers) expect((await fetch(`${s.url}/v2/fill/blobs/uploads/?digest=${sha256(Buffer.from('x'))}`, { method: 'POST', body: 'x' })).status).toBe(403);
  }, 240_000);

  it('a restarted process counts what every process committed; pulls go on; prune records the figure; berth usage prints it', async () => {
    await servers[0].stop();
    servers[0] = await spawnServe(yaml, dir);
    const data = randomBytes(BLOB);
    expect((await fetch(`${servers[0].url}/v2/fill/blobs/uploads/?digest=${sha256(data)}`, { method: 'POST', body: data })).status).toBe(403);
    expect((await fetch(`${servers[0].url}/v2/`)).status).toBe(200);

    // Prune's figure replaces the counters; a manifest naming stored blobs is never refused.
    expect((await berth(config, 'prune')).code).toBe(0);
    // These usage runs only read (one process start each): all at once. --fresh stores its figure: after them.
    const [out, text, nothing, bogus] = await Promise.all([
      berth(config, 'usage', '--json'),
      berth(config, 'usage'),
      berth(config, 'usage', '--namespace', 'nothing-here'),
      berth(config, 'usage', '--bogus'),
    ]);
    expect(out.code).toBe(0);
    const [u] = JSON.parse(out.stdout) as { namespace: string; bytes: number; quota: number; source: string }[];
    expect(u).toMatchObject({ namespace: '_local', source: 'prune', quota: QUOTA });
    expect(u.bytes).toBeGreaterThanOrEqual(QUOTA);
    expect(text.stdout).toMatch(/^namespace _local: [0-9.]+ MiB \([0-9]+ bytes\) in [0-9]+ blobs, quota 8\.0 MiB/);
    const fresh = await berth(config, 'usage', '--fresh', '--namespace', '_local', '--json');
    expect(JSON.parse(fresh.stdout)[0]).toMatchObject({ bytes: u.bytes, source: 'fresh' });
    expect(nothing.code).toBe(1);
    expect(bogus.code).toBe(2);
  }, 120_000);
});

describe('an image within quota', () => {
  it('pushes and pulls as usual with a quota configured', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'berth-quota-ok-'));
    const s = await spawnServe(`registry:\n  address: 127.0.0.1\n  port: 0\n  quota: 10M\n  storage:\n    driver: filesystem\n    root: ${dir}/data\n`, dir);
    try {
      const image = await pushImage(s.url, 'ok/app', 'v1', [randomBytes(1 << 20)]);
      // Bodies read to the end: a GET left unread holds its connection, and the server's exit, for its 10-s drain.
      const manifest = await fetch(`${s.url}/v2/ok/app/manifests/v1`);
      expect(manifest.status).toBe(200);
      expect(sha256(Buffer.from(await manifest.arrayBuffer()))).toBe(image.digest);
      const layer = await fetch(`${s.url}/v2/ok/app/blobs/${image.manifest.layers[0].digest}`);
      expect(layer.status).toBe(200);
      expect(sha256(Buffer.from(await layer.arrayBuffer()))).toBe(image.manifest.layers[0].digest);
    } finally {
      await s.stop();
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
