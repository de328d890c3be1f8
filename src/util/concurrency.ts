/** Bounded concurrency: storage requests a few at a time, whatever the size of the work. */

/**
 * Run `fn` on every item, at most `limit` at a time. Items are taken as workers free up, so a streamed listing is
 * never held whole. The first failure stops new work from starting and is what this rejects with; calls already
 * running finish (their failures are ignored).
 */
export async function forEachLimited<T>(items: Iterable<T> | AsyncIterable<T>, limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  const async = Symbol.asyncIterator in items;
  const source = async ? (items as AsyncIterable<T>)[Symbol.asyncIterator]() : (items as Iterable<T>)[Symbol.iterator]();
  let failed = false;
  const worker = async () => {
    while (!failed) {
      // An array's items start at once, as the call is made; a listing's as its pages arrive.
      const next = async ? await source.next() : (source as Iterator<T>).next();
      if (next.done) return;
      try {
        await fn(next.value);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, limit) }, worker));
}
