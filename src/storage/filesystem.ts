/**
 * Filesystem driver: the embedded default. Objects are files under `root`; every write goes to a temporary file
 * in the target directory and is renamed into place, so a reader never sees half an object.
 */
import { createReadStream, createWriteStream, readFileSync, statSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  AlreadyExists,
  ChecksumMismatch,
  DriverError,
  PathNotFound,
  SizeMismatch,
  StorageUnavailable,
  type ByteRange,
  type MoveOptions,
  type ObjectInfo,
  type Part,
  type PutOptions,
  type StorageDriver,
  type StoredObject,
} from './driver.js';

const TEMP_PREFIX = '.tmp-';

export class FilesystemDriver implements StorageDriver {
  readonly name = 'filesystem';
  readonly maxObjectSize = Number.MAX_SAFE_INTEGER;
  /** A put reports an md5 only when it was given one to check; local files have no checksum of their own. */
  readonly reportsMd5 = false;
  /** link() refuses an existing target atomically. */
  readonly atomicCreate = true;
  /** A join copies its parts into one file and deletes them. */
  readonly joinKeepsParts = false;
  readonly deleteRemovesParts = false;
  readonly listingConsistent = true;

  private constructor(private readonly root: string) {}

  static async open(root: string): Promise<FilesystemDriver> {
    const abs = path.resolve(root);
    await fs.mkdir(abs, { recursive: true });
    return new FilesystemDriver(abs);
  }

  /** Map a storage key to a file, refusing anything that could leave the root. */
  private file(key: string): string {
    if (!key || key.startsWith('/') || key.endsWith('/') || key.includes('\0')) throw new DriverError(`bad key: ${JSON.stringify(key)}`);
    for (const part of key.split('/')) {
      if (part === '' || part === '.' || part === '..' || part.startsWith(TEMP_PREFIX)) throw new DriverError(`bad key: ${JSON.stringify(key)}`);
    }
    return path.join(this.root, key);
  }

  async put(key: string, body: Readable | Buffer, opts: PutOptions = {}): Promise<StoredObject> {
    const target = this.file(key);
    const { temp, handle } = await this.createTempBeside(target);
    let size = 0;
    const md5 = opts.md5 ? createHash('md5') : undefined;
    const counter = new Transform({
      transform(chunk: Buffer, _enc, done) {
        size += chunk.length;
        md5?.update(chunk);
        done(null, chunk);
      },
    });
    try {
      const source = Buffer.isBuffer(body) ? Readable.from([body]) : body;
      await pipeline(source, counter, createWriteStream('', { fd: handle }), { signal: opts.signal });
      if (opts.size !== undefined && size !== opts.size) throw new SizeMismatch(key, opts.size, size);
      const actual = md5?.digest('hex');
      if (opts.md5 && actual !== opts.md5) throw new ChecksumMismatch(key, opts.md5, actual ?? '');
      if (opts.ifAbsent) {
        // link() refuses an existing target atomically, where rename() would replace it.
        await fs.link(temp, target).catch((err: NodeJS.ErrnoException) => {
          throw err.code === 'EEXIST' ? new AlreadyExists(key) : err;
        });
        await fs.rm(temp, { force: true });
      } else {
        await fs.rename(temp, target);
      }
    } catch (err) {
      await fs.rm(temp, { force: true });
      throw err;
    }
    return { size, md5: md5 ? opts.md5 : undefined };
  }

  /**
   * A fresh temporary file in the target's directory (created if needed), open for writing, so the final rename is
   * atomic. A prune may remove the directory as it empties it between the mkdir and the create: then again.
   */
  private async createTempBeside(target: string): Promise<{ temp: string; handle: fs.FileHandle }> {
    for (let attempt = 0; ; attempt++) {
      await fs.mkdir(path.dirname(target), { recursive: true });
      const temp = path.join(path.dirname(target), TEMP_PREFIX + randomBytes(8).toString('hex'));
      try {
        return { temp, handle: await fs.open(temp, 'wx') };
      } catch (err) {
        if (!isNotFound(err) || attempt >= 3) throw err;
      }
    }
  }

