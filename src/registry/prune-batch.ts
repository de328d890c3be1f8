/**
 * Prune's deletions in batches: a queue that hands many objects at once to the driver's `deleteMany` (Swift: bulk
 * delete, one request per thousands of objects), and the sweep of unreferenced blobs a batch at a time.
 *
 * The sweep keeps prune's protocol (prune.ts, docs/internals.md) per blob; only the waiting is shared:
 * 1. every blob of the batch gets its tombstone, then its `touched` re-read, a few blobs at a time;
 * 2. the blobs whose re-read passed lose everything but the tombstone in one `deleteMany` (joins first, so a
 *    data object goes before the parts it reads from);
 * 3. then, in a second `deleteMany`, the tombstones: of the blobs fully deleted, and of those a push claimed.
 * A blob whose tombstone or re-read failed is not in step 2; one whose step 2 failed keeps its tombstone (a later
 * run finishes it), so a push never finds its data gone without a tombstone saying so.
 */
import type { DeleteFailure, DeleteTarget, ObjectInfo, StorageDriver } from '../storage/driver.js';
import { targetPath } from '../storage/delete-many.js';
import { forEachLimited, type Limiter } from '../util/concurrency.js';
import { LISTING_AHEAD, PRUNE_REQUESTS, readAhead } from './prune-limit.js';
import { groups } from './listing.js';
import { parseBlobPath, parseUploadPath, paths, uploadOwnerOf } from './paths.js';
import type { PruneReport, Tally } from './prune.js';

/** Objects per `deleteMany`: one Swift bulk request; small enough that a batch's state stays small. */
export const DELETE_BATCH = 1000;
/** Blobs swept per batch. */
export const SWEEP_BATCH = 250;

interface Queued {
  target: DeleteTarget;
  done?: (ok: boolean) => void;
}

/** Deletions that wait for company: flushed when DELETE_BATCH are queued, and by the caller at the end of a stage. */
export class DeleteQueue {
  private pending: Queued[] = [];

  constructor(
    private readonly driver: StorageDriver,
    readonly failed: (f: DeleteFailure) => void,
    private readonly deleted: (n: number) => void,
    /** A queue whose deletions must all come first: flushed before each flush of this one. */
    private readonly after?: DeleteQueue,
    /** Shared by a run's queues and sweeps: one `deleteMany` at a time (each has its own requests in flight). */
    private readonly gate?: Limiter,
  ) {}

  /** A queue of its own with the same reporting: for work whose flushes must not wait on, or flush, another's. */
  sibling(): DeleteQueue {
    return new DeleteQueue(this.driver, this.failed, this.deleted, undefined, this.gate);
  }

  async add(target: DeleteTarget, done?: (ok: boolean) => void): Promise<void> {
    this.pending.push({ target, done });
    if (this.pending.length >= DELETE_BATCH) await this.flush();
  }

  async flush(): Promise<void> {
    await this.after?.flush();
    const batch = this.pending;
    this.pending = [];
    if (batch.length === 0) return;
    const bad = new Set((await deleteAll(this.driver, batch.map((q) => q.target), this.gate)).map((f) => (this.failed(f), f.path)));
    this.deleted(batch.length - bad.size);
    for (const q of batch) q.done?.(!bad.has(targetPath(q.target)));
  }
}

/** `deleteMany` (through `gate`, if given), with a driver that throws counted as failing every target. */
export async function deleteAll(driver: StorageDriver, targets: DeleteTarget[], gate?: Limiter): Promise<DeleteFailure[]> {
  if (targets.length === 0) return [];
  try {
    return await (gate ? gate.run(() => driver.deleteMany(targets)) : driver.deleteMany(targets));
  } catch (err) {
    const error = err instanceof Error ? err : new Error(String(err));
    return targets.map((t) => ({ path: targetPath(t), error }));
  }
}

/** A blob to sweep: its objects as listed, the tombstone (if one was listed) left out. */
export interface Candidate {
  digest: string;
  objects: ObjectInfo[];
  size: number;
  /** The size of its data, if it has data (what usage counts for a blob that stays). */
  dataSize?: number;
}

export type SweepOutcome = 'deleted' | 'claimed' | 'failed';

export interface SweepContext {
  driver: StorageDriver;
  ns: string;
  graceCutoff: number;
  /** Bounds the tombstones and re-reads together with prune's other requests. */
  limit: Limiter;
  /** One `deleteMany` of the run at a time (DeleteQueue). */
  deletes: Limiter;
  /** A step failed for this blob (it is kept; the run goes on). */
  failed(digest: string, what: string, err: Error): void;
  /** Objects deleted (for progress). */
  deleted(n: number): void;
}

