/**
 * The HTTP API: OCI Distribution Spec v1.1 over the registry core. Handlers only translate between HTTP and core
 * calls; every decision about data lives in registry/.
 */
import { randomUUID } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import type { IncomingMessage as Request, ServerResponse as Response } from 'node:http';
import { parse as parseQuery } from 'node:querystring';
import type { Logger } from 'pino';
import { RegistryError } from '../registry/errors.js';
import { DEFAULT_NAMESPACE, checkDigest, validName } from '../registry/paths.js';
import type { Registry } from '../registry/registry.js';
import { Users } from '../auth/users.js';
import { Access, AuthFailure } from './auth.js';
import { sendError, toErrorBody } from './errors.js';
import { byteRange, chunkRange, contentLength, uploadRange } from './headers.js';
import { manifest, referrers } from './manifests.js';
import { parseRoute, queryValue, type Route } from './routes.js';
import { otherEndpoints } from './endpoints.js';
import { exchanges, logWhenFinished, recordPrincipal, type Exchange } from './exchange.js';
import { inRequest } from '../observability/context.js';
import { DigestMismatch } from '../registry/verify.js';
import type { Metrics } from '../observability/metrics.js';
import { ClientAddresses, recordClientAddress } from './client-address.js';
import { WEB_PREFIX, webPages, type WebOptions } from '../web/pages.js';
import type { MirrorHook } from './mirror.js';

export interface AppOptions {
  log: Logger;
  /** Authentication and access rules; without it the registry is open and works in the default namespace. */
  access?: Access;
  /** Prometheus metrics, served at /metrics; without them nothing is counted. */
  metrics?: Metrics;
  /** Trusted proxies' word on the client address; without it the peer is the client. */
  clientAddresses?: ClientAddresses;
  /** The read-only web page under /ui (src/web/); without it /ui is an unknown path like any other. */
  web?: WebOptions;
  /** The pull-through cache (registry.mirrors, http/mirror.ts); without it mirrored names are ordinary names. */
  mirror?: MirrorHook;
}

/** Context of one API request. */
export interface Call {
  req: Request;
  res: Response;
  ns: string;
  signal: AbortSignal;
  query: Record<string, unknown>;
  /** May the caller pull from another repository of its namespace (for mounts)? */
  canPull: (name: string) => boolean;
  metrics?: Metrics;
  log: Logger;
  requestId: string;
}

/** The request listener: registry API requests are dispatched directly; Express serves the few others. */
export function createApp(registry: Registry, opts: AppOptions): (req: Request, res: Response) => void {
  const access = opts.access ?? new Access({ users: new Users([], DEFAULT_NAMESPACE, undefined, opts.log), tokens: null, defaultNamespace: DEFAULT_NAMESPACE, log: opts.log });
  const metrics = opts.metrics;
  const others = otherEndpoints(registry, access, opts);
  const carryRequestIds = registry.driver.namesRequests === true;
  const clientAddresses = opts.clientAddresses ?? new ClientAddresses();
  const web = opts.web && webPages(registry, access, opts.web, opts.log);

  return (req, res) => {
    const id = randomUUID();
    const path = targetPath(req.url ?? '/');
    const exchange: Exchange = { id, route: 'other' };
    recordClientAddress(req, clientAddresses);
    exchanges.set(res, exchange);
    res.setHeader('X-Request-Id', id);
    logWhenFinished(req, res, exchange, path, opts.log, metrics);
    // Express's router costs more than the rest of a small request (measured: 4.8k HEAD/s through a bare Express
    // app with six routes against 23k/s for the same handler on node:http), so the API does not go through it.
    const api = /^\/v2(\/|$)/i.test(path);
    const page = !api && web && WEB_PREFIX.test(path);
    inRequest(id, () => (api ? apiRequest(registry, access, opts, req, res, exchange, path.slice(3) || '/') : page ? web(req, res, exchange, path) : others(req, res)), carryRequestIds);
  };
}

