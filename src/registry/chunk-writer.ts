/**
 * One request body streamed onto the end of an upload: cut into chunk objects of the driver's `objectSize`, each
 * written in batches while SHA-256 (and md5, where storage reports one to check against) run on the thread pool.
 * When a chunk object is stored and its size and md5 match what storage reports, the record gains the chunk and the
 * hash state after it, so a client that goes away keeps every complete object and loses only the one in flight.
 */
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { PassThrough, type Readable } from 'node:stream';
import { ChecksumMismatch, SizeMismatch, type StorageDriver, type StoredObject } from '../storage/driver.js';
import { RegistryError } from './errors.js';
import { inlineMd5, md5Job, type Md5Job } from './native-hash.js';
import { paths } from './paths.js';
import { createBackgroundSha256, type Sha256State } from './sha256state.js';
import { tooLarge, tooManyChunks, type UploadLimits } from './upload-limits.js';
import { chunkCount, recordSize, type UploadRecord } from './upload-record.js';

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

/** When both md5s are known and differ, storage holds other bytes than the ones hashed. */
export function md5Mismatch(path: string, hashed: string | undefined, stored: string | undefined): ChecksumMismatch | null {
  return hashed !== undefined && stored !== undefined && hashed !== stored ? new ChecksumMismatch(path, hashed, stored) : null;
}

/** One chunk object being written: its stream into storage, its md5, and the pieces not yet sent. */
class ChunkObject {
  readonly stream = new PassThrough({ highWaterMark: 1 << 20 });
  readonly abort = new AbortController();
  readonly stored: Promise<StoredObject>;
  size = 0;
  private batch: Buffer[] = [];
  private batchBytes = 0;

  constructor(
    driver: StorageDriver,
    readonly path: string,
    readonly object: string,
    declaredSize: number | undefined,
    readonly md5: Md5Job | null,
  ) {
    // Failures surface through `stored` (the driver's put); an error event here must not go unhandled.
    this.stream.on('error', () => {});
    this.stored = driver.put(path, this.stream, { signal: this.abort.signal, size: declaredSize });
    this.stored.catch(() => {}); // observed when the object is finished; avoid an unhandled rejection meanwhile
  }

  /** Take a piece; resolves once it may be reused (its md5 hashed), writing a full batch first. */
  async add(piece: Buffer): Promise<void> {
    const md5Busy = this.md5?.update(piece);
    this.size += piece.length;
    this.batch.push(piece);
    this.batchBytes += piece.length;
    if (this.batchBytes >= WRITE_BATCH) await this.send();
    if (md5Busy) await md5Busy;
  }

  /** Write what is gathered, waiting while storage holds the stream back. */
  async send(): Promise<void> {
    if (this.batchBytes === 0) return;
    const data = this.batch.length === 1 ? this.batch[0] : Buffer.concat(this.batch, this.batchBytes);
    this.batch = [];
    this.batchBytes = 0;
    if (!this.stream.write(data)) await Promise.race([once(this.stream, 'drain'), this.stored]);
  }

  cancel(reason: unknown): void {
    this.abort.abort(reason);
    this.stream.destroy(reason as Error);
  }
}

export class ChunkWriter {
  private readonly hash;
  private readonly limit: number;
  private readonly newMd5: () => Md5Job | null;
  private current: ChunkObject | null = null;
  /** The object finishing now (storage's answer, checks, the record); at most one, so records go in order. */
  private finishing: Promise<void> = Promise.resolve();
  private failure: unknown;
  private received = 0;
  private nextIndex: number;
  private readonly startSize: number;

  constructor(
    private readonly driver: StorageDriver,
    private readonly ns: string,
    private readonly id: string,
    private readonly record: UploadRecord,
    private readonly limits: UploadLimits,
    private readonly opts: AppendOptions,
    private readonly writeRecord: (record: UploadRecord) => Promise<void>,
  ) {
    // SHA-256 and md5 run on the thread pool beside the socket and storage work (native-hash.ts).
    this.hash = createBackgroundSha256(record.sha256);
    this.limit = driver.objectSize(opts.length || undefined);
    // md5 only where storage reports one to check it against: on the filesystem it would be a fifth of the CPU an
    // upload costs, for a value nothing reads.
    const pooled = opts.length === undefined || opts.length >= POOLED_MD5_THRESHOLD;
    this.newMd5 = !driver.reportsMd5 ? () => null : pooled ? md5Job : inlineMd5;
    // Objects are named by their index in the record; the next one opens while the one before is still finishing.
    this.nextIndex = chunkCount(record);
    this.startSize = recordSize(record);
  }

