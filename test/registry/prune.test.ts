/** Prune on both backends: expiry, mark and sweep, referrers and indexes, the push race, locks, dry runs. */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { paths } from '../../src/registry/paths.js';
import { AlreadyExists, UnsafePath } from '../../src/storage/driver.js';
import { Pruner, type PruneOptions, type PruneReport } from '../../src/registry/prune.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { outsideTree } from '../helpers/outside.js';
import { overriding, pushBlob, pushImage, sha256, type TestServer } from '../helpers/server.js';
import { IN_PROCESS_BACKENDS, startServerOn } from '../helpers/swift.js';

const HOUR = 3600;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const silent = { debug() {}, info() {}, warn() {} };
/** Lets storage timestamps of what comes before and after differ (not a timing assertion). */
const pause = () => new Promise((r) => setTimeout(r, 30));

describe.each(IN_PROCESS_BACKENDS)('prune on %s', (backend) => {
  let s: TestServer;
  let cutoff: number;
  beforeEach(async () => {
    s = await startServerOn(backend);
  });
  afterEach(async () => s.close());

  /** Everything written before this call is older than the expirations; everything after is fresh. */
  async function markTime() {
    await pause();
    cutoff = Date.now();
    await pause();
  }
  const prune = (opts: Partial<PruneOptions> = {}): Promise<PruneReport> =>
    new Pruner(s.registry.driver).prune('_local', {
      expiration: HOUR,
      uploadExpiry: HOUR,
      now: new Date(cutoff + HOUR * 1000),
      log: silent,
      lockSettleMs: 10,
      ...opts,
    });
  const status = async (path: string, method = 'GET') => (await fetch(`${s.url}${path}`, { method })).status;
  const blobStatus = (repo: string, d: string) => status(`/v2/${repo}/blobs/${d}`, 'HEAD');
  const putManifest = (repo: string, ref: string, doc: unknown, type = OCI_MANIFEST) =>
    fetch(`${s.url}/v2/${repo}/manifests/${ref}`, { method: 'PUT', headers: { 'Content-Type': type }, body: JSON.stringify(doc) });
  async function startUpload(repo: string) {
    const res = await fetch(`${s.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    const location = res.headers.get('location')!;
    await fetch(`${s.url}${location}`, { method: 'PATCH', headers: { 'Content-Range': '0-999' }, body: new Uint8Array(randomBytes(1000)) });
    return location;
  }

  it('expires old tags and their exclusive layers, keeps shared and fresh ones, uploads in progress and new blobs', async () => {
    const shared = randomBytes(3000);
    const oldOnly = randomBytes(2000);
    const newOnly = randomBytes(1000);
    const old = await pushImage(s.url, 'app', 'old', [shared, oldOnly]);
    const abandoned = await startUpload('app');
    await markTime();
    const fresh = await pushImage(s.url, 'app', 'new', [shared, newOnly]);
    const inProgress = await startUpload('app');
    const unreferenced = await pushBlob(s.url, 'app', randomBytes(500));

    const report = await prune();
    expect(report).toMatchObject({
      uploads: { examined: 2, kept: 1, deleted: 1 },
      tags: { examined: 2, kept: 1, deleted: 1 },
      manifests: { examined: 2, kept: 1, deleted: 1 },
      // config, shared, oldOnly, newOnly, unreferenced, and the two manifests: oldOnly and the old manifest go.
      blobs: { examined: 7, kept: 5, deleted: 2 },
      failures: 0,
    });
    // Bytes count blobs and uploads: oldOnly, the old manifest, and the abandoned upload's 1000-byte chunk and record.
    expect(report.bytes.deleted).toBeGreaterThan(oldOnly.length + old.body.length + 1000);
    expect(report.bytes.deleted).toBeLessThan(oldOnly.length + old.body.length + 1000 + 1000);
    expect(await status('/v2/app/manifests/old')).toBe(404);
    expect(await status(`/v2/app/manifests/${old.digest}`)).toBe(404);
    expect(await status('/v2/app/manifests/new')).toBe(200);
    expect(await status(`/v2/app/manifests/${fresh.digest}`)).toBe(200);
    expect(await blobStatus('app', sha256(oldOnly))).toBe(404);
    for (const b of [shared, newOnly]) expect(await blobStatus('app', sha256(b))).toBe(200);
    expect(await blobStatus('app', unreferenced)).toBe(200);
    expect(await status(abandoned)).toBe(404);
    expect(await status(inProgress)).toBe(204);
    // The swept blob's data and links are gone from storage, not just hidden.
    expect(await s.registry.driver.stat(paths.blobData('_local', sha256(oldOnly)))).toBeNull();
    expect(await s.registry.driver.stat(paths.blobLink('_local', 'app', sha256(oldOnly)))).toBeNull();
  });

  it('parts a kept blob does not read from go once old (a commit that lost a race or died); its own stay', async () => {
    const data = randomBytes(3 << 20);
    const img = await pushImage(s.url, 'race', 'v1', [data]);
    const layer = sha256(data);
    const strayOld = paths.blobPart('_local', layer, '0b9e2a38-6c53-4d25-9d3e-6a1e1b2c3d4e', 0);
    await s.registry.driver.put(strayOld, randomBytes(1000));
    await markTime();
    const strayYoung = paths.blobPart('_local', layer, '1c9e2a38-6c53-4d25-9d3e-6a1e1b2c3d4e', 0);
    await s.registry.driver.put(strayYoung, randomBytes(1000));
    const report = await prune({ expiration: undefined });
    expect(report.failures).toBe(0);
    expect(await s.registry.driver.stat(strayOld)).toBeNull();
    expect(await s.registry.driver.stat(strayYoung)).not.toBeNull();
    const got = Buffer.from(await (await fetch(`${s.url}/v2/race/blobs/${layer}`)).arrayBuffer());
    expect(got.equals(data)).toBe(true);
    expect(await status(`/v2/race/manifests/${img.digest}`)).toBe(200);
  });

  it("the web page's summary of a repository goes with its last manifest; a kept repository's stays", async () => {
    await pushImage(s.url, 'gone', 'v1', [randomBytes(100)]);
    await markTime();
    await pushImage(s.url, 'kept', 'v1', [randomBytes(100)]);
    const driver = s.registry.driver;
    // Written here too (the page writes them after pushes, in the background): the test decides what exists.
    for (const repo of ['gone', 'kept']) await driver.put(paths.webSummary('_local', repo), Buffer.from('{}'));
    await prune();
    expect(await driver.stat(paths.webSummary('_local', 'gone'))).toBeNull();
    expect(await driver.stat(paths.webSummary('_local', 'kept'))).not.toBeNull();
  });

  it('without an expiration nothing expires by age, and unreferenced old blobs still go', async () => {
    const img = await pushImage(s.url, 'keep', 'v1', [randomBytes(100)]);
    const stray = await pushBlob(s.url, 'keep', randomBytes(100));
    await markTime();
    const report = await prune({ expiration: undefined });
    expect(report).toMatchObject({ tags: { deleted: 0 }, manifests: { deleted: 0 }, blobs: { deleted: 1 } });
    expect(await status(`/v2/keep/manifests/${img.digest}`)).toBe(200);
    expect(await blobStatus('keep', stray)).toBe(404);
  });

  it('an index keeps its child manifests; referrers follow their subject', async () => {
    const child1 = await pushImage(s.url, 'multi', randomBytes(4).toString('hex'), [randomBytes(100)]);
    const child2 = await pushImage(s.url, 'multi', randomBytes(4).toString('hex'), [randomBytes(100)]);
    const expiredSubject = await pushImage(s.url, 'multi', 'gone', [randomBytes(100)]);
    const artifact = (subject: { digest: string; body: Buffer }, note: string) => ({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType: 'application/vnd.example.sbom',
      config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: sha256('{}'), size: 2 },
      layers: [],
      subject: { mediaType: OCI_MANIFEST, digest: subject.digest, size: subject.body.length },
      annotations: { note },
    });
    await pushBlob(s.url, 'multi', Buffer.from('{}'));
    const index = {
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [child1, child2].map((c, i) => ({ mediaType: OCI_MANIFEST, digest: c.digest, size: c.body.length, platform: { os: 'linux', architecture: ['amd64', 'arm64'][i] } })),
    };
    const indexBody = JSON.stringify(index);
    const keptArtifact = JSON.stringify(artifact({ digest: sha256(indexBody), body: Buffer.from(indexBody) }, 'kept'));
    const goneArtifact = JSON.stringify(artifact(expiredSubject, 'gone'));
    // Children's tags and the artifacts are old; the index is tagged after the cutoff.
    expect((await putManifest('multi', sha256(keptArtifact), JSON.parse(keptArtifact))).status).toBe(201);
    expect((await putManifest('multi', sha256(goneArtifact), JSON.parse(goneArtifact))).status).toBe(201);
    await markTime();
    expect((await putManifest('multi', 'latest', index, OCI_INDEX)).status).toBe(201);

    await prune();
    expect(await status(`/v2/multi/manifests/latest`)).toBe(200);
    for (const c of [child1, child2]) {
      expect(await status(`/v2/multi/manifests/${c.digest}`)).toBe(200);
      expect(await blobStatus('multi', (c.manifest.layers[0] as { digest: string }).digest)).toBe(200);
    }
    expect(await status(`/v2/multi/manifests/${sha256(keptArtifact)}`)).toBe(200);
    expect(await status(`/v2/multi/manifests/${sha256(goneArtifact)}`)).toBe(404);
    expect(await status(`/v2/multi/manifests/${expiredSubject.digest}`)).toBe(404);
    const referrers = (await (await fetch(`${s.url}/v2/multi/referrers/${sha256(indexBody)}`)).json()) as { manifests: { digest: string }[] };
    expect(referrers.manifests.map((m) => m.digest)).toEqual([sha256(keptArtifact)]);
  });

  it('a manifest PUT that meets a tombstone backs out with MANIFEST_BLOB_UNKNOWN; its touch then saves the blob', async () => {
    const layer = randomBytes(700);
    const layerDigest = await pushBlob(s.url, 'race', layer);
    const config = Buffer.from('{"os":"linux"}');
    const configDigest = await pushBlob(s.url, 'race', config);
    await markTime();
    // Prune has written its tombstone and not yet re-read the touch marker.
    await s.registry.driver.put(paths.blobTombstone('_local', layerDigest), Buffer.alloc(0));
    const doc = {
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: layer.length }],
    };
    const refused = await putManifest('race', 'v1', doc);
    expect(refused.status).toBe(400);
    expect(((await refused.json()) as { errors: { code: string }[] }).errors[0].code).toBe('MANIFEST_BLOB_UNKNOWN');
    expect(await status('/v2/race/manifests/v1')).toBe(404);
    // Prune goes on: the PUT's touch is newer than its cutoff, so it keeps the blob and lifts the tombstone.
    const report = await prune();
    expect(report.blobs.deleted).toBe(0);
    expect(await s.registry.driver.stat(paths.blobTombstone('_local', layerDigest))).toBeNull();
    expect((await putManifest('race', 'v1', doc)).status).toBe(201);
    expect(await blobStatus('race', layerDigest)).toBe(200);
  });

  it('pushes racing a sweep either fail cleanly or succeed with every blob intact', async () => {
    const layers = Array.from({ length: 6 }, () => randomBytes(300));
    const digests: string[] = [];
    for (const l of layers) digests.push(await pushBlob(s.url, 'busy', l));
    const config = Buffer.from('{"os":"linux"}');
    const configDigest = await pushBlob(s.url, 'busy', config);
    await markTime();
    const doc = (i: number) => ({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: digests[i], size: layers[i].length }],
    });
    const [, ...puts] = await Promise.all([prune(), ...layers.map(async (_, i) => { await pause(); return putManifest('busy', `t${i}`, doc(i)); })]);
    for (const [i, res] of puts.entries()) {
      if (res.status === 201) {
        expect(await blobStatus('busy', digests[i])).toBe(200);
        expect(await blobStatus('busy', configDigest)).toBe(200);
      } else {
        expect(res.status).toBe(400);
        expect(((await res.json()) as { errors: { code: string }[] }).errors[0].code).toBe('MANIFEST_BLOB_UNKNOWN');
        expect(await status(`/v2/busy/manifests/t${i}`)).toBe(404);
      }
    }
  });

  it('a second prune refuses a namespace whose lock is fresh, and takes over a stale one', async () => {
    await s.registry.driver.put(paths.pruneLock('_local'), Buffer.from('{"token":"someone else"}'));
    await markTime();
    const refused = await prune();
    expect(refused.refused).toMatch(/another prune holds/);
    expect(await s.registry.driver.stat(paths.pruneLock('_local'))).not.toBeNull();
    const taken = await prune({ staleLockSeconds: 0 });
    expect(taken.refused).toBeUndefined();
    expect(await s.registry.driver.stat(paths.pruneLock('_local'))).toBeNull();
  });

  it('a lock create that was stored but answered AlreadyExists (a retried request) is our lock: prune runs and removes it', async () => {
    const old = await pushImage(s.url, 'retried', 'old', [randomBytes(100)]);
    await markTime();
    const inner = s.registry.driver;
    let lost = false;
    // The first create of the lock is stored, but its answer is lost and the retry finds the object there.
    const retrying = overriding(inner, {
      async put(path, body, opts) {
        const stored = await inner.put(path, body, opts);
        if (!lost && opts?.ifAbsent && path === paths.pruneLock('_local')) {
          lost = true;
          throw new AlreadyExists(path);
        }
        return stored;
      },
    });
    const report = await new Pruner(retrying).prune('_local', {
      expiration: HOUR,
      uploadExpiry: HOUR,
      now: new Date(cutoff + HOUR * 1000),
      log: silent,
      lockSettleMs: 10,
    });
    expect(lost).toBe(true);
    expect(report.refused).toBeUndefined();
    expect(report.manifests.deleted).toBe(1);
    expect(await status(`/v2/retried/manifests/${old.digest}`)).toBe(404);
    expect(await inner.stat(paths.pruneLock('_local'))).toBeNull();
  });

  it('a dry run deletes nothing and reports what the real run then deletes', async () => {
    await pushImage(s.url, 'dry', 'old', [randomBytes(100), randomBytes(200)]);
    await startUpload('dry');
    await pushBlob(s.url, 'dry', randomBytes(50));
    await markTime();
    await pushImage(s.url, 'dry', 'new', [randomBytes(100)]);
    const snapshot = async () => {
      const out: string[] = [];
      for await (const o of s.registry.driver.list('_local')) out.push(`${o.path} ${o.size} ${o.modified.toISOString()}`);
      return out;
    };
    const before = await snapshot();
    const dry = await prune({ dryRun: true });
    expect(await snapshot()).toEqual(before);
    const real = await prune();
    expect(dry.blobs.deleted).toBeGreaterThan(0);
    const counts = (r: PruneReport) => ({ uploads: r.uploads, manifests: r.manifests, tags: r.tags, blobs: r.blobs, bytes: r.bytes });
    expect(counts(dry)).toEqual(counts(real));
    expect(await status('/v2/dry/manifests/old')).toBe(404);
  });
});

describe('prune never reaches outside the filesystem root through a symbolic link', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-prune-links-'));
  });
  afterEach(async () => rm(dir, { recursive: true, force: true }));

  // Issue 16: a link at each of these made prune delete the (expired) files it led to.
  it.each(['<ns>', '<ns>/uploads', '<ns>/blobs', '<ns>/repos', '<ns>/blobs/<digest>', '<ns>/uploads/<upload>'])('a link at %s', async (at) => {
    const tree = await outsideTree(join(dir, 'outside'));
    const before = await tree.snapshot();
    const root = join(dir, 'root');
    await mkdir(join(root, '_local', 'blobs'), { recursive: true });
    const upload = (await readdir(join(tree.dir, 'uploads')))[0];
    const [link, target] = {
      '<ns>': ['_local', ''],
      '<ns>/uploads': ['_local/uploads', 'uploads'],
      '<ns>/blobs': ['_local/blobs', 'blobs'],
      '<ns>/repos': ['_local/repos', 'repos'],
      '<ns>/blobs/<digest>': [`_local/blobs/${tree.digest}`, `blobs/${tree.digest}`],
      '<ns>/uploads/<upload>': [`_local/uploads/${upload}`, `uploads/${upload}`],
    }[at]!;
    await rm(join(root, link), { recursive: true, force: true });
    await mkdir(join(root, link, '..'), { recursive: true });
    await symlink(join(tree.dir, target), join(root, link));
    const driver = await FilesystemDriver.open(root);
    const pruning = new Pruner(driver).prune('_local', { expiration: HOUR, uploadExpiry: HOUR, log: silent, lockSettleMs: 10 });
    if (at === '<ns>') {
      // Its lock cannot be written there: the run is refused before it looks at anything.
      await expect(pruning).rejects.toBeInstanceOf(UnsafePath);
    } else {
      const report = await pruning;
      expect(report.uploads.deleted + report.tags.deleted + report.manifests.deleted + report.blobs.deleted).toBe(0);
    }
    expect(await tree.snapshot()).toEqual(before);
  });
});
