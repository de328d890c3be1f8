/**
 * Every storage path Berth uses, and the validation that guards them. Nothing else builds a path.
 *
 *   <ns>/
 *     uploads/<uuid>/metadata                    the UploadRecord (JSON)
 *     uploads/<uuid>/<n>.<nonce>                 chunk objects, in record order (the nonce keeps two racing
 *                                                writers of chunk n from overwriting each other)
 *     uploads/<uuid>/p<n>.<nonce>                a sealed page of the record's chunk entries (upload-record.ts)
 *     uploads/<uuid>/sealed                      written once, create-only, when the upload is committed (the record
 *                                                it commits, with the digest) or cancelled: every upload request reads
 *                                                it beside the record, and a sealed upload takes no more chunks
 *     uploads/<uuid>/lock                        held while a request writes to the upload (where the backend
 *                                                can lock: the filesystem)
 *     uploads/<uuid>/owner.<alg>:<hex>           commit: link: this upload's chunk objects (and the merged objects
 *                                                and sub-manifests beside them) are that blob's segments; it
 *                                                replaces the record once the blob is joined (upload-commit.ts)
 *     blobs/<alg>:<hex>/data                     the blob (content-addressed; manifests are blobs too); a blob of
 *                                                one chunk is that chunk moved here; with commit: link, an SLO
 *                                                naming the upload's chunk objects where they were written
 *     blobs/<alg>:<hex>/parts/<uuid>/<n>         its parts: chunks moved here at commit (Swift SLO segments)
 *     blobs/<alg>:<hex>/touched                  rewritten whenever a push commits, mounts or references the blob
 *     blobs/<alg>:<hex>/tombstone                written by prune before it deletes the blob (see prune.ts)
 *     repos/<name>/_blobs/<alg>:<hex>            link: this repository may serve the blob
 *     repos/<name>/_manifests/revisions/<alg>:<hex>   link: the manifest belongs to the repository (JSON meta)
 *     repos/<name>/_manifests/tags/<tag>         the tag, holding the manifest digest
 *     repos/<name>/_referrers/<subject>/<digest> a manifest whose subject is <subject> (its descriptor, JSON)
 *     prune.lock                                 held by a running prune of the namespace
 *     usage/last.json                            the namespace's usage as the last prune (or usage --fresh) found it
 *     usage/live/<process>                       bytes one server process committed since then, in time buckets
 *                                                (quota.ts), so every process can sum them between prunes
 *     quarantine/<alg>:<hex>/data                a blob fsck --repair found corrupt: kept for inspection, not served
 *     web/<name>/_summary                        the web page's summaries of the repository's manifests (JSON, by
 *                                                digest: content-addressed, so never stale; a cache, src/web/summaries.ts)
 *     quarantine/<alg>:<hex>/data.json           or, where the backend cannot move it, a note of what was wrong
 *
 * <ns> is the tenant's namespace; <name> is an OCI repository name, whose components never start with '_', so
 * the '_' directories cannot collide with a repository called, say, "app/manifests".
 *
 * The pull-through cache (registry.mirrors, src/mirror/) lives apart from every namespace, under a prefix that
 * cannot be one (a namespace has no '.'), one directory per upstream <registry> (docker.io, quay.io):
 *
 *   mirror.cache/<registry>/
 *     blobs/<alg>:<hex>/data                     a blob or manifest as the upstream served it, verified
 *     blobs/<alg>:<hex>/parts/<uuid>/<n>         its parts, where it was larger than one object (Swift)
 *     blobs/<alg>:<hex>/manifest                 JSON {mediaType} when the bytes are a manifest
 *     blobs/<alg>:<hex>/touched                  rewritten by a fill before it writes (prune's protocol)
 *     blobs/<alg>:<hex>/pulled                   rewritten on a pull, at most once per interval (prune's clock)
 *     blobs/<alg>:<hex>/tombstone                written by prune before it deletes the item
 *     tags/<name>/_tag/<tag>                     JSON {digest, mediaType, size, checked}: the upstream's tag
 *                                                as last seen (<name> is the upstream's repository name)
 *     prune.lock                                 held by a running prune of this upstream's cache
 *     usage/last.json                            {bytes, asOf}: what the last prune left (mirror/cap.ts)
 *     usage/live/<process>                       bytes one server process's fills stored since, in time buckets
 *                                                (quota.ts's tally), so max-size holds between prunes
 */
import { RegistryError } from './errors.js';

