/**
 * Prometheus metrics (prom-client), one registry per process. Names follow Prometheus conventions: base units,
 * `_total` counters, `_seconds` histograms. Labels are bounded sets (route kinds, methods, statuses, operations),
 * never repository names or digests.
 *
 * With `workers: N`, a scrape answered by any worker returns the host's metrics: the worker asks the cluster
 * primary, which gathers every worker's registry and merges them (aggregate() below; docs/metrics.md says how
 * each metric is merged).
 */
import { AggregatorRegistry, Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { StorageDriver } from '../storage/driver.js';
import type { Quotas } from '../registry/quota.js';
import { readUsage } from '../registry/usage.js';

/** A namespace's stored figure is read again at most this often, however often /metrics is scraped. */
const USAGE_TTL_MS = 60_000;

/** One registry's metrics as data: what a worker sends the primary. */
export type MetricsJson = Awaited<ReturnType<Registry['getMetricsAsJSON']>>;

/**
 * Merged with a `worker` label (the worker's slot, 1..N, kept by its replacement) rather than summed: how much
 * memory one worker holds and how late its event loop runs say which worker is in trouble; sum() gives the host.
 */
export const PER_WORKER = new Set(['berth_process_resident_memory_bytes', 'berth_nodejs_heap_size_used_bytes', 'berth_nodejs_eventloop_lag_p99_seconds']);

export class Metrics {
  readonly registry = new Registry();
  /** Where a clustered worker's scrape gets the host's text from (src/cluster/worker.ts sets it). */
  hostMetrics?: () => Promise<string>;
  readonly requests = new Counter({
    name: 'berth_http_requests_total',
    help: 'HTTP requests answered, by route kind, method and status',
    labelNames: ['route', 'method', 'status'] as const,
    registers: [this.registry],
  });
  readonly requestSeconds = new Histogram({
    name: 'berth_http_request_duration_seconds',
    help: 'Time from request to the end of the response, by route kind and method',
    labelNames: ['route', 'method'] as const,
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300],
    registers: [this.registry],
  });
  readonly bytesIn = new Counter({ name: 'berth_http_received_bytes_total', help: 'Bytes received on API connections', registers: [this.registry] });
  readonly bytesOut = new Counter({ name: 'berth_http_sent_bytes_total', help: 'Bytes sent on API connections', registers: [this.registry] });
  readonly uploadsInProgress = new Gauge({
    name: 'berth_uploads_in_progress',
    help: 'Upload requests (PATCH, POST or PUT with a body) streaming right now',
    registers: [this.registry],
  });
  readonly commitSeconds = new Histogram({
    name: 'berth_upload_commit_duration_seconds',
    help: 'Time to commit an upload (moves and join), from the final PUT',
    buckets: [0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60],
    registers: [this.registry],
  });
  readonly storageRequests = new Counter({
    name: 'berth_storage_operations_total',
    help: 'Storage driver operations, by operation and outcome (ok, not_found, error)',
    labelNames: ['op', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly storageSeconds = new Histogram({
    name: 'berth_storage_operation_duration_seconds',
    help: 'Storage driver operation time (for get: until the body starts)',
    labelNames: ['op'] as const,
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120],
    registers: [this.registry],
  });
  readonly lockServiceErrors = new Counter({
    name: 'berth_lock_service_errors_total',
    help: 'Lock service (memcached) failures, by operation: acquire (the request went on without a lock across processes), renew, release, lost (a held lock was gone)',
    labelNames: ['op'] as const,
    registers: [this.registry],
  });
  readonly lockServers = new Gauge({
    name: 'berth_lock_servers',
    help: 'Configured lock service (memcached) servers, by state: up (the last request was answered) or down',
    labelNames: ['state'] as const,
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'berth_' });
  }

  /**
   * Bytes per namespace: the last prune's figure (usage/last.json), and where a quota applies, the quota and the
   * usage the quota is enforced against. Labelled only by the configured namespaces, so the set is bounded.
   */
  watchUsage(namespaces: string[], driver: StorageDriver, quotas?: Quotas): void {
    const stored = new Map<string, { bytes: number | null; until: number }>();
    const registers = [this.registry];
    new Gauge({
      name: 'berth_namespace_stored_bytes',
      help: 'Bytes of the distinct blobs of a namespace as the last prune (or berth usage --fresh) counted them',
      labelNames: ['namespace'] as const,
      registers,
      // Every worker reads the same figures: merged as one, not summed (docs/metrics.md).
      aggregator: 'max',
      async collect() {
        await Promise.all(
          namespaces.map(async (ns) => {
            let s = stored.get(ns);
            if (!s || s.until < Date.now()) {
              s = { bytes: (await readUsage(driver, ns).catch(() => null))?.bytes ?? null, until: Date.now() + USAGE_TTL_MS };
              stored.set(ns, s);
            }
            if (s.bytes !== null) this.set({ namespace: ns }, s.bytes);
          }),
        );
      },
    });
    if (!quotas) return;
    const limited = namespaces.filter((ns) => quotas.limit(ns) !== undefined);
    new Gauge({
      name: 'berth_namespace_quota_bytes',
      help: 'Bytes a namespace may store (registry.quota, namespaces.NAME.quota)',
      labelNames: ['namespace'] as const,
      registers,
      // Every worker reads the same figures: merged as one, not summed (docs/metrics.md).
      aggregator: 'max',
      collect() {
        for (const ns of limited) this.set({ namespace: ns }, quotas.limit(ns)!);
      },
    });
    new Gauge({
      name: 'berth_namespace_usage_bytes',
      help: 'Bytes a namespace uses as this process enforces its quota: the last figure, commits since, and open uploads',
      labelNames: ['namespace'] as const,
      registers,
      // Every worker reads the same figures: merged as one, not summed (docs/metrics.md).
      aggregator: 'max',
      async collect() {
        // A namespace whose storage cannot be read now is left out of this scrape rather than failing it.
        await Promise.all(limited.map((ns) => quotas.usage(ns).then((bytes) => this.set({ namespace: ns }, bytes), () => {})));
      },
    });
  }

  /** What /metrics answers: this process's metrics, or the host's when clustered. */
  render(): Promise<string> {
    return this.hostMetrics ? this.hostMetrics() : this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

/**
 * One registry from every worker's: counters and histograms summed (prom-client's default, bucket by bucket),
 * `berth_uploads_in_progress` summed (the host's uploads), PER_WORKER gauges kept apart by a `worker` label, and
 * prom-client's process metrics by the aggregator each declares (memory and CPU summed, event loop lag averaged,
 * start time omitted, version the first's).
 */
export function aggregate(workers: { slot: number; metrics: MetricsJson }[]): Registry {
  const labelled = workers.map(({ slot, metrics }) =>
    metrics.map((m) => (PER_WORKER.has(m.name) ? { ...m, values: m.values.map((v) => ({ ...v, labels: { ...v.labels, worker: String(slot) } })) } : m)),
  );
  return AggregatorRegistry.aggregate(labelled);
}
