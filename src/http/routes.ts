/**
 * Parse a /v2 request path into an endpoint. Repository names contain '/', so routes are matched from the end;
 * each raw segment is percent-decoded on its own, and a decoded segment that contains '/' is refused rather than
 * allowed to change the path's shape.
 */
import { RegistryError } from '../registry/errors.js';
import { checkName } from '../registry/paths.js';

export type Route =
  | { kind: 'base' }
  | { kind: 'catalog' }
  | { kind: 'blob'; name: string; digest: string }
  | { kind: 'uploads'; name: string }
  | { kind: 'upload'; name: string; id: string }
  | { kind: 'manifest'; name: string; reference: string }
  | { kind: 'tags'; name: string }
  | { kind: 'referrers'; name: string; digest: string };

/** `rawPath` is the part after "/v2", still percent-encoded, without the query. Null: no such endpoint. */
export function parseRoute(rawPath: string): Route | null {
  if (rawPath === '' || rawPath === '/') return { kind: 'base' };
  if (!rawPath.startsWith('/')) return null;
  let segments: string[];
  try {
    segments = rawPath.slice(1).split('/').map(decodeURIComponent);
  } catch {
    return null;
  }
  if (segments.some((s) => s.includes('/'))) return null;
  if (segments.length === 1 && segments[0] === '_catalog') return { kind: 'catalog' };

  const n = segments.length;
  const at = (i: number) => segments[n - i];
  const name = (drop: number) => {
    if (n - drop < 1) return null;
    return checkName(segments.slice(0, n - drop).join('/'));
  };
  let route: Route | null = null;
  if (n >= 3 && at(3) === 'blobs' && at(2) === 'uploads' && at(1) === '') route = withName(name(3), (nm) => ({ kind: 'uploads', name: nm }));
  else if (n >= 2 && at(2) === 'blobs' && at(1) === 'uploads') route = withName(name(2), (nm) => ({ kind: 'uploads', name: nm }));
  else if (n >= 4 && at(3) === 'blobs' && at(2) === 'uploads') route = withName(name(3), (nm) => ({ kind: 'upload', name: nm, id: at(1) }));
  else if (n >= 3 && at(2) === 'blobs') route = withName(name(2), (nm) => ({ kind: 'blob', name: nm, digest: at(1) }));
  else if (n >= 3 && at(2) === 'manifests') route = withName(name(2), (nm) => ({ kind: 'manifest', name: nm, reference: at(1) }));
  else if (n >= 3 && at(2) === 'tags' && at(1) === 'list') route = withName(name(2), (nm) => ({ kind: 'tags', name: nm }));
  else if (n >= 3 && at(2) === 'referrers') route = withName(name(2), (nm) => ({ kind: 'referrers', name: nm, digest: at(1) }));
  return route;
}

function withName(name: string | null, make: (name: string) => Route): Route | null {
  return name === null ? null : make(name);
}

/** The one query value of `key`, refusing repeats (which Express would hand over as an array). */
export function queryValue(query: Record<string, unknown>, key: string): string | undefined {
  const v = query[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new RegistryError('UNSUPPORTED', `query parameter ${key} given more than once`);
  return v;
}

/** Every value of a query parameter that may be repeated by design (?tag=a&tag=b), in order. */
export function queryValues(query: Record<string, unknown>, key: string): string[] {
  const v = query[key];
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).map(String);
}
