/**
 * Manifests: validated JSON documents stored as blobs, linked into a repository as revisions, named by tags, and
 * indexed by subject for the referrers API.
 */
import { createHash } from 'node:crypto';
import { PathNotFound, type StorageDriver } from '../storage/driver.js';
import type { BlobLinks, Blobs } from './blobs.js';
import { forEachLimited } from '../util/concurrency.js';
import { RegistryError, manifestUnknown, nameUnknown } from './errors.js';
import { MAX_ANNOTATIONS_BYTES, type Descriptor, type RevisionMeta, parseManifest } from './manifest-doc.js';
import { checkDigest, checkTag, digestAlgorithm, paths, validDigest, validTag } from './paths.js';
import { DigestMismatch } from './verify.js';
import type { Quotas } from './quota.js';

export { MAX_ANNOTATIONS_BYTES, MAX_DESCRIPTORS, MAX_JSON_DEPTH, MEDIA_TYPES, nestedTooDeep, type Descriptor, type RevisionMeta } from './manifest-doc.js';

/** Distribution's limit, and what the OCI spec suggests as the least a registry should accept. */
export const MAX_MANIFEST_SIZE = 4 * 1024 * 1024;
/**
 * Tags one PUT by digest may set with ?tag= parameters. Pushes name a handful (latest, a version, its major and
 * minor, a commit); 64 of the longest (128 characters) still fit Node's 16 KiB request head.
 */
export const MAX_TAG_PARAMETERS = 64;
/** Storage requests in flight for one manifest PUT's descriptors: enough to hide latency, too few to crowd others. */
const DESCRIPTOR_CONCURRENCY = 8;

/**
 * A referrers page: at most this many entries, and this many stored bytes (the response is about as long). Typical
 * entries (a signature, an SBOM) take 300 to 500 bytes, so 100 of them fit well under the byte bound; entries with
 * annotations near MAX_ANNOTATIONS_BYTES come about 15 to a page.
 */
export const REFERRERS_PAGE_ENTRIES = 100;
export const REFERRERS_PAGE_BYTES = 256 * 1024;
/** The largest entry a PUT can store: annotations at their bound plus the descriptor's other fields. */
const MAX_REFERRER_ENTRY_BYTES = MAX_ANNOTATIONS_BYTES + 1024;

/** Memory for verified manifest bytes: a few thousand typical manifests (2-10 KB each). */
const MANIFEST_CACHE_BYTES = 16 * 1024 * 1024;

/** A map that forgets its least recently used entries once their bytes pass `limit`. */
export class ByteBoundedLru {
  private readonly entries = new Map<string, Buffer>();
  private bytes = 0;

  constructor(private readonly limit: number) {}

  get(key: string): Buffer | undefined {
    const value = this.entries.get(key);
    if (value) {
      this.entries.delete(key);
      this.entries.set(key, value);
    }
    return value;
  }

  set(key: string, value: Buffer): void {
    if (value.length > this.limit) return;
    const old = this.entries.get(key);
    if (old) {
      this.entries.delete(key);
      this.bytes -= old.length;
    }
    this.entries.set(key, value);
    this.bytes += value.length;
    for (const [k, v] of this.entries) {
      if (this.bytes <= this.limit) break;
      this.entries.delete(k);
      this.bytes -= v.length;
    }
  }

  get size(): number {
    return this.entries.size;
  }
}

export interface StoredManifest extends RevisionMeta {
  digest: string;
}

export interface ReferrersPage {
  /** Read from storage one at a time, as they are consumed. */
  entries: AsyncIterable<Descriptor>;
  /** The `last` of the next page, when there is one. */
  next?: string;
}

/** Told of each manifest a PUT stored (its bytes validated and hashed), after its tags were written. */
export type ManifestObserver = (e: { ns: string; repo: string; digest: string; mediaType: string; body: Buffer }) => void;

export class Manifests {
  private readonly links: BlobLinks;
  private readonly observers: ManifestObserver[] = [];
  /** Manifest bytes that hashed to their digest, by namespace and digest (they cannot change: no invalidation). */
  private readonly verifiedBodies = new ByteBoundedLru(MANIFEST_CACHE_BYTES);

