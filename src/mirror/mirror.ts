/**
 * The pull-through cache: manifests and blobs of the configured upstreams, fetched on a miss, verified, stored
 * (mirror/store.ts) and served from storage afterwards. It knows nothing of HTTP: the handler (http/mirror.ts)
 * asks it for a manifest or a blob of an upstream repository and gets bytes or a RegistryError.
 *
 * - Manifests by tag: served from the cache while younger than the upstream's tag-ttl, then revalidated with one
 *   upstream HEAD (same digest: refreshed; another: fetched). An unreachable upstream, a 5xx or a 429 leaves the
 *   cached one served (stale, logged and counted); with nothing cached the upstream's answer is passed on in OCI
 *   form, a 404 as a 404 so that clients with a fallback fall back.
 * - Manifests and blobs by digest: fetched once, verified before they are stored or their last byte is sent;
 *   concurrent misses of one item in this process share one upstream request.
 */
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import type { Readable } from 'node:stream';
import type { MirrorConfig } from '../config/mirrors.js';
import { RegistryError, blobUnknown, manifestUnknown } from '../registry/errors.js';
import { parseManifest } from '../registry/manifest-doc.js';
import { MAX_MANIFEST_SIZE } from '../registry/manifests.js';
import { digestAlgorithm, validDigest, validTag } from '../registry/paths.js';
import { Limiter } from '../util/concurrency.js';
import type { ByteRange, StorageDriver } from '../storage/driver.js';
import { CacheCap } from './cap.js';
import { BlobTooLarge, Fill, ReaderActivity } from './fill.js';
import type { MirrorMetrics, UpstreamFailure } from './metrics.js';
import { MirrorNames } from './names.js';
import { CacheStore, type CachedTag } from './store.js';
import { Upstream, UpstreamUnavailable, readLimited, type UpstreamResponse } from './upstream.js';
import { DigestMismatch } from '../registry/verify.js';

export interface MirrorLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface MirrorManifest {
  digest: string;
  mediaType: string;
  size: number;
  /** Absent for HEAD when the answer came from a tag record alone. */
  body?: Buffer;
}

export interface MirrorBlob {
  /** The whole blob's size, where known. */
  size: number | undefined;
  /** Absent for HEAD and for a redirect. */
  body?: Readable;
  /** The part `body` holds, for a Range request the cache answered. */
  range?: ByteRange;
  /** Where the client may fetch the cached bytes itself (a Swift temp URL). */
  location?: string;
}

/** What a blob request asks besides the blob: HEAD, the client's address (for its fill cap), a byte range. */
export interface BlobAsk {
  head: boolean;
  client?: string;
  /** The cache's size of the blob, if the caller already asked (cachedBlobSize); else it is asked here. */
  cachedSize?: Promise<number | null>;
  /** The range wanted of a blob of `size` bytes, if any (the HTTP layer parses the header). */
  range?: (size: number) => ByteRange | 'unsatisfiable' | undefined;
}

/** A pull's last-pull record is written at most this often per item and process. */
const PULL_INTERVAL_MS = 3600_000;

export class Mirror {
  readonly names: MirrorNames;
  readonly store: CacheStore;
  /** max-size between prunes (cap.ts). */
  readonly cap: CacheCap;
  private readonly upstreams = new Map<string, Upstream>();
  private readonly slots = new Map<string, Limiter>();
  /** Fills by registry and digest, registered before their first await so that concurrent misses find them. */
  private readonly fills = new Map<string, Promise<Fill>>();
  /** Every fill's clients: storage writes wait until none has read for a moment. */
  private readonly readers = new ReaderActivity();
  /** The Content-Length of each running fill, for the clients that join it. */
  private readonly fillSizes = new Map<string, number | undefined>();
  /** Fills each client address started that still read the upstream. */
  private readonly clientFills = new Map<string, number>();
  private readonly manifestFlights = new Map<string, Promise<MirrorManifest>>();

  constructor(
    mirrors: MirrorConfig[],
    driver: StorageDriver,
    private readonly metrics: MirrorMetrics,
    private readonly log: MirrorLog,
    /** Seconds a redirect of a cached blob to storage stays valid (Swift temp URLs); undefined: never redirect. */
    private readonly redirectSeconds?: number,
    /** Where fills spool the blobs they fetch (mirror/fill.ts): local disk, up to max-fills blobs per upstream. */
    private readonly spoolDir = tmpdir(),
  ) {
    this.names = new MirrorNames(mirrors);
    // The shortest keep decides: a pull must reach storage well before prune could judge the item unpulled.
    const minKeepMs = Math.min(...mirrors.map((m) => m.keep * 1000), PULL_INTERVAL_MS * 4);
    this.store = new CacheStore(driver, Math.max(1000, Math.floor(minKeepMs / 4)));
    this.cap = new CacheCap(driver, mirrors);
    for (const m of mirrors) {
      this.upstreams.set(m.registry, new Upstream(m));
      this.slots.set(m.registry, new Limiter(m.maxFills));
    }
  }