/** The path of a request target, without the query; absolute-form targets (as sent to proxies) give theirs too. */
function targetPath(url: string): string {
  if (url.startsWith('/')) return url.split('?')[0];
  try {
    return new URL(url).pathname;
  } catch {
    return url.split('?')[0];
  }
}

/** One registry API request; `rawPath` is the path after /v2. */
function apiRequest(registry: Registry, access: Access, opts: AppOptions, req: Request, res: Response, exchange: Exchange, rawPath: string): void {
  const metrics = opts.metrics;
  res.setHeader('Docker-Distribution-API-Version', 'registry/2.0');
  const head = req.method === 'HEAD';
  let route: Route | null;
  try {
    route = parseRoute(rawPath);
  } catch (err) {
    return sendError(res, toErrorBody(err), head);
  }
  if (!route) return sendError(res, { status: 404, code: 'NAME_UNKNOWN', message: 'no such endpoint' }, head);
  exchange.route = route.kind;
  if (metrics && (route.kind === 'upload' || route.kind === 'uploads') && ['PATCH', 'PUT', 'POST'].includes(req.method ?? '')) {
    metrics.uploadsInProgress.inc();
    res.once('close', () => metrics.uploadsInProgress.dec());
  }
  // Made only when a handler asks (uploads): an AbortController costs as much as a small request's storage read.
  let abort: AbortController | undefined;
  let gone = false;
  res.on('close', () => {
    gone = !res.writableFinished;
    if (gone) abort?.abort(new Error('client disconnected'));
  });
  const signal = () => {
    if (!abort) {
      abort = new AbortController();
      if (gone) abort.abort(new Error('client disconnected'));
    }
    return abort.signal;
  };
  const found = route;
  (async () => {
    const principal = await access.authenticate(req, exchange.id);
    const ns = access.namespaceOf(principal);
    recordPrincipal(exchange, principal, ns);
    access.authorize(principal, found, req.method ?? '');
    const search = (req.url ?? '').indexOf('?');
    const call: Call = {
      req,
      res,
      ns,
      get signal() {
        return signal();
      },
      // As Express's default ("simple") query parser gives it: a string, or an array for a repeated key.
      query: search < 0 ? {} : parseQuery(req.url!.slice(search + 1)),
      canPull: (name) => access.can(principal, 'pull', name),
      metrics,
      log: opts.log,
      requestId: exchange.id,
    };
    const routed = opts.mirror ? await opts.mirror(registry, found, call) : found;
    if (routed) await dispatch(registry, routed, call);
  })().catch((err) => {
    if (err instanceof AuthFailure) return access.sendFailure(req, res, err, head);
    const body = toErrorBody(err);
    if (err instanceof DigestMismatch) {
      const where = { req: exchange.id, path: (req.url ?? '').split('?')[0], expected: err.expected, actual: err.actual };
      opts.log.error(where, 'stored bytes do not match their digest; not served (run berth fsck)');
    } else if (body.status >= 500) opts.log.error({ req: exchange.id, err }, 'request failed');
    else opts.log.debug({ req: exchange.id, code: body.code, msg: body.message }, 'request refused');
    sendError(res, body, head);
  });
}

async function timedCommit<T>(c: Call, commit: () => Promise<T>): Promise<T> {
  const end = c.metrics?.commitSeconds.startTimer();
  try {
    return await commit();
  } finally {
    end?.();
  }
}

const notAllowed = () => new RegistryError('UNSUPPORTED', 'method not allowed on this endpoint');