  async write(body: Readable): Promise<{ size: number }> {
    const { opts } = this;
    // A client that goes away aborts the object streaming now; one already complete still finishes.
    const onAbort = () => this.current?.abort.abort(opts.signal?.reason);
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      for await (const piece of body as AsyncIterable<Buffer>) await this.take(piece);
      if (opts.length !== undefined && this.received < opts.length) {
        throw new RegistryError('SIZE_INVALID', 'body is shorter than declared', { declared: opts.length, received: this.received });
      }
      if (opts.signal?.aborted) throw new RegistryError('BLOB_UPLOAD_INVALID', 'client disconnected');
      if (this.current) await this.close();
      await this.finishing;
    } catch (err) {
      this.current?.cancel(err);
      // Objects that were complete still count: the record keeps them, and the client resumes after them.
      await this.finishing.catch(() => {});
      throw this.failure ?? err;
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
    return { size: recordSize(this.record) };
  }

  /** One piece of the body, cut where objects end. */
  private async take(piece: Buffer): Promise<void> {
    const { opts, limit } = this;
    if (this.failure) throw this.failure;
    this.received += piece.length;
    if (this.startSize + this.received > this.limits.maxBlobSize) throw tooLarge(this.limits.maxBlobSize);
    if (opts.length !== undefined && this.received > opts.length) {
      throw new RegistryError('SIZE_INVALID', 'body is longer than declared', { declared: opts.length });
    }
    let rest = piece;
    while (rest.length > 0) {
      const current = (this.current ??= this.open(this.received - rest.length));
      const take = Math.min(rest.length, limit - current.size);
      const slice = take === rest.length ? rest : rest.subarray(0, take);
      const shaBusy = this.hash.update(slice);
      await current.add(slice);
      if (shaBusy) await shaBusy;
      rest = rest.subarray(take);
      // The last object of a declared length stays open until the body ends: a byte too many must fail it.
      const last = opts.length !== undefined && this.received === opts.length && rest.length === 0;
      if (current.size === limit && !last) await this.close();
    }
  }

  /** `start`: where the object begins in this body. With a declared length its size is known before it streams. */
  private open(start: number): ChunkObject {
    const { chunksPerUpload } = this.limits;
    if (this.nextIndex >= chunksPerUpload) throw tooManyChunks(this.id, chunksPerUpload);
    const object = `${this.nextIndex++}.${randomBytes(4).toString('hex')}`;
    // A size up front spares Swift the chunked decoding (about a tenth of its CPU for a PUT, measured with curl).
    const size = this.opts.length === undefined ? undefined : Math.min(this.limit, this.opts.length - start);
    return new ChunkObject(this.driver, paths.uploadChunk(this.ns, this.id, object), object, size, this.newMd5());
  }

  /**
   * The current object is complete: it finishes while the next one already streams (waiting would stall the client
   * for storage's fsync at every object boundary).
   */
  private async close(): Promise<void> {
    const c = this.current!;
    await c.send();
    this.current = null;
    c.stream.end();
    const state = await this.hash.state();
    await this.finishing;
    this.finishing = this.finish(c, state);
    this.finishing.catch((err) => {
      this.failure ??= err;
      this.current?.abort.abort(err); // the object streaming now is not needed any more
    });
  }

  /** Check what storage holds against what was sent, then record the chunk and the hash state after it. */
  private async finish(c: ChunkObject, state: Sha256State): Promise<void> {
    const [stored, md5] = await Promise.all([c.stored, c.md5?.digest()]);
    if (stored.size !== c.size) {
      await this.driver.delete(c.path);
      throw new SizeMismatch(c.path, c.size, stored.size);
    }
    const mismatch = md5Mismatch(c.path, md5, stored.md5);
    if (mismatch) {
      await this.driver.delete(c.path);
      throw mismatch;
    }
    this.record.chunks.push({ object: c.object, size: c.size, md5 });
    this.record.sha256 = state;
    this.record.updated = new Date().toISOString();
    await this.writeRecord(this.record);
  }
}
