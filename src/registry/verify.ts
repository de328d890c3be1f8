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

export function verifying(digest: string): Transform {
  const algorithm = digestAlgorithm(digest);
  const hash = createHash(algorithm);
  let held: Buffer | null = null;
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      const out = held;
      held = chunk;
      done(null, out ?? undefined);
    },
    flush(done) {
      const actual = `${algorithm}:${hash.digest('hex')}`;
      if (actual !== digest) return done(new DigestMismatch(digest, actual));
      done(null, held ?? undefined);
    },
  });
}
