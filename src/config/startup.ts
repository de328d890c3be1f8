/**
 * What `berth serve` checks beyond the file's shape: values that only matter to a running server (a prune from
 * cron may run without the environment that holds the secret). Refusals are ConfigErrors (exit 2); warnings are
 * returned for the caller to log.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { ConfigError, type Config } from './config.js';

export interface Warning {
  msg: string;
  [field: string]: unknown;
}

/** Refuse what must not be served; return what should be said at start-up. */
export function checkForServe(config: Config): Warning[] {
  const warnings: Warning[] = [];
  for (const { key, variable } of config.unresolved) {
    // An upstream's credentials too: the placeholder's text would be sent upstream as a login.
    if (key === 'registry.secret' || /^registry\.users\[\d+\]\.pass$/.test(key) || /^registry\.mirrors\[\d+\]\.(username|password)$/.test(key)) {
      throw new ConfigError(key, `the placeholder %(${variable}) was not replaced: the environment variable ${variable} is not set (Berth never uses the placeholder's text as a ${/pass(word)?$/.test(key) ? 'password' : key.endsWith('username') ? 'user name' : 'secret'})`);
    }
    warnings.push({ msg: 'placeholder left as written: its environment variable is not set', key, variable });
  }
  if (config.secret !== undefined) {
    const weak = checkSecret(config.secret);
    if (weak) warnings.push(weak);
  }
  const anonymous = anonymousPull(config);
  if (anonymous.allowed) {
    warnings.push({
      msg: anonymous.implicit
        ? "anyone may pull from the default namespace without credentials (zuul-registry's rule: write users only, no namespaces); set anonymous-pull: false to require them"
        : 'anyone may pull from the default namespace without credentials (anonymous-pull: true)',
    });
  }
  // zuul-registry's rule (http/auth.ts): a read-only user means nobody reads anonymously, public or not.
  const publicNamespace = Object.entries(config.namespaces).find(([, n]) => n.public)?.[0];
  const reader = config.users.find((u) => u.access === 'read');
  if (publicNamespace !== undefined && reader !== undefined) {
    warnings.push({
      msg: 'public: true is ignored: a read-only user exists, so nobody pulls without credentials; remove the read-only user or the public flag',
      namespace: publicNamespace,
      user: reader.name,
    });
  }
  // A mistyped namespace in a mirror's list silently keeps that namespace off the upstream: say so.
  const known = new Set(['_local', ...Object.keys(config.namespaces), ...config.users.flatMap((u) => (u.namespace ? [u.namespace] : []))]);
  config.mirrors.forEach((m, i) => {
    for (const ns of [...(m.namespaces ?? []), ...(Array.isArray(m.unprefixed) ? m.unprefixed : [])]) {
      if (!known.has(ns)) warnings.push({ msg: 'a mirror names a namespace no user or namespaces entry has', key: `registry.mirrors[${i}]`, namespace: ns });
    }
  });
  for (const u of config.users) {
    if (u.pass === '') warnings.push({ msg: 'read user with an empty password: anyone may log in as them and read the default namespace', user: u.name });
  }
  // Without it each process's tokens name its own address and port: the others behind the balancer refuse them.
  if (config.trustedProxies && config.secret !== undefined && !config.publicUrl) {
    warnings.push({ msg: 'trusted-proxies without public-url: processes behind one balancer need the same public-url (tokens carry it as their audience)' });
  }
  return warnings;
}

/** The secrets of the shipped examples (etc/): a copy left unchanged signs tokens anyone can forge. */
export const EXAMPLE_SECRETS = ['change-me', 'CHANGE-ME-to-a-long-random-string'];
export const MIN_SECRET_BYTES = 16;
export const GOOD_SECRET_BYTES = 32;
const MAKE_ONE = 'make one with `openssl rand -hex 32`';

/** Refuse a secret anyone could guess; a warning for one shorter than a good one (zuul-jobs makes 20 characters). */
function checkSecret(secret: string): Warning | undefined {
  const bytes = Buffer.byteLength(secret);
  if (EXAMPLE_SECRETS.some((e) => e.toLowerCase() === secret.trim().toLowerCase())) {
    throw new ConfigError('registry.secret', `is the example's text: anyone could sign tokens with it; ${MAKE_ONE}`);
  }
  if (bytes < MIN_SECRET_BYTES) throw new ConfigError('registry.secret', `is ${bytes} bytes; at least ${MIN_SECRET_BYTES} are required (it signs tokens); ${MAKE_ONE}`);
  if (bytes < GOOD_SECRET_BYTES) return { msg: `registry.secret is shorter than ${GOOD_SECRET_BYTES} bytes; ${MAKE_ONE}`, bytes };
  return undefined;
}

/**
 * The audience of this deployment's tokens: its public URL, or else its listen address and port with a hash of
 * the secret. Two deployments sharing a secret then refuse each other's tokens unless they also listen on the same
 * address and port and have no public-url (set one to be sure).
 */
export function tokenAudience(config: Config): string {
  if (config.publicUrl) return config.publicUrl;
  const hash = createHash('sha256').update(`berth audience\0${config.secret ?? ''}`).digest('hex').slice(0, 16);
  return `berth:${config.address}:${config.port}:${hash}`;
}

/**
 * zuul-registry's access rule, for a configuration zuul-registry itself could read (write users, no read-only user,
 * no namespaces): reads need no credentials. `anonymous-pull` overrides it either way. Without users the registry
 * is open anyway.
 */
export function anonymousPull(config: Config): { allowed: boolean; implicit: boolean } {
  if (config.users.length === 0) return { allowed: false, implicit: false };
  if (config.anonymousPull !== undefined) return { allowed: config.anonymousPull, implicit: false };
  const zuulShaped =
    config.users.every((u) => u.access === 'write' && u.namespace === undefined) && Object.keys(config.namespaces).length === 0;
  return { allowed: zuulShaped, implicit: zuulShaped };
}

/**
 * The configuration file to use: `-c`, else $BERTH_CONFIG, else /conf/registry.yaml when it exists (where
 * zuul-registry's container image reads it), else etc/registry.yaml.
 */
export function locateConfig(explicit: string | undefined, env: NodeJS.ProcessEnv = process.env, exists = existsSync): { file: string; from: string } {
  if (explicit !== undefined) return { file: explicit, from: '-c' };
  if (env.BERTH_CONFIG) return { file: env.BERTH_CONFIG, from: 'BERTH_CONFIG' };
  if (exists(CONTAINER_CONFIG)) return { file: CONTAINER_CONFIG, from: 'container default' };
  return { file: 'etc/registry.yaml', from: 'default' };
}

export const CONTAINER_CONFIG = '/conf/registry.yaml';
