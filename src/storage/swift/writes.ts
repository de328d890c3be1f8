/**
 * Writing to Swift: objects (their md5 sent so Swift refuses other bytes), deletes (an SLO with its segments),
 * moves (a server-side copy whose ETag is checked), and joins (an SLO manifest, after small parts are merged and
 * long lists nested; see slo.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable, Transform } from 'node:stream';
import type { Response } from 'node-fetch';
import { forEachLimited } from '../../util/concurrency.js';
import { AlreadyExists, ChecksumMismatch, DriverError, PathNotFound, SizeMismatch, type MoveOptions, type Part, type PutOptions, type StoredObject } from '../driver.js';
import { COPY_TIMEOUT_MS, PARALLEL_REQUESTS, checkKey, drain, encodeKey, failure, isSlo, unquote, type IdleWatch, type SwiftClient } from './client.js';
import type { SwiftReads } from './reads.js';
import { planManifests, planMerges, sloEtag, type Segment } from './slo.js';

export class SwiftWrites {
  constructor(
    private readonly client: SwiftClient,
    private readonly reads: SwiftReads,
    /** Segments per SLO manifest before nesting; Swift's limit (1000) unless a test wants nesting sooner. */
    private readonly maxManifestSegments?: number,
  ) {}

  private get container(): string {
    return this.client.container;
  }

  async put(key: string, body: Readable | Buffer, opts: PutOptions = {}): Promise<StoredObject> {
    checkKey(key);
    const headers: Record<string, string> = { 'Content-Type': opts.contentType ?? 'application/octet-stream' };
    let md5 = opts.md5;
    if (Buffer.isBuffer(body)) {
      if (opts.size !== undefined && body.length !== opts.size) throw new SizeMismatch(key, opts.size, body.length);
      // Small objects (records, manifests, links): hash here, so Swift refuses bytes that changed on the way.
      md5 ??= createHash('md5').update(body).digest('hex');
    }
    if (md5) headers.ETag = md5;
    if (opts.ifAbsent) headers['If-None-Match'] = '*';
    let res: Response;
    let sent: () => number;
    if (Buffer.isBuffer(body)) {
      headers['Content-Length'] = String(body.length);
      res = await this.client.call({ method: 'PUT', key, headers, body, signal: opts.signal });
      await drain(res);
      sent = () => body.length;
    } else {
      if (opts.size !== undefined) headers['Content-Length'] = String(opts.size);
      let counter: ReturnType<typeof countBytes> | undefined;
      const { res: answer, watch } = await this.client.streaming(`PUT ${key}`, (w) => {
        counter = countBytes(key, opts.size, w);
        body.on('error', (err) => counter!.destroy(err));
        return { method: 'PUT', key, headers, body: body.pipe(counter), signal: opts.signal };
      });
      try {
        await drain(answer);
      } finally {
        watch.stop();
      }
      res = answer;
      sent = () => counter!.bytes;
    }
    // 202 to a create: a write with a newer timestamp is there, so this create did not happen first.
    if ((res.status === 412 || res.status === 202) && opts.ifAbsent) throw new AlreadyExists(key);
    if (res.status === 422) throw new ChecksumMismatch(key, md5 ?? '', 'refused by Swift (422)');
    // 202: a concurrent write with a newer timestamp already replaced ours (last writer wins, as on a filesystem).
    if (res.status === 202) return { size: sent() };
    if (res.status !== 201) throw failure(res, `PUT ${key}`, this.container);
    const etag = unquote(res.headers.get('etag'));
    if (md5 && etag !== md5) {
      await this.delete(key);
      throw new ChecksumMismatch(key, md5, etag ?? '');
    }
    return { size: sent(), md5: etag };
  }

  /** Deletes an SLO with its segments (Swift's multipart delete), or a plain object. */
  async delete(key: string): Promise<void> {
    checkKey(key);
    const res = await this.client.call({ method: 'DELETE', key, query: { 'multipart-manifest': 'delete' }, headers: { Accept: 'application/json' } });
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

  /**
   * Swift has no rename: a server-side copy (its ETag checked against the source's), then a delete. A create-only
   * move answers AlreadyExists only with what it saw at `dst`: with several commits of one digest at once, an object
   * a create-only check found can be missing for the next HEAD for a moment (that HEAD met another commit's overwrite
   * removing the file it was about to open), and then the move is tried again; the source is still in place.
   */
  async move(src: string, dst: string, opts: MoveOptions = {}): Promise<StoredObject> {
    checkKey(src);
    checkKey(dst);
    if (!opts.ifAbsent) return this.copyAndDelete(src, dst, false);
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.copyAndDelete(src, dst, true);
      } catch (err) {
        if (!(err instanceof AlreadyExists)) throw err;
        const existing = err.existing ?? (await this.reads.stat(dst));
        if (existing) throw new AlreadyExists(dst, existing);
        if (attempt >= 3) throw err;
        await new Promise((r) => setTimeout(r, 100 * (attempt + 1)));
      }
    }
  }

  private async copyAndDelete(src: string, dst: string, ifAbsent: boolean): Promise<StoredObject> {
    const found = ifAbsent ? await this.reads.stat(dst) : null;
    if (found) throw new AlreadyExists(dst, found);
    const head = await this.client.call({ method: 'HEAD', key: src });
    await drain(head);
    if (head.status === 404) throw new PathNotFound(src);
    if (head.status !== 200) throw failure(head, `HEAD ${src}`);
    const slo = isSlo(head);
    const copy = await this.client.call({
      method: 'PUT',
      key: dst,
      // An SLO moves as its manifest; its segments stay where they are.
      query: slo ? { 'multipart-manifest': 'get' } : undefined,
      headers: { 'X-Copy-From': `/${encodeURIComponent(this.container)}/${encodeKey(src)}`, 'Content-Length': '0' },
      timeoutMs: COPY_TIMEOUT_MS,
    });
    await drain(copy);
    if (copy.status === 404) throw new PathNotFound(src);
    // 202: a concurrent write to dst with a newer timestamp won. For a create-only move that is another creator
    // getting there first (two checks passed at once); the source stays, as AlreadyExists promises.
    if (copy.status === 202 && ifAbsent) throw new AlreadyExists(dst);
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
      const st = await this.reads.stat(p.path);
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
    const tag = randomBytes(4).toString('hex');
    const mergePlan = planMerges(dir, data, tag);
    const merged: Required<Part>[] = [];
    let plan: ReturnType<typeof planManifests> | undefined;
    try {
      for (const m of mergePlan.merges) merged.push(await this.merge(m.path, m.parts));
      const segments = mergePlan.segments.map((s) =>
        'merge' in s ? { path: merged[s.merge].path, etag: merged[s.merge].md5, size: merged[s.merge].size } : s,
      );
      plan = planManifests(dir, segments, this.maxManifestSegments, tag);
      for (const sub of plan.subManifests) await this.putManifest(sub.path, sub.segments);
      const written = await this.putManifest(dst, plan.top, { ifAbsent: true });
      if (written === 'exists') {
        const ours = [...parts.map((p) => p.path), ...merged.map((m) => m.path), ...plan.subManifests.map((m) => m.path)];
        return await this.settleLostJoin(dst, dir, ours);
      }
      // The merged originals are read by nothing now, if they lie under dst's own directory (moved there for it).
      // Joined where an upload wrote them, another join of that directory (two racing past its seal) may read them
      // as they are: they stay, and go with the directory once its blob is deleted (prune-uploads.ts).
      if (dir.startsWith(`${dst.slice(0, dst.lastIndexOf('/'))}/`)) {
        await forEachLimited([...mergePlan.merges.flatMap((m) => m.parts), ...empty], PARALLEL_REQUESTS, (p) => this.deletePlain(p.path));
      }
      return { size: written };
    } catch (err) {
      for (const m of merged) await this.deleteQuietly(m.path);
      for (const sub of plan?.subManifests ?? []) await this.deleteQuietly(sub.path, false);
      throw err;
    }
  }

  private async deletePlain(key: string): Promise<void> {
    const res = await this.client.call({ method: 'DELETE', key });
    await drain(res);
    if (res.status !== 204 && res.status !== 404) throw failure(res, `DELETE ${key}`);
  }

  /**
   * Another join of `dst` won the race: its manifest stays. Ours (`ours`: the parts, merged parts and sub-manifests,
   * all in `dir`) is removed unless the manifest there is our own from an earlier attempt of this commit. Only
   * those objects: the directory may hold others (an upload's record, when the parts are joined where written).
   */
  private async settleLostJoin(dst: string, dir: string, ours: string[]): Promise<StoredObject> {
    const listing = await this.reads.sloListing(dst);
    if (listing === null) throw new PathNotFound(dst);
    const joinedElsewhere = !listing.some((seg) => seg.path.startsWith(`${dir}/`));
    if (joinedElsewhere) await forEachLimited(ours, PARALLEL_REQUESTS, (key) => this.deleteQuietly(key, false));
    if (listing.length === 0) return { size: (await this.reads.stat(dst))?.size ?? 0, joinedElsewhere };
    return { size: listing.reduce((n, seg) => n + seg.bytes, 0), joinedElsewhere };
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
      this.reads.read(parts[i].path).then((data) => {
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
    const manifest = segments.map((s) => ({ path: `/${this.container}/${s.path}`, etag: s.etag, size_bytes: s.size }));
    const expected = sloEtag(segments);
    const res = await this.client.call({
      method: 'PUT',
      key,
      query: { 'multipart-manifest': 'put' },
      headers: { 'Content-Type': 'application/octet-stream', ETag: expected, ...(opts.ifAbsent ? { 'If-None-Match': '*' } : {}) },
      body: Buffer.from(JSON.stringify(manifest)),
      timeoutMs: COPY_TIMEOUT_MS,
    });
    const text = await res.text();
    if (res.status === 400) throw manifestError(text, segments, this.container);
    if (res.status === 422) throw new ChecksumMismatch(key, expected, 'SLO etag refused by Swift (422)');
    // 412: the object exists; 202: a concurrent write with a newer timestamp replaced ours.
    if (opts.ifAbsent && (res.status === 412 || res.status === 202)) return 'exists';
    if (res.status !== 201) throw failure(res, `SLO manifest ${key}`, this.container);
    const etag = unquote(res.headers.get('etag'));
    if (etag !== expected) {
      await this.deleteQuietly(key, false);
      throw new ChecksumMismatch(key, expected, etag ?? '');
    }
    return segments.reduce((n, s) => n + s.size, 0);
  }
}

/** Swift checks each joined part against the md5 recorded when it was written: a part without one cannot join. */
function withMd5(part: Part): Required<Part> {
  if (part.md5 === undefined) throw new DriverError(`part ${part.path} has no recorded md5`);
  return part as Required<Part>;
}

/** Counts bytes on their way to Swift, keeps the stall watch alive, and fails a body of another declared size. */
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
