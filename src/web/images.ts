/**
 * What the pages show, read through the registry core: repositories, tags with their sizes and ages, and one
 * image's layers, config and referrers.
 *
 * The tags page is the one that could cost much (a read per tag, per manifest and per platform), so it reads what it
 * can from elsewhere. A tag's digest: the listing gives each tag object's md5 (Swift), which is the md5 of the digest
 * it holds, so it is matched against the digests already summarized; else the digest it held as of its listing's
 * modification time is remembered. A manifest's summary (content-addressed, so never stale): in memory, else in
 * the repository's stored summaries (summaries.ts, written when the manifest was pushed). A render is then one
 * listing, one read of the stored summaries where memory lacks some, and reads only for what neither holds (a tag
 * the listing gives no md5 for, a manifest pushed by a process without the page), 16 at a time. docs/web.md has
 * the figures.
 */
import { createHash } from 'node:crypto';
import { PathNotFound } from '../storage/driver.js';
import type { Registry } from '../registry/registry.js';
import type { Descriptor } from '../registry/manifest-doc.js';
import { MEDIA_TYPES } from '../registry/manifest-doc.js';
import { digestAlgorithm, parseRepoPath, paths, validDigest, validTag } from '../registry/paths.js';
import { forEachLimited } from '../util/concurrency.js';
import { SummaryStore } from './summaries.js';

/** Storage requests in flight for one page: enough to hide Swift's latency, too few to crowd pushes and pulls. */
const PAGE_CONCURRENCY = 16;
/** An index's platforms whose manifests are read for their sizes; a larger index shows the rest without one. */
export const MAX_PLATFORMS_READ = 32;
/** Configs larger than this are described, not read (real ones are a few KB). */
const MAX_CONFIG_READ = 256 * 1024;
export const TAGS_PER_PAGE = 50;
/** Entries of each cache (a summary or a tag is a few hundred bytes: some MB at most). */
const CACHE_ENTRIES = 20_000;

export interface RepositoryRow {
  name: string;
  tags: number;
  manifests: number;
  /** The newest tag or manifest write. */
  pushed?: Date;
}

export interface Platform {
  label: string;
  descriptor: Descriptor;
  /** Config and layers of the platform's image; undefined when not read (see MAX_PLATFORMS_READ) or unreadable. */
  size?: number;
}

export interface ManifestSummary {
  digest: string;
  mediaType: string;
  artifactType?: string;
  /** Config and layers; for an index the distinct blobs of the platforms read. */
  size?: number;
  platforms?: Platform[];
}

export interface TagRow {
  tag: string;
  pushed: Date;
  manifest?: ManifestSummary;
}

/** A tag as listed: its last write, and the md5 of the digest it holds where the listing gives one. */
export interface ListedTag {
  tag: string;
  pushed: Date;
  md5?: string;
}

export interface ImageDetail extends ManifestSummary {
  manifestSize: number;
  annotations?: Record<string, string>;
  subject?: string;
  config?: Descriptor;
  configSummary?: Record<string, string>;
  layers?: Descriptor[];
  referrers: Descriptor[];
}

type Doc = { config?: Descriptor; layers?: Descriptor[]; manifests?: Descriptor[]; annotations?: Record<string, string> };
const isIndex = (mediaType: string) => mediaType === MEDIA_TYPES.ociIndex || mediaType === MEDIA_TYPES.dockerList;

export class ImageReader {
  private readonly summaries = new Lru<ManifestSummary>(CACHE_ENTRIES);
  private readonly tagDigests = new Lru<{ modified: number; digest: string }>(CACHE_ENTRIES);

  private readonly store: SummaryStore;
  /** Repositories whose tags page this process rendered. */
  private readonly rendered = new Lru<true>(CACHE_ENTRIES);
  /** Pushed manifests being summarized (an index reads its platforms first). */
  private readonly summarizing = new Set<Promise<void>>();

  constructor(private readonly registry: Registry) {
    this.store = new SummaryStore(registry.driver);
    registry.manifests.observe((e) => {
      const work = this.pushed(e.ns, e.repo, e.digest, e.mediaType, e.body).catch(() => {});
      this.summarizing.add(work);
      void work.finally(() => this.summarizing.delete(work));
    });
    // A stopping process writes what it summarized; a test's storage is not removed under a late write.
    registry.onClose(() => this.settled());
  }

