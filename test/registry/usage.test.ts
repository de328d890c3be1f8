/**
 * Usage figures for a known push set, exact, on every backend and (on Swift) in both commit modes: what prune
 * records, what a fresh walk finds, and one repository's share.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Pruner } from '../../src/registry/prune.js';
import { computeUsage, readUsage, repositoryUsage } from '../../src/registry/usage.js';
import { MemoryDriver } from '../../src/storage/memory.js';
import type { CommitMode } from '../../src/registry/upload-commit.js';
import { pushBlob, sha256, startChunkedUpload, startServer, type TestServer } from '../helpers/server.js';
import { dropContainer, freshContainer, swiftDriver } from '../helpers/swift.js';

const FAST = process.env.BERTH_TEST_TIER === 'fast';
const silent = { debug() {}, info() {}, warn() {} };
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

type Backend = { name: string; start(): Promise<{ server: TestServer; cleanup(): Promise<void> }>; commit?: CommitMode };
const swiftOn = (commit: CommitMode): Backend => ({
  name: `swift (${commit})`,
  commit,
  async start() {
    const container = freshContainer();
    const server = await startServer(await swiftDriver(container, { segmentSize: 2 << 20 }), undefined, { commit });
    return { server, cleanup: () => dropContainer(container) };
  },
});
const BACKENDS: Backend[] = [
  { name: 'memory', start: async () => ({ server: await startServer(new MemoryDriver()), cleanup: async () => {} }) },
  { name: 'filesystem', start: async () => ({ server: await startServer(), cleanup: async () => {} }) },
  ...(FAST ? [] : [swiftOn('move'), swiftOn('link')]),
];

async function putManifest(url: string, repo: string, ref: string, config: { digest: string; size: number }, layers: { digest: string; size: number }[]): Promise<Buffer> {
  const body = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
      layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...l })),
    }),
  );
  const res = await fetch(`${url}/v2/${repo}/manifests/${ref}`, { method: 'PUT', headers: { 'Content-Type': OCI_MANIFEST }, body });
  expect(res.status).toBe(201);
  return body;
}

describe.each(BACKENDS)('usage on $name', (backend) => {
  let server: TestServer;
  let cleanup: () => Promise<void>;
  const expected = { ns: 0, a: 0, b: 0 };

  beforeAll(async () => {
    ({ server, cleanup } = await backend.start());
    const url = server.url;
    const config = Buffer.from('{"architecture":"amd64","os":"linux"}');
    const shared = randomBytes(3000);
    const onlyA = randomBytes(5000);
    // On Swift, a blob of several objects: in link mode its segments stay under uploads/ and must not count twice.
    const chunks = [randomBytes(3 << 20), randomBytes(1 << 20)];
    const big = Buffer.concat(chunks);
    const configDigest = { digest: await pushBlob(url, 'a', config), size: config.length };
    await pushBlob(url, 'b', config);
    const sharedA = await pushBlob(url, 'a', shared);
    await pushBlob(url, 'b', shared);
    const onlyADigest = await pushBlob(url, 'a', onlyA);
    const location = await startChunkedUpload(url, 'b', chunks);
    expect((await fetch(`${url}${location}?digest=${sha256(big)}`, { method: 'PUT' })).status).toBe(201);
    const ma = await putManifest(url, 'a', 'v1', configDigest, [{ digest: sharedA, size: 3000 }, { digest: onlyADigest, size: 5000 }]);
    const mb1 = await putManifest(url, 'b', 'v1', configDigest, [{ digest: sharedA, size: 3000 }, { digest: sha256(big), size: big.length }]);
    const mb3 = await putManifest(url, 'b', 'v2', configDigest, [{ digest: sha256(big), size: big.length }]);
    // A blob no manifest names (young, so prune keeps it): the namespace's, no repository's.
    await pushBlob(url, 'a', randomBytes(700));
    expected.a = config.length + 3000 + 5000 + ma.length;
    expected.b = config.length + 3000 + big.length + mb1.length + mb3.length;
    expected.ns = config.length + 3000 + 5000 + big.length + ma.length + mb1.length + mb3.length + 700;
  }, 120_000);
  afterAll(async () => {
    await server?.close();
    await cleanup?.();
  });

  it('prune records each blob once, repositories sharing what they share, and stores the figure', async () => {
    const report = await new Pruner(server.registry.driver).prune('_local', { uploadExpiry: 3600, log: silent });
    const u = report.usage!;
    expect(u).toMatchObject({ namespace: '_local', source: 'prune', bytes: expected.ns, blobs: 8, manifests: 3, tags: 3 });
    expect(u.repositories.a).toMatchObject({ bytes: expected.a, blobs: 4, manifests: 1, tags: 1 });
    expect(u.repositories.b).toMatchObject({ bytes: expected.b, blobs: 5, manifests: 2, tags: 2 });
    expect(Date.parse(u.repositories.b.oldestPush!)).toBeLessThanOrEqual(Date.parse(u.repositories.b.newestPush!));
    expect(u.oldestPush).toBe([u.repositories.a.oldestPush, u.repositories.b.oldestPush].sort()[0]);
    expect(await readUsage(server.registry.driver, '_local')).toEqual(u);
    if (backend.commit === 'link') {
      // The big blob's segments are still under uploads/, claimed: counting every object would count them twice.
      let all = 0;
      let claims = 0;
      for await (const o of server.registry.driver.list('_local')) {
        if (o.path.includes('/blobs/') || o.path.includes('/uploads/')) all += o.size;
        if (/\/uploads\/[^/]+\/owner\./.test(o.path)) claims++;
      }
      expect(claims).toBe(1);
      expect(all).toBeGreaterThanOrEqual(expected.ns + (4 << 20));
    }
  });

  it('a fresh walk finds the same figures without changing anything; one repository alone finds its share', async () => {
    const fresh = await computeUsage(server.registry.driver, '_local');
    const stored = (await readUsage(server.registry.driver, '_local'))!;
    expect(fresh.source).toBe('fresh');
    for (const key of ['bytes', 'blobs', 'manifests', 'tags', 'oldestPush', 'newestPush'] as const) expect(fresh[key]).toEqual(stored[key]);
    expect(fresh.repositories).toEqual(stored.repositories);
    expect(await repositoryUsage(server.registry.driver, '_local', 'b')).toEqual(stored.repositories.b);
    expect(await repositoryUsage(server.registry.driver, '_local', 'none')).toEqual({ bytes: 0, blobs: 0, manifests: 0, tags: 0 });
  });
});

describe('usage of a batched sweep', () => {
  it('a blob whose delete failed stays, and is counted once as stored', async () => {
    const failing = `_local/blobs/sha256:${'a'.repeat(64)}/data`;
    // A driver whose bulk delete refuses one blob's data: the sweep keeps that blob (and its tombstone).
    const driver = new (class extends MemoryDriver {
      override async deleteMany(targets: Parameters<MemoryDriver['deleteMany']>[0]) {
        const refused = targets.filter((t) => (typeof t === 'string' ? t : t.path) === failing);
        const failures = await super.deleteMany(targets.filter((t) => !refused.includes(t)));
        return [...failures, ...refused.map(() => ({ path: failing, error: new Error('refused') }))];
      }
    })();
    await driver.put(failing, Buffer.alloc(7));
    await driver.put(`_local/blobs/sha256:${'b'.repeat(64)}/data`, Buffer.alloc(11));
    const report = await new Pruner(driver).prune('_local', { uploadExpiry: 3600, now: new Date(Date.now() + 7200_000), log: silent });
    expect(report.blobs).toEqual({ examined: 2, kept: 1, deleted: 1 });
    expect(report.failures).toBe(1);
    expect(report.usage).toMatchObject({ bytes: 7, blobs: 1, manifests: 0, tags: 0 });
  });
});
