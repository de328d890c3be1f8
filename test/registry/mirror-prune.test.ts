/**
 * The cache prune's batched deletions (mirror/prune-sweep.ts) on every in-process backend: the registry's prune
 * protocol (tombstone, re-read, data, tombstones last) with one `deleteMany` per step of a batch, and on Swift a
 * count of its requests.
 */
import { describe, expect, it } from 'vitest';
import { pruneMirror } from '../../src/mirror/prune.js';
import { ITEM_BATCH } from '../../src/mirror/prune-sweep.js';
import { CacheStore } from '../../src/mirror/store.js';
import { paths } from '../../src/registry/paths.js';
import type { DeleteTarget, StorageDriver } from '../../src/storage/driver.js';
import { MemoryDriver } from '../../src/storage/memory.js';
import { bytes, freshCacheEach, cacheBlob, cacheConfig, cacheManifest, OBJECT, quiet, REG } from '../helpers/mirror-cache.js';
import { overriding } from '../helpers/server.js';
import { IN_PROCESS_BACKENDS } from '../helpers/swift.js';

const later = () => new Date(Date.now() + 2 * 3600_000);
const pathOf = (t: DeleteTarget) => (typeof t === 'string' ? t : t.path);

/** Every storage write and deleteMany, in order, as `put PATH` and `deleteMany [PATHS]`. */
function recording(inner: StorageDriver): { driver: StorageDriver; events: string[]; batches: string[][] } {
  const events: string[] = [];
  const batches: string[][] = [];
  const driver = overriding(inner, {
    put: (p, b, o) => (events.push(`put ${p}`), inner.put(p, b, o)),
    deleteMany: (targets) => {
      const list = targets.map(pathOf);
      batches.push(list);
      for (const p of list) events.push(`delete ${p}`);
      return inner.deleteMany(targets);
    },
    delete: (p) => (events.push(`single delete ${p}`), inner.delete(p)),
  });
  return { driver, events, batches };
}

