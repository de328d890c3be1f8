/** The digest check on the way out (src/registry/verify.ts): what it passes, and what it holds for a reader that stops. */
import { createHash, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { DigestMismatch, verifying } from '../../src/registry/verify.js';
import { READ_CHUNK } from '../../src/storage/driver.js';

const digestOf = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
/** `data` as a stream of `piece`-byte pieces, counting what was taken from it. */
function source(data: Buffer, piece: number) {
  let taken = 0;
  const stream = new Readable({
    read() {
      if (taken >= data.length) return void this.push(null);
      const next = data.subarray(taken, taken + piece);
      taken += next.length;
      this.push(next);
    },
    highWaterMark: 1,
  });
  return { stream, taken: () => taken };
}

describe('verifying', () => {
  it('passes the bytes unchanged when they match, and fails before the last batch when they do not', async () => {
    const data = randomBytes(3 * READ_CHUNK + 1000);
    const out: Buffer[] = [];
    await pipeline(source(data, 65536).stream, verifying(digestOf(data)), new Writable({ write: (c, _e, done) => { out.push(c); done(); } }));
    expect(Buffer.concat(out).equals(data)).toBe(true);
    const received: Buffer[] = [];
    const wrong = pipeline(source(data, 65536).stream, verifying(digestOf(Buffer.from('other'))), new Writable({ write: (c, _e, done) => { received.push(c); done(); } }));
    await expect(wrong).rejects.toBeInstanceOf(DigestMismatch);
    expect(Buffer.concat(received).length).toBeLessThan(data.length);
  });

  it('takes at most a few READ_CHUNKs from storage for a reader that never reads', async () => {
    const data = randomBytes(64 * READ_CHUNK);
    for (const piece of [65536, READ_CHUNK]) {
      const src = source(data, piece);
      const checked = verifying(digestOf(data));
      src.stream.pipe(checked);
      // Nobody reads `checked`: wait until the source stops being drawn from.
      let before = -1;
      while (src.taken() !== before) {
        before = src.taken();
        await new Promise((r) => setTimeout(r, 50));
      }
      // One batch held back, one waiting for the reader, one piece being hashed, one in the pipe's buffer.
      expect(src.taken()).toBeLessThanOrEqual(4 * READ_CHUNK);
      checked.destroy();
      src.stream.destroy();
    }
  });
});
