/**
 * `registry.mirrors`: the upstream registries Berth caches on demand (docs/mirrors.md). Validated here, apart from
 * config.ts, so the pull-through cache's keys live in one place; every error names the key's path.
 *
 *   mirrors:
 *     - registry: docker.io              the registry name clients prefix (docker.io/library/x, quay.io/org/app)
 *       url: https://registry-1.docker.io
 *       username: "%(ZUUL_REGISTRY_DOCKERHUB_USER)"   optional, with password
 *       password: "%(ZUUL_REGISTRY_DOCKERHUB_PASS)"
 *       tag-ttl: 300                     seconds a cached tag is served before one upstream HEAD checks it
 *       keep: 604800                     seconds cached content is kept after its last pull
 *       namespaces: [_local, team]       who may pull through it (default: every namespace)
 *       unprefixed: true                 docker.io only: unprefixed names (library/x) come from here too;
 *                                        true for every namespace above, or a list of them
 *       ca: /etc/berth/upstream-ca.pem   extra CA for the upstream's TLS (verification is always on)
 *       timeout: 30                      seconds an upstream request may wait for an answer or stall its body
 *       max-blob-size: 10737418240       larger blobs are refused, not fetched
 *       max-fills: 16                    blob fills from this upstream at once; more wait for a slot
 *       max-fills-per-client: 8          fills one client address started that still read the upstream; more get 429
 *       max-size: 107374182400           bytes the cache of this upstream may hold: a fill that would go over is
 *                                        served, not stored (known across processes within ~10 s, mirror/cap.ts);
 *                                        prune evicts least recently pulled first; default: no cap
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { ConfigError } from './config.js';
import { DEFAULT_NAMESPACE, validMirrorRegistry, validNamespace } from '../registry/paths.js';

export interface MirrorConfig {
  /** The registry clients name: the first component of a prefixed repository name. */
  registry: string;
  /** The upstream's base URL, without a trailing slash (the API is at `${url}/v2/`). */
  url: string;
  username?: string;
  password?: string;
  tagTtl: number;
  keep: number;
  /** Namespaces that may pull through this upstream; undefined: all. */
  namespaces?: string[];
  /** Namespaces whose unprefixed names map here (docker.io only); 'all' follows `namespaces`. */
  unprefixed: string[] | 'all';
  /** PEM text of extra CAs for the upstream's TLS. */
  ca?: string;
  timeout: number;
  maxBlobSize: number;
  maxFills: number;
  maxFillsPerClient: number;
  /** Bytes this upstream's cache may hold (fills over it are not stored; prune evicts down to it); undefined: no cap. */
  maxSize?: number;
}

export const MIRROR_DEFAULTS = {
  tagTtl: 300,
  keep: 7 * 86_400,
  timeout: 30,
  maxBlobSize: 10 * 1024 ** 3,
  maxFills: 16,
  maxFillsPerClient: 8,
} as const;

type Obj = Record<string, unknown>;
const KEYS = ['registry', 'url', 'username', 'password', 'tag-ttl', 'keep', 'namespaces', 'unprefixed', 'ca', 'timeout', 'max-blob-size', 'max-fills', 'max-fills-per-client', 'max-size'];

