/**
 * Issue 23's loss paths, with two `berth serve` processes on one Swift container and no lock service, in both commit
 * modes: a PATCH streaming into one process while the other commits (then a DELETE, or a commit of the revived upload
 * as another digest, and prune), a second join in one directory, and the cancel that follows a failed monolithic
 * commit. Each ends with the pushed blob readable with its digest and fsck clean.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Fsck } from '../../src/registry/fsck.js';
import { Pruner } from '../../src/registry/prune.js';
import { paths } from '../../src/registry/paths.js';
import type { StorageDriver } from '../../src/storage/driver.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { slowPatch } from '../helpers/races.js';
import { md5, overriding, pushBlob, sha256, spawnServe, startChunkedUpload, startServer, type ServeProcess, type TestServer } from '../helpers/server.js';
import { storageYaml, swiftDriver } from '../helpers/swift.js';

const MiB = 1 << 20;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const silent = { debug() {}, info() {}, warn() {} };
/** Lets a request reach its first storage read before the next step; the assertions do not depend on it. */
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
const idOf = (location: string) => /\/uploads\/([0-9a-f-]{36})/.exec(location)![1];

async function pulled(url: string, repo: string, digest: string): Promise<string | number> {
  const res = await fetch(`${url}/v2/${repo}/blobs/${digest}`);
  return res.status === 200 ? md5(Buffer.from(await res.arrayBuffer())) : res.status;
}

async function putManifest(url: string, repo: string, tag: string, layer: { digest: string; size: number }): Promise<number> {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', tag }));
  const doc = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: await pushBlob(url, repo, config), size: config.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
  };
  const res = await fetch(`${url}/v2/${repo}/manifests/${tag}`, { method: 'PUT', headers: { 'Content-Type': OCI_MANIFEST }, body: JSON.stringify(doc) });
  return res.status;
}

/**
 * The race of loss paths 1 and 2: two 1 MiB chunks on A, a third streaming into B when A commits the first two.
 * Returns what the caller goes on with.
 */
async function commitWhileStreaming(a: ServeProcess, b: ServeProcess, repo: string) {
  const chunks = [randomBytes(MiB), randomBytes(MiB)];
  const first = Buffer.concat(chunks);
  const digest = sha256(first);
  const location = await startChunkedUpload(a.url, repo, chunks);
  const third = randomBytes(MiB);
  const late = slowPatch(b.url, location, first.length, third);
  await pause(500);
  const put = await fetch(`${a.url}${location}?digest=${digest}`, { method: 'PUT' });
  expect(put.status).toBe(201);
  late.finish();
  // B's chunk came after the seal: the upload is gone, whatever B's record write did.
  expect(await late.answer).toEqual({ status: 404, code: 'BLOB_UPLOAD_UNKNOWN' });
  return { location, digest, first, revived: sha256(Buffer.concat([first, third])) };
}

