/**
 * Prune's first stage: upload directories.
 *
 * An upload directory is one of two things:
 * - an upload in progress (its record, chunks and pages): abandoned once it has been idle for the upload expiry,
 *   judged by its newest object (the record is rewritten after every chunk, so the early chunks of a long, active
 *   upload being old says nothing);
 * - with commit: link, the segments of a blob, claimed by uploads/<id>/owner.<digest> (upload-commit.ts). A claim
 *   is judged by its own time: younger than the upload expiry, it is a commit in progress and left alone. An older
 *   one is kept while its blob is stored, at no cost beyond the listing (the claim's name says the blob). Its blob's
 *   delete takes the segments, and the claim goes at the next prune. Where a record survived (a commit that stopped
 *   before removing it) or two directories claim one blob (two uploads of one digest committed at once), the
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
  remove(path: string, what: object): Promise<boolean>;
  warn(obj: object, msg: string): void;
  tick(stage: string): void;
}

/** A claimed directory past the upload expiry whose blob is stored: kept, unless another directory claims the blob. */
interface Claim {
  id: string;
  bytes: number;
}

export async function pruneUploads(run: UploadPruneRun): Promise<void> {
  const { driver, ns } = run;
  let stored: Set<string> | undefined;
  const claimsOf = new Map<string, Claim[]>();
  for await (const { key: id, objects } of groups(driver.list(paths.uploads(ns)), (o) => parseUploadPath(ns, o.path)?.id ?? null)) {
    const claim = objects.find((o) => uploadOwnerOf(parseUploadPath(ns, o.path)!.rest));
    const record = objects.find((o) => parseUploadPath(ns, o.path)!.rest === 'metadata');
    const tally = claim ? run.linked : run.tally;
    tally.examined++;
    const bytes = objects.reduce((n, o) => n + o.size, 0);
    run.bytes.examined += bytes;
    const judgedBy = claim ? claim.modified.getTime() : Math.max(...objects.map((o) => o.modified.getTime()));
    if (judgedBy >= run.graceCutoff) {
      keep(run, tally, bytes);
    } else if (!claim) {
      await removeUpload(run, tally, id, objects, bytes);
    } else {
      const blob = uploadOwnerOf(parseUploadPath(ns, claim.path)!.rest)!;
      stored ??= await storedBlobs(driver, ns);
      const segments = objects.filter((o) => o !== claim && o !== record);
      if (segments.length === 0 || !(await isStored(run, stored, blob))) await removeUpload(run, tally, id, objects, bytes);
      else if (record) await removeUnread(run, id, blob, objects, bytes);
      else claimsOf.set(blob, [...(claimsOf.get(blob) ?? []), { id, bytes }]);
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
      await removeUnread(run, c.id, blob, objects, c.bytes);
    }
  }
}

function keep(run: UploadPruneRun, tally: Tally, bytes: number): void {
  tally.kept++;
  run.bytes.kept += bytes;
}

const isClaim = (o: ObjectInfo) => /\/owner\.[^/]+$/.test(o.path);

/** The record first (it must never name a missing chunk), the claim last (it must never go while a segment stays). */
async function removeUpload(run: UploadPruneRun, tally: Tally, id: string, objects: ObjectInfo[], bytes: number): Promise<void> {
  const rank = (o: ObjectInfo) => (o.path.endsWith('/metadata') ? 0 : isClaim(o) ? 2 : 1);
  let ok = true;
  for (const o of [...objects].sort((a, b) => rank(a) - rank(b))) ok = (await run.remove(o.path, { upload: id })) && ok;
  if (ok) {
    tally.deleted++;
    run.bytes.deleted += bytes;
  } else keep(run, tally, bytes);
}

/** A claimed directory checked against what its blob reads from: the rest goes, the claim too if nothing is read. */
async function removeUnread(run: UploadPruneRun, id: string, blob: string, objects: ObjectInfo[], bytes: number): Promise<void> {
  let read: Set<string>;
  try {
    read = new Set((await run.driver.segments?.(paths.blobData(run.ns, blob))) ?? []);
  } catch (err) {
    run.warn({ namespace: run.ns, upload: id, blob, err: (err as Error).message }, 'could not read what a blob reads from');
    return keep(run, run.linked, bytes);
  }
  if (!objects.some((o) => read.has(o.path))) return removeUpload(run, run.linked, id, objects, bytes);
  let freed = 0;
  const unread = objects.filter((o) => !read.has(o.path) && !isClaim(o));
  for (const o of unread.sort((a, b) => Number(b.path.endsWith('/metadata')) - Number(a.path.endsWith('/metadata')))) {
    if (await run.remove(o.path, { upload: id, stray: 'not read by its blob' })) freed += o.size;
  }
  keep(run, run.linked, bytes - freed);
  run.bytes.deleted += freed;
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
