/**
 * A blob's bytes checked against its digest while they stream out. The last piece is held back until the digest
 * is known: a mismatch ends the stream with an error before the final bytes, so a client never receives a clean,
 * complete response of wrong bytes.
 *
 * Memory (docs/security-network.md): pieces go out in batches of about READ_CHUNK (fewer, larger socket writes than
 * Swift's 64 KiB pieces), one batch held back and at most one waiting for the reader; the hash takes pieces by
 * reference, at most two READ_CHUNKs of them not yet hashed. Both sides push back: nothing more is taken while the
 * reader has a batch it did not take.
 */
import { createHash, type Hash } from 'node:crypto';
import { Transform } from 'node:stream';
import { READ_CHUNK } from '../storage/driver.js';
import { addon, HashKind, PooledHash } from './native-hash.js';
import { digestAlgorithm } from './paths.js';

export class DigestMismatch extends Error {
  constructor(
    readonly expected: string,
    readonly actual: string,
  ) {
    super(`stored bytes hash to ${actual}, not ${expected}`);
    this.name = 'DigestMismatch';
  }
}

export function verifying(digest: string): Transform {
  const algorithm = digestAlgorithm(digest);
  // SHA-256 runs on the thread pool while earlier batches go out; sha512 (and SHA-256 without the addon) here.
  const hash = algorithm === 'sha256' && addon ? pooledSha256() : syncHash(createHash(algorithm));
  let held: Buffer[] = [];
  let heldBytes = 0;
  return new Transform({
    // One byte: a single batch waiting on either side is already "full", so neither side queues a second one.
    writableHighWaterMark: 1,
    readableHighWaterMark: 1,
    transform(chunk: Buffer, _enc, done) {
      const busy = hash.update(chunk);
      // The batch before this piece goes out; this piece starts the one held until the next (or the digest) arrives.
      const out = heldBytes >= READ_CHUNK ? joined(held, heldBytes) : undefined;
      if (out) {
        held = [];
        heldBytes = 0;
      }
      held.push(chunk);
      heldBytes += chunk.length;
      if (busy) busy.then(() => done(null, out), done);
      else done(null, out);
    },
    flush(done) {
      hash.digestHex().then((hex) => {
        const actual = `${algorithm}:${hex}`;
        if (actual !== digest) return done(new DigestMismatch(digest, actual));
        done(null, heldBytes > 0 ? joined(held, heldBytes) : undefined);
      }, done);
    },
  });
}

const joined = (pieces: Buffer[], bytes: number) => (pieces.length === 1 ? pieces[0] : Buffer.concat(pieces, bytes));

interface PieceHash {
  /** Takes `data` by reference; returns a promise only when the caller should wait for the hash to catch up. */
  update(data: Uint8Array): Promise<void> | undefined;
  digestHex(): Promise<string>;
}

/** Jobs of a READ_CHUNK, not PooledHash's default MiB: every piece it holds is memory a paused reader keeps. */
function pooledSha256(): PieceHash {
  const ctx = addon!.init(HashKind.Sha256);
  const pooled = new PooledHash(HashKind.Sha256, ctx, READ_CHUNK, 2 * READ_CHUNK);
  return {
    update: (data) => pooled.update(data),
    digestHex: () => pooled.settled().then(() => addon!.final(ctx).toString('hex')),
  };
}

function syncHash(hash: Hash): PieceHash {
  return {
    update: (data) => void hash.update(data),
    digestHex: async () => hash.digest('hex'),
  };
}
