/**
 * Prune's bound on its own storage requests: reads, stats and tombstones of every stage go through one Limiter, so
 * work that fans out (several repositories at once, each with many tags) never has more than PRUNE_REQUESTS in
 * flight. Prune is latency-bound on Swift (each request waits on a loaded cluster, not on prune's CPU): requests one
 * at a time left most of a run waiting. Deletions are bounded by the driver's `deleteMany` instead.
 */

/** Prune's own requests in flight at once (each small: a HEAD, a tombstone PUT, a manifest GET). */
export const PRUNE_REQUESTS = 32;
/** Listing entries read ahead (a Swift page; about 3 MB of entries at most). */
export const LISTING_AHEAD = 10_000;

/**
 * A listing read ahead of its consumer, up to `max` entries: the next page is requested while this one is worked on
 * (a page of 10,000 names takes a while on a loaded Swift, and the consumer's batches wait on requests too).
 */
export async function* readAhead<T>(source: AsyncIterable<T>, max: number): AsyncIterable<T> {
  const it = source[Symbol.asyncIterator]();
  let buffer: T[] = [];
  let head = 0;
  let finished = false;
  let stopped = false;
  let error: unknown;
  let wake: (() => void) | undefined;
  let space: (() => void) | undefined;
  const signal = () => {
    wake?.();
    wake = undefined;
  };
  const pump = (async () => {
    try {
      while (!stopped) {
        while (buffer.length - head >= max && !stopped) await new Promise<void>((r) => (space = r));
        if (stopped) break;
        const next = await it.next();
        if (next.done) break;
        buffer.push(next.value);
        signal();
      }
    } catch (err) {
      error = err;
    } finally {
      finished = true;
      signal();
    }
  })();
  try {
    for (;;) {
      if (head < buffer.length) {
        const value = buffer[head++];
        // Drop what was taken now and then, so the buffer never holds more than about `max` entries.
        if (head >= 1024 && head * 2 >= buffer.length) {
          buffer = buffer.slice(head);
          head = 0;
        }
        space?.();
        space = undefined;
        yield value;
        continue;
      }
      if (finished) {
        if (error !== undefined) throw error;
        return;
      }
      await new Promise<void>((r) => (wake = r));
    }
  } finally {
    // A consumer that stops early (a failure) stops the reading too.
    stopped = true;
    space?.();
    await pump;
    await it.return?.();
  }
}
