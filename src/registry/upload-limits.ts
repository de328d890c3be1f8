/**
 * Limits on what one client can make an upload cost: chunks per upload, open uploads per namespace, blob size.
 * Each refusal is an OCI error a client can act on (docs/security-storage.md lists them).
 */
import { DEFAULTS } from '../config/defaults.js';
import type { StorageDriver } from '../storage/driver.js';
import { RegistryError } from './errors.js';
import { groups } from './listing.js';
import { CHUNK_OBJECT_RE, parseUploadPath, paths, uploadOwnerOf } from './paths.js';

export interface UploadLimits {
  /** Chunk objects one upload may hold (a PATCH can add several: bodies are cut at the backend's object size). */
  chunksPerUpload: number;
  /** Uploads of one namespace active within the upload expiry; a POST beyond it is refused. */
  uploadsPerNamespace: number;
  /** Bytes one blob may have. */
  maxBlobSize: number;
}

export const DEFAULT_LIMITS: UploadLimits = DEFAULTS.limits;

export const tooManyChunks = (id: string, max: number) =>
  new RegistryError('BLOB_UPLOAD_INVALID', `the upload has reached the limit of ${max} chunks; finish it with PUT, or push again in larger chunks`, {
    uuid: id,
    limit: max,
  });

export const tooLarge = (max: number) =>
  new RegistryError('PAYLOAD_TOO_LARGE', `a blob may have at most ${max} bytes`, { limit: max });

/** How long a count of a namespace's open uploads is used before the uploads are listed again. */
const COUNT_TTL_MS = 10_000;

/** One listing of a namespace's upload directories. */
export interface UploadListing {
  /** When the listing began (ms since the epoch): what was written before is in it, as far as listings are consistent. */
  at: number;
  /** Uploads active within the upload expiry. */
  count: number;
  /** Bytes of chunk objects by upload id, for every upload directory that is not a linked blob's segments. */
  sizes: Map<string, number>;
}

/**
 * Open uploads per namespace, counted from a listing at most every COUNT_TTL_MS, plus the uploads this process
 * started since, less those it finished. Other processes' new uploads show at the next listing, so the limit is approximate by design:
 * it bounds an abuser, it does not meter a client exactly.
 */
export class OpenUploads {
  private readonly counts = new Map<string, { count: number; until: number }>();
  private readonly pending = new Map<string, Promise<UploadListing>>();
  private readonly listed = new Map<string, UploadListing>();

  constructor(
    private readonly driver: StorageDriver,
    private readonly limits: UploadLimits,
    /** Seconds of inactivity after which an upload is abandoned (prune deletes it); older ones do not count. */
    private readonly expirySeconds: number,
  ) {}

  /** Count one more upload of `ns`, or refuse it with 429 TOOMANYREQUESTS when the namespace is at the limit. */
  async admit(ns: string): Promise<void> {
    let entry = this.counts.get(ns);
    if (!entry || entry.until < Date.now()) {
      const { count } = await this.listing(ns, 0);
      entry = { count, until: Date.now() + COUNT_TTL_MS };
      this.counts.set(ns, entry);
    }
    if (entry.count >= this.limits.uploadsPerNamespace) {
      throw new RegistryError('TOOMANYREQUESTS', `too many open uploads in this namespace (limit ${this.limits.uploadsPerNamespace}); finish or cancel some, or retry later`, {
        limit: this.limits.uploadsPerNamespace,
      });
    }
    entry.count++;
  }

  /** An upload of `ns` finished or was cancelled here: it no longer counts. */
  finished(ns: string): void {
    const entry = this.counts.get(ns);
    if (entry && entry.count > 0) entry.count--;
  }

  /**
   * A listing of the namespace's uploads begun at most `maxAgeMs` ago (0: a new one); one at a time per namespace,
   * shared by the requests that wait for it. Quotas (quota.ts) count the open uploads' bytes from it.
   */
  async listing(ns: string, maxAgeMs: number): Promise<UploadListing> {
    const last = this.listed.get(ns);
    if (last && maxAgeMs > 0 && Date.now() - last.at <= maxAgeMs) return last;
    let pending = this.pending.get(ns);
    if (!pending) {
      pending = this.listStored(ns).finally(() => this.pending.delete(ns));
      this.pending.set(ns, pending);
    }
    const fresh = await pending;
    this.listed.set(ns, fresh);
    return fresh;
  }

  /** Records are rewritten on every change, so a record's time is its upload's last activity. */
  private async listStored(ns: string): Promise<UploadListing> {
    const at = Date.now();
    const since = at - this.expirySeconds * 1000;
    let count = 0;
    const sizes = new Map<string, number>();
    for await (const { key: id, objects } of groups(this.driver.list(paths.uploads(ns)), (o) => parseUploadPath(ns, o.path)?.id ?? null)) {
      let bytes = 0;
      let claimed = false;
      for (const o of objects) {
        const rest = parseUploadPath(ns, o.path)!.rest;
        if (rest === 'metadata' && o.modified.getTime() >= since) count++;
        else if (CHUNK_OBJECT_RE.test(rest)) bytes += o.size;
        else if (uploadOwnerOf(rest)) claimed = true;
      }
      // A claimed directory holds a committed blob's segments: the blob's own size counts them (usage.ts).
      if (!claimed) sizes.set(id, bytes);
    }
    return { at, count, sizes };
  }
}
