import { createHash, randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { Md5Pool } from '../../src/registry/md5-pool.js';

const pool = new Md5Pool(2);
afterAll(() => pool.close());
const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');

describe('md5 on worker threads', () => {
  it('gives node:crypto md5s for interleaved jobs fed in odd pieces, waiting when the worker is behind', async () => {
    const inputs = [randomBytes(0), randomBytes(1), randomBytes((1 << 20) - 1), randomBytes(40 << 20)];
    const jobs = inputs.map(() => pool.start());
    for (let at = 0; at < 40 << 20; at += 77_777) {
      for (const [i, data] of inputs.entries()) {
        const wait = jobs[i].update(data.subarray(at, at + 77_777));
        if (wait) await wait;
      }
    }
    expect(await Promise.all(jobs.map((j) => j.digest()))).toEqual(inputs.map(md5));
  });

  it('a cancelled job does not disturb the others', async () => {
    const a = pool.start();
    const b = pool.start();
    const data = randomBytes(3 << 20);
    a.update(data);
    b.update(data);
    a.cancel();
    expect(await b.digest()).toBe(md5(data));
  });
});
