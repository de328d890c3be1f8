/**
 * Prune: expire uploads and manifests, then mark every blob a kept manifest reaches and sweep the rest.
 *
 * It runs beside live servers, so it must never delete a blob that a push is about to name. The protocol:
 * - every push that commits, mounts or names a blob first rewrites `blobs/<d>/touched`;
 * - prune never sweeps a blob whose data, parts or touched marker is younger than the upload expiry (a push in
 *   progress: layers uploaded, manifest not yet put);
 * - to sweep an older blob, prune writes `blobs/<d>/tombstone`, then re-reads `touched`: if a push touched it
 *   meanwhile, prune removes the tombstone and keeps the blob; otherwise it deletes the blob, the tombstone last;
 * - a manifest PUT touches its blobs, writes its revision, then checks each blob is stored and not tombstoned;
 *   if one is, it backs out with MANIFEST_BLOB_UNKNOWN.
 * Either the PUT's check comes after the tombstone (the PUT fails cleanly) or the tombstone comes after the
 * check, and then prune's re-read comes after the touch (prune keeps the blob). It relies on reads seeing
 * completed writes of single objects, which the filesystem and a healthy Swift give.
 *
 * Memory: the set of marked digests per namespace, plus one repository's tags and revisions at a time, plus a
 * batch of deletions (prune-batch.ts: deletions go to the driver's deleteMany, a thousand at a time).
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { PathNotFound, type ObjectInfo, type StorageDriver } from '../storage/driver.js';
import { createExclusive } from '../storage/exclusive.js';
import { groups } from './listing.js';
import { needs } from './manifest-doc.js';
import { parseBlobPath, parseRepoPath, parseWebSummaryPath, paths, validDigest, validTag } from './paths.js';
import { pruneUploads } from './prune-uploads.js';
import { DeleteQueue, SWEEP_BATCH, progressLine, removeClaims, strayParts, sweepBatch, type Candidate, type SweepContext } from './prune-batch.js';
import { LISTING_AHEAD, PRUNE_REQUESTS, readAhead } from './prune-limit.js';
import { Limiter, drainLimited, forEachLimited } from '../util/concurrency.js';
import { UsageTally, writeUsage } from './usage.js';

import type { PruneOptions, PruneReport, Tally } from './prune-types.js';
export type { PruneLog, PruneOptions, PruneReport, Tally } from './prune-types.js';

const tally = (): Tally => ({ examined: 0, kept: 0, deleted: 0 });
const PROGRESS_EVERY_MS = 5000;
/** Repositories expired and marked at once (memory: their listings); their requests share the run's Limiter. */
const REPOSITORIES_AT_ONCE = 8;
/** Sweep batches in flight: the next batch is tombstoned while the last one's deletes run. */
const SWEEPS_AT_ONCE = 2;

export class Pruner {
  constructor(private readonly driver: StorageDriver) {}

  async prune(ns: string, opts: PruneOptions): Promise<PruneReport> {
    const report: PruneReport = { namespace: ns, uploads: tally(), linked: tally(), manifests: tally(), tags: tally(), blobs: tally(), bytes: tally(), failures: 0, objects: 0 };
    const run = new Run(this.driver, ns, opts, report);
    if (!opts.dryRun) {
      const refused = await run.lock();
      if (refused) return { ...report, refused };
    }
    try {
      await run.stage('uploads', () => run.uploads());
      const marked = await run.stage('manifests', () => run.manifests());
      const swept = await run.stage('blobs', () => run.blobs(marked));
      await run.stage('links', () => run.links(marked));
      await run.stage('claims', () => run.claimsOf(swept));
      if (!opts.dryRun) await run.recordUsage();
    } finally {
      if (!opts.dryRun) await run.unlock();
    }
    return report;
  }
}

/** One namespace's prune. */
class Run {
  private readonly now: number;
  private readonly manifestCutoff: number;
  private readonly graceCutoff: number;
  private lockToken = '';
  private lastProgress = Date.now();
  private stageStarted = Date.now();
  private readonly queue: DeleteQueue;
  /** Deletions that must come after every queued one of their stage (an upload's seal after its chunks). */
  private readonly marks: DeleteQueue;
  private readonly usage = new UsageTally();
  private readonly sweepContext: SweepContext;
  /** Every request of prune's own (not the batched deletes): PRUNE_REQUESTS in flight at most. */
  private readonly limit = new Limiter(PRUNE_REQUESTS);
  /** One batch of deletions at a time (the driver's deleteMany has its own requests in flight). */
  private readonly deletes = new Limiter(1);

