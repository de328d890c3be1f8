/**
 * A worker's side of `workers: N`: the clients of what the primary holds for the host (upload locks, failed-login
 * buckets, the login cache) and the answer to the primary's metrics requests. Called only in a cluster worker, so
 * a single process (`workers: 1`) never pays for IPC.
 */
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
  /** Close the channel so that the process can exit once it has drained. */
  leave(): void;
}

/** `onPrimaryGone` runs when the primary exits: the worker then drains and exits too. */
export async function joinCluster(metrics: Metrics, onPrimaryGone: () => void): Promise<WorkerShare> {
  const channel = new Channel(sender(process), { 'metrics.json': () => metrics.registry.getMetricsAsJSON() });
  process.on('message', (m) => channel.receive(m));
  process.on('disconnect', () => {
    channel.close();
    onPrimaryGone();
  });
  metrics.hostMetrics = () => channel.call<string>('metrics', null, 10_000);
  return {
    slot: Number(process.env.BERTH_WORKER) || 0,
    locks: new ClusterLocks(channel),
    limiter: new ClusterLimiter(channel),
    loginCache: await ClusterLoginCache.connect(channel),
    leave: () => {
      if (process.connected) process.disconnect();
    },
  };
}
