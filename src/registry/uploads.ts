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
import { AlreadyExists, PathNotFound, SizeMismatch, type Part, type StorageDriver, type StoredObject } from '../storage/driver.js';
import { RegistryError, uploadUnknown } from './errors.js';
import { checkDigest, digestAlgorithm, paths, validUploadId } from './paths.js';
import { UploadLocks } from './upload-lock.js';
import { DEFAULT_LIMITS, OpenUploads, tooLarge, tooManyChunks, type UploadLimits } from './upload-limits.js';
import { createSha256 } from './sha256state.js';
import { chunkCount, RECORD_VERSION, recordSize, UploadRecords, type ChunkEntry, type UploadRecord } from './upload-record.js';
import type { BlobLinks } from './blobs.js';
import { forEachLimited } from '../util/concurrency.js';
import { ChunkWriter, md5Mismatch, type AppendOptions } from './chunk-writer.js';

export type { AppendOptions } from './chunk-writer.js';
/** How many chunk moves run at once during commit. */
const MOVE_PARALLELISM = 4;

export class Uploads {
  private readonly records: UploadRecords;
  private readonly locks: UploadLocks;
  private readonly open: OpenUploads;

  constructor(
    private readonly driver: StorageDriver,
    private readonly links: BlobLinks,
    private readonly limits: UploadLimits = DEFAULT_LIMITS,
    uploadExpirySeconds = 3600,
  ) {
    this.records = new UploadRecords(driver);
    this.locks = new UploadLocks(driver);
    this.open = new OpenUploads(driver, limits, uploadExpirySeconds);
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
    return this.exclusively(ns, repo, id, () => this.appendHeld(ns, repo, id, body, opts));
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
    return new ChunkWriter(this.driver, ns, id, record, this.limits, opts, (r) => this.writeRecord(ns, id, r)).write(body);
  }

  /**
   * Finish the upload as blob `digest`. The digest comes from the saved SHA-256 state, never from re-reading the
   * data (sha512 uploads are the exception: they are verified by reading the chunks back before anything moves).
   */
  async commit(ns: string, repo: string, id: string, digest: string, finalBody?: Readable, opts: AppendOptions = {}): Promise<{ size: number }> {
    checkDigest(digest);
    return this.exclusively(ns, repo, id, () => this.commitHeld(ns, repo, id, digest, finalBody, opts));
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
    await this.links.touch(ns, [digest]);
    const existing = await this.driver.stat(paths.blobData(ns, digest));
    if (existing) {
      if (existing.size !== size) throw new RegistryError('SIZE_INVALID', 'a blob with this digest exists with another size', { digest });
    } else {
      record.committing = digest;
      await this.writeRecord(ns, id, record);
      await this.moveIntoBlob(ns, id, digest, record);
    }
    await this.links.link(ns, repo, digest);
    await this.remove(ns, id);
    this.open.finished(ns);
    return { size };
  }

  cancel(ns: string, repo: string, id: string): Promise<void> {
    return this.exclusively(ns, repo, id, async () => {
      await this.readRecord(ns, repo, id);
      await this.remove(ns, id);
      this.open.finished(ns);
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

  /**
   * Move every chunk into the blob's directory, checking each moved object against the recorded md5, then join
   * them. A retried commit finds already-moved chunks at their destination and goes on from there.
   */
  private async moveIntoBlob(ns: string, id: string, digest: string, record: UploadRecord): Promise<void> {
    const chunks = await this.records.chunks(ns, id, record);
    if (chunks.length === 1) return this.moveWhole(ns, id, digest, chunks[0]);
    const parts: Part[] = chunks.map((c, i) => ({ path: paths.blobPart(ns, digest, id, i), size: c.size, md5: c.md5 }));
    await forEachLimited(chunks.keys(), MOVE_PARALLELISM, async (i) => {
      const chunk = chunks[i];
      const part = parts[i];
      let moved: StoredObject;
      try {
        moved = await this.driver.move(paths.uploadChunk(ns, id, chunk.object), part.path);
      } catch (err) {
        const there = err instanceof PathNotFound ? await this.driver.stat(part.path) : null;
        if (!there) throw err;
        moved = { size: there.size };
      }
      if (moved.size !== chunk.size) throw new SizeMismatch(part.path, chunk.size, moved.size);
      const mismatch = md5Mismatch(part.path, chunk.md5, moved.md5);
      if (mismatch) throw mismatch;
    });
    await this.driver.concat(paths.blobData(ns, digest), parts);
  }

  /**
   * A blob of one chunk is that chunk, moved to the blob's data path: nothing to join, and on Swift a plain object
   * reads faster and cheaper than a one-segment SLO (a temp URL to it is a plain GET). If another upload of the
   * same bytes got there first, that object stays and ours goes with the upload.
   */
  private async moveWhole(ns: string, id: string, digest: string, chunk: ChunkEntry): Promise<void> {
    const dst = paths.blobData(ns, digest);
    let moved: StoredObject;
    let ours = true;
    try {
      moved = await this.driver.move(paths.uploadChunk(ns, id, chunk.object), dst, { ifAbsent: true });
    } catch (err) {
      // Another upload of the same bytes got there first, or this commit's earlier attempt moved the chunk already.
      if (!(err instanceof AlreadyExists) && !(err instanceof PathNotFound)) throw err;
      const there = (err instanceof AlreadyExists ? err.existing : undefined) ?? (await this.driver.stat(dst));
      if (!there) throw err;
      moved = { size: there.size };
      ours = false;
    }
    const wrong =
      moved.size !== chunk.size
        ? new SizeMismatch(dst, chunk.size, moved.size)
        : md5Mismatch(dst, chunk.md5, moved.md5);
    if (wrong) {
      // Not the bytes that were hashed: they must not stay at the digest's path (a GET would refuse them anyway).
      if (ours) await this.driver.delete(dst);
      throw wrong;
    }
  }

  /** Delete the record first: a record must never point at a chunk that is gone. Leftover chunks are prune's. */
  private async remove(ns: string, id: string): Promise<void> {
    await this.driver.delete(paths.uploadRecord(ns, id));
    for await (const o of this.driver.list(paths.upload(ns, id))) await this.driver.delete(o.path);
  }
}
