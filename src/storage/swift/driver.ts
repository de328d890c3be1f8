/**
 * OpenStack Swift driver. Objects live in one container; keys are object names. Bodies stream both ways
 * (node-fetch over keep-alive agents). Integrity is Swift's ETag (the md5 of the stored bytes): a put with a known
 * md5 sends it so Swift refuses other bytes, a move is a server-side copy whose ETag is checked, and a join is a
 * static large object (SLO) manifest whose segments Swift checks against the md5s recorded when they were written.
 */
import { createHash, createHmac } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { PassThrough, Readable, Transform, pipeline } from 'node:stream';
import { finished } from 'node:stream/promises';
import fetch, { type RequestInit, type Response } from 'node-fetch';
import {
  AlreadyExists,
  ChecksumMismatch,
  DriverError,
  PathNotFound,
  SizeMismatch,
  type ByteRange,
  type MoveOptions,
  type ObjectInfo,
  type Part,
  type PutOptions,
  type StorageDriver,
  type StoredObject,
} from '../driver.js';
import { AuthError, login, type Session } from './auth.js';
import type { CloudAuth } from './clouds.js';
import { carryRequestIds, transactionSuffix } from '../../observability/context.js';
import { planManifests, planMerges, sloEtag, type Segment } from './slo.js';

export interface SwiftOptions {
  auth: CloudAuth;
  container: string;
  /** Largest chunk object; SLO segments are these objects. Swift's own limit is 5 GiB. */
  segmentSize?: number;
  /** Segments per SLO manifest before nesting; Swift's limit (1000) unless a test wants nesting sooner. */
  maxManifestSegments?: number;
  /** Objects per listing request; Swift's limit (10,000) unless a test wants paging sooner. */
  listPageSize?: number;
  /** Set as the container's temp-URL key at connect, so blob GETs can be redirected to signed Swift URLs. */
  tempUrlKey?: string;
  /** Deadline of a metadata request, and the longest a streamed body may stall, in ms (default 120 s). */
  requestTimeoutMs?: number;
}

export const DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024;
/** Swift's object-name limit (max_object_name_length), in bytes. */
const MAX_KEY_BYTES = 1024;
const LIST_PAGE = 10_000;
/** Deadline of requests without a streamed body (copies rewrite whole objects, so they get longer). */
const DEFAULT_TIMEOUT_MS = 120_000;
const COPY_TIMEOUT_MS = 30 * 60_000;
/** Refresh a token this long before Swift would refuse it, so a long streamed PUT does not start on a dying one. */
const TOKEN_MARGIN_MS = 5 * 60_000;
const RETRY_DELAYS_MS = [100, 500, 2000];
/** Small requests run this many at a time (deletes, reads ahead of a merge). */
const PARALLEL_REQUESTS = 8;
const RETRYABLE_STATUS = new Set([408, 429, 500, 502, 503, 504]);

type Body = Buffer | Readable | undefined;

interface Call {
  method: string;
  key?: string;
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Body;
  signal?: AbortSignal;
  timeoutMs?: number;
}

/** No `tryLock`: Swift has no compare-and-swap, so it cannot lock across processes (docs/security-storage.md). */
export class SwiftDriver implements StorageDriver {
  readonly name = 'swift';
  readonly maxObjectSize: number;
  readonly reportsMd5 = true;
  private session: Session | undefined;
  private loggingIn: Promise<Session> | undefined;
  private readonly httpAgent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  private readonly httpsAgent = new https.Agent({ keepAlive: true, maxSockets: 64 });

  private readonly timeoutMs: number;

