/** Uploads on a real Swift as the design describes them: chunk objects, moves, an SLO under the blob's path. */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { md5, pushBlob, sha256, startChunkedUpload, startServer, type TestServer } from '../helpers/server.js';
import { dropContainer, freshContainer, swiftDriver, swiftRaw } from '../helpers/swift.js';

const SEGMENT = 2 * 1024 * 1024;
let s: TestServer;
let container: string;
beforeAll(async () => {
  container = freshContainer();
  s = await startServer(await swiftDriver(container, { segmentSize: SEGMENT }));
});
afterAll(async () => {
  await s.close();
  await dropContainer(container);
});

async function objects(prefix: string): Promise<{ name: string; bytes: number; hash: string }[]> {
  const res = await swiftRaw(`${container}?format=json&prefix=${encodeURIComponent(prefix)}`);
  return res.status === 204 ? [] : ((await res.json()) as { name: string; bytes: number; hash: string }[]);
}

/** What stays under a prefix besides upload seals (each commit leaves its seal for prune: processes cannot lock on Swift). */
async function unsealed(prefix: string): Promise<{ name: string; bytes: number; hash: string }[]> {
  return (await objects(prefix)).filter((o) => !o.name.endsWith('/sealed'));
}

describe('uploads on Swift', () => {
  it('chunks of 3 MiB, 100 KiB and 5 MiB become an SLO under the blob path, and nothing stays under uploads/', async () => {
    const chunks = [randomBytes(3 << 20), randomBytes(100 << 10), randomBytes(5 << 20)];
    const data = Buffer.concat(chunks);
    const digest = sha256(data);
    const location = await startChunkedUpload(s.url, 'swift/slo', chunks);
    // Chunks larger than the segment size were split into equal objects: 3 MiB -> 2, 100 KiB -> 1, 5 MiB -> 3.
    const chunkObjects = (await unsealed('_local/uploads/')).filter((o) => !o.name.endsWith('/metadata'));
    const third = Math.ceil((5 << 20) / 3);
    expect(chunkObjects.map((o) => o.bytes)).toEqual([3 << 19, 3 << 19, 100 << 10, third, third, (5 << 20) - 2 * third]);
    const put = await fetch(`${s.url}${location}?digest=${digest}`, { method: 'PUT' });
    expect(put.status).toBe(201);
    const head = await swiftRaw(`${container}/_local/blobs/${digest}/data`, { method: 'HEAD' });
    expect(head.headers.get('x-static-large-object')).toBe('True');
    expect(Number(head.headers.get('content-length'))).toBe(data.length);
    const manifest = (await (await swiftRaw(`${container}/_local/blobs/${digest}/data?multipart-manifest=get&format=raw`)).json()) as { path: string }[];
    expect(manifest).toHaveLength(6);
    for (const seg of manifest) expect(seg.path.startsWith(`/${container}/_local/blobs/${digest}/parts/`)).toBe(true);
    expect(await unsealed('_local/uploads/')).toEqual([]);
    const got = Buffer.from(await (await fetch(`${s.url}/v2/swift/slo/blobs/${digest}`)).arrayBuffer());
    expect(md5(got)).toBe(md5(data));
    const range = await fetch(`${s.url}/v2/swift/slo/blobs/${digest}`, { headers: { Range: `bytes=${(3 << 20) - 2}-${(3 << 20) + 1}` } });
    expect(range.status).toBe(206);
    expect(Buffer.from(await range.arrayBuffer()).equals(data.subarray((3 << 20) - 2, (3 << 20) + 2))).toBe(true);
  });

  it('a blob of one chunk is that chunk as a plain object at the blob path: no SLO, no parts, nothing under uploads/', async () => {
    const data = randomBytes(SEGMENT - 1000);
    const digest = await pushBlob(s.url, 'swift/plain', data);
    const head = await swiftRaw(`${container}/_local/blobs/${digest}/data`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('x-static-large-object')).toBeNull();
    expect(head.headers.get('etag')).toBe(md5(data));
    expect((await objects(`_local/blobs/${digest}/`)).map((o) => o.name)).toEqual([`_local/blobs/${digest}/data`, `_local/blobs/${digest}/touched`]);
    expect(await unsealed('_local/uploads/')).toEqual([]);
    expect(md5(Buffer.from(await (await fetch(`${s.url}/v2/swift/plain/blobs/${digest}`)).arrayBuffer()))).toBe(md5(data));
  });

  it('one-chunk and two-chunk uploads of one digest committing at once: both succeed, one readable blob stays', async () => {
    for (let round = 0; round < 4; round++) {
      const data = randomBytes(SEGMENT);
      const digest = sha256(data);
      // One PATCH of the segment size is one chunk (a plain object at the blob path); two halves are an SLO.
      const locations = await Promise.all([startChunkedUpload(s.url, 'swift/race', [data]), startChunkedUpload(s.url, 'swift/race', [data.subarray(0, SEGMENT / 2), data.subarray(SEGMENT / 2)])]);
      const commits = await Promise.all(locations.map((l) => fetch(`${s.url}${l}?digest=${digest}`, { method: 'PUT' })));
      expect(commits.map((r) => r.status)).toEqual([201, 201]);
      expect(md5(Buffer.from(await (await fetch(`${s.url}/v2/swift/race/blobs/${digest}`)).arrayBuffer()))).toBe(md5(data));
      expect(await unsealed('_local/uploads/')).toEqual([]);
      const partDirs = new Set((await objects(`_local/blobs/${digest}/parts/`)).map((o) => o.name.split('/')[4]));
      expect(partDirs.size).toBeLessThanOrEqual(1);
    }
  });

  it('chunks just over the segment size leave no tiny segments: each is cut in equal halves', async () => {
    const chunks = Array.from({ length: 12 }, () => randomBytes(SEGMENT + 100));
    const data = Buffer.concat(chunks);
    const digest = sha256(data);
    const location = await startChunkedUpload(s.url, 'swift/halves', chunks);
    const put = await fetch(`${s.url}${location}?digest=${digest}`, { method: 'PUT' });
    expect(put.status).toBe(201);
    const manifest = (await (await swiftRaw(`${container}/_local/blobs/${digest}/data?multipart-manifest=get&format=raw`)).json()) as { size_bytes: number }[];
    expect(manifest.map((m) => m.size_bytes)).toEqual(Array.from({ length: 24 }, () => SEGMENT / 2 + 50));
    const got = Buffer.from(await (await fetch(`${s.url}/v2/swift/halves/blobs/${digest}`)).arrayBuffer());
    expect(md5(got)).toBe(md5(data));
  });

  it('a client cut off inside one PATCH that spans several segments keeps the complete ones and resumes after them', async () => {
    const data = randomBytes(7 << 20);
    const digest = sha256(data);
    const start = await fetch(`${s.url}/v2/swift/cut/blobs/uploads/`, { method: 'POST' });
    const location = start.headers.get('location')!;
    await new Promise<void>((resolve) => {
      const req = http.request(`${s.url}${location}`, { method: 'PATCH', headers: { 'Content-Length': data.length } });
      req.on('error', () => resolve());
      req.write(data.subarray(0, 5 << 20), () => setTimeout(() => (req.destroy(), resolve()), 300));
    });
    // 7 MiB is cut into four objects of 1.75 MiB: the server finishes the two complete ones and drops the third.
    const kept = 2 * Math.ceil(data.length / 4);
    let range = '';
    for (let i = 0; i < 100 && range !== `0-${kept - 1}`; i++) {
      await new Promise((r) => setTimeout(r, 100));
      range = (await fetch(`${s.url}${location}`)).headers.get('range') ?? '';
    }
    expect(range).toBe(`0-${kept - 1}`);
    const rest = await fetch(`${s.url}${location}`, {
      method: 'PATCH',
      headers: { 'Content-Range': `${kept}-${data.length - 1}`, 'Content-Type': 'application/octet-stream' },
      body: new Uint8Array(data.subarray(kept)),
    });
    expect(rest.status).toBe(202);
    const put = await fetch(`${s.url}${rest.headers.get('location')}?digest=${digest}`, { method: 'PUT' });
    expect(put.status).toBe(201);
    const got = Buffer.from(await (await fetch(`${s.url}/v2/swift/cut/blobs/${digest}`)).arrayBuffer());
    expect(md5(got)).toBe(md5(data));
  });

  // Small runs merge into objects of at least 1 MiB, or Swift throttles the reads. 150 chunks of 8 KB (1.2 MB) need
  // the same merges as the 1,200 of 1 KB this test used to push (256 s of the suite); more than 1000 segments
  // nesting in sub-manifests is the driver suite's to show (test/drivers/swift.test.ts).
  it('150 small chunks commit to a blob that reads back whole, with at most 9 small segments', async () => {
    const chunks = Array.from({ length: 150 }, () => randomBytes(8000));
    const data = Buffer.concat(chunks);
    const digest = sha256(data);
    const location = await startChunkedUpload(s.url, 'swift/many', chunks);
    const put = await fetch(`${s.url}${location}?digest=${digest}`, { method: 'PUT' });
    expect(put.status).toBe(201);
    const manifest = (await (await swiftRaw(`${container}/_local/blobs/${digest}/data?multipart-manifest=get&format=raw`)).json()) as { size_bytes: number }[];
    expect(manifest.slice(0, -1).filter((m) => m.size_bytes < 1 << 20).length).toBeLessThan(10);
    const got = Buffer.from(await (await fetch(`${s.url}/v2/swift/many/blobs/${digest}`)).arrayBuffer());
    expect(md5(got)).toBe(md5(data));
  }, 300_000);

  it('two uploads of the same blob committing at once leave one intact blob', async () => {
    const data = randomBytes(3 << 20);
    const digest = sha256(data);
    const locations = await Promise.all([0, 1].map(() => startChunkedUpload(s.url, 'swift/same', [data.subarray(0, 1 << 20), data.subarray(1 << 20)])));
    const puts = await Promise.all(locations.map((l) => fetch(`${s.url}${l}?digest=${digest}`, { method: 'PUT' })));
    expect(puts.map((p) => p.status)).toEqual([201, 201]);
    const got = Buffer.from(await (await fetch(`${s.url}/v2/swift/same/blobs/${digest}`)).arrayBuffer());
    expect(md5(got)).toBe(md5(data));
    expect(await unsealed('_local/uploads/')).toEqual([]);
  });

  it('a chunk object altered in Swift between upload and commit is detected; the blob never appears', async () => {
    const chunks = [randomBytes(1 << 20), randomBytes(4096)];
    const data = Buffer.concat(chunks);
    const digest = sha256(data);
    const location = await startChunkedUpload(s.url, 'swift/tampered', chunks);
    const chunk = (await unsealed('_local/uploads/')).find((o) => o.bytes === 4096)!;
    const altered = await swiftRaw(`${container}/${chunk.name}`, { method: 'PUT', body: randomBytes(4096) });
    expect(altered.status).toBe(201);
    const put = await fetch(`${s.url}${location}?digest=${digest}`, { method: 'PUT' });
    expect(put.status).toBeGreaterThanOrEqual(400);
    expect((await fetch(`${s.url}/v2/swift/tampered/blobs/${digest}`, { method: 'HEAD' })).status).toBe(404);
    expect((await swiftRaw(`${container}/_local/blobs/${digest}/data`, { method: 'HEAD' })).status).toBe(404);
  });

  it('with a temp-URL key, blob GETs redirect to a signed Swift URL that serves the bytes and ranges without a token', async () => {
    const c = freshContainer();
    const redirecting = await startServer(await swiftDriver(c, { tempUrlKey: 'a-temp-url-key-for-tests' }), undefined, { blobRedirectSeconds: 60 });
    try {
      const data = randomBytes((1 << 20) + 5);
      const digest = await pushBlob(redirecting.url, 'swift/redirect', data);
      const res = await fetch(`${redirecting.url}/v2/swift/redirect/blobs/${digest}`, { redirect: 'manual' });
      expect(res.status).toBe(307);
      const location = res.headers.get('location')!;
      expect(location).toMatch(/temp_url_sig=[0-9a-f]{64}&temp_url_expires=\d+$/);
      expect(res.headers.get('docker-content-digest')).toBe(digest);
      const direct = await fetch(location);
      expect(direct.status).toBe(200);
      expect(md5(Buffer.from(await direct.arrayBuffer()))).toBe(md5(data));
      const ranged = await fetch(location, { headers: { Range: 'bytes=1048570-1048580' } });
      expect(ranged.status).toBe(206);
      expect(Buffer.from(await ranged.arrayBuffer()).equals(data.subarray(1048570, 1048581))).toBe(true);
      // A tampered signature is refused by Swift; HEAD is still answered by Berth.
      const tampered = location.replace(/temp_url_sig=([0-9a-f])/, (_m, ch: string) => `temp_url_sig=${ch === '0' ? '1' : '0'}`);
      expect((await fetch(tampered)).status).toBe(401);
      expect((await fetch(`${redirecting.url}/v2/swift/redirect/blobs/${digest}`, { method: 'HEAD' })).status).toBe(200);
    } finally {
      await redirecting.close();
      await dropContainer(c);
    }
  });
});
