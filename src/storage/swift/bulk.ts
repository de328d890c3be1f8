/**
 * Deleting many objects on Swift: the bulk middleware's `?bulk-delete` (one POST for up to max_deletes_per_request
 * names, which Swift deletes itself), when the cluster's /info offers it; single deletes a few at a time otherwise.
 *
 * A bulk delete removes an SLO manifest but not its segments (it sends no multipart-manifest=delete). So a target
 * not known to be plain (a bare path, or a listing entry that is an SLO) goes by the driver's own multipart delete,
 * one request each, before the bulk: `deleteRemovesParts` holds for `deleteMany` too. Listing entries say which
 * objects are SLOs (`slo_etag`), so callers that delete what they listed pay one request per SLO and none per plain
 * object beyond their share of the bulk.
 */
import { forEachLimited } from '../../util/concurrency.js';
import { deleteEach, targetPath } from '../delete-many.js';
import { DriverError, type DeleteFailure, type DeleteTarget } from '../driver.js';
import { COPY_TIMEOUT_MS, drain, encodeKey, failure, type SwiftClient } from './client.js';

/**
 * Bulk requests in flight at once: Swift deletes each request's names two at a time (delete_concurrency), so a
 * batch is split over several requests (of at least MIN_BULK names) to have more deletes in flight on the cluster.
 * A delete took about 300 ms on the loaded test machine (prune's 150 deletions of dead links in three requests of
 * 50: 11.8 s), so small batches are split too. The split costs a request per MIN_BULK names at worst.
 */
const BULK_PARALLELISM = 16;
const MIN_BULK = 10;
/** Multipart deletes in flight at once (one request each; Swift then deletes the segments itself). */
const JOIN_PARALLELISM = 16;

interface BulkOutcome {
  'Response Status'?: string;
  'Response Body'?: string;
  'Number Deleted'?: number;
  'Number Not Found'?: number;
  Errors?: [string, string][];
}

export class SwiftBulk {
  constructor(
    private readonly client: SwiftClient,
    /** Names per bulk request (from /info); 0 when the cluster has no bulk delete. */
    readonly maxPerRequest: number,
    /** The single multipart-aware delete (writes.ts). */
    private readonly deleteOne: (key: string) => Promise<void>,
  ) {}

  async deleteMany(targets: readonly DeleteTarget[]): Promise<DeleteFailure[]> {
    if (this.maxPerRequest <= 0) return deleteEach(targets, this.deleteOne);
    const plain: string[] = [];
    const joins: string[] = [];
    for (const t of targets) (typeof t !== 'string' && t.joined === false ? plain : joins).push(targetPath(t));
    // Joins first: their segments may be among the plain names, and a reader must never find a manifest whose
    // segments are gone while it still stands.
    const failures = await deleteEach(joins, this.deleteOne, JOIN_PARALLELISM);
    const chunks: string[][] = [];
    const per = Math.min(this.maxPerRequest, Math.max(MIN_BULK, Math.ceil(plain.length / BULK_PARALLELISM)));
    for (let i = 0; i < plain.length; i += per) chunks.push(plain.slice(i, i + per));
    await forEachLimited(chunks, BULK_PARALLELISM, async (chunk) => {
      failures.push(...(await this.bulk(chunk)));
    });
    return failures;
  }

  /** One bulk request. Whatever Swift does not report per name (an aborted request) counts as failed for every name. */
  private async bulk(keys: string[]): Promise<DeleteFailure[]> {
    const prefix = `/${encodeURIComponent(this.client.container)}/`;
    const body = Buffer.from(keys.map((k) => prefix + encodeKey(k)).join('\n'));
    let outcome: BulkOutcome;
    try {
      const res = await this.client.call({
        method: 'POST',
        query: { 'bulk-delete': 'true' },
        headers: { 'Content-Type': 'text/plain', Accept: 'application/json', 'Content-Length': String(body.length) },
        body,
        // Swift streams whitespace while it works, then the outcome: a long batch is not a stalled one.
        timeoutMs: COPY_TIMEOUT_MS,
      });
      if (res.status !== 200) {
        await drain(res);
        throw failure(res, `bulk delete of ${keys.length} objects`);
      }
      outcome = JSON.parse((await res.text()).trim()) as BulkOutcome;
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      return keys.map((path) => ({ path, error }));
    }
    const status = outcome['Response Status'] ?? '';
    const errors = outcome.Errors ?? [];
    if (status.startsWith('200')) return [];
    if (status.startsWith('400') && errors.length > 0 && !/max delete failures/i.test(outcome['Response Body'] ?? '')) {
      return errors.map(([name, why]) => ({ path: this.keyOf(name), error: new DriverError(`bulk delete: ${why}`, /^5|^409|^429/.test(why)) }));
    }
    const error = new DriverError(`bulk delete of ${keys.length} objects: ${status} ${outcome['Response Body'] ?? ''}`.trim(), true);
    return keys.map((path) => ({ path, error }));
  }

  /** A name as Swift reports it in Errors (`/container/object`, URL-quoted) back to a key. */
  private keyOf(name: string): string {
    const decoded = decodeURIComponent(name);
    const prefix = `/${this.client.container}/`;
    return decoded.startsWith(prefix) ? decoded.slice(prefix.length) : decoded.replace(/^\//, '');
  }
}