  private constructor(private readonly opts: SwiftOptions) {
    carryRequestIds(); // for X-Trans-Id-Extra
    this.maxObjectSize = opts.segmentSize ?? DEFAULT_SEGMENT_SIZE;
    this.timeoutMs = opts.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /** Log in and make sure the container exists (creating it if needed). */
  static async connect(opts: SwiftOptions): Promise<SwiftDriver> {
    const driver = new SwiftDriver(opts);
    try {
      await driver.ensureContainer();
    } catch (err) {
      await driver.close();
      throw err;
    }
    return driver;
  }

  private async ensureContainer(): Promise<void> {
    const head = await this.call({ method: 'HEAD' });
    await drain(head);
    if (head.status === 404) {
      const put = await this.call({ method: 'PUT', headers: { 'Content-Length': '0' } });
      await drain(put);
      if (put.status !== 201 && put.status !== 202) {
        throw new DriverError(`cannot create Swift container ${this.opts.container}: ${put.status} ${put.statusText}`);
      }
    } else if (head.status !== 204 && head.status !== 200) {
      throw new DriverError(`cannot read Swift container ${this.opts.container}: ${head.status} ${head.statusText}`);
    }
    const key = this.opts.tempUrlKey;
    if (key && head.headers.get('x-container-meta-temp-url-key') !== key) {
      const post = await this.call({ method: 'POST', headers: { 'X-Container-Meta-Temp-URL-Key': key } });
      await drain(post);
      if (post.status !== 204 && post.status !== 202) {
        throw new DriverError(`cannot set the temp-URL key on Swift container ${this.opts.container}: ${post.status} ${post.statusText}`);
      }
    }
  }

  /** Each SLO segment (recursively through sub-manifests) HEADed and compared with the manifest's etag and size. */
  async verify(key: string): Promise<string[]> {
    checkKey(key);
    const listing = await this.sloListing(key);
    if (listing === null) return [`${key}: missing`];
    const problems: string[] = [];
    await inParallel(listing, PARALLEL_REQUESTS, async (seg) => {
      if (seg.subSlo) {
        problems.push(...(await this.verify(seg.path)));
        return;
      }
      const head = await this.call({ method: 'HEAD', key: seg.path });
      await drain(head);
      if (head.status === 404) return void problems.push(`${key}: segment ${seg.path} is missing`);
      if (head.status !== 200) throw failure(head, `HEAD ${seg.path}`);
      const etag = unquote(head.headers.get('etag'));
      const size = Number(head.headers.get('content-length'));
      if (etag !== seg.hash) problems.push(`${key}: segment ${seg.path} has md5 ${etag}, the manifest records ${seg.hash}`);
      if (size !== seg.bytes) problems.push(`${key}: segment ${seg.path} has ${size} bytes, the manifest records ${seg.bytes}`);
    });
    return problems;
  }

  async segments(key: string): Promise<string[]> {
    checkKey(key);
    const out: string[] = [];
    for (const seg of (await this.sloListing(key)) ?? []) {
      out.push(seg.path);
      if (seg.subSlo) out.push(...(await this.segments(seg.path)));
    }
    return out;
  }

  /** An SLO's own segment list (keys in this container); [] for a plain object, null when absent. */
  private async sloListing(key: string): Promise<SloEntry[] | null> {
    const res = await this.call({ method: 'GET', key, query: { 'multipart-manifest': 'get' } });
    if (res.status === 404) {
      await drain(res);
      return null;
    }
    if (res.status !== 200) {
      await drain(res);
      throw failure(res, `GET ${key}?multipart-manifest=get`);
    }
    if (!isSlo(res)) {
      await drain(res);
      return [];
    }
    return this.parseListing(res);
  }

  /** The body of a `?multipart-manifest=get` answer for an SLO, as keys in this container. */
  private async parseListing(res: Response): Promise<SloEntry[]> {
    const listing = (await res.json()) as { name: string; bytes: number; hash: string; sub_slo?: boolean; range?: string }[];
    const prefix = `/${this.opts.container}/`;
    return listing.map((seg) => {
      const name = decodeURIComponent(seg.name);
      const path = name.startsWith(prefix) ? name.slice(prefix.length) : name.replace(/^\//, '');
      return { path, bytes: seg.bytes, hash: seg.hash, subSlo: !!seg.sub_slo, ranged: seg.range !== undefined };
    });
  }

  /** A Swift temp URL (HMAC-SHA256 over method, expiry and the decoded object path) for GET. */
  async signedUrl(key: string, seconds: number): Promise<string | null> {
    checkKey(key);
    if (!this.opts.tempUrlKey) return null;
    const session = await this.token();
    const base = new URL(session.storageUrl);
    const expires = Math.floor(Date.now() / 1000) + seconds;
    const path = `${decodeURIComponent(base.pathname)}/${this.opts.container}/${key}`;
    const sig = createHmac('sha256', this.opts.tempUrlKey).update(`GET\n${expires}\n${path}`).digest('hex');
    return `${session.storageUrl}/${encodeURIComponent(this.opts.container)}/${encodeKey(key)}?temp_url_sig=${sig}&temp_url_expires=${expires}`;
  }

  async put(key: string, body: Readable | Buffer, opts: PutOptions = {}): Promise<StoredObject> {
    checkKey(key);
    const headers: Record<string, string> = { 'Content-Type': opts.contentType ?? 'application/octet-stream' };
    let sent: () => number;
    let payload: Body;
    let md5 = opts.md5;
    let watch: IdleWatch | undefined;
    if (Buffer.isBuffer(body)) {
      if (opts.size !== undefined && body.length !== opts.size) throw new SizeMismatch(key, opts.size, body.length);
      // Small objects (records, manifests, links): hash here, so Swift refuses bytes that changed on the way.
      md5 ??= createHash('md5').update(body).digest('hex');
      headers['Content-Length'] = String(body.length);
      payload = body;
      sent = () => body.length;
    } else {
      watch = new IdleWatch(`PUT ${key}`, this.timeoutMs);
      const counter = countBytes(key, opts.size, watch);
      if (opts.size !== undefined) headers['Content-Length'] = String(opts.size);
      body.on('error', (err) => counter.destroy(err));
      payload = body.pipe(counter);
      sent = () => counter.bytes;
    }
    if (md5) headers.ETag = md5;
    if (opts.ifAbsent) headers['If-None-Match'] = '*';
    const signal = watch ? AbortSignal.any([watch.signal, ...(opts.signal ? [opts.signal] : [])]) : opts.signal;
    let res: Response;
    try {
      res = await this.call({ method: 'PUT', key, headers, body: payload, signal });
      await drain(res);
    } finally {
      watch?.stop();
    }
    if (res.status === 412 && opts.ifAbsent) throw new AlreadyExists(key);
    if (res.status === 422) throw new ChecksumMismatch(key, md5 ?? '', 'refused by Swift (422)');
    // 202: a concurrent write with a newer timestamp already replaced ours (last writer wins, as on a filesystem).
    if (res.status === 202) return { size: sent() };
    if (res.status !== 201) throw failure(res, `PUT ${key}`);
    const etag = unquote(res.headers.get('etag'));
    if (md5 && etag !== md5) {
      await this.delete(key);
      throw new ChecksumMismatch(key, md5, etag ?? '');
    }
    return { size: sent(), md5: etag };
  }

  /**
   * A whole object is asked for with `?multipart-manifest=get`: a plain object answers with its bytes, an SLO with
   * its segment list, whose segments are then read directly, in order. Read that way an SLO costs Swift about two
   * thirds of the CPU it spends serving it through its SLO middleware (measured here: 2.4-2.6 against 3.2-4.6 CPU-s
   * for 512 MiB), and small segments are not throttled. Each segment is checked against the manifest's size and md5
   * (its ETag) before its first byte is passed on.
   */
  async get(key: string, range?: ByteRange): Promise<{ body: Readable; size: number }> {
    checkKey(key);
    if (range) return this.getBytes(key, range);
    const watch = new IdleWatch(`GET ${key}`, this.timeoutMs);
    let res: Response;
    try {
      res = await this.call({ method: 'GET', key, query: { 'multipart-manifest': 'get' }, signal: watch.signal });
    } catch (err) {
      watch.stop();
      throw err;
    }
    if (res.status !== 200 || !isSlo(res)) return this.streamed(key, res, watch);
    let segments: SloEntry[];
    try {
      segments = await this.parseListing(res);
    } finally {
      watch.stop();
    }
    // Ranged entries are not written by Berth; such a manifest is read through Swift's middleware.
    if (segments.some((seg) => seg.ranged)) return this.getBytes(key);
    const size = segments.reduce((n, seg) => n + seg.bytes, 0);
    return { body: this.segmentBytes(segments), size };
  }

  /** A plain GET (through Swift's SLO middleware for an SLO), optionally of a range. */
  private async getBytes(key: string, range?: ByteRange): Promise<{ body: Readable; size: number }> {
    const headers: Record<string, string> = range ? { Range: `bytes=${range.start}-${range.end}` } : {};
    // The body streams for as long as the reader wants; what is bounded is a stall.
    const watch = new IdleWatch(`GET ${key}`, this.timeoutMs);
    let res: Response;
    try {
      res = await this.call({ method: 'GET', key, headers, signal: watch.signal });
    } catch (err) {
      watch.stop();
      throw err;
    }
    return this.streamed(key, res, watch, range);
  }

  private async streamed(key: string, res: Response, watch: IdleWatch, range?: ByteRange): Promise<{ body: Readable; size: number }> {
    if (res.status !== 200 && res.status !== 206) {
      watch.stop();
      await drain(res);
      if (res.status === 404) throw new PathNotFound(key);
      throw failure(res, `GET ${key}`);
    }
    if (range && res.status !== 206) {
      watch.stop();
      res.body?.resume();
      throw new DriverError(`GET ${key}: Swift ignored the range`);
    }
    const size = range ? range.end - range.start + 1 : Number(res.headers.get('content-length'));
    const body = new Transform({
      transform(chunk: Buffer, _enc, done) {
        watch.touch();
        done(null, chunk);
      },
    });
    pipeline(res.body as unknown as Readable, body, () => watch.stop());
    return { body, size };
  }

  /**
   * The bytes of an SLO's segments in order, each segment's body piped on (no per-piece promise); a reader that
   * stops early cancels the request in flight. A segment is requested when the one before it has ended, not
   * earlier: a request opened ahead would sit idle for as long as a slow client takes over a whole segment.
   */
  private segmentBytes(segments: SloEntry[]): Readable {
    const out = new PassThrough({ highWaterMark: 1 << 20 });
    let current: IdleWatch | undefined;
    out.once('close', () => current?.cancel());
    const run = async () => {
      for (const seg of segments) {
        if (out.destroyed) return;
        const { res, watch } = await this.openSegment(seg);
        current = watch;
        if (out.destroyed) return watch.cancel();
        const body = res.body as unknown as Readable;
        let got = 0;
        body.on('data', (chunk: Buffer) => {
          watch.touch();
          got += chunk.length;
        });
        body.pipe(out, { end: false });
        await finished(body);
        body.unpipe(out);
        watch.stop();
        if (got !== seg.bytes) throw new SizeMismatch(seg.path, seg.bytes, got);
      }
      out.end();
    };
    run().catch((err) => out.destroy(err));
    return out;
  }

  /** Start reading one segment; refuses one whose size or md5 differs from what the manifest recorded. */
  private async openSegment(seg: SloEntry): Promise<{ res: Response; watch: IdleWatch }> {
    const watch = new IdleWatch(`GET ${seg.path}`, this.timeoutMs);
    let res: Response;
    try {
      res = await this.call({ method: 'GET', key: seg.path, signal: watch.signal });
    } catch (err) {
      watch.stop();
      throw err;
    }
    const problem =
      res.status === 404
        ? new PathNotFound(seg.path)
        : res.status !== 200
          ? failure(res, `GET ${seg.path}`)
          : Number(res.headers.get('content-length')) !== seg.bytes
            ? new SizeMismatch(seg.path, seg.bytes, Number(res.headers.get('content-length')))
            : !seg.subSlo && unquote(res.headers.get('etag')) !== seg.hash
              ? new ChecksumMismatch(seg.path, seg.hash, unquote(res.headers.get('etag')) ?? '')
              : null;
    if (problem) {
      watch.cancel();
      res.body?.resume();
      throw problem;
    }
    return { res, watch };
  }

  async read(key: string): Promise<Buffer> {
    checkKey(key);
    for (let attempt = 0; ; attempt++) {
      const res = await this.call({ method: 'GET', key });
      if (res.status === 404) {
        await drain(res);
        throw new PathNotFound(key);
      }
      if (res.status !== 200) {
        await drain(res);
        throw failure(res, `GET ${key}`);
      }
      const data = Buffer.from(await res.arrayBuffer());
      // A plain object's ETag is the md5 of its bytes: records and manifests are checked on the way in too.
      const etag = res.headers.get('x-static-large-object') === 'True' ? undefined : unquote(res.headers.get('etag'));
      const md5 = etag && createHash('md5').update(data).digest('hex');
      if (!etag || md5 === etag) return data;
      if (attempt >= 1) throw new ChecksumMismatch(key, etag, md5 ?? '');
    }
  }

  async stat(key: string): Promise<ObjectInfo | null> {
    checkKey(key);
    const res = await this.call({ method: 'HEAD', key });
    await drain(res);
    if (res.status === 404) return null;
    if (res.status !== 200) throw failure(res, `HEAD ${key}`);
    return { path: key, size: Number(res.headers.get('content-length')), modified: modifiedOf(res) };
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    checkKey(prefix);
    let marker = '';
    for (;;) {
      const pageSize = this.opts.listPageSize ?? LIST_PAGE;
      const query: Record<string, string> = { format: 'json', prefix: `${prefix}/`, limit: String(pageSize) };
      if (marker) query.marker = marker;
      const res = await this.call({ method: 'GET', query });
      if (res.status === 204 || res.status === 404) {
        await drain(res);
        return;
      }
      if (res.status !== 200) {
        await drain(res);
        throw failure(res, `list ${prefix}`);
      }
      const page = (await res.json()) as { name: string; bytes: number; last_modified: string }[];
      for (const o of page) yield { path: o.name, size: o.bytes, modified: new Date(`${o.last_modified}Z`) };
      if (page.length < pageSize) return;
      marker = page[page.length - 1].name;
    }
  }

  /** Deletes an SLO with its segments (Swift's multipart delete), or a plain object. */
  async delete(key: string): Promise<void> {
    checkKey(key);
    const res = await this.call({
      method: 'DELETE',
      key,
      query: { 'multipart-manifest': 'delete' },
      headers: { Accept: 'application/json' },
    });
    if (res.status === 404) return void (await drain(res));
    if (res.status !== 200) {
      await drain(res);
      if (res.status === 204) return; // a Swift without SLO deleted it as a plain object
      throw failure(res, `DELETE ${key}`);
    }
    // Multipart delete always answers 200; the outcome is in the body.
    const outcome = (await res.json()) as { 'Response Status'?: string; Errors?: [string, string][] };
    const status = outcome['Response Status'] ?? '';
    if (status.startsWith('400') && outcome.Errors?.some(([, why]) => /not an slo manifest/i.test(why))) return this.deletePlain(key);
    if (!status.startsWith('200') || (outcome.Errors?.length ?? 0) > 0) {
      throw new DriverError(`DELETE ${key}: ${status} ${JSON.stringify(outcome.Errors ?? [])}`, true);
    }
  }

  /** Swift has no rename: a server-side copy (its ETag checked against the source's), then a delete. */
  async move(src: string, dst: string, opts: MoveOptions = {}): Promise<StoredObject> {
    checkKey(src);
    checkKey(dst);
    if (opts.ifAbsent && (await this.stat(dst))) throw new AlreadyExists(dst);
    const head = await this.call({ method: 'HEAD', key: src });
    await drain(head);
    if (head.status === 404) throw new PathNotFound(src);
    if (head.status !== 200) throw failure(head, `HEAD ${src}`);
    const slo = isSlo(head);
    const copy = await this.call({
      method: 'PUT',
      key: dst,
      // An SLO moves as its manifest; its segments stay where they are.
      query: slo ? { 'multipart-manifest': 'get' } : undefined,
      headers: { 'X-Copy-From': `/${encodeURIComponent(this.opts.container)}/${encodeKey(src)}`, 'Content-Length': '0' },
      timeoutMs: COPY_TIMEOUT_MS,
    });
    await drain(copy);
    if (copy.status === 404) throw new PathNotFound(src);
    // 202: a concurrent write to dst with a newer timestamp won. For a create-only move that is another creator
    // getting there first (two checks passed at once); the source stays, as AlreadyExists promises.
    if (copy.status === 202 && opts.ifAbsent) throw new AlreadyExists(dst);
    if (copy.status !== 201) throw failure(copy, `copy ${src} to ${dst}`);
    const etag = unquote(copy.headers.get('etag'));
    const sourceEtag = unquote(head.headers.get('etag'));
    if (etag !== sourceEtag) {
      await this.deleteQuietly(dst, false);
      throw new ChecksumMismatch(dst, sourceEtag ?? '', etag ?? '');
    }
    await this.deletePlain(src);
    return { size: Number(head.headers.get('content-length')), md5: slo ? undefined : etag };
  }

  private async deletePlain(key: string): Promise<void> {
    const res = await this.call({ method: 'DELETE', key });
    await drain(res);
    if (res.status !== 204 && res.status !== 404) throw failure(res, `DELETE ${key}`);
  }

  /**
   * Join parts with an SLO manifest. Swift itself checks, atomically with the manifest write, that each segment
   * exists with the recorded size and md5 (a mismatch is a 400 naming the segment); the manifest's ETag is then
   * checked against the md5 of the segment md5s. Runs of small parts are merged first (Swift throttles GETs of
   * SLOs with more than 10 segments under 1 MiB) and more than 1000 segments are nested. Objects derived from the
   * parts live in the parts' own directory, and the top manifest is created only if `dst` is absent: two joins
   * of one blob racing each other (two uploads of one digest) leave one manifest and the loser's parts removed.
   */
  async concat(dst: string, parts: Part[]): Promise<StoredObject> {
    checkKey(dst);
    for (const p of parts) checkKey(p.path);
    const empty = parts.filter((p) => p.size === 0);
    const data = parts.filter((p) => p.size > 0).map(withMd5);
    for (const p of empty) {
      const st = await this.stat(p.path);
      if (!st) throw new PathNotFound(p.path);
      if (st.size !== 0) throw new SizeMismatch(p.path, 0, st.size);
    }
    if (data.length === 0) {
      const stored = await this.put(dst, Buffer.alloc(0));
      for (const p of empty) await this.delete(p.path);
      return stored;
    }
    const dir = data[0].path.slice(0, data[0].path.lastIndexOf('/'));
    if (!data.every((p) => p.path.lastIndexOf('/') === dir.length && p.path.startsWith(`${dir}/`))) {
      throw new DriverError(`parts of ${dst} are not in one directory`);
    }
    const mergePlan = planMerges(dir, data);
    const merged: Required<Part>[] = [];
    let plan: ReturnType<typeof planManifests> | undefined;
    try {
      for (const m of mergePlan.merges) merged.push(await this.merge(m.path, m.parts));
      const segments = mergePlan.segments.map((s) =>
        'merge' in s ? { path: merged[s.merge].path, etag: merged[s.merge].md5, size: merged[s.merge].size } : s,
      );
      plan = planManifests(dir, segments, this.opts.maxManifestSegments);
      for (const sub of plan.subManifests) await this.putManifest(sub.path, sub.segments);
      const written = await this.putManifest(dst, plan.top, { ifAbsent: true });
      if (written === 'exists') return await this.settleLostJoin(dst, dir);
      // The merged originals (plain objects) are no longer referenced by anything.
      await inParallel([...mergePlan.merges.flatMap((m) => m.parts), ...empty], PARALLEL_REQUESTS, (p) => this.deletePlain(p.path));
      return { size: written };
    } catch (err) {
      for (const m of merged) await this.deleteQuietly(m.path);
      for (const sub of plan?.subManifests ?? []) await this.deleteQuietly(sub.path, false);
      throw err;
    }
  }

  /**
   * Another join of `dst` won the race: its manifest stays. Ours (its parts, merged parts and sub-manifests, all in
   * `dir`) is removed unless the manifest there is our own from an earlier attempt of this commit.
   */
  private async settleLostJoin(dst: string, dir: string): Promise<StoredObject> {
    const listing = await this.sloListing(dst);
    if (listing === null) throw new PathNotFound(dst);
    if (!listing.some((seg) => seg.path.startsWith(`${dir}/`))) {
      const leftovers: string[] = [];
      for await (const o of this.list(dir)) leftovers.push(o.path);
      await inParallel(leftovers, PARALLEL_REQUESTS, (key) => this.deleteQuietly(key, false));
    }
    if (listing.length === 0) return { size: (await this.stat(dst))?.size ?? 0 };
    return { size: listing.reduce((n, seg) => n + seg.bytes, 0) };
  }

  private async deleteQuietly(key: string, withSegments = true): Promise<void> {
    try {
      if (withSegments) await this.delete(key);
      else await this.deletePlain(key);
    } catch {
      // best effort: prune removes what is left under the blob's directory
    }
  }

  /** Copy small parts into one object through this process, checking each part's md5 on the way. */
  private async merge(path: string, parts: Required<Part>[]): Promise<Required<Part>> {
    const total = parts.reduce((n, p) => n + p.size, 0);
    // Parts are under 1 MiB each: read a few ahead, in order, to hide the per-request latency.
    const reads = new Map<number, Promise<Buffer>>();
    const readPart = (i: number) =>
      this.read(parts[i].path).then((data) => {
        const part = parts[i];
        if (data.length !== part.size) throw new SizeMismatch(part.path, part.size, data.length);
        const md5 = createHash('md5').update(data).digest('hex');
        if (md5 !== part.md5) throw new ChecksumMismatch(part.path, part.md5, md5);
        return data;
      });
    const ahead = (i: number) => {
      if (i < parts.length && !reads.has(i)) {
        const p = readPart(i);
        p.catch(() => {}); // observed in order below
        reads.set(i, p);
      }
    };
    async function* bytes() {
      for (let i = 0; i < parts.length; i++) {
        for (let j = i; j < i + PARALLEL_REQUESTS; j++) ahead(j);
        yield await reads.get(i)!;
        reads.delete(i);
      }
    }
    const md5 = createHash('md5');
    const source = Readable.from(bytes()).pipe(new Transform({ transform(c: Buffer, _e, done) { md5.update(c); done(null, c); } }));
    const stored = await this.put(path, source, { size: total });
    const expected = md5.digest('hex');
    if (stored.md5 !== expected) {
      await this.deleteQuietly(path);
      throw new ChecksumMismatch(path, expected, stored.md5 ?? '');
    }
    return { path, size: total, md5: expected };
  }

  /** Returns the joined size, or 'exists' when `ifAbsent` found an object at `key` (or a newer write won). */
  private async putManifest(key: string, segments: Segment[], opts: { ifAbsent?: boolean } = {}): Promise<number | 'exists'> {
    const manifest = segments.map((s) => ({ path: `/${this.opts.container}/${s.path}`, etag: s.etag, size_bytes: s.size }));
    const expected = sloEtag(segments);
    const res = await this.call({
      method: 'PUT',
      key,
      query: { 'multipart-manifest': 'put' },
      headers: { 'Content-Type': 'application/octet-stream', ETag: expected, ...(opts.ifAbsent ? { 'If-None-Match': '*' } : {}) },
      body: Buffer.from(JSON.stringify(manifest)),
      timeoutMs: COPY_TIMEOUT_MS,
    });
    const text = await res.text();
    if (res.status === 400) throw manifestError(text, segments, this.opts.container);
    if (res.status === 422) throw new ChecksumMismatch(key, expected, 'SLO etag refused by Swift (422)');
    // 412: the object exists; 202: a concurrent write with a newer timestamp replaced ours.
    if (opts.ifAbsent && (res.status === 412 || res.status === 202)) return 'exists';
    if (res.status !== 201) throw failure(res, `SLO manifest ${key}`);
    const etag = unquote(res.headers.get('etag'));
    if (etag !== expected) {
      await this.deleteQuietly(key, false);
      throw new ChecksumMismatch(key, expected, etag ?? '');
    }
    return segments.reduce((n, s) => n + s.size, 0);
  }

  async close(): Promise<void> {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }

  // --- HTTP ---

  private async token(force = false): Promise<Session> {
    if (!force && this.session && this.session.expiresAt - TOKEN_MARGIN_MS > Date.now()) return this.session;
    this.loggingIn ??= login(this.opts.auth, this.agent)
      .then((s) => (this.session = s))
      .finally(() => (this.loggingIn = undefined));
    try {
      return await this.loggingIn;
    } catch (err) {
      if (err instanceof AuthError) throw new DriverError(`Swift login failed: ${err.message}`, err.retryable);
      throw err;
    }
  }

  private readonly agent = (url: URL) => (url.protocol === 'https:' ? this.httpsAgent : this.httpAgent);

  private url(session: Session, call: Call): string {
    let url = `${session.storageUrl}/${encodeURIComponent(this.opts.container)}`;
    if (call.key !== undefined) url += `/${encodeKey(call.key)}`;
    if (call.query) url += `?${new URLSearchParams(call.query).toString()}`;
    return url;
  }

  /**
   * One request with the current token. Requests whose body can be sent again are retried on network errors and
   * 5xx, and once after a 401 with a fresh login. A streamed body cannot be replayed: its failures are final.
   */
  private async call(call: Call): Promise<Response> {
    const replayable = !(call.body instanceof Readable);
    let reauthenticated = false;
    for (let attempt = 0; ; attempt++) {
      const session = await this.token();
      // Streamed calls bring their own stall watch in `signal`; every other call gets a deadline.
      const timeout = call.timeoutMs ?? (call.signal ? undefined : this.timeoutMs);
      const signals = [call.signal, timeout ? AbortSignal.timeout(timeout) : undefined].filter((s): s is AbortSignal => !!s);
      const init: RequestInit = {
        method: call.method,
        headers: { ...call.headers, 'X-Auth-Token': session.token, ...transactionHeader() },
        body: call.body as RequestInit['body'],
        agent: this.agent,
        signal: signals.length ? (AbortSignal.any(signals) as RequestInit['signal']) : undefined,
        compress: false,
      };
      let res: Response;
      try {
        res = await fetch(this.url(session, call), init);
      } catch (err) {
        if (call.signal?.aborted || !replayable || attempt >= RETRY_DELAYS_MS.length) {
          throw new DriverError(`Swift ${call.method} ${call.key ?? ''} failed: ${(err as Error).message}`, true, { cause: err });
        }
        await sleep(RETRY_DELAYS_MS[attempt]);
        continue;
      }
      if (res.status === 401) {
        await drain(res);
        this.session = undefined;
        if (!replayable || reauthenticated) throw new DriverError(`Swift refused the token for ${call.method} ${call.key ?? ''}`, true);
        reauthenticated = true;
        await this.token(true);
        attempt--;
        continue;
      }
      if (RETRYABLE_STATUS.has(res.status) && replayable && attempt < RETRY_DELAYS_MS.length) {
        await drain(res);
        await sleep(RETRY_DELAYS_MS[attempt]);
        continue;
      }
      return res;
    }
  }
}

/** One entry of an SLO manifest, its path as a key in this container. */
interface SloEntry {
  path: string;
  bytes: number;
  hash: string;
  subSlo: boolean;
  /** The entry names a byte range of its object (Berth never writes these). */
  ranged: boolean;
}

/** Swift checks each joined part against the md5 recorded when it was written: a part without one cannot join. */
function withMd5(part: Part): Required<Part> {
  if (part.md5 === undefined) throw new DriverError(`part ${part.path} has no recorded md5`);
  return part as Required<Part>;
}

const isSlo = (res: Response) => res.headers.get('x-static-large-object') === 'True';

/** Keys as the filesystem driver accepts them, so both backends refuse the same things. */
function checkKey(key: string): void {
  const bad =
    !key ||
    key.startsWith('/') ||
    key.endsWith('/') ||
    key.includes('\0') ||
    Buffer.byteLength(key) > MAX_KEY_BYTES ||
    key.split('/').some((p) => p === '' || p === '.' || p === '..');
  if (bad) throw new DriverError(`bad key: ${JSON.stringify(key)}`);
}

function encodeKey(key: string): string {
  return key.split('/').map(encodeURIComponent).join('/');
}

function unquote(etag: string | null): string | undefined {
  return etag?.replace(/^"|"$/g, '').toLowerCase();
}

function modifiedOf(res: Response): Date {
  const ts = Number(res.headers.get('x-timestamp'));
  if (Number.isFinite(ts) && ts > 0) return new Date(ts * 1000);
  return new Date(res.headers.get('last-modified') ?? 0);
}

async function drain(res: Response): Promise<void> {
  try {
    await res.arrayBuffer();
  } catch {
    // the connection is discarded either way
  }
}

function failure(res: Response, what: string): DriverError {
  return new DriverError(`Swift ${what}: ${res.status} ${res.statusText}`, res.status >= 500 || res.status === 429 || res.status === 408);
}

/** Counts bytes on their way to Swift and fails the request if the body is not the declared size. */
function countBytes(key: string, size: number | undefined, watch: IdleWatch): Transform & { bytes: number } {
  const t = new Transform({
    transform(chunk: Buffer, _enc, done) {
      watch.touch();
      t.bytes += chunk.length;
      if (size !== undefined && t.bytes > size) return done(new SizeMismatch(key, size, t.bytes));
      done(null, chunk);
    },
    flush(done) {
      if (size !== undefined && t.bytes !== size) return done(new SizeMismatch(key, size, t.bytes));
      done();
    },
  }) as Transform & { bytes: number };
  t.bytes = 0;
  return t;
}

/** Swift's SLO validation errors ("<path>, Etag Mismatch") as driver errors naming the part. */
function manifestError(text: string, segments: Segment[], container: string): Error {
  const line = text.split('\n').find((l) => l.includes(', '));
  const [where, why = text.trim()] = line ? [line.slice(0, line.lastIndexOf(', ')), line.slice(line.lastIndexOf(', ') + 2)] : ['', text.trim()];
  const path = where.replace(new RegExp(`^/?${container.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/`), '');
  const seg = segments.find((s) => s.path === path);
  if (/etag mismatch/i.test(why)) return new ChecksumMismatch(path, seg?.etag ?? '', 'a different md5 (Swift refused the SLO)');
  if (/size mismatch/i.test(why)) return new SizeMismatch(path, seg?.size ?? -1, -1);
  if (/404/.test(why)) return new PathNotFound(path);
  return new DriverError(`Swift refused the SLO manifest: ${why.slice(0, 200)}`);
}

async function inParallel<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Aborts a streamed request when no byte has moved for `ms` (Swift's own client_timeout is 60 s). */
class IdleWatch {
  private readonly controller = new AbortController();
  private readonly timer: NodeJS.Timeout;
  readonly signal = this.controller.signal;

  constructor(what: string, ms: number) {
    this.timer = setTimeout(() => this.controller.abort(new DriverError(`Swift ${what}: no progress for ${ms / 1000} s`, true)), ms);
    this.timer.unref();
  }
  touch(): void {
    this.timer.refresh();
  }
  stop(): void {
    clearTimeout(this.timer);
  }
  /** Abort the request now (its reader went away). */
  cancel(): void {
    this.stop();
    this.controller.abort(new DriverError('read cancelled'));
  }
}

/** Swift appends X-Trans-Id-Extra to its transaction id, so its logs name the Berth request behind each call. */
function transactionHeader(): Record<string, string> {
  const suffix = transactionSuffix();
  return suffix ? { 'X-Trans-Id-Extra': suffix } : {};
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
