/**
 * OpenStack Swift driver. Objects live in one container; keys are object names. Bodies stream both ways
 * (node-fetch over keep-alive agents). Integrity is Swift's ETag (the md5 of the stored bytes): a put with a known
 * md5 sends it so Swift refuses other bytes, a move is a server-side copy whose ETag is checked, and a join is a
 * static large object (SLO) manifest whose segments Swift checks against the md5s recorded when they were written.
 *
 * The work is split by job: client.ts (auth, retries, deadlines, the stall watch), reads.ts, writes.ts and
 * temp-url.ts; this class only puts them behind the driver interface and owns the container.
 */
import type { Readable } from 'node:stream';
import { DriverError, StorageUnavailable, type ByteRange, type DeleteFailure, type DeleteTarget, type MoveOptions, type ObjectInfo, type Part, type PutOptions, type StorageDriver, type StoredObject } from '../driver.js';
import { DEFAULTS } from '../../config/defaults.js';
import type { CloudAuth } from './clouds.js';
import { SwiftClient, checkKey, drain, failure } from './client.js';
import { SwiftBulk } from './bulk.js';
import { SwiftReads } from './reads.js';
import { tempUrl } from './temp-url.js';
import { SwiftWrites } from './writes.js';

export interface SwiftOptions {
  auth: CloudAuth;
  container: string;
  /** Largest chunk object; SLO segments are these objects. Swift's own limit is 5 GiB. */
  segmentSize?: number;
  /** Segments per SLO manifest before nesting; Swift's limit (1000) unless a test wants nesting sooner. */
  maxManifestSegments?: number;
  /** Objects per listing request; Swift's limit (10,000) unless a test wants paging sooner. */
  listPageSize?: number;
  /** Set as the container's temp-URL key at connect, so blob GETs can be redirected to signed Swift URLs. */
  tempUrlKey?: string;
  /** Deadline of a metadata request, and the longest a streamed body may stall, in ms (default 120 s). */
  requestTimeoutMs?: number;
  /**
   * Names per bulk-delete request, at most what /info allows; 0 turns bulk deletes off (single deletes, as on a
   * cluster without the bulk middleware). Default: what /info allows.
   */
  bulkDeleteMax?: number;
}

export const DEFAULT_SEGMENT_SIZE = DEFAULTS.swift.segmentSize;

/** No `tryLock`: Swift has no compare-and-swap, so it cannot lock across processes (docs/security-storage.md). */
export class SwiftDriver implements StorageDriver {
  readonly name = 'swift';
  readonly maxObjectSize: number;
  readonly reportsMd5 = true;
  /** Each request names the registry request it serves in X-Trans-Id-Extra, so Swift's logs can be matched. */
  readonly namesRequests = true;
  /** If-None-Match: * is checked, not locked: two racing creates may both succeed. */
  readonly atomicCreate = false;
  /** A join is an SLO over the parts, which stay where they are. */
  readonly joinKeepsParts = true;
  /** An SLO may name segments anywhere in the container (merged parts and sub-manifests go beside the parts). */
  readonly joinsPartsAnywhere = true;
  /** Deletes are multipart deletes: an SLO goes with its segments. */
  readonly deleteRemovesParts = true;
  /** A one-segment SLO costs each read an extra request: small blobs, read on every pull, are worth one copy. */
  readonly minJoinedSize = DEFAULTS.swift.minLinkedSize;
  /** Container listings are updated asynchronously by the object servers. */
  readonly listingConsistent = false;
  private readonly client: SwiftClient;
  private readonly reads: SwiftReads;
  private readonly writes: SwiftWrites;
  private bulk: SwiftBulk;

  private constructor(private readonly opts: SwiftOptions) {
    this.maxObjectSize = opts.segmentSize ?? DEFAULT_SEGMENT_SIZE;
    this.client = new SwiftClient(opts.auth, opts.container, opts.requestTimeoutMs);
    this.reads = new SwiftReads(this.client, opts.listPageSize);
    this.writes = new SwiftWrites(this.client, this.reads, opts.maxManifestSegments);
    this.bulk = new SwiftBulk(this.client, 0, (key) => this.writes.delete(key));
  }

  /** Whether deleteMany uses Swift's bulk delete (the cluster's /info offers it, and it was not turned off). */
  get bulkDelete(): boolean {
    return this.bulk.maxPerRequest > 0;
  }

