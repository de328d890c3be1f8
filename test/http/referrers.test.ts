/**
 * The referrers list in pages of bounded size (entries and bytes) with the spec's Link header, and the bounds on
 * what a manifest PUT may bring into it: annotations, artifactType, nesting depth.
 */
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_ANNOTATIONS_BYTES, MAX_JSON_DEPTH, REFERRERS_PAGE_BYTES, REFERRERS_PAGE_ENTRIES } from '../../src/registry/manifests.js';
import { DEFAULT_NAMESPACE, paths } from '../../src/registry/paths.js';
import { pushBlob, pushImage, sha256, startServer, type TestServer } from '../helpers/server.js';
import { startServerOn } from '../helpers/swift.js';

let s: TestServer;
let emptyDigest: string;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';


const errorOf = async (res: Response) => ((await res.json()) as { errors: { code: string; message: string; detail?: { limit?: number } }[] }).errors[0];

async function subjectIn(repo: string) {
  emptyDigest = await pushBlob(s.url, repo, Buffer.from('{}'));
  return pushImage(s.url, repo, 'v1', [Buffer.from(`layer of ${repo}`)]);
}

function artifact(subject: { digest: string; body: Buffer }, type: string, annotations?: Record<string, string>) {
  return {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: type,
    config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: emptyDigest, size: 2 },
    layers: [],
    subject: { mediaType: OCI_MANIFEST, digest: subject.digest, size: subject.body.length },
    ...(annotations ? { annotations } : {}),
  };
}

async function put(repo: string, doc: unknown): Promise<Response> {
  const body = typeof doc === 'string' ? doc : JSON.stringify(doc);
  return fetch(`${s.url}/v2/${repo}/manifests/${sha256(body)}`, { method: 'PUT', headers: { 'Content-Type': OCI_MANIFEST }, body });
}