/** OCI distribution-spec grammar. */
const NAME_COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME_RE = new RegExp(`^${NAME_COMPONENT}(?:/${NAME_COMPONENT})*$`);
const TAG_RE = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
const DIGEST_GRAMMAR_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
const DIGEST_RE: Record<string, RegExp> = { sha256: /^[a-f0-9]{64}$/, sha512: /^[a-f0-9]{128}$/ };
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const NAMESPACE_RE = /^[a-z0-9_][a-z0-9_-]{0,63}$/;
/** A server process's name in usage/live/: made by the process itself (quota.ts), never from a request. */
const PROCESS_RE = /^[a-z0-9][a-z0-9.-]{0,127}$/;
export const CHUNK_OBJECT_RE = /^(?:0|[1-9][0-9]{0,8})\.[0-9a-f]{8}$/;
export const PAGE_OBJECT_RE = /^p(?:0|[1-9][0-9]{0,8})\.[0-9a-f]{8}$/;

export const DEFAULT_NAMESPACE = '_local';
/** The pull-through cache's root: not a namespace (those have no '.'), so no tenant's paths can reach it. */
export const MIRROR_ROOT = 'mirror.cache';
/** A registry as clients prefix names with it: one name component with a dot (docker.io, registry.k8s.io). */
const MIRROR_REGISTRY_RE = /^[a-z0-9]+(?:[.-][a-z0-9]+)*\.[a-z0-9]+(?:[.-][a-z0-9]+)*$/;
/** Distribution's limit; keeps every path well inside any backend's key length. */
export const MAX_NAME_LENGTH = 255;

export type Algorithm = 'sha256' | 'sha512';

export function validName(name: string): boolean {
  return name.length <= MAX_NAME_LENGTH && NAME_RE.test(name);
}
export function checkName(name: string): string {
  if (!validName(name)) throw new RegistryError('NAME_INVALID', 'invalid repository name', { name });
  return name;
}
export function validTag(tag: string): boolean {
  return TAG_RE.test(tag);
}
export function checkTag(tag: string): string {
  if (!validTag(tag)) throw new RegistryError('MANIFEST_INVALID', 'invalid tag', { tag });
  return tag;
}
export function validDigest(digest: string): boolean {
  const colon = digest.indexOf(':');
  const re = DIGEST_RE[digest.slice(0, colon)];
  return colon > 0 && re !== undefined && re.test(digest.slice(colon + 1));
}
/** A digest Berth can verify; anything else is DIGEST_INVALID (malformed) or UNSUPPORTED (unknown algorithm). */
export function checkDigest(digest: string): string {
  if (validDigest(digest)) return digest;
  if (DIGEST_GRAMMAR_RE.test(digest) && !(digest.split(':')[0] in DIGEST_RE)) {
    throw new RegistryError('UNSUPPORTED', 'unsupported digest algorithm', { digest });
  }
  throw new RegistryError('DIGEST_INVALID', 'invalid digest', { digest });
}
export function digestAlgorithm(digest: string): Algorithm {
  return digest.slice(0, digest.indexOf(':')) as Algorithm;
}
export function validUploadId(id: string): boolean {
  return UUID_RE.test(id);
}
export function validNamespace(ns: string): boolean {
  return NAMESPACE_RE.test(ns);
}
export function validMirrorRegistry(registry: string): boolean {
  return registry.length <= 253 && MIRROR_REGISTRY_RE.test(registry);
}
function mirror(registry: string): string {
  if (!validMirrorRegistry(registry)) throw new Error(`invalid mirror registry: ${JSON.stringify(registry)}`);
  return `${MIRROR_ROOT}/${registry}`;
}

function ns(namespace: string): string {
  if (!validNamespace(namespace)) throw new Error(`invalid namespace: ${JSON.stringify(namespace)}`);
  return namespace;
}
function name(n: string): string {
  if (!validName(n)) throw new Error(`invalid repository name: ${JSON.stringify(n)}`);
  return n;
}
function digest(d: string): string {
  if (!validDigest(d)) throw new Error(`invalid digest: ${JSON.stringify(d)}`);
  return d;
}
function uuid(id: string): string {
  if (!validUploadId(id)) throw new Error(`invalid upload id: ${JSON.stringify(id)}`);
  return id;
}
function tag(t: string): string {
  if (!validTag(t)) throw new Error(`invalid tag: ${JSON.stringify(t)}`);
  return t;
}
function processName(p: string): string {
  if (!PROCESS_RE.test(p)) throw new Error(`invalid process name: ${JSON.stringify(p)}`);
  return p;
}
function index(n: number): string {
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`invalid index: ${n}`);
  return String(n);
}

