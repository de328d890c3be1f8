import { describe, expect, it } from 'vitest';
import { forEachLimited } from '../../src/util/concurrency.js';

/** A task that waits for the test to release it, so the number running at once can be counted. */
function gate() {
  let running = 0;
  let peak = 0;
  const started: number[] = [];
  const waiting: (() => void)[] = [];
  const task = async (n: number) => {
    started.push(n);
    peak = Math.max(peak, ++running);
    await new Promise<void>((resolve) => waiting.push(resolve));
    running--;
    if (n < 0) throw new Error(`task ${n} failed`);
  };
  const releaseAll = async () => {
    while (waiting.length > 0) {
      waiting.splice(0).forEach((r) => r());
      await new Promise((r) => setImmediate(r));
    }
  };
  return { task, releaseAll, started, peak: () => peak };
}

describe('forEachLimited', () => {
  it('runs every item, never more than the limit at once', async () => {
    const g = gate();
    const done = forEachLimited(Array.from({ length: 50 }, (_, i) => i), 8, g.task);
    await new Promise((r) => setImmediate(r));
    expect(g.started).toHaveLength(8);
    await g.releaseAll();
    await done;
    expect(g.started.sort((a, b) => a - b)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(g.peak()).toBe(8);
  });

  it('starts nothing after the first failure, and rejects with it', async () => {
    const g = gate();
    const items = [1, 2, -3, 4, 5, 6, 7, 8, 9, 10];
    const outcome = forEachLimited(items, 2, g.task).then(() => null, (err: Error) => err.message);
    await g.releaseAll();
    expect(await outcome).toBe('task -3 failed');
    // -3 ran beside one other task; after it failed at most that other one finished, and nothing new began.
    expect(g.started.length).toBeLessThanOrEqual(4);
    expect(g.started).not.toContain(10);
  });

  it('an empty list resolves at once', async () => {
    await expect(forEachLimited([], 8, async () => {})).resolves.toBeUndefined();
  });
});
