/**
 * Uploads: the UploadRecord state machine.
 *
 * An upload is an UploadRecord at <ns>/uploads/<uuid>/metadata plus its chunk objects beside it. The record is
 * the single source of truth and is written only after the chunk it describes is stored, so any server process
 * can take the next chunk: it reads the record, resumes SHA-256 from the saved state, and appends.
 *
 *   start ──▶ [record: 0 chunks] ──append──▶ [record: n chunks, state after n] ──commit──▶ [committing] ──▶ blob
 *                   └──────────────cancel / expiry (prune)──────────────┘
 */
import { createHash, randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { StorageDriver } from '../storage/driver.js';
import { RegistryError, uploadUnknown } from './errors.js';
import { checkDigest, digestAlgorithm, paths, validUploadId } from './paths.js';
import { UploadLocks } from './upload-lock.js';
import { DEFAULT_LIMITS, OpenUploads, tooLarge, tooManyChunks, type UploadLimits } from './upload-limits.js';
import { createSha256 } from './sha256state.js';
import { chunkCount, RECORD_VERSION, recordSize, UploadRecords, type UploadRecord } from './upload-record.js';
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
    const record = await this.readRecord(ns, repo, id);
    return { size: recordSize(record) };
  }

  append(ns: string, repo: string, id: string, body: Readable, opts: AppendOptions = {}): Promise<{ size: number }> {
    return this.exclusively(ns, repo, id, () => this.refusable(ns, id, () => this.appendHeld(ns, repo, id, body, opts)));
  }

  /** An upload refused for its namespace's quota is removed: nothing of it stays to count (quota.ts). */
  private async refusable<T>(ns: string, id: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (!isQuotaRefusal(err)) throw err;
      await this.remove(ns, id).catch(() => {});
      this.open.finished(ns);
      this.quotas?.finished(ns, id, 0);
      throw err;
    }
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

  /**
   * Stream `body` onto the end of the upload. The body is split into objects of at most the driver's
   * maxObjectSize; after each object is stored and its md5 checked, the record is rewritten, so a client that
   * disconnects keeps every complete object and loses only the one in flight.
   */
  private async appendHeld(ns: string, repo: string, id: string, body: Readable, opts: AppendOptions): Promise<{ size: number }> {
    const record = await this.readRecord(ns, repo, id);
    if (record.committing) throw new RegistryError('BLOB_UPLOAD_INVALID', 'upload is being committed', { uuid: id });
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
    return this.exclusively(ns, repo, id, () => this.refusable(ns, id, () => this.commitHeld(ns, repo, id, digest, finalBody, opts)));
  }

  private async commitHeld(ns: string, repo: string, id: string, digest: string, finalBody: Readable | undefined, opts: AppendOptions): Promise<{ size: number }> {
    if (finalBody) await this.appendHeld(ns, repo, id, finalBody, opts);
    const record = await this.readRecord(ns, repo, id);
    if (record.committing && record.committing !== digest) {
      throw new RegistryError('BLOB_UPLOAD_INVALID', 'upload is being committed under another digest', { uuid: id });
    }
    const size = recordSize(record);
    if (!record.committing) {
      const actual = await this.digestOf(ns, id, record, digestAlgorithm(digest));
      if (actual !== digest) {
        throw new RegistryError('DIGEST_INVALID', 'provided digest did not match uploaded content', { expected: digest, actual });
      }
    }
    // The touch and the check may go together: prune's guard is the manifest PUT's check, which comes after both.
    const [, existing] = await Promise.all([this.links.touch(ns, [digest]), this.driver.stat(paths.blobData(ns, digest))]);
    let joined: Joined = 'moved';
    let added = 0;
    if (existing && record.committing === digest && (await this.blobCommit.linkedHere(ns, id, digest))) {
      joined = 'linked'; // an earlier attempt of this commit joined the blob and stopped before the record went
    } else if (existing) {
      if (existing.size !== size) throw new RegistryError('SIZE_INVALID', 'a blob with this digest exists with another size', { digest });
    } else {
      await this.quotas?.checkCommit(ns);
      added = size;
      const chunks = await this.records.chunks(ns, id, record);
      record.committing = digest;
      joined = await this.blobCommit.join(ns, id, digest, chunks, this.writeRecord(ns, id, record));
    }
    // A linked blob reads from the upload's objects: only the record goes, its owner claim stays.
    await Promise.all([this.links.link(ns, repo, digest), joined === 'linked' ? this.removeRecord(ns, id, record) : this.remove(ns, id)]);
    this.open.finished(ns);
    this.quotas?.finished(ns, id, added);
    return { size };
  }

  cancel(ns: string, repo: string, id: string): Promise<void> {
    return this.exclusively(ns, repo, id, async () => {
      await this.readRecord(ns, repo, id);
      await this.remove(ns, id);
      this.open.finished(ns);
      this.quotas?.finished(ns, id, 0);
    });
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

  /** Delete the record first: a record must never point at a chunk that is gone. Leftover chunks are prune's. */
  private async remove(ns: string, id: string): Promise<void> {
    await this.driver.delete(paths.uploadRecord(ns, id));
    for await (const o of this.driver.list(paths.upload(ns, id))) await this.driver.delete(o.path);
  }
}
