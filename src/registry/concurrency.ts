/** Bounded concurrency for work whose size a client chooses (the descriptors of a manifest). */

/**
 * Run `fn` on every item, at most `limit` at a time. The first failure stops new work from starting and is
 * what this rejects with; calls already running finish (their failures are ignored).
 */
export async function forEachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < items.length) {
      const item = items[next++];
      try {
        await fn(item);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
