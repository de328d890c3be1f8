/**
 * Configuration: YAML under a top-level `registry:` key, accepting zuul-registry's keys unchanged. Validated once
 * at start-up; any unknown key or bad value stops the process with the key's path in the message.
 */
import { DEFAULTS } from './defaults.js';
import { validNamespace } from '../registry/paths.js';
import { readFileSync } from 'node:fs';
import { isIP, isIPv6 } from 'node:net';
import { availableParallelism } from 'node:os';
import { dirname, resolve } from 'node:path';
import { substituteEnv, type Unresolved } from './env.js';
import { loadYaml } from './yaml.js';
import { DEFAULT_LIMITS, type UploadLimits } from '../registry/upload-limits.js';
import type { CommitMode } from '../registry/upload-commit.js';
import { parseMirrors, type MirrorConfig } from './mirrors.js';

export interface UserConfig {
  name: string;
  /** Plain or bcrypt ("$2..."); absent when the htpasswd file holds it; '' only for a read user (no password). */
  pass?: string;
  access: 'read' | 'write';
  namespace?: string;
}

export type StorageConfig =
  | { driver: 'filesystem'; root: string }
  | {
      driver: 'swift';
      cloud: string;
      container: string;
      segmentSize?: number;
      cloudsFile?: string;
      /** When set, blob GETs are answered with a redirect to a Swift temp URL signed with this key. */
      tempUrlKey?: string;
      /** Seconds a redirect stays valid (default 300). */
      tempUrlExpiry?: number;
      /** Seconds a Swift request may take (metadata) or stall (streamed bodies); default 120. */
      requestTimeout?: number;
      /** How an upload becomes a blob: its chunks copied into the blob's path (move), or joined where written (link). */
      commit?: CommitMode;
    };

export interface Config {
  address: string;
  port: number;
  publicUrl?: string;
  tlsCert?: string;
  tlsKey?: string;
  secret?: string;
  users: UserConfig[];
  htpasswd?: string;
  storage: StorageConfig;
  /** Manifests older than this many seconds are expired by prune; undefined keeps them forever. */
  expiration?: number;
  /** Uploads idle for longer than this many seconds are abandoned (prune deletes them). */
  uploadExpiry: number;
  /** Per-namespace settings: an `expiration` override, and whether anonymous clients may read it. */
  namespaces: Record<string, NamespaceConfig>;
  /** Seconds a refresh token (an offline token, docker's stored credential) stays valid. */
  refreshTokenExpiry: number;
  /** May anonymous clients pull from the default namespace? Unset: zuul-registry's rule decides (config/startup.ts). */
  anonymousPull?: boolean;
  /** `%(ZUUL_REGISTRY_...)` placeholders whose variable was unset: still in the values, as written. */
  unresolved: Unresolved[];
  /** Seconds a connection may stay silent at each stage before it is closed (docs/security-network.md). */
  timeouts: Timeouts;
  /** What one upload or namespace may cost (registry.limits; docs/security-storage.md). */
  limits: UploadLimits;
  /** Upstream registries cached on demand (config/mirrors.ts, docs/mirrors.md); empty: no pull-through cache. */
  mirrors: MirrorConfig[];
  /** Processes serving requests (`workers: N | auto`); above 1, a primary forks them (src/cluster/primary.ts). */
  workers: number;
  /** A lock service across processes (registry.locks; docs/security-storage.md); none: the driver's lock, if any. */
  locks?: LocksConfig;
  /** Bytes a namespace may store unless its own `quota` says otherwise; undefined: no limit (docs/security-storage.md). */
  quota?: number;
  /** Seconds between a server's writes and re-reads of the usage counters quotas are enforced with. */
  quotaInterval: number;
  /** Balancers whose word on the client address is taken, and how they give it (docs/security-network.md). */
  trustedProxies?: TrustedProxies;
}

