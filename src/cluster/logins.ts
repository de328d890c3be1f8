/**
 * Failed-login buckets and the login cache of one host's workers, held by the cluster primary (docs/security-
 * logins.md, "Several workers"): without this, N workers would give an attacker N times the guesses, and a wrong
 * password resent to each worker would count once per worker. The primary keeps the single-process classes
 * (LoginLimiter, LoginCache); each worker uses the clients below, which Users takes in their place.
 */
import { LoginCache, loginId, type LoginResults, type Remembered } from '../auth/login-cache.js';
import { LoginLimiter, LoginRefused, type Limiter, type Ticket } from '../auth/login-limiter.js';
import type { Channel } from './ipc.js';

type Reservation = { ticket: number; priority: number } | { refused: number; message: string };

/** The primary's side. */
export class SharedLogins {
  readonly limiter = new LoginLimiter();
  readonly cache = new LoginCache();
  private readonly tickets = new Map<number, { ticket: Ticket; owner: number }>();
  private nextTicket = 0;
  private settleTimer: NodeJS.Timeout | undefined;

  /** A worker exited in the middle of checks: their tokens stay spent (a crash is no way to get guesses back). */
  dropOwner(owner: number): void {
    for (const [id, t] of this.tickets) {
      if (t.owner !== owner) continue;
      this.tickets.delete(id);
      void t.ticket.keep();
    }
  }

  handlers(owner: number) {
    const settle = (b: unknown) => {
      const id = (b as { ticket?: unknown } | null)?.ticket;
      if (typeof id !== 'number') throw new Error('bad ticket');
      const t = this.tickets.get(id);
      this.tickets.delete(id);
      return t?.owner === owner ? t.ticket : undefined;
    };
    const entry = (b: unknown) => {
      const id = (b as { id?: unknown } | null)?.id;
      if (typeof id !== 'string' || id.length > 64) throw new Error('bad login cache id');
      return id;
    };
    return {
      'login.key': () => this.cache.key.toString('base64'),
      'login.reserve': (b: unknown): Reservation => {
        const address = (b as { address?: unknown } | null)?.address;
        if (address !== undefined && (typeof address !== 'string' || address.length > 100)) throw new Error('bad address');
        let ticket: Ticket;
        try {
          ticket = this.limiter.reserve(address);
        } catch (err) {
          if (err instanceof LoginRefused) return { refused: err.retryAfter, message: err.message };
          throw err;
        }
        const id = this.nextTicket++;
        this.tickets.set(id, { ticket, owner });
        return { ticket: id, priority: ticket.priority };
      },
      'login.refund': (b: unknown) => settle(b)?.refund(),
      'login.keep': (b: unknown) => settle(b)?.keep() ?? false,
      'login.lookup': (b: unknown) => ({ answer: this.cache.lookupId(entry(b)) ?? null, generation: this.cache.generation }),
      'login.remember': (b: unknown) => {
        // An answer from a check that began before the last clear may come from the old entries: not stored.
        if ((b as { generation?: unknown }).generation === this.cache.generation) this.cache.rememberId(entry(b), (b as { ok?: unknown }).ok === true);
      },
      'login.clear': () => this.clear(),
    };
  }

  /**
   * One worker reloaded the htpasswd file: answers from the old entries go. The other workers still hold the old
   * entries until their next check re-reads the file, which Users does at most a second after the file changed
   * (it looks at most once a second): what they store in that second is cleared once more when it has passed.
   */
  private clear(): void {
    this.cache.clear();
    clearTimeout(this.settleTimer);
    this.settleTimer = setTimeout(() => this.cache.clear(), 1100).unref();
  }
}

/** A worker's limiter: every reservation is the primary's. */
export class ClusterLimiter implements Limiter {
  constructor(private readonly primary: Channel) {}

  async reserve(address: string | undefined): Promise<Ticket> {
    const r = await this.primary.call<Reservation>('login.reserve', { address });
    if ('refused' in r) throw new LoginRefused(r.refused, r.message);
    let settled = false;
    return {
      priority: r.priority,
      refund: () => {
        if (settled) return;
        settled = true;
        this.primary.notify('login.refund', { ticket: r.ticket });
      },
      keep: async () => {
        if (settled) return false;
        settled = true;
        return this.primary.call<boolean>('login.keep', { ticket: r.ticket });
      },
    };
  }
}

/** A worker's login cache: entries are the primary's, keyed by an HMAC under the primary's key. */
export class ClusterLoginCache implements LoginResults {
  generation = 0;
  /** The primary's generation at each pending check's lookup, sent back with its answer. */
  private readonly pending = new Map<string, number>();

  constructor(
    private readonly primary: Channel,
    private readonly key: Buffer,
  ) {}

  static async connect(primary: Channel): Promise<ClusterLoginCache> {
    return new ClusterLoginCache(primary, Buffer.from(await primary.call<string>('login.key', null), 'base64'));
  }

  async lookup(name: string, password: string): Promise<Remembered | undefined> {
    // A cache that cannot answer is a miss: the check then costs what an uncached one does.
    const id = loginId(this.key, name, password);
    const reply = await this.primary.call<{ answer: Remembered | null; generation: number }>('login.lookup', { id }).catch(() => null);
    if (!reply) return undefined;
    if (reply.answer === null) {
      this.pending.set(id, reply.generation);
      // Checks that fail before remembering leave their entry: the oldest go first past a bound.
      if (this.pending.size > 10_000) this.pending.delete(this.pending.keys().next().value!);
    }
    return reply.answer ?? undefined;
  }

  remember(name: string, password: string, ok: boolean, generation: number): void {
    const id = loginId(this.key, name, password);
    const primaryGeneration = this.pending.get(id);
    this.pending.delete(id);
    if (generation !== this.generation || primaryGeneration === undefined) return;
    this.primary.notify('login.remember', { id, ok, generation: primaryGeneration });
  }

  clear(): void {
    this.generation++;
    this.primary.notify('login.clear', null);
  }
}
