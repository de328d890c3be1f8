/**
 * What a namespace stores: its bytes (the distinct blobs of the namespace, manifests included, each counted once at
 * the size its data reads as, so a linked blob's segments under uploads/ and a blob's parts are never counted
 * again), manifests, tags, oldest and newest push; and the same per repository, where shares overlap (a layer two
 * repositories use counts in both, once in the namespace).
 *
 * Prune tallies it as it walks (UsageTally) and stores it at usage/last.json; `computeUsage` walks afresh, changing
 * nothing. Between prunes, quota.ts adds what servers committed since `asOf`.
 */
import { PathNotFound, type StorageDriver } from '../storage/driver.js';
import { groups } from './listing.js';
import { needs } from './manifest-doc.js';
import { parseBlobPath, parseRepoPath, paths, validDigest, validTag } from './paths.js';

export interface RepositoryUsage {
  bytes: number;
  blobs: number;
  manifests: number;
  tags: number;
  /** Times of the oldest and newest manifest revision (ISO 8601); absent without manifests. */
  oldestPush?: string;
  newestPush?: string;
}

export interface NamespaceUsage extends RepositoryUsage {
  namespace: string;
  /** Who walked: a prune (what it kept) or `berth usage --fresh`. */
  source: 'prune' | 'fresh';
  /** When the walk of blobs began: a blob committed later may be missing from `bytes` (quota.ts counts it). */
  asOf: string;
  finished: string;
  repositories: Record<string, RepositoryUsage>;
}

interface Counts {
  bytes: number;
  blobs: number;
  manifests: number;
  tags: number;
  oldest: number;
  newest: number;
}
const counts = (): Counts => ({ bytes: 0, blobs: 0, manifests: 0, tags: 0, oldest: Infinity, newest: -Infinity });

/**
 * Counts gathered during a walk: repositories first (their tags, manifests and the blobs those need), then blobs
 * with their sizes. Memory: the repositories needing each needed digest.
 */
export class UsageTally {
  private readonly repos = new Map<string, Counts>();
  private readonly neededBy = new Map<string, string[]>();
  private readonly total = counts();
  private blobsFrom = Date.now();

  private repo(name: string): Counts {
    let c = this.repos.get(name);
    if (!c) this.repos.set(name, (c = counts()));
    return c;
  }

  tag(repo: string): void {
    this.repo(repo).tags++;
  }

  manifest(repo: string, modified: Date): void {
    const c = this.repo(repo);
    const t = modified.getTime();
    c.manifests++;
    c.oldest = Math.min(c.oldest, t);
    c.newest = Math.max(c.newest, t);
  }

  /** Did the walk count a (kept) manifest in `repo`? */
  hasManifests(repo: string): boolean {
    return (this.repos.get(repo)?.manifests ?? 0) > 0;
  }

  /** The repository's manifests need blob `digest` (a repository's needs come together, so one check dedups). */
  need(repo: string, digest: string): void {
    const list = this.neededBy.get(digest);
    if (!list) this.neededBy.set(digest, [repo]);
    else if (!list.includes(repo)) list.push(repo);
  }

  /** The blob walk begins: what is committed from now on may be missed. */
  startBlobs(): void {
    this.blobsFrom = Date.now();
  }

  /** A blob that stays stored, at the size of its data. */
  blob(digest: string, size: number): void {
    this.total.bytes += size;
    this.total.blobs++;
    for (const repo of this.neededBy.get(digest) ?? []) {
      const c = this.repo(repo);
      c.bytes += size;
      c.blobs++;
    }
  }

  result(namespace: string, source: NamespaceUsage['source']): NamespaceUsage {
    const repositories: Record<string, RepositoryUsage> = {};
    const all: Counts = { ...this.total };
    for (const name of [...this.repos.keys()].sort()) {
      const c = this.repos.get(name)!;
      if (c.manifests === 0 && c.tags === 0) continue;
      repositories[name] = view(c);
      all.manifests += c.manifests;
      all.tags += c.tags;
      all.oldest = Math.min(all.oldest, c.oldest);
      all.newest = Math.max(all.newest, c.newest);
    }
    const finished = new Date().toISOString();
    return { namespace, source, asOf: new Date(this.blobsFrom).toISOString(), finished, ...view(all), repositories };
  }
}

function view(c: Counts): RepositoryUsage {
  const u: RepositoryUsage = { bytes: c.bytes, blobs: c.blobs, manifests: c.manifests, tags: c.tags };
  if (Number.isFinite(c.oldest)) u.oldestPush = new Date(c.oldest).toISOString();
  if (Number.isFinite(c.newest)) u.newestPush = new Date(c.newest).toISOString();
  return u;
}

/** Manifest bodies read at once by a fresh walk (Swift answers each in a few ms; one at a time would be slow). */
const READS_AT_ONCE = 8;
const PROGRESS_EVERY_MS = 5000;

