/**
 * In-memory driver: objects are buffers in a map. For the registry core's fast tests (and a laptop demo); nothing
 * survives the process. It keeps the contract's promises exactly: a write is visible whole or not at all, creates
 * and create-only moves are atomic, and listings are in lexical order.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import {
  AlreadyExists,
  ChecksumMismatch,
  DriverError,
  PathNotFound,
  SizeMismatch,
  type ByteRange,
  type DeleteFailure,
  type DeleteTarget,
  type MoveOptions,
  type ObjectInfo,
  type Part,
  type PutOptions,
  type StorageDriver,
  type StoredObject,
} from './driver.js';
import { deleteEach } from './delete-many.js';

interface Entry {
  bytes: Buffer;
  modified: Date;
}

export class MemoryDriver implements StorageDriver {
  readonly name = 'memory';
  readonly maxObjectSize = Number.MAX_SAFE_INTEGER;
  objectSize(): number {
    return this.maxObjectSize;
  }
  readonly reportsMd5 = false;
  readonly atomicCreate = true;
  readonly joinKeepsParts = false;
  readonly joinsPartsAnywhere = true;
  readonly deleteRemovesParts = false;
  readonly listingConsistent = true;
  private readonly objects = new Map<string, Entry>();

  async put(key: string, body: Readable | Buffer, opts: PutOptions = {}): Promise<StoredObject> {
    checkKey(key);
    opts.signal?.throwIfAborted();
    const bytes = Buffer.isBuffer(body) ? body : await collect(body, opts.signal);
    if (opts.size !== undefined && bytes.length !== opts.size) throw new SizeMismatch(key, opts.size, bytes.length);
    if (opts.md5) {
      const actual = md5(bytes);
      if (actual !== opts.md5) throw new ChecksumMismatch(key, opts.md5, actual);
    }
    if (opts.ifAbsent && this.objects.has(key)) throw new AlreadyExists(key);
    this.objects.set(key, { bytes: Buffer.from(bytes), modified: new Date() });
    return { size: bytes.length, md5: opts.md5 };
  }

  async get(key: string, range?: ByteRange): Promise<{ body: Readable; size: number }> {
    const bytes = this.entry(key).bytes;
    const part = range ? bytes.subarray(range.start, range.end + 1) : bytes;
    return { body: Readable.from([part]), size: part.length };
  }

  async read(key: string): Promise<Buffer> {
    return Buffer.from(this.entry(key).bytes);
  }

  async stat(key: string): Promise<ObjectInfo | null> {
    checkKey(key);
    const e = this.objects.get(key);
    return e ? { path: key, size: e.bytes.length, modified: e.modified } : null;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    checkKey(prefix);
    const keys = [...this.objects.keys()].filter((k) => k.startsWith(prefix + '/')).sort();
    for (const key of keys) {
      const e = this.objects.get(key);
      if (e) yield { path: key, size: e.bytes.length, modified: e.modified };
    }
  }

  async delete(key: string): Promise<void> {
    checkKey(key);
    this.objects.delete(key);
  }

  readonly bulkDelete = false;
  deleteMany(targets: readonly DeleteTarget[]): Promise<DeleteFailure[]> {
    return deleteEach(targets, (key) => this.delete(key));
  }

  async move(src: string, dst: string, opts: MoveOptions = {}): Promise<StoredObject> {
    checkKey(dst);
    const e = this.entry(src);
    if (opts.ifAbsent && this.objects.has(dst)) throw new AlreadyExists(dst);
    this.objects.set(dst, e);
    this.objects.delete(src);
    return { size: e.bytes.length };
  }

  /** Parts are checked by size, joined, and consumed, as on the filesystem. */
  async concat(dst: string, parts: Part[]): Promise<StoredObject> {
    checkKey(dst);
    for (const part of parts) {
      const size = this.entry(part.path).bytes.length;
      if (size !== part.size) throw new SizeMismatch(part.path, part.size, size);
    }
    const bytes = Buffer.concat(parts.map((p) => this.entry(p.path).bytes));
    for (const part of parts) this.objects.delete(part.path);
    this.objects.set(dst, { bytes, modified: new Date() });
    return { size: bytes.length };
  }

  /** Always ready: the map is there as long as the process is. */
  async ready(): Promise<void> {}

  async close(): Promise<void> {}

  private entry(key: string): Entry {
    checkKey(key);
    const e = this.objects.get(key);
    if (!e) throw new PathNotFound(key);
    return e;
  }
}

/** The same keys the other drivers accept: relative, '/'-separated, no empty, '.' or '..' component. */
function checkKey(key: string): void {
  if (!key || key.includes('\0') || key.split('/').some((p) => p === '' || p === '.' || p === '..')) {
    throw new DriverError(`bad key: ${JSON.stringify(key)}`);
  }
}

async function collect(body: Readable, signal?: AbortSignal): Promise<Buffer> {
  const pieces: Buffer[] = [];
  const onAbort = () => body.destroy(new DriverError('write aborted'));
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    for await (const piece of body) pieces.push(piece as Buffer);
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
  signal?.throwIfAborted();
  return Buffer.concat(pieces);
}

const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');
