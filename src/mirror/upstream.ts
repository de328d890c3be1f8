/**
 * One upstream registry's HTTP client: the Docker token flow (a 401's `WWW-Authenticate: Bearer realm, service,
 * scope`, anonymous or with the configured login; tokens reused until shortly before they expire), Basic auth,
 * redirects followed by hand so that credentials never leave for another host (Docker Hub and ghcr.io send layers
 * to a CDN), TLS verified against the system CAs plus the configured one, a deadline for the answer and a stall
 * watch on bodies. Nothing here stores anything; the credentials never reach a log line or an error message.
 */
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import { rootCertificates } from 'node:tls';
import type { Readable } from 'node:stream';
import type { MirrorConfig } from '../config/mirrors.js';

/** What the manifest endpoint is asked for: every type Berth stores (schema 1 is long gone from registries). */
export const MANIFEST_ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

const MAX_REDIRECTS = 5;
/** A token is dropped this long before the upstream says it expires, so a request never starts on a dying one. */
const TOKEN_MARGIN_MS = 10_000;
/** Docker's token spec: a token without expires_in lasts 60 s. */
const DEFAULT_TOKEN_SECONDS = 60;
const MAX_TOKEN_BODY = 64 * 1024;
const MAX_CACHED_TOKENS = 1000;

/** The upstream could not be asked (network, TLS, timeout) or refused in a way a retry may mend (5xx, 429). */
export class UpstreamUnavailable extends Error {
  constructor(
    message: string,
    readonly status?: number,
    readonly retryAfter?: string,
  ) {
    super(message);
    this.name = 'UpstreamUnavailable';
  }
}

export interface UpstreamResponse {
  status: number;
  headers: { get(name: string): string | null };
  body: Readable;
  /** The final URL's host, after redirects (for the fill's log line). */
  host: string;
}

/** One answer as node:http gives it (no fetch layer: a layer's stream hop per 64 KiB piece costs CPU on a cold pull). */
interface Response {
  status: number;
  headers: { get(name: string): string | null };
  body: IncomingMessage;
  url: string;
}

interface Token {
  value: string;
  expires: number;
}

export class Upstream {
  private readonly agents: { http: http.Agent; https: https.Agent };
  private readonly tokens = new Map<string, Token>();
  private readonly origin: string;

  constructor(readonly config: MirrorConfig) {
    this.origin = new URL(config.url).origin;
    this.agents = {
      http: new http.Agent({ keepAlive: true, maxSockets: 64 }),
      // rejectUnauthorized is node's default; `ca` replaces the system list, so both are given.
      https: new https.Agent({ keepAlive: true, maxSockets: 64, ca: config.ca ? [...rootCertificates, config.ca] : undefined }),
    };
  }

  /** GET or HEAD a manifest; any status is returned (the caller decides), failures to ask throw UpstreamUnavailable. */
  manifest(name: string, reference: string, method: 'GET' | 'HEAD', signal?: AbortSignal): Promise<UpstreamResponse> {
    return this.request(method, `${name}/manifests/${reference}`, name, { accept: MANIFEST_ACCEPT, signal });
  }

  /** GET (or HEAD) a blob, following redirects (without credentials to other hosts). */
  blob(name: string, digest: string, method: 'GET' | 'HEAD' = 'GET', signal?: AbortSignal): Promise<UpstreamResponse> {
    return this.request(method, `${name}/blobs/${digest}`, name, { signal });
  }

  close(): void {
    this.agents.http.destroy();
    this.agents.https.destroy();
  }

  private async request(method: string, path: string, name: string, opts: { accept?: string; signal?: AbortSignal }): Promise<UpstreamResponse> {
    const scope = `repository:${name}:pull`;
    let auth = this.authorization(scope);
    let res = await this.follow(method, `${this.config.url}/v2/${path}`, auth, opts);
    if (res.status === 401) {
      const challenge = res.headers.get('www-authenticate') ?? '';
      await drain(res);
      auth = await this.authenticate(challenge, scope, opts.signal);
      if (auth === undefined) return this.wrap(res, method);
      res = await this.follow(method, `${this.config.url}/v2/${path}`, auth, opts);
    }
    return this.wrap(res, method);
  }

