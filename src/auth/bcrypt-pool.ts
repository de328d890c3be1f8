/**
 * bcrypt comparisons on a few dedicated worker threads. bcryptjs is pure JavaScript: in the server's thread one
 * cost-12 check takes its CPU for about 0.4 s, so a flood of bad passwords slowed every request. libuv's default
 * pool is no place for it either: the SHA-256 addon and file I/O share its four threads, and uploads would queue
 * behind logins.
 *
 * Waiting checks are shared out by client prefix (IPv4 /24, IPv6 /56: what one attacker gets cheaply), so no
 * address and no prefix can fill the queue (login-queue.ts). The next check is the one whose prefix has the fewest
 * failed logins (and checks running), then whose address has the fewest failures outstanding (the caller's priority),
 * then the oldest: a clean client's login overtakes a queue of guesses from anywhere else.
 */
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { LoginQueue, type Source } from './login-queue.js';

// An eval'd script rather than a file: the same code runs from dist/ and from the TypeScript sources under test.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const bcrypt = require(workerData.bcryptjs);
parentPort.on('message', ({ password, hash }) => {
  try {
    parentPort.postMessage({ match: bcrypt.compareSync(password, hash) });
  } catch (err) {
    parentPort.postMessage({ error: String((err && err.message) || err) });
  }
});
`;
const BCRYPTJS = createRequire(import.meta.url).resolve('bcryptjs');

export interface PoolOptions {
  /** Worker threads (default: one per core beyond the first, at most 2, at least 1). */
  size?: number;
  /** Checks allowed to wait; more are refused with PoolBusy (default 1024). */
  maxWaiting?: number;
  /** The clock prefixes' failures decay by (tests hold it still, so equal failures stay equal). */
  now?: () => number;
}

/** Too many checks already waiting: the caller answers "try again" instead of queueing without end. */
export class PoolBusy extends Error {
  constructor() {
    super('too many password checks waiting');
  }
}

interface Job {
  password: string;
  hash: string;
  priority: number;
  seq: number;
  source: Source;
  resolve: (match: boolean) => void;
  reject: (err: Error) => void;
}

interface Slot {
  worker: Worker;
  job?: Job;
}

export class BcryptPool {
  private readonly size: number;
  private readonly maxWaiting: number;
  private readonly slots: Slot[] = [];
  private readonly waiting: Job[] = [];
  private readonly queue: LoginQueue;
  private seq = 0;
  private closed = false;

  constructor(opts: PoolOptions = {}) {
    this.size = Math.max(1, opts.size ?? Math.min(2, availableParallelism() - 1));
    this.maxWaiting = opts.maxWaiting ?? 1024;
    this.queue = new LoginQueue(this.maxWaiting, opts.now);
  }

  /** A check from `address` failed: its prefix's later checks wait behind other prefixes' (and go first when full). */
  failed(address: string | undefined): void {
    this.queue.failed(address);
  }

  /** Threads running now (they start on first use). */
  get threads(): number {
    return this.slots.length;
  }

  /**
   * Does `password` match the bcrypt `hash`? Rejects with PoolBusy when the queue has no room for this client (its
   * address's or prefix's share is taken, or the queue is full of checks from prefixes with fewer failures), and with
   * the signal's reason when it aborts before a worker takes the check (a client that went away costs nothing more).
   * `priority`: failures the client's address has outstanding; `address`: the client's, for its share of the queue.
   */
  compare(password: string, hash: string, priority = 0, signal?: AbortSignal, address?: string): Promise<boolean> {
    if (this.closed) return Promise.reject(new Error('bcrypt pool closed'));
    if (signal?.aborted) return Promise.reject(signal.reason);
    const source = this.queue.sourceOf(address);
    if (!this.queue.hasShare(source)) return Promise.reject(new PoolBusy());
    if (this.waiting.length >= this.maxWaiting && !this.dropWorst(source)) return Promise.reject(new PoolBusy());
    return new Promise((resolve, reject) => {
      const job: Job = { password, hash, priority, seq: this.seq++, source, resolve, reject };
      if (signal) {
        const abandon = () => {
          if (this.remove(job)) reject(signal.reason);
        };
        signal.addEventListener('abort', abandon, { once: true });
        job.resolve = (match) => {
          signal.removeEventListener('abort', abandon);
          resolve(match);
        };
      }
      this.waiting.push(job);
      this.queue.enqueued(source);
      this.dispatch();
    });
  }

  /** Make room by refusing the last-served check of the prefix with the most failures, unless that is `source`'s own. */
  private dropWorst(source: Source): boolean {
    const worst = this.queue.worstPrefix(this.waiting.map((j) => j.source));
    if (worst === undefined || !this.queue.worse(worst, source.prefix)) return false;
    let last: Job | undefined;
    for (const j of this.waiting) {
      if (j.source.prefix === worst && (!last || j.priority > last.priority || (j.priority === last.priority && j.seq > last.seq))) last = j;
    }
    if (!last || !this.remove(last)) return false;
    last.reject(new PoolBusy());
    return true;
  }

  private remove(job: Job): boolean {
    const at = this.waiting.indexOf(job);
    if (at < 0) return false;
    this.waiting.splice(at, 1);
    this.queue.left(job.source);
    return true;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const job of this.waiting.splice(0)) {
      this.queue.left(job.source);
      job.reject(new Error('bcrypt pool closed'));
    }
    await Promise.all(this.slots.splice(0).map((s) => s.worker.terminate()));
  }

  private dispatch(): void {
    while (this.waiting.length > 0) {
      const slot = this.slots.find((s) => !s.job) ?? (this.slots.length < this.size ? this.start() : undefined);
      if (!slot) return;
      let best = 0;
      let bestLoad = this.queue.load(this.waiting[0].source.prefix);
      for (let i = 1; i < this.waiting.length; i++) {
        const j = this.waiting[i];
        const b = this.waiting[best];
        const load = this.queue.load(j.source.prefix);
        if (load < bestLoad || (load === bestLoad && (j.priority < b.priority || (j.priority === b.priority && j.seq < b.seq)))) {
          best = i;
          bestLoad = load;
        }
      }
      const job = this.waiting.splice(best, 1)[0];
      this.queue.left(job.source);
      this.queue.started(job.source);
      slot.job = job;
      // Referenced only while working: an idle pool never keeps the process alive.
      slot.worker.ref();
      slot.worker.postMessage({ password: job.password, hash: job.hash });
    }
  }

  private start(): Slot {
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { bcryptjs: BCRYPTJS } });
    const slot: Slot = { worker };
    worker.unref();
    worker.on('message', (m: { match?: boolean; error?: string }) => {
      const job = slot.job;
      slot.job = undefined;
      worker.unref();
      if (job) this.queue.finished(job.source);
      if (job) {
        if (m.error !== undefined) job.reject(new Error(m.error));
        else job.resolve(m.match === true);
      }
      this.dispatch();
    });
    // A dead worker fails its check and leaves the pool; the next check starts a fresh one.
    const lost = (err: Error) => {
      const at = this.slots.indexOf(slot);
      if (at < 0) return;
      this.slots.splice(at, 1);
      if (slot.job) this.queue.finished(slot.job.source);
      slot.job?.reject(err);
      slot.job = undefined;
      if (!this.closed) this.dispatch();
    };
    worker.on('error', lost);
    worker.on('exit', (code) => lost(new Error(`bcrypt worker exited with code ${code}`)));
    this.slots.push(slot);
    return slot;
  }
}

let shared: BcryptPool | undefined;
/** The process's pool, for every Users that was not given one. */
export function sharedBcryptPool(): BcryptPool {
  return (shared ??= new BcryptPool());
}