export const paths = {
  namespace: (n: string) => ns(n),

  uploads: (n: string) => `${ns(n)}/uploads`,
  upload: (n: string, id: string) => `${ns(n)}/uploads/${uuid(id)}`,
  uploadRecord: (n: string, id: string) => `${ns(n)}/uploads/${uuid(id)}/metadata`,
  /** A chunk object; `object` is its name as the record holds it, "<n>.<nonce>". */
  uploadChunk: (n: string, id: string, object: string) => {
    if (!CHUNK_OBJECT_RE.test(object)) throw new Error(`invalid chunk object: ${JSON.stringify(object)}`);
    return `${ns(n)}/uploads/${uuid(id)}/${object}`;
  },
  /** A sealed page of chunk entries; `object` is its name as the record holds it, "p<n>.<nonce>". */
  uploadPage: (n: string, id: string, object: string) => {
    if (!PAGE_OBJECT_RE.test(object)) throw new Error(`invalid page object: ${JSON.stringify(object)}`);
    return `${ns(n)}/uploads/${uuid(id)}/${object}`;
  },
  uploadLock: (n: string, id: string) => `${ns(n)}/uploads/${uuid(id)}/lock`,
  /** The seal: the upload is committed (or being committed) or cancelled, and takes no more chunks. */
  uploadSeal: (n: string, id: string) => `${ns(n)}/uploads/${uuid(id)}/sealed`,
  /** commit: link: the claim that the upload's objects are blob `d`'s segments (named, so a listing says whose). */
  uploadOwner: (n: string, id: string, d: string) => `${ns(n)}/uploads/${uuid(id)}/owner.${digest(d)}`,

  blobs: (n: string) => `${ns(n)}/blobs`,
  blob: (n: string, d: string) => `${ns(n)}/blobs/${digest(d)}`,
  blobData: (n: string, d: string) => `${ns(n)}/blobs/${digest(d)}/data`,
  blobTouched: (n: string, d: string) => `${ns(n)}/blobs/${digest(d)}/touched`,
  blobTombstone: (n: string, d: string) => `${ns(n)}/blobs/${digest(d)}/tombstone`,
  blobPart: (n: string, d: string, id: string, i: number) => `${ns(n)}/blobs/${digest(d)}/parts/${uuid(id)}/${index(i)}`,

  pruneLock: (n: string) => `${ns(n)}/prune.lock`,
  usageReport: (n: string) => `${ns(n)}/usage/last.json`,
  usageLive: (n: string) => `${ns(n)}/usage/live`,
  usageProcess: (n: string, p: string) => `${ns(n)}/usage/live/${processName(p)}`,
  quarantine: (n: string, d: string) => `${ns(n)}/quarantine/${digest(d)}/data`,
  quarantineNote: (n: string, d: string) => `${ns(n)}/quarantine/${digest(d)}/data.json`,
  webSummaries: (n: string) => `${ns(n)}/web`,
  webSummary: (n: string, r: string) => `${ns(n)}/web/${name(r)}/_summary`,

  repos: (n: string) => `${ns(n)}/repos`,
  repo: (n: string, r: string) => `${ns(n)}/repos/${name(r)}`,
  blobLink: (n: string, r: string, d: string) => `${ns(n)}/repos/${name(r)}/_blobs/${digest(d)}`,
  manifestRevisions: (n: string, r: string) => `${ns(n)}/repos/${name(r)}/_manifests/revisions`,
  manifestRevision: (n: string, r: string, d: string) => `${ns(n)}/repos/${name(r)}/_manifests/revisions/${digest(d)}`,
  tags: (n: string, r: string) => `${ns(n)}/repos/${name(r)}/_manifests/tags`,
  tag: (n: string, r: string, t: string) => `${ns(n)}/repos/${name(r)}/_manifests/tags/${tag(t)}`,
  referrers: (n: string, r: string, subject: string) => `${ns(n)}/repos/${name(r)}/_referrers/${digest(subject)}`,
  referrer: (n: string, r: string, subject: string, d: string) =>
    `${ns(n)}/repos/${name(r)}/_referrers/${digest(subject)}/${digest(d)}`,

  /** The pull-through cache of one upstream (see the layout above). */
  mirror: (m: string) => mirror(m),
  mirrorBlobs: (m: string) => `${mirror(m)}/blobs`,
  mirrorBlob: (m: string, d: string) => `${mirror(m)}/blobs/${digest(d)}`,
  mirrorBlobData: (m: string, d: string) => `${mirror(m)}/blobs/${digest(d)}/data`,
  mirrorBlobPart: (m: string, d: string, id: string, i: number) => `${mirror(m)}/blobs/${digest(d)}/parts/${uuid(id)}/${index(i)}`,
  mirrorManifestMeta: (m: string, d: string) => `${mirror(m)}/blobs/${digest(d)}/manifest`,
  mirrorTouched: (m: string, d: string) => `${mirror(m)}/blobs/${digest(d)}/touched`,
  mirrorPulled: (m: string, d: string) => `${mirror(m)}/blobs/${digest(d)}/pulled`,
  mirrorTombstone: (m: string, d: string) => `${mirror(m)}/blobs/${digest(d)}/tombstone`,
  mirrorTags: (m: string) => `${mirror(m)}/tags`,
  mirrorPruneLock: (m: string) => `${mirror(m)}/prune.lock`,
  mirrorUsageReport: (m: string) => `${mirror(m)}/usage/last.json`,
  mirrorUsageLive: (m: string) => `${mirror(m)}/usage/live`,
  mirrorUsageProcess: (m: string, p: string) => `${mirror(m)}/usage/live/${processName(p)}`,
  mirrorTag: (m: string, r: string, t: string) => `${mirror(m)}/tags/${name(r)}/_tag/${tag(t)}`,
};

