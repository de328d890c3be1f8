/**
 * The tags page's summaries of a repository's manifests, kept in storage (paths.webSummary), so that a page of 50
 * tags costs a listing and one read rather than a read per tag, per manifest and per platform, also in a process
 * that has just started.
 *
 * An entry is keyed by digest and a summary is a function of the manifest's bytes, so an entry is never stale,
 * only possibly missing. Writers therefore take no lock: each merges what it has into what it reads and writes the
 * result. A write lost to a racing one (two processes, one repository, within a round trip) loses entries, which
 * the page computes again from the manifests and writes back. The process that stores a manifest writes its
 * summary (Manifests.observe), once per repository per FLUSH_DELAY_MS however many pushes; a page that had to
 * compute some writes them. Entries of pruned manifests age out: a write keeps the most recently written up to
 * MAX_OBJECT_BYTES.
 */
import { PathNotFound, type StorageDriver } from '../storage/driver.js';
import { paths, validDigest } from '../registry/paths.js';
import type { ManifestSummary, Platform } from './images.js';

/** Pushes to a repository within this time make one write of its summaries. */
const FLUSH_DELAY_MS = 1000;
/** About 2,000 images' entries (some 200 bytes each; an index's grows with its platforms). */
const MAX_OBJECT_BYTES = 512 * 1024;
/** An index of hundreds of platforms is summarized when shown, not stored. */
const MAX_ENTRY_BYTES = 16 * 1024;

type Stored = Omit<ManifestSummary, 'digest'>;

export class SummaryStore {
  /** Summaries waiting for their repository's write, by repository key. */
  private readonly pending = new Map<string, Map<string, ManifestSummary>>();
  private readonly flushing = new Map<string, Promise<void>>();

  constructor(private readonly driver: StorageDriver) {}

  /** The repository's stored summaries and those not yet written, by digest (empty where none could be read). */
  async load(ns: string, repo: string): Promise<Map<string, ManifestSummary>> {
    const out = await this.read(ns, repo);
    for (const [d, s] of this.pending.get(key(ns, repo)) ?? []) out.set(d, s);
    return out;
  }

  /** Remember summaries for the repository's next write (within FLUSH_DELAY_MS). */
  add(ns: string, repo: string, summaries: ManifestSummary[]): void {
    if (summaries.length === 0) return;
    const k = key(ns, repo);
    let waiting = this.pending.get(k);
    if (!waiting) {
      this.pending.set(k, (waiting = new Map()));
      setTimeout(() => void this.flush(ns, repo), FLUSH_DELAY_MS).unref();
    }
    for (const s of summaries) waiting.set(s.digest, s);
  }

  /** Every pending write done (tests, and a process about to stop). */
  async settled(): Promise<void> {
    const repos = [...this.pending.keys()].map((k) => k.split('\0') as [string, string]);
    await Promise.all([...repos.map(([ns, repo]) => this.flush(ns, repo)), ...this.flushing.values()]);
  }

  private async flush(ns: string, repo: string): Promise<void> {
    const k = key(ns, repo);
    const waiting = this.pending.get(k);
    if (!waiting) return;
    this.pending.delete(k);
    const write = (async () => {
      await this.flushing.get(k);
      const merged = await this.read(ns, repo);
      // Re-inserted last: the newest entries are the ones kept when the object is full.
      for (const [d, s] of waiting) {
        merged.delete(d);
        merged.set(d, s);
      }
      await this.driver.put(paths.webSummary(ns, repo), encode(merged), { contentType: 'application/json' });
    })()
      .catch(() => {}) // a cache: a failed write costs the next render some reads
      .finally(() => {
        if (this.flushing.get(k) === write) this.flushing.delete(k);
      });
    this.flushing.set(k, write);
    await write;
  }

  private async read(ns: string, repo: string): Promise<Map<string, ManifestSummary>> {
    let raw: Buffer;
    try {
      raw = await this.driver.read(paths.webSummary(ns, repo));
    } catch (err) {
      // Otherwise unreadable now: the page computes what it needs, and no write is made (it would drop what is stored).
      if (err instanceof PathNotFound) return new Map();
      throw err;
    }
    return decode(raw);
  }
}

const key = (ns: string, repo: string) => `${ns}\0${repo}`;

/** The newest entries that fit MAX_OBJECT_BYTES, each at most MAX_ENTRY_BYTES. */
function encode(entries: Map<string, ManifestSummary>): Buffer {
  const parts: string[] = [];
  let bytes = 0;
  for (const s of [...entries.values()].reverse()) {
    const { digest, ...rest } = s;
    const stored: Stored = { ...rest, platforms: rest.platforms?.map((p) => ({ label: p.label, size: p.size, descriptor: { mediaType: p.descriptor.mediaType, digest: p.descriptor.digest, size: p.descriptor.size } })) };
    const part = `${JSON.stringify(digest)}:${JSON.stringify(stored)}`;
    if (part.length > MAX_ENTRY_BYTES) continue;
    if (bytes + part.length > MAX_OBJECT_BYTES) break;
    parts.push(part);
    bytes += part.length + 1;
  }
  return Buffer.from(`{${parts.reverse().join(',')}}`);
}

/** The entries that have the shape encode writes; anything else (a damaged object) is skipped, not trusted. */
function decode(raw: Buffer): Map<string, ManifestSummary> {
  const out = new Map<string, ManifestSummary>();
  let doc: unknown;
  try {
    doc = JSON.parse(raw.toString('utf8'));
  } catch {
    return out;
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) return out;
  for (const [digest, v] of Object.entries(doc as Record<string, unknown>)) {
    const s = v as Partial<Stored> | null;
    if (!validDigest(digest) || !s || typeof s !== 'object' || typeof s.mediaType !== 'string') continue;
    if (!optional(s.size, 'number') || !optional(s.artifactType, 'string')) continue;
    let platforms: Platform[] | undefined;
    if (s.platforms !== undefined) {
      if (!Array.isArray(s.platforms) || !s.platforms.every(validPlatform)) continue;
      platforms = s.platforms;
    }
    out.set(digest, { digest, mediaType: s.mediaType, artifactType: s.artifactType, size: s.size, platforms });
  }
  return out;
}

function validPlatform(p: Platform): boolean {
  const d = p?.descriptor;
  return typeof p?.label === 'string' && optional(p.size, 'number') && !!d && typeof d.mediaType === 'string' && validDigest(d.digest) && typeof d.size === 'number';
}

const optional = (v: unknown, type: 'string' | 'number') => v === undefined || typeof v === type;