async function dispatch(registry: Registry, route: Route, c: Call): Promise<void> {
  const method = c.req.method;
  switch (route.kind) {
    case 'base':
      if (method !== 'GET' && method !== 'HEAD') throw notAllowed();
      return sendJson(c, 200, {});
    case 'catalog': {
      if (method !== 'GET') throw notAllowed();
      const page = pagination(c);
      const { repositories, more } = await registry.catalog(c.ns, page);
      if (more) c.res.setHeader('Link', nextLink('/v2/_catalog', page.n!, repositories[repositories.length - 1]));
      return sendJson(c, 200, { repositories });
    }
    case 'blob':
      if (method === 'GET' || method === 'HEAD') return getBlob(registry, c, route.name, route.digest);
      if (method === 'DELETE') {
        await registry.blobs.unlink(c.ns, route.name, route.digest);
        return empty(c, 202);
      }
      throw notAllowed();
    case 'uploads':
      if (method !== 'POST') throw notAllowed();
      return startUpload(registry, c, route.name);
    case 'upload':
      return upload(registry, c, route.name, route.id);
    case 'manifest':
      return manifest(registry, c, route.name, route.reference);
    case 'tags': {
      if (method !== 'GET') throw notAllowed();
      const page = pagination(c);
      const { tags, more } = await registry.manifests.tags(c.ns, route.name, page);
      if (more) c.res.setHeader('Link', nextLink(`/v2/${route.name}/tags/list`, page.n!, tags[tags.length - 1]));
      return sendJson(c, 200, { name: route.name, tags });
    }
    case 'referrers':
      return referrers(registry, c, route.name, route.digest);
  }
}

async function getBlob(registry: Registry, c: Call, name: string, digest: string): Promise<void> {
  const { res } = c;
  const info = await registry.blobs.stat(c.ns, name, digest);
  res.setHeader('Docker-Content-Digest', digest);
  res.setHeader('ETag', `"${digest}"`);
  res.setHeader('Accept-Ranges', 'bytes');
  res.setHeader('Content-Type', 'application/octet-stream');
  const range = byteRange(c.req.headers.range, info.size);
  if (range === 'unsatisfiable') {
    res.setHeader('Content-Range', `bytes */${info.size}`);
    throw new RegistryError('RANGE_INVALID', 'requested range not satisfiable', { size: info.size });
  }
  if (range) {
    res.statusCode = 206;
    res.setHeader('Content-Range', `bytes ${range.start}-${range.end}/${info.size}`);
    res.setHeader('Content-Length', range.end - range.start + 1);
  } else {
    res.statusCode = 200;
    res.setHeader('Content-Length', info.size);
  }
  if (c.req.method === 'HEAD') return void res.end();
  const location = await registry.blobs.redirect(c.ns, digest);
  if (location) {
    // Clients follow this to the backend (a Swift temp URL): the bytes do not pass through Berth.
    res.removeHeader('Content-Length');
    res.removeHeader('Content-Range');
    res.statusCode = 307;
    res.setHeader('Location', location);
    return void res.end();
  }
  const { body } = await registry.blobs.read(c.ns, digest, range);
  try {
    await pipeline(body, res);
  } catch (err) {
    if (err instanceof DigestMismatch) {
      c.log.error({ req: c.requestId, blob: digest, ns: c.ns, actual: err.actual }, 'stored blob does not match its digest; response aborted (run berth fsck)');
    } else if ((err as NodeJS.ErrnoException).code !== 'ERR_STREAM_PREMATURE_CLOSE') {
      // Not the client going away (the response closing first): storage failed mid-stream.
      c.log.error({ req: c.requestId, blob: digest, ns: c.ns, err }, 'blob read failed mid-stream; response aborted');
    }
    // The client went away, storage failed, or the bytes were wrong: the response is cut short, never completed.
    res.destroy();
  }
}

async function startUpload(registry: Registry, c: Call, name: string): Promise<void> {
  const mount = queryValue(c.query, 'mount');
  const from = queryValue(c.query, 'from');
  const digest = queryValue(c.query, 'digest');
  if (mount !== undefined) {
    checkDigest(mount);
    // A mount from a repository that cannot exist is just a miss: the client falls back to an upload.
    const source = from !== undefined && validName(from) && c.canPull(from) ? from : from === undefined ? undefined : null;
    if (source !== null && (await registry.blobs.mount(c.ns, name, mount, source))) return blobCreated(c, name, mount);
  }
  const { id } = await registry.uploads.start(c.ns, name);
  if (digest !== undefined) {
    checkDigest(digest);
    try {
      await timedCommit(c, () =>
        registry.uploads.commit(c.ns, name, id, digest, c.req, { length: contentLength(c.req.headers['content-length']), signal: c.signal }),
      );
    } catch (err) {
      await registry.uploads.abandon(c.ns, name, id).catch(() => {});
      throw err;
    }
    return blobCreated(c, name, digest);
  }
  c.res.setHeader('Location', uploadLocation(name, id));
  c.res.setHeader('Range', '0-0');
  c.res.setHeader('Docker-Upload-UUID', id);
  return empty(c, 202);
}