  /** Authorization for a first attempt: a live token for the scope, else nothing (the 401 says which scheme). */
  private authorization(scope: string): string | undefined {
    const token = this.tokens.get(scope);
    if (token && token.expires > Date.now()) return `Bearer ${token.value}`;
    if (token) this.tokens.delete(scope);
    return undefined;
  }

  /** Answer a challenge: a token from the realm, or Basic credentials; undefined when there is nothing to answer with. */
  private async authenticate(challenge: string, scope: string, signal?: AbortSignal): Promise<string | undefined> {
    const parsed = parseChallenge(challenge);
    if (parsed?.scheme === 'basic') return this.basic();
    if (parsed?.scheme !== 'bearer' || !parsed.params.realm) return undefined;
    let realm: URL;
    try {
      realm = new URL(parsed.params.realm);
    } catch {
      throw new UpstreamUnavailable('the upstream sent a token realm that is not a URL');
    }
    if (realm.protocol !== 'https:' && realm.protocol !== 'http:') throw new UpstreamUnavailable('the upstream sent a token realm that is not http(s)');
    if (parsed.params.service) realm.searchParams.set('service', parsed.params.service);
    realm.searchParams.set('scope', parsed.params.scope ?? scope);
    // A login goes to the realm only over TLS, or where the upstream itself is plain HTTP (a local test upstream).
    const mayLogin = realm.protocol === 'https:' || this.config.url.startsWith('http:');
    const headers: Record<string, string> = { Accept: 'application/json' };
    const basic = mayLogin ? this.basic() : undefined;
    if (basic) headers.Authorization = basic;
    const res = await this.fetch('GET', realm.toString(), headers, signal);
    if (res.status !== 200) {
      await drain(res);
      if (res.status >= 500 || res.status === 429) throw new UpstreamUnavailable(`the upstream's token service answered ${res.status}`, res.status);
      // Refused credentials or scope: the resource answers 401 again, which the caller maps.
      return undefined;
    }
    const body = await readLimited(res.body, MAX_TOKEN_BODY);
    let doc: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      doc = JSON.parse(body.toString('utf8')) as typeof doc;
    } catch {
      throw new UpstreamUnavailable("the upstream's token service sent no JSON");
    }
    const value = typeof doc.token === 'string' ? doc.token : typeof doc.access_token === 'string' ? doc.access_token : '';
    if (!/^[A-Za-z0-9._~+/=-]{1,8192}$/.test(value)) throw new UpstreamUnavailable("the upstream's token service sent no usable token");
    const seconds = typeof doc.expires_in === 'number' && doc.expires_in > 0 ? doc.expires_in : DEFAULT_TOKEN_SECONDS;
    if (this.tokens.size >= MAX_CACHED_TOKENS) this.tokens.delete(this.tokens.keys().next().value!);
    this.tokens.set(scope, { value, expires: Date.now() + seconds * 1000 - TOKEN_MARGIN_MS });
    return `Bearer ${value}`;
  }

  private basic(): string | undefined {
    const { username, password } = this.config;
    return username === undefined ? undefined : `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
  }

  /** Follow redirects by hand: Authorization goes only to the upstream's own origin. */
  private async follow(method: string, url: string, auth: string | undefined, opts: { accept?: string; signal?: AbortSignal }): Promise<Response> {
    let target = url;
    for (let hop = 0; ; hop++) {
      const headers: Record<string, string> = {};
      if (opts.accept) headers.Accept = opts.accept;
      if (auth && new URL(target).origin === this.origin) headers.Authorization = auth;
      const res = await this.fetch(method, target, headers, opts.signal);
      const location = res.headers.get('location');
      if (![301, 302, 303, 307, 308].includes(res.status) || !location) return res;
      await drain(res);
      if (hop >= MAX_REDIRECTS) throw new UpstreamUnavailable('the upstream redirected too often');
      const next = new URL(location, target);
      if (next.protocol !== 'https:' && next.protocol !== 'http:') throw new UpstreamUnavailable('the upstream redirected to a URL that is not http(s)');
      // Never from TLS down to plain HTTP: the bytes are verified, but what was asked for would be in the clear.
      if (new URL(target).protocol === 'https:' && next.protocol === 'http:') throw new UpstreamUnavailable('the upstream redirected from https to http');
      target = next.toString();
    }
  }

  /** One HTTP exchange with a deadline for the answer's headers; the body is watched for stalls by `wrap`. */
  private fetch(method: string, url: string, headers: Record<string, string>, signal?: AbortSignal): Promise<Response> {
    const target = new URL(url);
    const secure = target.protocol === 'https:';
    const ms = this.config.timeout * 1000;
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      // Never an Accept-Encoding: blobs are hashed as sent, and Content-Length must be the blob's size.
      const req = (secure ? https : http).request(target, { method, headers: { 'User-Agent': 'berth-mirror', ...headers }, agent: secure ? this.agents.https : this.agents.http });
      const timer = setTimeout(() => req.destroy(new UpstreamUnavailable(`the upstream did not answer within ${this.config.timeout} s`)), ms);
      const onAbort = () => req.destroy(signal?.reason);
      signal?.addEventListener('abort', onAbort, { once: true });
      req.once('response', (body) => {
        clearTimeout(timer);
        // The caller's signal still cuts the body, until it is done with.
        body.once('close', () => signal?.removeEventListener('abort', onAbort));
        const get = (name: string) => {
          const v = body.headers[name.toLowerCase()];
          return v === undefined ? null : Array.isArray(v) ? v.join(', ') : v;
        };
        resolve({ status: body.statusCode ?? 0, headers: { get }, body, url });
      });
      req.once('error', (err) => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (signal?.aborted) return reject(signal.reason);
        if (err instanceof UpstreamUnavailable) return reject(err);
        // The URL may carry a token realm's query; only the host is named.
        reject(new UpstreamUnavailable(`cannot reach ${target.host}: ${(err as NodeJS.ErrnoException).code ?? err.name}`));
      });
      req.end();
    });
  }

  /** The response with a body that fails when no byte comes for longer than the timeout (its socket's idle timer). */
  private wrap(res: Response, method: string): UpstreamResponse {
    const host = new URL(res.url).host;
    const { body } = res;
    if (method === 'HEAD') {
      body.resume();
      return { status: res.status, headers: res.headers, body, host };
    }
    const socket = body.socket;
    // An empty or short body may be whole already, its socket back in the pool: nothing left to watch.
    if (body.complete || !socket) return { status: res.status, headers: res.headers, body, host };
    const stalled = () => body.destroy(new UpstreamUnavailable(`the upstream's body stalled for ${this.config.timeout} s`));
    socket.setTimeout(this.config.timeout * 1000);
    socket.on('timeout', stalled);
    // The socket goes back to the agent's pool (which resets its timer) or is closed: no stall watch after the body.
    body.once('close', () => socket.off('timeout', stalled));
    return { status: res.status, headers: res.headers, body, host };
  }
}

