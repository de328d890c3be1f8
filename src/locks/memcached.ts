/**
 * Upload locks across processes in memcached (`registry.locks.memcached`): what Swift deployments already run.
 *
 * A lock is an item `berth:lock:<sha256 of the lock path>` holding a random token, created by `add` (atomic: one
 * taker wins) with the lock's time-to-live, renewed while held by `gets` + `cas` (only while the value is still this
 * holder's token), released by `gets` + `cas` with a negative exptime, which memcached applies as "expired now":
 * memcached has no conditional delete, and a `cas` fails if anyone changed the item since our `gets`, so this
 * release is atomic and a holder never removes another's lock (a plain `delete` after the check would have a window).
 *
 * Each key lives on one server, chosen by rendezvous hashing over the configured servers' names (the same for
 * every process whatever their order, and a server added or removed moves only its share of keys). A key never
 * moves while its server is down: that would let a second holder take a lock that the first still holds.
 *
 * When the key's server cannot be reached, `tryLock` rejects: the caller goes on without a lock across processes
 * (the storage invariants keep the data safe; docs/security-storage.md), after this service has logged a warning
 * (at most one per server per 30 s) and counted it. Eviction or a memcached restart drops locks: advisory only.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.js';
import type { Lock, LockService } from './lock-service.js';
import { MemcachedConnection, type MemcachedServerAddress } from './memcached-connection.js';

export { MemcachedUnavailable, type MemcachedServerAddress } from './memcached-connection.js';

export interface MemcachedLocksOptions {
  /** Longest wait for a reply; default 1000 ms (a loopback round trip takes well under 1 ms). */
  timeoutMs?: number;
  log?: Pick<Logger, 'warn' | 'info'>;
  metrics?: Metrics;
}

const KEY_PREFIX = 'berth:lock:';
const WARN_EVERY_MS = 30_000;
const CONSEQUENCE = {
  acquire: 'requests on its uploads go on without a lock across processes',
  renew: 'a held lock could not be renewed and expires after its TTL unless the server answers again',
  release: 'a lock could not be released and expires after its TTL',
};

export class MemcachedLocks implements LockService {
  readonly name = 'memcached';
  private readonly servers: MemcachedConnection[];
  private readonly held = new Set<HeldLock>();
  private readonly lastWarned = new Map<string, { at: number; suppressed: number }>();
  /** Servers started with -C: `gets` answers cas 0 and every `cas` fails. */
  readonly withoutCas = new Set<MemcachedConnection>();

  constructor(
    addresses: MemcachedServerAddress[],
    private readonly opts: MemcachedLocksOptions = {},
  ) {
    if (addresses.length === 0) throw new Error('memcached locks need at least one server');
    this.servers = addresses.map((a) => new MemcachedConnection(a, opts.timeoutMs ?? 1000, (s) => this.changed(s)));
    this.gauge();
  }

  /** A service whose servers have each been tried once, so that the log and gauge start right. */
  static async connect(addresses: MemcachedServerAddress[], opts: MemcachedLocksOptions = {}): Promise<MemcachedLocks> {
    const locks = new MemcachedLocks(addresses, opts);
    await Promise.all(locks.servers.map((s) => locks.probe(s)));
    const down = locks.servers.filter((s) => !s.up).map((s) => s.name);
    const fields = { servers: locks.servers.map((s) => s.name), down, withoutCas: [...locks.withoutCas].map((s) => s.name) };
    if (down.length || locks.withoutCas.size) opts.log?.warn(fields, 'upload locks in memcached: some servers do not answer or run without CAS; uploads whose locks live there go on without one');
    else opts.log?.info(fields, 'upload locks in memcached');
    return locks;
  }

  /** The server that holds the lock named `path` (always the same one, up or down). */
  serverFor(path: string): string {
    return this.pick(keyFor(path)).name;
  }

  async tryLock(path: string, ttlMs: number): Promise<Lock | null> {
    const key = keyFor(path);
    const server = this.pick(key);
    if (this.withoutCas.has(server)) {
      const err = new Error(`memcached ${server.name} runs without CAS (-C): its locks could be neither renewed nor released`);
      this.failed('acquire', server, err);
      throw err;
    }
    const token = Buffer.from(randomBytes(16).toString('hex'));
    let reply: string;
    try {
      // If this request times out after memcached stored the item, the lock stays until its TTL: other
      // processes are refused (416) meanwhile, which is the safe side.
      reply = await server.store('add', key, ttlSeconds(ttlMs), token);
    } catch (err) {
      this.failed('acquire', server, err);
      throw err;
    }
    if (reply === 'NOT_STORED') return null;
    if (reply !== 'STORED') {
      const err = new Error(`memcached ${server.name}: add answered ${reply}`);
      this.failed('acquire', server, err);
      throw err;
    }
    const lock = new HeldLock(this, server, key, token, ttlMs);
    this.held.add(lock);
    return lock;
  }

  /** Stops renewing and closes the connections; locks still held expire after their TTL. */
  async close(): Promise<void> {
    for (const lock of this.held) lock.stop();
    this.held.clear();
    for (const s of this.servers) s.close();
  }

  forget(lock: HeldLock): void {
    this.held.delete(lock);
  }