async function upload(registry: Registry, c: Call, name: string, id: string): Promise<void> {
  const { req } = c;
  switch (req.method) {
    case 'GET': {
      const { size } = await registry.uploads.status(c.ns, name, id);
      return uploadAccepted(c, name, id, size, 204);
    }
    case 'PATCH': {
      const opts = chunkOptions(c);
      const { size } = await registry.uploads.append(c.ns, name, id, req, opts);
      return uploadAccepted(c, name, id, size, 202);
    }
    case 'PUT': {
      const digest = queryValue(c.query, 'digest');
      if (digest === undefined) throw new RegistryError('DIGEST_INVALID', 'the digest query parameter is required');
      checkDigest(digest);
      const opts = chunkOptions(c);
      const hasBody = (opts.length ?? 0) > 0 || (opts.length === undefined && req.headers['transfer-encoding'] !== undefined);
      await timedCommit(c, () => registry.uploads.commit(c.ns, name, id, digest, hasBody ? req : undefined, opts));
      return blobCreated(c, name, digest);
    }
    case 'DELETE':
      await registry.uploads.cancel(c.ns, name, id);
      return empty(c, 204);
    default:
      throw notAllowed();
  }
}

/** Offset and length a chunk declares through Content-Range and Content-Length (which must agree). */
function chunkOptions(c: Call): { offset?: number; length?: number; signal: AbortSignal } {
  const length = contentLength(c.req.headers['content-length']);
  const range = chunkRange(c.req.headers['content-range']);
  if (range && length !== undefined && range.length !== length) {
    throw new RegistryError('SIZE_INVALID', 'Content-Range and Content-Length disagree', { range: c.req.headers['content-range'], length });
  }
  return { offset: range?.offset, length: length ?? range?.length, signal: c.signal };
}

function pagination(c: Call): { n?: number; last?: string } {
  const nText = queryValue(c.query, 'n');
  let n: number | undefined;
  if (nText !== undefined) {
    if (!/^[0-9]{1,6}$/.test(nText)) throw new RegistryError('PAGINATION_NUMBER_INVALID', 'n must be a non-negative integer', { n: nText });
    n = Number(nText);
  }
  return { n, last: queryValue(c.query, 'last') };
}

function nextLink(path: string, n: number, last: string | undefined): string {
  return `<${path}?n=${n}&last=${encodeURIComponent(last ?? '')}>; rel="next"`;
}

const uploadLocation = (name: string, id: string) => `/v2/${name}/blobs/uploads/${id}`;

function uploadAccepted(c: Call, name: string, id: string, size: number, status: number): void {
  c.res.setHeader('Location', uploadLocation(name, id));
  c.res.setHeader('Range', uploadRange(size));
  c.res.setHeader('Docker-Upload-UUID', id);
  empty(c, status);
}

function blobCreated(c: Call, name: string, digest: string): void {
  c.res.setHeader('Location', `/v2/${name}/blobs/${digest}`);
  c.res.setHeader('Docker-Content-Digest', digest);
  empty(c, 201);
}

function empty(c: Call, status: number): void {
  c.res.statusCode = status;
  c.res.setHeader('Content-Length', 0);
  c.res.end();
}

function sendJson(c: Call, status: number, value: unknown, contentType = 'application/json'): void {
  const body = Buffer.from(JSON.stringify(value));
  c.res.statusCode = status;
  c.res.setHeader('Content-Type', contentType);
  c.res.setHeader('Content-Length', body.length);
  c.res.end(c.req.method === 'HEAD' ? undefined : body);
}