  /** A manifest just stored: its summary goes to memory and to the repository's stored summaries. */
  private async pushed(ns: string, repo: string, digest: string, mediaType: string, body: Buffer): Promise<void> {
    const doc = JSON.parse(body.toString('utf8')) as Doc & { artifactType?: string };
    const artifactType = typeof doc.artifactType === 'string' ? doc.artifactType : undefined;
    const summary = await this.summarize1(ns, digest, mediaType, doc, artifactType);
    if (summary.size === undefined) return;
    this.summaries.set(`${ns}/${digest}`, summary);
    this.store.add(ns, repo, [summary]);
  }

  /** Every pushed manifest's summary written (tests, and a registry closing). */
  async settled(): Promise<void> {
    await Promise.all(this.summarizing);
    return this.store.settled();
  }

  /** The namespace's repositories with counts, from one walk of its repository tree (what the catalog walks). */
  async repositories(ns: string): Promise<RepositoryRow[]> {
    const rows = new Map<string, RepositoryRow>();
    for await (const o of this.registry.driver.list(paths.repos(ns))) {
      const parsed = parseRepoPath(ns, o.path);
      if (!parsed || !parsed.rest.startsWith('_manifests/')) continue;
      const row = rows.get(parsed.repo) ?? { name: parsed.repo, tags: 0, manifests: 0 };
      if (parsed.rest.startsWith('_manifests/tags/')) row.tags++;
      else if (parsed.rest.startsWith('_manifests/revisions/')) row.manifests++;
      if (!row.pushed || o.modified > row.pushed) row.pushed = o.modified;
      rows.set(parsed.repo, row);
    }
    return [...rows.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  /** Every tag of the repository with the time it was last pushed, newest first (one listing). */
  async tags(ns: string, repo: string): Promise<ListedTag[]> {
    const prefix = paths.tags(ns, repo) + '/';
    const tags: ListedTag[] = [];
    for await (const o of this.registry.driver.list(paths.tags(ns, repo))) {
      const tag = o.path.slice(prefix.length);
      if (validTag(tag)) tags.push({ tag, pushed: o.modified, md5: o.md5 });
    }
    return tags.sort((a, b) => b.pushed.getTime() - a.pushed.getTime() || (a.tag < b.tag ? -1 : 1));
  }

  /**
   * The repository's stored summaries, read now (beside the listing, saving a round trip) where this process has
   * rendered none of its tags yet, so summarize will surely need them; else undefined (summarize reads them if it must).
   */
  prefetch(ns: string, repo: string): Promise<Map<string, ManifestSummary>> | undefined {
    if (this.rendered.has(`${ns}/${repo}`)) return undefined;
    return this.store.load(ns, repo).catch(() => new Map());
  }

  /** Summaries of the manifests the given tags name (a tag deleted meanwhile, or unreadable, has none). */
  async summarize(ns: string, repo: string, tags: ListedTag[], prefetched?: Promise<Map<string, ManifestSummary>>): Promise<TagRow[]> {
    this.rendered.set(`${ns}/${repo}`, true);
    const rows: TagRow[] = tags.map((t) => ({ tag: t.tag, pushed: t.pushed }));
    const digests = tags.map((t) => this.knownTag(ns, repo, t));
    let stored = new Map<string, ManifestSummary>();
    if (digests.some((d) => d === undefined || !this.summaries.has(`${ns}/${d}`))) {
      stored = await (prefetched ?? this.store.load(ns, repo).catch(() => stored));
      const byMd5 = new Map([...stored.keys()].map((d) => [md5(d), d]));
      tags.forEach((t, i) => {
        const digest = t.md5 === undefined ? undefined : byMd5.get(t.md5);
        if (digests[i] === undefined && digest !== undefined) {
          digests[i] = digest;
          this.tagDigests.set(`${ns}/${repo}:${t.tag}`, { modified: t.pushed.getTime(), digest });
        }
      });
    }
    const reads = new Map<string, Promise<ManifestSummary>>();
    const computed: ManifestSummary[] = [];
    await forEachLimited(rows.keys(), PAGE_CONCURRENCY, async (i) => {
      const row = rows[i];
      const digest = digests[i] ?? (await this.tagDigest(ns, repo, row.tag, row.pushed.getTime()).catch(() => undefined));
      if (digest === undefined) return;
      let summary = reads.get(digest);
      if (!summary) {
        const known = this.summaries.get(`${ns}/${digest}`) ?? stored.get(digest);
        if (known) this.summaries.set(`${ns}/${digest}`, known);
        summary = known
          ? Promise.resolve(known)
          : this.summary(ns, digest).then((s) => {
              if (s.size !== undefined) computed.push(s);
              return s;
            });
        reads.set(digest, summary);
      }
      row.manifest = await summary.catch(() => undefined);
    });
    this.store.add(ns, repo, computed);
    return rows;
  }

  /** The digest the tag held as of its listed modification time, where this process read it. */
  private knownTag(ns: string, repo: string, t: ListedTag): string | undefined {
    const known = this.tagDigests.get(`${ns}/${repo}:${t.tag}`);
    return known && known.modified === t.pushed.getTime() ? known.digest : undefined;
  }

  private async tagDigest(ns: string, repo: string, tag: string, modified: number): Promise<string | undefined> {
    const digest = (await this.registry.driver.read(paths.tag(ns, repo, tag))).toString('utf8').trim();
    if (!validDigest(digest)) return undefined;
    this.tagDigests.set(`${ns}/${repo}:${tag}`, { modified, digest });
    return digest;
  }

  private async summary(ns: string, digest: string): Promise<ManifestSummary> {
    const m = await this.verified(ns, digest);
    const summary = await this.summarize1(ns, digest, m.mediaType, m.doc, m.artifactType);
    if (summary.size !== undefined) this.summaries.set(`${ns}/${digest}`, summary);
    return summary;
  }

  /** A manifest's document from the namespace's blobs, only if its bytes hash to `digest`. */
  private async verified(ns: string, digest: string): Promise<{ mediaType: string; artifactType?: string; doc: Doc }> {
    const body = await this.registry.blobs.readSmall(ns, digest);
    const algorithm = digestAlgorithm(digest);
    if (`${algorithm}:${createHash(algorithm).update(body).digest('hex')}` !== digest) throw new PathNotFound(digest);
    const doc = JSON.parse(body.toString('utf8')) as Doc & { mediaType?: string; artifactType?: string };
    const mediaType = doc.mediaType ?? (Array.isArray(doc.manifests) ? MEDIA_TYPES.ociIndex : MEDIA_TYPES.ociManifest);
    const artifactType = typeof doc.artifactType === 'string' ? doc.artifactType : undefined;
    return { mediaType, artifactType, doc };
  }

  /** An image's size, or an index's platforms each with theirs and the total of their distinct blobs. */
  private async summarize1(ns: string, digest: string, mediaType: string, doc: Doc, artifactType?: string): Promise<ManifestSummary> {
    if (!isIndex(mediaType)) return { digest, mediaType, artifactType, size: imageSize(doc) };
    const platforms: Platform[] = (doc.manifests ?? []).map((d) => ({ label: platformLabel(d), descriptor: d }));
    const blobs = new Map<string, number>();
    let complete = platforms.length <= MAX_PLATFORMS_READ;
    await forEachLimited(platforms.slice(0, MAX_PLATFORMS_READ), PAGE_CONCURRENCY, async (p) => {
      const child = await this.verified(ns, p.descriptor.digest).catch(() => undefined);
      if (!child || isIndex(child.mediaType)) {
        complete = false;
        return;
      }
      p.size = imageSize(child.doc);
      for (const b of [child.doc.config, ...(child.doc.layers ?? [])]) if (b) blobs.set(b.digest, b.size);
    });
    const size = complete ? [...blobs.values()].reduce((a, b) => a + b, 0) : undefined;
    return { digest, mediaType, artifactType, size, platforms };
  }

  /** The referrers API's first page (bounded in count and bytes): the page shows at most what one API answer holds. */
  private async firstReferrers(ns: string, repo: string, digest: string): Promise<Descriptor[]> {
    const out: Descriptor[] = [];
    for await (const d of (await this.registry.manifests.referrersPage(ns, repo, digest)).entries) out.push(d);
    return out;
  }

  /** One manifest by tag or digest, through the API's own read: MANIFEST_UNKNOWN (a RegistryError) when there is none. */
  async image(ns: string, repo: string, reference: string): Promise<ImageDetail> {
    const m = await this.registry.manifests.get(ns, repo, reference);
    const doc = JSON.parse(m.body.toString('utf8')) as Doc;
    const [summary, referrers] = await Promise.all([this.summarize1(ns, m.digest, m.mediaType, doc, m.artifactType), this.firstReferrers(ns, repo, m.digest)]);
    const detail: ImageDetail = { ...summary, manifestSize: m.body.length, annotations: m.annotations, subject: m.subject, referrers };
    if (!isIndex(m.mediaType)) {
      detail.config = doc.config;
      detail.layers = doc.layers ?? [];
      if (doc.config && doc.config.size <= MAX_CONFIG_READ) detail.configSummary = await this.configSummary(ns, doc.config).catch(() => undefined);
    }
    return detail;
  }

  /** The fields of an image config people look for; only when its bytes match its digest. */
  private async configSummary(ns: string, config: Descriptor): Promise<Record<string, string> | undefined> {
    const body = await this.registry.blobs.readSmall(ns, config.digest);
    const algorithm = digestAlgorithm(config.digest);
    if (`${algorithm}:${createHash(algorithm).update(body).digest('hex')}` !== config.digest) return undefined;
    const c = JSON.parse(body.toString('utf8')) as {
      created?: unknown;
      os?: unknown;
      architecture?: unknown;
      variant?: unknown;
      config?: { Entrypoint?: unknown; Cmd?: unknown; WorkingDir?: unknown; User?: unknown; Labels?: unknown };
      history?: unknown;
    };
    const out: Record<string, string> = {};
    const put = (key: string, v: unknown) => {
      if (typeof v === 'string' && v !== '') out[key] = v;
      else if (Array.isArray(v) && v.length > 0) out[key] = JSON.stringify(v);
    };
    put('created', c.created);
    put('platform', [c.os, c.architecture, c.variant].filter((p) => typeof p === 'string' && p).join('/'));
    put('entrypoint', c.config?.Entrypoint);
    put('cmd', c.config?.Cmd);
    put('working dir', c.config?.WorkingDir);
    put('user', c.config?.User);
    if (Array.isArray(c.history)) out.history = `${c.history.length} steps`;
    const labels = c.config?.Labels;
    if (labels && typeof labels === 'object') {
      for (const [k, v] of Object.entries(labels)) if (typeof v === 'string') out[`label ${k}`] = v;
    }
    return out;
  }
}

/** A map that forgets its least recently used entries past `limit`. */
class Lru<V> {
  private readonly entries = new Map<string, V>();
  constructor(private readonly limit: number) {}
  has(key: string): boolean {
    return this.entries.has(key);
  }
  get(key: string): V | undefined {
    const v = this.entries.get(key);
    if (v !== undefined) {
      this.entries.delete(key);
      this.entries.set(key, v);
    }
    return v;
  }
  set(key: string, value: V): void {
    this.entries.delete(key);
    this.entries.set(key, value);
    if (this.entries.size > this.limit) this.entries.delete(this.entries.keys().next().value!);
  }
}

const md5 = (s: string) => createHash('md5').update(s).digest('hex');

function imageSize(doc: Doc): number {
  return (doc.config?.size ?? 0) + (doc.layers ?? []).reduce((n, l) => n + (l.size ?? 0), 0);
}

/** "linux/arm64/v8"; BuildKit's attestation manifests (platform unknown/unknown) are named for what they are. */
export function platformLabel(d: Descriptor): string {
  if (d.annotations?.['vnd.docker.reference.type'] === 'attestation-manifest') return 'attestation';
  const p = d.platform as { os?: unknown; architecture?: unknown; variant?: unknown } | undefined;
  const parts = [p?.os, p?.architecture, p?.variant].filter((x): x is string => typeof x === 'string' && x !== '');
  return parts.length > 0 ? parts.join('/') : 'unknown';
}

/** When prune expires a tag pushed at `pushed`: its age passes the namespace's expiration (prune.ts's rule). */
export function expiresAt(pushed: Date, expirationSeconds: number | undefined): Date | undefined {
  return expirationSeconds === undefined ? undefined : new Date(pushed.getTime() + expirationSeconds * 1000);
}
