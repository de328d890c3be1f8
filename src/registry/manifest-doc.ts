/**
 * A manifest document as a PUT brings it: parsed, its type resolved, its descriptors counted and validated. All of
 * this is in memory and comes before any storage read or write, so a refused manifest costs no I/O.
 */
import { RegistryError } from './errors.js';
import { jsonDepth } from './json-scan.js';
import { validDigest } from './paths.js';

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

/**
 * The most descriptors (config and layers, or an index's manifests) one manifest may name. Each costs storage
 * requests on PUT; real ones stay far below: Docker and overlayfs stop at 127 layers, the largest multi-arch
 * indexes (a dozen platforms, each with an attestation manifest) name a few dozen, a BuildKit registry cache
 * one layer per cached step. 1,000 leaves room for all of them.
 */
export const MAX_DESCRIPTORS = 1000;

/**
 * The deepest bracket nesting a manifest may have, checked by a byte scan before JSON.parse (json-scan.ts). Real
 * manifests nest 4 to 6 deep (index, manifests, descriptor, platform or annotations); 64 is far above any of them.
 */
export const MAX_JSON_DEPTH = 64;

/**
 * The most bytes a manifest's own `annotations` may take, serialized as JSON. They are copied into the revision
 * (read by every HEAD) and, for a manifest with a `subject`, into the referrers list, so they are bounded where they
 * enter. Signers and attestations put a few hundred bytes there (notation's thumbprints, cosign's and BuildKit's
 * created/ref names); 16 KiB leaves room for all of them, and bounds one referrers entry to about 17 KiB.
 */
export const MAX_ANNOTATIONS_BYTES = 16 * 1024;

/** RFC 6838 names have at most 127 characters each side of the '/'; an artifactType is copied like annotations. */
const MAX_MEDIA_TYPE_LENGTH = 255;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
  urls?: string[];
  platform?: unknown;
}

/** What a revision link holds: enough to answer HEAD and referrers without reading the manifest. */
export interface RevisionMeta {
  mediaType: string;
  size: number;
  artifactType?: string;
  subject?: string;
  annotations?: Record<string, string>;
}

export interface ManifestDoc {
  meta: RevisionMeta;
  /** Blobs the repository must hold: the config and the layers (foreign layers excepted), for an image. */
  blobs: Descriptor[];
  /** Manifests the repository must hold, for an index. */
  children: Descriptor[];
}

type Json = Record<string, unknown>;

/** Parse and validate; MANIFEST_INVALID for anything malformed or over MAX_DESCRIPTORS. */
export function parseManifest(body: Buffer, contentType?: string): ManifestDoc {
  const doc = parseJson(body);
  const mediaType = resolveMediaType(doc, contentType);
  const meta: RevisionMeta = { mediaType, size: body.length };
  let blobs: Descriptor[] = [];
  let children: Descriptor[] = [];
  if (IMAGE_TYPES.includes(mediaType)) {
    const config = descriptor(doc.config, 'config');
    const layers = descriptors(doc.layers, 'layers', MAX_DESCRIPTORS - 1).filter((l) => !isForeignLayer(l));
    blobs = [config, ...layers];
    if (mediaType === MEDIA_TYPES.ociManifest) {
      meta.artifactType = mediaTypeString(doc.artifactType, 'artifactType') ?? (config.mediaType === EMPTY_CONFIG ? undefined : config.mediaType);
    }
  } else {
    children = descriptors(doc.manifests, 'manifests', MAX_DESCRIPTORS);
    meta.artifactType = mediaTypeString(doc.artifactType, 'artifactType');
  }
  if (doc.subject !== undefined) {
    if (mediaType !== MEDIA_TYPES.ociManifest && mediaType !== MEDIA_TYPES.ociIndex) {
      throw new RegistryError('MANIFEST_INVALID', 'only OCI manifests may have a subject');
    }
    meta.subject = descriptor(doc.subject, 'subject').digest;
  }
  if (doc.annotations !== undefined) {
    meta.annotations = annotations(doc.annotations, 'annotations');
    const bytes = Buffer.byteLength(JSON.stringify(meta.annotations));
    if (bytes > MAX_ANNOTATIONS_BYTES) {
      throw invalid(`a manifest's annotations may take at most ${MAX_ANNOTATIONS_BYTES} bytes of JSON`, { bytes, limit: MAX_ANNOTATIONS_BYTES });
    }
  }
  if (meta.artifactType === undefined) delete meta.artifactType;
  return { meta, blobs, children };
}