  async get(key: string, range?: ByteRange): Promise<{ body: Readable; size: number }> {
    const file = this.file(key);
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(file, 'r');
    } catch (err) {
      throw notFoundOr(err, key);
    }
    const { size } = await handle.stat();
    const body = createReadStream('', { fd: handle, start: range?.start, end: range?.end, highWaterMark: 1 << 20 });
    return { body, size: range ? range.end - range.start + 1 : size };
  }

  /**
   * Small objects only (records, tags, manifests), read synchronously: four thread-pool round trips (open, fstat,
   * read, close) cost more than the page-cache read itself, and tag and manifest GETs are mostly this.
   */
  async read(key: string): Promise<Buffer> {
    try {
      return readFileSync(this.file(key));
    } catch (err) {
      throw notFoundOr(err, key);
    }
  }

  /** Synchronous like `read`: a stat is answered from the inode cache faster than a thread-pool round trip. */
  async stat(key: string): Promise<ObjectInfo | null> {
    try {
      const st = statSync(this.file(key));
      return st.isFile() ? { path: key, size: st.size, modified: st.mtime } : null;
    } catch (err) {
      if (isNotFound(err)) return null;
      throw err;
    }
  }

  /** The root is a directory Berth can write (a lost mount or wrong owner shows here, not at the first push). */
  async ready(): Promise<void> {
    try {
      await fs.access(this.root, fs.constants.R_OK | fs.constants.W_OK | fs.constants.X_OK);
    } catch (err) {
      throw new StorageUnavailable(`storage root ${this.root}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { cause: err });
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const dir = this.file(prefix);
    let entries: import('node:fs').Dirent[];
    try {
      entries = await fs.readdir(dir, { withFileTypes: true });
    } catch (err) {
      if (isNotFound(err) || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return;
      throw err;
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const entry of entries) {
      if (entry.name.startsWith(TEMP_PREFIX)) continue;
      const key = `${prefix}/${entry.name}`;
      if (entry.isDirectory()) {
        yield* this.list(key);
      } else if (entry.isFile()) {
        const st = await fs.stat(path.join(dir, entry.name)).catch((err) => (isNotFound(err) ? null : Promise.reject(err)));
        if (st) yield { path: key, size: st.size, modified: st.mtime };
      }
    }
  }

  async delete(key: string): Promise<void> {
    const file = this.file(key);
    await fs.rm(file, { force: true });
    await this.pruneEmptyDirs(path.dirname(file));
  }

  /** Remove now-empty directories up to the root, so deleted repositories and uploads leave no trace. */
  private async pruneEmptyDirs(dir: string): Promise<void> {
    while (dir.startsWith(this.root + path.sep)) {
      try {
        await fs.rmdir(dir);
      } catch {
        return; // not empty, or already gone: either way, stop
      }
      dir = path.dirname(dir);
    }
  }

  async move(src: string, dst: string, opts: MoveOptions = {}): Promise<StoredObject> {
    const from = this.file(src);
    const to = this.file(dst);
    for (let attempt = 0; ; attempt++) {
      await fs.mkdir(path.dirname(to), { recursive: true });
      try {
        if (opts.ifAbsent) {
          // link() refuses an existing target atomically, where rename() would replace it.
          await fs.link(from, to).catch((err: NodeJS.ErrnoException) => {
            throw err.code === 'EEXIST' ? new AlreadyExists(dst) : err;
          });
          await fs.rm(from);
        } else {
          await fs.rename(from, to);
        }
        break;
      } catch (err) {
        // ENOENT with the source present means a concurrent delete emptied and removed the target directory.
        if (!isNotFound(err)) throw err;
        if (!(await this.stat(src))) throw new PathNotFound(src);
        if (attempt >= 3) throw err;
      }
    }
    await this.pruneEmptyDirs(path.dirname(from));
    const st = await fs.stat(to);
    return { size: st.size };
  }

  /**
   * One part is renamed into place; several are copied into one file (a rename cannot join files). Sizes are
   * checked; md5s are not re-read here, because local files cannot change between write and join.
   */
  async concat(dst: string, parts: Part[]): Promise<StoredObject> {
    const target = this.file(dst);
    for (const part of parts) {
      const st = await this.stat(part.path);
      if (!st) throw new PathNotFound(part.path);
      if (st.size !== part.size) throw new SizeMismatch(part.path, part.size, st.size);
    }
    if (parts.length === 1) return this.move(parts[0].path, dst);
    const { temp, handle } = await this.createTempBeside(target);
    try {
      await handle.close();
      for (const part of parts) {
        await pipeline(createReadStream(this.file(part.path), { highWaterMark: 1 << 20 }), createWriteStream(temp, { flags: 'a' }));
      }
      await fs.rename(temp, target);
    } catch (err) {
      await fs.rm(temp, { force: true });
      throw err;
    }
    for (const part of parts) await this.delete(part.path);
    const st = await fs.stat(target);
    return { size: st.size };
  }

  async close(): Promise<void> {}
}

function isNotFound(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

function notFoundOr(err: unknown, key: string): unknown {
  return isNotFound(err) || (err as NodeJS.ErrnoException)?.code === 'EISDIR' ? new PathNotFound(key) : err;
}
