/**
 * Quotas: a namespace may store at most its quota of bytes. Uploads that would take it over are refused with
 * DENIED before their bytes are accepted; pulls, deletes, mounts and manifests are never refused.
 *
 * A process's view of a namespace's usage, refreshed at most every REFRESH_MS when a check needs it:
 *   the last prune's figure (usage/last.json, as of its `asOf`)
 * + bytes committed since then: this process's own at once, every other process's from its object under
 *   usage/live/ (each process rewrites its own at most every FLUSH_MS while it has news: time buckets of committed
 *   bytes; a bucket that ends before the figure's `asOf` (less SKEW_MS for clocks) is in the figure and dropped)
 * + open uploads: the bytes of every upload directory in a listing of uploads/ (upload-limits.ts), or what this
 *   process has since written to one, whichever is more.
 * What the view can miss, and so the largest overshoot, is in docs/security-storage.md ("Quotas").
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { PathNotFound, type StorageDriver } from '../storage/driver.js';
import { RegistryError } from './errors.js';
import { paths } from './paths.js';
import type { OpenUploads } from './upload-limits.js';
import { readUsage } from './usage.js';

export const REFRESH_MS = 5000;
export const FLUSH_MS = 5000;
/** Clocks of servers and prune may differ by this much without a committed byte being missed. */
export const SKEW_MS = 10_000;
/** Another process's object that the figure covers entirely and that has not changed for this long is deleted. */
const DEAD_MS = 60_000;
/** Buckets a process keeps per namespace before merging its oldest (a merged bucket spans both). */
const MAX_BUCKETS = 32;
/** A listing begun this long after a write is trusted to show it (Swift's container listings may lag). */
const LISTING_LAG_MS = 5000;
/** What this process wrote to an upload that has not moved for this long is left to the listing (a dead stream). */
const STALE_MS = 600_000;

export interface QuotaConfig {
  /** Bytes by namespace; a namespace not listed has `fallback`, and none if that is undefined. */
  byNamespace: Record<string, number | undefined>;
  fallback?: number;
  /** Intervals (ms), for tests; the defaults are REFRESH_MS, FLUSH_MS and SKEW_MS. */
  timing?: Partial<Timing>;
  /** Where the figure and the live objects of a key are: a namespace's usage/ unless given (the mirror's cap has its own). */
  location?: TallyLocation;
}

/** The storage a tally of committed bytes lives in, by key (a namespace; an upstream's cache). */
export interface TallyLocation {
  /** The last full count: its bytes and the time it counts from (ISO 8601); null before any. */
  figure(driver: StorageDriver, key: string): Promise<{ bytes: number; asOf: string } | null>;
  /** The prefix of every process's object, and this process's. */
  live(key: string): string;
  process(key: string, name: string): string;
}

const NAMESPACE_USAGE: TallyLocation = { figure: readUsage, live: paths.usageLive, process: paths.usageProcess };

interface Timing {
  refreshMs: number;
  flushMs: number;
  skewMs: number;
}

/** Bytes committed between `from` and `to` (ms since the epoch). */
interface Bucket {
  from: number;
  to: number;
  bytes: number;
}

interface NamespaceView {
  refreshed: number;
  /** The last prune's figure and its time; 0 and -Infinity before any. */
  baseline: number;
  asOf: number;
  /** Other processes' committed bytes since the figure. */
  others: number;
  /** This process's commits: closed buckets, and the one filling until the next flush. */
  buckets: Bucket[];
  open?: Bucket;
  dirty: boolean;
  /** Bytes of open uploads by id: listed, and what this process knows (kept until a later listing shows it). */
  listed: Map<string, number>;
  local: Map<string, { bytes: number; at: number; done: boolean }>;
  /** Uploads this process committed or removed since the listing: no longer open. */
  gone: Map<string, number>;
  /** The sum over open uploads, kept up to date as pieces pass (a sum per piece would cost as many uploads). */
  openBytes: number;
}

export const quotaExceeded = (ns: string, usage: number, adding: number, limit: number) =>
  new RegistryError(
    'DENIED',
    `namespace ${ns} is over its quota: it stores ${usage} bytes, this upload needs ${adding} more, and the quota is ${limit} bytes; delete images and wait for prune, or ask for a larger quota`,
    { namespace: ns, usage, adding, quota: limit },
  );

export function isQuotaRefusal(err: unknown): boolean {
  return err instanceof RegistryError && err.code === 'DENIED' && (err.detail as { quota?: unknown } | undefined)?.quota !== undefined;
}

