/**
 * Lock files for the filesystem driver (Node has no flock): a file created exclusively (link), holding a token,
 * renewed (its time) while held. One older than its ttl belonged to a process that died: it is renamed aside, which
 * only one taker can do, and taken.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { AlreadyExists, type Lock, type StorageDriver } from './driver.js';

/** Beside the lock, hidden from listings like the driver's temporary files. */
const ASIDE_PREFIX = '.tmp-';

/** `file` is where the driver keeps `key`; put, read and delete go through the driver (and its containment). */
export async function tryLockFile(driver: StorageDriver, file: string, key: string, ttlMs: number): Promise<Lock | null> {
  const token = randomBytes(12).toString('hex');
  for (let attempt = 0; attempt < 3; attempt++) {
    // A live lock is the common refusal (a waiter polls): answered by one stat, without writing a file to find out.
    const live = await fs.lstat(file).catch(() => null);
    if (live && live.mtimeMs > Date.now() - ttlMs) return null;
    try {
      await driver.put(key, Buffer.from(token), { ifAbsent: true });
      return held(driver, file, key, token, ttlMs);
    } catch (err) {
      if (!(err instanceof AlreadyExists)) throw err;
    }
    const st = await fs.lstat(file).catch((err) => (isNotFound(err) ? null : Promise.reject(err)));
    if (st && st.mtimeMs > Date.now() - ttlMs) return null;
    if (!st) continue;
    const aside = path.join(path.dirname(file), ASIDE_PREFIX + randomBytes(8).toString('hex'));
    try {
      await fs.rename(file, aside);
    } catch (err) {
      if (isNotFound(err)) continue;
      throw err;
    }
    // Another taker may have replaced the stale lock with its own just before the rename: put that one back.
    const moved = await fs.lstat(aside);
    if (moved.mtimeMs > Date.now() - ttlMs) {
      await fs.link(aside, file).catch(() => {});
      await fs.rm(aside, { force: true });
      return null;
    }
    await fs.rm(aside, { force: true });
  }
  return null;
}

function held(driver: StorageDriver, file: string, key: string, token: string, ttlMs: number): Lock {
  const ours = () => driver.read(key).then((b) => b.toString() === token, () => false);
  const renew = setInterval(() => {
    void ours()
      .then((yes) => (yes ? fs.utimes(file, new Date(), new Date()) : undefined))
      .catch(() => {});
  }, Math.max(ttlMs / 3, 10));
  renew.unref();
  return {
    release: async () => {
      clearInterval(renew);
      if (await ours()) await driver.delete(key);
    },
  };
}

function isNotFound(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}
