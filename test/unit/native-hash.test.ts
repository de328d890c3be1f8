import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { addon, inlineMd5, keepFreedHeap, md5Job } from '../../src/registry/native-hash.js';
import { createBackgroundSha256, createSha256, parseSha256State } from '../../src/registry/sha256state.js';

const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('hashing on the thread pool', () => {
  if (process.env.BERTH_REQUIRE_NATIVE_SHA256 === '1') {
    it('uses the addon when the build requires it', () => expect(addon).not.toBeNull());
  }

  it('interleaved md5 and sha256 jobs fed in odd pieces give node:crypto digests, waiting when told to', async () => {
    const inputs = [randomBytes(0), randomBytes(1), randomBytes((1 << 20) - 1), randomBytes(40 << 20)];
    const md5s = inputs.map(() => md5Job());
    const shas = inputs.map(() => createBackgroundSha256());
    let waits = 0;
    // Far faster than a pool thread hashes: the 40 MiB input must ask its writer to wait at least once.
    for (let at = 0; at < 40 << 20; at += 77_777) {
      for (const [i, data] of inputs.entries()) {
        const piece = data.subarray(at, at + 77_777);
        for (const busy of [md5s[i].update(piece), shas[i].update(piece)]) {
          if (busy) {
            waits++;
            await busy;
          }
        }
      }
    }
    expect(await Promise.all(md5s.map((j) => j.digest()))).toEqual(inputs.map(md5));
    expect(await Promise.all(shas.map((j) => j.digestHex()))).toEqual(inputs.map(sha256));
    if (addon) expect(waits).toBeGreaterThan(0);
  });

  it('a background SHA-256 saves the same state as the synchronous engine and resumes from it', async () => {
    const data = randomBytes(3 * (1 << 20) + 123);
    for (const cut of [0, 1, 64, 1 << 20, (1 << 20) + 63, data.length]) {
      const background = createBackgroundSha256();
      background.update(data.subarray(0, cut));
      const sync = createSha256();
      sync.update(data.subarray(0, cut));
      const state = await background.state();
      expect(state).toEqual(sync.state());
      const resumed = createBackgroundSha256(parseSha256State(JSON.parse(JSON.stringify(state))));
      resumed.update(data.subarray(cut));
      expect(await resumed.digestHex()).toBe(sha256(data));
    }
  });

  it('reading a result settles queued pieces smaller than one pool job', async () => {
    const data = randomBytes(1000);
    const job = md5Job();
    job.update(data.subarray(0, 10));
    job.update(data.subarray(10));
    expect(await job.digest()).toBe(md5(data));
    const inline = inlineMd5();
    inline.update(data);
    expect(await inline.digest()).toBe(md5(data));
  });
});

describe('freed memory kept for reuse', () => {
  it('the addon sets glibc thresholds, unless GLIBC_TUNABLES sets them or BERTH_KEEP_FREED_HEAP=0', () => {
    const before = process.env.GLIBC_TUNABLES;
    try {
      delete process.env.GLIBC_TUNABLES;
      // Debian's glibc takes them; without the addon there is nothing to set them with.
      expect(keepFreedHeap()).toBe(addon !== null);
      process.env.GLIBC_TUNABLES = 'glibc.malloc.trim_threshold=1048576';
      expect(keepFreedHeap()).toBe(false);
      delete process.env.GLIBC_TUNABLES;
      process.env.BERTH_KEEP_FREED_HEAP = '0';
      expect(keepFreedHeap()).toBe(false);
    } finally {
      delete process.env.BERTH_KEEP_FREED_HEAP;
      if (before === undefined) delete process.env.GLIBC_TUNABLES;
      else process.env.GLIBC_TUNABLES = before;
    }
    if (addon) expect(() => addon!.keepFreed!(-1, 0)).toThrow(/non-negative/);
  });
});
