/**
 * `berth fsck` for the pull-through cache: each cached item is checked as fsck checks a pushed blob (read whole and
 * hashed against its digest; on Swift its segments against the join's record), so a cached manifest whose bytes do
 * not hash to its digest is found the same way; a manifest's record ({mediaType}) and every tag must parse. What is
 * normal in the cache is not reported (docs/mirrors.md, "Where it is stored"):
 * - a manifest whose children or layers are not cached (an index is cached before its children; layers are
 *   fetched as clients ask for them);
 * - an item without data (a fill writing, or one that died: prune collects it) or with a tombstone (prune at work);
 * - a tag naming a manifest not cached, while the tag is younger than the upstream's `keep`: it is written beside
 *   its manifest, and max-size eviction or a repair can remove the manifest first; the next pull fetches it again.
 *   An older one is what prune should have removed, and is reported.
 * `repair` removes broken items and tags. That is always safe: the next pull fetches them again from the upstream.
 * An item goes as prune removes one (tombstone first, data, tombstone last: mirror/prune-sweep.ts), so a pull
 * meanwhile never reads half of it. Only evidence of damage removes an item: an unreadable one stays.
 */
import type { MirrorConfig } from '../config/mirrors.js';
import { checkStored, type FsckProblem } from '../registry/fsck.js';
import { groups } from '../registry/listing.js';
import { PRUNE_REQUESTS } from '../registry/prune-limit.js';
import { parseMirrorBlobPath, parseMirrorTagPath, paths, validDigest } from '../registry/paths.js';
import { PathNotFound, type ObjectInfo, type StorageDriver } from '../storage/driver.js';
import { forEachLimited, Limiter } from '../util/concurrency.js';
import { sweepItems, type SweepItem } from './prune-sweep.js';

export interface CacheFsckReport {
  registry: string;
  blobs: number;
  bytes: number;
  manifests: number;
  tags: number;
  problems: FsckProblem[];
  /** Items and tags `repair` removed. */
  removed: number;
}

export interface CacheFsckOptions {
  repair?: boolean;
  /** Items read at once. */
  parallel?: number;
  /** The clock tags are aged by (tests). */
  now?: Date;
}

