/**
 * Who may wait for a password check, and who goes first. The per-address failure limit (login-limiter.ts) bounds
 * what one address can queue, but one attacker holds many addresses: a /24 of IPv4 (the issue measured 128 addresses
 * × 10 guesses filling the 1,024-check queue), and IPv6 /64s by the billion. So waiting checks are also counted by
 * prefix (IPv4 /24, IPv6 /56, the usual smallest assignment to one site):
 * - one address may hold at most 1/64 of the queue and one prefix 1/16 (16 and 64 checks of 1,024); more from them
 *   are refused with "try again" before any work;
 * - the next check served is from the prefix with the fewest recent failures (and checks running);
 * - a full queue makes room for a newcomer by refusing a waiting check of the prefix with the most failures, if that
 *   prefix has more than the newcomer's: a first check from a clean prefix is never the one refused.
 * Failures per prefix decay by half every minute, so a prefix that stops failing is soon served like any other.
 */
import { isIPv6 } from 'node:net';

export interface Source {
  /** IPv4 address, or IPv6 /64 (as the failure limit counts them). */
  address: string;
  /** IPv4 /24 or IPv6 /56. */
  prefix: string;
}

interface PrefixState {
  waiting: number;
  running: number;
  failures: number;
  at: number;
}

const HALF_LIFE_MS = 60_000;
/** Prefixes remembered with failures but nothing queued; the least recently failed go first past this. */
const MAX_IDLE_PREFIXES = 10_000;

export class LoginQueue {
  readonly perAddress: number;
  readonly perPrefix: number;
  private readonly prefixes = new Map<string, PrefixState>();
  private readonly addresses = new Map<string, number>();

  constructor(
    maxWaiting: number,
    private readonly now: () => number = Date.now,
  ) {
    this.perAddress = Math.max(1, Math.floor(maxWaiting / 64));
    this.perPrefix = Math.max(1, Math.floor(maxWaiting / 16));
  }

  sourceOf(address: string | undefined): Source {
    return sourceOf(address);
  }

  /** May this source queue one more check? */
  hasShare(source: Source): boolean {
    return (this.addresses.get(source.address) ?? 0) < this.perAddress && (this.prefixes.get(source.prefix)?.waiting ?? 0) < this.perPrefix;
  }

  enqueued(source: Source): void {
    this.addresses.set(source.address, (this.addresses.get(source.address) ?? 0) + 1);
    this.state(source.prefix).waiting++;
  }

  /** A check stopped waiting (taken by a worker, refused, or abandoned). */
  left(source: Source): void {
    const n = (this.addresses.get(source.address) ?? 1) - 1;
    if (n > 0) this.addresses.set(source.address, n);
    else this.addresses.delete(source.address);
    const p = this.prefixes.get(source.prefix);
    if (p) p.waiting = Math.max(0, p.waiting - 1);
  }

  started(source: Source): void {
    this.state(source.prefix).running++;
  }

  finished(source: Source): void {
    const p = this.prefixes.get(source.prefix);
    if (p) p.running = Math.max(0, p.running - 1);
    this.forgetIdle();
  }

  failed(address: string | undefined): void {
    const { prefix } = sourceOf(address);
    const p = this.state(prefix);
    p.failures = this.decayed(p) + 1;
    // Re-inserted: the map's order is least recently failed first, for forgetIdle.
    this.prefixes.delete(prefix);
    this.prefixes.set(prefix, p);
    this.forgetIdle();
  }

  /** Lower is served sooner: the prefix's recent failures and its checks running now. */
  load(prefix: string): number {
    const p = this.prefixes.get(prefix);
    return p ? this.decayed(p) + p.running : 0;
  }

  /** Of the prefixes with checks waiting, the one with the most failures (then the most waiting). */
  worstPrefix(waiting: Source[]): string | undefined {
    let worst: string | undefined;
    let worstFailures = -1;
    let worstWaiting = -1;
    for (const prefix of new Set(waiting.map((s) => s.prefix))) {
      const p = this.prefixes.get(prefix);
      const failures = p ? this.decayed(p) : 0;
      const count = p?.waiting ?? 0;
      if (failures > worstFailures || (failures === worstFailures && count > worstWaiting)) {
        worst = prefix;
        worstFailures = failures;
        worstWaiting = count;
      }
    }
    return worst;
  }

  /** Has prefix `a` failed more than prefix `b` (so `a`'s waiting work goes before `b`'s new check)? */
  worse(a: string, b: string): boolean {
    if (a === b) return false;
    const failures = (prefix: string) => {
      const p = this.prefixes.get(prefix);
      return p ? this.decayed(p) : 0;
    };
    return failures(a) > failures(b);
  }

  private state(prefix: string): PrefixState {
    let p = this.prefixes.get(prefix);
    if (!p) this.prefixes.set(prefix, (p = { waiting: 0, running: 0, failures: 0, at: this.now() }));
    return p;
  }

  /** Failures as of now, halved per minute since they were counted. */
  private decayed(p: PrefixState): number {
    const now = this.now();
    if (p.failures > 0 && now > p.at) p.failures *= 2 ** (-(now - p.at) / HALF_LIFE_MS);
    p.at = now;
    return p.failures;
  }

  private forgetIdle(): void {
    if (this.prefixes.size <= MAX_IDLE_PREFIXES) return;
    for (const [prefix, p] of this.prefixes) {
      if (this.prefixes.size <= MAX_IDLE_PREFIXES) return;
      if (p.waiting === 0 && p.running === 0) this.prefixes.delete(prefix);
    }
  }
}

/** The address (IPv4, IPv6 /64) and prefix (IPv4 /24, IPv6 /56) a client is counted as; 'unknown' without one. */
export function sourceOf(address: string | undefined): Source {
  if (!address) return { address: 'unknown', prefix: 'unknown' };
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  const v4 = mapped ? mapped[1] : isIPv6(address) ? undefined : address;
  if (v4 !== undefined) return { address: v4, prefix: `${v4.split('.').slice(0, 3).join('.')}.0/24` };
  const groups = ipv6Groups(address);
  const hex = (g: number) => g.toString(16);
  return { address: `${groups.slice(0, 4).map(hex).join(':')}::/64`, prefix: `${groups.slice(0, 3).map(hex).join(':')}:${hex(groups[3] & 0xff00)}::/56` };
}

function ipv6Groups(address: string): number[] {
  const bare = address.split('%')[0];
  const [head, tail = ''] = bare.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = bare.includes('::') ? [...left, ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right] : left;
  return groups.slice(0, 8).map((g) => parseInt(g, 16) || 0);
}