  /** The cached blob's size, null when not cached (or not a valid digest: the blob request then says BLOB_UNKNOWN). */
  cachedBlobSize(registry: string, digest: string): Promise<number | null> {
    return validDigest(digest) ? this.store.blobSize(registry, digest) : Promise.resolve(null);
  }

  /** A pull of a mirrored name that local content answered. */
  servedLocally(registry: string, kind: 'manifest' | 'blob'): void {
    this.metrics.served(registry, kind, 'local');
  }

  /** Close the upstream connections and write this process's last fill counts (before storage is closed). */
  async close(): Promise<void> {
    for (const u of this.upstreams.values()) u.close();
    await this.cap.close().catch((err: Error) => this.log.warn({ err: err.message }, 'mirror: could not write the cache size'));
  }

  // --- manifests ---

  /** A manifest of an upstream repository. A HEAD of an uncached one fetches it as a GET would (the client GETs next). */
  async manifest(m: MirrorConfig, name: string, reference: string): Promise<MirrorManifest> {
    if (reference.includes(':')) {
      if (!validDigest(reference)) throw manifestUnknown(reference);
      const cached = await this.store.readManifest(m.registry, reference);
      if (cached) {
        this.metrics.served(m.registry, 'manifest', 'hit');
        await this.store.pulled(m.registry, reference);
        return { digest: reference, mediaType: cached.mediaType, size: cached.body.length, body: cached.body };
      }
      return this.once(`${m.registry}@${reference}`, (hold) => this.fetchManifest(m, name, reference, hold));
    }
    if (!validTag(reference)) throw manifestUnknown(reference);
    const tag = await this.store.tag(m.registry, name, reference);
    if (tag && Date.now() - tag.checked < m.tagTtl * 1000) {
      const cached = await this.store.readManifest(m.registry, tag.digest);
      if (cached) {
        this.metrics.served(m.registry, 'manifest', 'hit');
        await this.store.pulled(m.registry, tag.digest);
        return { digest: tag.digest, mediaType: cached.mediaType, size: cached.body.length, body: cached.body };
      }
    }
    return this.once(`${m.registry}/${name}:${reference}`, (hold) => this.revalidate(m, name, reference, tag, hold));
  }

  /** A tag past its TTL (or never seen): one HEAD when something is cached, a GET when it is new. */
  private async revalidate(m: MirrorConfig, name: string, tag: string, known: CachedTag | null, hold: Hold): Promise<MirrorManifest> {
    const upstream = this.upstreams.get(m.registry)!;
    const cached = known ? await this.store.readManifest(m.registry, known.digest) : null;
    if (known && cached) {
      let res: UpstreamResponse;
      try {
        res = await upstream.manifest(name, tag, 'HEAD');
      } catch (err) {
        return this.stale(m, name, tag, known, cached, err);
      }
      const digest = res.headers.get('docker-content-digest');
      if (res.status === 200 && digest === known.digest) {
        await this.store.setTag(m.registry, name, tag, { ...known, checked: Date.now() });
        await this.store.pulled(m.registry, known.digest);
        this.metrics.served(m.registry, 'manifest', 'revalidated');
        return { digest: known.digest, mediaType: cached.mediaType, size: cached.body.length, body: cached.body };
      }
      if (res.status !== 200 && res.status !== 404) return this.stale(m, name, tag, known, cached, this.statusError(m, res.status, manifestUnknown(tag)));
      // A new digest (or none said): fetched below; a 404 is the upstream's word that the tag is gone.
    }
    return this.fetchManifest(m, name, tag, hold, (err) => (known && cached ? this.stale(m, name, tag, known, cached, err) : undefined));
  }

  private stale(m: MirrorConfig, name: string, tag: string, known: CachedTag, cached: { body: Buffer; mediaType: string }, err: unknown): MirrorManifest {
    this.countFailure(m, err);
    this.metrics.served(m.registry, 'manifest', 'stale');
    this.log.warn({ registry: m.registry, repository: name, tag, digest: known.digest, reason: (err as Error).message }, 'upstream unavailable: serving the cached tag');
    return { digest: known.digest, mediaType: cached.mediaType, size: cached.body.length, body: cached.body };
  }