/** The namespace's usage now, from a read-only walk: one listing of repos/ and blobs/, one read per manifest. */
export async function computeUsage(driver: StorageDriver, ns: string, progress?: (line: string) => void): Promise<NamespaceUsage> {
  const tally = new UsageTally();
  let manifests = 0;
  let blobs = 0;
  let last = Date.now();
  const tick = (stage: string) => {
    if (!progress || Date.now() - last < PROGRESS_EVERY_MS) return;
    last = Date.now();
    progress(`usage ${ns}: ${stage}: ${manifests} manifests, ${blobs} blobs counted`);
  };
  for await (const { key: repo, objects } of groups(driver.list(paths.repos(ns)), (o) => parseRepoPath(ns, o.path)?.repo ?? null)) {
    const revisions: string[] = [];
    for (const o of objects) {
      const rest = parseRepoPath(ns, o.path)!.rest.split('/');
      if (rest.length !== 3 || rest[0] !== '_manifests') continue;
      if (rest[1] === 'tags' && validTag(rest[2])) tally.tag(repo);
      else if (rest[1] === 'revisions' && validDigest(rest[2])) {
        tally.manifest(repo, o.modified);
        revisions.push(rest[2]);
      }
    }
    for (let i = 0; i < revisions.length; i += READS_AT_ONCE) {
      const batch = revisions.slice(i, i + READS_AT_ONCE);
      const bodies = await Promise.all(batch.map((d) => readOptional(driver, paths.blobData(ns, d))));
      batch.forEach((d, j) => {
        tally.need(repo, d);
        for (const child of needs(bodies[j] ?? '')) tally.need(repo, child.digest);
      });
      manifests += batch.length;
      tick('repositories');
    }
  }
  tally.startBlobs();
  for await (const { key: digest, objects } of groups(driver.list(paths.blobs(ns)), (o) => parseBlobPath(ns, o.path)?.digest ?? null)) {
    const data = objects.find((o) => parseBlobPath(ns, o.path)!.rest === 'data');
    if (data) tally.blob(digest, data.size);
    blobs++;
    tick('blobs');
  }
  return tally.result(ns, 'fresh');
}

/**
 * One repository's share now, for a page that shows it: its tags, manifests and the blobs they need, each blob's
 * size from a stat. Costs one listing of the repository, one read per manifest and one stat per blob.
 */
export async function repositoryUsage(driver: StorageDriver, ns: string, repo: string): Promise<RepositoryUsage> {
  const tally = new UsageTally();
  const revisions: string[] = [];
  for await (const o of driver.list(paths.repo(ns, repo))) {
    const rest = parseRepoPath(ns, o.path);
    const parts = rest?.repo === repo ? rest.rest.split('/') : [];
    if (parts.length !== 3 || parts[0] !== '_manifests') continue;
    if (parts[1] === 'tags' && validTag(parts[2])) tally.tag(repo);
    else if (parts[1] === 'revisions' && validDigest(parts[2])) {
      tally.manifest(repo, o.modified);
      revisions.push(parts[2]);
    }
  }
  const needed = new Set<string>(revisions);
  for (let i = 0; i < revisions.length; i += READS_AT_ONCE) {
    const bodies = await Promise.all(revisions.slice(i, i + READS_AT_ONCE).map((d) => readOptional(driver, paths.blobData(ns, d))));
    for (const body of bodies) for (const child of needs(body ?? '')) needed.add(child.digest);
  }
  for (const d of needed) tally.need(repo, d);
  const list = [...needed];
  for (let i = 0; i < list.length; i += READS_AT_ONCE) {
    const batch = list.slice(i, i + READS_AT_ONCE);
    const stats = await Promise.all(batch.map((d) => driver.stat(paths.blobData(ns, d))));
    batch.forEach((d, j) => stats[j] && tally.blob(d, stats[j].size));
  }
  return tally.result(ns, 'fresh').repositories[repo] ?? { bytes: 0, blobs: 0, manifests: 0, tags: 0 };
}

/** Store a walk's figures as the namespace's last usage. */
export async function writeUsage(driver: StorageDriver, usage: NamespaceUsage): Promise<void> {
  await driver.put(paths.usageReport(usage.namespace), Buffer.from(JSON.stringify(usage)), { contentType: 'application/json' });
}

/** The namespace's last stored usage; null if none was stored (or it cannot be understood). */
export async function readUsage(driver: StorageDriver, ns: string): Promise<NamespaceUsage | null> {
  const text = await readOptional(driver, paths.usageReport(ns));
  if (text === null) return null;
  try {
    const u = JSON.parse(text) as NamespaceUsage;
    const ok = u.namespace === ns && Number.isSafeInteger(u.bytes) && u.bytes >= 0 && !Number.isNaN(Date.parse(u.asOf)) && typeof u.repositories === 'object';
    return ok ? u : null;
  } catch {
    return null;
  }
}

async function readOptional(driver: StorageDriver, path: string): Promise<string | null> {
  try {
    return (await driver.read(path)).toString('utf8');
  } catch (err) {
    if (err instanceof PathNotFound) return null;
    throw err;
  }
}
