/**
 * Credentials: users from the config (plain or bcrypt passwords) and, optionally, an htpasswd file of bcrypt
 * entries, re-read when it changes. A first check of a name and password does the same kinds of comparison whether
 * the user exists or not (see checkWork), and secrets are compared in constant time. bcrypt runs on a worker pool
 * (bcrypt-pool.ts), recent results are cached (login-cache.ts) and failures are limited per address
 * (login-limiter.ts); docs/security-logins.md says what each trades.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import bcrypt from 'bcryptjs';
import type { Logger } from 'pino';
import type { UserConfig } from '../config/config.js';
import { PoolBusy, sharedBcryptPool, type BcryptPool } from './bcrypt-pool.js';
import { LoginCache, type CacheOptions, type LoginResults } from './login-cache.js';
import { LoginLimiter, LoginRefused, type LimitOptions, type Limiter } from './login-limiter.js';

export { LoginRefused } from './login-limiter.js';

export interface LoginOptions {
  /** Where bcrypt runs (default: the process's shared pool). */
  pool?: BcryptPool;
  cache?: CacheOptions;
  limits?: LimitOptions;
  /** With `workers: N`, the primary's buckets and cache (src/cluster/logins.ts) instead of this process's own. */
  shared?: { limiter: Limiter; results: LoginResults };
}

/** Who is asking, for the rate limit and the log; `signal` aborts when the client goes away. */
export interface LoginSource {
  address?: string;
  requestId?: string;
  signal?: AbortSignal;
}

export interface Identity {
  name: string;
  access: 'read' | 'write';
  namespace: string;
}

/**
 * A well-formed bcrypt hash. bcryptjs answers `false` at once for a hash of the wrong length and throws on an
 * unknown revision, so anything looser would let a broken entry answer faster than an unknown name.
 */
const BCRYPT = /^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$/;
const isBcrypt = (secret: string) => BCRYPT.test(secret);

/** What every check costs under one configuration: a SHA-256 comparison, and a bcrypt one at this cost if set. */
export interface CheckWork {
  bcryptCost?: number;
}

export type Comparison = { kind: 'sha256'; dummy: boolean } | { kind: 'bcrypt'; cost: number; dummy: boolean };

/**
 * The work of one check, decided by the configuration only, never by the name asked for. A known user's secret
 * is of one kind, an unknown name has none, so every check runs one comparison of each kind the configuration
 * holds, against a dummy where the user has no secret of that kind. With plain users only, that is one SHA-256
 * comparison for everyone. As soon as one bcrypt secret exists, everyone pays for a bcrypt comparison at the
 * highest configured cost, plain users included: were plain users spared it, a fast answer would name them.
 */
export function checkWork(secrets: Iterable<string>): CheckWork {
  let bcryptCost: number | undefined;
  for (const s of secrets) if (isBcrypt(s)) bcryptCost = Math.max(bcryptCost ?? 0, bcrypt.getRounds(s));
  return { bcryptCost };
}

/** The comparisons a check runs for a user's secret (undefined: no such user, or no password for them). */
export function comparisonsFor(secret: string | undefined, work: CheckWork): Comparison[] {
  const bcryptSecret = secret !== undefined && isBcrypt(secret);
  const result: Comparison[] = [{ kind: 'sha256', dummy: secret === undefined || bcryptSecret }];
  if (bcryptSecret) result.push({ kind: 'bcrypt', cost: bcrypt.getRounds(secret), dummy: false });
  else if (work.bcryptCost !== undefined) result.push({ kind: 'bcrypt', cost: work.bcryptCost, dummy: true });
  return result;
}

const dummyDigest = randomBytes(32);
const dummyHashes = new Map<number, string>();
/**
 * A well-formed hash of the given cost that no password matches (as good as: a random 184-bit hash). Comparing
 * against it costs what comparing against a real one does, and making it costs nothing (hashing one would block).
 */
function dummyBcrypt(cost: number): string {
  let hash = dummyHashes.get(cost);
  if (hash === undefined) {
    const alphabet = './ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
    const tail = [...randomBytes(31)].map((b) => alphabet[b & 63]).join('');
    dummyHashes.set(cost, (hash = bcrypt.genSaltSync(cost) + tail));
  }
  return hash;
}

export class Users {
  private htpasswd = new Map<string, string>();
  private htpasswdStamp = '';
  private htpasswdCheckedAt = 0;
  private work: CheckWork = {};
  private readonly pool: BcryptPool;
  private readonly cache: LoginResults;
  private readonly limiter: Limiter;

  constructor(
    private readonly users: UserConfig[],
    private readonly defaultNamespace: string,
    private readonly htpasswdFile: string | undefined,
    private readonly log: Logger,
    opts: LoginOptions = {},
  ) {
    this.pool = opts.pool ?? sharedBcryptPool();
    this.cache = opts.shared?.results ?? new LoginCache(opts.cache);
    this.limiter = opts.shared?.limiter ?? new LoginLimiter(opts.limits);
    for (const u of users) {
      if (u.pass?.startsWith('$2') && !isBcrypt(u.pass)) log.error({ user: u.name }, 'pass looks like a bcrypt hash but is malformed; this user cannot log in');
    }
    if (htpasswdFile) this.reloadHtpasswd(true);
    this.updateWork();
  }

  get enabled(): boolean {
    return this.users.length > 0;
  }

  /** The namespaces users work in. */
  get namespaces(): string[] {
    return [...new Set(this.users.map((u) => u.namespace ?? this.defaultNamespace))];
  }

  /** True when some user has read-only access (zuul-registry's rule: then nobody reads anonymously). */
  get hasReadOnlyUser(): boolean {
    return this.users.some((u) => u.access === 'read');
  }

