/**
 * A lock service across processes: what serializes requests on one upload when the storage backend cannot
 * (Swift has no compare-and-swap). Implementations: memcached (several hosts), the cluster primary (workers of
 * one host). Advisory: the data stays safe without it (docs/security-storage.md); it only spares clients the
 * failures that the storage invariants turn a race into.
 */
import type { Lock } from '../storage/driver.js';

export type { Lock } from '../storage/driver.js';

export interface LockService {
  /** For logs and metrics: "memcached", "cluster". */
  readonly name: string;
  /**
   * Take the lock named `key` unless another holder's is live: null if it is. The service keeps it live while
   * held (renewing before `ttlMs` runs out); a holder that dies without releasing it loses it `ttlMs` later.
   * Rejects when the service cannot answer: the caller then goes on without it (UploadLocks).
   */
  tryLock(key: string, ttlMs: number): Promise<Lock | null>;
  close?(): Promise<void>;
}