export interface LocksConfig {
  /** Every process must list the same servers (in any order): each lock's server is chosen by hashing over them. */
  memcached: { host: string; port: number }[];
}

export interface TrustedProxies {
  /** Addresses and CIDR ranges (`10.0.0.5`, `10.1.0.0/16`, `fd00::/8`). */
  addresses: string[];
  /** Connections from them open with a PROXY protocol v2 header (HAProxy's `send-proxy-v2`); one without is closed. */
  proxyProtocol: boolean;
  /** Their requests carry X-Forwarded-For with the client's address appended (HAProxy's `option forwardfor`). */
  forwardedFor: boolean;
}

export interface Timeouts {
  /** TLS handshake, from the TCP connection. */
  handshake: number;
  /** Request line and headers, from the first byte of a request (or the connection). */
  headers: number;
  /** A keep-alive connection between requests. */
  idle: number;
  /** A request body with no byte received while Berth is ready to read it. */
  bodyIdle: number;
  /** A response whose client takes none of the bytes waiting for it (docs/security-network.md). */
  sendIdle: number;
}

export interface NamespaceConfig {
  expiration?: number;
  public?: boolean;
  /** Bytes the namespace may store (overrides registry.quota). */
  quota?: number;
}

export class ConfigError extends Error {
  constructor(
    public readonly key: string,
    message: string,
  ) {
    super(`${key}: ${message}`);
    this.name = 'ConfigError';
  }
}


export { DEFAULTS };
export const DEFAULT_TIMEOUTS: Timeouts = DEFAULTS.timeouts;