export function parseMirrors(value: unknown, baseDir: string): MirrorConfig[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw new ConfigError('registry.mirrors', 'must be a list of {registry, url}');
  const seen = new Set<string>();
  return value.map((v, i) => {
    const where = `registry.mirrors[${i}]`;
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new ConfigError(where, 'must be a mapping');
    const o = v as Obj;
    for (const k of Object.keys(o)) if (!KEYS.includes(k)) throw new ConfigError(`${where}.${k}`, `unknown key (expected one of: ${KEYS.join(', ')})`);
    const registry = text(o.registry, `${where}.registry`);
    if (!validMirrorRegistry(registry)) {
      throw new ConfigError(`${where}.registry`, 'must be a registry host name as clients prefix it (docker.io, quay.io; lower case, with a dot, no port)');
    }
    if (seen.has(registry)) throw new ConfigError(`${where}.registry`, `${registry} is listed twice`);
    seen.add(registry);
    const url = text(o.url, `${where}.url`).replace(/\/+$/, '');
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new ConfigError(`${where}.url`, 'must be an http:// or https:// URL');
    }
    if (!['http:', 'https:'].includes(parsed.protocol) || parsed.username || parsed.password || parsed.search || parsed.hash) {
      throw new ConfigError(`${where}.url`, 'must be an http:// or https:// URL without credentials, query or fragment (use username and password)');
    }
    const username = optionalText(o.username, `${where}.username`);
    const password = optionalText(o.password, `${where}.password`);
    if ((username === undefined) !== (password === undefined)) {
      throw new ConfigError(`${where}.${username === undefined ? 'username' : 'password'}`, 'username and password must be given together');
    }
    const namespaces = o.namespaces === undefined || o.namespaces === null ? undefined : namespaceList(o.namespaces, `${where}.namespaces`);
    const unprefixed = unprefixedNamespaces(o.unprefixed, `${where}.unprefixed`, registry, namespaces);
    const caFile = optionalText(o.ca, `${where}.ca`);
    let ca: string | undefined;
    if (caFile !== undefined) {
      try {
        ca = readFileSync(resolve(baseDir, caFile), 'utf8');
      } catch (err) {
        throw new ConfigError(`${where}.ca`, `cannot read ${caFile} (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
      }
      if (!ca.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError(`${where}.ca`, `${caFile} holds no PEM certificate`);
    }
    return {
      registry,
      url,
      username,
      password,
      tagTtl: integer(o['tag-ttl'], `${where}.tag-ttl`, MIRROR_DEFAULTS.tagTtl, 0, 30 * 86_400),
      keep: integer(o.keep, `${where}.keep`, MIRROR_DEFAULTS.keep, 60, 10 * 365 * 86_400),
      namespaces,
      unprefixed,
      ca,
      timeout: integer(o.timeout, `${where}.timeout`, MIRROR_DEFAULTS.timeout, 1, 3600),
      maxBlobSize: integer(o['max-blob-size'], `${where}.max-blob-size`, MIRROR_DEFAULTS.maxBlobSize, 1, Number.MAX_SAFE_INTEGER),
      maxFills: integer(o['max-fills'], `${where}.max-fills`, MIRROR_DEFAULTS.maxFills, 1, 1024),
      maxFillsPerClient: integer(o['max-fills-per-client'], `${where}.max-fills-per-client`, MIRROR_DEFAULTS.maxFillsPerClient, 1, 1024),
      maxSize: o['max-size'] === undefined || o['max-size'] === null ? undefined : integer(o['max-size'], `${where}.max-size`, 0, 1, Number.MAX_SAFE_INTEGER),
    };
  });
}

function namespaceList(value: unknown, key: string): string[] {
  if (!Array.isArray(value) || value.length === 0) throw new ConfigError(key, 'must be a non-empty list of namespaces');
  return value.map((n, i) => {
    if (typeof n !== 'string' || !validNamespace(n)) throw new ConfigError(`${key}[${i}]`, `must be a namespace (${DEFAULT_NAMESPACE} is the default one)`);
    return n;
  });
}

/**
 * Unprefixed names reach Docker Hub only where asked for: otherwise a buildset's pruned `team/app:latest` would come
 * back from Docker Hub under the same name.
 */
function unprefixedNamespaces(value: unknown, key: string, registry: string, allowed: string[] | undefined): string[] | 'all' {
  if (value === undefined || value === null || value === false) return [];
  if (registry !== 'docker.io') throw new ConfigError(key, 'only the docker.io mirror can take unprefixed names (docker and podman send them for docker.io alone)');
  if (value === true) return 'all';
  const list = namespaceList(value, key);
  const outside = allowed && list.find((n) => !allowed.includes(n));
  if (outside) throw new ConfigError(key, `${outside} is not in this mirror's namespaces`);
  return list;
}

function text(value: unknown, key: string): string {
  if (typeof value !== 'string' || value === '') throw new ConfigError(key, 'must be a non-empty string');
  return value;
}
function optionalText(value: unknown, key: string): string | undefined {
  return value === undefined || value === null ? undefined : text(value, key);
}
function integer(value: unknown, key: string, fallback: number, min: number, max: number): number {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) throw new ConfigError(key, `must be an integer from ${min} to ${max}`);
  return value;
}
