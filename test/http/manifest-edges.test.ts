/** Manifest PUT's bounds (issue 16) and the protocol's edges (issue 19): on every backend. */
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_DESCRIPTORS, MAX_TAG_PARAMETERS } from '../../src/registry/manifests.js';
import { pushBlob, pushImage, sha256, type TestServer } from '../helpers/server.js';
import { BACKENDS, startServerOn } from '../helpers/swift.js';

let s: TestServer;

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const CONFIG = 'application/vnd.oci.image.config.v1+json';
const LAYER = 'application/vnd.oci.image.layer.v1.tar';
const sha512 = (data: Buffer | string) => `sha512:${createHash('sha512').update(data).digest('hex')}`;
const errorCode = async (res: Response) => ((await res.json()) as { errors: { code: string }[] }).errors[0].code;

/** Every object the server has stored, with its size: to show that a refused request wrote nothing. */
async function storedObjects(): Promise<string[]> {
  const all: string[] = [];
  for await (const o of s.registry.driver.list('_local')) all.push(`${o.path} ${o.size}`);
  return all.sort();
}

/** A PUT through node:http, whose raw headers show each OCI-Tag line on its own (fetch joins them). */
function put(path: string, body: Buffer | string, contentType = OCI_MANIFEST): Promise<{ status: number; code?: string; headers: Record<string, string[]> }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${s.url}${path}`, { method: 'PUT', headers: { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(body) } }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => {
        const headers: Record<string, string[]> = {};
        for (let i = 0; i < res.rawHeaders.length; i += 2) (headers[res.rawHeaders[i].toLowerCase()] ??= []).push(res.rawHeaders[i + 1]);
        const code = text ? (JSON.parse(text) as { errors?: { code: string }[] }).errors?.[0].code : undefined;
        resolve({ status: res.statusCode!, code, headers });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

const image = (config: { digest: string; size: number }, layers: { digest: string; size: number }[], note = 'x') => ({
  schemaVersion: 2,
  mediaType: OCI_MANIFEST,
  config: { mediaType: CONFIG, ...config },
  layers: layers.map((l) => ({ mediaType: LAYER, ...l })),
  annotations: { note },
});
const randomDigest = () => `sha256:${randomBytes(32).toString('hex')}`;

describe.each(BACKENDS)('manifest edges on %s', (backend) => {
  beforeAll(async () => {
    s = await startServerOn(backend);
  });
  afterAll(async () => s.close());

  it(`a manifest over ${MAX_DESCRIPTORS} descriptors, or naming blobs never pushed, is refused before any write: no touched marker, no revision`, async () => {
    const configBytes = Buffer.from('{"architecture":"amd64","os":"linux"}');
    const config = { digest: await pushBlob(s.url, 'bounded/app', configBytes), size: configBytes.length };
    const before = await storedObjects();
    const refused: [string, unknown, string, string][] = [
      ['10,000 random layers', image(config, Array.from({ length: 10_000 }, () => ({ digest: randomDigest(), size: 1 }))), OCI_MANIFEST, 'MANIFEST_INVALID'],
      ['config + cap layers', image(config, Array.from({ length: MAX_DESCRIPTORS }, () => ({ digest: config.digest, size: config.size }))), OCI_MANIFEST, 'MANIFEST_INVALID'],
      ['cap - 1 unknown layers', image(config, Array.from({ length: MAX_DESCRIPTORS - 1 }, () => ({ digest: randomDigest(), size: 1 }))), OCI_MANIFEST, 'MANIFEST_BLOB_UNKNOWN'],
      ['a known blob at the wrong size', image(config, [{ digest: config.digest, size: config.size + 1 }]), OCI_MANIFEST, 'MANIFEST_BLOB_UNKNOWN'],
      [
        'an index over the cap',
        { schemaVersion: 2, mediaType: OCI_INDEX, manifests: Array.from({ length: MAX_DESCRIPTORS + 1 }, () => ({ mediaType: OCI_MANIFEST, digest: randomDigest(), size: 1 })) },
        OCI_INDEX,
        'MANIFEST_INVALID',
      ],
      [
        'an index of unknown manifests',
        { schemaVersion: 2, mediaType: OCI_INDEX, manifests: Array.from({ length: 50 }, () => ({ mediaType: OCI_MANIFEST, digest: randomDigest(), size: 1 })) },
        OCI_INDEX,
        'MANIFEST_BLOB_UNKNOWN',
      ],
    ];
    for (const [what, doc, type, code] of refused) {
      const res = await put('/v2/bounded/app/manifests/latest', JSON.stringify(doc), type);
      expect(res.status, what).toBe(400);
      expect(res.code, what).toBe(code);
    }
    expect(await storedObjects()).toEqual(before);
    // At the cap exactly (the config and 999 layers, here all one blob) a manifest is accepted.
    const atCap = image(config, Array.from({ length: MAX_DESCRIPTORS - 1 }, () => config));
    const ok = await put('/v2/bounded/app/manifests/latest', JSON.stringify(atCap));
    expect(ok.status).toBe(201);
    expect(ok.headers['docker-content-digest']).toEqual([sha256(JSON.stringify(atCap))]);
  });

  it('GET and HEAD of a reference that is neither a valid tag nor a verifiable digest get 404 MANIFEST_UNKNOWN; PUT and DELETE get 400', async () => {
    const { manifest } = await pushImage(s.url, 'refs/invalid', 'good', [randomBytes(10)]);
    const before = await storedObjects();
    const cases = [
      ['.INVALID_MANIFEST_NAME', 'MANIFEST_INVALID'],
      ['sha256:xyz', 'DIGEST_INVALID'],
      [`sha384:${'a'.repeat(96)}`, 'DIGEST_INVALID'],
      ['sha512:abc', 'DIGEST_INVALID'],
      [`SHA256:${'a'.repeat(64)}`, 'DIGEST_INVALID'],
    ];
    for (const [ref, putCode] of cases) {
      const get = await fetch(`${s.url}/v2/refs/invalid/manifests/${ref}`);
      expect(get.status, ref).toBe(404);
      expect(await errorCode(get), ref).toBe('MANIFEST_UNKNOWN');
      expect((await fetch(`${s.url}/v2/refs/invalid/manifests/${ref}`, { method: 'HEAD' })).status, `HEAD ${ref}`).toBe(404);
      const res = await put(`/v2/refs/invalid/manifests/${ref}`, JSON.stringify(manifest));
      expect(res.status, `PUT ${ref}`).toBe(400);
      expect(res.code, `PUT ${ref}`).toBe(putCode);
      const del = await fetch(`${s.url}/v2/refs/invalid/manifests/${ref}`, { method: 'DELETE' });
      expect(del.status, `DELETE ${ref}`).toBe(400);
      expect(await errorCode(del), `DELETE ${ref}`).toBe(putCode);
    }
    expect(await storedObjects()).toEqual(before);
  });

  it('PUT by digest with ?tag=a&tag=b stores by digest, points both tags, and answers one OCI-Tag header per tag', async () => {
    const { manifest } = await pushImage(s.url, 'tagparams/app', 'seed', [randomBytes(10)]);
    const doc = { ...manifest, annotations: { n: 'two tags' } };
    const body = JSON.stringify(doc);
    const digest = sha256(body);
    const res = await put(`/v2/tagparams/app/manifests/${digest}?tag=a&tag=b&tag=a`, body);
    expect(res.status).toBe(201);
    expect(res.headers['oci-tag']).toEqual(['a', 'b']);
    expect(res.headers['docker-content-digest']).toEqual([digest]);
    expect(res.headers['location']).toEqual([`/v2/tagparams/app/manifests/${digest}`]);
    for (const ref of ['a', 'b', digest]) {
      const got = await fetch(`${s.url}/v2/tagparams/app/manifests/${ref}`);
      expect(got.status, ref).toBe(200);
      expect(got.headers.get('docker-content-digest'), ref).toBe(digest);
      expect(await got.text(), ref).toBe(body);
    }
    // Without tag parameters a push by digest sets no tag and answers no OCI-Tag.
    const plain = JSON.stringify({ ...manifest, annotations: { n: 'untagged' } });
    const untagged = await put(`/v2/tagparams/app/manifests/${sha256(plain)}`, plain);
    expect(untagged.status).toBe(201);
    expect(untagged.headers['oci-tag']).toBeUndefined();
    expect(await (await fetch(`${s.url}/v2/tagparams/app/tags/list`)).json()).toEqual({ name: 'tagparams/app', tags: ['a', 'b', 'seed'] });
  });

  it(`tag parameters are all or none: one invalid tag, more than ${MAX_TAG_PARAMETERS}, or a tag reference store nothing (400)`, async () => {
    const { manifest } = await pushImage(s.url, 'tagparams/strict', 'seed', [randomBytes(10)]);
    const body = JSON.stringify({ ...manifest, annotations: { n: 'refused' } });
    const digest = sha256(body);
    const before = await storedObjects();
    const many = (n: number) => Array.from({ length: n }, (_, i) => `tag=t${i}`).join('&');
    const refused = [
      `${digest}?tag=ok&tag=-bad`,
      `${digest}?tag=ok&tag=`,
      `${digest}?tag=ok&tag=${'a'.repeat(129)}`,
      `${digest}?${many(MAX_TAG_PARAMETERS + 1)}`,
      'v2?tag=other',
    ];
    for (const path of refused) {
      const res = await put(`/v2/tagparams/strict/manifests/${path}`, body);
      expect(res.status, path.slice(0, 100)).toBe(400);
      expect(res.code, path.slice(0, 100)).toBe('MANIFEST_INVALID');
    }
    expect(await storedObjects()).toEqual(before);
    expect((await fetch(`${s.url}/v2/tagparams/strict/manifests/ok`)).status).toBe(404);
    // The cap itself is accepted.
    const res = await put(`/v2/tagparams/strict/manifests/${digest}?${many(MAX_TAG_PARAMETERS)}`, body);
    expect(res.status).toBe(201);
    expect(res.headers['oci-tag']).toHaveLength(MAX_TAG_PARAMETERS);
    expect(((await (await fetch(`${s.url}/v2/tagparams/strict/tags/list`)).json()) as { tags: string[] }).tags).toHaveLength(MAX_TAG_PARAMETERS + 1);
  });

  it('a sha512 manifest is stored, tagged and served under its sha512 digest, with and without tag parameters', async () => {
    const { manifest } = await pushImage(s.url, 'sha512/app', 'seed', [randomBytes(10)]);
    for (const [note, query, tags] of [
      ['plain', '', undefined],
      ['tagged', '?tag=s1&tag=s2', ['s1', 's2']],
    ] as const) {
      const body = JSON.stringify({ ...manifest, annotations: { note } });
      const digest = sha512(body);
      const res = await put(`/v2/sha512/app/manifests/${digest}${query}`, body);
      expect(res.status, note).toBe(201);
      expect(res.headers['docker-content-digest'], note).toEqual([digest]);
      expect(res.headers['location'], note).toEqual([`/v2/sha512/app/manifests/${digest}`]);
      expect(res.headers['oci-tag'], note).toEqual(tags);
      for (const ref of [digest, ...(tags ?? [])]) {
        const got = await fetch(`${s.url}/v2/sha512/app/manifests/${ref}`);
        expect(got.status, ref).toBe(200);
        expect(got.headers.get('docker-content-digest'), ref).toBe(digest);
        expect(await got.text(), ref).toBe(body);
        const head = await fetch(`${s.url}/v2/sha512/app/manifests/${ref}`, { method: 'HEAD' });
        expect(head.headers.get('docker-content-digest'), ref).toBe(digest);
        expect(head.headers.get('content-length'), ref).toBe(String(Buffer.byteLength(body)));
      }
      // The sha256 of the same bytes names nothing: the manifest is stored under the digest it was pushed by.
      expect((await fetch(`${s.url}/v2/sha512/app/manifests/${sha256(body)}`)).status, note).toBe(404);
    }
  });
});
