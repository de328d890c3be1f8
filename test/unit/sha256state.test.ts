import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createNobleSha256, createSha256, nativeSha256Available, parseSha256State } from '../../src/registry/sha256state.js';

const engines = { default: createSha256, noble: createNobleSha256 };

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
