/**
 * `berth prune` for the pull-through cache: cached content expires by its last pull (`keep` seconds), whatever
 * the namespaces' push-age rules say. An item is kept while its `pulled`, `touched` or data is younger than that,
 * and so is everything a kept manifest needs (an index's children, an image's config and layers), so a client
 * that pulls only the manifest (it has the layers) does not leave the cache with half an image when the upstream
 * is down. Expired items go by prune's protocol in batches (prune-sweep.ts): tombstone, re-read `touched` and
 * `pulled` (a fill or pull meanwhile keeps it), delete the data in one `deleteMany` per batch, the tombstones in
 * another after.
 *
 * With `max-size`, kept items then go least recently used first until the cache fits, except those used within
 * SIZE_GRACE_MS (a fill in progress, a pull right now): the cap is met at the next run if they keep it from fitting.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { MirrorConfig } from '../config/mirrors.js';
import { groups } from '../registry/listing.js';
import { needs } from '../registry/manifest-doc.js';
import { parseMirrorBlobPath, parseMirrorTagPath, paths } from '../registry/paths.js';
import type { PruneLog, Tally } from '../registry/prune.js';
import type { ObjectInfo, StorageDriver } from '../storage/driver.js';
import { createExclusive } from '../storage/exclusive.js';
import { DELETE_BATCH, deleteAll } from '../registry/prune-batch.js';
import { PRUNE_REQUESTS } from '../registry/prune-limit.js';
import { drainLimited, forEachLimited, Limiter } from '../util/concurrency.js';
import { writeCacheFigure } from './cap.js';
import { sweepItems, type SweepContext, type SweepItem, type SweepOutcome } from './prune-sweep.js';

export interface MirrorPruneReport {
  registry: string;
  refused?: string;
  tags: Tally;
  blobs: Tally;
  bytes: Tally;
  failures: number;
}

export interface MirrorPruneOptions {
  dryRun?: boolean;
  now?: Date;
  log: PruneLog;
  staleLockSeconds?: number;
  lockSettleMs?: number;
}

interface Item {
  digest: string;
  objects: ObjectInfo[];
  size: number;
  manifest: boolean;
  lastUse: number;
}

const tally = (): Tally => ({ examined: 0, kept: 0, deleted: 0 });
const SIZE_GRACE_MS = 10 * 60_000;

export async function pruneMirror(driver: StorageDriver, m: MirrorConfig, opts: MirrorPruneOptions): Promise<MirrorPruneReport> {
  const report: MirrorPruneReport = { registry: m.registry, tags: tally(), blobs: tally(), bytes: tally(), failures: 0 };
  const now = (opts.now ?? new Date()).getTime();
  const cutoff = now - m.keep * 1000;
  const lock = opts.dryRun ? '' : await takeLock(driver, m.registry, opts);
  if (lock === null) return { ...report, refused: `another prune holds ${paths.mirrorPruneLock(m.registry)}` };
  const limit = new Limiter(PRUNE_REQUESTS);
  const ctx: SweepContext = {
    driver,
    registry: m.registry,
    limit,
    failed(what, detail, err) {
      report.failures++;
      opts.log.warn({ registry: m.registry, ...detail, err: err.message }, what);
    },
    claimed: (blob) => opts.log.info({ registry: m.registry, blob }, 'a pull or fill used the cached item during prune; kept'),
    deleted: (path, blob) => opts.log.debug({ registry: m.registry, path, blob }, 'deleted'),
  };
  try {
    // Every item's last use; then what kept manifests need.
    const listed = new Date();
    const items = new Map<string, Item>();
    for await (const { key: digest, objects } of groups(driver.list(paths.mirrorBlobs(m.registry)), (o) => parseMirrorBlobPath(m.registry, o.path)?.digest ?? null)) {
      const rest = (o: ObjectInfo) => parseMirrorBlobPath(m.registry, o.path)!.rest;
      const data = objects.find((o) => rest(o) === 'data');
      const used = objects.filter((o) => rest(o) !== 'tombstone' && rest(o) !== 'manifest');
      items.set(digest, {
        digest,
        objects,
        size: data?.size ?? objects.reduce((n, o) => n + o.size, 0),
        manifest: objects.some((o) => rest(o) === 'manifest'),
        lastUse: Math.max(0, ...used.map((o) => o.modified.getTime())),
      });
    }
    const keep = new Set<string>();
    const queue = [...items.values()].filter((i) => i.lastUse >= cutoff).map((i) => i.digest);
    for (const d of queue) keep.add(d);
    // Kept manifests are read side by side (an index's children join the walk as it is read).
    await drainLimited(queue, PRUNE_REQUESTS, async (d) => {
      if (!items.get(d)?.manifest) return;
      const body = await limit.run(() => driver.read(paths.mirrorBlobData(m.registry, d))).then((b) => b.toString('utf8'), () => null);
      for (const child of body === null ? [] : needs(body)) {
        if (!keep.has(child.digest) && items.has(child.digest)) {
          keep.add(child.digest);
          queue.push(child.digest);
        }
      }
    });

    // Over the size cap: the least recently used kept items go too (judged against the grace, not `keep`).
    const evicted = new Set<string>();
    if (m.maxSize !== undefined) {
      const kept = [...items.values()].filter((i) => keep.has(i.digest)).sort((a, b) => a.lastUse - b.lastUse);
      let total = kept.reduce((n, i) => n + i.size, 0);
      for (const i of kept) {
        if (total <= m.maxSize || i.lastUse >= now - SIZE_GRACE_MS) break;
        keep.delete(i.digest);
        evicted.add(i.digest);
        total -= i.size;
      }
      if (total > m.maxSize) opts.log.warn({ registry: m.registry, bytes: total, maxSize: m.maxSize }, 'the cache stays over max-size: what is left was used within the last ten minutes');
    }

    // Tags: read a few at a time; an expired one is stat'ed again just before its batch's delete (a revalidation
    // during the run rewrites it, and keeps it).
    const expiredTags: { path: string; repository: string; tag: string }[] = [];
    await forEachLimited(driver.list(paths.mirrorTags(m.registry)), PRUNE_REQUESTS, async (o) => {
      const parsed = parseMirrorTagPath(m.registry, o.path);
      if (!parsed) return;
      report.tags.examined++;
      const target = await limit.run(() => driver.read(o.path)).then((b) => (JSON.parse(b.toString('utf8')) as { digest?: string }).digest, () => undefined);
      if (o.modified.getTime() >= cutoff || (target !== undefined && keep.has(target))) report.tags.kept++;
      else expiredTags.push({ path: o.path, repository: parsed.repo, tag: parsed.tag });
    });
    for (let i = 0; i < expiredTags.length; i += DELETE_BATCH) {
      const batch = expiredTags.slice(i, i + DELETE_BATCH);
      const still = opts.dryRun ? batch : [];
      if (!opts.dryRun) {
        await forEachLimited(batch, PRUNE_REQUESTS, async (t) => {
          const now = await limit.run(() => driver.stat(t.path)).catch(() => undefined);
          if (now === null || (now && now.modified.getTime() < cutoff)) still.push(t);
        });
      }
      const bad = new Map((opts.dryRun ? [] : await deleteAll(driver, still.map((t) => ({ path: t.path, joined: false })))).map((f) => [f.path, f.error]));
      report.tags.kept += batch.length - still.length;
      for (const t of still) {
        const err = bad.get(t.path);
        if (err) {
          ctx.failed('delete failed', { path: t.path }, err);
          report.tags.kept++;
        } else {
          report.tags.deleted++;
          if (!opts.dryRun) opts.log.debug({ registry: m.registry, path: t.path, repository: t.repository, tag: t.tag }, 'deleted');
        }
      }
    }

    // Items: the expired and evicted ones by the batched protocol (prune-sweep.ts); dry run: what would go.
    const doomed: SweepItem[] = [];
    for (const item of items.values()) {
      report.blobs.examined++;
      report.bytes.examined += item.size;
      if (keep.has(item.digest)) {
        report.blobs.kept++;
        report.bytes.kept += item.size;
      } else doomed.push({ digest: item.digest, objects: item.objects, cutoff: evicted.has(item.digest) ? now - SIZE_GRACE_MS : cutoff });
    }
    const outcome = opts.dryRun ? new Map<string, SweepOutcome>() : await sweepItems(ctx, doomed);
    for (const d of doomed) {
      const size = items.get(d.digest)!.size;
      const gone = opts.dryRun || outcome.get(d.digest) === 'deleted';
      report.blobs[gone ? 'deleted' : 'kept']++;
      report.bytes[gone ? 'deleted' : 'kept'] += size;
    }
    // What is left, for max-size between prunes (cap.ts): fills from `listed` on are counted by the servers.
    if (!opts.dryRun) {
      await writeCacheFigure(driver, { registry: m.registry, bytes: report.bytes.kept, asOf: listed.toISOString() }).catch((err: Error) =>
        opts.log.warn({ registry: m.registry, err: err.message }, 'could not write the cache size'),
      );
    }
  } finally {
    if (lock) await releaseLock(driver, m.registry, lock);
  }
  return report;
}

async function takeLock(driver: StorageDriver, registry: string, opts: MirrorPruneOptions): Promise<string | null> {
  const path = paths.mirrorPruneLock(registry);
  const held = await driver.stat(path);
  if (held && held.modified.getTime() > Date.now() - (opts.staleLockSeconds ?? 6 * 3600) * 1000) return null;
  if (held) await driver.delete(path);
  const token = randomBytes(12).toString('hex');
  const body = Buffer.from(JSON.stringify({ token, pid: process.pid, host: hostname(), started: new Date().toISOString() }));
  return (await createExclusive(driver, path, body, { settleMs: opts.lockSettleMs, contentType: 'application/json' })) ? token : null;
}

async function releaseLock(driver: StorageDriver, registry: string, token: string): Promise<void> {
  const path = paths.mirrorPruneLock(registry);
  const holder = await driver.read(path).then((b) => (JSON.parse(b.toString()) as { token?: string }).token, () => undefined);
  if (holder === token) await driver.delete(path);
}

export function formatMirrorReport(r: MirrorPruneReport, dryRun: boolean, ms: number): string {
  if (r.refused) return `mirror cache ${r.registry}: skipped: ${r.refused}\n`;
  const row = (name: string, t: Tally) => `  ${name.padEnd(10)}${String(t.examined).padStart(14)}${String(t.kept).padStart(14)}${String(t.deleted).padStart(14)}\n`;
  return (
    `mirror cache ${r.registry}${dryRun ? ' (dry run: nothing deleted; "deleted" is what would go)' : ''}, ${(ms / 1000).toFixed(1)} s\n` +
    `  ${''.padEnd(10)}${'examined'.padStart(14)}${'kept'.padStart(14)}${'deleted'.padStart(14)}\n` +
    row('tags', r.tags) +
    row('blobs', r.blobs) +
    row('bytes', r.bytes) +
    (r.failures > 0 ? `  ${r.failures} deletions failed (see the log)\n` : '')
  );
}
