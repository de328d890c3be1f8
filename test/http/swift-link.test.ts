/**
 * commit: link on a real Swift: chunks joined where they were written, the claim that replaces the record, the
 * races and retries of a commit, and prune and fsck over both layouts in one container (an operator may switch).
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Fsck } from '../../src/registry/fsck.js';
import { Pruner, type PruneOptions } from '../../src/registry/prune.js';
import type { StorageDriver } from '../../src/storage/driver.js';
import { md5, overriding, pushBlob, sha256, startChunkedUpload, startServer, type TestServer } from '../helpers/server.js';
import { dropContainer, freshContainer, swiftDriver, swiftRaw } from '../helpers/swift.js';

const SEGMENT = 2 * 1024 * 1024;
const HOUR = 3600;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const silent = { debug() {}, info() {}, warn() {} };
/** Lets storage timestamps (whole seconds on Swift) of what comes before and after differ; not a timing assertion. */
const pause = (ms = 1100) => new Promise((r) => setTimeout(r, ms));

let container: string;
let link: TestServer;
let move: TestServer;
/** Link mode over a driver that fails the first delete of a record once armed: a commit that stops after its join. */
let crashing: TestServer;
let armed = false;

beforeAll(async () => {
  container = freshContainer();
  link = await startServer(await swiftDriver(container, { segmentSize: SEGMENT }), undefined, { commit: 'link' });
  move = await startServer(await swiftDriver(container, { segmentSize: SEGMENT }));
  const inner = await swiftDriver(container, { segmentSize: SEGMENT });
  const failRecordDelete: Partial<StorageDriver> = {
    async delete(path: string) {
      if (armed && path.endsWith('/metadata')) {
        armed = false;
        throw new Error('injected: the process stopped before removing the record');
      }
      return inner.delete(path);
    },
  };
  crashing = await startServer(overriding(inner, failRecordDelete), undefined, { commit: 'link' });
});
afterAll(async () => {
  for (const s of [link, move, crashing]) await s?.close();
  await dropContainer(container);
});

async function names(prefix: string): Promise<string[]> {
  const res = await swiftRaw(`${container}?format=json&prefix=${encodeURIComponent(prefix)}`);
  return res.status === 204 ? [] : ((await res.json()) as { name: string }[]).map((o) => o.name);
}
async function sloSegments(digest: string): Promise<string[]> {
  const res = await swiftRaw(`${container}/_local/blobs/${digest}/data?multipart-manifest=get&format=raw`);
  if (res.status !== 200) return [];
  if (res.headers.get('x-static-large-object') !== 'True') return [];
  return ((await res.json()) as { path: string }[]).map((m) => m.path.slice(container.length + 2));
}
/** Upload directories that hold anything, by id. */
async function uploadDirs(): Promise<Map<string, string[]>> {
  const dirs = new Map<string, string[]>();
  for (const n of await names('_local/uploads/')) {
    const [, , id, rest] = n.split('/');
    dirs.set(id, [...(dirs.get(id) ?? []), rest]);
  }
  return dirs;
}
const uploadIdOf = (location: string) => /\/uploads\/([0-9a-f-]{36})/.exec(location)![1];

const commit = (s: TestServer, location: string, digest: string) => fetch(`${s.url}${location}?digest=${digest}`, { method: 'PUT' });
async function pulled(s: TestServer, repo: string, digest: string): Promise<string | number> {
  const res = await fetch(`${s.url}/v2/${repo}/blobs/${digest}`);
  return res.status === 200 ? md5(Buffer.from(await res.arrayBuffer())) : res.status;
}
async function putManifest(s: TestServer, repo: string, tag: string, layers: { digest: string; size: number }[]): Promise<string> {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', tag }));
  const doc = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: await pushBlob(s.url, repo, config), size: config.length },
    layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...l })),
  };
  const body = JSON.stringify(doc);
  const res = await fetch(`${s.url}/v2/${repo}/manifests/${tag}`, { method: 'PUT', headers: { 'Content-Type': OCI_MANIFEST }, body });
  expect(res.status).toBe(201);
  return sha256(body);
}

