/** Bounded concurrency: work a few at a time, whatever its size (storage requests, prune's stages, a mirror's fills). */

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

/** At most `max` calls of `run` pending at once; the rest wait in order. */
export class Limiter {
  private active = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(readonly max: number) {}

  async run<T>(fn: () => Promise<T>): Promise<T> {
    await this.take();
    try {
      return await fn();
    } finally {
      this.give();
    }
  }

  /** Waits for a slot, held until `give` (for work that ends elsewhere than where it starts: a mirror's fill). */
  async take(): Promise<void> {
    // A released slot is handed to the next waiter as is (active stays counted), so none can jump the queue.
    if (this.active < this.max) this.active++;
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  /** Every slot is held: a `take` now would wait. */
  get full(): boolean {
    return this.active >= this.max;
  }

  give(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.active--;
  }
}

/**
 * Run `fn` on every item of `queue`, `limit` at a time, including items that calls of `fn` push meanwhile (a walk
 * that finds more work as it goes: an index's children). The first failure rejects; calls running finish.
 */
export async function drainLimited<T>(queue: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let running = 0;
  let failed = false;
  await new Promise<void>((resolve, reject) => {
    const pump = () => {
      while (!failed && running < limit && queue.length > 0) {
        const item = queue.pop()!;
        running++;
        fn(item).then(
          () => {
            running--;
            pump();
          },
          (err: unknown) => {
            failed = true;
            reject(err);
          },
        );
      }
      if (!failed && running === 0 && queue.length === 0) resolve();
    };
    pump();
  });
}