  /** Bulk delete as /info offers it (bulk_delete.max_deletes_per_request), capped by `bulkDeleteMax`. */
  private async discoverBulk(): Promise<void> {
    if (this.opts.bulkDeleteMax === 0) return;
    const offered = (await this.client.info())?.bulk_delete as { max_deletes_per_request?: unknown } | undefined;
    const max = Number(offered?.max_deletes_per_request ?? 0);
    if (!Number.isInteger(max) || max <= 0) return;
    this.bulk = new SwiftBulk(this.client, Math.min(max, this.opts.bulkDeleteMax ?? max), (key) => this.writes.delete(key));
  }

  /** Log in and make sure the container exists (creating it if needed). */
  static async connect(opts: SwiftOptions): Promise<SwiftDriver> {
    const driver = new SwiftDriver(opts);
    try {
      await driver.ensureContainer();
      await driver.discoverBulk();
    } catch (err) {
      await driver.close();
      throw err;
    }
    return driver;
  }

  private async ensureContainer(): Promise<void> {
    const head = await this.client.call({ method: 'HEAD' });
    await drain(head);
    if (head.status === 404) {
      const put = await this.client.call({ method: 'PUT', headers: { 'Content-Length': '0' } });
      await drain(put);
      if (put.status !== 201 && put.status !== 202) {
        throw new DriverError(`cannot create Swift container ${this.opts.container}: ${put.status} ${put.statusText}`);
      }
    } else if (head.status !== 204 && head.status !== 200) {
      throw new DriverError(`cannot read Swift container ${this.opts.container}: ${head.status} ${head.statusText}`);
    }
    const key = this.opts.tempUrlKey;
    if (key && head.headers.get('x-container-meta-temp-url-key') !== key) {
      const post = await this.client.call({ method: 'POST', headers: { 'X-Container-Meta-Temp-URL-Key': key } });
      await drain(post);
      if (post.status !== 204 && post.status !== 202) {
        throw new DriverError(`cannot set the temp-URL key on Swift container ${this.opts.container}: ${post.status} ${post.statusText}`);
      }
    }
  }

  /** The container exists and answers with our credentials. */
  async ready(): Promise<void> {
    const head = await this.client.call({ method: 'HEAD' });
    await drain(head);
    if (head.status === 404) throw new StorageUnavailable(`Swift container ${this.opts.container} does not exist`);
    if (head.status !== 204 && head.status !== 200) throw failure(head, `HEAD container ${this.opts.container}`);
  }

  /**
   * A known length is cut into equal objects, not full ones and a remainder: a remainder can be tiny, and Swift
   * throttles reads of an SLO with more than ten segments under 1 MiB.
   */
  objectSize(length?: number): number {
    return length ? Math.ceil(length / Math.ceil(length / this.maxObjectSize)) : this.maxObjectSize;
  }

  put(key: string, body: Readable | Buffer, opts?: PutOptions): Promise<StoredObject> {
    return this.writes.put(key, body, opts);
  }
  get(key: string, range?: ByteRange): Promise<{ body: Readable; size: number }> {
    return this.reads.get(key, range);
  }
  read(key: string): Promise<Buffer> {
    return this.reads.read(key);
  }
  stat(key: string): Promise<ObjectInfo | null> {
    return this.reads.stat(key);
  }
  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.reads.list(prefix);
  }
  /** Deletes an SLO with its segments (Swift's multipart delete), or a plain object. */
  delete(key: string): Promise<void> {
    return this.writes.delete(key);
  }
  /** Bulk deletes where the cluster offers them (bulk.ts); SLOs still go with their segments. */
  deleteMany(targets: readonly DeleteTarget[]): Promise<DeleteFailure[]> {
    for (const t of targets) checkKey(typeof t === 'string' ? t : t.path);
    return this.bulk.deleteMany(targets);
  }
  requestCount(): number {
    return this.client.sent;
  }
  move(src: string, dst: string, opts?: MoveOptions): Promise<StoredObject> {
    return this.writes.move(src, dst, opts);
  }
  concat(dst: string, parts: Part[]): Promise<StoredObject> {
    return this.writes.concat(dst, parts);
  }
  verify(key: string): Promise<string[]> {
    return this.reads.verify(key);
  }
  segments(key: string): Promise<string[]> {
    return this.reads.segments(key);
  }

  async signedUrl(key: string, seconds: number): Promise<string | null> {
    checkKey(key);
    if (!this.opts.tempUrlKey) return null;
    return tempUrl(await this.client.token(), this.opts.container, key, this.opts.tempUrlKey, seconds);
  }

  async close(): Promise<void> {
    await this.client.close();
  }
}
