/**
 * One request at a time per upload. Two PATCHes of one upload both read the same record; the later record write
 * would drop the other's chunk after it had been answered 202. Within a process an in-memory set refuses the
 * second; across processes a lock service does where one is configured (memcached, the cluster primary), else the
 * driver's lock where the backend has one (the filesystem; not Swift). A service that cannot be reached is passed
 * over for the driver's lock, or none: it is advisory, above the storage invariants.
 */
import type { Lock, LockService } from '../locks/lock-service.js';
import type { StorageDriver } from '../storage/driver.js';
import { paths } from './paths.js';

/** A holder that dies without releasing loses the lock this long after its last renewal. */
const LOCK_TTL_MS = 30_000;
/**
 * How long a request waits for a busy upload before it is refused: a client whose connection dropped mid-chunk
 * retries at once, often before the server has noticed and let go of the upload.
 */
const WAIT_MS = 2000;
const POLL_MS = 50;

export class UploadLocks {
  private readonly held = new Set<string>();

  constructor(
    private readonly driver: StorageDriver,
    private readonly service?: LockService,
  ) {}

  /** The release function, or null when another request holds the upload. `id` must be a valid upload id. */
  async acquire(ns: string, id: string): Promise<(() => Promise<void>) | null> {
    const key = paths.uploadLock(ns, id);
    const until = Date.now() + WAIT_MS;
    for (;;) {
      const release = await this.tryAcquire(key);
      if (release || Date.now() >= until) return release;
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  private async tryAcquire(key: string): Promise<(() => Promise<void>) | null> {
    if (this.held.has(key)) return null;
    this.held.add(key);
    try {
      const lock = await this.acrossProcesses(key);
      if (!lock) {
        this.held.delete(key);
        return null;
      }
      return async () => {
        this.held.delete(key);
        // A lock not released expires: nothing to do for the request that held it.
        await lock.release().catch(() => {});
      };
    } catch (err) {
      this.held.delete(key);
      throw err;
    }
  }

  private async acrossProcesses(key: string): Promise<Lock | null> {
    if (this.service) {
      try {
        return await this.service.tryLock(key, LOCK_TTL_MS);
      } catch {
        // Unreachable (the service logs and counts that). Refusing every upload because a cache is down would be
        // worse: the request goes on under the storage invariants, as without a service (docs/security-storage.md).
      }
    }
    return this.driver.tryLock ? this.driver.tryLock(key, LOCK_TTL_MS) : NO_LOCK;
  }
}

/** Where nothing locks across processes (Swift without a lock service): the in-memory set alone. */
const NO_LOCK: Lock = { release: async () => {} };
