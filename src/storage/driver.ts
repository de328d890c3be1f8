/**
 * The storage driver interface: objects in, objects out, streamed.
 *
 * Drivers know nothing of OCI. Paths are '/'-separated keys without a leading slash, built only by
 * registry/paths.ts. Every method is async; no driver holds a whole object in memory.
 */
import type { Readable } from 'node:stream';

/**
 * The piece size of a read, and what a `get` body may buffer ahead of its reader. Every paused download holds a few
 * of these (storage, digest check, socket: docs/security-network.md), so it is what bounds their memory.
 */
export const READ_CHUNK = 128 << 10;

/** One stored object as a listing or stat reports it. */
export interface ObjectInfo {
  path: string;
  size: number;
  /** Last write time (for expiry decisions in prune). */
  modified: Date;
  /**
   * Whether the object is a join that keeps its parts (Swift: an SLO manifest), where a listing says so (Swift's
   * does); undefined where the backend does not say. `deleteMany` uses it to skip asking.
   */
  joined?: boolean;
  /**
   * md5 hex of the object's bytes, where the listing reports it for free (Swift's `hash`, for objects that are not
   * joins; `reportsMd5` backends always do). Lets a reader know which of a few known small values an object holds
   * without reading it (the web page: which digest a tag names).
   */
  md5?: string;
}

/** An object for `deleteMany`: a path, or an entry from a listing (whose `joined` saves a backend from asking). */
export type DeleteTarget = string | { path: string; joined?: boolean };

/** One object `deleteMany` could not delete (an absent object is not a failure). */
export interface DeleteFailure {
  path: string;
  error: Error;
}

/** What the backend stored, as the backend itself reports it. */
export interface StoredObject {
  size: number;
  /** md5 hex of the stored bytes as reported by the backend (Swift's ETag), or undefined if the backend has none. */
  md5?: string;
  /**
   * `concat` only: another join of the same path won a race (two uploads of one digest), so the path reads from that
   * join's parts, and these were removed. Where creates are not atomic (`atomicCreate`) both may miss it.
   */
  joinedElsewhere?: boolean;
}

/** A part of a concatenated object, as recorded when it was written. */
export interface Part {
  path: string;
  size: number;
  /** Recorded where the backend reports md5s (`reportsMd5`), which then checks the part against it. */
  md5?: string;
}

export interface ByteRange {
  /** First byte, inclusive. */
  start: number;
  /** Last byte, inclusive. */
  end: number;
}

export interface PutOptions {
  /** Abort the write (e.g. the client went away); nothing is left visible at the path. */
  signal?: AbortSignal;
  /** Exact byte count if known; a body of another length fails the write. */
  size?: number;
  /** Expected md5 hex; the backend refuses a body that does not match (ChecksumMismatch). */
  md5?: string;
  contentType?: string;
  /**
   * Create only: if an object is already at the path, fail with AlreadyExists and change nothing. Atomic on the
   * filesystem; on Swift (If-None-Match: *) two creates racing each other may both succeed, so callers that need
   * a lock must read back what they wrote.
   */
  ifAbsent?: boolean;
}

export interface MoveOptions {
  /**
   * Fail with AlreadyExists, leaving src where it is, if dst exists. Atomic on the filesystem; on Swift a check
   * before the copy (its copy applies If-None-Match to the source), so two racing moves may both succeed.
   */
  ifAbsent?: boolean;
}

/** A lock taken with `tryLock`, kept live by the driver until released. */
export interface Lock {
  /** Give the lock up (if it is still this holder's). */
  release(): Promise<void>;
}

