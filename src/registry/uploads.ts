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
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { PassThrough, type Readable } from 'node:stream';
import { inlineMd5, md5Job, type Md5Job } from './native-hash.js';
import { AlreadyExists, ChecksumMismatch, PathNotFound, SizeMismatch, type Part, type StorageDriver, type StoredObject } from '../storage/driver.js';
import { RegistryError, uploadUnknown } from './errors.js';
import { checkDigest, digestAlgorithm, paths, validUploadId } from './paths.js';
import { UploadLocks } from './upload-lock.js';
import { DEFAULT_LIMITS, OpenUploads, tooLarge, tooManyChunks, type UploadLimits } from './upload-limits.js';
import { createBackgroundSha256, createSha256, type Sha256State } from './sha256state.js';
import { chunkCount, RECORD_VERSION, recordSize, UploadRecords, type ChunkEntry, type UploadRecord } from './upload-record.js';
import type { BlobLinks } from './blobs.js';
import { forEachLimited } from '../util/concurrency.js';

export interface AppendOptions {
  /** Content-Range start: must equal the current size. */
  offset?: number;
  /** Declared body length (Content-Length or Content-Range); a body of another length fails. */
  length?: number;
  signal?: AbortSignal;
}

/** Bodies at least this long hash md5 on the thread pool; shorter ones on the request thread. */
const POOLED_MD5_THRESHOLD = 4 * 1024 * 1024;

/** Bytes gathered before one write to storage: per-write costs (streams, syscalls) dwarf a copy at 64 KiB. */
const WRITE_BATCH = 1 << 20;
/** How many chunk moves run at once during commit. */
const MOVE_PARALLELISM = 4;