/** Every page from `path` on, following Link headers. */
async function allPages(path: string) {
  const pages: { digests: string[]; bytes: number; link: string | null; filters: string | null }[] = [];
  for (let next: string | null = path; next; ) {
    const res: Response = await fetch(`${s.url}${next}`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe(OCI_INDEX);
    const text = await res.text();
    const doc = JSON.parse(text) as { schemaVersion: number; mediaType: string; manifests: { digest: string }[] };
    expect([doc.schemaVersion, doc.mediaType]).toEqual([2, OCI_INDEX]);
    const link: string | null = res.headers.get('link');
    pages.push({ digests: doc.manifests.map((m) => m.digest), bytes: Buffer.byteLength(text), link, filters: res.headers.get('oci-filters-applied') });
    next = link === null ? null : /^<([^>]+)>; rel="next"$/.exec(link)![1];
  }
  return pages;
}

// Paging is the core's, over the driver's ordered listing (which the driver suite pins on every backend); Swift,
// at about a second per manifest PUT on a loaded machine, would need minutes here. manifests.test.ts lists
// referrers on Swift too.
describe.each(['memory', 'filesystem'] as const)('referrers pages on %s', (backend) => {
  beforeAll(async () => {
    s = await startServerOn(backend);
  });
  afterAll(() => s.close());

  it(`more than ${REFERRERS_PAGE_ENTRIES} small referrers come in pages of ${REFERRERS_PAGE_ENTRIES}, linked with rel="next", each once`, async () => {
    const subject = await subjectIn('refs/many');
    const pushed: string[] = [];
    for (let i = 0; i <= REFERRERS_PAGE_ENTRIES; i++) {
      const doc = artifact(subject, i % 2 ? 'application/example.sig' : 'application/example.sbom', { n: String(i) });
      expect((await put('refs/many', doc)).status).toBe(201);
      pushed.push(sha256(JSON.stringify(doc)));
    }
    const pages = await allPages(`/v2/refs/many/referrers/${subject.digest}`);
    expect(pages.map((p) => p.digests.length)).toEqual([REFERRERS_PAGE_ENTRIES, 1]);
    expect(pages[0].link).toBe(`</v2/refs/many/referrers/${subject.digest}?last=${encodeURIComponent(pages[0].digests.at(-1)!)}>; rel="next"`);
    expect(pages.flatMap((p) => p.digests).sort()).toEqual([...pushed].sort());

    // Filtered: the filter goes into the link, each page says it was applied, and only that type comes back.
    const sigs = await allPages(`/v2/refs/many/referrers/${subject.digest}?artifactType=application/example.sig`);
    expect(sigs).toHaveLength(2);
    expect(sigs[0].link).toMatch(/\?artifactType=application%2Fexample\.sig&last=sha256%3A[0-9a-f]{64}>; rel="next"$/);
    expect(sigs.every((p) => p.filters === 'artifactType')).toBe(true);
    expect(sigs.flatMap((p) => p.digests).sort()).toEqual(pushed.filter((_, i) => i % 2).sort());
  });

  it(`referrers with large annotations come in pages of at most ${REFERRERS_PAGE_BYTES / 1024} KiB`, async () => {
    const subject = await subjectIn('refs/large');
    const pushed: string[] = [];
    for (let i = 0; i < 40; i++) {
      // Just under the bound once serialized: {"big":"xxx..."} plus the index.
      const doc = artifact(subject, 'application/example.big', { big: `${i}`.padEnd(MAX_ANNOTATIONS_BYTES - 20, 'x') });
      expect((await put('refs/large', doc)).status).toBe(201);
      pushed.push(sha256(JSON.stringify(doc)));
    }
    const pages = await allPages(`/v2/refs/large/referrers/${subject.digest}`);
    expect(pages.length).toBeGreaterThanOrEqual(3);
    for (const p of pages) expect(p.bytes).toBeLessThanOrEqual(REFERRERS_PAGE_BYTES + 100);
    expect(pages.flatMap((p) => p.digests).sort()).toEqual([...pushed].sort());
    expect(pages.at(-1)!.link).toBeNull();
  });

  it('a stored entry larger than a PUT can now make (an older Berth) is left out rather than read', async () => {
    const subject = await subjectIn('refs/legacy');
    const ok = artifact(subject, 'application/example.ok');
    expect((await put('refs/legacy', ok)).status).toBe(201);
    const old = sha256('an old, huge referrer');
    const huge = { mediaType: OCI_MANIFEST, digest: old, size: 10, annotations: { a: 'x'.repeat(1024 * 1024) } };
    await s.registry.driver.put(paths.referrer(DEFAULT_NAMESPACE, 'refs/legacy', subject.digest, old), Buffer.from(JSON.stringify(huge)));
    const pages = await allPages(`/v2/refs/legacy/referrers/${subject.digest}`);
    expect(pages.flatMap((p) => p.digests)).toEqual([sha256(JSON.stringify(ok))]);
  });

  it('a malformed last is refused; a subject with no referrers answers an empty index', async () => {
    const res = await fetch(`${s.url}/v2/refs/none/referrers/${sha256('x')}?last=nope`);
    expect(res.status).toBe(400);
    expect((await errorOf(res)).code).toBe('DIGEST_INVALID');
    const pages = await allPages(`/v2/refs/none/referrers/${sha256('x')}`);
    expect(pages).toEqual([{ digests: [], bytes: expect.any(Number), link: null, filters: null }]);
  });
});

describe('what a manifest PUT may bring into the referrers list', () => {
  beforeAll(async () => {
    s = await startServer();
  });
  afterAll(() => s.close());

  it(`annotations over ${MAX_ANNOTATIONS_BYTES} bytes of JSON are refused with 400 MANIFEST_INVALID naming the limit, with or without a subject; at the limit they are accepted`, async () => {
    const subject = await subjectIn('refs/annotations');
    const sized = (bytes: number) => ({ a: 'x'.repeat(bytes - '{"a":""}'.length) });
    const over = await put('refs/annotations', artifact(subject, 'application/example.x', sized(MAX_ANNOTATIONS_BYTES + 1)));
    expect(over.status).toBe(400);
    const e = await errorOf(over);
    expect(e.code).toBe('MANIFEST_INVALID');
    expect(e.message).toContain(String(MAX_ANNOTATIONS_BYTES));
    expect(e.detail?.limit).toBe(MAX_ANNOTATIONS_BYTES);
    const image = { ...subject.manifest, annotations: sized(MAX_ANNOTATIONS_BYTES + 1) };
    expect((await put('refs/annotations', image)).status).toBe(400);
    expect((await put('refs/annotations', artifact(subject, 'application/example.x', sized(MAX_ANNOTATIONS_BYTES)))).status).toBe(201);
  });

  it('an artifactType or a config mediaType longer than 255 characters is refused', async () => {
    const subject = await subjectIn('refs/types');
    expect((await put('refs/types', artifact(subject, `application/${'x'.repeat(250)}`))).status).toBe(400);
    const doc = artifact(subject, 'application/example.ok');
    doc.config = { ...doc.config, mediaType: `application/${'y'.repeat(250)}` };
    expect((await put('refs/types', { ...doc, artifactType: undefined })).status).toBe(400);
  });

  it(`JSON nested deeper than ${MAX_JSON_DEPTH} levels is refused with 400 MANIFEST_INVALID, before it is parsed`, async () => {
    const subject = await subjectIn('refs/deep');
    const nested = (n: number) => '['.repeat(n) + ']'.repeat(n);
    // Depth 1 is the manifest object, 2 the annotations' value... here an unknown field carries the nesting.
    const doc = (n: number) => JSON.stringify(artifact(subject, 'application/example.deep')).replace(/}$/, `,"x":${nested(n)}}`);
    expect((await put('refs/deep', doc(MAX_JSON_DEPTH - 1))).status).toBe(201);
    const deep = await put('refs/deep', doc(MAX_JSON_DEPTH));
    expect(deep.status).toBe(400);
    const e = await errorOf(deep);
    expect([e.code, e.detail?.limit]).toEqual(['MANIFEST_INVALID', MAX_JSON_DEPTH]);
    expect(e.message).toContain(`${MAX_JSON_DEPTH} levels`);
    // The core checks too, for callers other than the HTTP layer.
    await expect(s.registry.manifests.put(DEFAULT_NAMESPACE, 'refs/deep', 'direct', Buffer.from(doc(MAX_JSON_DEPTH)))).rejects.toMatchObject({ code: 'MANIFEST_INVALID', detail: { limit: MAX_JSON_DEPTH } });
  });

  it('a body of brackets is refused at its first piece, without the rest being read, and the connection is closed', async () => {
    // 256 KiB: small enough for the loopback's buffers to take it whole, so the client always reads the answer.
    const answer = await new Promise<{ status?: number; connection?: string; body: string }>((resolve, reject) => {
      const req = http.request(`${s.url}/v2/refs/deep/manifests/t`, { method: 'PUT', headers: { 'Content-Type': OCI_MANIFEST, 'Content-Length': 256 * 1024 } }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode, connection: res.headers.connection, body }));
      });
      req.on('error', reject);
      req.end(Buffer.alloc(256 * 1024, '['));
    });
    expect(answer.status).toBe(400);
    expect(answer.connection).toBe('close');
    expect(JSON.parse(answer.body).errors[0]).toMatchObject({ code: 'MANIFEST_INVALID', detail: { limit: MAX_JSON_DEPTH } });
  });
});
