/**
 * Prune's first stage: upload directories.
 *
 * An upload directory is one of two things:
 * - an upload in progress (its record, chunks and pages): abandoned once it has been idle for the upload expiry,
 *   judged by its newest object (the record is rewritten after every chunk, so the early chunks of a long, active
 *   upload being old says nothing);
 * - with commit: link, the segments of a blob, claimed by uploads/<id>/owner.<digest> (upload-commit.ts). A claim
 *   is judged by its own time: younger than the upload expiry, it is a commit in progress and left alone. An older
 *   one is kept while its blob is stored, at no cost beyond the listing (the claim's name says the blob). Once its
 *   blob is swept, the segments and the claim go after the blob stage (prune-batch.ts: removeClaims). Where a
 *   record survived (a commit that stopped before removing it) or two directories claim one blob (two uploads of
 *   one digest committed at once), the
 *   directory is checked against what the blob reads from (`segments`, one request): the rest goes, the record
 *   first, and the claim last, only if nothing in the directory is read.
 */
import type { ObjectInfo, StorageDriver } from '../storage/driver.js';
import type { Tally } from './prune.js';
import { groups } from './listing.js';
import { parseBlobPath, parseUploadPath, paths, uploadOwnerOf } from './paths.js';

export interface UploadPruneRun {
  readonly driver: StorageDriver;
  readonly ns: string;
  /** Objects older than this (ms since the epoch) are past the upload expiry. */
  readonly graceCutoff: number;
  /** Uploads, and (`linked`) directories claimed by a blob. */
  readonly tally: Tally;
  readonly linked: Tally;
  readonly bytes: Tally;
  /** Delete one listed object now (a listing entry: the driver knows whether it is a join). */
  remove(o: ObjectInfo, what: object): Promise<boolean>;
  /** Delete a listed object with the next batch; `last` ones after every other of the stage (marks). */
  removeLater(o: ObjectInfo, what: object, last: boolean): Promise<void>;
  warn(obj: object, msg: string): void;
  tick(stage: string): void;
}

/** A directory past the upload expiry claimed by one stored blob: kept, unless another directory claims the blob. */
interface Claim {
  id: string;
  bytes: number;
}

export async function pruneUploads(run: UploadPruneRun): Promise<void> {
  const { driver, ns } = run;
  let stored: Set<string> | undefined;
  const claimsOf = new Map<string, Claim[]>();
  for await (const { key: id, objects } of groups(driver.list(paths.uploads(ns)), (o) => parseUploadPath(ns, o.path)?.id ?? null)) {
    // Two claims in one directory: two joins raced past the seal (Swift's create-only is not atomic); both are judged.
    const claims = objects.filter(isClaim);
    const record = objects.find((o) => parseUploadPath(ns, o.path)!.rest === 'metadata');
    // What a committed or cancelled upload leaves where processes cannot lock (its seal, and any chunk a PATCH begun
    // before the seal stored after it) is not an upload: it is removed after the expiry, uncounted.
    const finished = claims.length === 0 && !record && objects.some((o) => o.path.endsWith('/sealed'));
    const judgedBy = claims.length > 0 ? Math.max(...claims.map((c) => c.modified.getTime())) : Math.max(...objects.map((o) => o.modified.getTime()));
    if (finished) {
      if (judgedBy < run.graceCutoff) await removeFinished(run, id, objects);
      run.tick('uploads');
      continue;
    }
    const tally = claims.length > 0 ? run.linked : run.tally;
    tally.examined++;
    const bytes = objects.reduce((n, o) => n + o.size, 0);
    run.bytes.examined += bytes;
    if (judgedBy >= run.graceCutoff) {
      keep(run, tally, bytes);
    } else if (claims.length === 0) {
      await removeUpload(run, tally, id, objects, bytes);
    } else {
      stored ??= await storedBlobs(driver, ns);
      const blobs: string[] = [];
      for (const c of claims) {
        const blob = uploadOwnerOf(parseUploadPath(ns, c.path)!.rest)!;
        if (await isStored(run, stored, blob)) blobs.push(blob);
      }
      const segments = objects.filter((o) => !isMark(o) && o !== record);
      if (segments.length === 0 || blobs.length === 0) await removeUpload(run, tally, id, objects, bytes);
      else if (record || claims.length > 1) await removeUnread(run, id, blobs, objects, bytes);
      else claimsOf.set(blobs[0], [...(claimsOf.get(blobs[0]) ?? []), { id, bytes }]);
    }
    run.tick('uploads');
  }
  for (const [blob, claims] of claimsOf) {
    if (claims.length === 1) {
      keep(run, run.linked, claims[0].bytes);
      continue;
    }
    for (const c of claims) {
      const objects: ObjectInfo[] = [];
      for await (const o of driver.list(paths.upload(ns, c.id))) objects.push(o);
      await removeUnread(run, c.id, [blob], objects, c.bytes);
    }
  }
}

function keep(run: UploadPruneRun, tally: Tally, bytes: number): void {
  tally.kept++;
  run.bytes.kept += bytes;
}

const isClaim = (o: ObjectInfo) => /\/owner\.[^/]+$/.test(o.path);
/** The claims and the seal: what says whose the directory is, removed only after everything it speaks for. */
const isMark = (o: ObjectInfo) => isClaim(o) || o.path.endsWith('/sealed');