/** The refusal of a manifest nested past MAX_JSON_DEPTH (also given by the HTTP layer as the body arrives). */
export function nestedTooDeep(): RegistryError {
  return invalid(`a manifest may nest at most ${MAX_JSON_DEPTH} levels deep`, { limit: MAX_JSON_DEPTH });
}

function invalid(message: string, detail?: unknown): RegistryError {
  return new RegistryError('MANIFEST_INVALID', message, detail);
}

function parseJson(body: Buffer): Json {
  // Before the parse: its cost must not depend on how the brackets are arranged.
  if (jsonDepth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH) throw nestedTooDeep();
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
  if (typeof d.mediaType !== 'string' || d.mediaType.length > MAX_MEDIA_TYPE_LENGTH || !/^[\w.+-]+\/[\w.+-]+$/.test(d.mediaType)) throw invalid(`${where}.mediaType is invalid`);
  if (typeof d.digest !== 'string' || !validDigest(d.digest)) throw invalid(`${where}.digest is invalid`, { digest: d.digest });
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) throw invalid(`${where}.size is invalid`);
  if (d.urls !== undefined && (!Array.isArray(d.urls) || d.urls.some((u) => typeof u !== 'string'))) throw invalid(`${where}.urls is invalid`);
  if (d.annotations !== undefined) annotations(d.annotations, `${where}.annotations`);
  mediaTypeString(d.artifactType, `${where}.artifactType`);
  return d as unknown as Descriptor;
}

/** A list of descriptors, refused whole when longer than `limit` (before any of it is examined). */
function descriptors(value: unknown, where: string, limit: number): Descriptor[] {
  if (!Array.isArray(value)) throw invalid(`${where} must be an array`);
  if (value.length > limit) {
    throw invalid(`a manifest may name at most ${MAX_DESCRIPTORS} descriptors`, { [where]: value.length, limit: MAX_DESCRIPTORS });
  }
  return value.map((v, i) => descriptor(v, `${where}[${i}]`));
}

function optionalString(value: unknown, where: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string') throw invalid(`${where} must be a string`);
  return value;
}

/** An artifactType: a string no longer than a media type can be (its shape is the client's business). */
function mediaTypeString(value: unknown, where: string): string | undefined {
  const s = optionalString(value, where);
  if (s !== undefined && s.length > MAX_MEDIA_TYPE_LENGTH) throw invalid(`${where} is longer than ${MAX_MEDIA_TYPE_LENGTH} characters`, { limit: MAX_MEDIA_TYPE_LENGTH });
  return s;
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

/**
 * The digests a stored manifest needs: config and layers, or the child manifests of an index. Lenient (prune and
 * fsck read what was stored, validated when it was put): anything unreadable names nothing.
 */
export function needs(body: string): { digest: string; manifest: boolean }[] {
  let doc: { config?: { digest?: unknown }; layers?: { digest?: unknown }[]; manifests?: { digest?: unknown }[] };
  try {
    doc = JSON.parse(body);
  } catch {
    return [];
  }
  const out: { digest: string; manifest: boolean }[] = [];
  const push = (d: unknown, manifest: boolean) => {
    if (typeof d === 'string' && validDigest(d)) out.push({ digest: d, manifest });
  };
  push(doc.config?.digest, false);
  for (const l of Array.isArray(doc.layers) ? doc.layers : []) push(l?.digest, false);
  for (const m of Array.isArray(doc.manifests) ? doc.manifests : []) push(m?.digest, true);
  return out;
}
