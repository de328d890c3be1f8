/**
 * Prune's first stage: upload directories.
 *
 * An upload directory is one of two things:
 * - an upload in progress (its record, chunks and pages): abandoned once it has been idle for the upload expiry,
 *   judged by its newest object (the record is rewritten after every chunk, so the early chunks of a long, active
 *   upload being old says nothing);
 * - with commit: link, the segments of a blob, claimed by uploads/<id>/owner (upload-commit.ts). The claim is kept
 *   while its blob is stored and reads from the directory; the blob's delete takes the segments, and the claim
 *   goes at the next prune. A claim younger than the upload expiry is a commit in progress and is not judged. A
 *   claim that still has its record (a commit that stopped before removing it), or a blob claimed by two
 *   directories (two uploads of one digest that committed at once), is checked against what the blob reads from
 *   (`segments`, one request); everything else it does not read from goes, the record first.
 */
import type { ObjectInfo, StorageDriver } from '../storage/driver.js';
import type { Tally } from './prune.js';
import { groups } from './listing.js';
import { parseBlobPath, parseUploadPath, paths, validDigest } from './paths.js';

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

/** A claimed directory past the upload expiry, judged once every directory has been seen. */
interface Claim {
  id: string;
  blob: string;
  hasRecord: boolean;
  /** Objects besides the claim and the record: what the blob may read from. */
  objects: number;
  bytes: number;
}

export async function pruneUploads(run: UploadPruneRun): Promise<void> {
  const { driver, ns } = run;
  const claims: Claim[] = [];
  for await (const { key: id, objects } of groups(driver.list(paths.uploads(ns)), (o) => parseUploadPath(ns, o.path)?.id ?? null)) {
    const rest = (o: ObjectInfo) => parseUploadPath(ns, o.path)!.rest;
    const owner = objects.find((o) => rest(o) === 'owner');
    const record = objects.find((o) => rest(o) === 'metadata');
    const tally = owner ? run.linked : run.tally;
    tally.examined++;
    const bytes = objects.reduce((n, o) => n + o.size, 0);
    run.bytes.examined += bytes;
    const judgedBy = owner ? owner.modified.getTime() : Math.max(...objects.map((o) => o.modified.getTime()));
    if (judgedBy >= run.graceCutoff) {
      keep(run, tally, bytes);
      continue;
    }
    if (owner) {
      const blob = await claimedBlob(run, owner.path);
      if (blob) claims.push({ id, blob, hasRecord: !!record, objects: objects.filter((o) => o !== owner && o !== record).length, bytes });
      else keep(run, tally, bytes);
      continue;
    }
    await removeUpload(run, tally, id, objects, bytes);
    run.tick('uploads');
  }
  if (claims.length === 0) return;

  const stored = await storedBlobs(driver, ns);
  const claimsOf = new Map<string, number>();
  for (const c of claims) claimsOf.set(c.blob, (claimsOf.get(c.blob) ?? 0) + 1);
  for (const c of claims) {
    const dir = paths.upload(ns, c.id);
    const objects: ObjectInfo[] = [];
    for await (const o of driver.list(dir)) objects.push(o);
    // A listing may miss an object (Swift's container listings lag or come from a stale replica): ask the blob itself
    // before taking away what it might read from.
    const isStored = stored.has(c.blob) || (await driver.stat(paths.blobData(ns, c.blob))) !== null;
    if (!isStored || c.objects === 0) {
      await removeUpload(run, run.linked, c.id, objects, c.bytes);
    } else if (!c.hasRecord && claimsOf.get(c.blob) === 1) {
      keep(run, run.linked, c.bytes);
    } else {
      await removeUnread(run, c, objects);
    }
    run.tick('uploads');
  }
}

function keep(run: UploadPruneRun, tally: Tally, bytes: number): void {
  tally.kept++;
  run.bytes.kept += bytes;
}

/** The record first (it must never name a missing chunk), the claim last (it must never go while a segment stays). */
async function removeUpload(run: UploadPruneRun, tally: Tally, id: string, objects: ObjectInfo[], bytes: number): Promise<void> {
  const rank = (o: ObjectInfo) => (o.path.endsWith('/metadata') ? 0 : o.path.endsWith('/owner') ? 2 : 1);
  let ok = true;
  for (const o of [...objects].sort((a, b) => rank(a) - rank(b))) ok = (await run.remove(o.path, { upload: id })) && ok;
  if (ok) {
    tally.deleted++;
    run.bytes.deleted += bytes;
  } else keep(run, tally, bytes);
}

/** A claimed directory checked against what its blob reads from: the rest goes, the claim too if nothing is read. */
async function removeUnread(run: UploadPruneRun, claim: Claim, objects: ObjectInfo[]): Promise<void> {
  let read: Set<string>;
  try {
    read = new Set((await run.driver.segments?.(paths.blobData(run.ns, claim.blob))) ?? []);
  } catch (err) {
    run.warn({ namespace: run.ns, upload: claim.id, blob: claim.blob, err: (err as Error).message }, 'could not read what a blob reads from');
    return keep(run, run.linked, claim.bytes);
  }
  const unread = objects.filter((o) => !read.has(o.path) && !o.path.endsWith('/owner'));
  if (!objects.some((o) => read.has(o.path))) return removeUpload(run, run.linked, claim.id, objects, claim.bytes);
  let freed = 0;
  const rank = (o: ObjectInfo) => (o.path.endsWith('/metadata') ? 0 : 1);
  for (const o of unread.sort((a, b) => rank(a) - rank(b))) {
    if (await run.remove(o.path, { upload: claim.id, stray: 'not read by its blob' })) freed += o.size;
  }
  keep(run, run.linked, claim.bytes - freed);
  run.bytes.deleted += freed;
}

/**
 * The blob a claim names. A claim that cannot be read now, or does not name a blob, keeps its directory (with a
 * warning): judged as an upload it would lose segments a stored blob may read from.
 */
async function claimedBlob(run: UploadPruneRun, path: string): Promise<string | null> {
  try {
    const blob = (JSON.parse((await run.driver.read(path)).toString('utf8')) as { blob?: unknown }).blob;
    if (typeof blob === 'string' && validDigest(blob)) return blob;
    run.warn({ namespace: run.ns, path }, 'an upload claim names no blob; kept');
  } catch (err) {
    run.warn({ namespace: run.ns, path, err: (err as Error).message }, 'could not read an upload claim; kept');
  }
  return null;
}

/** Digests whose data is stored: one listing, read only when there are claims to judge. */
async function storedBlobs(driver: StorageDriver, ns: string): Promise<Set<string>> {
  const stored = new Set<string>();
  for await (const o of driver.list(paths.blobs(ns))) {
    const parsed = parseBlobPath(ns, o.path);
    if (parsed?.rest === 'data') stored.add(parsed.digest);
  }
  return stored;
}