  /**
   * GET a manifest upstream, verify it (by digest: against the digest; by tag: against the digest the upstream
   * names, if it names one), validate it as Berth validates a push, and answer; the cache's copy is written
   * meanwhile (`hold` keeps concurrent misses on this fetch until it is). `onUnavailable` may turn an upstream
   * failure into an answer (a stale tag).
   */
  private async fetchManifest(m: MirrorConfig, name: string, reference: string, hold: Hold, onUnavailable?: (err: unknown) => MirrorManifest | undefined): Promise<MirrorManifest> {
    const started = Date.now();
    const upstream = this.upstreams.get(m.registry)!;
    let res: UpstreamResponse;
    let body: Buffer;
    try {
      res = await upstream.manifest(name, reference, 'GET');
      if (res.status !== 200) {
        res.body.resume();
        throw this.statusError(m, res.status, manifestUnknown(reference));
      }
      body = await readLimited(res.body, MAX_MANIFEST_SIZE);
    } catch (err) {
      if (err instanceof UpstreamUnavailable) {
        const answer = onUnavailable?.(err);
        if (answer) return answer;
        this.countFailure(m, err);
        throw unavailable(err);
      }
      throw err;
    }
    const named = res.headers.get('docker-content-digest');
    const expected = reference.includes(':') ? reference : named && validDigest(named) ? named : undefined;
    const algorithm = expected ? digestAlgorithm(expected) : 'sha256';
    const digest = `${algorithm}:${createHash(algorithm).update(body).digest('hex')}`;
    if (expected && digest !== expected) {
      this.metrics.upstreamError(m.registry, 'digest_mismatch');
      this.log.warn({ registry: m.registry, repository: name, reference, expected, actual: digest }, 'upstream manifest does not match its digest: not stored');
      throw new RegistryError('UNAVAILABLE', 'the upstream registry sent a manifest that does not match its digest');
    }
    let mediaType: string;
    try {
      mediaType = parseManifest(body, res.headers.get('content-type') ?? undefined).meta.mediaType;
    } catch {
      this.metrics.upstreamError(m.registry, 'invalid');
      throw new RegistryError('UNAVAILABLE', 'the upstream registry sent a manifest Berth cannot serve');
    }
    // Answered now, not after the cache's copy is written (three Swift round trips, about 50 ms here, on every cold
    // pull): the copy follows the same protocol either way, and a failure to write it costs the next pull a fetch.
    // Until it is written, misses by tag and by digest (containerd asks by digest next) share this fetch.
    const answer: MirrorManifest = { digest, mediaType, size: body.length, body };
    const answerMs = Date.now() - started;
    const stored = Promise.all([
      this.store.writeManifest(m.registry, digest, body, mediaType).then((stored) => stored && this.cap.added(m.registry, body.length)),
      reference.includes(':') ? undefined : this.store.setTag(m.registry, name, reference, { digest, mediaType, size: body.length, checked: Date.now() }),
    ]).then(
      () => this.log.info({ registry: m.registry, upstream: res.host, repository: name, reference, digest, bytes: body.length, answerMs, ms: Date.now() - started }, 'mirror fill: manifest'),
      (err: Error) => (this.metrics.upstreamError(m.registry, 'storage'), this.log.warn({ registry: m.registry, repository: name, digest, err: err.message }, 'mirror fill: manifest served, not stored')),
    );
    hold(stored);
    if (!reference.includes(':')) void this.once(`${m.registry}@${digest}`, (holdByDigest) => (holdByDigest(stored), Promise.resolve(answer)));
    this.metrics.served(m.registry, 'manifest', 'miss');
    this.metrics.fetched(m.registry, body.length);
    return answer;
  }

  // --- blobs ---

