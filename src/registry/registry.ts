/**
 * The registry core as one object: what the HTTP layer, prune and fsck work with. It knows the storage driver
 * interface and nothing of HTTP.
 */
import type { StorageDriver } from '../storage/driver.js';
import { BlobLinks, Blobs } from './blobs.js';
import { Manifests } from './manifests.js';
import { parseRepoPath, paths } from './paths.js';
import type { UploadLimits } from './upload-limits.js';
import { Uploads } from './uploads.js';
import type { CommitMode } from './upload-commit.js';
import type { LockService } from '../locks/lock-service.js';
import { Quotas, type QuotaConfig } from './quota.js';

export class Registry {
  readonly blobs: Blobs;
  readonly uploads: Uploads;
  readonly manifests: Manifests;
  /** Present when a quota is configured for some namespace. */
  readonly quotas?: Quotas;

  constructor(
    readonly driver: StorageDriver,
    opts: { blobRedirectSeconds?: number; limits?: UploadLimits; uploadExpiry?: number; commit?: CommitMode; locks?: LockService; quotas?: QuotaConfig } = {},
  ) {
    const links = new BlobLinks(driver);
    this.blobs = new Blobs(driver, links, opts.blobRedirectSeconds);
    if (opts.quotas) this.quotas = new Quotas(driver, opts.quotas);
    this.uploads = new Uploads(driver, links, opts.limits, opts.uploadExpiry, opts.commit, opts.locks, this.quotas);
    this.manifests = new Manifests(driver, this.blobs, this.quotas);
  }

  /** Repository names of a namespace that hold at least one manifest, sorted, after `last`, at most `n`. */
  async catalog(ns: string, opts: { n?: number; last?: string } = {}): Promise<{ repositories: string[]; more: boolean }> {
    // Listing order is by full path, in which "a-b/..." sorts before "a/_x", so collect, then sort.
    const names = new Set<string>();
    for await (const o of this.driver.list(paths.repos(ns))) {
      const parsed = parseRepoPath(ns, o.path);
      if (parsed && parsed.rest.startsWith('_manifests/')) names.add(parsed.repo);
    }
    const after = [...names].sort().filter((r) => opts.last === undefined || r > opts.last);
    const n = opts.n ?? after.length;
    return { repositories: after.slice(0, n), more: after.length > n };
  }

  private readonly beforeClose: (() => Promise<void>)[] = [];

  /** Work to finish before storage closes (the web page's pending summary writes). */
  onClose(fn: () => Promise<void>): void {
    this.beforeClose.push(fn);
  }

  async close(): Promise<void> {
    await Promise.all(this.beforeClose.map((fn) => fn().catch(() => {})));
    await this.quotas?.close().catch(() => {});
    return this.driver.close();
  }
}
