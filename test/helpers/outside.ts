/** A directory tree outside a storage root, shaped like a namespace, for the symlink containment tests. */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdir, readdir, readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface OutsideTree {
  dir: string;
  /** Digest of the blob whose data (deliberately) does not hash to it. */
  digest: string;
  /** Every file in the tree with its content, to compare after the test. */
  snapshot(): Promise<Record<string, string>>;
}

/** Old files (a day old), so that prune would expire every one of them, and a blob fsck would find corrupt. */
export async function outsideTree(dir: string): Promise<OutsideTree> {
  const digest = `sha256:${createHash('sha256').update('something else').digest('hex')}`;
  const upload = randomUUID();
  const files: Record<string, Buffer> = {
    [`uploads/${upload}/metadata`]: Buffer.from('{"v":1}'),
    [`uploads/${upload}/0.0123abcd`]: randomBytes(100),
    [`blobs/${digest}/data`]: randomBytes(100),
    [`blobs/${digest}/touched`]: Buffer.alloc(0),
    [`repos/app/_manifests/tags/old`]: Buffer.from(digest),
    [`repos/app/_manifests/revisions/${digest}`]: Buffer.from('{}'),
    [`repos/app/_blobs/${digest}`]: Buffer.alloc(0),
  };
  const old = new Date(Date.now() - 24 * 3600 * 1000);
  for (const [p, body] of Object.entries(files)) {
    await mkdir(join(dir, p, '..'), { recursive: true });
    await writeFile(join(dir, p), body);
    await utimes(join(dir, p), old, old);
  }
  return {
    dir,
    digest,
    async snapshot() {
      const out: Record<string, string> = {};
      for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
        if (e.isFile()) out[join(e.parentPath, e.name)] = (await readFile(join(e.parentPath, e.name))).toString('hex');
      }
      return out;
    },
  };
}
