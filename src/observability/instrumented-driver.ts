/** A storage driver that counts and times every operation of the driver it wraps, and changes nothing else. */
import type { Readable } from 'node:stream';
import { PathNotFound, type ByteRange, type DeleteFailure, type DeleteTarget, type Lock, type MoveOptions, type ObjectInfo, type Part, type PutOptions, type StorageDriver, type StoredObject } from '../storage/driver.js';
import type { Metrics } from './metrics.js';

export class InstrumentedDriver implements StorageDriver {
  readonly name: string;
  readonly maxObjectSize: number;
  readonly reportsMd5: boolean;
  readonly namesRequests?: boolean;
  readonly atomicCreate: boolean;
  readonly joinKeepsParts: boolean;
  readonly joinsPartsAnywhere: boolean;
  readonly deleteRemovesParts: boolean;
  readonly listingConsistent: boolean;
  readonly signedUrl?: (path: string, seconds: number) => Promise<string | null>;
  readonly verify?: (path: string) => Promise<string[]>;
  readonly segments?: (path: string) => Promise<string[]>;
  readonly tryLock?: (path: string, ttlMs: number) => Promise<Lock | null>;
  readonly requestCount?: () => number;

  constructor(
    private readonly inner: StorageDriver,
    private readonly metrics: Metrics,
  ) {
    this.name = inner.name;
    this.maxObjectSize = inner.maxObjectSize;
    this.reportsMd5 = inner.reportsMd5;
    this.namesRequests = inner.namesRequests;
    this.atomicCreate = inner.atomicCreate;
    this.joinKeepsParts = inner.joinKeepsParts;
    this.joinsPartsAnywhere = inner.joinsPartsAnywhere;
    this.deleteRemovesParts = inner.deleteRemovesParts;
    this.listingConsistent = inner.listingConsistent;
    if (inner.signedUrl) this.signedUrl = (path, seconds) => this.timed('signed_url', () => inner.signedUrl!(path, seconds));
    if (inner.verify) this.verify = (path) => this.timed('verify', () => inner.verify!(path));
    if (inner.segments) this.segments = (path) => this.timed('segments', () => inner.segments!(path));
    if (inner.requestCount) this.requestCount = () => inner.requestCount!();
    if (inner.tryLock) this.tryLock = (path, ttlMs) => this.timed('lock', () => inner.tryLock!(path, ttlMs));
  }

  private async timed<T>(op: string, fn: () => Promise<T>): Promise<T> {
    const end = this.metrics.storageSeconds.startTimer({ op });
    try {
      const result = await fn();
      this.metrics.storageRequests.inc({ op, outcome: op === 'stat' && result === null ? 'not_found' : 'ok' });
      return result;
    } catch (err) {
      this.metrics.storageRequests.inc({ op, outcome: err instanceof PathNotFound ? 'not_found' : 'error' });
      throw err;
    } finally {
      end();
    }
  }

  ready(): Promise<void> {
    return this.timed('ready', () => this.inner.ready());
  }

  objectSize(length?: number): number {
    return this.inner.objectSize(length);
  }

  put(path: string, body: Readable | Buffer, opts?: PutOptions): Promise<StoredObject> {
    return this.timed('put', () => this.inner.put(path, body, opts));
  }
  get(path: string, range?: ByteRange): Promise<{ body: Readable; size: number }> {
    return this.timed('get', () => this.inner.get(path, range));
  }
  read(path: string): Promise<Buffer> {
    return this.timed('read', () => this.inner.read(path));
  }
  stat(path: string): Promise<ObjectInfo | null> {
    return this.timed('stat', () => this.inner.stat(path));
  }
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const end = this.metrics.storageSeconds.startTimer({ op: 'list' });
    try {
      yield* this.inner.list(prefix);
      this.metrics.storageRequests.inc({ op: 'list', outcome: 'ok' });
    } catch (err) {
      this.metrics.storageRequests.inc({ op: 'list', outcome: 'error' });
      throw err;
    } finally {
      end();
    }
  }
  delete(path: string): Promise<void> {
    return this.timed('delete', () => this.inner.delete(path));
  }
  get bulkDelete(): boolean {
    return this.inner.bulkDelete;
  }
  deleteMany(targets: readonly DeleteTarget[]): Promise<DeleteFailure[]> {
    return this.timed('delete_many', () => this.inner.deleteMany(targets));
  }
  move(src: string, dst: string, opts?: MoveOptions): Promise<StoredObject> {
    return this.timed('move', () => this.inner.move(src, dst, opts));
  }
  concat(dst: string, parts: Part[]): Promise<StoredObject> {
    return this.timed('concat', () => this.inner.concat(dst, parts));
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
