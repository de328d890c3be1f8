/**
 * Prune's cost on Swift in requests, not time: with bulk delete, at most one request per deleted object on a small
 * store with half its images expired, and fewer than the same prune with bulk delete turned off.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { Pruner, type PruneReport } from '../../src/registry/prune.js';
import { pushImage, startServer, type TestServer } from '../helpers/server.js';
import { BACKENDS, dropContainer, freshContainer, SWIFT_COMMIT, swiftDriver } from '../helpers/swift.js';

const HOUR = 3600;
const silent = { debug() {}, info() {}, warn() {} };
const pause = () => new Promise((r) => setTimeout(r, 30));
const containers: string[] = [];
afterAll(async () => {
  for (const c of containers) await dropContainer(c);
});

/** Pushes `images` images of two small layers (one shared base), the first half before the cutoff; prunes. */
async function pruneHalf(bulkDeleteMax: number | undefined, images: number): Promise<{ report: PruneReport; requests: number; kept: boolean[] }> {
  const container = freshContainer();
  containers.push(container);
  const driver = await swiftDriver(container, bulkDeleteMax === undefined ? {} : { bulkDeleteMax });
  const s: TestServer = await startServer(driver, undefined, { commit: SWIFT_COMMIT });
  try {
    const base = randomBytes(2000);
    const push = (i: number) => pushImage(s.url, `tenant/app${i % 3}`, `v${i}`, [base, randomBytes(1500)]);
    // Each half pushed 3 at a time (the machine is shared: this is the slow part).
    const half = Array.from({ length: images / 2 }, (_, i) => i);
    for (let i = 0; i < half.length; i += 3) await Promise.all(half.slice(i, i + 3).map((j) => push(j)));
    await pause();
    const cutoff = Date.now();
    await pause();
    for (let i = 0; i < half.length; i += 3) await Promise.all(half.slice(i, i + 3).map((j) => push(images / 2 + j)));
    const before = driver.requestCount();
    const report = await new Pruner(driver).prune('_local', { expiration: HOUR, uploadExpiry: HOUR, now: new Date(cutoff + HOUR * 1000), log: silent, lockSettleMs: 10 });
    const requests = driver.requestCount() - before;
    const kept = [];
    for (let i = images / 2; i < images; i++) kept.push((await fetch(`${s.url}/v2/tenant/app${i % 3}/manifests/v${i}`)).status === 200);
    return { report, requests, kept };
  } finally {
    await s.close();
  }
}

describe.runIf(BACKENDS.includes('swift'))('prune on Swift, counted in requests', () => {
  it('bulk delete: at most one request per deleted object, fewer than single deletes, the same objects deleted', { timeout: 600_000 }, async () => {
    const bulk = await pruneHalf(undefined, 12);
    const single = await pruneHalf(0, 12);
    for (const run of [bulk, single]) {
      expect(run.report.failures).toBe(0);
      expect(run.report.manifests.deleted).toBe(6);
      expect(run.kept).toEqual(Array(6).fill(true));
    }
    expect(bulk.report.objects).toBe(single.report.objects);
    expect(bulk.report.objects).toBeGreaterThan(20);
    // Fixed costs (lock, listings, the bulk requests themselves) weigh on a store this small; the benchmark
    // (tools/bench-prune.mjs) measures the ratio at scale.
    expect(bulk.requests / bulk.report.objects).toBeLessThan(1.5);
    expect(single.requests / single.report.objects).toBeGreaterThan(2);
    console.log(`requests per deleted object: bulk ${(bulk.requests / bulk.report.objects).toFixed(2)} (${bulk.requests}/${bulk.report.objects}), single ${(single.requests / single.report.objects).toFixed(2)} (${single.requests}/${single.report.objects})`);
  });
});