  /**
   * The identity for this name and password, or null. Throws LoginRefused when the caller's address has failed
   * too often (or too many checks are waiting), before any work is done.
   */
  async check(name: string, password: string, from: LoginSource = {}): Promise<Identity | null> {
    this.reloadHtpasswd(false);
    const ticket = await this.limiter.reserve(from.address);
    const generation = this.cache.generation;
    const remembered = await this.cache.lookup(name, password);
    const user = this.users.find((u) => u.name === name);
    let ok: boolean;
    if (remembered !== undefined) {
      // Not a new guess either way: the token goes back.
      ticket.refund();
      ok = remembered === 'good';
    } else {
      try {
        ok = await this.compare(user, password, ticket.priority, from);
      } catch (err) {
        ticket.refund();
        if (err instanceof PoolBusy) throw new LoginRefused(1, 'too many logins in progress; retry shortly');
        throw err;
      }
      this.cache.remember(name, password, ok && user !== undefined, generation);
      if (ok && user) ticket.refund();
      else {
        // The address's count limits the address; its prefix's orders the password-check queue (login-queue.ts).
        this.pool.failed(from.address);
        if (await ticket.keep()) this.log.warn({ address: from.address, req: from.requestId }, 'too many failed logins from this address: its logins are refused for a while');
      }
    }
    if (!ok || !user) {
      this.log.warn({ user: name, address: from.address, req: from.requestId }, 'failed login');
      return null;
    }
    return { name: user.name, access: user.access, namespace: user.namespace ?? this.defaultNamespace };
  }

  private async compare(user: UserConfig | undefined, password: string, priority: number, from: LoginSource): Promise<boolean> {
    const secret = user && this.secretOf(user);
    let ok = secret !== undefined;
    // Every comparison runs, failed or not: stopping early would time the failure.
    for (const c of comparisonsFor(secret, this.work)) {
      let match: boolean;
      if (c.kind === 'sha256') {
        // Digests on both sides: the comparison takes the same time whatever the lengths.
        match = timingSafeEqual(sha256(password), c.dummy ? dummyDigest : sha256(secret!));
      } else {
        match = await this.pool.compare(password, c.dummy ? dummyBcrypt(c.cost) : secret!, priority, from.signal, from.address);
      }
      if (!c.dummy) ok &&= match;
    }
    return ok;
  }

  /**
   * What a refresh token is bound to: the user's credential entry, access and namespace as configured now
   * (undefined when they cannot log in). Any change to one of them ends the user's refresh tokens.
   */
  entryOf(name: string): string | undefined {
    this.reloadHtpasswd(false);
    const user = this.users.find((u) => u.name === name);
    const secret = user && this.secretOf(user);
    return user && secret !== undefined ? JSON.stringify([user.name, secret, user.access, user.namespace ?? this.defaultNamespace]) : undefined;
  }

  /** The identity of a configured user, without a password check (for a verified refresh token). */
  identityOf(name: string): Identity | undefined {
    const user = this.users.find((u) => u.name === name);
    return user && { name: user.name, access: user.access, namespace: user.namespace ?? this.defaultNamespace };
  }

  /** The user's password (plain or bcrypt), or undefined when they cannot log in. */
  private secretOf(user: UserConfig): string | undefined {
    const secret = user.pass ?? this.htpasswd.get(user.name);
    if (secret === undefined || (secret.startsWith('$2') && !isBcrypt(secret))) return undefined;
    return secret;
  }

  private updateWork(): void {
    const secrets = this.users.map((u) => this.secretOf(u)).filter((s): s is string => s !== undefined);
    this.work = checkWork(secrets);
    const costs = new Set(secrets.filter(isBcrypt).map((s) => bcrypt.getRounds(s)));
    if (costs.size > 1) {
      this.log.warn({ costs: [...costs].sort((a, b) => a - b) }, 'bcrypt hashes of different costs: a cheaper one answers faster than an unknown name; rehash them with one cost');
    }
  }

  /** Re-read the htpasswd file when its size or time changed (checked at most once a second). */
  private reloadHtpasswd(required: boolean): void {
    if (!this.htpasswdFile) return;
    const now = Date.now();
    if (!required && now - this.htpasswdCheckedAt < 1000) return;
    this.htpasswdCheckedAt = now;
    try {
      const st = statSync(this.htpasswdFile);
      const stamp = `${st.size}:${st.mtimeMs}`;
      if (stamp === this.htpasswdStamp) return;
      const entries = new Map<string, string>();
      for (const line of readFileSync(this.htpasswdFile, 'utf8').split('\n')) {
        const at = line.indexOf(':');
        if (at <= 0 || line.startsWith('#')) continue;
        const hash = line.slice(at + 1).trim();
        if (!isBcrypt(hash)) {
          this.log.warn({ user: line.slice(0, at) }, 'htpasswd entry is not bcrypt; ignored');
          continue;
        }
        entries.set(line.slice(0, at), hash);
      }
      this.htpasswd = entries;
      this.htpasswdStamp = stamp;
      // A changed or removed password must stop working now, not when its cache entry expires.
      this.cache.clear();
      this.log.info({ file: this.htpasswdFile, users: entries.size }, 'htpasswd loaded');
      if (!required) this.updateWork();
    } catch (err) {
      if (required) throw new Error(`cannot read htpasswd file ${this.htpasswdFile}: ${(err as NodeJS.ErrnoException).code ?? err}`);
      this.log.error({ file: this.htpasswdFile, code: (err as NodeJS.ErrnoException).code }, 'cannot re-read htpasswd; keeping the previous entries');
    }
  }
}

const sha256 = (s: string) => createHash('sha256').update(s).digest();
