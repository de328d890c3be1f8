/**
 * fsck: re-read every stored blob and re-hash it, ask the backend about what reading cannot show (Swift SLO
 * segments against the manifest's record), and check that every manifest's blobs exist. `repair` moves a corrupt
 * blob to quarantine: it stops being served, and pushing it again stores it afresh. A blob that could not be read
 * (a 503, a reset, a stall) is only reported: the next read may well succeed, and a healthy blob must not be lost.
 */
import { DEFAULTS } from '../config/defaults.js';
import { createHash } from 'node:crypto';
import { PathNotFound, type StorageDriver } from '../storage/driver.js';
import { digestAlgorithm, parseBlobPath, parseRepoPath, paths, validDigest } from './paths.js';
import { forEachLimited } from '../util/concurrency.js';
import { groups } from './listing.js';
import { needs } from './manifest-doc.js';

export interface FsckProblem {
  /** shared: an object that two blobs read from (deleting either blob would break the other). */
  kind: 'corrupt' | 'unreadable' | 'segment' | 'missing' | 'shared';
  path: string;
  detail: string;
}

export interface FsckReport {
  namespace: string;
  blobs: number;
  bytes: number;
  manifests: number;
  problems: FsckProblem[];
  quarantined: number;
}

export interface FsckOptions {
  repair?: boolean;
  /** Blobs read at once. */
  parallel?: number;
  progress?: (line: string) => void;
}

const PROGRESS_EVERY_MS = 5000;

export class Fsck {
  constructor(private readonly driver: StorageDriver) {}

  async check(ns: string, opts: FsckOptions = {}): Promise<FsckReport> {
    const report: FsckReport = { namespace: ns, blobs: 0, bytes: 0, manifests: 0, problems: [], quarantined: 0 };
    let last = Date.now();
    const tick = () => {
      if (!opts.progress || Date.now() - last < PROGRESS_EVERY_MS) return;
      last = Date.now();
      opts.progress(`fsck ${ns}: ${report.blobs} blobs (${(report.bytes / 2 ** 20).toFixed(0)} MiB), ${report.manifests} manifests checked`);
    };

    // Blobs, with bounded parallelism; the listing streams, so at most `parallel` blobs are held at a time.
    const blobs = groups(this.driver.list(paths.blobs(ns)), (o) => parseBlobPath(ns, o.path)?.digest ?? null);
    const readers = new Map<string, string[]>();
    await forEachLimited(blobs, opts.parallel ?? DEFAULTS.fsckParallel, async ({ key: digest, objects }) => {
      if (!objects.some((o) => parseBlobPath(ns, o.path)!.rest === 'data')) return;
      await this.blob(ns, digest, report, opts);
      await this.segments(ns, digest, readers, report);
      tick();
    });
    for (const [path, by] of readers) {
      if (by.length > 1) report.problems.push({ kind: 'shared', path, detail: `read by ${by.length} blobs: ${by.sort().join(', ')}` });
    }

    // Manifests: every revision's own bytes and the blobs it names must exist.
    for await (const o of this.driver.list(paths.repos(ns))) {
      const parsed = parseRepoPath(ns, o.path);
      const rest = parsed?.rest.split('/');
      if (!parsed || !rest || rest[0] !== '_manifests' || rest[1] !== 'revisions' || !validDigest(rest[2] ?? '')) continue;
      report.manifests++;
      const digest = rest[2];
      try {
        const body = (await this.driver.read(paths.blobData(ns, digest))).toString('utf8');
        for (const need of needs(body)) {
          if (!(await this.driver.stat(paths.blobData(ns, need.digest)))) {
            report.problems.push({ kind: 'missing', path: o.path, detail: `manifest ${digest} of ${parsed.repo} references missing ${need.digest}` });
          }
        }
      } catch (err) {
        // Only an answer of "not found" means missing; any other storage error is this manifest's problem, not the run's.
        report.problems.push(
          err instanceof PathNotFound
            ? { kind: 'missing', path: o.path, detail: `manifest ${digest} of ${parsed.repo} has no stored bytes` }
            : { kind: 'unreadable', path: o.path, detail: `manifest ${digest} of ${parsed.repo}: ${(err as Error).message}` },
        );
      }
      tick();
    }
    return report;
  }