export async function checkCache(driver: StorageDriver, m: MirrorConfig, opts: CacheFsckOptions = {}): Promise<CacheFsckReport> {
  const registry = m.registry;
  const report: CacheFsckReport = { registry, blobs: 0, bytes: 0, manifests: 0, tags: 0, problems: [], removed: 0 };
  const problem = (kind: FsckProblem['kind'], path: string, detail: string) => report.problems.push({ kind, path, detail: `cache ${registry}: ${detail}` });
  const broken: SweepItem[] = [];
  const rest = (o: ObjectInfo) => parseMirrorBlobPath(registry, o.path)?.rest;
  const items = groups(driver.list(paths.mirrorBlobs(registry)), (o) => parseMirrorBlobPath(registry, o.path)?.digest ?? null);
  await forEachLimited(items, opts.parallel ?? 4, async ({ key: digest, objects }) => {
    if (!objects.some((o) => rest(o) === 'data') || objects.some((o) => rest(o) === 'tombstone')) return;
    const isManifest = objects.some((o) => rest(o) === 'manifest');
    const { problems, bytes } = await checkStored(driver, paths.mirrorBlobData(registry, digest), digest);
    report.blobs++;
    report.bytes += bytes;
    for (const p of problems) problem(p.kind, p.path, `${isManifest ? 'manifest' : 'blob'} ${digest}: ${p.detail}`);
    let damaged = problems.some((p) => p.kind === 'corrupt' || p.kind === 'segment');
    if (isManifest) {
      report.manifests++;
      const meta = await readRecord(driver, paths.mirrorManifestMeta(registry, digest));
      if (meta instanceof Error && !(meta instanceof Garbled)) problem('unreadable', paths.mirrorManifestMeta(registry, digest), `manifest ${digest}: ${meta.message}`);
      else if (meta !== null && (meta instanceof Garbled || typeof (meta as { mediaType?: unknown }).mediaType !== 'string')) {
        // Pulls of it would fail on its record: a pull after the removal fetches it afresh.
        problem('corrupt', paths.mirrorManifestMeta(registry, digest), `manifest ${digest}: its record (media type) is not valid`);
        damaged = true;
      }
    }
    if (damaged) broken.push({ digest, objects });
  });

  // Tags: each must parse and name a digest; one naming a manifest not cached is normal until it is older than keep.
  const oldTag = (opts.now ?? new Date()).getTime() - m.keep * 1000;
  const badTags: string[] = [];
  const removing = new Set(broken.map((i) => i.digest));
  const limit = new Limiter(PRUNE_REQUESTS);
  await forEachLimited(driver.list(paths.mirrorTags(registry)), PRUNE_REQUESTS, async (o) => {
    const parsed = parseMirrorTagPath(registry, o.path);
    if (!parsed) return;
    report.tags++;
    const doc = await limit.run(() => readRecord(driver, o.path));
    if (doc === null) return;
    const name = `tag ${parsed.repo}:${parsed.tag}`;
    if (doc instanceof Error && !(doc instanceof Garbled)) return void problem('unreadable', o.path, `${name}: ${doc.message}`);
    const { digest, mediaType, checked } = doc instanceof Garbled ? ({} as Record<string, unknown>) : (doc as Record<string, unknown>);
    if (typeof digest !== 'string' || !validDigest(digest) || typeof mediaType !== 'string' || typeof checked !== 'number') {
      // Pulls take such a tag for none (mirror/store.ts) and fetch it again; removing it costs nothing.
      problem('corrupt', o.path, `${name}: its record is not valid`);
      return void badTags.push(o.path);
    }
    if (o.modified.getTime() >= oldTag || removing.has(digest)) return;
    const cached = await limit.run(() => driver.stat(paths.mirrorBlobData(registry, digest))).catch(() => undefined);
    if (cached === null) {
      problem('missing', o.path, `${name} names ${digest}, not cached, and is older than keep (prune should have removed it)`);
      badTags.push(o.path);
    }
  });

  if (opts.repair) {
    const outcome = await sweepItems(
      {
        driver,
        registry,
        limit,
        failed: (what, detail, err) => problem('unreadable', detail.path ?? paths.mirrorBlob(registry, detail.blob ?? ''), `not removed: ${what}: ${err.message}`),
      },
      broken,
    );
    report.removed += [...outcome.values()].filter((o) => o === 'deleted').length;
    const failures = badTags.length > 0 ? await driver.deleteMany(badTags) : [];
    for (const f of failures) problem('unreadable', f.path, `not removed: ${f.error.message}`);
    report.removed += badTags.length - failures.length;
  }
  return report;
}

/** Stored bytes that are not the record they should be (damage, not a failed read). */
class Garbled extends Error {}

/** A small JSON record: the parsed value, null when absent, Garbled when not a JSON object, an Error when unreadable. */
async function readRecord(driver: StorageDriver, path: string): Promise<unknown> {
  let text: string;
  try {
    text = (await driver.read(path)).toString('utf8');
  } catch (err) {
    return err instanceof PathNotFound ? null : (err as Error);
  }
  try {
    const value = JSON.parse(text) as unknown;
    return value !== null && typeof value === 'object' ? value : new Garbled('not a JSON object');
  } catch {
    return new Garbled('not JSON');
  }
}

export function formatCacheReport(r: CacheFsckReport, repair: boolean, ms: number): string {
  return (
    `mirror cache ${r.registry}: ${r.blobs} items (${(r.bytes / 2 ** 20).toFixed(1)} MiB, ${r.manifests} manifests) and ${r.tags} tags checked in ` +
    `${(ms / 1000).toFixed(1)} s; ${r.problems.length} problems` +
    (repair ? `, ${r.removed} removed (fetched again on the next pull)` : '') +
    '\n'
  );
}
