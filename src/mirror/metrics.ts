/**
 * The pull-through cache's metrics, registered on the process's Metrics registry. Labels are bounded: the
 * configured registries, two kinds, a few results and reasons; never repository names or digests.
 */
import { Counter, Gauge } from 'prom-client';
import type { Metrics } from '../observability/metrics.js';

export type MirrorResult = 'hit' | 'miss' | 'revalidated' | 'stale' | 'local';
export type UpstreamFailure = 'unreachable' | 'status_5xx' | 'status_429' | 'refused' | 'digest_mismatch' | 'invalid' | 'too_large' | 'storage';

export interface MirrorMetrics {
  /** A request the cache answered, by how: from the cache (hit), after a fill (miss), ... */
  served(registry: string, kind: 'manifest' | 'blob', result: MirrorResult): void;
  upstreamError(registry: string, reason: UpstreamFailure): void;
  fetched(registry: string, bytes: number): void;
  fills(registry: string, delta: 1 | -1): void;
  /** A fill that served its clients but was not stored: the cache was at max-size. */
  notStored(registry: string): void;
}

export function mirrorMetrics(metrics: Metrics | undefined): MirrorMetrics {
  if (!metrics) return { served() {}, upstreamError() {}, fetched() {}, fills() {}, notStored() {} };
  const registers = [metrics.registry];
  const requests = new Counter({
    name: 'berth_mirror_requests_total',
    help: 'Pulls through the pull-through cache, by upstream registry, kind and result (hit, miss, revalidated, stale, local)',
    labelNames: ['registry', 'kind', 'result'] as const,
    registers,
  });
  const errors = new Counter({
    name: 'berth_mirror_upstream_errors_total',
    help: 'Upstream requests that failed, by upstream registry and reason',
    labelNames: ['registry', 'reason'] as const,
    registers,
  });
  const bytes = new Counter({ name: 'berth_mirror_fetched_bytes_total', help: 'Bytes fetched from upstream registries', labelNames: ['registry'] as const, registers });
  const inProgress = new Gauge({ name: 'berth_mirror_fills_in_progress', help: 'Blob fills from upstream running now', labelNames: ['registry'] as const, registers });
  const overCap = new Counter({
    name: 'berth_mirror_fills_not_stored_total',
    help: 'Blob fills served to their clients but not stored, because the cache was at max-size',
    labelNames: ['registry'] as const,
    registers,
  });
  return {
    notStored: (registry) => overCap.inc({ registry }),
    served: (registry, kind, result) => requests.inc({ registry, kind, result }),
    upstreamError: (registry, reason) => errors.inc({ registry, reason }),
    fetched: (registry, n) => bytes.inc({ registry }, n),
    fills: (registry, delta) => inProgress.inc({ registry }, delta),
  };
}