/** When both md5s are known and differ, storage holds other bytes than the ones hashed. */
function md5Mismatch(path: string, hashed: string | undefined, stored: string | undefined): ChecksumMismatch | null {
  return hashed !== undefined && stored !== undefined && hashed !== stored ? new ChecksumMismatch(path, hashed, stored) : null;
}

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
    // SHA-256 and md5 run on the thread pool beside the socket and storage work (native-hash.ts).
    const hash = createBackgroundSha256(record.sha256);
    const limit = this.driver.objectSize(opts.length || undefined);
    let received = 0;
    let current: {
      stream: PassThrough;
      stored: Promise<StoredObject>;
      md5: Md5Job | null;
      size: number;
      object: string;
      abort: AbortController;
      /** Received but not yet written: pieces go to storage in batches (one write per MiB, not per 64 KiB). */
      batch: Buffer[];
      batchBytes: number;
    } | null = null;
    // md5 only where the storage reports one to check it against: on the filesystem it would be a fifth of the CPU
    // an upload costs, for a value nothing reads.
    const pooled = opts.length === undefined || opts.length >= POOLED_MD5_THRESHOLD;
    const newMd5 = !this.driver.reportsMd5 ? () => null : pooled ? md5Job : inlineMd5;
    // A client that goes away aborts the object streaming now; one already complete still finishes.
    const onAbort = () => current?.abort.abort(opts.signal?.reason);
    opts.signal?.addEventListener('abort', onAbort, { once: true });

    // Objects are named by their index in the record; the next one opens while the one before is still finishing.
    let nextIndex = chunkCount(record);
    /** `start`: where the object begins in this body. With a declared length its size is known before it streams. */
    const open = (start: number) => {
      if (nextIndex >= chunksPerUpload) throw tooManyChunks(id, chunksPerUpload);
      const object = `${nextIndex++}.${randomBytes(4).toString('hex')}`;
      // A size up front spares Swift the chunked decoding (about a tenth of its CPU for a PUT, measured with curl).
      const size = opts.length === undefined ? undefined : Math.min(limit, opts.length - start);
      const stream = new PassThrough({ highWaterMark: 1 << 20 });
      // Failures surface through `stored` (the driver's put); an error event here must not go unhandled.
      stream.on('error', () => {});
      const abort = new AbortController();
      const stored = this.driver.put(paths.uploadChunk(ns, id, object), stream, { signal: abort.signal, size });
      stored.catch(() => {}); // observed when the object is closed; avoid an unhandled rejection meanwhile
      return { stream, stored, md5: newMd5(), size: 0, object, abort, batch: [] as Buffer[], batchBytes: 0 };
    };
    const send = async (c: NonNullable<typeof current>) => {
      if (c.batchBytes === 0) return;
      const data = c.batch.length === 1 ? c.batch[0] : Buffer.concat(c.batch, c.batchBytes);
      c.batch = [];
      c.batchBytes = 0;
      if (!c.stream.write(data)) await Promise.race([once(c.stream, 'drain'), c.stored]);
    };
    // A full object finishes (Swift's response, the md5 check, the record) while the next one already streams:
    // waiting would stall the client for the storage's fsync at every object boundary. At most one finishes at a
    // time, and records are written in object order.
    let finishing: Promise<void> = Promise.resolve();
    let failure: unknown;
    const finish = async (c: NonNullable<typeof current>, state: Sha256State) => {
      const [stored, md5] = await Promise.all([c.stored, c.md5?.digest()]);
      const path = paths.uploadChunk(ns, id, c.object);
      if (stored.size !== c.size) {
        await this.driver.delete(path);
        throw new SizeMismatch(path, c.size, stored.size);
      }
      const mismatch = md5Mismatch(path, md5, stored.md5);
      if (mismatch) {
        await this.driver.delete(path);
        throw mismatch;
      }
      record.chunks.push({ object: c.object, size: c.size, md5 });
      record.sha256 = state;
      record.updated = new Date().toISOString();
      await this.writeRecord(ns, id, record);
    };
    const close = async () => {
      const c = current!;
      await send(c);
      current = null;
      c.stream.end();
      const state = await hash.state();
      await finishing;
      finishing = finish(c, state);
      finishing.catch((err) => {
        failure ??= err;
        current?.abort.abort(err); // the object streaming now is not needed any more
      });
    };

    try {
      for await (const piece of body as AsyncIterable<Buffer>) {
        if (failure) throw failure;
        received += piece.length;
        if (size + received > maxBlobSize) throw tooLarge(maxBlobSize);
        if (opts.length !== undefined && received > opts.length) {
          throw new RegistryError('SIZE_INVALID', 'body is longer than declared', { declared: opts.length });
        }
        let rest = piece;
        while (rest.length > 0) {
          current ??= open(received - rest.length);
          const take = Math.min(rest.length, limit - current.size);
          const slice = take === rest.length ? rest : rest.subarray(0, take);
          const shaBusy = hash.update(slice);
          const md5Busy = current.md5?.update(slice);
          current.size += slice.length;
          current.batch.push(slice);
          current.batchBytes += slice.length;
          if (current.batchBytes >= WRITE_BATCH) await send(current);
          if (shaBusy) await shaBusy;
          if (md5Busy) await md5Busy;
          rest = rest.subarray(take);
          // The last object of a declared length stays open until the body ends: a byte too many must fail it.
          const last = opts.length !== undefined && received === opts.length && rest.length === 0;
          if (current.size === limit && !last) await close();
        }
      }
      if (opts.length !== undefined && received < opts.length) {
        throw new RegistryError('SIZE_INVALID', 'body is shorter than declared', { declared: opts.length, received });
      }
      if (opts.signal?.aborted) throw new RegistryError('BLOB_UPLOAD_INVALID', 'client disconnected');
      if (current) await close();
      await finishing;
    } catch (err) {
      if (current) {
        const c = current as NonNullable<typeof current>;
        c.abort.abort(err);
        c.stream.destroy(err as Error);
      }
      // Objects that were complete still count: the record keeps them, and the client resumes after them.
      await finishing.catch(() => {});
      throw failure ?? err;
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
    return { size: recordSize(record) };
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
