/**
 * Recent login results, so that a client logging in again (every `docker push` asks for several tokens) does not
 * pay for bcrypt each time. Entries are keyed by an HMAC of name and password under a key made at start-up: the
 * cache holds no password nor anything a guess could be checked against offline. Both kinds live `ttlMs` from the
 * check that made them and all are dropped when the htpasswd file is reloaded.
 *
 * - Right passwords: answered without bcrypt. The trade: a password removed or changed in the configuration keeps
 *   working until the entry expires or a reload drops it (an htpasswd change drops it at once; `users:` in the
 *   config only change with a restart). A hit answers faster than a check, which tells the client only that this
 *   exact name and password was right a moment ago, i.e. what it already knows if it sent it.
 * - Wrong ones: answered 401 without bcrypt, and not counted as a new failure. A client resending one wrong
 *   password (dockerd sends its Docker Hub credentials to a mirror on every pull) is not guessing, so it neither
 *   costs CPU nor gets its address, and the `zuul` pushes from the same node, rate-limited.
 */
import { createHmac, randomBytes } from 'node:crypto';

export interface CacheOptions {
  /** How long a result is kept (default 5 minutes). */
  ttlMs?: number;
  /** Right passwords kept (default 1,000). */
  maxGood?: number;
  /** Wrong passwords kept (default 10,000; apart from the right ones, so guesses cannot push those out). */
  maxBad?: number;
}

export type Remembered = 'good' | 'bad';

/** What Users needs of a cache: this class in one process, a client of the primary's in a worker. */
export interface LoginResults {
  /** Bumped by clear(): a check that started before a reload must not store its now stale answer. */
  readonly generation: number;
  lookup(name: string, password: string): Remembered | undefined | Promise<Remembered | undefined>;
  remember(name: string, password: string, ok: boolean, generation: number): void;
  clear(): void;
}

export class LoginCache implements LoginResults {
  private readonly good = new Map<string, number>();
  private readonly bad = new Map<string, number>();
  private readonly ttlMs: number;
  private readonly maxGood: number;
  private readonly maxBad: number;
  /** Bumped by clear(): a check that started before a reload must not store its now stale answer. */
  generation = 0;

  constructor(
    opts: CacheOptions = {},
    private readonly now: () => number = Date.now,
    /** The HMAC key; the cluster primary shares its own with the workers. */
    readonly key: Buffer = randomBytes(32),
  ) {
    this.ttlMs = opts.ttlMs ?? 5 * 60_000;
    this.maxGood = opts.maxGood ?? 1_000;
    this.maxBad = opts.maxBad ?? 10_000;
  }

  /** 'good' or 'bad' if this name and password were checked within the TTL (since the last clear). */
  lookup(name: string, password: string): Remembered | undefined {
    return this.lookupId(loginId(this.key, name, password));
  }

  /** lookup() by the entry's id (what a worker sends). */
  lookupId(id: string): Remembered | undefined {
    const now = this.now();
    for (const [map, answer] of [
      [this.good, 'good'],
      [this.bad, 'bad'],
    ] as const) {
      const expires = map.get(id);
      if (expires === undefined) continue;
      if (expires > now) return answer;
      map.delete(id);
    }
    return undefined;
  }

  remember(name: string, password: string, ok: boolean, generation: number): void {
    if (generation !== this.generation) return;
    this.rememberId(loginId(this.key, name, password), ok);
  }

  rememberId(id: string, ok: boolean): void {
    const map = ok ? this.good : this.bad;
    map.delete(id);
    map.set(id, this.now() + this.ttlMs);
    // Insertion order is expiry order (one TTL for all): the first entries are the oldest.
    while (map.size > (ok ? this.maxGood : this.maxBad)) map.delete(map.keys().next().value!);
    (ok ? this.bad : this.good).delete(id);
  }

  clear(): void {
    this.good.clear();
    this.bad.clear();
    this.generation++;
  }

  get size(): { good: number; bad: number } {
    return { good: this.good.size, bad: this.bad.size };
  }

}

/** An entry's id: the HMAC of name and password under the cache's key. */
export function loginId(key: Buffer, name: string, password: string): string {
  // Length-prefixed: no other name/password split gives the same input.
  return createHmac('sha256', key).update(`${Buffer.byteLength(name)}:${name}:${password}`).digest('base64');
}
