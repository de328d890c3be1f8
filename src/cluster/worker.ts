/**
 * A worker's side of `workers: N`: the clients of what the primary holds for the host (upload locks, failed-login
 * buckets, the login cache) and the answer to the primary's metrics requests. Called only in a cluster worker, so
 * a single process (`workers: 1`) never pays for IPC.
 */
import cluster from 'node:cluster';
import { ClusterLocks } from '../locks/cluster.js';
import type { Metrics } from '../observability/metrics.js';
import { Channel, sender } from './ipc.js';
import { ClusterLimiter, ClusterLoginCache } from './logins.js';

export interface WorkerShare {
  /** 1..N, as the primary's per-worker metrics label it. */
  slot: number;
  locks: ClusterLocks;
  limiter: ClusterLimiter;
  loginCache: ClusterLoginCache;
}

/**
 * Should the primary die, Node ends its workers at once (exit 0 when their channel closes unasked): no worker
 * outlives it holding the port without the shared state.
 */
export async function joinCluster(metrics: Metrics): Promise<WorkerShare> {
  const channel = new Channel(sender(process), { 'metrics.json': () => metrics.registry.getMetricsAsJSON() });
  process.on('message', (m) => channel.receive(m));
  metrics.hostMetrics = () => channel.call<string>('metrics', null, 10_000);
  return {
    slot: Number(process.env.BERTH_WORKER) || 0,
    locks: new ClusterLocks(channel),
    limiter: new ClusterLimiter(channel),
    loginCache: await ClusterLoginCache.connect(channel),
  };
}

/**
 * Close the channel so that the worker's process can end with its own exit code (a drained server: 0; a failed
 * start: 1 or 2). Through cluster.worker, which tells the primary first: a bare process.disconnect() would make
 * Node exit the worker with 0 at once.
 */
export function leaveCluster(): void {
  if (cluster.worker && process.connected) cluster.worker.disconnect();
}
