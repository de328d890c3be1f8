/**
 * The pull-through cache in storage: under `mirror.cache/<registry>/` (registry/paths.ts), apart from every
 * namespace, written through the storage driver so the filesystem and Swift both hold it.
 *
 * Fills follow prune's protocol (registry/prune.ts): `touched` is rewritten before anything else, the bytes are
 * written whole (a single put, or parts joined by `concat` where a blob is larger than one object), and the
 * tombstone is checked afterwards. Cache prune (mirror/prune.ts) tombstones, re-reads `touched` and `pulled`, and
 * only then deletes, the tombstone last: a fill beside it either made prune keep the item or sees the tombstone.
 * Every object is whole or absent, so prune never leaves a blob half-written.
 */
import { createHash, randomUUID } from 'node:crypto';
import { md5Job, type Md5Job } from '../registry/native-hash.js';
import { PassThrough, type Readable } from 'node:stream';
import { PathNotFound, type ByteRange, type Part, type StorageDriver } from '../storage/driver.js';
import { digestAlgorithm, paths, validDigest } from '../registry/paths.js';
import { DigestMismatch, verifying } from '../registry/verify.js';
import { pipeline } from 'node:stream/promises';

export interface CachedTag {
  digest: string;
  mediaType: string;
  size: number;
  /** When the upstream last confirmed this digest for the tag (ms since the epoch). */
  checked: number;
}

export class CacheStore {
  /** When this process last wrote each item's `pulled` marker (registry + digest → ms). */
  private readonly pulls = new Map<string, number>();

  constructor(
    readonly driver: StorageDriver,
    /** At most one `pulled` write per item per this many ms (per process). */
    private readonly pullIntervalMs: number,
  ) {}

  async blobSize(registry: string, digest: string): Promise<number | null> {
    const [data, tombstone] = await Promise.all([this.driver.stat(paths.mirrorBlobData(registry, digest)), this.driver.stat(paths.mirrorTombstone(registry, digest))]);
    return data && !tombstone ? data.size : null;
  }

  /** A cached blob's bytes, checked against its digest before the last one is handed on. */
  async readBlob(registry: string, digest: string): Promise<{ body: Readable; size: number }> {
    const stored = await this.driver.get(paths.mirrorBlobData(registry, digest));
    const checked = verifying(digest);
    pipeline(stored.body, checked).catch(() => {});
    return { body: checked, size: stored.size };
  }

  /** Part of a cached blob, as stored (a range cannot be checked against the digest; the whole blob was, on fill). */
  async readRange(registry: string, digest: string, range: ByteRange): Promise<Readable> {
    return (await this.driver.get(paths.mirrorBlobData(registry, digest), range)).body;
  }

  /** A URL the client may GET the cached blob from itself, where the backend signs them (Swift temp URLs). */
  async signedUrl(registry: string, digest: string, seconds: number): Promise<string | null> {
    return this.driver.signedUrl ? this.driver.signedUrl(paths.mirrorBlobData(registry, digest), seconds) : null;
  }

  /** A cached manifest and its media type, verified; null when not cached (or half gone under prune). */
  async readManifest(registry: string, digest: string): Promise<{ body: Buffer; mediaType: string } | null> {
    let meta: Buffer;
    let body: Buffer;
    try {
      [meta, body] = await Promise.all([this.driver.read(paths.mirrorManifestMeta(registry, digest)), this.driver.read(paths.mirrorBlobData(registry, digest))]);
    } catch (err) {
      if (err instanceof PathNotFound) return null;
      throw err;
    }
    const actual = hash(digest, body);
    if (actual !== digest) throw new DigestMismatch(digest, actual);
    const { mediaType } = JSON.parse(meta.toString('utf8')) as { mediaType: string };
    return { body, mediaType };
  }

  /** Store a verified manifest (the caller hashed it); returns false when prune was deleting it meanwhile. */
  async writeManifest(registry: string, digest: string, body: Buffer, mediaType: string): Promise<boolean> {
    await this.touch(registry, digest);
    // Side by side: a cold pull waits for these (one Swift round trip instead of three).
    await Promise.all([
      this.driver.put(paths.mirrorBlobData(registry, digest), body),
      this.driver.put(paths.mirrorManifestMeta(registry, digest), Buffer.from(JSON.stringify({ mediaType })), { contentType: 'application/json' }),
      this.driver.put(paths.mirrorPulled(registry, digest), Buffer.alloc(0)),
    ]);
    this.pulls.set(`${registry}/${digest}`, Date.now());
    return this.untombstoned(registry, digest);
  }

  /**
   * Store a blob from a stream that is already verified (it fails before its last byte when the digest is wrong,
   * and then nothing is written). Returns false when prune was deleting it meanwhile.
   */
  async writeBlob(registry: string, digest: string, body: Readable, size: number | undefined, signal: AbortSignal): Promise<boolean> {
    await this.touch(registry, digest);
    const data = paths.mirrorBlobData(registry, digest);
    const objectSize = this.driver.objectSize(size);
    // One put where the backend takes any size (the filesystem), or the blob fits one object.
    if (this.driver.maxObjectSize >= Number.MAX_SAFE_INTEGER || (size !== undefined && size <= objectSize)) {
      await this.driver.put(data, body, { size, signal });
    } else {
      await this.writeParts(registry, digest, body, objectSize, signal);
    }
    await this.driver.put(paths.mirrorPulled(registry, digest), Buffer.alloc(0));
    this.pulls.set(`${registry}/${digest}`, Date.now());
    return this.untombstoned(registry, digest);
  }

