/**
 * fsck of the pull-through cache (mirror/fsck.ts) on every in-process backend, and `berth fsck` on the filesystem:
 * damaged cached items and tags are reported with their upstream and removed by repair; what is normal in the
 * cache (an index before its children, a young tag whose manifest is not cached) is not reported; pushed content
 * is never touched.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkCache } from '../../src/mirror/fsck.js';
import { CacheStore } from '../../src/mirror/store.js';
import { paths } from '../../src/registry/paths.js';
import type { ObjectInfo, StorageDriver } from '../../src/storage/driver.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { bytes, freshCacheEach, cacheBlob, cacheConfig, cacheManifest, OBJECT, REG } from '../helpers/mirror-cache.js';
import { berthCli, overriding, sha256 } from '../helpers/server.js';
import { IN_PROCESS_BACKENDS } from '../helpers/swift.js';

const INDEX = 'application/vnd.oci.image.index.v1+json';

/** A cache with a bit of everything a healthy one holds; returns what the tests break. */
async function healthyCache(driver: StorageDriver) {
  const store = new CacheStore(driver, 1000);
  const [l1, l2, big] = [bytes(3000, 1), bytes(4000, 2), bytes(2.5 * OBJECT, 3)];
  for (const b of [l1, l2, big]) await cacheBlob(store, b);
  const image = await cacheManifest(store, 'org/app', 'v1', [l1, l2, big]);
  // An index cached before its children: none of them is.
  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: INDEX, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha256('child'), size: 5 }] }));
  await store.writeManifest(REG, sha256(index), index, INDEX);
  await store.setTag(REG, 'org/multi', 'v1', { digest: sha256(index), mediaType: INDEX, size: index.length, checked: Date.now() });
  // Tags naming manifests not cached: one just written (normal), one older than keep (listings see it so).
  await store.setTag(REG, 'org/young', 'v1', { digest: sha256('not cached'), mediaType: INDEX, size: 1, checked: Date.now() });
  await store.setTag(REG, 'org/old', 'v1', { digest: sha256('not cached either'), mediaType: INDEX, size: 1, checked: 0 });
  // Pushed content beside the cache, itself damaged: the cache's check never looks at it.
  await driver.put(paths.blobData('_local', sha256('pushed')), Buffer.from('not what was pushed'));
  return { l1, l2, big, image, index };
}

/** Listings see tags of org/old as two days old. */
function agedOld(inner: StorageDriver): StorageDriver {
  const age = (o: ObjectInfo): ObjectInfo => (o.path.includes('/org/old/') ? { ...o, modified: new Date(Date.now() - 2 * 86_400_000) } : o);
  return overriding(inner, {
    list: async function* (prefix) {
      for await (const o of inner.list(prefix)) yield age(o);
    },
  });
}

