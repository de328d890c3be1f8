import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createNobleSha256, createSha256, nativeSha256Available, parseSha256State } from '../../src/registry/sha256state.js';

const engines = { default: createSha256, noble: createNobleSha256 };

/** mulberry32: a small seeded PRNG, so that a failing case replays from its seed. */
function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('resumable sha256', () => {
  if (process.env.BERTH_REQUIRE_NATIVE_SHA256 === '1') {
    it('uses the native OpenSSL engine when the build requires it', () => expect(nativeSha256Available).toBe(true));
  }

  for (const [name, create] of Object.entries(engines)) {
    it(`${name}: saving and resuming at random points gives the same digest as node:crypto`, () => {
      for (let trial = 0; trial < 40; trial++) {
        const data = randomBytes(1 + Math.floor(Math.random() * 5000));
        let h = create();
        let at = 0;
        while (at < data.length) {
          const n = Math.min(data.length - at, Math.floor(Math.random() * 300));
          h.update(data.subarray(at, at + n));
          at += n;
          // round-trip the state through JSON, as the UploadRecord does
          h = create(parseSha256State(JSON.parse(JSON.stringify(h.state()))));
        }
        expect(h.state().bytes).toBe(data.length);
        expect(h.digestHex()).toBe(createHash('sha256').update(data).digest('hex'));
      }
    });
  }

  it('the native and noble engines write identical states', () => {
    const data = randomBytes(777);
    const a = createSha256();
    const b = createNobleSha256();
    a.update(data);
    b.update(data);
    expect(a.state()).toEqual(b.state());
    expect(createNobleSha256(a.state()).digestHex()).toBe(createHash('sha256').update(data).digest('hex'));
  });

  // Without the addon createSha256 is noble too, and this runs noble against itself; the build that requires the
  // addon (BERTH_REQUIRE_NATIVE_SHA256=1) makes sure the native engine is the one under test.
  it('a state saved by either engine resumes on the other at random points (seeded) with identical states and node:crypto\'s digest', () => {
    const other = { native: 'noble', noble: 'native' } as const;
    const create = { native: createSha256, noble: createNobleSha256 };
    for (let seed = 1; seed <= 60; seed++) {
      const random = seededRandom(seed);
      // Mostly short inputs, where every split lands near a block edge; some of several hundred blocks.
      const length = seed % 6 === 0 ? 20_000 + Math.floor(random() * 50_000) : 1 + Math.floor(random() * 3000);
      const data = Buffer.alloc(length);
      for (let i = 0; i < length; i++) data[i] = Math.floor(random() * 256);
      const maxPiece = length > 10_000 ? 9000 : 200;
      let engine: 'native' | 'noble' = seed % 2 === 0 ? 'native' : 'noble';
      let h = create[engine]();
      let at = 0;
      const splits: number[] = [];
      while (at < length) {
        const n = Math.min(length - at, Math.floor(random() * maxPiece));
        h.update(data.subarray(at, at + n));
        at += n;
        splits.push(at);
        // Saved as the UploadRecord saves it, then resumed by the other engine and, for comparison, the same one.
        const saved = parseSha256State(JSON.parse(JSON.stringify(h.state())));
        const next = other[engine];
        const resumed = create[next](saved);
        const same = create[engine](saved);
        const piece = data.subarray(at, at + Math.min(length - at, 64));
        resumed.update(piece);
        same.update(piece);
        expect(resumed.state(), `seed ${seed}, ${engine} -> ${next} after ${splits.join(',')}`).toEqual(same.state());
        h = create[next](saved);
        engine = next;
      }
      const final = h.state();
      expect(final.bytes).toBe(length);
      const expected = createHash('sha256').update(data).digest('hex');
      for (const e of ['native', 'noble'] as const) expect(create[e](final).digestHex(), `seed ${seed}, ${e}, splits ${splits.join(',')}`).toBe(expected);
    }
  });

  it('digestHex does not end the hash: more data can follow', () => {
    const h = createSha256();
    h.update(Buffer.from('abc'));
    h.digestHex();
    h.update(Buffer.from('def'));
    expect(h.digestHex()).toBe(createHash('sha256').update('abcdef').digest('hex'));
  });

  it('rejects malformed saved states', () => {
    expect(() => parseSha256State({ v: 2 })).toThrow();
    expect(() => parseSha256State({ v: 1, h: 'zz', bytes: 0, tail: '' })).toThrow();
    expect(() => parseSha256State({ ...createSha256().state(), bytes: 3, tail: '' })).toThrow();
    expect(() => parseSha256State({ ...createSha256().state(), bytes: -1 })).toThrow();
  });
});