export class Quotas {
  private readonly views = new Map<string, NamespaceView>();
  private readonly refreshing = new Map<string, Promise<NamespaceView>>();
  private open?: OpenUploads;
  private timer?: NodeJS.Timeout;
  /** This process's name in usage/live/: host, pid and a nonce (a restarted process writes a new object). */
  readonly process = `${hostname().toLowerCase().replace(/[^a-z0-9.-]/g, '-').slice(0, 64) || 'host'}.${process.pid}.${randomBytes(4).toString('hex')}`;

  private readonly timing: Timing;
  private readonly location: TallyLocation;

  constructor(
    private readonly driver: StorageDriver,
    private readonly config: QuotaConfig,
  ) {
    this.timing = { refreshMs: REFRESH_MS, flushMs: FLUSH_MS, skewMs: SKEW_MS, ...config.timing };
    this.location = config.location ?? NAMESPACE_USAGE;
  }

  /** Open uploads are counted from the listing that limits their number (upload-limits.ts). */
  useListing(open: OpenUploads): void {
    this.open = open;
  }

  limit(ns: string): number | undefined {
    return Object.hasOwn(this.config.byNamespace, ns) ? this.config.byNamespace[ns] : this.config.fallback;
  }

  /** The namespace's usage as this process sees it now (bytes stored, committed since, and open uploads). */
  async usage(ns: string): Promise<number> {
    return total(await this.view(ns));
  }

  /**
   * The body of an append to upload `id` (already `size` bytes), refused with DENIED before any byte is accepted
   * when a declared `length` would take the namespace over quota, and cut off with DENIED at the first piece that
   * would otherwise. Without a quota, the body itself.
   */
  async meter(ns: string, id: string, size: number, body: Readable, length?: number): Promise<Readable> {
    const limit = this.limit(ns);
    if (limit === undefined) return body;
    const v = await this.view(ns);
    const before = total(v);
    if (length !== undefined && before + length > limit) throw quotaExceeded(ns, before, length, limit);
    this.written(v, id, size, false);
    const self = this;
    async function* metered(): AsyncGenerator<Buffer> {
      let written = size;
      try {
        for await (const piece of body as AsyncIterable<Buffer>) {
          const view = Date.now() - v.refreshed > self.timing.refreshMs ? await self.view(ns) : v;
          const now = total(view);
          if (now + piece.length > limit!) throw quotaExceeded(ns, now, piece.length, limit!);
          written += piece.length;
          self.written(view, id, written, false);
          yield piece;
        }
      } finally {
        // Until a listing begun from now on shows the upload, this process's figure stands for it.
        self.written(v, id, written, true);
      }
    }
    return Readable.from(metered(), { objectMode: false });
  }

  /**
   * Before an upload becomes a blob: refused if the namespace is already over quota (another process's bytes
   * arrived meanwhile). The upload's own bytes are in the view already, as an open upload.
   */
  async checkCommit(ns: string): Promise<void> {
    const limit = this.limit(ns);
    if (limit === undefined) return;
    const now = await this.usage(ns);
    if (now > limit) throw quotaExceeded(ns, now, 0, limit);
  }

  /** Upload `id` became a new blob of `bytes` (0: the blob was stored already), or went (cancelled, refused). */
  finished(ns: string, id: string, bytes: number): void {
    const v = this.views.get(ns);
    if (v) {
      v.openBytes -= contribution(v, id);
      v.local.delete(id);
      v.gone.set(id, Date.now());
    }
    this.added(ns, bytes);
  }

  /** `bytes` more are stored for good (a committed blob, a new manifest): recorded for every process to count. */
  added(ns: string, bytes: number): void {
    if (bytes <= 0 || this.limit(ns) === undefined) return;
    let v = this.views.get(ns);
    // Kept even before this process has looked at the namespace: its first refresh keeps the buckets.
    if (!v) this.views.set(ns, (v = blankView()));
    const t = Date.now();
    v.open = v.open ? { from: v.open.from, to: t, bytes: v.open.bytes + bytes } : { from: t, to: t, bytes };
    v.dirty = true;
    this.schedule();
  }

  /** Write what is pending now (at shutdown). */
  async close(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.flush();
  }

  private written(v: NamespaceView, id: string, bytes: number, done: boolean): void {
    if (v.gone.has(id)) return;
    v.openBytes -= contribution(v, id);
    v.local.set(id, { bytes, at: Date.now(), done });
    v.openBytes += contribution(v, id);
  }

  private async view(ns: string): Promise<NamespaceView> {
    const v = this.views.get(ns);
    if (v && Date.now() - v.refreshed <= this.timing.refreshMs) return v;
    let pending = this.refreshing.get(ns);
    if (!pending) {
      pending = this.refresh(ns, v).finally(() => this.refreshing.delete(ns));
      this.refreshing.set(ns, pending);
    }
    return pending;
  }