/** The record first (it must never name a missing chunk), the claims and seal last (never gone while a segment stays). */
async function removeUpload(run: UploadPruneRun, tally: Tally, id: string, objects: ObjectInfo[], bytes: number): Promise<void> {
  const rank = (o: ObjectInfo) => (o.path.endsWith('/metadata') ? 0 : isMark(o) ? 2 : 1);
  let ok = true;
  for (const o of [...objects].sort((a, b) => rank(a) - rank(b))) ok = (await run.remove(o, { upload: id })) && ok;
  if (ok) {
    tally.deleted++;
    run.bytes.deleted += bytes;
  } else keep(run, tally, bytes);
}

/** A finished upload's leftovers: the seal last, so that a PATCH begun before it still finds it meanwhile. */
async function removeFinished(run: UploadPruneRun, id: string, objects: ObjectInfo[]): Promise<void> {
  // The commonest leftovers (every push leaves a seal where processes cannot lock): in batches, seals after chunks.
  for (const o of objects) await run.removeLater(o, { upload: id, finished: true }, o.path.endsWith('/sealed'));
}

/** What `blobs` read from (Swift: one request each); a blob that is not stored reads from nothing. */
async function readBy(driver: StorageDriver, ns: string, blobs: string[]): Promise<Set<string>> {
  const read = new Set<string>();
  for (const blob of blobs) for (const p of (await driver.segments?.(paths.blobData(ns, blob))) ?? []) read.add(p);
  return read;
}

/**
 * What goes from a claimed or sealed directory: everything no blob reads from, the record first; the claims and
 * the seal too if nothing is read (the seal stays anyway when `keepSeal`).
 */
async function unread(driver: StorageDriver, objects: ObjectInfo[], read: Set<string>, keepSeal: boolean): Promise<ObjectInfo[]> {
  const anyRead = objects.some((o) => read.has(o.path));
  const goes: ObjectInfo[] = [];
  for (const o of objects) {
    if (read.has(o.path) || (anyRead && isMark(o)) || (keepSeal && o.path.endsWith('/sealed'))) continue;
    // A sub-manifest no blob reads (a second join's, raced past the seal) is deleted with its segments (Swift's
    // multipart delete): only if none of them is read.
    if (/\/manifest-[^/]+$/.test(o.path) && ((await driver.segments?.(o.path)) ?? []).some((p) => read.has(p))) continue;
    goes.push(o);
  }
  const rank = (o: ObjectInfo) => (o.path.endsWith('/metadata') ? 0 : isMark(o) ? 2 : 1);
  return goes.sort((a, b) => rank(a) - rank(b));
}

/** A claimed directory checked against what its blobs read from: the rest goes, the claims too if nothing is read. */
async function removeUnread(run: UploadPruneRun, id: string, blobs: string[], objects: ObjectInfo[], bytes: number): Promise<void> {
  let read: Set<string>;
  try {
    read = await readBy(run.driver, run.ns, blobs);
  } catch (err) {
    run.warn({ namespace: run.ns, upload: id, blobs, err: (err as Error).message }, 'could not read what a blob reads from');
    return keep(run, run.linked, bytes);
  }
  if (!objects.some((o) => read.has(o.path))) return removeUpload(run, run.linked, id, objects, bytes);
  let freed = 0;
  for (const o of await unread(run.driver, objects, read, false)) {
    if (await run.remove(o, { upload: id, stray: 'not read by its blob' })) freed += o.size;
  }
  keep(run, run.linked, bytes - freed);
  run.bytes.deleted += freed;
}

/**
 * Cancel's and abandon's clearing of a sealed directory (uploads.ts), by prune's judgement: the blobs are those its
 * listed claims name and what `blobs` answers (the seal's digest, read directly: a listing may not show a claim yet).
 */
export async function clearUnread(driver: StorageDriver, ns: string, id: string, blobs: () => Promise<string[] | null>, keepSeal: boolean): Promise<boolean> {
  const objects: ObjectInfo[] = [];
  for await (const o of driver.list(paths.upload(ns, id))) objects.push(o);
  // Asked after the listing, just before anything goes: null stops the clearing.
  const named = await blobs();
  if (named === null) return false;
  const claimed = objects.filter(isClaim).map((o) => uploadOwnerOf(parseUploadPath(ns, o.path)!.rest)!);
  const read = await readBy(driver, ns, [...new Set([...named, ...claimed])]);
  for (const o of await unread(driver, objects, read, keepSeal)) await driver.delete(o.path);
  return true;
}

/**
 * Whether the blob's data is stored. A listing may miss an object (Swift's container listings lag, or come from a
 * stale replica): the blob itself is asked before what it might read from is taken away.
 */
async function isStored(run: UploadPruneRun, listed: Set<string>, blob: string): Promise<boolean> {
  return listed.has(blob) || (await run.driver.stat(paths.blobData(run.ns, blob))) !== null;
}

/** Digests whose data is stored: one listing, made only when there are claims to judge. */
async function storedBlobs(driver: StorageDriver, ns: string): Promise<Set<string>> {
  const stored = new Set<string>();
  for await (const o of driver.list(paths.blobs(ns))) {
    const parsed = parseBlobPath(ns, o.path);
    if (parsed?.rest === 'data') stored.add(parsed.digest);
  }
  return stored;
}
