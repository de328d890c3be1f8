/**
 * Credentials: users from the config (plain or bcrypt passwords) and, optionally, an htpasswd file of bcrypt
 * entries, re-read when it changes. Every check costs the same whether the user exists or not, and secrets are
 * compared in constant time.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import bcrypt from 'bcryptjs';
import type { Logger } from 'pino';
import type { UserConfig } from '../config/config.js';

export interface Identity {
  name: string;
  access: 'read' | 'write';
  namespace: string;
}

/** Unknown users are checked against this hash so that they take as long as known ones. */
let dummyHash: string | undefined;
const dummyBcrypt = () => (dummyHash ??= bcrypt.hashSync(randomBytes(16).toString('hex'), 10));
const BCRYPT_PREFIX = /^\$2[abxy]\$/;

export class Users {
  private htpasswd = new Map<string, string>();
  private htpasswdStamp = '';
  private htpasswdCheckedAt = 0;

  constructor(
    private readonly users: UserConfig[],
    private readonly defaultNamespace: string,
    private readonly htpasswdFile: string | undefined,
    private readonly log: Logger,
  ) {
    if (htpasswdFile) this.reloadHtpasswd(true);
  }

  get enabled(): boolean {
    return this.users.length > 0;
  }

  /** True when some user has read-only access (zuul-registry's rule: then nobody reads anonymously). */
  get hasReadOnlyUser(): boolean {
    return this.users.some((u) => u.access === 'read');
  }

  async check(name: string, password: string): Promise<Identity | null> {
    const user = this.users.find((u) => u.name === name);
    const secret = user ? (user.pass ?? this.htpasswdPassword(name)) : undefined;
    let ok: boolean;
    if (secret === undefined) {
      await bcrypt.compare(password, dummyBcrypt());
      ok = false;
    } else if (BCRYPT_PREFIX.test(secret)) {
      ok = await bcrypt.compare(password, secret);
    } else {
      // Hash both sides first so the comparison takes the same time whatever the lengths.
      ok = timingSafeEqual(sha256(password), sha256(secret));
    }
    if (!ok || !user) {
      this.log.warn({ user: name }, 'failed login');
      return null;
    }
    return { name: user.name, access: user.access, namespace: user.namespace ?? this.defaultNamespace };
  }

  private htpasswdPassword(name: string): string | undefined {
    this.reloadHtpasswd(false);
    return this.htpasswd.get(name);
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
        if (!BCRYPT_PREFIX.test(hash)) {
          this.log.warn({ user: line.slice(0, at) }, 'htpasswd entry is not bcrypt; ignored');
          continue;
        }
        entries.set(line.slice(0, at), hash);
      }
      this.htpasswd = entries;
      this.htpasswdStamp = stamp;
      this.log.info({ file: this.htpasswdFile, users: entries.size }, 'htpasswd loaded');
    } catch (err) {
      if (required) throw new Error(`cannot read htpasswd file ${this.htpasswdFile}: ${(err as NodeJS.ErrnoException).code ?? err}`);
      this.log.error({ file: this.htpasswdFile, code: (err as NodeJS.ErrnoException).code }, 'cannot re-read htpasswd; keeping the previous entries');
    }
  }
}

const sha256 = (s: string) => createHash('sha256').update(s).digest();
