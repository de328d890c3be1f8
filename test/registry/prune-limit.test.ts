import { describe, expect, it } from 'vitest';
import { readAhead } from '../../src/registry/prune-limit.js';
import { Limiter, drainLimited } from '../../src/util/concurrency.js';

const tick = () => new Promise((r) => setImmediate(r));

/** Calls that wait for the test to release them, so the number running at once can be counted. */
function gate() {
  let running = 0;
  let peak = 0;
  const waiting: (() => void)[] = [];
  const call = async () => {
    peak = Math.max(peak, ++running);
    await new Promise<void>((resolve) => waiting.push(resolve));
    running--;
  };
  const releaseAll = async () => {
    while (waiting.length > 0) {
      waiting.splice(0).forEach((r) => r());
      await tick();
    }
  };
  return { call, releaseAll, running: () => running, peak: () => peak };
}

describe('Limiter', () => {
  it('never runs more than its bound, however many callers fan out, and runs them all', async () => {
    const g = gate();
    const limit = new Limiter(5);
    const all = Promise.all(Array.from({ length: 40 }, () => limit.run(g.call)));
    await tick();
    expect(g.running()).toBe(5);
    await g.releaseAll();
    await all;
    expect(g.peak()).toBe(5);
  });

  it('frees the slot of a call that fails', async () => {
    const limit = new Limiter(1);
    await expect(limit.run(async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    await expect(limit.run(async () => 7)).resolves.toBe(7);
  });
});

describe('drainLimited', () => {
  it('takes the items that calls push meanwhile (an index whose children join the walk)', async () => {
    const seen: string[] = [];
    const queue = ['index'];
    await drainLimited(queue, 4, async (item) => {
      await tick();
      seen.push(item);
      if (item === 'index') queue.push('child-a', 'child-b');
      if (item === 'child-a') queue.push('grandchild');
    });
    expect(seen.sort()).toEqual(['child-a', 'child-b', 'grandchild', 'index']);
  });

  it('keeps to its bound', async () => {
    const g = gate();
    const done = drainLimited(Array.from({ length: 30 }, (_, i) => i), 6, g.call);
    await tick();
    expect(g.running()).toBe(6);
    await g.releaseAll();
    await done;
    expect(g.peak()).toBe(6);
  });

  it('rejects with the first failure and starts nothing after it', async () => {
    let started = 0;
    const queue = Array.from({ length: 20 }, (_, i) => i);
    const outcome = drainLimited(queue, 2, async (i) => {
      started++;
      await tick();
      if (i === 19) throw new Error('read failed');
    });
    await expect(outcome).rejects.toThrow('read failed');
    await tick();
    expect(started).toBeLessThanOrEqual(3);
  });

  it('resolves at once on an empty queue', async () => {
    await expect(drainLimited([], 4, async () => {})).resolves.toBeUndefined();
  });
});

describe('readAhead', () => {
  async function* source(n: number, pulled: { count: number }, failAt?: number) {
    for (let i = 0; i < n; i++) {
      await tick();
      if (i === failAt) throw new Error('listing failed');
      pulled.count++;
      yield i;
    }
  }

  it('yields every entry in order, and reads ahead of a slow consumer by at most its bound', async () => {
    const pulled = { count: 0 };
    const out: number[] = [];
    let ahead = 0;
    for await (const v of readAhead(source(3000, pulled), 100)) {
      if (v === 0) for (let i = 0; i < 300; i++) await tick();
      ahead = Math.max(ahead, pulled.count - out.length);
      out.push(v);
    }
    expect(out).toEqual(Array.from({ length: 3000 }, (_, i) => i));
    expect(ahead).toBeGreaterThan(50);
    expect(ahead).toBeLessThanOrEqual(101);
  });

  it('passes a failure of the listing on, after the entries before it', async () => {
    const out: number[] = [];
    const walk = async () => {
      for await (const v of readAhead(source(10, { count: 0 }, 5), 100)) out.push(v);
    };
    await expect(walk()).rejects.toThrow('listing failed');
    expect(out).toEqual([0, 1, 2, 3, 4]);
  });

  it('stops reading when the consumer stops', async () => {
    const pulled = { count: 0 };
    for await (const v of readAhead(source(1000, pulled), 10)) if (v === 3) break;
    const at = pulled.count;
    for (let i = 0; i < 20; i++) await tick();
    expect(pulled.count).toBe(at);
    expect(at).toBeLessThanOrEqual(15);
  });
});
