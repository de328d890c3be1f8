/**
 * Upload locks held by the cluster primary, for the workers of one host (`workers: N`): the primary's LockTable
 * (src/cluster/lock-table.ts) answers over IPC. Only for one host: processes on other hosts need memcached.
 */
import type { Channel } from '../cluster/ipc.js';
import type { Lock, LockService } from './lock-service.js';

export class ClusterLocks implements LockService {
  readonly name = 'cluster';

  constructor(private readonly primary: Channel) {}

  async tryLock(key: string, ttlMs: number): Promise<Lock | null> {
    const token = await this.primary.call<string | null>('lock.try', { key, ttlMs });
    if (token === null) return null;
    // Renewed well before the TTL runs out, so a long PATCH keeps its upload; a renewal lost with a dying primary
    // does not matter (its workers go with it).
    const timer = setInterval(() => this.primary.call('lock.renew', { key, token, ttlMs }).catch(() => {}), Math.max(ttlMs / 3, 100));
    timer.unref();
    return {
      release: async () => {
        clearInterval(timer);
        await this.primary.call('lock.release', { key, token });
      },
    };
  }
}