describe.each(IN_PROCESS_BACKENDS)('cache prune in batches on %s', (backend) => {
  const cache = freshCacheEach(backend);

  it('expired items: each tombstoned before its objects go, one deleteMany for the data (another for parts), the tombstones after; nothing left', { timeout: 120_000 }, async () => {
    const b = cache();
    const store = new CacheStore(b.driver, 1000);
    const layers = Array.from({ length: 12 }, (_, i) => bytes(3000 + i, i));
    // One blob larger than an object: stored as parts joined (an SLO on Swift).
    const big = bytes(2.5 * OBJECT, 99);
    const digests = await Promise.all([...layers, big].map((l) => cacheBlob(store, l)));
    const m = await cacheManifest(store, 'org/app', 'v1', layers.slice(0, 3));
    const { driver, events, batches } = recording(b.driver);
    // Where a join keeps its parts (Swift), they are objects of their own, deleted after the data.
    const parts = (await b.left()).filter((p) => p.includes('/parts/'));
    expect(parts.length).toBe(b.driver.joinKeepsParts ? 3 : 0);

    const report = await pruneMirror(driver, cacheConfig(), { log: quiet, now: later(), lockSettleMs: 10 });
    expect(report.failures).toBe(0);
    expect(report.blobs).toEqual({ examined: 14, kept: 0, deleted: 14 });
    expect(report.tags).toEqual({ examined: 1, kept: 0, deleted: 1 });
    expect(await b.left()).toEqual([]);
    expect(events.filter((e) => e.startsWith('single delete') && !e.includes('prune.lock'))).toEqual([]);
    // Tag, then the items' objects (no parts), then the big blob's parts, then every tombstone.
    expect(batches).toHaveLength(parts.length > 0 ? 4 : 3);
    expect(batches[0]).toEqual([paths.mirrorTag(REG, 'org/app', 'v1')]);
    expect(batches[1].every((p) => !p.endsWith('/tombstone') && !p.includes('/parts/'))).toBe(true);
    expect(batches[1]).toContain(paths.mirrorBlobData(REG, m.digest));
    if (parts.length > 0) expect(batches[2].sort()).toEqual(parts.sort());
    expect(batches.at(-1)!.sort()).toEqual([...digests, m.digest].map((d) => paths.mirrorTombstone(REG, d)).sort());
    for (const d of [...digests, m.digest]) {
      const tombstoned = events.indexOf(`put ${paths.mirrorTombstone(REG, d)}`);
      expect(tombstoned).toBeGreaterThanOrEqual(0);
      expect(tombstoned).toBeLessThan(events.indexOf(`delete ${paths.mirrorBlobData(REG, d)}`));
    }
  });

  it('a failed delete keeps the item and its tombstone and is reported per object; a pull during the run keeps its item', { timeout: 120_000 }, async () => {
    const b = cache();
    const store = new CacheStore(b.driver, 1000);
    const [stuck, used, gone] = await Promise.all([bytes(1000, 1), bytes(1100, 2), bytes(1200, 3)].map((l) => cacheBlob(store, l)));
    let pulledNow = false;
    const warnings: { path?: string; what: string }[] = [];
    const log = { ...quiet, warn: (o: { path?: string }, what: string) => warnings.push({ path: o.path, what }) };
    const driver = overriding(b.driver, {
      deleteMany: async (targets) => {
        const failures = await b.driver.deleteMany(targets.filter((t) => pathOf(t) !== paths.mirrorBlobData(REG, stuck)));
        return targets.some((t) => pathOf(t) === paths.mirrorBlobData(REG, stuck)) ? [...failures, { path: paths.mirrorBlobData(REG, stuck), error: new Error('refused') }] : failures;
      },
      // A pull of `used` lands between prune's listing and its re-read (at prune's clock, two hours ahead).
      put: async (p, body, o) => {
        if (p === paths.mirrorTombstone(REG, used)) pulledNow = true;
        return b.driver.put(p, body, o);
      },
      stat: async (p) => {
        const o = await b.driver.stat(p);
        return o && pulledNow && p === paths.mirrorPulled(REG, used) ? { ...o, modified: now } : o;
      },
    });
    const now = later();
    const report = await pruneMirror(driver, cacheConfig(), { log, now, lockSettleMs: 10 });
    expect(report.blobs).toEqual({ examined: 3, kept: 2, deleted: 1 });
    expect(report.failures).toBe(1);
    expect(warnings).toEqual([{ path: paths.mirrorBlobData(REG, stuck), what: 'delete failed' }]);
    expect(await b.driver.stat(paths.mirrorTombstone(REG, stuck))).not.toBeNull();
    expect(await b.driver.stat(paths.mirrorBlobData(REG, stuck))).not.toBeNull();
    expect(await store.blobSize(REG, stuck)).toBeNull();
    expect(await b.driver.stat(paths.mirrorTombstone(REG, used))).toBeNull();
    expect(await store.blobSize(REG, used)).toBe(1100);
    expect(await b.driver.stat(paths.mirrorBlobData(REG, gone))).toBeNull();
    // The next run finishes the stuck item (and takes the other, unpulled since).
    const again = await pruneMirror(b.driver, cacheConfig(), { log: quiet, now: later(), lockSettleMs: 10 });
    expect(again.failures).toBe(0);
    expect(await b.left()).toEqual([]);
  });

  // Registered on Swift only (request counts are Swift's), rather than reported as skipped elsewhere.
  if (backend === 'swift') it('on Swift: about three requests per expired item (a tombstone, two re-reads), the deletes in bulk', { timeout: 300_000 }, async () => {
    const b = cache();
    const store = new CacheStore(b.driver, 1000);
    for (let i = 0; i < 40; i += 10) await Promise.all(Array.from({ length: 10 }, (_, j) => cacheBlob(store, bytes(2000, i + j))));
    const swift = b.driver as StorageDriver & { requestCount(): number };
    const before = swift.requestCount();
    const report = await pruneMirror(b.driver, cacheConfig(), { log: quiet, now: later(), lockSettleMs: 10 });
    const requests = swift.requestCount() - before;
    expect(report.blobs.deleted).toBe(40);
    // One by one it took 11.5 per item (a delete of each object, each with its own request or two).
    expect(requests / 40).toBeLessThan(4);
  });
});

it(`more than ${ITEM_BATCH} expired items go in several batches, each with its own deleteMany of data and of tombstones`, async () => {
  const inner = new MemoryDriver();
  const store = new CacheStore(inner, 1000);
  const n = ITEM_BATCH + 20;
  for (let i = 0; i < n; i++) await cacheBlob(store, bytes(100, i));
  const { driver, batches } = recording(inner);
  const report = await pruneMirror(driver, cacheConfig(), { log: quiet, now: later(), lockSettleMs: 10 });
  expect(report.blobs.deleted).toBe(n);
  expect(batches.map((b) => [b.length, b.every((p) => p.endsWith('/tombstone'))])).toEqual([
    [ITEM_BATCH * 3, false],
    [ITEM_BATCH, true],
    [20 * 3, false],
    [20, true],
  ]);
});
