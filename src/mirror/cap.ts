/**
 * `max-size` between prunes: a blob fill that would take its upstream's cache over the cap still serves its clients
 * but is not stored. The cache's size is known across processes the way tenant quotas know a namespace's usage, with
 * the same tally (registry/quota.ts) keyed by upstream under `mirror.cache/<registry>/usage/`:
 *   the last prune's figure (usage/last.json: the bytes it kept, as of the listing it started from)
 * + what every process's fills stored since (usage/live/<process>, time buckets each process rewrites)
 * + what this process's fills have been admitted for and are writing now.
 * No fill lists the cache.
 *
 * How stale: this process's own fills count at once (from admission), another process's reach this one within
 * FLUSH_MS + REFRESH_MS (about 10 s: it rewrites its object every 5 s, this one re-reads every 5 s). So the cap can
 * be overshot by the fills in flight in other processes, and those they stored in the last ten seconds, each at
 * most `max-blob-size`. That is acceptable: the cap bounds a cache, not a tenant's bill, and the next prune brings
 * it back under (least recently pulled first) and rewrites the figure, which also corrects any drift (a blob filled
 * twice, an item prune or fsck removed). Manifests (4 MiB at most) are counted but always stored: a tag needs them.
 */
import type { MirrorConfig } from '../config/mirrors.js';
import { paths } from '../registry/paths.js';
import { Quotas, type TallyLocation } from '../registry/quota.js';
import { PathNotFound, type StorageDriver } from '../storage/driver.js';

/** What prune writes to usage/last.json. */
export interface CacheFigure {
  registry: string;
  bytes: number;
  /** When the listing the figure comes from began: fills stored later are counted from the live objects. */
  asOf: string;
}

const CACHE_USAGE: TallyLocation = {
  figure: readCacheFigure,
  live: paths.mirrorUsageLive,
  process: paths.mirrorUsageProcess,
};

/** A fill refused by the cap: the cache's size as this process sees it, and the cap. */
export interface OverCap {
  usage: number;
  maxSize: number;
}

export class CacheCap {
  private readonly tally: Quotas;
  /** Bytes of fills admitted in this process and still being written, by registry. */
  private readonly writing = new Map<string, number>();

  constructor(driver: StorageDriver, mirrors: MirrorConfig[], timing?: { refreshMs?: number; flushMs?: number; skewMs?: number }) {
    const byNamespace = Object.fromEntries(mirrors.filter((m) => m.maxSize !== undefined).map((m) => [m.registry, m.maxSize]));
    this.tally = new Quotas(driver, { byNamespace, location: CACHE_USAGE, timing });
  }

  /** The cache's size as this process sees it now (undefined without a cap: nothing is counted then). */
  async usage(registry: string): Promise<number | undefined> {
    if (this.tally.limit(registry) === undefined) return undefined;
    return (await this.tally.usage(registry)) + (this.writing.get(registry) ?? 0);
  }

  /**
   * Store `bytes` with `write` if they fit under the cap; an OverCap (nothing written) if they do not. What
   * `write` stored is added to the tally that every process reads.
   */
  async store(registry: string, bytes: number, write: () => Promise<boolean>): Promise<boolean | OverCap> {
    const maxSize = this.tally.limit(registry);
    if (maxSize === undefined) return write();
    const usage = (await this.tally.usage(registry)) + (this.writing.get(registry) ?? 0);
    if (usage + bytes > maxSize) return { usage, maxSize };
    this.writing.set(registry, (this.writing.get(registry) ?? 0) + bytes);
    try {
      const stored = await write();
      if (stored) this.tally.added(registry, bytes);
      return stored;
    } finally {
      this.writing.set(registry, this.writing.get(registry)! - bytes);
    }
  }

  /** Bytes stored whatever the cap (a manifest). */
  added(registry: string, bytes: number): void {
    this.tally.added(registry, bytes);
  }

  /** Write this process's pending counts (at shutdown). */
  close(): Promise<void> {
    return this.tally.close();
  }
}

export async function writeCacheFigure(driver: StorageDriver, figure: CacheFigure): Promise<void> {
  await driver.put(paths.mirrorUsageReport(figure.registry), Buffer.from(JSON.stringify(figure)), { contentType: 'application/json' });
}

async function readCacheFigure(driver: StorageDriver, registry: string): Promise<CacheFigure | null> {
  let text: string;
  try {
    text = (await driver.read(paths.mirrorUsageReport(registry))).toString('utf8');
  } catch (err) {
    if (err instanceof PathNotFound) return null;
    throw err;
  }
  try {
    const f = JSON.parse(text) as CacheFigure;
    return f.registry === registry && Number.isSafeInteger(f.bytes) && f.bytes >= 0 && !Number.isNaN(Date.parse(f.asOf)) ? f : null;
  } catch {
    return null;
  }
}
