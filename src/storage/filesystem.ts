/**
 * Filesystem driver: the embedded default. Objects are files under `root`; every write goes to a temporary file
 * in the target directory and is renamed into place, so a reader never sees half an object.
 *
 * Containment: nothing is followed through a symbolic link below the root (the root itself may be one). Files are
 * opened with O_NOFOLLOW and the opened descriptor's path is checked against the expected one, directories are
 * checked before anything is written, moved or listed in them; a path through a link reads as absent, and writing
 * to one fails with UnsafePath. Node cannot resolve paths beneath a directory (openat2), so a link swapped in
 * between a check and the operation is not caught.
 */
import { closeSync, constants, createReadStream, createWriteStream, existsSync, fstatSync, lstatSync, openSync, readFileSync, readlinkSync, realpathSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  READ_CHUNK,
  AlreadyExists,
  ChecksumMismatch,
  DriverError,
  PathNotFound,
  SizeMismatch,
  StorageUnavailable,
  UnsafePath,
  type ByteRange,
  type DeleteFailure,
  type DeleteTarget,
  type Lock,
  type MoveOptions,
  type ObjectInfo,
  type Part,
  type PutOptions,
  type StorageDriver,
  type StoredObject,
} from './driver.js';
import { deleteEach } from './delete-many.js';
import { tryLockFile } from './filesystem-lock.js';

const TEMP_PREFIX = '.tmp-';
/** Never blocks on a FIFO, never follows a link in the last component. */
const OPEN_READ = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;
/** Where the kernel says what an open descriptor refers to (Linux); elsewhere the directory's realpath is checked. */
const PROC_FD = existsSync('/proc/self/fd') ? '/proc/self/fd/' : null;
const REAL_DIR_TTL_MS = 1000;
const REAL_DIRS_MAX = 10_000;
/** Parts up to this size are joined with one synchronous read each (a stream per part costs more than its data). */
const SMALL_PART = 1 << 20;

export class FilesystemDriver implements StorageDriver {
  readonly name = 'filesystem';
  readonly maxObjectSize = Number.MAX_SAFE_INTEGER;
  objectSize(): number {
    return this.maxObjectSize;
  }
  /** A put reports an md5 only when it was given one to check; local files have no checksum of their own. */
  readonly reportsMd5 = false;
  /** link() refuses an existing target atomically. */
  readonly atomicCreate = true;
  /** A join copies its parts into one file and deletes them. */
  readonly joinKeepsParts = false;
  readonly joinsPartsAnywhere = true;
  readonly deleteRemovesParts = false;
  readonly listingConsistent = true;

  /** Directories `stat` found reached without a link, until when (ms). */
  private readonly realDirs = new Map<string, number>();

  private constructor(private readonly root: string) {}

  static async open(root: string): Promise<FilesystemDriver> {
    await fs.mkdir(path.resolve(root), { recursive: true });
    // Paths below the root are compared with what the kernel resolves, so the root must be in that form too.
    return new FilesystemDriver(await fs.realpath(path.resolve(root)));
  }

  /** Whether the descriptor opened at `file` is that file, reached without a link. */
  private openedAt(fd: number, file: string): boolean {
    if (PROC_FD) return readlinkSync(PROC_FD + fd) === file;
    return this.dirState(path.dirname(file)) === 'real'; // O_NOFOLLOW covered the last component
  }

  /** 'real': dir exists and no link leads to it; 'absent': its deepest existing ancestor is real; else 'link'. */
  private dirState(dir: string): 'real' | 'absent' | 'link' {
    if (dir === this.root) return 'real';
    try {
      return realpathSync.native(dir) === dir ? 'real' : 'link';
    } catch (err) {
      if (!isNotFound(err) || !dir.startsWith(this.root + path.sep)) return 'link';
      return this.dirState(path.dirname(dir)) === 'link' ? 'link' : 'absent';
    }
  }

  /** mkdir -p for a directory that must not be reached through a link (mkdir itself would follow one). */
  private async makeDir(dir: string, key: string): Promise<void> {
    if (this.dirState(dir) === 'link') throw new UnsafePath(key);
    await fs.mkdir(dir, { recursive: true });
  }

