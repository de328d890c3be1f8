/**
 * The HTTP side of the Swift driver: one container, a token reused until shortly before it expires, keep-alive
 * agents, retries of what can be sent again, a deadline for every request without a streamed body, and a stall
 * watch for every request with one. Nothing here knows what the objects mean.
 */
import http from 'node:http';
import https from 'node:https';
import { Readable } from 'node:stream';
import fetch, { type RequestInit, type Response } from 'node-fetch';
import { DEFAULTS } from '../../config/defaults.js';
import { DriverError, StorageUnavailable } from '../driver.js';
import { transactionSuffix } from '../../observability/context.js';
import { AuthError, login, type Session } from './auth.js';
import type { CloudAuth } from './clouds.js';

/** Deadline of requests without a streamed body (copies rewrite whole objects, so they get longer). */
export const DEFAULT_TIMEOUT_MS = DEFAULTS.swift.requestTimeout * 1000;
export const COPY_TIMEOUT_MS = 30 * 60_000;
/** Small requests run this many at a time (deletes, HEADs of segments, reads ahead of a merge). */
export const PARALLEL_REQUESTS = 8;
/** Refresh a token this long before Swift would refuse it, so a long streamed PUT does not start on a dying one. */
const TOKEN_MARGIN_MS = 5 * 60_000;
const RETRY_DELAYS_MS = [100, 500, 2000];
const RETRYABLE_STATUS = new Set([408, 429, 500, 502, 503, 504]);
/** Swift's object-name limit (max_object_name_length), in bytes. */
const MAX_KEY_BYTES = 1024;

export interface Call {
  method: string;
  key?: string;
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Buffer | Readable;
  signal?: AbortSignal;
  timeoutMs?: number;
}

export class SwiftClient {
  private session: Session | undefined;
  private loggingIn: Promise<Session> | undefined;
  private readonly httpAgent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  private readonly httpsAgent = new https.Agent({ keepAlive: true, maxSockets: 64 });
  /** Requests sent to the storage URL, retries included (prune reports them; logins are not counted). */
  sent = 0;

  constructor(
    private readonly auth: CloudAuth,
    readonly container: string,
    /** Deadline of a metadata request, and the longest a streamed body may stall. */
    readonly timeoutMs: number = DEFAULT_TIMEOUT_MS,
  ) {}

  /** A valid session (token and storage URL), logging in when there is none or it is about to expire. */
  async token(force = false): Promise<Session> {
    if (!force && this.session && this.session.expiresAt - TOKEN_MARGIN_MS > Date.now()) return this.session;
    this.loggingIn ??= loginRetrying(this.auth, this.agent)
      .then((s) => (this.session = s))
      .finally(() => (this.loggingIn = undefined));
    try {
      return await this.loggingIn;
    } catch (err) {
      if (err instanceof AuthError) throw new StorageUnavailable(`Swift login failed: ${err.message}`, { cause: err });
      throw err;
    }
  }

  /**
   * One request with the current token. Requests whose body can be sent again are retried on network errors and
   * 5xx, and once after a 401 with a fresh login. A streamed body cannot be replayed: its failures are final.
   */
  async call(call: Call): Promise<Response> {
    const replayable = !(call.body instanceof Readable);
    let reauthenticated = false;
    for (let attempt = 0; ; attempt++) {
      const session = await this.token();
      // Streamed calls bring their own stall watch in `signal`; every other call gets a deadline.
      const timeout = call.timeoutMs ?? (call.signal ? undefined : this.timeoutMs);
      const signals = [call.signal, timeout ? AbortSignal.timeout(timeout) : undefined].filter((s): s is AbortSignal => !!s);
      const init: RequestInit = {
        method: call.method,
        headers: { ...call.headers, 'X-Auth-Token': session.token, ...transactionHeader() },
        body: call.body as RequestInit['body'],
        agent: this.agent,
        signal: signals.length ? (AbortSignal.any(signals) as RequestInit['signal']) : undefined,
        compress: false,
      };
      let res: Response;
      this.sent++;
      try {
        res = await fetch(this.url(session, call), init);
      } catch (err) {
        if (call.signal?.aborted || !replayable || attempt >= RETRY_DELAYS_MS.length) {
          const message = `Swift ${call.method} ${call.key ?? ''} failed: ${(err as Error).message}`;
          // Aborted by our caller (the client went away): not a verdict on Swift.
          throw call.signal?.aborted ? new DriverError(message, true, { cause: err }) : new StorageUnavailable(message, { cause: err });
        }
        await sleep(RETRY_DELAYS_MS[attempt]);
        continue;
      }
      if (res.status === 401) {
        await drain(res);
        this.session = undefined;
        if (!replayable || reauthenticated) throw new StorageUnavailable(`Swift refused the token for ${call.method} ${call.key ?? ''}`);
        reauthenticated = true;
        await this.token(true);
        attempt--;
        continue;
      }
      if (RETRYABLE_STATUS.has(res.status) && replayable && attempt < RETRY_DELAYS_MS.length) {
        await drain(res);
        await sleep(RETRY_DELAYS_MS[attempt]);
        continue;
      }
      return res;
    }
  }

