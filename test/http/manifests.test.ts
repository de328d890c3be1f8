import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paths } from '../../src/registry/paths.js';
import { pushBlob, pushImage, sha256, startServer, type TestServer } from '../helpers/server.js';
import { IN_PROCESS_BACKENDS, startServerOn } from '../helpers/swift.js';

let s: TestServer;

const errorCode = async (res: Response) => ((await res.json()) as { errors: { code: string }[] }).errors[0].code;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';

function putManifest(repo: string, ref: string, doc: unknown, contentType = OCI_MANIFEST) {
  return fetch(`${s.url}/v2/${repo}/manifests/${ref}`, { method: 'PUT', headers: { 'Content-Type': contentType }, body: JSON.stringify(doc) });
}

/** Push a Docker schema-2 image (config and one layer) under `tag`; returns its manifest bytes and digest. */
async function pushDockerImage(repo: string, tag: string, architecture: string): Promise<{ body: Buffer; digest: string }> {
  const config = Buffer.from(JSON.stringify({ architecture, os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  const layer = randomBytes(100);
  const manifest = {
    schemaVersion: 2,
    mediaType: DOCKER_MANIFEST,
    config: { mediaType: 'application/vnd.docker.container.image.v1+json', digest: await pushBlob(s.url, repo, config), size: config.length },
    layers: [{ mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', digest: await pushBlob(s.url, repo, layer), size: layer.length }],
  };
  const res = await putManifest(repo, tag, manifest, DOCKER_MANIFEST);
  expect(res.status).toBe(201);
  const body = Buffer.from(JSON.stringify(manifest));
  return { body, digest: sha256(body) };
}

/** Every object the server has stored, with its size: to show that a refused request wrote nothing. */
async function storedObjects(): Promise<string[]> {
  const all: string[] = [];
  for await (const o of s.registry.driver.list('_local')) all.push(`${o.path} ${o.size}`);
  return all.sort();
}

describe.each(IN_PROCESS_BACKENDS)('manifest API on %s', (backend) => {
  beforeAll(async () => {
    s = await startServerOn(backend);
  });
  afterAll(async () => s.close());

  it('a manifest put by tag is served by tag and by digest with its media type and digest', async () => {
    const { body, digest } = await pushImage(s.url, 'img/app', 'v1', [randomBytes(100)]);
    for (const ref of ['v1', digest]) {
      const res = await fetch(`${s.url}/v2/img/app/manifests/${ref}`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe(OCI_MANIFEST);
      expect(res.headers.get('docker-content-digest')).toBe(digest);
      expect(Buffer.from(await res.arrayBuffer()).equals(body)).toBe(true);
      const head = await fetch(`${s.url}/v2/img/app/manifests/${ref}`, { method: 'HEAD' });
      expect(head.status).toBe(200);
      expect(head.headers.get('content-length')).toBe(String(body.length));
    }
  });

  it('a manifest that references a blob the repository lacks is refused with MANIFEST_BLOB_UNKNOWN', async () => {
    const configDigest = await pushBlob(s.url, 'elsewhere', Buffer.from('{}'));
    const res = await putManifest('lacking', 'v1', {
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: 2 },
      layers: [],
    });
    expect(res.status).toBe(400);
    expect(await errorCode(res)).toBe('MANIFEST_BLOB_UNKNOWN');
    expect((await fetch(`${s.url}/v2/lacking/manifests/v1`)).status).toBe(404);
  });

  it('malformed manifests are refused with MANIFEST_INVALID', async () => {
    const bad = await fetch(`${s.url}/v2/bad/manifests/v1`, { method: 'PUT', headers: { 'Content-Type': OCI_MANIFEST }, body: '{not json' });
    expect(bad.status).toBe(400);
    expect(await errorCode(bad)).toBe('MANIFEST_INVALID');
    const noConfig = await putManifest('bad', 'v1', { schemaVersion: 2, mediaType: OCI_MANIFEST, layers: [] });
    expect(await errorCode(noConfig)).toBe('MANIFEST_INVALID');
    const schema1 = await putManifest('bad', 'v1', { schemaVersion: 1, name: 'bad', tag: 'v1', fsLayers: [] }, 'application/vnd.docker.distribution.manifest.v1+prettyjws');
    expect(await errorCode(schema1)).toBe('MANIFEST_INVALID');
  });

  it('a manifest larger than 4 MiB gets 413', async () => {
    const res = await fetch(`${s.url}/v2/big/manifests/v1`, { method: 'PUT', headers: { 'Content-Type': OCI_MANIFEST }, body: Buffer.alloc(4 * 1024 * 1024 + 1, 32) });
    expect(res.status).toBe(413);
  });

  it('a put by digest must match the content', async () => {
    const { manifest } = await pushImage(s.url, 'bydigest', 'seed', [randomBytes(10)]);
    const res = await putManifest('bydigest', sha256('something else'), manifest);
    expect(res.status).toBe(400);
    expect(await errorCode(res)).toBe('DIGEST_INVALID');
    const body = JSON.stringify(manifest);
    const ok = await putManifest('bydigest', sha256(body), manifest);
    expect(ok.status).toBe(201);
  });

  it('tags list is sorted and paginates with n, last and a Link header', async () => {
    const { manifest } = await pushImage(s.url, 'tagged', 'c', [randomBytes(10)]);
    for (const t of ['a', 'b', 'd']) expect((await putManifest('tagged', t, manifest)).status).toBe(201);
    const all = await (await fetch(`${s.url}/v2/tagged/tags/list`)).json();
    expect(all).toEqual({ name: 'tagged', tags: ['a', 'b', 'c', 'd'] });
    const page = await fetch(`${s.url}/v2/tagged/tags/list?n=2`);
    expect(await page.json()).toEqual({ name: 'tagged', tags: ['a', 'b'] });
    expect(page.headers.get('link')).toBe('</v2/tagged/tags/list?n=2&last=b>; rel="next"');
    const next = await fetch(`${s.url}/v2/tagged/tags/list?n=2&last=b`);
    expect(await next.json()).toEqual({ name: 'tagged', tags: ['c', 'd'] });
    expect(next.headers.get('link')).toBeNull();
    expect((await fetch(`${s.url}/v2/tagged/tags/list?n=-1`)).status).toBe(400);
    const unknown = await fetch(`${s.url}/v2/never/pushed/tags/list`);
    expect(unknown.status).toBe(404);
    expect(await errorCode(unknown)).toBe('NAME_UNKNOWN');
  });

  it('delete by tag removes only the tag; delete by digest removes the manifest and every tag naming it', async () => {
    const { manifest, digest } = await pushImage(s.url, 'del', 'one', [randomBytes(10)]);
    await putManifest('del', 'two', manifest);
    expect((await fetch(`${s.url}/v2/del/manifests/one`, { method: 'DELETE' })).status).toBe(202);
    expect((await fetch(`${s.url}/v2/del/manifests/one`)).status).toBe(404);
    expect((await fetch(`${s.url}/v2/del/manifests/${digest}`)).status).toBe(200);
    expect((await fetch(`${s.url}/v2/del/manifests/${digest}`, { method: 'DELETE' })).status).toBe(202);
    const gone = await fetch(`${s.url}/v2/del/manifests/two`);
    expect(gone.status).toBe(404);
    expect(await errorCode(gone)).toBe('MANIFEST_UNKNOWN');
    expect((await fetch(`${s.url}/v2/del/manifests/${digest}`, { method: 'DELETE' })).status).toBe(404);
  });

  it('an index is accepted only when its child manifests are in the repository', async () => {
    const a = await pushImage(s.url, 'multi', 'amd64', [randomBytes(10)]);
    const index = {
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [{ mediaType: OCI_MANIFEST, digest: a.digest, size: a.body.length, platform: { architecture: 'amd64', os: 'linux' } }],
    };
    expect((await putManifest('multi', 'latest', index, OCI_INDEX)).status).toBe(201);
    const res = await fetch(`${s.url}/v2/multi/manifests/latest`);
    expect(res.headers.get('content-type')).toBe(OCI_INDEX);
    const orphan = await putManifest('multi2', 'latest', index, OCI_INDEX);
    expect(orphan.status).toBe(400);
    expect(await errorCode(orphan)).toBe('MANIFEST_BLOB_UNKNOWN');
  });

  it('referrers list the artifacts whose subject is a manifest, filtered by artifactType', async () => {
    const subject = await pushImage(s.url, 'refs', 'v1', [randomBytes(10)]);
    const emptyDigest = await pushBlob(s.url, 'refs', Buffer.from('{}'));
    const artifact = (type: string, note: string) => ({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType: type,
      config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: emptyDigest, size: 2 },
      layers: [],
      subject: { mediaType: OCI_MANIFEST, digest: subject.digest, size: subject.body.length },
      annotations: { note },
    });
    const sig = artifact('application/example.signature', 'sig');
    const put = await putManifest('refs', sha256(JSON.stringify(sig)), sig);
    expect(put.status).toBe(201);
    expect(put.headers.get('oci-subject')).toBe(subject.digest);
    const sbom = artifact('application/example.sbom', 'sbom');
    await putManifest('refs', sha256(JSON.stringify(sbom)), sbom);

    const all = await fetch(`${s.url}/v2/refs/referrers/${subject.digest}`);
    expect(all.headers.get('content-type')).toBe(OCI_INDEX);
    const index = (await all.json()) as { manifests: { artifactType: string; annotations: Record<string, string> }[] };
    expect(index.manifests.map((m) => m.artifactType).sort()).toEqual(['application/example.sbom', 'application/example.signature']);
    const filtered = await fetch(`${s.url}/v2/refs/referrers/${subject.digest}?artifactType=application/example.sbom`);
    expect(filtered.headers.get('oci-filters-applied')).toBe('artifactType');
    expect(((await filtered.json()) as { manifests: unknown[] }).manifests).toHaveLength(1);
    const none = await (await fetch(`${s.url}/v2/refs/referrers/${sha256('nothing')}`)).json();
    expect(none).toEqual({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] });
  });

  it('the catalog lists repositories that hold manifests, paginated', async () => {
    const res = await (await fetch(`${s.url}/v2/_catalog`)).json();
    expect(res.repositories).toContain('img/app');
    expect(res.repositories).toEqual([...res.repositories].sort());
    expect(res.repositories).not.toContain('lacking');
    const page = await fetch(`${s.url}/v2/_catalog?n=1`);
    expect(((await page.json()) as { repositories: string[] }).repositories).toHaveLength(1);
    expect(page.headers.get('link')).toMatch(/rel="next"/);
  });

  it('invalid tags (-bad, .bad, 129 characters, "tag with space", non-ASCII) get 400 MANIFEST_INVALID and store nothing', async () => {
    const { manifest } = await pushImage(s.url, 'tags/invalid', 'good', [randomBytes(10)]);
    const doc = { ...manifest, annotations: { note: 'never stored' } };
    const digest = sha256(JSON.stringify(doc));
    const before = await storedObjects();
    for (const tag of ['-bad', '.bad', 'a'.repeat(129), 'tag with space', 'tág']) {
      const ref = encodeURIComponent(tag);
      const put = await putManifest('tags/invalid', ref, doc);
      expect(put.status, tag).toBe(400);
      expect(await errorCode(put), tag).toBe('MANIFEST_INVALID');
      for (const method of ['GET', 'DELETE']) {
        const res = await fetch(`${s.url}/v2/tags/invalid/manifests/${ref}`, { method });
        expect(res.status, `${method} ${tag}`).toBe(400);
        expect(await errorCode(res), `${method} ${tag}`).toBe('MANIFEST_INVALID');
      }
      expect((await fetch(`${s.url}/v2/tags/invalid/manifests/${ref}`, { method: 'HEAD' })).status, `HEAD ${tag}`).toBe(400);
    }
    expect(await storedObjects()).toEqual(before);
    expect((await fetch(`${s.url}/v2/tags/invalid/manifests/${digest}`)).status).toBe(404);
    expect(await (await fetch(`${s.url}/v2/tags/invalid/tags/list`)).json()).toEqual({ name: 'tags/invalid', tags: ['good'] });
    // The limits themselves are valid: 128 characters, and '_', '.' and '-' after the first.
    for (const tag of ['a'.repeat(128), '_x.y-z']) expect((await putManifest('tags/invalid', tag, manifest)).status, tag).toBe(201);
  });

  it('a tag containing "/" (plain or %2F) names no manifest endpoint: 404 NAME_UNKNOWN and nothing stored', async () => {
    const { manifest } = await pushImage(s.url, 'tags/slash', 'good', [randomBytes(10)]);
    const before = await storedObjects();
    for (const ref of ['a/b', 'a%2Fb']) {
      const put = await putManifest('tags/slash', ref, manifest);
      expect(put.status, ref).toBe(404);
      expect(await errorCode(put), ref).toBe('NAME_UNKNOWN');
    }
    expect(await storedObjects()).toEqual(before);
    expect(await (await fetch(`${s.url}/v2/tags/slash/tags/list`)).json()).toEqual({ name: 'tags/slash', tags: ['good'] });
  });

  it('a Docker manifest list naming two schema-2 images is served by tag and by digest as a manifest list', async () => {
    const amd64 = await pushDockerImage('dlist/app', 'amd64', 'amd64');
    const arm64 = await pushDockerImage('dlist/app', 'arm64', 'arm64');
    const list = {
      schemaVersion: 2,
      mediaType: DOCKER_LIST,
      manifests: [
        { mediaType: DOCKER_MANIFEST, digest: amd64.digest, size: amd64.body.length, platform: { architecture: 'amd64', os: 'linux' } },
        { mediaType: DOCKER_MANIFEST, digest: arm64.digest, size: arm64.body.length, platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } },
      ],
    };
    const body = Buffer.from(JSON.stringify(list));
    const digest = sha256(body);
    const put = await putManifest('dlist/app', 'latest', list, DOCKER_LIST);
    expect(put.status).toBe(201);
    expect(put.headers.get('docker-content-digest')).toBe(digest);
    expect(put.headers.get('location')).toBe(`/v2/dlist/app/manifests/${digest}`);
    for (const ref of ['latest', digest]) {
      const res = await fetch(`${s.url}/v2/dlist/app/manifests/${ref}`, { headers: { Accept: DOCKER_LIST } });
      expect(res.status, ref).toBe(200);
      expect(res.headers.get('content-type'), ref).toBe(DOCKER_LIST);
      expect(res.headers.get('docker-content-digest'), ref).toBe(digest);
      expect(Buffer.from(await res.arrayBuffer()).equals(body), ref).toBe(true);
      const head = await fetch(`${s.url}/v2/dlist/app/manifests/${ref}`, { method: 'HEAD' });
      expect(head.headers.get('content-type'), ref).toBe(DOCKER_LIST);
      expect(head.headers.get('content-length'), ref).toBe(String(body.length));
      expect(head.headers.get('docker-content-digest'), ref).toBe(digest);
    }
    for (const child of [amd64, arm64]) {
      const res = await fetch(`${s.url}/v2/dlist/app/manifests/${child.digest}`);
      expect(res.headers.get('content-type')).toBe(DOCKER_MANIFEST);
      expect(Buffer.from(await res.arrayBuffer()).equals(child.body)).toBe(true);
    }
  });

  it('a Docker manifest list naming a manifest the repository lacks is refused with MANIFEST_BLOB_UNKNOWN and not stored', async () => {
    const amd64 = await pushDockerImage('dlist/has', 'amd64', 'amd64');
    const elsewhere = await pushDockerImage('dlist/elsewhere', 'arm64', 'arm64');
    const entry = (m: { digest: string; body: Buffer }, architecture: string) => ({ mediaType: DOCKER_MANIFEST, digest: m.digest, size: m.body.length, platform: { architecture, os: 'linux' } });
    const lists = [
      // one child pushed only to another repository
      { schemaVersion: 2, mediaType: DOCKER_LIST, manifests: [entry(amd64, 'amd64'), entry(elsewhere, 'arm64')] },
      // one child pushed nowhere
      { schemaVersion: 2, mediaType: DOCKER_LIST, manifests: [entry(amd64, 'amd64'), entry({ digest: sha256('never pushed'), body: Buffer.alloc(500) }, 'arm64')] },
    ];
    for (const list of lists) {
      const res = await putManifest('dlist/has', 'latest', list, DOCKER_LIST);
      expect(res.status).toBe(400);
      expect(await errorCode(res)).toBe('MANIFEST_BLOB_UNKNOWN');
      expect((await fetch(`${s.url}/v2/dlist/has/manifests/${sha256(JSON.stringify(list))}`)).status).toBe(404);
    }
    expect((await fetch(`${s.url}/v2/dlist/has/manifests/latest`)).status).toBe(404);
    expect(await (await fetch(`${s.url}/v2/dlist/has/tags/list`)).json()).toEqual({ name: 'dlist/has', tags: ['amd64'] });
  });
});

describe('manifest integrity on filesystem', () => {
  it('a manifest once served stays what its digest names: later damage to the stored bytes is not served, a delete still takes effect', async () => {
    const server = await startServer();
    try {
      const { digest } = await pushImage(server.url, 'cached/app', 'v1', [randomBytes(100)]);
      const first = await fetch(`${server.url}/v2/cached/app/manifests/v1`);
      expect(first.status).toBe(200);
      const body = Buffer.from(await first.arrayBuffer());
      await writeFile(join(server.root, paths.blobData('_local', digest)), JSON.stringify({ schemaVersion: 2, layers: [] }));
      for (const ref of [digest, 'v1']) {
        const res = await fetch(`${server.url}/v2/cached/app/manifests/${ref}`);
        expect(res.status).toBe(200);
        expect(res.headers.get('docker-content-digest')).toBe(digest);
        expect(Buffer.from(await res.arrayBuffer()).equals(body)).toBe(true);
      }
      expect((await fetch(`${server.url}/v2/cached/app/manifests/${digest}`, { method: 'DELETE' })).status).toBe(202);
      for (const ref of [digest, 'v1']) expect((await fetch(`${server.url}/v2/cached/app/manifests/${ref}`)).status).toBe(404);
    } finally {
      await server.close();
    }
  });

  it('stored manifest bytes that no longer hash to the digest are not served, by digest or by tag', async () => {
    const server = await startServer();
    try {
      const { digest } = await pushImage(server.url, 'damaged/app', 'v1', [randomBytes(100)]);
      // Other valid JSON where the manifest was: what a disk, a restore or a hand edit might leave.
      const other = JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: {}, layers: [] });
      await writeFile(join(server.root, paths.blobData('_local', digest)), other);
      for (const ref of [digest, 'v1']) {
        const res = await fetch(`${server.url}/v2/damaged/app/manifests/${ref}`);
        expect(res.status).toBe(500);
        const text = await res.text();
        expect(text).not.toContain(other);
        expect(JSON.parse(text)).toEqual({ errors: [{ code: 'UNKNOWN', message: 'stored content does not match its digest' }] });
      }
    } finally {
      await server.close();
    }
  });
});
