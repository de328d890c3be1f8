/**
 * Prune over a fixture registry, checked object by object, then kept images pulled with skopeo; and pushes racing
 * repeated prunes, after which every image whose manifest PUT succeeded pulls intact.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseBlobPath, parseRepoPath, paths } from '../../src/registry/paths.js';
import { Pruner } from '../../src/registry/prune.js';
import { pushBlob, pushImage, sha256, type TestServer } from '../helpers/server.js';
import { BACKENDS, startServerOn } from '../helpers/swift.js';

const run = promisify(execFile);
const HOUR = 3600;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const silent = { debug() {}, info() {}, warn() {} };
const pause = () => new Promise((r) => setTimeout(r, 30));
/** Layers skopeo will not recompress on the way into an OCI layout (it sniffs gzip), so digests survive a pull. */
const layer = (n: number) => gzipSync(randomBytes(n), { level: 1 });

describe.each(BACKENDS)('prune fixture on %s', (backend) => {
  let s: TestServer;
  let dir: string;
  beforeEach(async () => {
    s = await startServerOn(backend);
    dir = await mkdtemp(join(tmpdir(), 'berth-prune-fx-'));
  });
  afterEach(async () => {
    await s.close();
    await rm(dir, { recursive: true, force: true });
  });

  const listing = async () => {
    const out: string[] = [];
    for await (const o of s.registry.driver.list('_local')) out.push(o.path);
    return out.sort();
  };
  const putManifest = async (repo: string, ref: string, doc: unknown, type = OCI_MANIFEST) => {
    const body = JSON.stringify(doc);
    const res = await fetch(`${s.url}/v2/${repo}/manifests/${ref}`, { method: 'PUT', headers: { 'Content-Type': type }, body });
    expect(res.status).toBe(201);
    return { digest: sha256(body), body: Buffer.from(body) };
  };
  const indexOf = (children: { digest: string; body: Buffer }[]) => ({
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: children.map((c, i) => ({ mediaType: OCI_MANIFEST, digest: c.digest, size: c.body.length, platform: { os: 'linux', architecture: `arch${i}` } })),
  });

  it('deletes exactly the expected objects, and every kept image pulls byte-identically with skopeo', async () => {
    const shared = layer(4000);
    // Old: an image sharing a layer with a fresh one, an old index and its only child, an abandoned upload,
    // an orphan chunk, and a referrer whose subject expires.
    const oldImage = await pushImage(s.url, 'fx/app', 'old', [shared, layer(3000)]);
    const oldChild = await pushImage(s.url, 'fx/app', 'oldchild', [layer(2000)]);
    await fetch(`${s.url}/v2/fx/app/manifests/oldchild`, { method: 'DELETE' });
    const oldIndex = await putManifest('fx/app', 'oldidx', indexOf([oldChild]), OCI_INDEX);
    const childA = await pushImage(s.url, 'fx/app', 'tmp-a', [layer(1500)]);
    const childB = await pushImage(s.url, 'fx/app', 'tmp-b', [layer(1600)]);
    for (const t of ['tmp-a', 'tmp-b']) await fetch(`${s.url}/v2/fx/app/manifests/${t}`, { method: 'DELETE' });
    await pushBlob(s.url, 'fx/app', Buffer.from('{}'));
    const artifact = (subject: { digest: string; body: Buffer }) => ({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType: 'application/vnd.example.sig',
      config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: sha256('{}'), size: 2 },
      layers: [],
      subject: { mediaType: OCI_MANIFEST, digest: subject.digest, size: subject.body.length },
    });
    const goneSig = await putManifest('fx/app', sha256(JSON.stringify(artifact(oldImage))), artifact(oldImage));
    const start = await fetch(`${s.url}/v2/fx/app/blobs/uploads/`, { method: 'POST' });
    const abandoned = start.headers.get('docker-upload-uuid')!;
    await fetch(`${s.url}${start.headers.get('location')}`, { method: 'PATCH', headers: { 'Content-Range': '0-99' }, body: new Uint8Array(randomBytes(100)) });
    const orphan = randomUUID();
    await s.registry.driver.put(paths.uploadChunk('_local', orphan, '0.0badc0de'), randomBytes(64));
    await pause();
    // What committed uploads left where processes cannot lock each other out (their seals): gone after the expiry.
    const sealsBeforeCutoff = (await listing()).filter((p) => p.startsWith('_local/uploads/') && p.endsWith('/sealed'));
    const cutoff = Date.now();
    await pause();
    // Fresh: an image sharing the layer, an index whose children are reachable only through it, a signature.
    const fresh = await pushImage(s.url, 'fx/app', 'new', [shared, layer(2500)]);
    await putManifest('fx/app', 'idx', indexOf([childA, childB]), OCI_INDEX);
    const keptSig = await putManifest('fx/app', sha256(JSON.stringify(artifact(fresh))), artifact(fresh));

    const before = await listing();
    const report = await new Pruner(s.registry.driver).prune('_local', {
      expiration: HOUR,
      uploadExpiry: HOUR,
      now: new Date(cutoff + HOUR * 1000),
      log: silent,
      lockSettleMs: 10,
    });
    expect(report.failures).toBe(0);
    const after = await listing();

    const goneManifests = [oldImage.digest, oldChild.digest, oldIndex.digest, goneSig.digest];
    const goneBlobs = new Set([
      ...goneManifests,
      (oldImage.manifest.layers[1] as { digest: string }).digest,
      (oldChild.manifest.layers[0] as { digest: string }).digest,
    ]);
    const expectedGone = before.filter((p) => {
      if (p.startsWith('_local/uploads/')) return p.includes(abandoned) || p.includes(orphan) || sealsBeforeCutoff.includes(p);
      const blob = parseBlobPath('_local', p);
      if (blob) return goneBlobs.has(blob.digest);
      const rest = parseRepoPath('_local', p)!.rest.split('/');
      if (rest[0] === '_blobs') return goneBlobs.has(rest[1]);
      if (rest[0] === '_manifests' && rest[1] === 'revisions') return goneManifests.includes(rest[2]);
      if (rest[0] === '_manifests' && rest[1] === 'tags') return ['old', 'oldidx'].includes(rest[2]);
      if (rest[0] === '_referrers') return goneManifests.includes(rest[2]);
      return false;
    });
    expect(expectedGone.length).toBeGreaterThan(15);
    // Prune adds one object: the usage figure it recorded (usage.ts).
    expect(after.filter((p) => p !== '_local/usage/last.json')).toEqual(before.filter((p) => !expectedGone.includes(p)));
    expect(after).toContain('_local/usage/last.json');

    // Kept images pull byte-identically with a real client.
    const host = s.url.replace('http://', '');
    await run('skopeo', ['--insecure-policy', 'copy', '--all', '--src-tls-verify=false', `docker://${host}/fx/app:idx`, `oci:${dir}/idx:idx`]);
    await run('skopeo', ['--insecure-policy', 'copy', '--src-tls-verify=false', `docker://${host}/fx/app:new`, `oci:${dir}/new:new`]);
    const blobFile = (layout: string, d: string) => join(dir, layout, 'blobs', 'sha256', d.slice(7));
    for (const img of [childA, childB]) {
      for (const l of img.manifest.layers as { digest: string }[]) {
        expect(sha256(await readFile(blobFile('idx', l.digest)))).toBe(l.digest);
      }
    }
    for (const l of fresh.manifest.layers as { digest: string }[]) expect(sha256(await readFile(blobFile('new', l.digest)))).toBe(l.digest);
    const refs = (await (await fetch(`${s.url}/v2/fx/app/referrers/${fresh.digest}`)).json()) as { manifests: { digest: string }[] };
    expect(refs.manifests.map((m) => m.digest)).toEqual([keptSig.digest]);
  });

  it('images pushed while prune runs again and again all pull intact when their manifest PUT succeeded', async () => {
    // Old unreferenced layers that the pushes name again, so sweeps and pushes meet on the same blobs.
    const oldLayers = Array.from({ length: 8 }, () => randomBytes(800));
    for (const l of oldLayers) await pushBlob(s.url, 'busy/app', l);
    await pause();
    const cutoff = Date.now();
    await pause();
    const pruner = new Pruner(s.registry.driver);
    let pushing = true;
    const prunes = (async () => {
      let runs = 0;
      while (pushing || runs < 2) {
        const r = await pruner.prune('_local', { expiration: HOUR, uploadExpiry: HOUR, now: new Date(cutoff + HOUR * 1000), log: silent, lockSettleMs: 5 });
        expect(r.failures).toBe(0);
        runs++;
      }
      return runs;
    })();
    // Each push behaves like a client: HEAD each blob, upload what is missing, PUT the manifest; retry on
    // MANIFEST_BLOB_UNKNOWN (a sweep won the race for a blob it had found).
    const outcomes: { tag: string; status: number; layers: string[] }[] = [];
    for (let i = 0; i < 12; i++) {
      const tag = `t${i}`;
      const config = Buffer.from(JSON.stringify({ os: 'linux', n: i }));
      const blobs = [config, oldLayers[i % oldLayers.length], randomBytes(1000)];
      const digests = blobs.map((b) => sha256(b));
      const doc = {
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digests[0], size: config.length },
        layers: blobs.slice(1).map((b, j) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: digests[j + 1], size: b.length })),
      };
      let status = 0;
      for (let attempt = 0; attempt < 5 && status !== 201; attempt++) {
        for (const [j, b] of blobs.entries()) {
          if ((await fetch(`${s.url}/v2/busy/app/blobs/${digests[j]}`, { method: 'HEAD' })).status === 404) await pushBlob(s.url, 'busy/app', b);
        }
        const res = await fetch(`${s.url}/v2/busy/app/manifests/${tag}`, { method: 'PUT', headers: { 'Content-Type': OCI_MANIFEST }, body: JSON.stringify(doc) });
        status = res.status;
        if (status !== 201) {
          expect(status).toBe(400);
          expect(((await res.json()) as { errors: { code: string }[] }).errors[0].code).toBe('MANIFEST_BLOB_UNKNOWN');
        }
      }
      outcomes.push({ tag, status, layers: digests });
    }
    pushing = false;
    expect(await prunes).toBeGreaterThanOrEqual(2);
    expect(outcomes.map((o) => o.status)).toEqual(outcomes.map(() => 201));
    for (const o of outcomes.filter((x) => x.status === 201)) {
      const manifest = await fetch(`${s.url}/v2/busy/app/manifests/${o.tag}`);
      expect(manifest.status).toBe(200);
      for (const d of o.layers) {
        const blob = Buffer.from(await (await fetch(`${s.url}/v2/busy/app/blobs/${d}`)).arrayBuffer());
        expect(createHash('sha256').update(blob).digest('hex')).toBe(d.slice(7));
      }
    }
  });
});
