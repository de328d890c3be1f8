/**
 * max-size between prunes (mirror/cap.ts) on every in-process backend: a fill that would take the cache over the
 * cap serves its client and is not stored; the size is known across processes (quota.ts's tally, under
 * mirror.cache/<registry>/usage/), and prune's figure resets it.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { CacheCap } from '../../src/mirror/cap.js';
import { mirrorMetrics } from '../../src/mirror/metrics.js';
import { Mirror } from '../../src/mirror/mirror.js';
import { pruneMirror } from '../../src/mirror/prune.js';
import { CacheStore } from '../../src/mirror/store.js';
import { Metrics } from '../../src/observability/metrics.js';
import { paths } from '../../src/registry/paths.js';
import { bytes, freshCacheEach, cacheBlob, cacheConfig, quiet, REG } from '../helpers/mirror-cache.js';
import { overriding, sha256 } from '../helpers/server.js';
import { IN_PROCESS_BACKENDS } from '../helpers/swift.js';

/** A bare upstream: anonymous blob GETs from a map; every request counted. */
async function upstream(blobs: Buffer[]): Promise<{ url: string; gets: string[]; close(): Promise<void> }> {
  const byDigest = new Map(blobs.map((b) => [sha256(b), b]));
  const gets: string[] = [];
  const server = http.createServer((req, res) => {
    const digest = req.url?.split('/blobs/')[1];
    const blob = digest && byDigest.get(digest);
    if (!blob) return res.writeHead(404).end();
    gets.push(digest);
    res.writeHead(200, { 'content-length': blob.length, 'docker-content-digest': digest }).end(blob);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    gets,
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

async function readAll(body: NodeJS.ReadableStream): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const p of body) out.push(p as Buffer);
  return Buffer.concat(out);
}

async function until(check: () => Promise<boolean> | boolean): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('timed out');
}

const fast = { flushMs: 20, refreshMs: 0, skewMs: 0 };

describe.each(IN_PROCESS_BACKENDS)('max-size between prunes on %s', (backend) => {
  const cache = freshCacheEach(backend);

  it('a fill that would take the cache over max-size serves its client the whole blob, is not stored, logged once and counted', { timeout: 60_000 }, async () => {
    const b = cache();
    const [first, second] = [bytes(6000, 1), bytes(6000, 2)];
    const up = await upstream([first, second]);
    const metrics = new Metrics();
    const warnings: { msg: string; obj: Record<string, unknown> }[] = [];
    const log = { info() {}, warn: (obj: object, msg: string) => warnings.push({ msg, obj: obj as Record<string, unknown> }) };
    const m = cacheConfig({ url: up.url, maxSize: 10_000 });
    const mirror = new Mirror([m], b.driver, mirrorMetrics(metrics), log);
    try {
      const a = await mirror.blob(m, 'org/app', sha256(first), { head: false });
      expect((await readAll(a.body!)).equals(first)).toBe(true);
      await until(async () => (await mirror.store.blobSize(REG, sha256(first))) !== null);
      expect(await mirror.cap.usage(REG)).toBe(6000);

      const over = await mirror.blob(m, 'org/app', sha256(second), { head: false });
      expect((await readAll(over.body!)).equals(second)).toBe(true);
      await until(() => warnings.length > 0);
      await new Promise((r) => setTimeout(r, 50));
      expect(warnings).toEqual([
        {
          msg: 'mirror fill: not stored, the cache is at max-size',
          obj: { registry: REG, upstream: new URL(up.url).host, digest: sha256(second), bytes: 6000, cacheBytes: 6000, maxSize: 10_000 },
        },
      ]);
      expect(await b.driver.stat(paths.mirrorTouched(REG, sha256(second)))).toBeNull();
      expect(await mirror.store.blobSize(REG, sha256(second))).toBeNull();
      const text = await metrics.registry.metrics();
      expect(text).toContain(`berth_mirror_fills_not_stored_total{registry="${REG}"} 1`);
      expect(text).not.toContain('reason="storage"');
      // Not cached, so the next pull is fetched again (and served again).
      const again = await mirror.blob(m, 'org/app', sha256(second), { head: false });
      expect((await readAll(again.body!)).equals(second)).toBe(true);
      expect(up.gets.filter((d) => d === sha256(second))).toHaveLength(2);
    } finally {
      await mirror.close();
      await up.close();
    }
  });

  it('the size is known across processes without listing the cache, and a prune resets it', { timeout: 60_000 }, async () => {
    const b = cache();
    const m = cacheConfig({ maxSize: 10_000 });
    const store = new CacheStore(b.driver, 1000);
    // Two server processes: two caps with their own tallies on one storage.
    const listings: string[] = [];
    const counted = overriding(b.driver, { list: (prefix) => (listings.push(prefix), b.driver.list(prefix)) });
    const one = new CacheCap(counted, [m], fast);
    const two = new CacheCap(counted, [m], fast);
    const blob = bytes(6000, 3);
    try {
      expect(await one.store(REG, blob.length, async () => (await cacheBlob(store, blob), true))).toBe(true);
      // `two` learns of it from one's object under usage/live once one has written it.
      await until(async () => (await two.usage(REG)) === 6000);
      const refused = await two.store(REG, 6000, async () => {
        throw new Error('must not write');
      });
      expect(refused).toEqual({ usage: 6000, maxSize: 10_000 });
      // Prune expires the blob and writes what is left (nothing): both see room again.
      const report = await pruneMirror(b.driver, m, { log: quiet, now: new Date(Date.now() + 2 * 3600_000), lockSettleMs: 10 });
      expect(report.blobs.deleted).toBe(1);
      expect(JSON.parse((await b.driver.read(paths.mirrorUsageReport(REG))).toString())).toMatchObject({ registry: REG, bytes: 0 });
      await new Promise((r) => setTimeout(r, 5));
      expect(await two.usage(REG)).toBe(0);
      expect(await one.usage(REG)).toBe(0);
      expect(await two.store(REG, 6000, async () => true)).toBe(true);
      // The caps listed only the processes' objects, never the cache's items.
      expect(new Set(listings)).toEqual(new Set([paths.mirrorUsageLive(REG)]));
    } finally {
      await one.close();
      await two.close();
    }
  });
});

it('without max-size nothing is counted and every fill is stored', async () => {
  const cap = new CacheCap(new (await import('../../src/storage/memory.js')).MemoryDriver(), [cacheConfig()]);
  expect(await cap.usage(REG)).toBeUndefined();
  expect(await cap.store(REG, 1e12, async () => true)).toBe(true);
});