  /**
   * Take the blob out of service. Moved whole where the backend can; where it cannot (Swift refuses to copy an SLO
   * whose segments changed), a note of what was found takes its place in quarantine and the blob is deleted.
   */
  private async quarantine(ns: string, digest: string, found: FsckProblem[]): Promise<void> {
    const path = paths.blobData(ns, digest);
    try {
      await this.driver.move(path, paths.quarantine(ns, digest));
    } catch {
      const note = { digest, quarantined: new Date().toISOString(), problems: found };
      await this.driver.put(paths.quarantineNote(ns, digest), Buffer.from(JSON.stringify(note, null, 2)), { contentType: 'application/json' });
      await this.driver.delete(path);
    }
  }

  /** Note which blob reads each stored object (Swift: SLO segments and sub-manifests; one request per blob). */
  private async segments(ns: string, digest: string, readers: Map<string, string[]>, report: FsckReport): Promise<void> {
    let read: string[];
    try {
      read = (await this.driver.segments?.(paths.blobData(ns, digest))) ?? [];
    } catch (err) {
      report.problems.push({ kind: 'unreadable', path: paths.blobData(ns, digest), detail: `segments not listed: ${(err as Error).message}` });
      return;
    }
    for (const p of new Set(read)) readers.set(p, [...(readers.get(p) ?? []), digest]);
  }

  private async blob(ns: string, digest: string, report: FsckReport, opts: FsckOptions): Promise<void> {
    const path = paths.blobData(ns, digest);
    const { problems: found, bytes } = await checkStored(this.driver, path, digest);
    report.bytes += bytes;
    report.blobs++;
    report.problems.push(...found);
    // Only evidence of damage takes a blob out of service: all its bytes hashing to another digest, or segments
    // that differ from the manifest's record. An unreadable blob stays where it is.
    if (opts.repair && found.some((p) => p.kind === 'corrupt' || p.kind === 'segment')) {
      try {
        await this.quarantine(ns, digest, found);
        report.quarantined++;
      } catch (err) {
        report.problems.push({ kind: 'unreadable', path, detail: `not quarantined: ${(err as Error).message}` });
      }
    }
  }
}

/**
 * Read a stored object whole and hash it against its digest, and ask the backend what reading cannot show (Swift:
 * segments against the join's record). `corrupt` and `segment` are evidence of damage; `unreadable` is not (the
 * next read may succeed). Used for pushed blobs and for the pull-through cache's items (mirror/fsck.ts).
 */
export async function checkStored(driver: StorageDriver, path: string, digest: string): Promise<{ problems: FsckProblem[]; bytes: number }> {
  const found: FsckProblem[] = [];
  let bytes = 0;
  try {
    for (const detail of (await driver.verify?.(path)) ?? []) found.push({ kind: 'segment', path, detail });
  } catch (err) {
    // Storage failed to answer: that says nothing about the blob, and the run goes on.
    found.push({ kind: 'unreadable', path, detail: `segments not checked: ${(err as Error).message}` });
  }
  try {
    const { body, size: expected } = await driver.get(path);
    const hash = createHash(digestAlgorithm(digest));
    let size = 0;
    for await (const piece of body as AsyncIterable<Buffer>) {
      hash.update(piece);
      size += piece.length;
    }
    bytes = size;
    const actual = `${digestAlgorithm(digest)}:${hash.digest('hex')}`;
    // A short read is a failed read, not evidence that the stored bytes are wrong.
    if (size !== expected) found.push({ kind: 'unreadable', path, detail: `read ${size} of ${expected} bytes` });
    else if (actual !== digest) found.push({ kind: 'corrupt', path, detail: `content hashes to ${actual}` });
  } catch (err) {
    found.push({ kind: 'unreadable', path, detail: (err as Error).message });
  }
  return { problems: found, bytes };
}
