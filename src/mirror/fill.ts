/**
 * One blob fill: the upstream's bytes, verified against the digest as they pass (the last batch is held until the
 * digest is known), written to storage and to every client that asked while the fill was young (its first
 * REPLAY_BYTES are kept in memory, so a client that comes a little late gets them replayed). Clients are
 * readers of the fill, not its owner: one that goes away is dropped and the fill goes on for the others and for
 * the cache; one that stops reading without going away is dropped after the stall timeout, so it cannot hold the
 * fill. Wrong bytes, an upstream failure or a blob over the size cap cut every client's stream and store nothing.
 */
import { PassThrough, Transform, type Readable } from 'node:stream';
import { verifying } from '../registry/verify.js';

/**
 * How much of a fill's start is kept for clients that join late. Concurrent pulls of one image reach a layer
 * milliseconds to a second apart; without it every one but the first waits for the whole fill, then reads the
 * cache (measured: 4 concurrent cold skopeo pulls of a 64 MiB layer on Swift took 2.4x one pull). Memory: this
 * much per running fill, at most max-fills of them per upstream.
 */
export const REPLAY_BYTES = 8 * 1024 * 1024;

export interface FillResult {
  /** Stored in the cache (false: prune was deleting it meanwhile, or storage failed; the clients still got it). */
  stored: boolean;
  bytes: number;
}

/** The size cap, counted as the bytes pass (a missing or lying Content-Length does not get past it). */
export class BlobTooLarge extends Error {
  constructor(readonly limit: number) {
    super(`the upstream blob is larger than max-blob-size (${limit} bytes)`);
    this.name = 'BlobTooLarge';
  }
}

export class Fill {
  private readonly readers = new Set<PassThrough>();
  private sent = 0;
  /** What went out so far, while it is at most REPLAY_BYTES (then dropped: later clients wait for the cache). */
  private history: Buffer[] | null = [];
  /** Resolves when the fill has ended: stored (or not), or failed (rejects). */
  readonly done: Promise<FillResult>;

  constructor(
    source: Readable,
    digest: string,
    opts: {
      maxBytes: number;
      stallMs: number;
      /** Writes the verified stream to storage; resolves to whether it is stored. */
      store: (body: Readable) => Promise<boolean>;
    },
  ) {
    const capped = cap(opts.maxBytes);
    source.on('error', (err) => capped.destroy(err));
    const verified = source.pipe(capped).pipe(verifying(digest));
    capped.on('error', (err) => verified.destroy(err));
    this.done = this.run(verified, opts.store, opts.stallMs);
    this.done.catch(() => {});
  }

  /** Whether a new client can still read the whole blob from this fill (what went out is still in memory). */
  get joinable(): boolean {
    return this.history !== null;
  }

  /** A stream of the blob for one more client, from its first byte; only while `joinable`. */
  reader(): Readable {
    const r = new PassThrough({ highWaterMark: 1 << 20 });
    for (const piece of this.history ?? []) r.write(piece);
    this.readers.add(r);
    r.once('close', () => this.readers.delete(r));
    return r;
  }

  private async run(verified: Readable, store: (body: Readable) => Promise<boolean>, stallMs: number): Promise<FillResult> {
    const toStorage = new PassThrough({ highWaterMark: 1 << 20 });
    const stored = store(toStorage);
    // A storage failure ends the cache's copy only: the clients still get their bytes.
    stored.catch(() => toStorage.destroy());
    let bytes = 0;
    try {
      for await (const chunk of verified as AsyncIterable<Buffer>) {
        bytes += chunk.length;
        this.sent += chunk.length;
        if (this.history && this.sent <= REPLAY_BYTES) this.history.push(chunk);
        else this.history = null;
        const waits: Promise<void>[] = [];
        if (!toStorage.destroyed && !toStorage.write(chunk)) waits.push(drained(toStorage, 0));
        for (const r of this.readers) if (!r.destroyed && !r.write(chunk)) waits.push(drained(r, stallMs));
        await Promise.all(waits);
      }
    } catch (err) {
      this.history = null;
      toStorage.destroy(err as Error);
      for (const r of this.readers) r.destroy(err as Error);
      throw err;
    }
    // No one joins an ended fill: later clients read the cache.
    this.history = null;
    toStorage.end();
    for (const r of this.readers) r.end();
    let ok = false;
    try {
      ok = await stored;
    } catch {
      ok = false;
    }
    return { stored: ok, bytes };
  }
}

/** Resolves when `s` drains or closes; a reader that neither reads nor closes within `stallMs` is cut off. */
function drained(s: PassThrough, stallMs: number): Promise<void> {
  return new Promise((resolve) => {
    if (s.destroyed) return resolve();
    const done = () => {
      clearTimeout(timer);
      s.off('drain', done);
      s.off('close', done);
      resolve();
    };
    const timer = stallMs > 0 ? setTimeout(() => (s.destroy(new Error('reader stalled')), done()), stallMs) : undefined;
    s.once('drain', done);
    s.once('close', done);
  });
}

function cap(limit: number): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      seen += chunk.length;
      if (seen > limit) return done(new BlobTooLarge(limit));
      done(null, chunk);
    },
  });
}
