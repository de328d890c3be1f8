/**
 * Uploads: the UploadRecord state machine.
 *
 * An upload is an UploadRecord at <ns>/uploads/<uuid>/metadata plus its chunk objects beside it. The record is
 * the single source of truth and is written only after the chunk it describes is stored, so any server process
 * can take the next chunk: it reads the record, resumes SHA-256 from the saved state, and appends.
 *
 *   start ──▶ [record: 0 chunks] ──append──▶ [record: n chunks, state after n] ──commit──▶ [sealed: digest] ──▶ blob
 *                   └──────cancel──▶ [sealed: cancelled]    expiry (prune) of either ─┘
 *
 * The seal (uploads/<uuid>/sealed, create-only, read beside the record by every request) ends the upload for good:
 * only the retry of its commit goes on, from the record the seal holds (docs/security-storage.md).
 */
import { createHash, randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { ObjectInfo, StorageDriver } from '../storage/driver.js';
import { RegistryError, uploadUnknown } from './errors.js';
import { checkDigest, digestAlgorithm, paths, validUploadId } from './paths.js';
import { UploadLocks } from './upload-lock.js';
import { DEFAULT_LIMITS, OpenUploads, tooLarge, tooManyChunks, type UploadLimits } from './upload-limits.js';
import { createSha256 } from './sha256state.js';
import { chunkCount, RECORD_VERSION, recordSize, UploadRecords, type Seal, type UploadRecord } from './upload-record.js';
import { clearUnread } from './prune-uploads.js';
import type { BlobLinks } from './blobs.js';
import type { LockService } from '../locks/lock-service.js';
import { ChunkWriter, type AppendOptions } from './chunk-writer.js';
import { BlobCommit, type CommitMode, type Joined } from './upload-commit.js';
import { isQuotaRefusal, type Quotas } from './quota.js';

export type { AppendOptions } from './chunk-writer.js';

export class Uploads {
  private readonly records: UploadRecords;
  private readonly locks: UploadLocks;
  private readonly open: OpenUploads;
  private readonly blobCommit: BlobCommit;

  constructor(
    private readonly driver: StorageDriver,
    private readonly links: BlobLinks,
    private readonly limits: UploadLimits = DEFAULT_LIMITS,
    uploadExpirySeconds = 3600,
    commitMode: CommitMode = 'move',
    lockService?: LockService,
    private readonly quotas?: Quotas,
  ) {
    this.blobCommit = new BlobCommit(driver, commitMode);
    this.records = new UploadRecords(driver);
    this.locks = new UploadLocks(driver, lockService);
    this.open = new OpenUploads(driver, limits, uploadExpirySeconds);
    quotas?.useListing(this.open);
  }

  async start(ns: string, repo: string): Promise<{ id: string }> {
    await this.open.admit(ns);
    const id = randomUUID();
    const now = new Date().toISOString();
    const record: UploadRecord = { v: RECORD_VERSION, repository: repo, started: now, updated: now, chunks: [], sha256: createSha256().state() };
    await this.writeRecord(ns, id, record);
    return { id };
  }

  async status(ns: string, repo: string, id: string): Promise<{ size: number }> {
    const record = await this.openRecord(ns, repo, id);
    return { size: recordSize(record) };
  }

  append(ns: string, repo: string, id: string, body: Readable, opts: AppendOptions = {}): Promise<{ size: number }> {
    return this.exclusively(ns, repo, id, async () => {
      const record = await this.openRecord(ns, repo, id);
      const appended = await this.refusable(ns, repo, id, () => this.appendHeld(ns, repo, id, body, opts, record));
      // A commit or cancel in another process may have sealed the upload while this chunk streamed (the lock above
      // serializes only within a process on Swift): then the chunk came too late. Nothing is deleted: an object
      // written may already be a segment of the blob, and what is not is prune's (prune-uploads.ts).
      if (await this.records.seal(ns, id)) throw uploadUnknown(id);
      return appended;
    });
  }

  /**
   * Run `fn` as the only request writing to the upload. Another one gets what a chunk at the wrong offset gets:
   * 416 with the upload's current size, so the client can see where it stands.
   */
  private async exclusively<T>(ns: string, repo: string, id: string, fn: () => Promise<T>): Promise<T> {
    if (!validUploadId(id)) throw uploadUnknown(id);
    const release = await this.locks.acquire(ns, id);
    if (!release) {
      const { size } = await this.status(ns, repo, id);
      throw new RegistryError('RANGE_INVALID', 'another request is writing to this upload', { uuid: id, size });
    }
    try {
      return await fn();
    } finally {
      await release();
    }
  }

  /** The record and the seal beside it, read at once: a sealed upload is over whatever its record says. */
  private async state(ns: string, repo: string, id: string): Promise<{ record: UploadRecord | null; seal: Seal | null }> {
    if (!validUploadId(id)) throw uploadUnknown(id);
    const [record, seal] = await Promise.all([this.records.find(ns, repo, id), this.records.seal(ns, id)]);
    if (seal?.record && seal.record.repository !== repo) throw uploadUnknown(id);
    return { record, seal };
  }

  /** The record of an upload that still takes chunks: not sealed, not being committed (a record from before seals). */
  private async openRecord(ns: string, repo: string, id: string): Promise<UploadRecord> {
    const { record, seal } = await this.state(ns, repo, id);
    if (seal || !record || record.committing) throw uploadUnknown(id);
    return record;
  }

  /**
   * Stream `body` onto the end of the upload. The body is split into objects of at most the driver's
   * maxObjectSize; after each object is stored and its md5 checked, the record is rewritten, so a client that
   * disconnects keeps every complete object and loses only the one in flight. `record` is updated in place.
   */
  private async appendHeld(ns: string, repo: string, id: string, body: Readable, opts: AppendOptions, record: UploadRecord): Promise<{ size: number }> {
    const size = recordSize(record);
    if (opts.offset !== undefined && opts.offset !== size) {
      throw new RegistryError('RANGE_INVALID', 'chunk does not start at the end of the upload', { uuid: id, offset: opts.offset, size });
    }
    const { chunksPerUpload, maxBlobSize } = this.limits;
    if (chunkCount(record) >= chunksPerUpload) throw tooManyChunks(id, chunksPerUpload);
    if (size + (opts.length ?? 0) > maxBlobSize) throw tooLarge(maxBlobSize);
    const metered = this.quotas ? await this.quotas.meter(ns, id, size, body, opts.length) : body;
    return new ChunkWriter(this.driver, ns, id, record, this.limits, opts, (r) => this.writeRecord(ns, id, r)).write(metered);
  }

  /**
   * Finish the upload as blob `digest`. The digest comes from the saved SHA-256 state, never from re-reading the
   * data (sha512 uploads are the exception: they are verified by reading the chunks back before anything moves).
   */
  async commit(ns: string, repo: string, id: string, digest: string, finalBody?: Readable, opts: AppendOptions = {}): Promise<{ size: number }> {
    checkDigest(digest);
    return this.exclusively(ns, repo, id, () => this.refusable(ns, repo, id, () => this.commitHeld(ns, repo, id, digest, finalBody, opts)));
  }

  /** An upload refused for its namespace's quota is abandoned: nothing of it stays to count (quota.ts). */
  private async refusable<T>(ns: string, repo: string, id: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (!isQuotaRefusal(err)) throw err;
      await this.abandonHeld(ns, repo, id).catch(() => {});
      this.open.finished(ns);
      this.quotas?.finished(ns, id, 0);
      throw err;
    }
  }

  /**
   * The seal comes first: from then on the upload takes no chunk and no other commit, and only the retry of this
   * commit (same digest) goes on, from the record in the seal (a PATCH begun before the seal may rewrite the record
   * after it). A retry's body, if any, is not appended again: the sealed record already holds every byte of the digest.
   */
  private async commitHeld(ns: string, repo: string, id: string, digest: string, finalBody: Readable | undefined, opts: AppendOptions): Promise<{ size: number }> {
    const { record: current, seal } = await this.state(ns, repo, id);
    let record: UploadRecord;
    let retry = true;
    if (seal) {
      if (seal.digest !== digest || !seal.record) throw uploadUnknown(id);
      finalBody?.resume();
      record = seal.record;
    } else if (!current || (current.committing && current.committing !== digest)) {
      throw uploadUnknown(id);
    } else {
      record = current;
      retry = current.committing === digest; // a record marked by a commit from before seals
      if (!retry) {
        if (finalBody) await this.appendHeld(ns, repo, id, finalBody, opts, record);
        const actual = await this.digestOf(ns, id, record, digestAlgorithm(digest));
        if (actual !== digest) {
          throw new RegistryError('DIGEST_INVALID', 'provided digest did not match uploaded content', { expected: digest, actual });
        }
        // Before the seal: a refusal here leaves an upload that abandoning clears whole.
        await this.quotas?.checkCommit(ns);
      }
      const ours: Seal = { sealed: new Date().toISOString(), digest, record: { ...record, committing: digest } };
      const stored = await this.records.createSeal(ns, id, ours);
      if (stored !== ours) {
        // Sealed meanwhile: by another process's commit of the same bytes (go on as its retry), or not this upload any more.
        if (stored.digest !== digest || !stored.record || recordSize(stored.record) !== recordSize(record)) throw uploadUnknown(id);
        record = stored.record;
        retry = true;
      }
    }
    const size = recordSize(record);
    // The touch and the check may go together: prune's guard is the manifest PUT's check, which comes after both.
    const [, existing] = await Promise.all([this.links.touch(ns, [digest]), this.driver.stat(paths.blobData(ns, digest))]);
    let joined: Joined = 'moved';
    let added = 0;
    if (existing && retry && (await this.blobCommit.linkedHere(ns, id, digest))) {
      joined = 'linked'; // an earlier attempt of this commit joined the blob and stopped before the record went
    } else if (existing) {
      if (existing.size !== size) throw new RegistryError('SIZE_INVALID', 'a blob with this digest exists with another size', { digest });
    } else {
      const chunks = await this.records.chunks(ns, id, record);
      added = size;
      joined = await this.blobCommit.join(ns, id, digest, chunks, async () => (await this.records.seal(ns, id))?.digest === digest);
    }
    // A linked blob reads from the upload's objects: only the record goes, its owner claim and the seal stay.
    await Promise.all([this.links.link(ns, repo, digest), joined === 'linked' ? this.removeRecord(ns, id, record) : this.remove(ns, id)]);
    this.open.finished(ns);
    this.quotas?.finished(ns, id, added);
    return { size };
  }

  /** DELETE: an open upload is sealed as cancelled and cleared; a sealed one is gone already. */
  cancel(ns: string, repo: string, id: string): Promise<void> {
    return this.exclusively(ns, repo, id, async () => {
      await this.openRecord(ns, repo, id);
      const ours: Seal = { sealed: new Date().toISOString() };
      if ((await this.records.createSeal(ns, id, ours)) !== ours) throw uploadUnknown(id);
      // Swift's create-only is not atomic: a commit's seal created at the same moment may have replaced ours. The
      // seal is read again just before anything goes, and such a commit keeps the directory (the record is not its).
      const stillOurs = await this.clear(ns, id, (seal) => seal?.sealed === ours.sealed && seal.digest === undefined);
      this.open.finished(ns);
      this.quotas?.finished(ns, id, 0);
      if (!stillOurs) throw uploadUnknown(id);
    });
  }

  /**
   * After a monolithic upload's commit failed: its directory goes, except what a blob reads from (the commit may have
   * sealed and joined before it failed). Errors are the caller's to ignore: what stays is prune's.
   */
  abandon(ns: string, repo: string, id: string): Promise<void> {
    return this.exclusively(ns, repo, id, () => this.abandonHeld(ns, repo, id));
  }

  private async abandonHeld(ns: string, repo: string, id: string): Promise<void> {
    const { record, seal } = await this.state(ns, repo, id);
    if (!seal && (!record || record.committing)) return;
    // Sealed first, as a cancel is, unless a commit did: either way `clear` judges by the seal that is stored.
    if (!seal) await this.records.createSeal(ns, id, { sealed: new Date().toISOString() });
    await this.clear(ns, id);
  }

  readRecord(ns: string, repo: string, id: string): Promise<UploadRecord> {
    return this.records.read(ns, repo, id);
  }

  private writeRecord(ns: string, id: string, record: UploadRecord): Promise<void> {
    return this.records.write(ns, id, record);
  }

  private async digestOf(ns: string, id: string, record: UploadRecord, algorithm: 'sha256' | 'sha512'): Promise<string> {
    if (algorithm === 'sha256') return `sha256:${createSha256(record.sha256).digestHex()}`;
    const hash = createHash('sha512');
    for (const chunk of await this.records.chunks(ns, id, record)) {
      const { body } = await this.driver.get(paths.uploadChunk(ns, id, chunk.object));
      for await (const piece of body) hash.update(piece as Buffer);
    }
    return `sha512:${hash.digest('hex')}`;
  }

  /** The record and its pages, leaving the chunk objects a linked blob reads from. */
  private async removeRecord(ns: string, id: string, record: UploadRecord): Promise<void> {
    await this.driver.delete(paths.uploadRecord(ns, id));
    for (const page of record.pages ?? []) await this.driver.delete(paths.uploadPage(ns, id, page.object));
  }

  /**
   * Delete the record first: a record must never point at a chunk that is gone. The seal stays where another
   * process may still be in a PATCH begun before it (no lock across processes: Swift); prune removes it later.
   */
  private async remove(ns: string, id: string): Promise<void> {
    const seal = this.driver.tryLock ? '' : paths.uploadSeal(ns, id);
    await this.driver.delete(paths.uploadRecord(ns, id));
    // The chunks in one deleteMany (Swift: one bulk request), as listed: a listed SLO still goes with its segments.
    const rest: ObjectInfo[] = [];
    for await (const o of this.driver.list(paths.upload(ns, id))) if (o.path !== seal) rest.push(o);
    const [failed] = await this.driver.deleteMany(rest);
    if (failed) throw failed.error;
  }

  /**
   * A sealed directory cleared by cancel or abandon: whatever no blob reads from goes (prune's judgement, by the
   * claims listed and the seal's digest read directly); the seal stays as in `remove`.
   */
  private async clear(ns: string, id: string, proceed: (seal: Seal | null) => boolean = () => true): Promise<boolean> {
    await this.driver.delete(paths.uploadRecord(ns, id));
    return clearUnread(
      this.driver,
      ns,
      id,
      async () => {
        const seal = await this.records.seal(ns, id);
        return proceed(seal) ? (seal?.digest ? [seal.digest] : []) : null;
      },
      !this.driver.tryLock,
    );
  }
}
