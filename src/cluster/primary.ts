/**
 * `workers: N` (N > 1): this process forks N workers that share the listening socket (each accepts from it),
 * restarts a worker that dies, and on SIGTERM drains them all. It serves no
 * request itself: it holds what the workers must share (upload locks, failed-login buckets, the login cache) and
 * merges their metrics for a scrape answered by any of them.
 */
import cluster, { type Worker } from 'node:cluster';
import type { Logger } from 'pino';
import { Counter, Gauge, Registry } from 'prom-client';
import { aggregate, type MetricsJson } from '../observability/metrics.js';
import { Channel, sender } from './ipc.js';
import { LockTable } from './lock-table.js';
import { SharedLogins } from './logins.js';

export interface PrimaryOptions {
  workers: number;
  log: Logger;
  /** How long a draining worker may take (its own grace, then its registry closing) before it is killed. */
  drainMs: number;
}

/** A worker that lived this long before it died restarts at once; quicker deaths in a row back off. */
const HEALTHY_MS = 30_000;
const FIRST_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 30_000;

interface Slot {
  /** 1..N: the `worker` label of per-worker metrics, taken over by a replacement. */
  slot: number;
  worker?: Worker;
  channel?: Channel;
  listening: boolean;
  startedAt: number;
  /** Deaths in a row, each within HEALTHY_MS of its start. */
  failures: number;
  restart?: NodeJS.Timeout;
}

export function runPrimary(o: PrimaryOptions): Promise<number> {
  const { log } = o;
  const locks = new LockTable();
  const logins = new SharedLogins();
  const sweep = setInterval(() => locks.sweep(), 60_000).unref();
  const own = new Registry();
  const running = new Gauge({ name: 'berth_workers', help: 'Worker processes serving requests (workers: N)', registers: [own] });
  const restarts = new Counter({ name: 'berth_worker_restarts_total', help: 'Workers that died and were started again', registers: [own] });
  const slots: Slot[] = Array.from({ length: o.workers }, (_, i) => ({ slot: i + 1, listening: false, startedAt: 0, failures: 0 }));
  let stopping = false;
  let announced = false;
  let exitCode = 0;
  let finish!: (code: number) => void;
  const done = new Promise<number>((resolve) => (finish = resolve));

  async function hostMetrics(): Promise<string> {
    const live = slots.filter((s) => s.worker && s.listening);
    running.set(live.length);
    // A worker that does not answer in time (busy, or dying) is left out of this scrape rather than failing it.
    const answers = await Promise.allSettled(live.map(async (s) => ({ slot: s.slot, metrics: await s.channel!.call<MetricsJson>('metrics.json', null, 3000) })));
    const merged = aggregate(answers.flatMap((a) => (a.status === 'fulfilled' ? [a.value] : [])));
    return (await merged.metrics()) + (await own.metrics());
  }

  function fork(s: Slot): void {
    const worker = cluster.fork({ BERTH_WORKER: String(s.slot) });
    const owner = worker.id;
    const channel = new Channel(sender(worker), { ...locks.handlers(owner), ...logins.handlers(owner), metrics: hostMetrics });
    Object.assign(s, { worker, channel, listening: false, startedAt: Date.now() });
    worker.on('message', (m) => channel.receive(m));
    worker.on('listening', (address) => {
      s.listening = true;
      if (announced || !slots.every((x) => x.listening)) return;
      announced = true;
      log.info({ workers: o.workers, port: address.port }, 'berth listening with workers');
      // Test harnesses read the port from this line when the config asks for port 0 (the workers do not print it).
      process.stdout.write(`berth listening on port ${address.port}\n`);
    });
    worker.on('exit', (code, signal) => {
      channel.close();
      locks.dropOwner(owner);
      logins.dropOwner(owner);
      s.worker = s.channel = undefined;
      s.listening = false;
      if (stopping) {
        if (slots.every((x) => !x.worker)) finish(exitCode);
        return;
      }
      if (!announced) {
        // Not every worker has started yet: a configuration or storage problem that restarting will not fix.
        log.error({ worker: s.slot, pid: worker.process.pid, code, signal }, 'a worker failed to start; stopping');
        exitCode = code || 1;
        stop('worker start-up failure');
        return;
      }
      s.failures = Date.now() - s.startedAt >= HEALTHY_MS ? 1 : s.failures + 1;
      const delay = s.failures <= 1 ? 0 : Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** (s.failures - 2));
      restarts.inc();
      log.error({ worker: s.slot, pid: worker.process.pid, code, signal, restartInMs: delay }, 'worker exited; starting another');
      s.restart = setTimeout(() => {
        s.restart = undefined;
        if (!stopping) fork(s);
      }, delay);
    });
  }

  function stop(reason: string): void {
    // A second signal while draining changes nothing (the default action would kill uploads in flight).
    if (stopping) return void log.info({ signal: reason }, 'already shutting down');
    stopping = true;
    clearInterval(sweep);
    log.info({ signal: reason }, 'shutting down workers');
    for (const s of slots) {
      clearTimeout(s.restart);
      // Each worker drains as a single process does on SIGTERM: no new connections, requests in flight finish.
      s.worker?.process.kill('SIGTERM');
    }
    if (slots.every((x) => !x.worker)) return finish(exitCode);
    setTimeout(() => {
      for (const s of slots) {
        if (!s.worker) continue;
        log.error({ worker: s.slot, pid: s.worker.process.pid }, 'worker still draining after the grace period; killed');
        exitCode = 1;
        s.worker.process.kill('SIGKILL');
      }
    }, o.drainMs).unref();
  }

  // Each worker accepts from the shared socket itself. With Node's round robin the primary accepts and hands each
  // connection over, and one handed to a worker that has just died is leaked and hangs until the client gives up
  // (tried: one connection per SIGKILLed worker, 5 kills in 5); the kernel spreads connections well enough here
  // (docs/performance.md, "Workers").
  cluster.schedulingPolicy = cluster.SCHED_NONE;
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  log.info({ workers: o.workers }, 'starting workers');
  for (const s of slots) fork(s);
  return done;
}