  /**
   * A blob of an upstream repository: from the cache, from a fill in progress, or by starting one. `client` (its
   * address) may have at most max-fills-per-client fills of its own starting running: an anonymous client must not
   * be able to fill storage or spend the upstream's allowance at will. Joining a running fill costs nothing.
   */
  async blob(m: MirrorConfig, name: string, digest: string, ask: BlobAsk): Promise<MirrorBlob> {
    const { head, client = '' } = ask;
    if (!validDigest(digest)) throw blobUnknown(digest);
    const size = await (ask.cachedSize ?? this.store.blobSize(m.registry, digest));
    if (size !== null) {
      this.metrics.served(m.registry, 'blob', 'hit');
      // Ranges are answered from the cache only (a fill always sends the whole blob, as it verifies it).
      const range = ask.range?.(size);
      if (range === 'unsatisfiable') throw new RegistryError('RANGE_INVALID', 'requested range not satisfiable', { size });
      if (head) return { size, range };
      await this.store.pulled(m.registry, digest);
      if (range) return { size, range, body: await this.store.readRange(m.registry, digest, range) };
      const location = this.redirectSeconds === undefined ? null : await this.store.signedUrl(m.registry, digest, this.redirectSeconds);
      if (location) return { size, location };
      return this.store.readBlob(m.registry, digest);
    }
    const key = `${m.registry}/${digest}`;
    const pending = this.fills.get(key);
    if (pending) {
      if (head) return { size: this.fillSizes.get(key) };
      const running = await pending;
      // Every client joining before the fill ends reads the whole blob from its spool, at its own pace.
      if (running.joinable) {
        this.metrics.served(m.registry, 'blob', 'miss');
        return { size: this.fillSizes.get(key), body: running.reader() };
      }
      // The fill ended (its spool is no longer offered): the cache has the blob, unless storing it failed.
      const result = await running.done.catch(() => null);
      if (result?.stored) return this.blob(m, name, digest, { ...ask, cachedSize: undefined });
      throw new RegistryError('UNAVAILABLE', 'the blob could not be fetched from the upstream registry; retry');
    }
    if (head) return this.headUpstream(m, name, digest);
    const mine = this.clientFills.get(client) ?? 0;
    if (mine >= m.maxFillsPerClient) {
      throw new RegistryError('TOOMANYREQUESTS', 'too many blobs being fetched upstream for this client; retry when they are done', { limit: m.maxFillsPerClient });
    }
    this.clientFills.set(client, mine + 1);
    const release = () => {
      const n = (this.clientFills.get(client) ?? 1) - 1;
      if (n > 0) this.clientFills.set(client, n);
      else this.clientFills.delete(client);
    };
    const opening = this.startFill(m, name, digest, key);
    // Counted while the upstream is read (the storage write after it waits for a quiet moment, not for this client).
    opening.then((fill) => fill.fetched, () => undefined).then(release, release);
    this.fills.set(key, opening);
    // A fill that never opened (404, upstream down) is forgotten at once; one that opened, when it ends.
    opening.catch(() => this.fills.delete(key));
    const fill = await opening;
    return { size: this.fillSizes.get(key), body: fill.reader() };
  }

  private async headUpstream(m: MirrorConfig, name: string, digest: string): Promise<MirrorBlob> {
    const res = await this.askBlob(m, name, digest, 'HEAD');
    res.body.resume();
    const length = Number(res.headers.get('content-length'));
    return { size: Number.isSafeInteger(length) && length >= 0 ? length : undefined };
  }

  private async askBlob(m: MirrorConfig, name: string, digest: string, method: 'GET' | 'HEAD' = 'GET'): Promise<UpstreamResponse> {
    let res: UpstreamResponse;
    try {
      res = await this.upstreams.get(m.registry)!.blob(name, digest, method);
    } catch (err) {
      this.countFailure(m, err);
      throw unavailable(err);
    }
    if (res.status !== 200) {
      res.body.resume();
      throw this.statusError(m, res.status, blobUnknown(digest));
    }
    const length = Number(res.headers.get('content-length') ?? NaN);
    if (Number.isSafeInteger(length) && length > m.maxBlobSize) {
      res.body.destroy();
      this.metrics.upstreamError(m.registry, 'too_large');
      throw new RegistryError('PAYLOAD_TOO_LARGE', 'the upstream blob is larger than this mirror fetches', { limit: m.maxBlobSize });
    }
    return res;
  }