for (const mode of ['move', 'link'] as const) {
  describe(`uploads racing across two processes on Swift (commit: ${mode}, no lock service)`, () => {
    let dir: string;
    let storage: Awaited<ReturnType<typeof storageYaml>>;
    let servers: ServeProcess[];
    let driver: StorageDriver;
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'berth-races-'));
      storage = await storageYaml('swift', dir, mode);
      const config = `registry:\n  address: 127.0.0.1\n  port: 0\n${storage.yaml}`;
      servers = await Promise.all([0, 1].map(() => spawnServe(config, dir)));
      driver = await swiftDriver(/container: (\S+)/.exec(storage.yaml)![1]);
    });
    afterAll(async () => {
      for (const s of servers ?? []) expect(await s.stop()).toBe(0);
      await driver?.close();
      await storage?.cleanup();
      await rm(dir, { recursive: true, force: true });
    });
    const fsckProblems = async () => (await new Fsck(driver).check('_local')).problems;

    it('1: a PATCH that began before the commit gets 404 and revives nothing; DELETE is 404 and the blob reads back', async () => {
      const [a, b] = servers;
      const { location, digest, first } = await commitWhileStreaming(a, b, 'race/one');
      for (const s of [a, b]) {
        expect((await fetch(`${s.url}${location}`, { method: 'DELETE' })).status).toBe(404);
        expect((await fetch(`${s.url}${location}`)).status).toBe(404);
        expect((await fetch(`${s.url}${location}`, { method: 'PATCH', headers: { 'Content-Range': `${first.length}-${first.length}` }, body: 'x' })).status).toBe(404);
      }
      for (const s of [a, b]) expect(await pulled(s.url, 'race/one', digest)).toBe(md5(first));
      expect(await fsckProblems()).toEqual([]);
    });

    it('2: the revived upload cannot be committed as another digest; prune past every expiry keeps the named blob whole', async () => {
      const [a, b] = servers;
      const { location, digest, first, revived } = await commitWhileStreaming(a, b, 'race/two');
      for (const s of [b, a]) expect((await fetch(`${s.url}${location}?digest=${revived}`, { method: 'PUT' })).status).toBe(404);
      expect(await putManifest(a.url, 'race/two', 'kept', { digest, size: first.length })).toBe(201);
      const report = await new Pruner(driver).prune('_local', { uploadExpiry: 3600, now: new Date(Date.now() + 2 * 3600_000), log: silent, lockSettleMs: 10 });
      expect(report.failures).toBe(0);
      expect(await pulled(b.url, 'race/two', digest)).toBe(md5(first));
      expect(await pulled(a.url, 'race/two', revived)).toBe(404);
      // The upload's directory holds nothing but what the blob reads from, and what says whose it is.
      const left: string[] = [];
      for await (const o of driver.list(paths.upload('_local', idOf(location)))) left.push(o.path.split('/').pop()!);
      const read = new Set(((await driver.segments?.(paths.blobData('_local', digest))) ?? []).map((p) => p.split('/').pop()!));
      expect(left.filter((n) => !read.has(n)).sort()).toEqual(mode === 'link' ? [`owner.${digest}`, 'sealed'] : []);
      expect(await fsckProblems()).toEqual([]);
    });

    it('3: a second commit in one directory is refused, and the retry of the first (same digest) still answers 201', async () => {
      const [a, b] = servers;
      const chunks = [randomBytes(MiB), randomBytes(MiB), randomBytes(MiB)];
      const data = Buffer.concat(chunks);
      const location = await startChunkedUpload(a.url, 'race/three', chunks);
      const digest = sha256(data);
      expect((await fetch(`${a.url}${location}?digest=${digest}`, { method: 'PUT' })).status).toBe(201);
      // Another digest (as a client that lost track would send) through either process: no second join.
      expect((await fetch(`${b.url}${location}?digest=${sha256(data.subarray(1))}`, { method: 'PUT' })).status).toBe(404);
      expect((await fetch(`${b.url}${location}?digest=${digest}`, { method: 'PUT' })).status).toBe(201);
      expect(await pulled(b.url, 'race/three', digest)).toBe(md5(data));
      expect(await fsckProblems()).toEqual([]);
    });

    it('3: a second join in one directory (two commits past a seal at once) writes fresh names; fsck reports what both read', async () => {
      if (mode === 'move') return; // the driver's join is the same in both modes: once is enough
      const nesting = await swiftDriver(/container: (\S+)/.exec(storage.yaml)![1], { maxManifestSegments: 3 });
      try {
        const dirPath = paths.upload('_local', '6f1c1e9a-3b7d-4c1e-9a2b-5d4e3f2a1b0c');
        const bodies = [...Array.from({ length: 12 }, () => randomBytes(100 << 10)), ...Array.from({ length: 4 }, () => randomBytes(MiB + 1000))];
        const parts = [];
        for (const [i, body] of bodies.entries()) {
          const path = `${dirPath}/${i}.0000000${i % 10}`;
          await nesting.put(path, body);
          parts.push({ path, size: body.length, md5: md5(body) });
        }
        const whole = Buffer.concat(bodies);
        const large = Buffer.concat(bodies.slice(12));
        const [x, y] = [sha256(whole), sha256(large)];
        // A join of four small parts reads them as they are (too few to merge); a later join that merges them into
        // runs must leave them for it.
        const head = Buffer.concat(bodies.slice(0, 4));
        const z = sha256(head);
        await nesting.concat(paths.blobData('_local', z), parts.slice(0, 4));
        await nesting.concat(paths.blobData('_local', x), parts);
        const readByX = await nesting.segments(paths.blobData('_local', x));
        await nesting.concat(paths.blobData('_local', y), parts.slice(12));
        const readByY = await nesting.segments(paths.blobData('_local', y));
        expect(readByX.some((p) => /\/merged-/.test(p)) && readByX.some((p) => /\/manifest-/.test(p))).toBe(true);
        expect(readByY.filter((p) => /\/manifest-/.test(p) && readByX.includes(p))).toEqual([]);
        for (const [digest, data] of [[x, whole], [y, large], [z, head]] as const) {
          const { body } = await nesting.get(paths.blobData('_local', digest));
          const got: Buffer[] = [];
          for await (const piece of body) got.push(piece as Buffer);
          expect(md5(Buffer.concat(got))).toBe(md5(data));
        }
        const shared = (await fsckProblems()).filter((p) => p.kind === 'shared').map((p) => p.path).sort();
        expect(shared).toEqual(parts.slice(12).map((p) => p.path).sort());
        for (const d of [x, y, z]) await nesting.delete(paths.blobData('_local', d));
        expect(await fsckProblems()).toEqual([]);
      } finally {
        await nesting.close();
      }
    });

    it('4: the cancel that follows a failed monolithic commit leaves what the blob reads from', async () => {
      // A process whose commit stops after its join (the repository link fails once): the cancel then follows.
      let armed = true;
      const inner = await swiftDriver(/container: (\S+)/.exec(storage.yaml)![1]);
      const failing: TestServer = await startServer(
        overriding(inner, {
          async put(path, body, opts) {
            if (armed && path.includes('/_blobs/')) {
              armed = false;
              throw new Error('injected: the repository link failed');
            }
            return inner.put(path, body, opts);
          },
        }),
        undefined,
        { commit: mode },
      );
      try {
        const data = randomBytes(9 * MiB + 5); // one object past minJoinedSize: joined in place in link mode
        const digest = sha256(data);
        const res = await fetch(`${failing.url}/v2/race/four/blobs/uploads/?digest=${digest}`, { method: 'POST', body: new Uint8Array(data), headers: { 'Content-Length': String(data.length) } });
        expect(res.status).toBe(500);
        expect(await pulled(servers[0].url, 'race/four', digest)).toBe(404); // not linked to the repository
        expect(await pushBlob(servers[1].url, 'race/four', data)).toBe(digest); // the client's retry
        for (const s of servers) expect(await pulled(s.url, 'race/four', digest)).toBe(md5(data));
        expect(await fsckProblems()).toEqual([]);
      } finally {
        await failing.close();
      }
    });
  });
}