/** Sweep a batch of blobs (module comment); resolves with each blob's outcome. */
export async function sweepBatch(ctx: SweepContext, batch: Candidate[]): Promise<Map<string, SweepOutcome>> {
  const { driver, ns } = ctx;
  const outcome = new Map<string, SweepOutcome>();
  await forEachLimited(batch, PRUNE_REQUESTS, async (c) => {
    try {
      // The re-read follows its own tombstone's PUT (the protocol's order), whatever else is in flight.
      await ctx.limit.run(() => driver.put(paths.blobTombstone(ns, c.digest), Buffer.alloc(0)));
      const touched = await ctx.limit.run(() => driver.stat(paths.blobTouched(ns, c.digest)));
      outcome.set(c.digest, touched && touched.modified.getTime() >= ctx.graceCutoff ? 'claimed' : 'deleted');
    } catch (err) {
      outcome.set(c.digest, 'failed');
      ctx.failed(c.digest, 'could not tombstone blob', err as Error);
    }
  });
  const confirmed = batch.filter((c) => outcome.get(c.digest) === 'deleted');
  const owner = new Map<string, string>();
  for (const c of confirmed) for (const o of c.objects) owner.set(o.path, c.digest);
  const isPart = (o: ObjectInfo) => parseBlobPath(ns, o.path)?.rest.startsWith('parts/') === true;
  // Everything but the parts first, the data as a plain object even where it is a join (an SLO): a multipart delete
  // costs a request and several of Swift's own steps per blob. Its parts are either the blob's own (move mode), which
  // go next, once the data that reads from them is gone, or in its upload's directory (link mode), which goes with
  // the claim in this run (removeClaims; the next run's uploads stage at worst).
  const remove = async (objects: ObjectInfo[]) => {
    const failures = await deleteAll(driver, objects.map((o) => ({ path: o.path, joined: false })), ctx.deletes);
    for (const f of failures) {
      const digest = owner.get(f.path)!;
      if (outcome.get(digest) === 'deleted') ctx.failed(digest, 'delete failed', f.error);
      outcome.set(digest, 'failed');
    }
    ctx.deleted(objects.length - failures.length);
  };
  await remove(confirmed.flatMap((c) => c.objects.filter((o) => !isPart(o))));
  // A blob whose data could not be deleted keeps the parts it reads from.
  await remove(confirmed.filter((c) => outcome.get(c.digest) === 'deleted').flatMap((c) => c.objects.filter(isPart)));
  // Tombstones last: of blobs now gone, and of blobs a push claimed (it is kept, and must not look swept).
  const tombstones = batch
    .filter((c) => outcome.get(c.digest) !== 'failed')
    .map((c) => ({ path: paths.blobTombstone(ns, c.digest), joined: false, digest: c.digest }));
  const bad = await deleteAll(driver, tombstones, ctx.deletes);
  const badPaths = new Set(bad.map((f) => f.path));
  for (const t of tombstones) {
    if (!badPaths.has(t.path)) {
      if (outcome.get(t.digest) === 'deleted') ctx.deleted(1);
      continue;
    }
    ctx.failed(t.digest, 'could not delete the tombstone', bad.find((f) => f.path === t.path)!.error);
    outcome.set(t.digest, 'failed');
  }
  return outcome;
}

/**
 * Parts of a kept blob that its data does not read from: left by a commit that lost a race with another upload
 * of the same digest, or that died between moving its chunks and joining them. Only old ones go: a commit in
 * progress moves its parts before it writes the data.
 */
export async function strayParts(
  ctx: SweepContext,
  digest: string,
  data: ObjectInfo,
  objects: ObjectInfo[],
  bytes: Tally,
  remove: (path: string, what: object) => Promise<boolean>,
): Promise<void> {
  const rest = (o: ObjectInfo) => parseBlobPath(ctx.ns, o.path)!.rest;
  const old = objects.filter((o) => rest(o).startsWith('parts/') && o.modified.getTime() < ctx.graceCutoff);
  if (old.length === 0) return;
  // A join keeps the parts of one upload: with one upload's parts present they are the data's own, and only
  // a second upload's directory needs the data's segment list (one request) to tell which is stray.
  const uploads = new Set(objects.map(rest).filter((r) => r.startsWith('parts/')).map((r) => r.split('/')[1]));
  if (ctx.driver.joinKeepsParts && uploads.size < 2) return;
  let used: Set<string>;
  try {
    used = new Set(ctx.driver.joinKeepsParts ? ((await ctx.driver.segments?.(data.path)) ?? []) : []);
  } catch (err) {
    return ctx.failed(digest, 'could not read the segments of a blob', err as Error);
  }
  for (const o of old) {
    if (used.has(o.path)) continue;
    bytes.examined += o.size;
    if (await remove(o.path, { blob: digest, stray: 'part' })) bytes.deleted += o.size;
  }
}

