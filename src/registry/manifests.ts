/**
 * Manifests: validated JSON documents stored as blobs, linked into a repository as revisions, named by tags, and
 * indexed by subject for the referrers API.
 */
import { createHash } from 'node:crypto';
import { PathNotFound, type StorageDriver } from '../storage/driver.js';
import type { BlobLinks, Blobs } from './blobs.js';
import { RegistryError, manifestUnknown, nameUnknown } from './errors.js';
import { checkDigest, checkTag, digestAlgorithm, paths, validDigest } from './paths.js';
import { DigestMismatch } from './verify.js';

export const MEDIA_TYPES = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
} as const;
const SCHEMA1 = ['application/vnd.docker.distribution.manifest.v1+json', 'application/vnd.docker.distribution.manifest.v1+prettyjws'];
const INDEX_TYPES: string[] = [MEDIA_TYPES.ociIndex, MEDIA_TYPES.dockerList];
const IMAGE_TYPES: string[] = [MEDIA_TYPES.ociManifest, MEDIA_TYPES.dockerManifest];
/** OCI's empty config: an artifact whose config is this takes its artifactType from the manifest only. */
const EMPTY_CONFIG = 'application/vnd.oci.empty.v1+json';

/** Distribution's limit, and what the OCI spec suggests as the least a registry should accept. */
export const MAX_MANIFEST_SIZE = 4 * 1024 * 1024;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
  urls?: string[];
  platform?: unknown;
}

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

/** What a revision link holds: enough to answer HEAD and referrers without reading the manifest. */
export interface RevisionMeta {
  mediaType: string;
  size: number;
  artifactType?: string;
  subject?: string;
  annotations?: Record<string, string>;
}

export interface StoredManifest extends RevisionMeta {
  digest: string;
}

export class Manifests {
  private readonly links: BlobLinks;
  /** Manifest bytes that hashed to their digest, by namespace and digest (they cannot change: no invalidation). */
  private readonly verifiedBodies = new ByteBoundedLru(MANIFEST_CACHE_BYTES);

  constructor(
    private readonly driver: StorageDriver,
    private readonly blobs: Blobs,
  ) {
    this.links = blobs.links;
  }