  constructor(
    private readonly driver: StorageDriver,
    private readonly blobs: Blobs,
    /** Told of each new manifest's bytes, which count toward its namespace's quota (never refused: quota.ts). */
    private readonly quotas?: Quotas,
  ) {
    this.links = blobs.links;
  }

  /**
   * Validate and store a manifest under `reference` (a tag or its own digest), and point `tags` at it (only with a
   * digest reference). Everything is checked before the first write: the request, the document, then (a few at a
   * time, stopping at the first missing one) the blobs it names. Then prune's protocol (see prune.ts): touch those
   * blobs, write the revision, re-check that none is being deleted.
   */
  async put(ns: string, repo: string, reference: string, body: Buffer, opts: { contentType?: string; tags?: string[] } = {}): Promise<StoredManifest & { tags: string[] }> {
    if (body.length > MAX_MANIFEST_SIZE) {
      throw new RegistryError('PAYLOAD_TOO_LARGE', 'manifest is larger than the registry accepts', { limit: MAX_MANIFEST_SIZE });
    }
    const byDigest = reference.includes(':');
    const tags = byDigest ? tagParameters(opts.tags ?? []) : [checkTag(reference)];
    if (!byDigest && (opts.tags ?? []).length > 0) {
      throw new RegistryError('MANIFEST_INVALID', 'tag parameters are only accepted on a push by digest', { reference });
    }
    if (byDigest) referenceDigest(reference);
    // The document before the hash: a manifest over the descriptor cap is refused without hashing its megabytes.
    const { meta, blobs, children } = parseManifest(body, opts.contentType);
    const algorithm = byDigest ? digestAlgorithm(reference) : 'sha256';
    const digest = `${algorithm}:${createHash(algorithm).update(body).digest('hex')}`;
    if (byDigest && digest !== reference) throw new RegistryError('DIGEST_INVALID', 'manifest digest does not match its content', { expected: reference, actual: digest });
    await this.requireBlobs(ns, repo, blobs);
    await this.requireManifests(ns, repo, children);

    // Every blob this manifest needs, its own included.
    const needed = [...new Set([digest, ...blobs.map((d) => d.digest), ...children.map((d) => d.digest)])];
    await this.links.touch(ns, needed);
    // Data first, then the revision link, then the referrer entry and tags: every name points at stored bytes.
    await this.blobs.putSmall(ns, digest, body);
    const revision = paths.manifestRevision(ns, repo, digest);
    const existed = (await this.driver.stat(revision)) !== null;
    await this.driver.put(revision, Buffer.from(JSON.stringify(meta)), { contentType: 'application/json' });
    // A prune that began deleting one of these blobs before our touch is visible now: back out rather than name
    // bytes that may be about to go. (A prune that starts later sees the touch and keeps them.)
    const lost: string[] = [];
    await forEachLimited(needed, DESCRIPTOR_CONCURRENCY, async (d) => {
      if (!(await this.links.intact(ns, d))) lost.push(d);
    });
    if (lost.length > 0) {
      if (!existed) await this.driver.delete(revision);
      throw new RegistryError('MANIFEST_BLOB_UNKNOWN', 'a referenced blob is being deleted by prune; push it again', { digest: lost[0] });
    }
    if (!existed) this.quotas?.added(ns, body.length);
    if (meta.subject) {
      const entry: Descriptor = { mediaType: meta.mediaType, digest, size: body.length };
      if (meta.artifactType) entry.artifactType = meta.artifactType;
      if (meta.annotations) entry.annotations = meta.annotations;
      await this.driver.put(paths.referrer(ns, repo, meta.subject, digest), Buffer.from(JSON.stringify(entry)));
    }
    await Promise.all(tags.map((t) => this.driver.put(paths.tag(ns, repo, t), Buffer.from(digest))));
    for (const observe of this.observers) observe({ ns, repo, digest, mediaType: meta.mediaType, body });
    return { digest, ...meta, tags };
  }

  /** `fn` is called, synchronously, after each successful put: it must not throw, and does any storage work later. */
  observe(fn: ManifestObserver): void {
    this.observers.push(fn);
  }

