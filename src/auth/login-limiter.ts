/**
 * Failed logins per client address: a token bucket of `failures` attempts, refilled by one every `refillSeconds`.
 * Every Basic check takes a token before it runs (so a burst of parallel guesses is bounded too) and a successful
 * one gives it back: only failures use the bucket up. An address with an empty bucket gets 429 for every Basic
 * check, right password included (answering a right one would make the limit a free oracle for guesses), until a
 * token comes back; Bearer tokens from it still work, and other addresses are never affected, whatever name was
 * tried: limiting by name would let anyone lock the single `zuul` user out.
 *
 * With `workers: N` the buckets live in the cluster primary (src/cluster/logins.ts), so that N workers allow an
 * address what one process does; in one process nothing crosses a process boundary.
 */
import { DEFAULTS } from '../config/defaults.js';
import { isIPv6 } from 'node:net';

export interface LimitOptions {
  /** Failed logins an address may make at once (default 10). */
  failures?: number;
  /** One more failed login allowed per this many seconds (default 30). */
  refillSeconds?: number;
  /** Addresses remembered; past this the least recently seen is forgotten (default 10,000). */
  maxAddresses?: number;
}

export const LOGIN_LIMIT_DEFAULTS: Required<LimitOptions> = DEFAULTS.logins;

/** A login refused before any check: the client should wait `retryAfter` seconds. */
export class LoginRefused extends Error {
  constructor(
    readonly retryAfter: number,
    message: string,
  ) {
    super(message);
  }
}

/** One check's claim on its address's bucket. */
export interface Ticket {
  /** How many failures the address has outstanding, this check included (the pool serves lower numbers first). */
  priority: number;
  /** The check succeeded or was not a new guess: its token goes back. */
  refund(): void;
  /** The check failed: its token stays spent. True when the address has just run out. */
  keep(): boolean | Promise<boolean>;
}

/** What Users needs of a limiter: this class in one process, a client of the primary's in a worker. */
export interface Limiter {
  reserve(address: string | undefined): Ticket | Promise<Ticket>;
}

interface Bucket {
  tokens: number;
  at: number;
}

export class LoginLimiter implements Limiter {
  private readonly o: Required<LimitOptions>;
  private readonly buckets = new Map<string, Bucket>();

  constructor(opts: LimitOptions = {}, private readonly now: () => number = Date.now) {
    this.o = { ...LOGIN_LIMIT_DEFAULTS, ...opts };
  }

  /** Addresses with failures outstanding. */
  get size(): number {
    return this.buckets.size;
  }

  /** Claim a token for a check from `address`, or throw LoginRefused. */
  reserve(address: string | undefined): Ticket & { keep(): boolean } {
    const key = addressKey(address);
    const bucket = this.refill(key);
    if (bucket.tokens < 1) {
      const retryAfter = Math.max(1, Math.ceil((1 - bucket.tokens) * this.o.refillSeconds));
      throw new LoginRefused(retryAfter, 'too many failed logins from this address; retry later');
    }
    bucket.tokens -= 1;
    this.store(key, bucket);
    let settled = false;
    return {
      priority: Math.ceil(this.o.failures - bucket.tokens),
      refund: () => {
        if (settled) return;
        settled = true;
        const b = this.refill(key);
        b.tokens = Math.min(this.o.failures, b.tokens + 1);
        // A full bucket is the same as none: only addresses with failures take memory.
        if (b.tokens >= this.o.failures) this.buckets.delete(key);
        else this.store(key, b);
      },
      keep: () => {
        if (settled) return false;
        settled = true;
        return this.refill(key).tokens < 1;
      },
    };
  }

  private refill(key: string): Bucket {
    const now = this.now();
    const bucket = this.buckets.get(key) ?? { tokens: this.o.failures, at: now };
    bucket.tokens = Math.min(this.o.failures, bucket.tokens + (now - bucket.at) / (this.o.refillSeconds * 1000));
    bucket.at = now;
    return bucket;
  }

  private store(key: string, bucket: Bucket): void {
    // Re-inserted so the map's order is least recently seen first.
    this.buckets.delete(key);
    this.buckets.set(key, bucket);
    while (this.buckets.size > this.o.maxAddresses) this.buckets.delete(this.buckets.keys().next().value!);
  }
}

/**
 * The unit an address is limited as: IPv4 addresses (mapped ones too) as they are, IPv6 by their /64, which one
 * host usually holds whole (an attacker would otherwise get 2^64 fresh buckets).
 */
export function addressKey(address: string | undefined): string {
  if (!address) return 'unknown';
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1];
  if (!isIPv6(address)) return address;
  const [head, tail = ''] = address.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = address.includes('::') ? [...left, ...Array(8 - left.length - right.length).fill('0'), ...right] : left;
  return `${groups
    .slice(0, 4)
    .map((g) => parseInt(g, 16).toString(16))
    .join(':')}::/64`;
}
