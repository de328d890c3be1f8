/**
 * md5 off the request thread. Every chunk's md5 is checked against Swift's ETag, and md5 costs more CPU than the
 * SHA-256 of the digest (about 870 against 2000 MB/s here), so uploads hash it in a worker thread: the request
 * thread only copies the bytes into 1 MiB batches and moves them to the worker.
 */
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';

/** Runs in the worker: one md5 per job id, a reply per batch (flow control) and per finished job. */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const jobs = new Map();
parentPort.on('message', (m) => {
  let h = jobs.get(m.id);
  if (!h) { h = createHash('md5'); jobs.set(m.id, h); }
  if (m.data) { h.update(new Uint8Array(m.data, 0, m.length)); parentPort.postMessage({ id: m.id, ack: true, data: m.data }, [m.data]); }
  if (m.end) { jobs.delete(m.id); parentPort.postMessage({ id: m.id, md5: h.digest('hex') }); }
});
`;

const BATCH = 1 << 20;
/** Batches a job may have in flight before its writer waits: bounds memory at 16 MiB per upload. */
const MAX_IN_FLIGHT = 16;
/** Returned batches kept for reuse. */
const MAX_FREE = 64;

export interface Md5Job {
  /** Copies `data`; returns a promise only when the writer should wait for the worker. */
  update(data: Uint8Array): Promise<void> | undefined;
  digest(): Promise<string>;
  /** Forget the job (its upload failed). */
  cancel(): void;
}

interface Pending {
  inFlight: number;
  wake?: () => void;
  done?: (md5: string) => void;
}

export class Md5Pool {
  private readonly workers: Worker[] = [];
  private readonly jobs = new Map<number, Pending>();
  private readonly free: ArrayBuffer[] = [];
  private nextId = 1;
  private nextWorker = 0;

  constructor(size = 1) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true });
      w.on('message', (m: { id: number; ack?: boolean; md5?: string; data?: ArrayBuffer }) => {
        // Batches come back to be filled again: no allocation (and no garbage) per MiB.
        if (m.data && this.free.length < MAX_FREE) this.free.push(m.data);
        const job = this.jobs.get(m.id);
        if (!job) return;
        if (m.ack) {
          job.inFlight--;
          if (job.inFlight < MAX_IN_FLIGHT / 2 && job.wake) {
            const wake = job.wake;
            job.wake = undefined;
            wake();
          }
        }
        if (m.md5 !== undefined) {
          this.forget(m.id);
          job.done?.(m.md5);
        }
      });
      // Referenced only while jobs are pending (attaching the listener referenced it).
      w.unref();
      this.workers.push(w);
    }
  }

  start(): Md5Job {
    const id = this.nextId++;
    const worker = this.workers[this.nextWorker++ % this.workers.length];
    const pending: Pending = { inFlight: 0 };
    if (this.jobs.size === 0) for (const w of this.workers) w.ref();
    this.jobs.set(id, pending);
    const fresh = () => {
      const buffer = this.free.pop();
      return buffer ? Buffer.from(buffer) : Buffer.allocUnsafeSlow(BATCH);
    };
    let batch = fresh();
    let used = 0;
    const flush = () => {
      if (used === 0) return;
      pending.inFlight++;
      // The batch's memory moves to the worker; a fresh one takes its place.
      worker.postMessage({ id, data: batch.buffer, length: used }, [batch.buffer]);
      batch = fresh();
      used = 0;
    };
    return {
      update(data) {
        let at = 0;
        while (at < data.length) {
          const n = Math.min(BATCH - used, data.length - at);
          batch.set(data.subarray(at, at + n), used);
          used += n;
          at += n;
          if (used === BATCH) flush();
        }
        if (pending.inFlight < MAX_IN_FLIGHT) return undefined;
        return new Promise<void>((resolve) => (pending.wake = resolve));
      },
      digest() {
        flush();
        return new Promise<string>((resolve) => {
          pending.done = resolve;
          worker.postMessage({ id, end: true });
        });
      },
      cancel: () => {
        pending.done = undefined;
        pending.wake?.();
        worker.postMessage({ id, end: true });
        this.forget(id);
      },
    };
  }

  private forget(id: number): void {
    if (this.jobs.delete(id) && this.jobs.size === 0) for (const w of this.workers) w.unref();
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** The same interface on the calling thread, for small bodies where a round trip to the worker costs more. */
export function inlineMd5(): Md5Job {
  const h = createHash('md5');
  return {
    update(data) {
      h.update(data);
      return undefined;
    },
    digest: async () => h.digest('hex'),
    cancel() {},
  };
}
