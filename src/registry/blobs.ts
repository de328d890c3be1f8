/**
 * Blobs: content-addressed data per namespace, served through per-repository links. A repository may serve a
 * blob only once it was pushed or mounted there; deleting a blob from a repository removes just the link (the
 * data goes when prune finds nothing that references it).
 */
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ByteRange, StorageDriver } from '../storage/driver.js';
import { forEachLimited } from '../util/concurrency.js';
import { blobUnknown } from './errors.js';
import { checkDigest, paths } from './paths.js';
import { verifying } from './verify.js';

export interface BlobInfo {
  digest: string;
  size: number;
}

export class BlobLinks {
  constructor(private readonly driver: StorageDriver) {}

  async link(ns: string, repo: string, digest: string): Promise<void> {
    await this.driver.put(paths.blobLink(ns, repo, digest), Buffer.alloc(0));
  }
  async linked(ns: string, repo: string, digest: string): Promise<boolean> {
    return (await this.driver.stat(paths.blobLink(ns, repo, digest))) !== null;
  }

  /**
   * Record that a push is using these blobs now. Prune never deletes a blob touched within the upload expiry, and
   * it re-reads this marker after writing its tombstone (see prune.ts), so a push that touches a blob and then
   * finds it intact can rely on it.
   */
  async touch(ns: string, digests: string[]): Promise<void> {
    // A manifest names up to a thousand: a few writes at a time, so one push does not crowd out other requests.
    await forEachLimited([...new Set(digests)], 8, async (d) => void (await this.driver.put(paths.blobTouched(ns, d), Buffer.alloc(0))));
  }

  /**
   * The blob's data is stored and prune is not deleting it. The tombstone is read first, the data after, never
   * side by side: prune deletes the data before the tombstone, so a tombstone found gone means the data read that
   * follows sees any deletion. Read together, the data's stat could be answered before prune's delete and the
   * tombstone's after prune lifted it, and a push would rely on a deleted blob.
   */
  async intact(ns: string, digest: string): Promise<boolean> {
    if ((await this.driver.stat(paths.blobTombstone(ns, digest))) !== null) return false;
    return (await this.driver.stat(paths.blobData(ns, digest))) !== null;
  }
}

export class Blobs {
  constructor(
    private readonly driver: StorageDriver,
    readonly links: BlobLinks,
    /** Seconds a redirect to the backend stays valid; undefined: never redirect. */
    private readonly redirectSeconds?: number,
  ) {}

  /** Where a client may fetch the blob directly (after `stat` found it), or null to stream it from here. */
  async redirect(ns: string, digest: string): Promise<string | null> {
    if (this.redirectSeconds === undefined || !this.driver.signedUrl) return null;
    return this.driver.signedUrl(paths.blobData(ns, digest), this.redirectSeconds);
  }

  /**
   * The blob's bytes, for a caller that has just checked it with `stat`. A whole blob is checked against its digest
   * as it streams: wrong bytes end the stream with DigestMismatch before its last piece (a range cannot be checked;
   * fsck covers those bytes).
   */
  async read(ns: string, digest: string, range?: ByteRange): Promise<{ body: Readable; size: number }> {
    const stored = await this.driver.get(paths.blobData(ns, digest), range);
    if (range) return stored;
    const checked = verifying(digest);
    // Errors of either end reach the other: storage failing ends the checked stream, a reader leaving stops storage.
    pipeline(stored.body, checked).catch(() => {});
    return { body: checked, size: stored.size };
  }

  /** The blob as `repo` sees it; BLOB_UNKNOWN unless linked there and stored. */
  async stat(ns: string, repo: string, digest: string): Promise<BlobInfo> {
    checkDigest(digest);
    const [linked, data] = await Promise.all([this.links.linked(ns, repo, digest), this.driver.stat(paths.blobData(ns, digest))]);
    if (!linked || !data) throw blobUnknown(digest);
    return { digest, size: data.size };
  }

  /** Remove the blob from one repository. */
  async unlink(ns: string, repo: string, digest: string): Promise<void> {
    await this.stat(ns, repo, digest);
    await this.driver.delete(paths.blobLink(ns, repo, digest));
  }

  /**
   * Cross-repository mount inside one namespace: link an existing blob into `repo`. With `from`, the blob must be
   * linked in that repository; without it (OCI 1.1 lets a registry choose), any stored blob of the namespace will do.
   * Returns false when there is nothing to mount, so the caller starts an ordinary upload instead.
   */
  async mount(ns: string, repo: string, digest: string, from?: string): Promise<boolean> {
    checkDigest(digest);
    if (from !== undefined && !(await this.links.linked(ns, from, digest))) return false;
    await this.links.touch(ns, [digest]);
    if (!(await this.links.intact(ns, digest))) return false;
    await this.links.link(ns, repo, digest);
    return true;
  }

  /** Store a small blob (a manifest) whole, content-addressed: the same bytes always land at the same path. */
  async putSmall(ns: string, digest: string, data: Buffer): Promise<void> {
    const existing = await this.driver.stat(paths.blobData(ns, digest));
    if (existing?.size === data.length) return;
    await this.driver.put(paths.blobData(ns, digest), data);
  }

  async readSmall(ns: string, digest: string): Promise<Buffer> {
    return this.driver.read(paths.blobData(ns, digest));
  }
}
