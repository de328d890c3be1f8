/**
 * One blob fill: the upstream's bytes, hashed as they pass, written to a spool file (the last piece kept from the
 * readers until the digest is known), and read from that file by every client, each at its own pace, and by the
 * storage write once the blob is verified, at a quiet moment (see `run`). The upstream is read as fast as it sends and
 * the local disk takes it; a client is not held to the speed of a Swift PUT (the first design wrote to storage and
 * clients in lock-step, and measured cold pulls at 0.4-0.5x of Distribution's proxy, which streams upstream to
 * client and stores with a second GET), nor to another client's pace.
 *
 * The spool is unlinked as soon as it is opened: its disk space goes back when the last reader closes, and a
 * crash leaves nothing behind. Clients are readers of the fill, not its owner: one that goes away closes its reader
 * and the fill goes on; one that stops reading for the stall timeout is dropped. Wrong bytes, an upstream failure
 * or a blob over the size cap destroy every reader (clients' connections are cut before their last byte) and
 * nothing is stored (the storage write has not started).
 *
 * A reader that keeps up with the upstream takes its pieces from memory (the fill's last TAIL_BYTES received), not
 * back from the spool: a cold pull costs one copy in and one out, as a plain proxy's does, and only a reader that
 * falls behind (a slow client, a late one, the storage write) reads the file.
 *
 * Memory per fill, whatever the blob's size: the tail (TAIL_BYTES, 4 MiB, or the pieces not yet spooled if more:
 * at most SPOOL_QUEUE, 2 MiB, plus the batch being written), pieces queued for the hash (up to SPOOL_QUEUE), and per
 * reader (each client, and the storage write) READ_AHEAD (2 MiB) buffered plus one READ_PIECE being read: about
 * 8 MiB + 2.5 MiB per reader. Disk: the blob's size, for as long as it is read (at most max-fills spools per
 * upstream: a fill holds its slot until stored, and a fill waiting for a slot ends the others' wait for quiet).
 */