export interface StorageDriver {
  readonly name: string;
  /**
   * Largest object this backend accepts in one put. The registry splits longer chunks into several
   * objects so that a single huge PATCH still works.
   */
  readonly maxObjectSize: number;
  /**
   * The size of the objects a body of `length` bytes (undefined: not known in advance) is cut into: at most
   * maxObjectSize, and never more objects than maxObjectSize needs. A backend may cut a known length into equal
   * objects instead of full ones and a remainder (Swift: a tiny remainder would be a throttled SLO segment).
   */
  objectSize(length?: number): number;
  /**
   * Whether put and move report the md5 of what the backend stored (StoredObject.md5: Swift's ETag). Only then is
   * an md5 of each upload chunk worth computing: it is what those reports are checked against.
   */
  readonly reportsMd5: boolean;
  /**
   * Whether the backend records which registry request each storage call serves (Swift: X-Trans-Id-Extra). Only then
   * does the HTTP layer carry the request id across awaits, which costs every promise. Absent: false.
   */
  readonly namesRequests?: boolean;
  /**
   * Whether a create-only put or move (`ifAbsent`) is atomic: of several racing, exactly one succeeds. Swift: no (it
   * checks If-None-Match, it does not lock), so `createExclusive` reads back after racing creates have landed.
   */
  readonly atomicCreate: boolean;
  /**
   * Whether `concat` keeps the parts as the joined object's own storage (Swift: SLO segments, listed by `segments`),
   * rather than consuming them (the filesystem copies them into one file and deletes them).
   */
  readonly joinKeepsParts: boolean;
  /**
   * Whether `concat` joins parts from a directory other than the destination's (where an upload wrote them), so a
   * commit could skip moving them. All three backends can; the core still moves parts into the blob's directory.
   */
  readonly joinsPartsAnywhere: boolean;
  /** Whether deleting a joined object removes the parts it keeps (Swift's multipart delete does). */
  readonly deleteRemovesParts: boolean;
  /**
   * The smallest single object worth joining where it lies (as commit: link does) rather than moving to the joined
   * object's path: a join of one part may read slower than the part itself (Swift: a one-segment SLO costs each read
   * an extra request). Absent: 0.
   */
  readonly minJoinedSize?: number;
  /** Whether a listing made right after a write always includes it (Swift's container listings may lag). */
  readonly listingConsistent: boolean;

  /** Write body to path atomically: readers see the old object or the whole new one, never a part. */
  put(path: string, body: Readable | Buffer, opts?: PutOptions): Promise<StoredObject>;
  /**
   * Open path for reading, optionally a byte range (already validated against the size). Throws PathNotFound. The
   * body buffers about READ_CHUNK bytes ahead of a reader that stops: a paused download must not hold more.
   */
  get(path: string, range?: ByteRange): Promise<{ body: Readable; size: number }>;
  /** Read a small object whole (records, manifests, links). Throws PathNotFound. */
  read(path: string): Promise<Buffer>;
  /** Size and time of path, or null if absent. */
  stat(path: string): Promise<ObjectInfo | null>;
  /** Every object whose path starts with `prefix` + '/', recursively, in lexical path order. */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /** Delete one object. Deleting an absent object is not an error. */
  delete(path: string): Promise<void>;
  /**
   * Whether `deleteMany` removes many objects per backend request (Swift's bulk delete, when the cluster offers it);
   * otherwise it deletes them one by one, a few at a time.
   */
  readonly bulkDelete: boolean;
  /**
   * Delete every target as `delete` would (a join with the parts it keeps, where `deleteRemovesParts`), in no
   * particular order except that joins go before the rest; resolves with the targets that failed. Absent objects
   * are not failures. A target listed as not joined (`joined: false`) may be deleted as a plain object: a listing
   * that is stale on this point can leave a join's parts behind, never remove more than was asked.
   */
  deleteMany(targets: readonly DeleteTarget[]): Promise<DeleteFailure[]>;
  /** Requests sent to the backend so far, where the driver counts them (Swift). Optional. */
  requestCount?(): number;
  /**
   * Move src to dst (replacing dst, unless `ifAbsent`) and report what dst now holds. Throws PathNotFound if src
   * is absent.
   */
  move(src: string, dst: string, opts?: MoveOptions): Promise<StoredObject>;
  /**
   * Make dst read as the parts joined in order. The parts must sit in one directory, under dst's own unless the
   * driver declares `joinsPartsAnywhere`; they become owned by dst (a backend may keep them as segments, listed by
   * `segments`, or consume them). Before dst becomes visible each part is
   * checked against what is stored, as far as the backend can without re-reading data: Swift compares every
   * part's ETag with its md5 (ChecksumMismatch), the filesystem compares sizes (SizeMismatch).
   */
  concat(dst: string, parts: Part[]): Promise<StoredObject>;
  /**
   * A URL from which a client may GET the object directly for `seconds`, or null when the backend has none
   * configured (Swift temp URLs). Optional: backends without it never redirect.
   */
  signedUrl?(path: string, seconds: number): Promise<string | null>;
  /**
   * Integrity problems of a stored object that the backend can see without reading its data (Swift: each SLO
   * segment's ETag and size against the manifest's record). Optional; an empty list means none found.
   */
  verify?(path: string): Promise<string[]>;
  /**
   * The stored objects whose bytes `path` reads as its own (Swift: an SLO's segments and sub-manifests,
   * recursively), or [] when it holds its bytes itself. Optional: a backend without it never keeps parts.
   */
  segments?(path: string): Promise<string[]>;
  /**
   * Resolves when the backend can store: its root or container is there and reachable (throws StorageUnavailable
   * otherwise). A stat of some key would not do: on Swift it answers 404 whether the object or the container is gone.
   */
  ready(): Promise<void>;
  /**
   * Take the lock named `path` unless another holder's is live: null if it is. The driver keeps it live while held;
   * a holder that dies without releasing it loses it `ttlMs` later. Optional: a backend without it cannot lock
   * across processes (Swift has no compare-and-swap), and callers then serialize only within their own process.
   */
  tryLock?(path: string, ttlMs: number): Promise<Lock | null>;
  /** Free connections and timers. */
  close(): Promise<void>;
}

