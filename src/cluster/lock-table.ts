/**
 * The upload locks of one host's workers, held by the primary (src/locks/cluster.ts is the workers' side). A lock
 * is a key with a holder and an expiry: a holder that stops renewing loses it when its TTL runs out, and a worker
 * that exits loses all of its at once (the primary sees the exit).
 */
import { randomUUID } from 'node:crypto';

interface Entry {
  token: string;
  owner: number;
  expires: number;
}

/** Longest key and TTL accepted: upload lock paths are short, and the registry asks for 30 s. */
const MAX_KEY = 1024;
const MAX_TTL_MS = 10 * 60_000;

export class LockTable {
  private readonly locks = new Map<string, Entry>();

  constructor(private readonly now: () => number = Date.now) {}

  get size(): number {
    return this.locks.size;
  }

  /** A token for the holder, or null while another holder's lock is live. */
  tryLock(owner: number, key: string, ttlMs: number): string | null {
    const entry = this.locks.get(key);
    const now = this.now();
    if (entry && entry.expires > now) return null;
    const token = randomUUID();
    this.locks.set(key, { token, owner, expires: now + ttlMs });
    return token;
  }

  /** False when the lock is no longer this holder's (it expired and was taken). */
  renew(key: string, token: string, ttlMs: number): boolean {
    const entry = this.locks.get(key);
    if (!entry || entry.token !== token) return false;
    entry.expires = this.now() + ttlMs;
    return true;
  }

  release(key: string, token: string): void {
    if (this.locks.get(key)?.token === token) this.locks.delete(key);
  }

  /** A worker exited: its locks go now rather than a TTL later. */
  dropOwner(owner: number): void {
    for (const [key, entry] of this.locks) if (entry.owner === owner) this.locks.delete(key);
  }

  /** Expired entries nobody asked for again: swept so that the map holds only live locks. */
  sweep(): void {
    const now = this.now();
    for (const [key, entry] of this.locks) if (entry.expires <= now) this.locks.delete(key);
  }

  /** The IPC handlers (arguments checked: the shape is our own, a mismatch is a bug to refuse, not to act on). */
  handlers(owner: number) {
    return {
      'lock.try': (b: unknown) => {
        const { key, ttlMs } = lockArgs(b);
        return this.tryLock(owner, key, ttlMs);
      },
      'lock.renew': (b: unknown) => {
        const { key, ttlMs, token } = lockArgs(b);
        return this.renew(key, token, ttlMs);
      },
      'lock.release': (b: unknown) => {
        const { key, token } = lockArgs(b);
        this.release(key, token);
        return true;
      },
    };
  }
}

function lockArgs(b: unknown): { key: string; ttlMs: number; token: string } {
  const o = (b ?? {}) as Record<string, unknown>;
  const key = o.key;
  const ttlMs = o.ttlMs ?? 1;
  const token = o.token ?? '';
  if (typeof key !== 'string' || key.length === 0 || key.length > MAX_KEY) throw new Error('bad lock key');
  if (typeof ttlMs !== 'number' || !Number.isInteger(ttlMs) || ttlMs < 1 || ttlMs > MAX_TTL_MS) throw new Error('bad lock ttl');
  if (typeof token !== 'string') throw new Error('bad lock token');
  return { key, ttlMs, token };
}