  /** A descriptor for reading `file`, or null when it is absent, not a regular file, or reached through a link. */
  private openFile(file: string): { fd: number; size: number; mtime: Date } | null {
    let fd: number;
    try {
      fd = openSync(file, OPEN_READ);
    } catch (err) {
      if (unreadable(err)) return null;
      throw err;
    }
    try {
      const st = fstatSync(fd);
      if (st.isFile() && this.openedAt(fd, file)) return { fd, size: st.size, mtime: st.mtime };
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    closeSync(fd);
    return null;
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
    const { temp, handle } = await this.createTempBeside(target, key);
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
  private async createTempBeside(target: string, key: string): Promise<{ temp: string; handle: fs.FileHandle }> {
    for (let attempt = 0; ; attempt++) {
      await this.makeDir(path.dirname(target), key);
      const temp = path.join(path.dirname(target), TEMP_PREFIX + randomBytes(8).toString('hex'));
      let handle: fs.FileHandle;
      try {
        handle = await fs.open(temp, 'wx');
      } catch (err) {
        if (!isNotFound(err) || attempt >= 3) throw err;
        continue;
      }
      // The check above and the create are two steps: make sure the file was created where it was meant to be.
      if (this.openedAt(handle.fd, temp)) return { temp, handle };
      await handle.close();
      throw new UnsafePath(key);
    }
  }

  async get(key: string, range?: ByteRange): Promise<{ body: Readable; size: number }> {
    const opened = this.openFile(this.file(key));
    if (!opened) throw new PathNotFound(key);
    // One read's worth buffered: a paused reader holds this much here (docs/security-network.md, per response).
    const body = createReadStream('', { fd: opened.fd, start: range?.start, end: range?.end, highWaterMark: READ_CHUNK });
    return { body, size: range ? range.end - range.start + 1 : opened.size };
  }

  /**
   * Small objects only (records, tags, manifests), read synchronously: four thread-pool round trips (open, fstat,
   * read, close) cost more than the page-cache read itself, and tag and manifest GETs are mostly this.
   */
  async read(key: string): Promise<Buffer> {
    const file = this.file(key);
    let fd: number;
    try {
      fd = openSync(file, OPEN_READ);
    } catch (err) {
      throw unreadable(err) ? new PathNotFound(key) : err;
    }
    try {
      if (!this.openedAt(fd, file)) throw new PathNotFound(key);
      // A directory or a FIFO (opened without blocking) fails here rather than being read.
      return readFileSync(fd);
    } catch (err) {
      throw unreadable(err) || (err as NodeJS.ErrnoException).code === 'EAGAIN' ? new PathNotFound(key) : err;
    } finally {
      closeSync(fd);
    }
  }

  /**
   * Synchronous like `read`: answered from the inode cache faster than a thread-pool round trip. The hottest call
   * (HEAD of a blob), so its directory check is remembered for a second: a stat reads no data and changes nothing.
   */
  async stat(key: string): Promise<ObjectInfo | null> {
    const file = this.file(key);
    const st = lstatSync(file, { throwIfNoEntry: false });
    if (!st?.isFile()) return null;
    const dir = path.dirname(file);
    const now = Date.now();
    if ((this.realDirs.get(dir) ?? 0) < now) {
      if (this.dirState(dir) !== 'real') return null;
      if (this.realDirs.size >= REAL_DIRS_MAX) this.realDirs.clear();
      this.realDirs.set(dir, now + REAL_DIR_TTL_MS);
    }
    return { path: key, size: st.size, modified: st.mtime };
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
    if (this.dirState(dir) !== 'real') return;
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
      // Links are neither: they are skipped, like anything else that is not a file or a directory.
      if (entry.isDirectory()) {
        yield* this.list(key);
      } else if (entry.isFile()) {
        const st = await fs.lstat(path.join(dir, entry.name)).catch((err) => (isNotFound(err) ? null : Promise.reject(err)));
        if (st?.isFile()) yield { path: key, size: st.size, modified: st.mtime };
      }
    }
  }

  /** Only a regular file reached without a link is deleted; anything else reads as absent and stays. */
  async delete(key: string): Promise<void> {
    const file = this.file(key);
    if (this.dirState(path.dirname(file)) !== 'real') return;
    const st = await fs.lstat(file).catch((err) => (isNotFound(err) ? null : Promise.reject(err)));
    if (!st?.isFile()) return;
    await fs.rm(file, { force: true });
    await this.pruneEmptyDirs(path.dirname(file));
  }

  readonly bulkDelete = false;
  deleteMany(targets: readonly DeleteTarget[]): Promise<DeleteFailure[]> {
    return deleteEach(targets, (key) => this.delete(key));
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
    if (this.dirState(path.dirname(from)) !== 'real') throw new PathNotFound(src);
    const st = await fs.lstat(from).catch((err) => (isNotFound(err) ? null : Promise.reject(err)));
    if (!st?.isFile()) throw new PathNotFound(src);
    for (let attempt = 0; ; attempt++) {
      await this.makeDir(path.dirname(to), dst);
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
    return { size: (await fs.lstat(to)).size };
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
    const { temp, handle } = await this.createTempBeside(target, dst);
    try {
      // One open target for all parts: opening it per part made joining 5,000 small chunks take seconds.
      for (const part of parts) {
        const opened = this.openFile(this.file(part.path));
        if (!opened) throw new PathNotFound(part.path);
        if (opened.size <= SMALL_PART) {
          try {
            await handle.write(readFileSync(opened.fd));
          } finally {
            closeSync(opened.fd);
          }
          continue;
        }
        for await (const piece of createReadStream('', { fd: opened.fd, highWaterMark: 1 << 20 })) await handle.write(piece as Buffer);
      }
      await handle.close();
      await fs.rename(temp, target);
    } catch (err) {
      await handle.close().catch(() => {});
      await fs.rm(temp, { force: true });
      throw err;
    }
    // Each part was opened above as a file reached without a link; their directories are emptied once, at the end.
    const dirs = new Set<string>();
    for (const part of parts) {
      const file = this.file(part.path);
      await fs.rm(file, { force: true });
      dirs.add(path.dirname(file));
    }
    for (const dir of dirs) await this.pruneEmptyDirs(dir);
    return { size: (await fs.lstat(target)).size };
  }

  /** See filesystem-lock.ts. */
  tryLock(key: string, ttlMs: number): Promise<Lock | null> {
    return tryLockFile(this, this.file(key), key, ttlMs);
  }

  async close(): Promise<void> {}
}

function isNotFound(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/** Absent, a link in the last component (O_NOFOLLOW), or a directory. */
function unreadable(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return isNotFound(err) || code === 'ELOOP' || code === 'EISDIR';
}