  /** The manifest's metadata (for HEAD); MANIFEST_UNKNOWN if the tag or revision is absent. */
  async stat(ns: string, repo: string, reference: string): Promise<StoredManifest> {
    const digest = await this.resolve(ns, repo, reference);
    let raw: Buffer;
    try {
      raw = await this.driver.read(paths.manifestRevision(ns, repo, digest));
    } catch (err) {
      if (err instanceof PathNotFound) throw manifestUnknown(reference);
      throw err;
    }
    return { digest, ...(JSON.parse(raw.toString('utf8')) as RevisionMeta) };
  }

  /**
   * The manifest and its bytes, checked against its digest (by tag: the digest the tag names). The tag and the
   * revision are read every time (they change, from any process); the bytes, being content-addressed, are kept
   * once they were read and verified, which saves a file read and a hash per pull.
   */
  async get(ns: string, repo: string, reference: string): Promise<StoredManifest & { body: Buffer }> {
    const meta = await this.stat(ns, repo, reference);
    const key = `${ns}/${meta.digest}`;
    const known = this.verifiedBodies.get(key);
    if (known) return { ...meta, body: known };
    let body: Buffer;
    try {
      body = await this.blobs.readSmall(ns, meta.digest);
    } catch (err) {
      // The revision outlived its data (a prune race): the manifest is gone for this reader.
      if (err instanceof PathNotFound) throw manifestUnknown(reference);
      throw err;
    }
    // Small and read whole, so checked before a byte is sent: an address never serves other bytes.
    const algorithm = digestAlgorithm(meta.digest);
    const actual = `${algorithm}:${createHash(algorithm).update(body).digest('hex')}`;
    if (actual !== meta.digest) throw new DigestMismatch(meta.digest, actual);
    this.verifiedBodies.set(key, body);
    return { ...meta, body };
  }

  /**
   * Delete by digest removes the revision, every tag naming it, and its referrer entry; delete by tag removes
   * just the tag. The bytes stay until prune finds nothing referencing them.
   */
  async delete(ns: string, repo: string, reference: string): Promise<void> {
    if (!reference.includes(':')) {
      checkTag(reference);
      if (!(await this.driver.stat(paths.tag(ns, repo, reference)))) throw manifestUnknown(reference);
      await this.driver.delete(paths.tag(ns, repo, reference));
      return;
    }
    referenceDigest(reference);
    const meta = await this.stat(ns, repo, reference);
    for await (const t of this.driver.list(paths.tags(ns, repo))) {
      if ((await this.readOptional(t.path)) === meta.digest) await this.driver.delete(t.path);
    }
    if (meta.subject) await this.driver.delete(paths.referrer(ns, repo, meta.subject, meta.digest));
    await this.driver.delete(paths.manifestRevision(ns, repo, meta.digest));
  }

  /** Tags in lexical order, after `last`, at most `n`; NAME_UNKNOWN for a repository with no manifests. */
  async tags(ns: string, repo: string, opts: { n?: number; last?: string } = {}): Promise<{ tags: string[]; more: boolean }> {
    const prefix = paths.tags(ns, repo) + '/';
    const tags: string[] = [];
    let more = false;
    for await (const o of this.driver.list(paths.tags(ns, repo))) {
      const tag = o.path.slice(prefix.length);
      if (opts.last !== undefined && tag <= opts.last) continue;
      if (opts.n !== undefined && tags.length >= opts.n) {
        more = true;
        break;
      }
      tags.push(tag);
    }
    if (tags.length === 0 && !more && !(await this.repositoryExists(ns, repo))) throw nameUnknown(repo);
    return { tags, more };
  }

  /**
   * One page of the descriptors of the manifests whose subject is `subject`, after the referrer `last`. A page covers
   * a window of the stored entries, at most REFERRERS_PAGE_ENTRIES of them and REFERRERS_PAGE_BYTES of stored
   * bytes, planned from the listing alone so that `next` (the window's last digest, when entries remain) is known
   * before any entry is read; the entries are then read one at a time as the caller consumes them, and those of
   * another artifactType skipped (so a filtered page may hold fewer, even none, and still have a next one).
   */
  async referrersPage(ns: string, repo: string, subject: string, opts: { artifactType?: string; last?: string } = {}): Promise<ReferrersPage> {
    checkDigest(subject);
    if (opts.last !== undefined) checkDigest(opts.last);
    const dir = paths.referrers(ns, repo, subject);
    const window: string[] = [];
    let bytes = 0;
    let next: string | undefined;
    for await (const o of this.driver.list(dir)) {
      const digest = o.path.slice(dir.length + 1);
      if (opts.last !== undefined && digest <= opts.last) continue;
      // Written before annotations were bounded: reading it would cost what the bound is there to prevent.
      if (o.size > MAX_REFERRER_ENTRY_BYTES || !validDigest(digest)) continue;
      if (window.length >= REFERRERS_PAGE_ENTRIES || (window.length > 0 && bytes + o.size > REFERRERS_PAGE_BYTES)) {
        next = window[window.length - 1];
        break;
      }
      window.push(digest);
      bytes += o.size;
    }
    return { entries: this.readReferrers(ns, repo, subject, window, opts.artifactType), next };
  }

