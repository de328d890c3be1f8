/** The manifest endpoint (GET, HEAD, PUT and DELETE /v2/<name>/manifests/<reference>) and the referrers list. */
import { once } from 'node:events';
import { RegistryError } from '../registry/errors.js';
import { JsonDepthScan } from '../registry/json-scan.js';
import { MAX_JSON_DEPTH, MAX_MANIFEST_SIZE, MAX_TAG_PARAMETERS, MEDIA_TYPES, nestedTooDeep } from '../registry/manifests.js';
import type { Registry } from '../registry/registry.js';
import type { Call } from './app.js';
import { contentLength } from './headers.js';
import { queryValue, queryValues } from './routes.js';

export async function manifest(registry: Registry, c: Call, name: string, reference: string): Promise<void> {
  const { req, res } = c;
  switch (req.method) {
    case 'GET':
    case 'HEAD': {
      const m = req.method === 'HEAD' ? await registry.manifests.stat(c.ns, name, reference) : await registry.manifests.get(c.ns, name, reference);
      res.statusCode = 200;
      res.setHeader('Content-Type', m.mediaType);
      res.setHeader('Content-Length', m.size);
      res.setHeader('Docker-Content-Digest', m.digest);
      res.setHeader('ETag', `"${m.digest}"`);
      return void res.end('body' in m ? m.body : undefined);
    }
    case 'PUT': {
      // Counted before the body is read: a request carrying too many is refused without reading a byte of it.
      const tags = queryValues(c.query, 'tag');
      if (tags.length > MAX_TAG_PARAMETERS) {
        throw new RegistryError('MANIFEST_INVALID', `at most ${MAX_TAG_PARAMETERS} tag parameters per request`, { tags: tags.length, limit: MAX_TAG_PARAMETERS });
      }
      const body = await readManifestBody(c, MAX_MANIFEST_SIZE);
      const m = await registry.manifests.put(c.ns, name, reference, body, { contentType: req.headers['content-type'], tags });
      res.setHeader('Location', `/v2/${name}/manifests/${m.digest}`);
      res.setHeader('Docker-Content-Digest', m.digest);
      if (m.subject) res.setHeader('OCI-Subject', m.subject);
      // One header per tag applied (distribution-spec's tag parameters); a client that sees none pushes by tag.
      if (reference.includes(':') && m.tags.length > 0) res.setHeader('OCI-Tag', m.tags);
      return empty(c, 201);
    }
    case 'DELETE':
      await registry.manifests.delete(c.ns, name, reference);
      return empty(c, 202);
    default:
      throw new RegistryError('UNSUPPORTED', 'method not allowed on this endpoint');
  }
}

/**
 * GET /v2/<name>/referrers/<digest>: an image index of the referrers, one page at a time (the registry's page
 * bounds are in registry/manifests.ts), with the spec's `Link: <...>; rel="next"` while more remain. The JSON is
 * written as the entries are read, one at a time and at the client's pace: a response holds one entry in memory.
 */
export async function referrers(registry: Registry, c: Call, name: string, subject: string): Promise<void> {
  const { req, res } = c;
  if (req.method !== 'GET') throw new RegistryError('UNSUPPORTED', 'method not allowed on this endpoint');
  const artifactType = queryValue(c.query, 'artifactType');
  const last = queryValue(c.query, 'last');
  const page = await registry.manifests.referrersPage(c.ns, name, subject, { artifactType, last });
  // The first entry before the status: a storage failure there still gets an error response.
  const entries = page.entries[Symbol.asyncIterator]();
  let entry = await entries.next();
  res.statusCode = 200;
  res.setHeader('Content-Type', MEDIA_TYPES.ociIndex);
  if (artifactType !== undefined) res.setHeader('OCI-Filters-Applied', 'artifactType');
  if (page.next !== undefined) {
    const query = new URLSearchParams(artifactType === undefined ? { last: page.next } : { artifactType, last: page.next });
    res.setHeader('Link', `</v2/${name}/referrers/${subject}?${query}>; rel="next"`);
  }
  try {
    let text = `{"schemaVersion":2,"mediaType":"${MEDIA_TYPES.ociIndex}","manifests":[`;
    for (let first = true; !entry.done; first = false, entry = await entries.next()) {
      text += (first ? '' : ',') + JSON.stringify(entry.value);
      if (!res.write(text)) await once(res, 'drain', { signal: c.signal });
      text = '';
    }
    res.end(`${text}]}`);
  } catch (err) {
    // Part of the list is sent: the response can only be cut short, so the client sees it incomplete.
    if (!c.signal.aborted) c.log.warn({ req: c.requestId, err }, 'referrers response cut short');
    res.destroy();
  }
}

/**
 * Read a manifest body whole, refusing anything over `limit` (413) and JSON nested past MAX_JSON_DEPTH (400) at the
 * piece where it happens, without reading the rest: a hostile body costs the server one piece, not megabytes. The
 * rest of such a body is never read, so the response closes the connection rather than leave it unusable.
 */
async function readManifestBody(c: Call, limit: number): Promise<Buffer> {
  const tooLarge = () => new RegistryError('PAYLOAD_TOO_LARGE', 'manifest is larger than the registry accepts', { limit });
  if ((contentLength(c.req.headers['content-length']) ?? 0) > limit) throw tooLarge();
  const scan = new JsonDepthScan(MAX_JSON_DEPTH);
  const pieces: Buffer[] = [];
  let size = 0;
  for await (const piece of c.req as AsyncIterable<Buffer>) {
    size += piece.length;
    if (size > limit) throw tooLarge();
    if (!scan.feed(piece)) {
      c.res.setHeader('Connection', 'close');
      throw nestedTooDeep();
    }
    pieces.push(piece);
  }
  return Buffer.concat(pieces);
}

function empty(c: Call, status: number): void {
  c.res.statusCode = status;
  c.res.setHeader('Content-Length', 0);
  c.res.end();
}