/** The digest and the rest of a path under a mirror's `blobs/`; null for anything else. */
export function parseMirrorBlobPath(registry: string, p: string): { digest: string; rest: string } | null {
  return parseDigestDir(`${mirror(registry)}/blobs/`, p);
}

/** The upstream repository and tag of a path under a mirror's `tags/`; null for anything else. */
export function parseMirrorTagPath(registry: string, p: string): { repo: string; tag: string } | null {
  const prefix = `${mirror(registry)}/tags/`;
  if (!p.startsWith(prefix)) return null;
  const tail = p.slice(prefix.length);
  const at = tail.lastIndexOf('/_tag/');
  if (at <= 0) return null;
  const repo = tail.slice(0, at);
  const t = tail.slice(at + '/_tag/'.length);
  return validName(repo) && validTag(t) ? { repo, tag: t } : null;
}

/** The digest and the rest of a path under `<ns>/blobs/`; null for anything else. */
export function parseBlobPath(namespace: string, p: string): { digest: string; rest: string } | null {
  return parseDigestDir(`${ns(namespace)}/blobs/`, p);
}

/** `<prefix><digest>/<rest>` split, or null when the first segment after `prefix` is not a digest. */
function parseDigestDir(prefix: string, p: string): { digest: string; rest: string } | null {
  if (!p.startsWith(prefix)) return null;
  const tail = p.slice(prefix.length);
  const at = tail.indexOf('/');
  if (at <= 0) return null;
  const d = tail.slice(0, at);
  return validDigest(d) ? { digest: d, rest: tail.slice(at + 1) } : null;
}

/** The blob an upload directory's object claims it for, if the object (`rest`, as parseUploadPath gives it) is a claim. */
export function uploadOwnerOf(rest: string): string | null {
  const d = rest.startsWith('owner.') ? rest.slice('owner.'.length) : '';
  return validDigest(d) ? d : null;
}

/** Parse a path under `<ns>/uploads/` back into the upload's id and the rest; null for anything else. */
export function parseUploadPath(namespace: string, p: string): { id: string; rest: string } | null {
  const prefix = `${ns(namespace)}/uploads/`;
  if (!p.startsWith(prefix)) return null;
  const [id, ...rest] = p.slice(prefix.length).split('/');
  return id ? { id, rest: rest.join('/') } : null;
}

/** Parse a path under `<ns>/repos/` back into repository name and the rest; null for anything else. */
/** The repository of a `<ns>/web/<name>/_summary` path; null for anything else. */
export function parseWebSummaryPath(namespace: string, p: string): string | null {
  const prefix = `${ns(namespace)}/web/`;
  if (!p.startsWith(prefix) || !p.endsWith('/_summary')) return null;
  const repo = p.slice(prefix.length, -'/_summary'.length);
  return validName(repo) ? repo : null;
}

export function parseRepoPath(namespace: string, p: string): { repo: string; rest: string } | null {
  const prefix = `${ns(namespace)}/repos/`;
  if (!p.startsWith(prefix)) return null;
  const tail = p.slice(prefix.length);
  const at = tail.indexOf('/_');
  if (at <= 0) return null;
  const repo = tail.slice(0, at);
  return validName(repo) ? { repo, rest: tail.slice(at + 1) } : null;
}