import { createHash, randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { addon, HashKind, PooledHash } from '../registry/native-hash.js';
import { digestAlgorithm } from '../registry/paths.js';
import { DigestMismatch } from '../registry/verify.js';

/** What a reader takes from the spool at once. */
export const READ_PIECE = 512 << 10;
/**
 * What a reader holds at most: several pieces, so it reads ahead while its client drains the last ones. With one
 * piece, each read's round trip through the thread pool (milliseconds on a busy host) stalled the client's socket.
 */
const READ_AHEAD = 4 * READ_PIECE;

export interface FillResult {
  /** Stored in the cache (false: prune was deleting it meanwhile, or storage failed; the clients still got it). */
  stored: boolean;
  bytes: number;
  /** Milliseconds until the upstream's last byte was verified and spooled (the rest of the fill is storage's). */
  fetchMs: number;
}

export interface FillOptions {
  /** Where the spool file is made (and at once unlinked). */
  spoolDir: string;
  maxBytes: number;
  /** A client that takes nothing for this long is dropped (0: never). */
  stallMs: number;
  /** How long the storage write waits at most, from the blob's verification, for a quiet moment (default STORE_DELAY_MS). */
  storeDelayMs?: number;
  /** The process's clients of every fill, shared (default: this fill's own clients only). */
  activity?: ReaderActivity;
  /** Writes the verified blob of `size` bytes to storage; resolves to whether it is stored. */
  store: (body: Readable, size: number) => Promise<boolean>;
}

/** The size cap, counted as the bytes pass (a missing or lying Content-Length does not get past it). */
export class BlobTooLarge extends Error {
  constructor(readonly limit: number) {
    super(`the upstream blob is larger than max-blob-size (${limit} bytes)`);
    this.name = 'BlobTooLarge';
  }
}

export class Fill {
  /** Bytes readers may take: all received but the last piece, until the digest is known. */
  private visible = 0;
  /** The last pieces received (from offset `tail[0].at` on), kept for readers that keep up; older ones are spooled. */
  private tail: { at: number; piece: Buffer }[] = [];
  private tailBytes = 0;
  /** The upstream's body ended and matched the digest: a reader at `visible` has the whole blob. */
  private ended = false;
  private failure: Error | null = null;
  /** The fill's own work is over (stored or not, or failed): clients that come now read the cache. */
  private finished = false;
  /** Open readers, and the fill itself while it runs: the spool is closed when none is left. */
  private refs = 1;
  private readonly readers = new Set<Readable>();
  private readonly progress = new EventEmitter().setMaxListeners(0);
  /** Resolves when the fill has ended: stored (or not), or failed (rejects). */
  readonly done: Promise<FillResult>;
  /** Resolves when the upstream's part is over (the blob verified and spooled, or the fill failed); never rejects. */
  readonly fetched: Promise<void>;
  private fetchOver!: () => void;
  private readonly stallMs: number;
  private readonly activity: ReaderActivity;

  private constructor(
    private readonly spool: FileHandle,
    source: Readable,
    digest: string,
    opts: FillOptions,
  ) {
    this.stallMs = opts.stallMs;
    this.activity = opts.activity ?? new ReaderActivity();
    this.fetched = new Promise((resolve) => (this.fetchOver = resolve));
    this.done = this.run(source, digest, opts);
    void this.done.catch(() => {}).finally(this.fetchOver);
  }

  /** Opens the spool (unlinked at once) and starts reading `source`; a failure to open destroys `source`. */
  static async start(source: Readable, digest: string, opts: FillOptions): Promise<Fill> {
    const path = join(opts.spoolDir, `berth-fill-${randomUUID()}`);
    let spool: FileHandle;
    try {
      spool = await open(path, 'wx+', 0o600);
      await unlink(path);
    } catch (err) {
      source.destroy();
      throw err;
    }
    return new Fill(spool, source, digest, opts);
  }

  /** Whether a new client can still read the blob from this fill. */
  get joinable(): boolean {
    return !this.finished && this.failure === null;
  }

  /** A stream of the blob for one more client, from its first byte; only while `joinable`. */
  reader(): Readable {
    return this.open(this.stallMs, true);
  }

  private open(stallMs: number, client: boolean): Readable {
    this.refs++;
    if (client) this.activity.opened();
    let pos = 0;
    let pumping = false;
    let stall: NodeJS.Timeout | undefined;
    const reader: Readable = new Readable({
      highWaterMark: READ_AHEAD,
      read: () => {
        clearTimeout(stall);
        void pump();
      },
      destroy: (err, cb) => {
        clearTimeout(stall);
        this.readers.delete(reader);
        if (client) this.activity.closed();
        this.release();
        cb(err);
      },
    });
    this.readers.add(reader);
    const pump = async () => {
      if (pumping) return;
      pumping = true;
      try {
        while (!reader.destroyed) {
          if (this.failure) return void reader.destroy(this.failure);
          const available = this.visible - pos;
          if (available === 0) {
            if (this.ended) return void reader.push(null);
            // Resumed after the poll phase, not at the first new piece: the pieces one socket read burst brings
            // are pushed in one go. (Joining them into one write cut the write calls by three quarters but not
            // the time, and cost a copy per reader: 8 concurrent pulls 15.4-16.1 s joined, 13.8-14.1 s not.)
            await new Promise((resolve) => this.progress.once('progress', () => setImmediate(resolve)));
            continue;
          }
          let piece = this.fromTail(pos);
          if (piece === null) {
            piece = Buffer.allocUnsafe(Math.min(available, READ_PIECE, this.tailStart - pos));
            const { bytesRead } = await this.spool.read(piece, 0, piece.length, pos);
            if (reader.destroyed) return;
            if (bytesRead === 0) throw new Error('the fill spool ended early');
            if (bytesRead < piece.length) piece = piece.subarray(0, bytesRead);
          }
          pos += piece.length;
          if (!reader.push(piece)) {
            // Full: the consumer must take something within stallMs, or it holds the spool for nothing.
            if (stallMs > 0) stall = setTimeout(() => reader.destroy(new Error('reader stalled')), stallMs);
            return;
          }
        }
      } catch (err) {
        reader.destroy(err as Error);
      } finally {
        pumping = false;
      }
    };
    return reader;
  }

  private release(): void {
    if (--this.refs > 0) return;
    this.tail = [];
    void this.spool.close().catch(() => {});
  }

  /** Where memory starts: bytes before it are only in the spool (always spooled: see `trimTail`). */
  private get tailStart(): number {
    return this.tail.length > 0 ? this.tail[0].at : this.visible;
  }

  /** The visible bytes from `pos` in the tail piece holding it (no copy), or null when `pos` is before the tail. */
  private fromTail(pos: number): Buffer | null {
    for (let i = this.tail.length - 1; i >= 0; i--) {
      const { at, piece } = this.tail[i];
      if (at > pos) continue;
      if (at + piece.length <= pos) return null;
      return piece.subarray(pos - at, Math.min(piece.length, this.visible - at));
    }
    return null;
  }

  /** Drops the oldest pieces past TAIL_BYTES, but never one not yet in the spool (readers behind read it there). */
  private trimTail(spooled: number): void {
    while (this.tail.length > 1 && this.tailBytes - this.tail[0].piece.length >= TAIL_BYTES && this.tail[0].at + this.tail[0].piece.length <= spooled) {
      this.tailBytes -= this.tail.shift()!.piece.length;
    }
  }

  /**
   * The upstream's pieces go to the tail, to the spool as they come (batched while a write is in flight) and to the
   * hash; the readers see all but the last piece received until the digest is known, so wrong bytes never reach a
   * client's last byte, and the storage write starts only after it.
   */
  private async run(source: Readable, digest: string, opts: FillOptions): Promise<FillResult> {
    const started = Date.now();
    const hash = blobHash(digest);
    let received = 0;
    let last = 0;
    let spooled = 0;
    let fetchMs = 0;
    let queue: Buffer[] = [];
    let queued = 0;
    let writing: Promise<void> | null = null;
    const flush = () => {
      const batch = queue;
      const at = spooled;
      queue = [];
      const size = queued;
      queued = 0;
      writing = writeAll(this.spool, batch, at).then(() => {
        spooled = at + size;
        this.trimTail(spooled);
        writing = null;
        if (queue.length > 0) flush();
      });
      // Awaited when the queue is full or at the end; until then a failed write must not count as unhandled.
      writing.catch(() => {});
    };
    try {
      for await (const piece of source as AsyncIterable<Buffer>) {
        if (piece.length === 0) continue;
        received += piece.length;
        last = piece.length;
        if (received > opts.maxBytes) throw new BlobTooLarge(opts.maxBytes);
        const hashing = hash.update(piece);
        this.tail.push({ at: received - piece.length, piece });
        this.tailBytes += piece.length;
        // The piece received last stays hidden until the digest is known (never shown unverified).
        this.visible = received - last;
        this.progress.emit('progress');
        queue.push(piece);
        queued += piece.length;
        if (!writing) flush();
        if (hashing) await hashing;
        while (queued >= SPOOL_QUEUE && writing) await writing;
      }
      while (writing) await writing;
      if (queue.length > 0) flush();
      while (writing) await writing;
      const actual = `${digest.slice(0, digest.indexOf(':'))}:${await hash.hex()}`;
      if (actual !== digest) throw new DigestMismatch(digest, actual);
      this.visible = received;
      this.ended = true;
      fetchMs = Date.now() - started;
      this.fetchOver();
      this.progress.emit('progress');
    } catch (err) {
      source.destroy();
      this.failure = err as Error;
      this.finished = true;
      this.progress.emit('progress');
      // Paused readers would not look again: cut them now.
      for (const r of [...this.readers]) r.destroy(err as Error);
      this.release();
      throw err;
    }
    // Storage is written from the spool once the blob is whole and verified, so it never sees wrong bytes (nothing
    // to abandon), and at a quiet moment: when no client of any fill in this process has read for STORE_SETTLE_MS
    // (or STORE_DELAY_MS after the verification at most). Its work (a Swift PUT: the HTTP and md5 here, Swift's own
    // CPU and disk on a shared host) then does not slow the pulls being served, nor a client's own work just after
    // its download (skopeo syncs the layer to disk and fetches the config: about 0.5 s for 512 MiB here). Clients
    // that come meanwhile read the spool.
    await this.activity.quiet(STORE_SETTLE_MS, Date.now() + (opts.storeDelayMs ?? STORE_DELAY_MS));
    const toStorage = this.open(0, false);
    const stored = opts.store(toStorage, received);
    // A storage failure ends the cache's copy only: the clients still get their bytes.
    stored.catch(() => toStorage.destroy());
    let ok = false;
    try {
      ok = await stored;
    } catch {
      ok = false;
    }
    this.finished = true;
    this.release();
    return { stored: ok, bytes: received, fetchMs };
  }
}

/** How long the storage write waits at most for a quiet moment before it starts anyway. */
export const STORE_DELAY_MS = 10_000;

/**
 * How long no client must have read before the storage write starts. Measured (scratch, 512 MiB layer on this
 * Swift, synced disk, two trials each): the PUT started at the layer's last byte made skopeo's cold pull 3.75-4.38 s,
 * started 6 s later 3.23-3.54 s.
 */
export const STORE_SETTLE_MS = 1_000;

/** Clients reading fills (every fill of a process shares one): storage writes wait for a quiet moment. */
export class ReaderActivity {
  private open = 0;
  private lastClosed = 0;
  /** Fills waiting for a slot (the spools of fills waiting to store may be what holds them). */
  private pressing = 0;
  private readonly changed = new EventEmitter().setMaxListeners(0);

  opened(): void {
    this.open++;
  }

  closed(): void {
    this.open--;
    this.lastClosed = Date.now();
    this.changed.emit('change');
  }

  /** A fill waits for a slot: no storage write waits for quiet until the returned function is called. */
  press(): () => void {
    this.pressing++;
    this.changed.emit('change');
    return () => void this.pressing--;
  }

  /** Resolves once no client has read for `settleMs`, or at `deadline` (ms since the epoch), or while pressed. */
  async quiet(settleMs: number, deadline: number): Promise<void> {
    for (let now = Date.now(); now < deadline && this.pressing === 0; now = Date.now()) {
      const wait = this.open > 0 ? deadline - now : this.lastClosed + settleMs - now;
      if (wait <= 0) return;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.changed.off('change', done);
          resolve();
        };
        const timer = setTimeout(done, Math.min(wait, deadline - now));
        this.changed.on('change', done);
      });
    }
  }
}

