/**
 * Removal of cached items in batches, with the strength of the registry's prune (docs/internals.md "Prune beside
 * live pushes"; registry/prune-batch.ts does the same for a namespace's blobs). Per batch:
 * 1. every item gets its tombstone, then (for prune) its fill's `touched` and its `pulled` re-read: a fill or pull
 *    that came after the listing keeps it. A bounded number of these requests are in flight (a Limiter,
 *    util/concurrency.ts), and an item's re-read always follows its own tombstone;
 * 2. the items whose re-read passed lose every object but their parts and tombstone in one `deleteMany` (the data
 *    as a plain object even where it is a join: on Swift a multipart delete costs a request per item), then, in a
 *    second one, their parts (Swift segments), once the data that reads from them is gone;
 * 3. the tombstones in a last `deleteMany`: of the items now gone and of those a fill or pull claimed.
 * An item whose tombstone or re-read failed is left alone; one whose step 2 failed keeps its tombstone, so pulls
 * do not see half an item (the next run finishes it).
 */
import { deleteAll } from '../registry/prune-batch.js';
import { PRUNE_REQUESTS } from '../registry/prune-limit.js';
import { parseMirrorBlobPath, paths } from '../registry/paths.js';
import type { ObjectInfo, StorageDriver } from '../storage/driver.js';
import { forEachLimited, type Limiter } from '../util/concurrency.js';

export interface SweepItem {
  digest: string;
  /** The item's objects as listed (a listed tombstone is left out of the deletes and removed last). */
  objects: ObjectInfo[];
  /** A `touched` or `pulled` at least this recent (ms) on the re-read keeps the item; undefined: no re-read (fsck). */
  cutoff?: number;
}

export type SweepOutcome = 'deleted' | 'claimed' | 'failed';

export interface SweepContext {
  driver: StorageDriver;
  registry: string;
  /** Bounds the tombstones and re-reads (with whatever else the caller runs through it). */
  limit: Limiter;
  /** An object that could not be deleted, or an item whose tombstone or re-read failed (it stays). */
  failed(what: string, detail: { path?: string; blob?: string }, err: Error): void;
  /** A fill or pull used the item during the run: kept. */
  claimed?(digest: string): void;
  deleted?(path: string, digest: string): void;
}

/** Items per batch: each batch's tombstones and re-reads run together, then its two or three `deleteMany`s. */
export const ITEM_BATCH = 250;

export async function sweepItems(ctx: SweepContext, items: SweepItem[]): Promise<Map<string, SweepOutcome>> {
  const outcome = new Map<string, SweepOutcome>();
  for (let i = 0; i < items.length; i += ITEM_BATCH) {
    for (const [d, o] of await sweepBatch(ctx, items.slice(i, i + ITEM_BATCH))) outcome.set(d, o);
  }
  return outcome;
}

async function sweepBatch(ctx: SweepContext, batch: SweepItem[]): Promise<Map<string, SweepOutcome>> {
  const { driver, registry } = ctx;
  const outcome = new Map<string, SweepOutcome>();
  await forEachLimited(batch, PRUNE_REQUESTS, async (item) => {
    try {
      await ctx.limit.run(() => driver.put(paths.mirrorTombstone(registry, item.digest), Buffer.alloc(0)));
      if (item.cutoff === undefined) return void outcome.set(item.digest, 'deleted');
      const [touched, pulled] = await Promise.all([
        ctx.limit.run(() => driver.stat(paths.mirrorTouched(registry, item.digest))),
        ctx.limit.run(() => driver.stat(paths.mirrorPulled(registry, item.digest))),
      ]);
      const used = Math.max(touched?.modified.getTime() ?? 0, pulled?.modified.getTime() ?? 0);
      outcome.set(item.digest, used >= item.cutoff ? 'claimed' : 'deleted');
    } catch (err) {
      outcome.set(item.digest, 'failed');
      ctx.failed('could not tombstone a cached item', { blob: item.digest }, err as Error);
    }
  });
  const rest = (o: ObjectInfo) => parseMirrorBlobPath(registry, o.path)?.rest ?? '';
  const owner = new Map<string, string>();
  const confirmed = batch.filter((i) => outcome.get(i.digest) === 'deleted');
  for (const i of confirmed) for (const o of i.objects) owner.set(o.path, i.digest);
  const remove = async (objects: ObjectInfo[]) => {
    const failures = await deleteAll(driver, objects.map((o) => ({ path: o.path, joined: false })));
    const bad = new Set<string>();
    for (const f of failures) {
      const digest = owner.get(f.path)!;
      bad.add(f.path);
      outcome.set(digest, 'failed');
      ctx.failed('delete failed', { path: f.path, blob: digest }, f.error);
    }
    for (const o of objects) if (!bad.has(o.path)) ctx.deleted?.(o.path, owner.get(o.path)!);
  };
  const live = (i: SweepItem) => outcome.get(i.digest) === 'deleted';
  await remove(confirmed.flatMap((i) => i.objects.filter((o) => rest(o) !== 'tombstone' && !rest(o).startsWith('parts/'))));
  // An item whose data could not be deleted keeps the parts it reads from.
  await remove(confirmed.filter(live).flatMap((i) => i.objects.filter((o) => rest(o).startsWith('parts/'))));
  const tombstones = batch.filter((i) => outcome.get(i.digest) !== 'failed').map((i) => ({ path: paths.mirrorTombstone(registry, i.digest), digest: i.digest }));
  const bad = new Map((await deleteAll(driver, tombstones.map((t) => ({ path: t.path, joined: false })))).map((f) => [f.path, f.error]));
  for (const t of tombstones) {
    const err = bad.get(t.path);
    if (err) {
      outcome.set(t.digest, 'failed');
      ctx.failed('delete failed', { path: t.path, blob: t.digest }, err);
    } else if (outcome.get(t.digest) === 'claimed') ctx.claimed?.(t.digest);
    else ctx.deleted?.(t.path, t.digest);
  }
  return outcome;
}