  private async refresh(ns: string, old: NamespaceView | undefined): Promise<NamespaceView> {
    const started = Date.now();
    const [figure, listing] = await Promise.all([this.location.figure(this.driver, ns), this.open?.listing(ns, this.timing.refreshMs)]);
    const asOf = figure ? Date.parse(figure.asOf) : -Infinity;
    const covered = (b: Bucket) => b.to < asOf - this.timing.skewMs;
    const v = old ?? blankView();
    const before = v.buckets.length;
    v.buckets = v.buckets.filter((b) => !covered(b));
    if (v.buckets.length !== before) v.dirty = true;
    v.baseline = figure?.bytes ?? 0;
    v.asOf = asOf;
    v.others = await this.othersSince(ns, covered);
    if (listing) {
      v.listed = listing.sizes;
      const shows = listing.at - LISTING_LAG_MS;
      for (const [id, l] of v.local) if ((l.done && l.at < shows) || l.at < listing.at - STALE_MS) v.local.delete(id);
      for (const [id, t] of v.gone) if (t < shows) v.gone.delete(id);
    }
    v.openBytes = 0;
    for (const id of new Set([...v.listed.keys(), ...v.local.keys()])) v.openBytes += contribution(v, id);
    v.refreshed = started;
    this.views.set(ns, v);
    if (v.dirty) this.schedule();
    return v;
  }

  /** Other processes' uncovered bytes: one listing of usage/live/ and one read per process. */
  private async othersSince(ns: string, covered: (b: Bucket) => boolean): Promise<number> {
    let sum = 0;
    const own = this.location.process(ns, this.process);
    for await (const o of this.driver.list(this.location.live(ns))) {
      if (o.path === own) continue;
      let buckets: Bucket[];
      try {
        buckets = parseBuckets((await this.driver.read(o.path)).toString('utf8'));
      } catch (err) {
        if (err instanceof PathNotFound) continue;
        throw err;
      }
      const uncovered = buckets.filter((b) => !covered(b));
      for (const b of uncovered) sum += b.bytes;
      // A process gone (restarted, scaled down) leaves its object: once the figure covers it, it is only a cost.
      if (uncovered.length === 0 && o.modified.getTime() < Date.now() - DEAD_MS) await this.removeUnchanged(o.path, o.modified);
    }
    return sum;
  }

  private async removeUnchanged(path: string, listed: Date): Promise<void> {
    try {
      const now = await this.driver.stat(path);
      if (now && now.modified.getTime() <= listed.getTime()) await this.driver.delete(path);
    } catch {
      // Best effort: the next refresh tries again.
    }
  }

  private schedule(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.flush().catch(() => this.schedule());
    }, this.timing.flushMs);
    this.timer.unref();
  }

  /** Rewrite this process's object of each namespace with news; an object with nothing left is deleted. */
  private async flush(): Promise<void> {
    for (const [ns, v] of this.views) {
      if (v.open) {
        v.buckets.push(v.open);
        v.open = undefined;
        v.dirty = true;
      }
      if (!v.dirty) continue;
      while (v.buckets.length > MAX_BUCKETS) {
        const [a, b] = v.buckets.splice(0, 2);
        v.buckets.unshift({ from: Math.min(a.from, b.from), to: Math.max(a.to, b.to), bytes: a.bytes + b.bytes });
      }
      v.dirty = false;
      const path = this.location.process(ns, this.process);
      try {
        if (v.buckets.length === 0) await this.driver.delete(path);
        else await this.driver.put(path, Buffer.from(JSON.stringify({ process: this.process, updated: new Date().toISOString(), buckets: v.buckets })), { contentType: 'application/json' });
      } catch (err) {
        v.dirty = true;
        throw err;
      }
    }
  }
}

function blankView(): NamespaceView {
  return { refreshed: 0, baseline: 0, asOf: -Infinity, others: 0, buckets: [], dirty: false, listed: new Map(), local: new Map(), gone: new Map(), openBytes: 0 };
}

/** An open upload counts as the larger of its listed size and what this process wrote to it; a gone one, nothing. */
function contribution(v: NamespaceView, id: string): number {
  return v.gone.has(id) ? 0 : Math.max(v.listed.get(id) ?? 0, v.local.get(id)?.bytes ?? 0);
}

function total(v: NamespaceView): number {
  const mine = v.buckets.reduce((n, b) => n + b.bytes, 0) + (v.open?.bytes ?? 0);
  return v.baseline + mine + v.others + v.openBytes;
}

function parseBuckets(text: string): Bucket[] {
  try {
    const doc = JSON.parse(text) as { buckets?: unknown };
    if (!Array.isArray(doc.buckets)) return [];
    return doc.buckets.filter(
      (b): b is Bucket => typeof b === 'object' && b !== null && [b.from, b.to, b.bytes].every((n) => Number.isSafeInteger(n) && n >= 0),
    );
  } catch {
    return [];
  }
}