/** A body's failure (a reset, a cut connection) as the upstream's, for the caller's error mapping. */
function bodyFailure(err: unknown): UpstreamUnavailable {
  return err instanceof UpstreamUnavailable ? err : new UpstreamUnavailable(`the upstream's body failed: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
}

/** `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`; null when unparseable. */
export function parseChallenge(header: string): { scheme: string; params: Record<string, string> } | null {
  const m = /^\s*([A-Za-z]+)\s*(.*)$/.exec(header);
  if (!m) return null;
  const params: Record<string, string> = {};
  const re = /([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))\s*,?\s*/gy;
  let p: RegExpExecArray | null;
  while ((p = re.exec(m[2])) !== null) params[p[1].toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3];
  return { scheme: m[1].toLowerCase(), params };
}

async function drain(res: Response): Promise<void> {
  const { body } = res;
  body.resume();
  await new Promise<void>((resolve) => {
    body.once('end', resolve);
    body.once('error', () => resolve());
    body.once('close', resolve);
  });
}

/** A small body whole; more than `limit` bytes is a misbehaving upstream. */
export async function readLimited(body: Readable, limit: number): Promise<Buffer> {
  const pieces: Buffer[] = [];
  let size = 0;
  try {
    for await (const piece of body as AsyncIterable<Buffer>) {
      size += piece.length;
      if (size > limit) {
        body.destroy();
        throw new UpstreamUnavailable(`the upstream sent more than ${limit} bytes where a small document was expected`);
      }
      pieces.push(piece);
    }
  } catch (err) {
    throw bodyFailure(err);
  }
  return Buffer.concat(pieces);
}