  /**
   * A request whose body streams (either way), bounded by a stall watch instead of a deadline: the watch aborts it
   * when no byte has moved for `timeoutMs`. `make` gets the watch first, so a streamed upload can touch it as its
   * bytes pass; the caller touches it as response bytes pass and stops it when the body has ended.
   */
  async streaming(what: string, make: (watch: IdleWatch) => Call): Promise<{ res: Response; watch: IdleWatch }> {
    const watch = new IdleWatch(what, this.timeoutMs);
    const call = make(watch);
    try {
      const res = await this.call({ ...call, signal: call.signal ? AbortSignal.any([watch.signal, call.signal]) : watch.signal });
      return { res, watch };
    } catch (err) {
      watch.stop();
      throw err;
    }
  }

  /**
   * The cluster's capabilities (GET /info, beside /v1 on the storage URL's host; no token needed), or null when it
   * does not answer them: a cluster may hide /info (expose_info = false).
   */
  async info(): Promise<Record<string, unknown> | null> {
    const session = await this.token();
    const url = new URL(session.storageUrl);
    url.pathname = url.pathname.replace(/\/v1\/[^/]*\/?$/, '') + '/info';
    url.search = '';
    this.sent++;
    try {
      const res = await fetch(url.toString(), { agent: this.agent, signal: AbortSignal.timeout(this.timeoutMs) as RequestInit['signal'], compress: false });
      if (res.status !== 200) {
        await drain(res);
        return null;
      }
      const info = (await res.json()) as unknown;
      return info && typeof info === 'object' && !Array.isArray(info) ? (info as Record<string, unknown>) : null;
    } catch {
      return null;
    }
  }

  async close(): Promise<void> {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }

  private readonly agent = (url: URL) => (url.protocol === 'https:' ? this.httpsAgent : this.httpAgent);

  private url(session: Session, call: Call): string {
    let url = `${session.storageUrl}/${encodeURIComponent(this.container)}`;
    if (call.key !== undefined) url += `/${encodeKey(call.key)}`;
    if (call.query) url += `?${new URLSearchParams(call.query).toString()}`;
    return url;
  }
}

/** Aborts a streamed request when no byte has moved for `ms` (Swift's own client_timeout is 60 s). */
export class IdleWatch {
  private readonly controller = new AbortController();
  private readonly timer: NodeJS.Timeout;
  readonly signal = this.controller.signal;

  constructor(what: string, ms: number) {
    this.timer = setTimeout(() => this.controller.abort(new DriverError(`Swift ${what}: no progress for ${ms / 1000} s`, true)), ms);
    this.timer.unref();
  }
  touch(): void {
    this.timer.refresh();
  }
  stop(): void {
    clearTimeout(this.timer);
  }
  /** Abort the request now (its reader went away). */
  cancel(): void {
    this.stop();
    this.controller.abort(new DriverError('read cancelled'));
  }
}

/** Keys as the filesystem driver accepts them, so both backends refuse the same things. */
export function checkKey(key: string): void {
  const bad =
    !key ||
    key.startsWith('/') ||
    key.endsWith('/') ||
    key.includes('\0') ||
    Buffer.byteLength(key) > MAX_KEY_BYTES ||
    key.split('/').some((p) => p === '' || p === '.' || p === '..');
  if (bad) throw new DriverError(`bad key: ${JSON.stringify(key)}`);
}

export function encodeKey(key: string): string {
  return key.split('/').map(encodeURIComponent).join('/');
}

export function unquote(etag: string | null): string | undefined {
  return etag?.replace(/^"|"$/g, '').toLowerCase();
}

export const isSlo = (res: Response) => res.headers.get('x-static-large-object') === 'True';

export function modifiedOf(res: Response): Date {
  const ts = Number(res.headers.get('x-timestamp'));
  if (Number.isFinite(ts) && ts > 0) return new Date(ts * 1000);
  return new Date(res.headers.get('last-modified') ?? 0);
}

export async function drain(res: Response): Promise<void> {
  try {
    await res.arrayBuffer();
  } catch {
    // the connection is discarded either way
  }
}

/** A write answered 404 names a missing container (`container` given): the registry cannot store anything. */
export function failure(res: Response, what: string, container?: string): DriverError {
  if (container !== undefined && res.status === 404) return new StorageUnavailable(`Swift ${what}: 404, container ${container} is missing`);
  return new DriverError(`Swift ${what}: ${res.status} ${res.statusText}`, res.status >= 500 || res.status === 429 || res.status === 408);
}

/** Swift appends X-Trans-Id-Extra to its transaction id, so its logs name the Berth request behind each call. */
function transactionHeader(): Record<string, string> {
  const suffix = transactionSuffix();
  return suffix ? { 'X-Trans-Id-Extra': suffix } : {};
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * A login that failed for a reason that may pass (network, 5xx: a busy proxy's memcache answering tempauth with
 * 503) is tried again after each of RETRY_DELAYS_MS; refused credentials fail at once.
 */
async function loginRetrying(auth: CloudAuth, agent: (url: URL) => http.Agent): Promise<Session> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await login(auth, agent);
    } catch (err) {
      if (!(err instanceof AuthError) || !err.retryable || attempt >= RETRY_DELAYS_MS.length) throw err;
      await sleep(RETRY_DELAYS_MS[attempt]);
    }
  }
}
