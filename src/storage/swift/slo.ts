/**
 * Planning a static large object from recorded parts, within Swift's limits:
 * - GETs of an SLO are throttled (1 segment/s) after its 10th segment under 1 MiB, so runs of small parts are
 *   merged into objects of at least 1 MiB (only small parts are ever re-read);
 * - a manifest holds at most 1000 segments, so longer lists are split into sub-manifests joined by a top one.
 * Pure functions; the driver carries the plan out.
 */
import { createHash } from 'node:crypto';
import type { Part } from '../driver.js';

export const MIN_UNTHROTTLED_SEGMENT = 1024 * 1024;
/** Swift's rate_limit_after_segment default is 10; stay under it. */
export const MAX_SMALL_SEGMENTS = 9;
export const MAX_SEGMENTS = 1000;

export interface Segment {
  path: string;
  /** md5 hex of a plain object, or the SLO etag of a sub-manifest. */
  etag: string;
  size: number;
}

/** Step 1: which runs of small parts to merge. Segments that stand for a merge say which one. */
export interface MergePlan {
  merges: { path: string; parts: Required<Part>[] }[];
  segments: (Segment | { merge: number })[];
}

/** Step 2: the manifests to write, sub-manifests first. */
export interface ManifestPlan {
  subManifests: { path: string; segments: Segment[] }[];
  top: Segment[];
}

/** Swift's SLO etag: the md5 of the segments' etags written one after another. */
export function sloEtag(segments: Segment[]): string {
  const h = createHash('md5');
  for (const s of segments) h.update(s.etag);
  return h.digest('hex');
}

/**
 * `dir` holds the objects the plan derives (merged parts, sub-manifests). It must belong to one upload (the
 * directory of its parts), so that two uploads of one digest committing at once never write the same name; `tag`
 * (fresh for each join) keeps a second join in one directory from rewriting what the first one's blob reads.
 */
export function planMerges(dir: string, parts: Required<Part>[], tag = ''): MergePlan {
  const merges: MergePlan['merges'] = [];
  const segments: MergePlan['segments'] = [];
  const small = parts.slice(0, -1).filter((p) => p.size < MIN_UNTHROTTLED_SEGMENT).length;
  if (small <= MAX_SMALL_SEGMENTS) {
    return { merges, segments: parts.map((p) => ({ path: p.path, etag: p.md5, size: p.size })) };
  }
  // Gather consecutive small parts until the group reaches 1 MiB; large parts stay as they are.
  let run: Required<Part>[] = [];
  let runSize = 0;
  const flush = () => {
    if (run.length === 1) segments.push({ path: run[0].path, etag: run[0].md5, size: run[0].size });
    else if (run.length > 1) {
      merges.push({ path: `${dir}/merged-${merges.length}${tag && `.${tag}`}`, parts: run });
      segments.push({ merge: merges.length - 1 });
    }
    run = [];
    runSize = 0;
  };
  for (const p of parts) {
    if (p.size >= MIN_UNTHROTTLED_SEGMENT) {
      flush();
      segments.push({ path: p.path, etag: p.md5, size: p.size });
      continue;
    }
    run.push(p);
    runSize += p.size;
    if (runSize >= MIN_UNTHROTTLED_SEGMENT) flush();
  }
  flush();
  return { merges, segments };
}

export function planManifests(dir: string, segments: Segment[], maxSegments = MAX_SEGMENTS, tag = ''): ManifestPlan {
  if (segments.length <= maxSegments) return { subManifests: [], top: segments };
  const subManifests: ManifestPlan['subManifests'] = [];
  for (let i = 0; i < segments.length; i += maxSegments) {
    subManifests.push({ path: `${dir}/manifest-${subManifests.length}${tag && `.${tag}`}`, segments: segments.slice(i, i + maxSegments) });
  }
  if (subManifests.length > maxSegments) throw new Error(`too many parts for one object: ${segments.length}`);
  const top = subManifests.map((s) => ({ path: s.path, etag: sloEtag(s.segments), size: s.segments.reduce((n, x) => n + x.size, 0) }));
  return { subManifests, top };
}