  constructor(
    private readonly driver: StorageDriver,
    private readonly ns: string,
    private readonly opts: PruneOptions,
    private readonly report: PruneReport,
  ) {
    this.now = (opts.now ?? new Date()).getTime();
    this.manifestCutoff = opts.expiration === undefined ? -Infinity : this.now - opts.expiration * 1000;
    this.graceCutoff = this.now - opts.uploadExpiry * 1000;
    this.queue = new DeleteQueue(
      driver,
      (f) => {
        report.failures++;
        opts.log.warn({ namespace: ns, path: f.path, err: f.error.message }, 'delete failed');
      },
      (n) => (report.objects += n),
      undefined,
      this.deletes,
    );
    this.marks = new DeleteQueue(driver, (f) => this.queue.failed(f), (n) => (report.objects += n), this.queue, this.deletes);
    this.sweepContext = {
      driver,
      ns,
      graceCutoff: this.graceCutoff,
      limit: this.limit,
      deletes: this.deletes,
      failed: (blob, what, err) => {
        report.failures++;
        opts.log.warn({ namespace: ns, blob, err: err.message }, what);
      },
      deleted: (n) => (report.objects += n),
    };
  }

  /**
   * Queue a deletion (a listing entry, or a path of a plain object); `done` learns whether it went. Dry runs only
   * log. The queue is flushed at the end of each stage.
   */
  private async enqueue(target: ObjectInfo | string, what: object, done: (ok: boolean) => void, queue = this.queue): Promise<void> {
    const path = typeof target === 'string' ? target : target.path;
    if (this.opts.dryRun) {
      this.opts.log.debug({ namespace: this.ns, path, ...what }, 'would delete');
      return done(true);
    }
    await queue.add(typeof target === 'string' ? { path, joined: false } : target, done);
  }

  async lock(): Promise<string | undefined> {
    const path = paths.pruneLock(this.ns);
    const held = await this.driver.stat(path);
    const staleMs = (this.opts.staleLockSeconds ?? 6 * 3600) * 1000;
    if (held && held.modified.getTime() > Date.now() - staleMs) {
      return `another prune holds ${path} since ${held.modified.toISOString()}`;
    }
    if (held) {
      this.opts.log.warn({ namespace: this.ns, since: held.modified.toISOString() }, 'taking over a stale prune lock');
      await this.deletePlain(path);
    }
    this.lockToken = randomBytes(12).toString('hex');
    const body = Buffer.from(JSON.stringify({ token: this.lockToken, pid: process.pid, host: hostname(), started: new Date().toISOString() }));
    if (!(await createExclusive(this.driver, path, body, { settleMs: this.opts.lockSettleMs, contentType: 'application/json' }))) {
      this.lockToken = '';
      return `another prune took ${path} first`;
    }
    return undefined;
  }

  async unlock(): Promise<void> {
    if (!this.lockToken) return;
    if ((await this.lockHolder()) === this.lockToken) await this.deletePlain(paths.pruneLock(this.ns));
  }

  /** The lock is a plain object: one request on Swift (a single delete first tries a multipart delete). */
  private deletePlain = (path: string) => throwFirst(this.driver.deleteMany([{ path, joined: false }]));

  /** The token in the lock, or undefined if there is none (or it cannot be read). */
  private lockHolder(): Promise<string | undefined> {
    return this.driver.read(paths.pruneLock(this.ns)).then((b) => (JSON.parse(b.toString()) as { token?: string }).token, () => undefined);
  }

  /** Store what the run kept as the namespace's usage; a failure to store it fails no deletion. */
  async recordUsage(): Promise<void> {
    const usage = this.usage.result(this.ns, 'prune');
    this.report.usage = usage;
    try {
      await writeUsage(this.driver, usage);
    } catch (err) {
      this.report.failures++;
      this.opts.log.warn({ namespace: this.ns, err: (err as Error).message }, 'could not store the usage figures');
    }
  }