  /** Validate and store a manifest under `reference` (a tag or its own digest). */
  async put(ns: string, repo: string, reference: string, body: Buffer, contentType?: string): Promise<StoredManifest> {
    if (body.length > MAX_MANIFEST_SIZE) {
      throw new RegistryError('PAYLOAD_TOO_LARGE', 'manifest is larger than the registry accepts', { limit: MAX_MANIFEST_SIZE });
    }
    const byDigest = reference.includes(':');
    let digest = `sha256:${createHash('sha256').update(body).digest('hex')}`;
    if (byDigest) {
      checkDigest(reference);
      if (digestAlgorithm(reference) === 'sha512') digest = `sha512:${createHash('sha512').update(body).digest('hex')}`;
      if (digest !== reference) throw new RegistryError('DIGEST_INVALID', 'manifest digest does not match its content', { expected: reference, actual: digest });
    } else {
      checkTag(reference);
    }

    const doc = parseJson(body);
    const mediaType = resolveMediaType(doc, contentType);
    const meta: RevisionMeta = { mediaType, size: body.length };
    // Every blob this manifest needs, its own included; touched before they are checked (prune's protocol).
    const needed = [digest];
    if (IMAGE_TYPES.includes(mediaType)) {
      const config = descriptor(doc.config, 'config');
      const layers = descriptors(doc.layers, 'layers').filter((l) => !isForeignLayer(l));
      needed.push(config.digest, ...layers.map((l) => l.digest));
      await this.links.touch(ns, needed);
      await this.requireBlobs(ns, repo, [config, ...layers]);
      if (mediaType === MEDIA_TYPES.ociManifest) {
        meta.artifactType = optionalString(doc.artifactType, 'artifactType') ?? (config.mediaType === EMPTY_CONFIG ? undefined : config.mediaType);
      }
    } else {
      const children = descriptors(doc.manifests, 'manifests');
      needed.push(...children.map((c) => c.digest));
      await this.links.touch(ns, needed);
      await this.requireManifests(ns, repo, children);
      meta.artifactType = optionalString(doc.artifactType, 'artifactType');
    }
    if (doc.subject !== undefined) {
      if (mediaType !== MEDIA_TYPES.ociManifest && mediaType !== MEDIA_TYPES.ociIndex) {
        throw new RegistryError('MANIFEST_INVALID', 'only OCI manifests may have a subject');
      }
      meta.subject = descriptor(doc.subject, 'subject').digest;
    }
    if (doc.annotations !== undefined) meta.annotations = annotations(doc.annotations, 'annotations');
    if (meta.artifactType === undefined) delete meta.artifactType;

    // Data first, then the revision link, then the referrer entry and tag: every name points at stored bytes.
    await this.blobs.putSmall(ns, digest, body);
    const revision = paths.manifestRevision(ns, repo, digest);
    const existed = (await this.driver.stat(revision)) !== null;
    await this.driver.put(revision, Buffer.from(JSON.stringify(meta)), { contentType: 'application/json' });
    // A prune that began deleting one of these blobs before our touch is visible now: back out rather than name
    // bytes that may be about to go. (A prune that starts later sees the touch and keeps them.)
    const lost = (await Promise.all(needed.map(async (d) => ((await this.links.intact(ns, d)) ? null : d)))).filter((d) => d !== null);
    if (lost.length > 0) {
      if (!existed) await this.driver.delete(revision);
      throw new RegistryError('MANIFEST_BLOB_UNKNOWN', 'a referenced blob is being deleted by prune; push it again', { digest: lost[0] });
    }
    if (meta.subject) {
      const entry: Descriptor = { mediaType, digest, size: body.length };
      if (meta.artifactType) entry.artifactType = meta.artifactType;
      if (meta.annotations) entry.annotations = meta.annotations;
      await this.driver.put(paths.referrer(ns, repo, meta.subject, digest), Buffer.from(JSON.stringify(entry)));
    }
    if (!byDigest) await this.driver.put(paths.tag(ns, repo, reference), Buffer.from(digest));
    return { digest, ...meta };
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

  /** Descriptors of the manifests whose subject is `subject`, optionally only those of one artifactType. */
  async referrers(ns: string, repo: string, subject: string, artifactType?: string): Promise<Descriptor[]> {
    checkDigest(subject);
    const result: Descriptor[] = [];
    for await (const o of this.driver.list(paths.referrers(ns, repo, subject))) {
      const raw = await this.readOptional(o.path);
      if (raw === null) continue;
      const d = JSON.parse(raw) as Descriptor;
      if (artifactType === undefined || d.artifactType === artifactType) result.push(d);
    }
    return result;
  }

  async repositoryExists(ns: string, repo: string): Promise<boolean> {
    for await (const _ of this.driver.list(paths.repo(ns, repo))) return true;
    return false;
  }

  private async resolve(ns: string, repo: string, reference: string): Promise<string> {
    if (reference.includes(':')) return checkDigest(reference);
    checkTag(reference);
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

  private async requireBlobs(ns: string, repo: string, list: Descriptor[]): Promise<void> {
    await Promise.all(
      list.map(async (d) => {
        const ok = await this.blobs.stat(ns, repo, d.digest).then((b) => b.size === d.size, () => false);
        if (!ok) throw new RegistryError('MANIFEST_BLOB_UNKNOWN', 'manifest references a blob unknown to the repository', { digest: d.digest });
      }),
    );
  }

  private async requireManifests(ns: string, repo: string, list: Descriptor[]): Promise<void> {
    await Promise.all(
      list.map(async (d) => {
        if (!(await this.driver.stat(paths.manifestRevision(ns, repo, d.digest)))) {
          throw new RegistryError('MANIFEST_BLOB_UNKNOWN', 'index references a manifest unknown to the repository', { digest: d.digest });
        }
      }),
    );
  }
}

type Json = Record<string, unknown>;

function invalid(message: string, detail?: unknown): RegistryError {
  return new RegistryError('MANIFEST_INVALID', message, detail);
}

function parseJson(body: Buffer): Json {
  let doc: unknown;
  try {
    doc = JSON.parse(body.toString('utf8'));
  } catch {
    throw invalid('manifest is not valid JSON');
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) throw invalid('manifest must be a JSON object');
  return doc as Json;
}

/** The manifest's type from its own mediaType field, the request's Content-Type, or its shape, in that order. */
function resolveMediaType(doc: Json, contentType?: string): string {
  const declared = contentType?.split(';')[0].trim().toLowerCase() || undefined;
  const field = optionalString(doc.mediaType, 'mediaType');
  if (field && declared && declared !== field && declared !== 'application/json') {
    throw invalid('Content-Type does not match the manifest mediaType', { contentType: declared, mediaType: field });
  }
  if ([field, declared].some((t) => t !== undefined && SCHEMA1.includes(t)) || doc.schemaVersion === 1) {
    throw new RegistryError('MANIFEST_INVALID', 'Docker schema 1 manifests are not supported; push schema 2 or OCI');
  }
  if (doc.schemaVersion !== 2) throw invalid('schemaVersion must be 2');
  const known = [...IMAGE_TYPES, ...INDEX_TYPES];
  let type = field ?? (declared && known.includes(declared) ? declared : undefined);
  type ??= Array.isArray(doc.manifests) ? MEDIA_TYPES.ociIndex : MEDIA_TYPES.ociManifest;
  if (!known.includes(type)) throw invalid('unsupported manifest media type', { mediaType: type });
  if (IMAGE_TYPES.includes(type) && doc.manifests !== undefined) throw invalid('an image manifest has no "manifests"');
  if (INDEX_TYPES.includes(type) && (doc.config !== undefined || doc.layers !== undefined)) throw invalid('an index has no config or layers');
  return type;
}

function descriptor(value: unknown, where: string): Descriptor {
  const d = value as Json | null;
  if (!d || typeof d !== 'object' || Array.isArray(d)) throw invalid(`${where} must be a descriptor`);
  if (typeof d.mediaType !== 'string' || !/^[\w.+-]+\/[\w.+-]+$/.test(d.mediaType)) throw invalid(`${where}.mediaType is invalid`);
  if (typeof d.digest !== 'string' || !validDigest(d.digest)) throw invalid(`${where}.digest is invalid`, { digest: d.digest });
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) throw invalid(`${where}.size is invalid`);
  if (d.urls !== undefined && (!Array.isArray(d.urls) || d.urls.some((u) => typeof u !== 'string'))) throw invalid(`${where}.urls is invalid`);
  if (d.annotations !== undefined) annotations(d.annotations, `${where}.annotations`);
  optionalString(d.artifactType, `${where}.artifactType`);
  return d as unknown as Descriptor;
}

function descriptors(value: unknown, where: string): Descriptor[] {
  if (!Array.isArray(value)) throw invalid(`${where} must be an array`);
  return value.map((v, i) => descriptor(v, `${where}[${i}]`));
}

function optionalString(value: unknown, where: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string') throw invalid(`${where} must be a string`);
  return value;
}

function annotations(value: unknown, where: string): Record<string, string> {
  if (!value || typeof value !== 'object' || Array.isArray(value) || Object.values(value).some((v) => typeof v !== 'string')) {
    throw invalid(`${where} must map strings to strings`);
  }
  return value as Record<string, string>;
}

/** Layers that live elsewhere (Windows base layers): the registry is not expected to hold them. */
function isForeignLayer(d: Descriptor): boolean {
  return d.mediaType.includes('nondistributable') || d.mediaType.includes('foreign');
}