describe('the same paths on the filesystem (processes lock there; the seal holds as well)', () => {
  it('the cancel that follows a failed monolithic commit leaves the blob whole, and a sealed upload is gone', async () => {
    const root = await mkdtemp(join(tmpdir(), 'berth-races-fs-'));
    let armed = true;
    const inner = await FilesystemDriver.open(root);
    const failing = await startServer(
      overriding(inner, {
        async put(path, body, opts) {
          if (armed && path.includes('/_blobs/')) {
            armed = false;
            throw new Error('injected: the repository link failed');
          }
          return inner.put(path, body, opts);
        },
      }),
    );
    try {
      const data = randomBytes(300_000);
      const digest = sha256(data);
      const res = await fetch(`${failing.url}/v2/race/fs/blobs/uploads/?digest=${digest}`, { method: 'POST', body: new Uint8Array(data) });
      expect(res.status).toBe(500);
      expect(await pushBlob(failing.url, 'race/fs', data)).toBe(digest);
      expect(await pulled(failing.url, 'race/fs', digest)).toBe(md5(data));

      const location = await startChunkedUpload(failing.url, 'race/fs', [data]);
      expect((await fetch(`${failing.url}${location}?digest=${digest}`, { method: 'PUT' })).status).toBe(201);
      expect((await fetch(`${failing.url}${location}`, { method: 'PATCH', headers: { 'Content-Range': `${data.length}-${data.length}` }, body: 'x' })).status).toBe(404);
      expect((await fetch(`${failing.url}${location}`, { method: 'DELETE' })).status).toBe(404);
      expect((await new Fsck(inner).check('_local')).problems).toEqual([]);
    } finally {
      await failing.close();
      await rm(root, { recursive: true, force: true });
    }
  });
});