/** The object does not exist. */
export class PathNotFound extends Error {
  constructor(public readonly path: string) {
    super(`no such object: ${path}`);
    this.name = 'PathNotFound';
  }
}

/** A create-only put or move found an object already there (`existing`: what it saw, where the driver knows). */
export class AlreadyExists extends Error {
  constructor(
    public readonly path: string,
    public readonly existing?: ObjectInfo,
  ) {
    super(`object exists: ${path}`);
    this.name = 'AlreadyExists';
  }
}

/** Stored bytes do not match the checksum they were written or recorded with. */
export class ChecksumMismatch extends Error {
  constructor(
    public readonly path: string,
    public readonly expected: string,
    public readonly actual: string,
  ) {
    super(`checksum mismatch at ${path}: expected md5 ${expected}, storage reports ${actual}`);
    this.name = 'ChecksumMismatch';
  }
}

/** The body ended before or ran past the size it was declared with. */
export class SizeMismatch extends Error {
  constructor(
    public readonly path: string,
    public readonly expected: number,
    public readonly actual: number,
  ) {
    super(`size mismatch at ${path}: expected ${expected} bytes, got ${actual}`);
    this.name = 'SizeMismatch';
  }
}

/** The backend failed (network, permissions, 5xx). `retryable` says whether trying again may help. */
export class DriverError extends Error {
  constructor(
    message: string,
    public readonly retryable = false,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'DriverError';
  }
}

/** The backend cannot serve at all (its container or root is gone, its credentials are refused, it is unreachable). */
export class StorageUnavailable extends DriverError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, true, options);
    this.name = 'StorageUnavailable';
  }
}

/**
 * A write or move whose path leads through a symbolic link (filesystem): refused, so nothing outside the storage
 * root is ever changed. Reads, listings and deletes treat such a path as absent instead.
 */
export class UnsafePath extends DriverError {
  constructor(public readonly path: string) {
    super(`refused: ${path} leads through a symbolic link in the storage root`);
    this.name = 'UnsafePath';
  }
}
