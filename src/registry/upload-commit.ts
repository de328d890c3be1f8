/**
 * How an upload's chunks become a blob, in the configured commit mode.
 *
 * - move (the default): every chunk is moved into blobs/<d>/parts/<upload>/ (on Swift a server-side copy, checked
 *   against its recorded md5) and the parts are joined at blobs/<d>/data; a one-chunk blob is that chunk moved to
 *   the data path. The upload's directory is then removed whole.
 * - link (backends whose joins keep their parts, wherever they are: Swift): the chunks stay where the upload wrote
 *   them and blobs/<d>/data joins them in place; a blob of one object under the driver's `minJoinedSize` is still
 *   moved (on Swift a small blob reads faster as a plain object than as a one-segment SLO). Before the join,
 *   uploads/<id>/owner.<digest> claims the directory for the blob; after it the record goes and the claim stays.
 *   What a blob reads from is the driver's answer (`segments`), never a guess from paths: prune keeps a claimed
 *   directory while its blob is stored, and deleting the blob takes its segments with it (prune-uploads.ts).
 */
import { AlreadyExists, PathNotFound, SizeMismatch, type Part, type StorageDriver, type StoredObject } from '../storage/driver.js';
import { forEachLimited } from '../util/concurrency.js';
import { md5Mismatch } from './chunk-writer.js';
import { uploadUnknown } from './errors.js';
import { paths } from './paths.js';
import type { ChunkEntry } from './upload-record.js';

export type CommitMode = 'move' | 'link';
/** How many chunk moves run at once during a move-mode commit. */
const MOVE_PARALLELISM = 4;

/** What blobs/<d>/data reads from once a commit has joined it. */
export type Joined = 'moved' | 'linked';

export class BlobCommit {
  constructor(
    private readonly driver: StorageDriver,
    readonly mode: CommitMode = 'move',
  ) {
    if (mode === 'link' && !(driver.joinKeepsParts && driver.joinsPartsAnywhere && driver.deleteRemovesParts && driver.segments)) {
      throw new Error(`commit: link needs a backend whose joins keep their parts where they were written (Swift); ${driver.name} joins by copying`);
    }
  }

  /**
   * Make blobs/<digest>/data read as the chunks, in order. 'linked': it reads from the upload's own objects. The
   * caller has sealed the upload for this digest; `sealedForUs` reads the seal again (link mode, before the join).
   */
  async join(ns: string, id: string, digest: string, chunks: ChunkEntry[], sealedForUs: () => Promise<boolean>): Promise<Joined> {
    const small = chunks.length === 0 || (chunks.length === 1 && chunks[0].size < (this.driver.minJoinedSize ?? 0));
    if (this.mode === 'link' && !small) return this.link(ns, id, digest, chunks, sealedForUs);
    if (chunks.length === 1) await this.moveWhole(ns, id, digest, chunks[0]);
    else await this.moveParts(ns, id, digest, chunks);
    return 'moved';
  }

  /** Whether the stored blob reads from this upload's objects: an earlier attempt of this commit linked it. */
  async linkedHere(ns: string, id: string, digest: string): Promise<boolean> {
    if (this.mode !== 'link') return false;
    const dir = `${paths.upload(ns, id)}/`;
    return ((await this.driver.segments?.(paths.blobData(ns, digest))) ?? []).some((p) => p.startsWith(dir));
  }

  /**
   * The upload's directory is claimed for the blob, then the seal is read again, and the chunks are joined where they
   * are. The second read narrows Swift's non-atomic create-only seal: two seals that both "won" have landed by then,
   * and the one that was replaced gives up before its join (the claim it leaves is judged by prune). Two uploads of one digest joining at once
   * leave one manifest (the driver's create-only join): the loser answers 'moved', and its directory is removed
   * whole. Where creates are not atomic (Swift) two joins landing together may both succeed, the later replacing
   * the other, as two move-mode joins may: the replaced one's directory is left to prune, which finds the blob
   * claimed twice and keeps only what it reads from (reading the blob back here would cost every commit a request).
   */
  private async link(ns: string, id: string, digest: string, chunks: ChunkEntry[], sealedForUs: () => Promise<boolean>): Promise<Joined> {
    const claim = { blob: digest, claimed: new Date().toISOString() };
    await this.driver.put(paths.uploadOwner(ns, id, digest), Buffer.from(JSON.stringify(claim)), { contentType: 'application/json' });
    if (!(await sealedForUs())) throw uploadUnknown(id);
    const parts: Part[] = chunks.map((c) => ({ path: paths.uploadChunk(ns, id, c.object), size: c.size, md5: c.md5 }));
    const joined = await this.driver.concat(paths.blobData(ns, digest), parts);
    return joined.joinedElsewhere ? 'moved' : 'linked';
  }

  /**
   * Move every chunk into the blob's directory, checking each moved object against the recorded md5, then join
   * them. A retried commit finds already-moved chunks at their destination and goes on from there.
   */
  private async moveParts(ns: string, id: string, digest: string, chunks: ChunkEntry[]): Promise<void> {
    const parts: Part[] = chunks.map((c, i) => ({ path: paths.blobPart(ns, digest, id, i), size: c.size, md5: c.md5 }));
    await forEachLimited(chunks.keys(), MOVE_PARALLELISM, async (i) => {
      const chunk = chunks[i];
      const part = parts[i];
      let moved: StoredObject;
      try {
        moved = await this.driver.move(paths.uploadChunk(ns, id, chunk.object), part.path);
      } catch (err) {
        const there = err instanceof PathNotFound ? await this.driver.stat(part.path) : null;
        if (!there) throw err;
        moved = { size: there.size };
      }
      if (moved.size !== chunk.size) throw new SizeMismatch(part.path, chunk.size, moved.size);
      const mismatch = md5Mismatch(part.path, chunk.md5, moved.md5);
      if (mismatch) throw mismatch;
    });
    await this.driver.concat(paths.blobData(ns, digest), parts);
  }

  /**
   * A blob of one chunk is that chunk, moved to the blob's data path: nothing to join, and on Swift a plain object
   * reads faster and cheaper than a one-segment SLO (a temp URL to it is a plain GET). If another upload of the
   * same bytes got there first, that object stays and ours goes with the upload.
   */
  private async moveWhole(ns: string, id: string, digest: string, chunk: ChunkEntry): Promise<void> {
    const dst = paths.blobData(ns, digest);
    let moved: StoredObject;
    let ours = true;
    try {
      moved = await this.driver.move(paths.uploadChunk(ns, id, chunk.object), dst, { ifAbsent: true });
    } catch (err) {
      // Another upload of the same bytes got there first, or this commit's earlier attempt moved the chunk already.
      if (!(err instanceof AlreadyExists) && !(err instanceof PathNotFound)) throw err;
      const there = (err instanceof AlreadyExists ? err.existing : undefined) ?? (await this.driver.stat(dst));
      if (!there) throw err;
      moved = { size: there.size };
      ours = false;
    }
    const wrong =
      moved.size !== chunk.size
        ? new SizeMismatch(dst, chunk.size, moved.size)
        : md5Mismatch(dst, chunk.md5, moved.md5);
    if (wrong) {
      // Not the bytes that were hashed: they must not stay at the digest's path (a GET would refuse them anyway).
      if (ours) await this.driver.delete(dst);
      throw wrong;
    }
  }
}