/**
 * With commit: link, a swept blob's segments lie in an upload directory claimed by uploads/<id>/owner.<digest>
 * (the sweep deleted only the data, as a plain object); they, the claim and whatever else is left there go in the
 * same run (one more listing of the uploads) instead of the next. Only claims older than the upload expiry: a younger one is a commit of the
 * same digest in progress (another upload), which keeps its directory. A batch of directories at a time: what is
 * left first, then the claims of those emptied (a directory never loses its claim while something of it stays).
 */
export async function removeClaims(
  driver: StorageDriver,
  ns: string,
  graceCutoff: number,
  swept: Set<string>,
  queue: DeleteQueue,
  claimDeleted: () => void,
): Promise<void> {
  type Dir = { marks: ObjectInfo[]; rest: ObjectInfo[] };
  let claimed: Dir[] = [];
  // Each batch of directories on a queue of its own, so that its two steps stay in order while the next batch is
  // listed and started; two batches in flight at most.
  const settle = async (dirs: Dir[]) => {
    const own = queue.sibling();
    const emptied = dirs.map(() => true);
    for (const [i, dir] of dirs.entries()) for (const o of dir.rest) await own.add(o, (ok) => (emptied[i] &&= ok));
    await own.flush();
    for (const [i, dir] of dirs.entries()) {
      if (!emptied[i]) continue;
      for (const o of dir.marks) await own.add(o, (ok) => ok && isClaim(o) && claimDeleted());
    }
    await own.flush();
  };
  const settling: Promise<void>[] = [];
  const start = async () => {
    const p = settle(claimed);
    claimed = [];
    p.catch(() => {});
    settling.push(p);
    if (settling.length >= 2) await settling.shift();
  };
  const isClaim = (o: ObjectInfo) => uploadOwnerOf(parseUploadPath(ns, o.path)!.rest) !== null;
  for await (const { objects } of groups(readAhead(driver.list(paths.uploads(ns)), LISTING_AHEAD), (o) => parseUploadPath(ns, o.path)?.id ?? null)) {
    const claims = objects.filter(isClaim);
    // Every claim of the directory names a blob swept now (two joins may have raced past the seal) and is old.
    const ours = claims.length > 0 && claims.every((c) => swept.has(uploadOwnerOf(parseUploadPath(ns, c.path)!.rest)!) && c.modified.getTime() < graceCutoff);
    if (!ours) continue;
    // The claims and the seal go last, as prune-uploads.ts removes them: never while something they speak for stays.
    const isMark = (o: ObjectInfo) => isClaim(o) || o.path.endsWith('/sealed');
    claimed.push({ marks: objects.filter(isMark), rest: objects.filter((o) => !isMark(o)) });
    if (claimed.length >= SWEEP_BATCH) await start();
  }
  await start();
  while (settling.length > 0) await settling.shift();
}

/**
 * A progress line: what was examined and deleted, the storage requests so far, and in the blob stage the time left.
 * Blobs are listed in digest order and digests are uniform, so the hex position of the current one says how far
 * that stage (the longest) has come since `stageStarted`.
 */
export function progressLine(ns: string, stage: string, r: PruneReport, requests: number | undefined, stageStarted: number, digest?: string): string {
  let left = '';
  const hex = digest?.split(':')[1];
  if (hex) {
    const done = parseInt(hex.slice(0, 8), 16) / 2 ** 32;
    if (done > 0.01) left = `, about ${Math.round(((Date.now() - stageStarted) / 1000) * ((1 - done) / done))} s left in blobs (${Math.round(done * 100)}%)`;
  }
  const sent = requests === undefined ? '' : `, ${requests} storage requests`;
  return `prune ${ns}: ${stage}: uploads ${r.uploads.examined}, manifests ${r.manifests.examined}, blobs ${r.blobs.examined} examined; ${r.objects} objects deleted${sent}${left}`;
}
