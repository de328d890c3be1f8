/**
 * The pull-through cache's hook in the API: a GET or HEAD of a manifest or blob whose name maps to an upstream
 * (mirror/names.ts) is answered from local content first (a push to that name, in the caller's namespace, wins),
 * then from the cache or the upstream (mirror/mirror.ts). Everything else, pushes to mirrored names included,
 * goes on to the ordinary handlers unchanged. The caller was authorized for the name as sent (http/auth.ts), so
 * whoever may pull it in a namespace allowed to use the upstream may read the cache; nothing writes into it but
 * a fill, and local content is only ever looked up in the caller's own namespace.
 */
import { clientAddressOf } from './client-address.js';
import { pipeline } from 'node:stream/promises';
import type { Mirror } from '../mirror/mirror.js';
import { RegistryError } from '../registry/errors.js';
import type { Registry } from '../registry/registry.js';
import { DigestMismatch } from '../registry/verify.js';
import type { Call } from './app.js';
import { byteRange } from './headers.js';
import { queryValue, type Route } from './routes.js';

/** Answers the request and returns null, or returns the route the ordinary handlers should serve. */
export type MirrorHook = (registry: Registry, route: Route, c: Call) => Promise<Route | null>;

const MISSING = new Set(['MANIFEST_UNKNOWN', 'BLOB_UNKNOWN', 'NAME_UNKNOWN']);

export function mirrorHook(mirror: Mirror): MirrorHook {
  return async (registry, route, c) => {
    const method = c.req.method;
    if ((method !== 'GET' && method !== 'HEAD') || (route.kind !== 'manifest' && route.kind !== 'blob')) return route;
    const target = mirror.names.map(c.ns, route.name, queryValue(c.query, 'ns'));
    if (!target) return route;
    // The cache's copy of a blob is looked up beside local content (one Swift round trip less on every miss); it is
    // used only if no local copy is found.
    const cached = route.kind === 'blob' ? mirror.cachedBlobSize(target.mirror.registry, route.digest) : undefined;
    cached?.catch(() => {});
    // Local content wins: the name as sent, and for docker.io the same repository with or without its prefix.
    for (const name of target.local) {
      const found = route.kind === 'manifest' ? registry.manifests.stat(c.ns, name, route.reference) : registry.blobs.stat(c.ns, name, route.digest);
      if (await found.then(() => true, missing)) {
        mirror.servedLocally(target.mirror.registry, route.kind);
        return { ...route, name };
      }
    }
    const head = method === 'HEAD';
    if (route.kind === 'manifest') {
      const m = await mirror.manifest(target.mirror, target.upstreamName, route.reference);
      c.res.statusCode = 200;
      c.res.setHeader('Content-Type', m.mediaType);
      c.res.setHeader('Content-Length', m.size);
      c.res.setHeader('Docker-Content-Digest', m.digest);
      c.res.setHeader('ETag', `"${m.digest}"`);
      c.res.end(head ? undefined : m.body);
      return null;
    }
    const blob = await mirror.blob(target.mirror, target.upstreamName, route.digest, {
      head,
      cachedSize: cached,
      client: clientAddressOf(c.req),
      range: (size) => byteRange(c.req.headers.range, size),
    }).catch((err: unknown) => {
      if (err instanceof RegistryError && err.code === 'RANGE_INVALID') c.res.setHeader('Content-Range', `bytes */${(err.detail as { size: number }).size}`);
      throw err;
    });
    const { res } = c;
    res.statusCode = 200;
    res.setHeader('Docker-Content-Digest', route.digest);
    res.setHeader('ETag', `"${route.digest}"`);
    res.setHeader('Content-Type', 'application/octet-stream');
    if (blob.location) {
      // Clients follow this to the backend (a Swift temp URL), as for a pushed blob.
      res.statusCode = 307;
      res.setHeader('Location', blob.location);
      res.end();
      return null;
    }
    if (blob.range && blob.size !== undefined) {
      res.statusCode = 206;
      res.setHeader('Content-Range', `bytes ${blob.range.start}-${blob.range.end}/${blob.size}`);
      res.setHeader('Content-Length', blob.range.end - blob.range.start + 1);
    } else if (blob.size !== undefined) res.setHeader('Content-Length', blob.size);
    if (blob.size !== undefined && blob.range === undefined) res.setHeader('Accept-Ranges', 'bytes');
    if (!blob.body) {
      res.end();
      return null;
    }
    try {
      await pipeline(blob.body, res);
    } catch (err) {
      if (err instanceof DigestMismatch) {
        c.log.error({ req: c.requestId, registry: target.mirror.registry, blob: route.digest, actual: err.actual }, 'mirrored blob does not match its digest; response cut');
      }
      // Wrong bytes, an upstream failure, or the client gone: the response is cut short, never completed.
      res.destroy();
    }
    return null;
  };
}

function missing(err: unknown): false {
  if (err instanceof RegistryError && MISSING.has(err.code)) return false;
  throw err;
}