  /** Delete now: a listing entry as listed (the driver knows whether it is a join), or a path. */
  private async remove(target: ObjectInfo | string, what: object): Promise<boolean> {
    const path = typeof target === 'string' ? target : target.path;
    if (this.opts.dryRun) {
      this.opts.log.debug({ namespace: this.ns, path, ...what }, 'would delete');
      return true;
    }
    try {
      await (typeof target === 'string' ? this.driver.delete(path) : throwFirst(this.driver.deleteMany([target])));
      this.report.objects++;
      this.opts.log.debug({ namespace: this.ns, path, ...what }, 'deleted');
      return true;
    } catch (err) {
      this.report.failures++;
      this.opts.log.warn({ namespace: this.ns, path, err: (err as Error).message }, 'delete failed');
      return false;
    }
  }

  /**
   * Delete unless a push rewrote the object since it was listed (a tag moved, a manifest pushed again): checked now,
   * deleted with the next batch; `done` learns whether it went.
   */
  private async removeIfUnchanged(listed: ObjectInfo, what: object, done: (ok: boolean) => void): Promise<void> {
    if (!this.opts.dryRun) {
      const now = await this.limit.run(() => this.driver.stat(listed.path));
      if (now && now.modified.getTime() > listed.modified.getTime()) return done(false);
    }
    await this.enqueue(listed, what, done);
  }