/** Load and validate a config file; relative storage paths resolve against the file's directory. */
export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, `cannot read config file (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  let doc: unknown;
  try {
    doc = loadYaml(text, file);
  } catch (err) {
    throw new ConfigError(file, `not valid YAML: ${(err as Error).message}`);
  }
  return parseConfig(doc, dirname(resolve(file)), env);
}

type Obj = Record<string, unknown>;

/** Validate a parsed document, after replacing `%(ZUUL_REGISTRY_...)` placeholders from `env`. */
export function parseConfig(raw: unknown, baseDir = process.cwd(), env: NodeJS.ProcessEnv = process.env): Config {
  const { doc, unresolved } = substituteEnv(raw, env);
  const top = object(doc, '(top level)');
  keys(top, '(top level)', ['registry']);
  const r = object(top.registry, 'registry');
  if (r.shadow !== undefined) {
    throw new ConfigError('registry.shadow', "was zuul-registry's early pull-through option (never finished there); Berth's pull-through cache is configured under registry.mirrors (docs/mirrors.md): remove it");
  }
  keys(r, 'registry', ['address', 'port', 'public-url', 'tls-cert', 'tls-key', 'secret', 'users', 'storage', 'expiration', 'upload-expiry', 'namespaces', 'htpasswd', 'anonymous-pull', 'refresh-token-expiry', 'timeouts', 'limits', 'locks', 'trusted-proxies', 'workers', 'mirrors', 'quota', 'quota-interval']);

  // Templates often quote it ('9000').
  const port = r.port === undefined ? DEFAULTS.port : integer(typeof r.port === 'string' && /^[0-9]{1,5}$/.test(r.port) ? Number(r.port) : r.port, 'registry.port', 0, 65535);
  const publicUrl = optionalString(r['public-url'], 'registry.public-url');
  if (publicUrl !== undefined && !/^https?:\/\/[^/\s]+(\/.*)?$/.test(publicUrl)) {
    throw new ConfigError('registry.public-url', 'must be an http:// or https:// URL');
  }
  const tlsCert = optionalString(r['tls-cert'], 'registry.tls-cert');
  const tlsKey = optionalString(r['tls-key'], 'registry.tls-key');
  if ((tlsCert === undefined) !== (tlsKey === undefined)) {
    throw new ConfigError(tlsCert ? 'registry.tls-key' : 'registry.tls-cert', 'tls-cert and tls-key must be given together');
  }
  const config: Config = {
    address: optionalString(r.address, 'registry.address') ?? DEFAULTS.address,
    port,
    publicUrl: publicUrl?.replace(/\/+$/, ''),
    tlsCert: tlsCert && resolve(baseDir, tlsCert),
    tlsKey: tlsKey && resolve(baseDir, tlsKey),
    secret: optionalString(r.secret, 'registry.secret'),
    users: users(r.users, r.htpasswd !== undefined),
    htpasswd: r.htpasswd === undefined ? undefined : resolve(baseDir, string(r.htpasswd, 'registry.htpasswd')),
    storage: storage(r.storage, baseDir),
    expiration: expiration(r),
    uploadExpiry: r['upload-expiry'] === undefined ? DEFAULTS.uploadExpiry : integer(r['upload-expiry'], 'registry.upload-expiry', 1),
    namespaces: namespaces(r.namespaces),
    refreshTokenExpiry: r['refresh-token-expiry'] === undefined ? DEFAULTS.refreshTokenExpiry : integer(r['refresh-token-expiry'], 'registry.refresh-token-expiry', 60),
    anonymousPull: optionalBoolean(r['anonymous-pull'], 'registry.anonymous-pull'),
    unresolved,
    timeouts: timeouts(r.timeouts),
    limits: limits(r.limits),
    locks: locks(r.locks),
    quota: r.quota === undefined || r.quota === null ? undefined : size(r.quota, 'registry.quota'),
    quotaInterval: r['quota-interval'] === undefined ? DEFAULTS.quotaInterval : integer(r['quota-interval'], 'registry.quota-interval', 1, 60),
    trustedProxies: trustedProxies(r['trusted-proxies']),
    workers: workers(r.workers),
    mirrors: parseMirrors(r.mirrors, baseDir),
  };
  if (config.users.length > 0 && !config.secret) throw new ConfigError('registry.secret', 'is required when users are configured (it signs tokens)');
  const names = config.users.map((u) => u.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup !== undefined) throw new ConfigError('registry.users', `user ${JSON.stringify(dup)} is listed twice`);
  const publics = Object.entries(config.namespaces).filter(([, n]) => n.public).map(([name]) => name);
  if (publics.length > 1) throw new ConfigError('registry.namespaces', `only one namespace can be public (anonymous clients read it); found ${publics.join(', ')}`);
  if (config.anonymousPull && publics.length > 0) {
    throw new ConfigError('registry.anonymous-pull', `anonymous clients read one namespace: the default one (anonymous-pull: true) or ${publics[0]} (public: true), not both`);
  }
  return config;
}

function users(value: unknown, haveHtpasswd: boolean): UserConfig[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw new ConfigError('registry.users', 'must be a list');
  return value.map((u, i) => {
    const where = `registry.users[${i}]`;
    const o = object(u, where);
    keys(o, where, ['name', 'pass', 'access', 'namespace']);
    const access = o.access ?? 'read';
    if (access !== 'read' && access !== 'write') throw new ConfigError(`${where}.access`, 'must be "read" or "write"');
    const user: UserConfig = { name: string(o.name, `${where}.name`), access };
    const namespace = optionalString(o.namespace, `${where}.namespace`);
    if (o.pass === '') {
      // zuul-registry's example "anonymous" reader: anyone may log in as them, so only to read the default namespace.
      if (access === 'write') throw new ConfigError(`${where}.pass`, 'an empty password is refused for a write user');
      if (namespace !== undefined) throw new ConfigError(`${where}.pass`, 'an empty password is refused for a user with a namespace (anyone could read it)');
      user.pass = '';
    } else if (o.pass !== undefined || !haveHtpasswd) user.pass = string(o.pass, `${where}.pass`);
    if (namespace !== undefined) {
      if (!validNamespace(namespace)) throw new ConfigError(`${where}.namespace`, 'must match [a-z0-9_][a-z0-9_-]{0,63}');
      user.namespace = namespace;
    }
    return user;
  });
}

function namespaces(value: unknown): Record<string, NamespaceConfig> {
  if (value === undefined || value === null) return {};
  const o = object(value, 'registry.namespaces');
  const result: Record<string, NamespaceConfig> = {};
  for (const [name, v] of Object.entries(o)) {
    const where = `registry.namespaces.${name}`;
    if (!validNamespace(name)) throw new ConfigError(where, 'a namespace must match [a-z0-9_][a-z0-9_-]{0,63}');
    const n = object(v ?? {}, where);
    keys(n, where, ['expiration', 'public', 'quota']);
    const entry: NamespaceConfig = {};
    if (n.expiration !== undefined && n.expiration !== null) entry.expiration = integer(n.expiration, `${where}.expiration`, 1);
    if (n.public !== undefined) {
      if (typeof n.public !== 'boolean') throw new ConfigError(`${where}.public`, 'must be true or false');
      entry.public = n.public;
    }
    if (n.quota !== undefined && n.quota !== null) entry.quota = size(n.quota, `${where}.quota`);
    result[name] = entry;
  }
  return result;
}

/** `registry.expiration`, or zuul-registry's `storage.expiration` (where its storage layer reads it). */
function expiration(r: Obj): number | undefined {
  const read = (value: unknown, key: string) => (value === undefined || value === null ? undefined : integer(value, key, 1));
  const top = read(r.expiration, 'registry.expiration');
  const s = r.storage && typeof r.storage === 'object' ? (r.storage as Obj) : {};
  const inStorage = read(s.expiration, 'registry.storage.expiration');
  if (top !== undefined && inStorage !== undefined && top !== inStorage) {
    throw new ConfigError('registry.storage.expiration', `is ${inStorage} but registry.expiration is ${top}: give one of them`);
  }
  return top ?? inStorage;
}

function timeouts(value: unknown): Timeouts {
  if (value === undefined || value === null) return { ...DEFAULT_TIMEOUTS };
  const o = object(value, 'registry.timeouts');
  keys(o, 'registry.timeouts', ['handshake', 'headers', 'idle', 'body-idle', 'send-idle']);
  const seconds = (key: string, fallback: number, max: number) => (o[key] === undefined ? fallback : integer(o[key], `registry.timeouts.${key}`, 1, max));
  return {
    handshake: seconds('handshake', DEFAULT_TIMEOUTS.handshake, 300),
    headers: seconds('headers', DEFAULT_TIMEOUTS.headers, 300),
    idle: seconds('idle', DEFAULT_TIMEOUTS.idle, 3600),
    bodyIdle: seconds('body-idle', DEFAULT_TIMEOUTS.bodyIdle, 3600),
    sendIdle: seconds('send-idle', DEFAULT_TIMEOUTS.sendIdle, 3600),
  };
}

function trustedProxies(value: unknown): TrustedProxies | undefined {
  if (value === undefined || value === null) return undefined;
  const where = 'registry.trusted-proxies';
  const o = object(value, where);
  keys(o, where, ['addresses', 'proxy-protocol', 'x-forwarded-for']);
  if (!Array.isArray(o.addresses) || o.addresses.length === 0) throw new ConfigError(`${where}.addresses`, 'must be a non-empty list of addresses or CIDR ranges');
  const addresses = o.addresses.map((a, i) => {
    const key = `${where}.addresses[${i}]`;
    const [address, prefix, extra] = string(a, key).split('/');
    const family = isIP(address);
    const max = family === 6 ? 128 : 32;
    if (family === 0 || extra !== undefined || (prefix !== undefined && (!/^[0-9]{1,3}$/.test(prefix) || Number(prefix) > max))) {
      throw new ConfigError(key, `${JSON.stringify(a)} is not an IP address or CIDR range (10.0.0.5, 10.1.0.0/16, fd00::/8)`);
    }
    return a as string;
  });
  const proxyProtocol = optionalBoolean(o['proxy-protocol'], `${where}.proxy-protocol`) ?? false;
  const forwardedFor = optionalBoolean(o['x-forwarded-for'], `${where}.x-forwarded-for`) ?? false;
  // Neither would trust them for nothing; guessing one would trust a header the balancer may pass through unchecked.
  if (!proxyProtocol && !forwardedFor) throw new ConfigError(where, 'say how they pass the client address: proxy-protocol: true, x-forwarded-for: true, or both');
  return { addresses, proxyProtocol, forwardedFor };
}

/** `auto`: one per core the process may use. More workers than cores only add context switches and memory. */
function workers(value: unknown): number {
  if (value === undefined || value === null) return DEFAULTS.workers;
  if (value === 'auto') return availableParallelism();
  const n = typeof value === 'string' && /^[0-9]{1,3}$/.test(value) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 256) throw new ConfigError('registry.workers', 'must be auto or an integer from 1 to 256');
  return n;
}

function limits(value: unknown): UploadLimits {
  if (value === undefined || value === null) return { ...DEFAULT_LIMITS };
  const o = object(value, 'registry.limits');
  keys(o, 'registry.limits', ['chunks-per-upload', 'uploads-per-namespace', 'max-blob-size']);
  const get = (key: string, fallback: number) => (o[key] === undefined ? fallback : integer(o[key], `registry.limits.${key}`, 1));
  return {
    chunksPerUpload: get('chunks-per-upload', DEFAULT_LIMITS.chunksPerUpload),
    uploadsPerNamespace: get('uploads-per-namespace', DEFAULT_LIMITS.uploadsPerNamespace),
    maxBlobSize: get('max-blob-size', DEFAULT_LIMITS.maxBlobSize),
  };
}

function locks(value: unknown): LocksConfig | undefined {
  if (value === undefined || value === null) return undefined;
  const o = object(value, 'registry.locks');
  keys(o, 'registry.locks', ['memcached']);
  const list = o.memcached;
  if (!Array.isArray(list) || list.length === 0) throw new ConfigError('registry.locks.memcached', 'must be a non-empty list of HOST:PORT');
  const servers = list.map((s, i) => hostPort(s, `registry.locks.memcached[${i}]`));
  const names = servers.map((s) => `${s.host}:${s.port}`);
  const dup = names.findIndex((n, i) => names.indexOf(n) !== i);
  if (dup >= 0) throw new ConfigError(`registry.locks.memcached[${dup}]`, `${JSON.stringify(list[dup])} is listed twice`);
  return { memcached: servers };
}

/** HOST:PORT with a DNS name, an IPv4 address or an IPv6 address in brackets. */
function hostPort(value: unknown, key: string): { host: string; port: number } {
  const m = typeof value === 'string' ? /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):([0-9]{1,5})$/.exec(value) : null;
  const port = m ? Number(m[3]) : 0;
  const host = m?.[1] ?? m?.[2]?.toLowerCase();
  const label = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
  const valid = host !== undefined && (m?.[1] !== undefined ? isIPv6(host) : host.length <= 253 && host.split('.').every((l) => label.test(l)));
  if (!valid || port < 1 || port > 65535) throw new ConfigError(key, 'must be HOST:PORT (a name or an address; IPv6 in brackets: [::1]:11211)');
  return { host, port };
}

function storage(value: unknown, baseDir: string): StorageConfig {
  if (value === undefined) throw new ConfigError('registry.storage', 'is required');
  const o = object(value, 'registry.storage');
  const driver = string(o.driver, 'registry.storage.driver');
  if (driver === 'filesystem') {
    if (o.commit !== undefined && o.commit !== 'move') {
      throw new ConfigError('registry.storage.commit', 'link needs Swift (its joins keep the parts where they were written); the filesystem joins by copying, so only move applies');
    }
    keys(o, 'registry.storage', ['driver', 'root', 'expiration', 'commit']);
    return { driver, root: resolve(baseDir, string(o.root, 'registry.storage.root')) };
  }
  if (driver === 'swift') {
    keys(o, 'registry.storage', ['driver', 'cloud', 'container', 'segment-size', 'clouds-file', 'temp-url-key', 'temp-url-expiry', 'request-timeout', 'expiration', 'commit']);
    const s: StorageConfig = { driver, cloud: string(o.cloud, 'registry.storage.cloud'), container: string(o.container, 'registry.storage.container') };
    if (o['segment-size'] !== undefined) {
      // Swift refuses objects over 5 GiB; SLO segments under 1 MiB are throttled.
      s.segmentSize = integer(o['segment-size'], 'registry.storage.segment-size', 1 << 20, 5 * 1024 ** 3);
    }
    const cloudsFile = optionalString(o['clouds-file'], 'registry.storage.clouds-file');
    if (cloudsFile !== undefined) s.cloudsFile = resolve(baseDir, cloudsFile);
    const tempUrlKey = optionalString(o['temp-url-key'], 'registry.storage.temp-url-key');
    if (tempUrlKey !== undefined) {
      if (tempUrlKey.length < 16) throw new ConfigError('registry.storage.temp-url-key', 'must be at least 16 characters');
      s.tempUrlKey = tempUrlKey;
    }
    if (o['temp-url-expiry'] !== undefined) s.tempUrlExpiry = integer(o['temp-url-expiry'], 'registry.storage.temp-url-expiry', 10, 86400);
    if (o['request-timeout'] !== undefined) s.requestTimeout = integer(o['request-timeout'], 'registry.storage.request-timeout', 1, 3600);
    if (o.commit !== undefined) {
      if (o.commit !== 'move' && o.commit !== 'link') throw new ConfigError('registry.storage.commit', `must be move or link, not ${JSON.stringify(o.commit)}`);
      s.commit = o.commit;
    }
    return s;
  }
  throw new ConfigError('registry.storage.driver', `unknown driver ${JSON.stringify(driver)} (filesystem or swift)`);
}

function object(value: unknown, key: string): Obj {
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw new ConfigError(key, 'must be a mapping');
  return value as Obj;
}
function keys(o: Obj, where: string, allowed: string[]) {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) throw new ConfigError(`${where === '(top level)' ? '' : where + '.'}${k}`, `unknown key (expected one of: ${allowed.join(', ')})`);
  }
}
function string(value: unknown, key: string): string {
  if (typeof value !== 'string' || value === '') throw new ConfigError(key, 'must be a non-empty string');
  return value;
}
function optionalString(value: unknown, key: string): string | undefined {
  return value === undefined || value === null ? undefined : string(value, key);
}
function optionalBoolean(value: unknown, key: string): boolean | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'boolean') throw new ConfigError(key, 'must be true or false');
  return value;
}
const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, kib: 1024, m: 1024 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gib: 1024 ** 3, t: 1024 ** 4, tib: 1024 ** 4, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12 };

/** Bytes: an integer, or a number with a unit (K, M, G, T and KiB... are powers of 1024; KB, MB, GB, TB of 1000). */
export function size(value: unknown, key: string): number {
  if (typeof value === 'number') return integer(value, key, 1);
  const m = typeof value === 'string' ? /^([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)$/.exec(value.trim()) : null;
  const unit = m ? SIZE_UNITS[m[2].toLowerCase()] : undefined;
  const bytes = m && unit !== undefined ? Math.floor(Number(m[1]) * unit) : NaN;
  if (!Number.isSafeInteger(bytes) || bytes < 1) throw new ConfigError(key, 'must be a size in bytes: an integer, or a number with a unit such as 500M, 20G, 1.5T (powers of 1024) or 20GB (powers of 1000)');
  return bytes;
}

function integer(value: unknown, key: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(key, `must be an integer from ${min} to ${max}`);
  }
  return value;
}