  /** Counted always; logged at most once per server per WARN_EVERY_MS, with how many were not. */
  failed(op: 'acquire' | 'renew' | 'release', server: MemcachedConnection, err: unknown): void {
    this.opts.metrics?.lockServiceErrors.inc({ op });
    this.warn(server.name, { server: server.name, op, err: (err as Error).message }, `lock service unreachable: ${CONSEQUENCE[op]}`);
  }

  lost(server: MemcachedConnection): void {
    this.opts.metrics?.lockServiceErrors.inc({ op: 'lost' });
    const msg = 'an upload lock was lost while held (evicted, expired or memcached restarted): the request goes on under the storage invariants';
    this.warn(`lost ${server.name}`, { server: server.name }, msg);
  }

  private warn(topic: string, fields: Record<string, unknown>, msg: string): void {
    const now = Date.now();
    const last = this.lastWarned.get(topic);
    if (last && now - last.at < WARN_EVERY_MS) {
      last.suppressed++;
      return;
    }
    this.lastWarned.set(topic, { at: now, suppressed: 0 });
    this.opts.log?.warn({ ...fields, suppressed: last?.suppressed ?? 0 }, msg);
  }

  /** One add, gets and release: whether the server answers, and whether it keeps CAS uniques. */
  private async probe(server: MemcachedConnection): Promise<void> {
    const key = `berth:probe:${randomBytes(8).toString('hex')}`;
    try {
      await server.store('add', key, 10, Buffer.from('1'));
      const item = await server.gets(key);
      if (item?.cas === '0') this.withoutCas.add(server);
      else if (item) await server.store('cas', key, -1, Buffer.alloc(0), item.cas);
    } catch {
      // Down: counted in the gauge and named in the start-up log.
    }
  }

  private changed(server: MemcachedConnection): void {
    this.gauge();
    if (server.up && this.lastWarned.delete(server.name)) this.opts.log?.info({ server: server.name }, 'lock service answering again');
  }

  private gauge(): void {
    if (!this.opts.metrics) return;
    const up = this.servers.filter((s) => s.up === true).length;
    this.opts.metrics.lockServers.set({ state: 'up' }, up);
    this.opts.metrics.lockServers.set({ state: 'down' }, this.servers.length - up);
  }

  /** Rendezvous (highest random weight) hashing: the server whose hash with the key is highest. */
  private pick(key: string): MemcachedConnection {
    let best = this.servers[0];
    let bestScore = -1n;
    for (const s of this.servers) {
      const score = createHash('sha256').update(`${s.name}\n${key}`).digest().readBigUInt64BE(0);
      if (score > bestScore) [best, bestScore] = [s, score];
    }
    return best;
  }
}

/** Memcached keys are at most 250 printable bytes: a fixed-length hash of the lock's storage path. */
export function keyFor(path: string): string {
  return KEY_PREFIX + createHash('sha256').update(path).digest('hex');
}

/**
 * Memcached counts whole seconds from its own clock, which ticks once a second: an item given N seconds may expire
 * up to a second early. One more keeps the lock for at least the TTL asked for.
 */
function ttlSeconds(ttlMs: number): number {
  return Math.ceil(ttlMs / 1000) + 1;
}

class HeldLock implements Lock {
  private readonly timer: NodeJS.Timeout;
  /** The renewal in flight: a release waits for it, or its `cas` would change the cas unique under the release's. */
  private renewing: Promise<void> = Promise.resolve();
  private stopped = false;

  constructor(
    private readonly service: MemcachedLocks,
    private readonly server: MemcachedConnection,
    private readonly key: string,
    private readonly token: Buffer,
    private readonly ttlMs: number,
  ) {
    this.timer = setInterval(() => {
      this.renewing = this.renewing.then(() => this.renew());
    }, Math.max(this.ttlMs / 3, 100));
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
  }

  async release(): Promise<void> {
    if (this.stopped) return;
    this.stop();
    this.service.forget(this);
    await this.renewing;
    try {
      // EXISTS: the item changed between our gets and cas (renewals are over, so it expired and was taken): read again.
      for (let attempt = 0; attempt < 2; attempt++) {
        const item = await this.server.gets(this.key);
        if (!item || !item.value.equals(this.token)) return;
        if ((await this.server.store('cas', this.key, -1, Buffer.alloc(0), item.cas)) !== 'EXISTS') return;
      }
      throw new Error('the lock changed under every release (a server without CAS?)');
    } catch (err) {
      this.service.failed('release', this.server, err);
    }
  }

  private async renew(): Promise<void> {
    if (this.stopped) return;
    try {
      const item = await this.server.gets(this.key);
      if (this.stopped) return;
      if (!item || !item.value.equals(this.token)) {
        this.stop();
        this.service.forget(this);
        this.service.lost(this.server);
        return;
      }
      // EXISTS or NOT_FOUND: changed since the gets; the next renewal reads it again.
      await this.server.store('cas', this.key, ttlSeconds(this.ttlMs), this.token, item.cas);
    } catch (err) {
      // Unreachable: keep trying until released; if the TTL runs out meanwhile the lock is gone (see lost()).
      this.service.failed('renew', this.server, err);
    }
  }
}
