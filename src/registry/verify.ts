/**
 * A blob's bytes checked against its digest while they stream out. The last piece is held back until the digest
 * is known: a mismatch ends the stream with an error before the final bytes, so a client never receives a clean,
 * complete response of wrong bytes.
 */
import { createHash } from 'node:crypto';
import { Transform } from 'node:stream';
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

/** Pieces are sent on in batches of about this size: one socket write per MiB costs far less than one per 64 KiB. */
const BATCH = 1 << 20;

export function verifying(digest: string): Transform {
  const algorithm = digestAlgorithm(digest);
  const hash = createHash(algorithm);
  let held: Buffer[] = [];
  let heldBytes = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      // The batch before this one goes out; this one is held until the next (or the digest) arrives.
      const out = heldBytes >= BATCH ? Buffer.concat(held, heldBytes) : undefined;
      if (out) {
        held = [];
        heldBytes = 0;
      }
      held.push(chunk);
      heldBytes += chunk.length;
      done(null, out);
    },
    flush(done) {
      const actual = `${algorithm}:${hash.digest('hex')}`;
      if (actual !== digest) return done(new DigestMismatch(digest, actual));
      done(null, heldBytes > 0 ? Buffer.concat(held, heldBytes) : undefined);
    },
  });
}