describe.each(IN_PROCESS_BACKENDS)('fsck of the cache on %s', (backend) => {
  const cache = freshCacheEach(backend);

  it('a healthy cache has no problems; damage is reported with the upstream and repair removes only the broken items', { timeout: 120_000 }, async () => {
    const b = cache();
    const c = await healthyCache(b.driver);
    const driver = agedOld(b.driver);
    const m = cacheConfig();
    const clean = await checkCache(driver, m);
    expect(clean.problems.filter((p) => !p.path.includes('/org/old/'))).toEqual([]);
    expect(clean).toMatchObject({ registry: REG, blobs: 5, manifests: 2, tags: 4 });

    // Damage: a layer's bytes replaced (same size), a manifest's bytes that hash to another digest, a manifest's
    // record and a tag that are not JSON.
    await b.driver.put(paths.mirrorBlobData(REG, sha256(c.l1)), bytes(c.l1.length, 77));
    await b.driver.put(paths.mirrorBlobData(REG, c.image.digest), Buffer.from(c.image.body.toString().replace('"schemaVersion":2', '"schemaVersion":3')));
    await b.driver.put(paths.mirrorManifestMeta(REG, sha256(c.index)), Buffer.from('{"mediaType'));
    await b.driver.put(paths.mirrorTag(REG, 'org/bad', 'v1'), Buffer.from('garbage'));

    const found = await checkCache(driver, m);
    const summary = found.problems.map((p) => [p.kind, p.path]).sort();
    expect(summary).toEqual(
      [
        ['corrupt', paths.mirrorBlobData(REG, sha256(c.l1))],
        ['corrupt', paths.mirrorBlobData(REG, c.image.digest)],
        ['corrupt', paths.mirrorManifestMeta(REG, sha256(c.index))],
        ['corrupt', paths.mirrorTag(REG, 'org/bad', 'v1')],
        ['missing', paths.mirrorTag(REG, 'org/old', 'v1')],
      ].sort(),
    );
    for (const p of found.problems) expect(p.detail).toMatch(/^cache quay\.io: /);
    expect(found.removed).toBe(0);

    const repaired = await checkCache(driver, m, { repair: true });
    expect(repaired.problems).toHaveLength(5);
    expect(repaired.removed).toBe(5);
    const left = await b.left();
    for (const gone of [sha256(c.l1), c.image.digest, sha256(c.index)]) expect(left.filter((p) => p.startsWith(paths.mirrorBlob(REG, gone)))).toEqual([]);
    expect(left).not.toContain(paths.mirrorTag(REG, 'org/bad', 'v1'));
    expect(left).not.toContain(paths.mirrorTag(REG, 'org/old', 'v1'));
    // The rest stays: the healthy blobs, and tags whose manifests are gone now (fetched again on their next pull).
    const store = new CacheStore(b.driver, 1000);
    expect(await store.blobSize(REG, sha256(c.l2))).toBe(c.l2.length);
    expect(await store.blobSize(REG, sha256(c.big))).toBe(c.big.length);
    expect(left).toContain(paths.mirrorTag(REG, 'org/app', 'v1'));
    expect(left).toContain(paths.mirrorTag(REG, 'org/young', 'v1'));
    expect((await b.driver.read(paths.blobData('_local', sha256('pushed')))).toString()).toBe('not what was pushed');
    expect((await checkCache(driver, m)).problems).toEqual([]);
  });
});

it('berth fsck checks each upstream cache on a run over all namespaces, and --repair removes its broken items', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-fsck-cache-'));
  try {
    const driver = await FilesystemDriver.open(join(dir, 'data'));
    const store = new CacheStore(driver, 1000);
    const layer = bytes(5000, 9);
    await cacheBlob(store, layer);
    await driver.put(paths.mirrorBlobData(REG, sha256(layer)), bytes(5000, 10));
    const config = join(dir, 'registry.yaml');
    await writeFile(config, `registry:\n  storage:\n    driver: filesystem\n    root: ${dir}/data\n  mirrors:\n    - registry: ${REG}\n      url: http://127.0.0.1:1\n`);
    const found = await berthCli(config, 'fsck');
    expect(found.code).toBe(1);
    expect(found.stdout).toContain(`CORRUPT ${paths.mirrorBlobData(REG, sha256(layer))}: cache ${REG}: blob ${sha256(layer)}: content hashes to`);
    expect(found.stdout).toMatch(/mirror cache quay\.io: 1 items \(0\.0 MiB, 0 manifests\) and 0 tags checked in [0-9.]+ s; 1 problems\n/);
    // A run over named namespaces leaves the cache alone.
    expect((await berthCli(config, 'fsck', '--namespace', '_local')).stdout).not.toContain('mirror cache');
    const repaired = await berthCli(config, 'fsck', '--repair');
    expect(repaired.stdout).toContain('1 problems, 1 removed (fetched again on the next pull)');
    expect(await store.blobSize(REG, sha256(layer))).toBeNull();
    expect((await berthCli(config, 'fsck')).code).toBe(0);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