/** The upstream's latest bytes kept in memory for the readers that keep up (see the top of this file). */
const TAIL_BYTES = 4 << 20;

/** Bytes of upstream pieces waiting for the spool write in flight before the upstream is no longer read. */
const SPOOL_QUEUE = 2 << 20;

async function writeAll(file: FileHandle, pieces: Buffer[], position: number): Promise<void> {
  let { bytesWritten } = await file.writev(pieces, position);
  // A short write (rare on a regular file): the rest piece by piece.
  for (const piece of pieces) {
    if (bytesWritten >= piece.length) {
      bytesWritten -= piece.length;
      position += piece.length;
      continue;
    }
    let done = bytesWritten;
    bytesWritten = 0;
    while (done < piece.length) {
      const w = await file.write(piece, done, piece.length - done, position + done);
      done += w.bytesWritten;
    }
    position += piece.length;
  }
}

interface BlobHash {
  /** Takes `piece` by reference; returns a promise only when the caller should wait for the hash to catch up. */
  update(piece: Buffer): Promise<void> | undefined;
  hex(): Promise<string>;
}

/** SHA-256 on the thread pool (beside the event loop) where the addon is there, else on this thread. */
function blobHash(digest: string): BlobHash {
  const algorithm = digestAlgorithm(digest);
  if (algorithm === 'sha256' && addon) {
    const ctx = addon.init(HashKind.Sha256);
    // Small bounds: every piece queued is memory held (the same pieces the spool queue holds).
    const pooled = new PooledHash(HashKind.Sha256, ctx, 1 << 20, SPOOL_QUEUE);
    return { update: (p) => pooled.update(p), hex: () => pooled.settled().then(() => addon!.final(ctx).toString('hex')) };
  }
  const h = createHash(algorithm);
  return { update: (p) => void h.update(p), hex: async () => h.digest('hex') };
}