describe('commit: link on Swift', () => {
  it('joins the chunk objects where they were written: the same objects, no copy, the record replaced by a claim', async () => {
    const chunks = [randomBytes(3 << 20), randomBytes(100 << 10), randomBytes(5 << 20)];
    const data = Buffer.concat(chunks);
    const digest = sha256(data);
    const location = await startChunkedUpload(link.url, 'link/slo', chunks);
    const id = uploadIdOf(location);
    const written = (await uploadDirs()).get(id)!.filter((n) => n !== 'metadata');
    expect(written).toHaveLength(6); // 3 MiB -> 2 objects, 100 KiB -> 1, 5 MiB -> 3

    expect((await commit(link, location, digest)).status).toBe(201);
    const segments = await sloSegments(digest);
    expect(segments).toEqual(written.map((n) => `_local/uploads/${id}/${n}`));
    expect((await uploadDirs()).get(id)!.sort()).toEqual([...written, `owner.${digest}`, 'sealed'].sort());
    expect(await names(`_local/blobs/${digest}/parts/`)).toEqual([]);
    const claim = JSON.parse(Buffer.from(await (await swiftRaw(`${container}/_local/uploads/${id}/owner.${digest}`)).arrayBuffer()).toString());
    expect(claim.blob).toBe(digest);
    expect(await pulled(link, 'link/slo', digest)).toBe(md5(data));
    expect(await pulled(move, 'link/slo', digest)).toBe(md5(data)); // a move-mode process reads it the same way
    const range = await fetch(`${link.url}/v2/link/slo/blobs/${digest}`, { headers: { Range: `bytes=${(3 << 20) - 2}-${(3 << 20) + 1}` } });
    expect(Buffer.from(await range.arrayBuffer()).equals(data.subarray((3 << 20) - 2, (3 << 20) + 2))).toBe(true);
    expect((await fetch(`${link.url}${location}`)).status).toBe(404); // the upload is over
  });

  it('a blob of one object is a one-segment SLO in place from minJoinedSize (8 MiB) up, a plain object below it', async () => {
    const big = await startServer(await swiftDriver(container, { segmentSize: 16 << 20 }), undefined, { commit: 'link' });
    try {
      const large = randomBytes(9 << 20);
      const small = randomBytes((8 << 20) - 1);
      const [largeDigest, smallDigest] = [await pushBlob(big.url, 'link/one', large), await pushBlob(big.url, 'link/one', small)];
      const segments = await sloSegments(largeDigest);
      expect(segments).toHaveLength(1);
      expect(segments[0]).toMatch(/^_local\/uploads\/[0-9a-f-]{36}\/0\.[0-9a-f]{8}$/);
      const head = await swiftRaw(`${container}/_local/blobs/${smallDigest}/data`, { method: 'HEAD' });
      expect(head.headers.get('x-static-large-object')).toBeNull();
      expect(head.headers.get('etag')).toBe(md5(small));
      expect(await pulled(big, 'link/one', largeDigest)).toBe(md5(large));
      expect(await pulled(big, 'link/one', smallDigest)).toBe(md5(small));
    } finally {
      await big.close();
    }
  });

  it('a join past the manifest limit nests sub-manifests beside the chunks; sweeping the blob takes them all', async () => {
    const nesting = await startServer(await swiftDriver(container, { segmentSize: 1 << 20, maxManifestSegments: 3 }), undefined, { commit: 'link' });
    try {
      const data = randomBytes((7 << 20) + 5);
      const digest = await pushBlob(nesting.url, 'link/nested', data);
      const [{ path: top }] = (await (await swiftRaw(`${container}/_local/blobs/${digest}/data?multipart-manifest=get&format=raw`)).json()) as { path: string }[];
      const id = top.split('/')[4];
      const read = await nesting.registry.driver.segments!(`_local/blobs/${digest}/data`);
      expect(read.filter((p) => /\/manifest-\d+\.[0-9a-f]{8}$/.test(p)).length).toBeGreaterThan(1);
      expect(read.every((p) => p.startsWith(`_local/uploads/${id}/`))).toBe(true);
      expect(await pulled(nesting, 'link/nested', digest)).toBe(md5(data));
      expect(await new Fsck(nesting.registry.driver).check('_local').then((r) => r.problems.filter((p) => p.path.includes(digest)))).toEqual([]);
      await nesting.registry.driver.delete(`_local/blobs/${digest}/data`);
      expect((await uploadDirs()).get(id)).toEqual([`owner.${digest}`, 'sealed']);
    } finally {
      await nesting.close();
    }
  });

  it('a cross-repository mount of a linked blob links it without an upload directory, as in move mode', async () => {
    const data = randomBytes(3 << 20);
    const digest = await pushBlob(link.url, 'link/source', data);
    const before = [...(await uploadDirs()).keys()];
    const mount = await fetch(`${link.url}/v2/link/mounted/blobs/uploads/?mount=${digest}&from=link/source`, { method: 'POST' });
    expect(mount.status).toBe(201);
    expect([...(await uploadDirs()).keys()]).toEqual(before);
    expect(await pulled(link, 'link/mounted', digest)).toBe(md5(data));
  });

  it('merges runs of small chunks beside them (the originals stay for the directory), so the SLO is never throttled', async () => {
    const chunks = Array.from({ length: 30 }, () => randomBytes(100 << 10));
    const data = Buffer.concat(chunks);
    const digest = sha256(data);
    const location = await startChunkedUpload(link.url, 'link/small', chunks);
    const id = uploadIdOf(location);
    expect((await commit(link, location, digest)).status).toBe(201);
    const segments = await sloSegments(digest);
    expect(segments.length).toBeLessThan(10);
    for (const seg of segments) expect(seg.startsWith(`_local/uploads/${id}/`)).toBe(true);
    const names = (await uploadDirs()).get(id)!;
    const read = segments.map((p) => p.split('/').pop()!);
    expect(names).toEqual(expect.arrayContaining([...read, `owner.${digest}`, 'sealed']));
    // Merged originals stay where the upload wrote them (another join of the directory, racing past its seal, may
    // read them as they are): chunk objects only, and they go with the directory when the blob is deleted.
    const rest = names.filter((n) => !read.includes(n) && n !== `owner.${digest}` && n !== 'sealed');
    expect(rest.length).toBeGreaterThan(0);
    for (const n of rest) expect(n).toMatch(/^[0-9]+\.[0-9a-f]{8}$/);
    expect(await pulled(link, 'link/small', digest)).toBe(md5(data));
  });

  it('two uploads of one digest committing at once, in either mode: both 201, one intact blob, one directory kept', async () => {
    for (const [first, second] of [
      [link, link],
      [link, move],
    ]) {
      const data = randomBytes(3 * SEGMENT + 12345);
      const digest = sha256(data);
      const halves = [data.subarray(0, SEGMENT + 7), data.subarray(SEGMENT + 7)];
      const locations = await Promise.all([startChunkedUpload(first.url, 'link/race', halves), startChunkedUpload(second.url, 'link/race', [data])]);
      const before = new Set((await uploadDirs()).keys());
      const commits = await Promise.all([commit(first, locations[0], digest), commit(second, locations[1], digest)]);
      expect(commits.map((r) => r.status)).toEqual([201, 201]);
      expect(await pulled(link, 'link/race', digest)).toBe(md5(data));
      const ours = locations.map(uploadIdOf);
      const left = [...(await uploadDirs())].filter(([id]) => ours.includes(id) || !before.has(id));
      const segments = await sloSegments(digest);
      // Whichever join won, what the blob reads from is one upload's directory or the blob's own parts, never both.
      const readFrom = new Set(segments.map((p) => p.split('/').slice(0, 3).join('/')));
      expect(readFrom.size).toBe(1);
      for (const [, objects] of left) expect(objects).not.toContain('metadata');
      // The loser's directory is removed by its commit, unless its join replaced the winner's after the winner's
      // check (Swift's create-only is not atomic): then prune keeps only the directory the blob reads from.
      const readers = left.filter(([id]) => readFrom.has(`_local/uploads/${id}`));
      expect(readers.length).toBe([...readFrom][0].includes('/uploads/') ? 1 : 0);
    }
  });

  it('a commit that joined the blob but stopped before its record went is finished by the retry, segments kept', async () => {
    const data = randomBytes(2 * SEGMENT + 999);
    const digest = sha256(data);
    const location = await startChunkedUpload(crashing.url, 'link/retry', [data]);
    armed = true;
    expect((await commit(crashing, location, digest)).status).toBe(500);
    const id = uploadIdOf(location);
    expect((await uploadDirs()).get(id)).toContain('metadata');
    expect((await commit(crashing, location, digest)).status).toBe(201);
    const objects = (await uploadDirs()).get(id)!;
    expect(objects).not.toContain('metadata');
    expect(objects).toContain(`owner.${digest}`);
    expect((await sloSegments(digest)).every((p) => p.startsWith(`_local/uploads/${id}/`))).toBe(true);
    expect(await pulled(link, 'link/retry', digest)).toBe(md5(data));
  });

  it('prune over both layouts: kept images stay whole, swept blobs take their segments, and their claims go in the same run', async () => {
    const repo = 'link/prune';
    const layer = (n: number) => randomBytes(n);
    // Kept: an image of a linked layer, a layer whose commit stopped after its join, and a moved layer.
    const kept = [layer(5 << 20), layer(3 << 20), layer(4 << 20)];
    const keptDigests = kept.map(sha256);
    await pushBlob(link.url, repo, kept[0]);
    const stopped = await startChunkedUpload(crashing.url, repo, [kept[1]]);
    armed = true;
    expect((await commit(crashing, stopped, keptDigests[1])).status).toBe(500);
    await pushBlob(move.url, repo, kept[2]);
    const keptLayers = kept.map((l, i) => ({ digest: keptDigests[i], size: l.length }));
    // Expiring: an image of one linked layer, and a linked blob no manifest names.
    const old = layer(5 << 20);
    const oldDigest = await pushBlob(link.url, repo, old);
    await putManifest(link, repo, 'old', [{ digest: oldDigest, size: old.length }]);
    const loose = await pushBlob(link.url, repo, layer(3 << 20));
    const abandoned = uploadIdOf(await startChunkedUpload(link.url, repo, [layer(1000)]));
    const active = await startChunkedUpload(link.url, repo, [layer(1000)]);
    const dirOf = async (digest: string) => (await sloSegments(digest))[0]?.split('/')[2];
    const oldDir = await dirOf(oldDigest);
    const looseDir = await dirOf(loose);
    const keptDirs = [await dirOf(keptDigests[0]), uploadIdOf(stopped)];
    await pause();
    const cutoff = Date.now();
    await pause();
    const keptManifest = await putManifest(link, repo, 'kept', keptLayers);
    // The active upload's first chunk is old; its record, rewritten by this chunk, is not.
    const more = await fetch(`${link.url}${active}`, { method: 'PATCH', headers: { 'Content-Range': '1000-1999' }, body: new Uint8Array(layer(1000)) });
    expect(more.status).toBe(202);

    const prune = (opts: Partial<PruneOptions> = {}) =>
      new Pruner(link.registry.driver).prune('_local', { expiration: HOUR, uploadExpiry: HOUR, now: new Date(cutoff + HOUR * 1000), log: silent, lockSettleMs: 10, ...opts });
    const first = await prune();
    expect(first.failures).toBe(0);
    for (const [i, d] of keptDigests.entries()) expect(await pulled(link, repo, d)).toBe(md5(kept[i]));
    expect((await fetch(`${link.url}/v2/${repo}/manifests/kept`)).status).toBe(200);
    expect(await pulled(link, repo, oldDigest)).toBe(404);
    expect(await pulled(link, repo, loose)).toBe(404);
    let dirs = await uploadDirs();
    // Swept blobs took their segments, and their claims and seals went in the same run.
    expect(dirs.has(oldDir)).toBe(false);
    expect(dirs.has(looseDir)).toBe(false);
    expect(first.linked.deleted).toBeGreaterThanOrEqual(2);
    expect(dirs.has(abandoned)).toBe(false);
    expect(dirs.get(uploadIdOf(active))).toContain('metadata');
    // The stopped commit's record went; the segments its blob reads from stayed.
    expect(dirs.get(keptDirs[1])).not.toContain('metadata');
    expect(dirs.get(keptDirs[1])).toContain(`owner.${keptDigests[1]}`);

    const second = await prune();
    expect(second.failures).toBe(0);
    dirs = await uploadDirs();
    expect(dirs.has(oldDir)).toBe(false);
    expect(dirs.has(looseDir)).toBe(false);
    for (const [i, id] of keptDirs.entries()) expect(dirs.get(id)).toContain(`owner.${keptDigests[i]}`);
    for (const [i, d] of keptDigests.entries()) expect(await pulled(move, repo, d)).toBe(md5(kept[i]));
    expect(keptManifest).toMatch(/^sha256:/);
    const fsck = await new Fsck(link.registry.driver).check('_local');
    expect(fsck.problems).toEqual([]);
  });

  it('fsck finds a damaged segment in either layout, and repair takes both out of service', async () => {
    const linked = randomBytes(5 << 20);
    const moved = randomBytes(5 << 20);
    const linkedDigest = await pushBlob(link.url, 'link/fsck', linked);
    const movedDigest = await pushBlob(move.url, 'link/fsck', moved);
    const damaged: string[] = [];
    for (const d of [linkedDigest, movedDigest]) {
      const seg = (await sloSegments(d))[1];
      const size = Number((await swiftRaw(`${container}/${seg}`, { method: 'HEAD' })).headers.get('content-length'));
      expect((await swiftRaw(`${container}/${seg}`, { method: 'PUT', body: new Uint8Array(randomBytes(size)) })).status).toBe(201);
      damaged.push(seg);
    }
    expect(damaged[0]).toMatch(/^_local\/uploads\//);
    expect(damaged[1]).toMatch(new RegExp(`^_local/blobs/${movedDigest}/parts/`));
    const report = await new Fsck(link.registry.driver).check('_local', { repair: true });
    for (const seg of damaged) expect(report.problems.some((p) => p.kind === 'segment' && p.detail.includes(seg))).toBe(true);
    expect(await pulled(link, 'link/fsck', linkedDigest)).toBe(404);
    expect(await pulled(link, 'link/fsck', movedDigest)).toBe(404);
  });
});