  /** Record a pull for prune, at most once per interval per item in this process. */
  async pulled(registry: string, digest: string): Promise<void> {
    const key = `${registry}/${digest}`;
    const last = this.pulls.get(key);
    if (last !== undefined && Date.now() - last < this.pullIntervalMs) return;
    this.pulls.set(key, Date.now());
    if (this.pulls.size > 100_000) this.pulls.delete(this.pulls.keys().next().value!);
    await this.driver.put(paths.mirrorPulled(registry, digest), Buffer.alloc(0));
  }

  async tag(registry: string, name: string, tag: string): Promise<CachedTag | null> {
    try {
      const doc = JSON.parse((await this.driver.read(paths.mirrorTag(registry, name, tag))).toString('utf8')) as CachedTag;
      return validDigest(doc.digest) && typeof doc.mediaType === 'string' && typeof doc.checked === 'number' ? doc : null;
    } catch (err) {
      if (err instanceof PathNotFound || err instanceof SyntaxError) return null;
      throw err;
    }
  }

  async setTag(registry: string, name: string, tag: string, value: CachedTag): Promise<void> {
    await this.driver.put(paths.mirrorTag(registry, name, tag), Buffer.from(JSON.stringify(value)), { contentType: 'application/json' });
  }

  private async touch(registry: string, digest: string): Promise<void> {
    await this.driver.put(paths.mirrorTouched(registry, digest), Buffer.alloc(0));
  }

  private async untombstoned(registry: string, digest: string): Promise<boolean> {
    return (await this.driver.stat(paths.mirrorTombstone(registry, digest))) === null;
  }

  /**
   * A blob larger than one object: parts of `objectSize` bytes under the blob's parts/<fill>/, then joined. The
   * next part starts while the last one's PUT is still being answered (two at most), so the fill, and the clients
   * reading it, do not stop at every part boundary for a Swift round trip.
   */
  private async writeParts(registry: string, digest: string, body: Readable, objectSize: number, signal: AbortSignal): Promise<void> {
    const fill = randomUUID();
    const started: string[] = [];
    const written: Promise<Part>[] = [];
    let current: { stream: PassThrough; bytes: number; md5?: Md5Job; done: Promise<{ size: number; md5?: string }>; path: string } | undefined;
    const start = () => {
      const path = paths.mirrorBlobPart(registry, digest, fill, started.length);
      started.push(path);
      const stream = new PassThrough({ highWaterMark: 1 << 20 });
      const done = this.driver.put(path, stream, { signal });
      // A failed put ends its stream, so a writer waiting for it to drain goes on (and fails at the join).
      done.catch((err: Error) => stream.destroy(err));
      // md5 on the thread pool, off the event loop that serves the clients.
      return { stream, bytes: 0, md5: this.driver.reportsMd5 ? md5Job() : undefined, done, path };
    };
    const finish = () => {
      if (!current) return;
      const c = current;
      current = undefined;
      c.stream.end();
      const part = Promise.all([c.done, c.md5?.digest()]).then(([stored, md5]) => {
        if (md5 !== undefined && stored.md5 !== undefined && stored.md5 !== md5) throw new Error(`storage reports another md5 for ${c.path}`);
        return { path: c.path, size: c.bytes, md5 };
      });
      part.catch(() => {});
      written.push(part);
    };
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        let piece = chunk;
        while (piece.length > 0) {
          current ??= start();
          const take = Math.min(piece.length, objectSize - current.bytes);
          const slice = piece.subarray(0, take);
          const hashing = current.md5?.update(slice);
          current.bytes += take;
          if (!current.stream.write(slice)) await drained(current.stream);
          if (hashing) await hashing;
          piece = piece.subarray(take);
          if (current.bytes === objectSize) {
            finish();
            if (written.length >= PARTS_IN_FLIGHT) await written[written.length - PARTS_IN_FLIGHT];
          }
        }
      }
      finish();
      await this.driver.concat(paths.mirrorBlobData(registry, digest), await Promise.all(written));
    } catch (err) {
      current?.stream.destroy(err as Error);
      await Promise.allSettled(written);
      await Promise.all(started.map((p) => this.driver.delete(p).catch(() => {})));
      throw err;
    }
  }
}

/** Part PUTs of one fill in flight at once. */
const PARTS_IN_FLIGHT = 2;

function drained(stream: PassThrough): Promise<void> {
  return new Promise((resolve) => {
    if (stream.destroyed) return resolve();
    const done = () => {
      stream.off('drain', done);
      stream.off('close', done);
      resolve();
    };
    stream.once('drain', done);
    stream.once('close', done);
  });
}

function hash(digest: string, body: Buffer): string {
  const algorithm = digestAlgorithm(digest);
  return `${algorithm}:${createHash(algorithm).update(body).digest('hex')}`;
}