  private async *readReferrers(ns: string, repo: string, subject: string, digests: string[], artifactType?: string): AsyncGenerator<Descriptor> {
    for (const d of digests) {
      // Deleted since the listing: that referrer is simply gone.
      const raw = await this.readOptional(paths.referrer(ns, repo, subject, d));
      if (raw === null) continue;
      const entry = JSON.parse(raw) as Descriptor;
      if (artifactType === undefined || entry.artifactType === artifactType) yield entry;
    }
  }

  async repositoryExists(ns: string, repo: string): Promise<boolean> {
    for await (const _ of this.driver.list(paths.repo(ns, repo))) return true;
    return false;
  }

  /** A reference that cannot name anything (not a valid tag, not a digest Berth can verify) is simply unknown. */
  private async resolve(ns: string, repo: string, reference: string): Promise<string> {
    if (reference.includes(':')) {
      if (!validDigest(reference)) throw manifestUnknown(reference);
      return reference;
    }
    if (!validTag(reference)) throw manifestUnknown(reference);
    const digest = await this.readOptional(paths.tag(ns, repo, reference));
    if (digest === null || !validDigest(digest)) throw manifestUnknown(reference);
    return digest;
  }

  private async readOptional(path: string): Promise<string | null> {
    try {
      return (await this.driver.read(path)).toString('utf8');
    } catch (err) {
      if (err instanceof PathNotFound) return null;
      throw err;
    }
  }

  /** Each blob linked in `repo`, stored, of the size its descriptors say; MANIFEST_BLOB_UNKNOWN at the first that is not. */
  private async requireBlobs(ns: string, repo: string, list: Descriptor[]): Promise<void> {
    const sizes = new Map<string, Set<number>>();
    for (const d of list) sizes.set(d.digest, (sizes.get(d.digest) ?? new Set()).add(d.size));
    await forEachLimited([...sizes], DESCRIPTOR_CONCURRENCY, async ([digest, wanted]) => {
      const size = await this.blobs.stat(ns, repo, digest).then((b) => b.size, () => null);
      if (size === null || wanted.size > 1 || !wanted.has(size)) {
        throw new RegistryError('MANIFEST_BLOB_UNKNOWN', 'manifest references a blob unknown to the repository', { digest });
      }
    });
  }

  private async requireManifests(ns: string, repo: string, list: Descriptor[]): Promise<void> {
    await forEachLimited([...new Set(list.map((d) => d.digest))], DESCRIPTOR_CONCURRENCY, async (digest) => {
      if (!(await this.driver.stat(paths.manifestRevision(ns, repo, digest)))) {
        throw new RegistryError('MANIFEST_BLOB_UNKNOWN', 'index references a manifest unknown to the repository', { digest });
      }
    });
  }
}

/** The ?tag= values of a push by digest: each valid, at most MAX_TAG_PARAMETERS, repeats once. */
function tagParameters(tags: string[]): string[] {
  if (tags.length > MAX_TAG_PARAMETERS) {
    throw new RegistryError('MANIFEST_INVALID', `at most ${MAX_TAG_PARAMETERS} tag parameters per request`, { tags: tags.length, limit: MAX_TAG_PARAMETERS });
  }
  return [...new Set(tags.map(checkTag))];
}

/** A digest reference of a write: 400 for an algorithm Berth cannot verify too (UNSUPPORTED's 405 would say the method is wrong). */
function referenceDigest(reference: string): string {
  if (!validDigest(reference)) throw new RegistryError('DIGEST_INVALID', 'invalid or unsupported digest (sha256 and sha512 are)', { digest: reference });
  return reference;
}