  private async startFill(m: MirrorConfig, name: string, digest: string, key: string): Promise<Fill> {
    const slots = this.slots.get(m.registry)!;
    // Every slot taken: fills waiting for a quiet moment to store (holding their slots and spools) store now.
    const unpress = slots.full ? this.readers.press() : undefined;
    await slots.take().finally(unpress);
    let res: UpstreamResponse;
    try {
      res = await this.askBlob(m, name, digest);
    } catch (err) {
      slots.give();
      throw err;
    }
    const started = Date.now();
    const lengthHeader = Number(res.headers.get('content-length') ?? NaN);
    const size = Number.isSafeInteger(lengthHeader) && lengthHeader >= 0 ? lengthHeader : undefined;
    // Storage's writes are not tied to any client: a fill ends when the upstream's body does.
    const stop = new AbortController();
    let overCap = false;
    let fill: Fill;
    try {
      fill = await Fill.start(res.body, digest, {
        spoolDir: this.spoolDir,
        maxBytes: m.maxBlobSize,
        stallMs: m.timeout * 1000,
        activity: this.readers,
        store: async (body, bytes) => {
          const stored = await this.cap.store(m.registry, bytes, () => this.store.writeBlob(m.registry, digest, body, bytes, stop.signal));
          if (typeof stored === 'boolean') return stored;
          // Over max-size: the clients have their bytes; the cache does not keep them (logged once, counted).
          body.destroy();
          overCap = true;
          this.metrics.notStored(m.registry);
          this.log.warn({ registry: m.registry, upstream: res.host, digest, bytes, cacheBytes: stored.usage, maxSize: stored.maxSize }, 'mirror fill: not stored, the cache is at max-size');
          return false;
        },
      });
    } catch (err) {
      slots.give();
      this.log.warn({ registry: m.registry, digest, err: (err as Error).message }, 'mirror fill: no spool file');
      throw new RegistryError('UNAVAILABLE', 'the mirror cannot fetch blobs now; retry later');
    }
    this.fillSizes.set(key, size);
    this.metrics.fills(m.registry, 1);
    this.metrics.served(m.registry, 'blob', 'miss');
    fill.done.then(
      ({ stored, bytes, fetchMs }) => {
        this.metrics.fetched(m.registry, bytes);
        if (!stored && !overCap) this.metrics.upstreamError(m.registry, 'storage');
        this.log.info({ registry: m.registry, upstream: res.host, repository: name, digest, bytes, fetchMs, ms: Date.now() - started, stored }, 'mirror fill: blob');
      },
      (err: unknown) => {
        stop.abort(err);
        const reason: UpstreamFailure = err instanceof DigestMismatch ? 'digest_mismatch' : err instanceof BlobTooLarge ? 'too_large' : 'unreachable';
        this.metrics.upstreamError(m.registry, reason);
        this.log.warn({ registry: m.registry, upstream: res.host, repository: name, digest, ms: Date.now() - started, reason, err: (err as Error).message }, 'mirror fill failed: nothing stored');
      },
    ).finally(() => {
      this.fills.delete(key);
      this.fillSizes.delete(key);
      this.metrics.fills(m.registry, -1);
      slots.give();
    });
    return fill;
  }

  // --- helpers ---

  /** Concurrent misses of one item share one upstream request, until what it `hold`s (the cache's copy) is written. */
  private once(key: string, fetch: (hold: Hold) => Promise<MirrorManifest>): Promise<MirrorManifest> {
    const running = this.manifestFlights.get(key);
    if (running) return running;
    const held: Promise<unknown>[] = [];
    const flight = fetch((p) => held.push(p));
    this.manifestFlights.set(key, flight);
    void flight.then(() => Promise.allSettled(held), () => undefined).finally(() => this.manifestFlights.delete(key));
    return flight;
  }

  /** What the client sees for an upstream status: a 404 stays a 404 (clients fall back), 429 stays 429. */
  private statusError(m: MirrorConfig, status: number, unknown: RegistryError): Error {
    if (status === 404 || status === 401 || status === 403) return unknown;
    if (status === 429) {
      this.metrics.upstreamError(m.registry, 'status_429');
      return new UpstreamUnavailable('the upstream answered 429', 429);
    }
    return new UpstreamUnavailable(`the upstream answered ${status}`, status);
  }

  private countFailure(m: MirrorConfig, err: unknown): void {
    if (err instanceof RegistryError) return this.metrics.upstreamError(m.registry, 'refused');
    if (!(err instanceof UpstreamUnavailable)) return;
    if (err.status === 429) return; // counted where it was seen
    this.metrics.upstreamError(m.registry, err.status === undefined ? 'unreachable' : 'status_5xx');
  }
}

/** The client's view of an upstream that could not answer: 429 for a rate limit, else 503. */
function unavailable(err: unknown): Error {
  if (err instanceof UpstreamUnavailable) {
    if (err.status === 429) return new RegistryError('TOOMANYREQUESTS', 'the upstream registry is rate-limiting this mirror; retry later');
    return new RegistryError('UNAVAILABLE', 'the upstream registry is unavailable; retry later');
  }
  return err as Error;
}

/** Keeps a shared fetch's entry until `p` settles. */
type Hold = (p: Promise<unknown>) => void;
