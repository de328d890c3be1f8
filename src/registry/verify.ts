/**
 * A blob's bytes checked against its digest while they stream out. The last piece is held back until the digest
 * is known: a mismatch ends the stream with an error before the final bytes, so a client never receives a clean,
 * complete response of wrong bytes.
 */
import { createHash, type Hash } from 'node:crypto';
import { Transform } from 'node:stream';
import { digestAlgorithm } from './paths.js';
import { createBackgroundSha256 } from './sha256state.js';

export class DigestMismatch extends Error {
  constructor(
    readonly expected: string,
    readonly actual: string,
  ) {
    super(`stored bytes hash to ${actual}, not ${expected}`);
    this.name = 'DigestMismatch';
  }
}

/** Pieces are sent on in batches of about this size: one socket write per MiB costs far less than one per 64 KiB. */
const BATCH = 1 << 20;

export function verifying(digest: string): Transform {
  const algorithm = digestAlgorithm(digest);
  // SHA-256 runs on the thread pool (pieces by reference) while earlier batches go out; sha512 here.
  const hash = algorithm === 'sha256' ? createBackgroundSha256() : syncHash(createHash(algorithm));
  let held: Buffer[] = [];
  let heldBytes = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      const busy = hash.update(chunk);
      // The batch before this one goes out; this one is held until the next (or the digest) arrives.
      const out = heldBytes >= BATCH ? joined(held, heldBytes) : undefined;
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

function syncHash(hash: Hash) {
  return {
    update: (data: Uint8Array) => void hash.update(data),
    digestHex: async () => hash.digest('hex'),
  };
}