  /** One stage, timed: a line on the progress channel when it ends (where a run's time goes). */
  async stage<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const started = Date.now();
    const requests = this.driver.requestCount?.();
    this.stageStarted = started;
    const result = await fn();
    const sent = requests === undefined ? '' : `, ${this.driver.requestCount!() - requests} storage requests`;
    this.opts.progress?.(`prune ${this.ns}: ${name} done in ${((Date.now() - started) / 1000).toFixed(1)} s${sent}; ${this.report.objects} objects deleted so far`);
    return result;
  }

  /** Progress every few seconds (prune-batch.ts: progressLine). */
  private tick(stage: string, digest?: string): void {
    if (!this.opts.progress || Date.now() - this.lastProgress < PROGRESS_EVERY_MS) return;
    this.lastProgress = Date.now();
    this.opts.progress(progressLine(this.ns, stage, this.report, this.driver.requestCount?.(), this.stageStarted, digest));
  }

  private async readText(path: string): Promise<string | null> {
    try {
      return (await this.limit.run(() => this.driver.read(path))).toString('utf8');
    } catch (err) {
      if (err instanceof PathNotFound) return null;
      throw err;
    }
  }

  /** Abandoned uploads, and the segments of blobs that no longer read from them (prune-uploads.ts). */
  async uploads(): Promise<void> {
    await pruneUploads({
      driver: this.driver,
      ns: this.ns,
      graceCutoff: this.graceCutoff,
      tally: this.report.uploads,
      linked: this.report.linked,
      bytes: this.report.bytes,
      remove: (o, what) => this.remove(o, what),
      removeLater: (o, what, last) => this.enqueue(o, what, () => {}, last ? this.marks : this.queue),
      warn: (obj, msg) => {
        this.report.failures++;
        this.opts.log.warn(obj, msg);
      },
      tick: (stage) => this.tick(stage),
    });
    await this.marks.flush();
  }

  /** Expire tags and manifests repository by repository; return the digests of every blob a kept one needs. */
  async manifests(): Promise<Set<string>> {
    const marked = new Set<string>();
    const entries = readAhead(this.driver.list(paths.repos(this.ns)), LISTING_AHEAD);
    await forEachLimited(groups(entries, (o) => parseRepoPath(this.ns, o.path)?.repo ?? null), REPOSITORIES_AT_ONCE, async ({ key: repo, objects }) => {
      await this.repository(repo, objects, marked);
      this.tick('manifests');
    });
    // The web page's summaries (a cache, written at every push) go with the last manifest of their repository.
    for await (const o of this.driver.list(paths.webSummaries(this.ns))) {
      const repo = parseWebSummaryPath(this.ns, o.path);
      if (repo !== null && !this.usage.hasManifests(repo)) await this.enqueue(o, { repository: repo, summary: true }, () => {});
    }
    await this.queue.flush();
    return marked;
  }

  private async repository(repo: string, objects: ObjectInfo[], marked: Set<string>): Promise<void> {
    const tags = new Map<string, ObjectInfo>();
    const revisions = new Map<string, ObjectInfo>();
    const referrersOf = new Map<string, { digest: string; path: string }[]>();
    const isReferrer = new Set<string>();
    for (const o of objects) {
      const rest = parseRepoPath(this.ns, o.path)!.rest.split('/');
      if (rest[0] === '_manifests' && rest[1] === 'tags' && rest.length === 3 && validTag(rest[2])) tags.set(rest[2], o);
      else if (rest[0] === '_manifests' && rest[1] === 'revisions' && rest.length === 3 && validDigest(rest[2])) revisions.set(rest[2], o);
      else if (rest[0] === '_referrers' && rest.length === 3 && validDigest(rest[1]) && validDigest(rest[2])) {
        const list = referrersOf.get(rest[1]) ?? [];
        list.push({ digest: rest[2], path: o.path });
        referrersOf.set(rest[1], list);
        isReferrer.add(rest[2]);
      }
    }

    // Roots: fresh tags, and fresh revisions that are not referrers (a referrer's fate follows its subject).
    const keep = new Set<string>();
    const queue: string[] = [];
    const mark = (d: string) => {
      marked.add(d);
      this.usage.need(repo, d);
    };
    const add = (d: string) => {
      if (revisions.has(d) && !keep.has(d)) {
        keep.add(d);
        queue.push(d);
      }
    };
    // Fresh tags read, expired ones checked (and queued for deletion), a few at a time.
    const targets: string[] = [];
    await forEachLimited(tags, PRUNE_REQUESTS, async ([tag, o]) => {
      this.report.tags.examined++;
      if (o.modified.getTime() >= this.manifestCutoff) {
        targets.push((await this.readText(o.path))?.trim() ?? '');
        this.report.tags.kept++;
        this.usage.tag(repo);
      } else {
        await this.removeIfUnchanged(o, { repository: repo, tag }, (ok) => {
          if (ok) return void this.report.tags.deleted++;
          this.report.tags.kept++;
          this.usage.tag(repo);
        });
      }
    });
    for (const target of targets) if (validDigest(target)) add(target);
    for (const [d, o] of revisions) {
      const t = o.modified.getTime();
      if ((!isReferrer.has(d) && t >= this.manifestCutoff) || t >= this.graceCutoff) add(d);
    }
    // Close over index children and referrers of kept manifests; mark the blobs each kept manifest needs. The
    // bodies are read a few at a time (an index's children join the queue as it is read).
    await drainLimited(queue, PRUNE_REQUESTS, async (d) => {
      mark(d);
      for (const r of referrersOf.get(d) ?? []) add(r.digest);
      const body = await this.readText(paths.blobData(this.ns, d));
      if (body === null) return;
      for (const child of needs(body)) {
        mark(child.digest);
        if (child.manifest) add(child.digest);
      }
    });

    await forEachLimited(revisions, PRUNE_REQUESTS, async ([d, o]) => {
      this.report.manifests.examined++;
      const kept = () => {
        this.report.manifests.kept++;
        this.usage.manifest(repo, o.modified);
      };
      if (keep.has(d)) kept();
      else await this.removeIfUnchanged(o, { repository: repo, manifest: d }, (ok) => (ok ? void this.report.manifests.deleted++ : kept()));
    });
    for (const [, list] of referrersOf) {
      for (const r of list) if (!keep.has(r.digest)) await this.enqueue(r.path, { repository: repo, referrer: r.digest }, () => {});
    }
  }

  /** Sweep unreferenced blobs in batches (prune-batch.ts); resolves with the digests swept. */
  async blobs(marked: Set<string>): Promise<Set<string>> {
    const t = this.report.blobs;
    const swept = new Set<string>();
    let batch: Candidate[] = [];
    // Sweeps in flight, oldest first; each is awaited in turn (a failure surfaces there, none goes unhandled).
    const sweeping: Promise<void>[] = [];
    const startSweep = async (b: Candidate[]) => {
      const p = this.sweep(b, swept);
      p.catch(() => {});
      sweeping.push(p);
      if (sweeping.length >= SWEEPS_AT_ONCE) await sweeping.shift();
    };
    this.usage.startBlobs();
    for await (const { key: digest, objects } of groups(readAhead(this.driver.list(paths.blobs(this.ns)), LISTING_AHEAD), (o) => parseBlobPath(this.ns, o.path)?.digest ?? null)) {
      const rest = (o: ObjectInfo) => parseBlobPath(this.ns, o.path)!.rest;
      const data = objects.find((o) => rest(o) === 'data');
      const tombstone = objects.find((o) => rest(o) === 'tombstone');
      const size = data?.size ?? objects.reduce((n, o) => n + o.size, 0);
      t.examined++;
      this.report.bytes.examined += size;
      const youngest = Math.max(...objects.filter((o) => o !== tombstone).map((o) => o.modified.getTime()));
      if (marked.has(digest) || youngest >= this.graceCutoff) {
        t.kept++;
        this.report.bytes.kept += size;
        if (data) this.usage.blob(digest, data.size);
        // A tombstone left by a prune that died mid-sweep would hide a kept blob from pushes.
        if (tombstone && !this.opts.dryRun) await this.enqueue(tombstone.path, { blob: digest, stale: 'tombstone' }, () => {});
        if (data) await strayParts(this.sweepContext, digest, data, objects, this.report.bytes, (p, what) => this.remove(p, what));
        continue;
      }
      batch.push({ digest, objects: objects.filter((o) => o !== tombstone), size, dataSize: data?.size });
      if (batch.length >= SWEEP_BATCH) {
        await startSweep(batch);
        batch = [];
      }
      this.tick('blobs', digest);
    }
    await startSweep(batch);
    while (sweeping.length > 0) await sweeping.shift();
    await this.queue.flush();
    return swept;
  }

  /** Tombstone, re-check the touch, delete, a batch at a time (prune-batch.ts); tallies what went. */
  private async sweep(batch: Candidate[], swept: Set<string>): Promise<void> {
    if (batch.length === 0) return;
    const outcomes = this.opts.dryRun
      ? new Map(batch.map((c) => [c.digest, 'deleted' as const]))
      : await sweepBatch(this.sweepContext, batch);
    for (const c of batch) {
      const outcome = outcomes.get(c.digest);
      if (outcome === 'claimed') this.opts.log.info({ namespace: this.ns, blob: c.digest }, 'a push claimed the blob during prune; kept');
      this.opts.log.debug({ namespace: this.ns, blob: c.digest, outcome }, this.opts.dryRun ? 'would delete blob' : 'swept');
      const tally = outcome === 'deleted' ? 'deleted' : 'kept';
      this.report.blobs[tally]++;
      this.report.bytes[tally] += c.size;
      if (outcome === 'deleted') swept.add(c.digest);
      // Kept (claimed, or a step failed): still stored, so counted as the usage of what the run kept.
      else if (c.dataSize !== undefined) this.usage.blob(c.digest, c.dataSize);
    }
  }

  /** Repository links to blobs that are gone (each checked, a few at a time, then deleted in batches). */
  async links(marked: Set<string>): Promise<void> {
    await forEachLimited(readAhead(this.driver.list(paths.repos(this.ns)), LISTING_AHEAD), PRUNE_REQUESTS, async (o) => {
      const parsed = parseRepoPath(this.ns, o.path);
      const rest = parsed?.rest.split('/');
      if (!parsed || !rest || rest[0] !== '_blobs' || rest.length !== 2 || !validDigest(rest[1]) || marked.has(rest[1])) return;
      if (this.opts.dryRun || (await this.limit.run(() => this.driver.stat(paths.blobData(this.ns, rest[1]))))) return;
      await this.enqueue(o, { repository: parsed.repo, link: rest[1] }, () => {});
      this.tick('links');
    });
    await this.queue.flush();
  }

  /** Claimed upload directories of the blobs just swept (commit: link): prune-batch.ts. */
  async claimsOf(swept: Set<string>): Promise<void> {
    // Claims were kept at the uploads stage only where their blob was stored; none kept, none to take now.
    if (swept.size === 0 || this.opts.dryRun || this.report.linked.kept === 0) return;
    await removeClaims(this.driver, this.ns, this.graceCutoff, swept, this.queue, () => {
      this.report.linked.kept--;
      this.report.linked.deleted++;
    });
  }
}

async function throwFirst(failures: Promise<{ error: Error }[]>): Promise<void> {
  const [failed] = await failures;
  if (failed) throw failed.error;
}
