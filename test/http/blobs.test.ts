import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { md5, pushBlob, rawGet, sha256, type TestServer } from '../helpers/server.js';
import { BACKENDS, startServerOn } from '../helpers/swift.js';

let s: TestServer;

const errorCode = async (res: Response) => ((await res.json()) as { errors: { code: string }[] }).errors[0].code;

async function startUpload(repo: string) {
  const res = await fetch(`${s.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  expect(res.status).toBe(202);
  expect(res.headers.get('range')).toBe('0-0');
  const id = res.headers.get('docker-upload-uuid')!;
  expect(res.headers.get('location')).toBe(`/v2/${repo}/blobs/uploads/${id}`);
  return `${s.url}${res.headers.get('location')}`;
}

describe.each(BACKENDS)('blob API on %s', (backend) => {
  beforeAll(async () => {
    s = await startServerOn(backend);
  });
  afterAll(async () => s.close());

  it('GET /v2/ answers 200 with the API version header', async () => {
    const res = await fetch(`${s.url}/v2/`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-distribution-api-version')).toBe('registry/2.0');
  });

  it('a monolithic POST stores the blob; HEAD and GET serve it with its digest', async () => {
    const data = randomBytes(100_000);
    const digest = await pushBlob(s.url, 'mono/app', data);
    const head = await fetch(`${s.url}/v2/mono/app/blobs/${digest}`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe('100000');
    expect(head.headers.get('docker-content-digest')).toBe(digest);
    const get = await fetch(`${s.url}/v2/mono/app/blobs/${digest}`);
    expect(md5(Buffer.from(await get.arrayBuffer()))).toBe(md5(data));
  });

  it('a chunked upload (PATCH with Content-Range, then PUT with the last chunk) gives the right blob', async () => {
    const data = randomBytes(300_000);
    const loc = await startUpload('chunked');
    let offset = 0;
    for (const size of [100_000, 150_000]) {
      const res = await fetch(loc, {
        method: 'PATCH',
        headers: { 'Content-Range': `${offset}-${offset + size - 1}`, 'Content-Type': 'application/octet-stream' },
        body: data.subarray(offset, offset + size),
      });
      expect(res.status).toBe(202);
      offset += size;
      expect(res.headers.get('range')).toBe(`0-${offset - 1}`);
    }
    const status = await fetch(loc);
    expect(status.status).toBe(204);
    expect(status.headers.get('range')).toBe('0-249999');
    const digest = sha256(data);
    const put = await fetch(`${loc}?digest=${digest}`, { method: 'PUT', body: data.subarray(offset) });
    expect(put.status).toBe(201);
    expect(put.headers.get('docker-content-digest')).toBe(digest);
    expect(put.headers.get('location')).toBe(`/v2/chunked/blobs/${digest}`);
    const get = await fetch(`${s.url}/v2/chunked/blobs/${digest}`);
    expect(md5(Buffer.from(await get.arrayBuffer()))).toBe(md5(data));
  });

  it('a streamed PATCH without Content-Range, then an empty PUT, completes the upload', async () => {
    const data = randomBytes(70_000);
    const loc = await startUpload('streamed');
    const patch = await fetch(loc, { method: 'PATCH', body: data });
    expect(patch.status).toBe(202);
    const put = await fetch(`${loc}?digest=${sha256(data)}`, { method: 'PUT' });
    expect(put.status).toBe(201);
  });

  it('a chunk at the wrong offset gets 416 and changes nothing', async () => {
    const loc = await startUpload('offset');
    await fetch(loc, { method: 'PATCH', headers: { 'Content-Range': '0-9' }, body: Buffer.alloc(10, 1) });
    const bad = await fetch(loc, { method: 'PATCH', headers: { 'Content-Range': '20-29' }, body: Buffer.alloc(10, 2) });
    expect(bad.status).toBe(416);
    expect(await errorCode(bad)).toBe('RANGE_INVALID');
    const status = await fetch(loc);
    expect(status.headers.get('range')).toBe('0-9');
    const put = await fetch(`${loc}?digest=${sha256(Buffer.alloc(10, 1))}`, { method: 'PUT' });
    expect(put.status).toBe(201);
  });

  it('a PUT whose digest does not match the data fails with DIGEST_INVALID and stores nothing', async () => {
    const loc = await startUpload('wrongdigest');
    await fetch(loc, { method: 'PATCH', body: Buffer.from('hello') });
    const wrong = sha256('other');
    const put = await fetch(`${loc}?digest=${wrong}`, { method: 'PUT' });
    expect(put.status).toBe(400);
    expect(await errorCode(put)).toBe('DIGEST_INVALID');
    expect((await fetch(`${s.url}/v2/wrongdigest/blobs/${wrong}`, { method: 'HEAD' })).status).toBe(404);
  });

  it('Range requests get 206 with Content-Range; an unsatisfiable range gets 416', async () => {
    const data = randomBytes(1000);
    const digest = await pushBlob(s.url, 'ranges', data);
    const res = await fetch(`${s.url}/v2/ranges/blobs/${digest}`, { headers: { Range: 'bytes=100-199' } });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe('bytes 100-199/1000');
    expect(Buffer.from(await res.arrayBuffer()).equals(data.subarray(100, 200))).toBe(true);
    const suffix = await fetch(`${s.url}/v2/ranges/blobs/${digest}`, { headers: { Range: 'bytes=-10' } });
    expect(Buffer.from(await suffix.arrayBuffer()).equals(data.subarray(990))).toBe(true);
    const bad = await fetch(`${s.url}/v2/ranges/blobs/${digest}`, { headers: { Range: 'bytes=5000-' } });
    expect(bad.status).toBe(416);
    expect(bad.headers.get('content-range')).toBe('bytes */1000');
  });

  it('a blob is visible only in repositories it was pushed or mounted to', async () => {
    const digest = await pushBlob(s.url, 'src/repo', randomBytes(500));
    expect((await fetch(`${s.url}/v2/other/repo/blobs/${digest}`, { method: 'HEAD' })).status).toBe(404);
    const miss = await fetch(`${s.url}/v2/other/repo/blobs/uploads/?mount=${digest}&from=nowhere`, { method: 'POST' });
    expect(miss.status).toBe(202);
    const mount = await fetch(`${s.url}/v2/other/repo/blobs/uploads/?mount=${digest}&from=src/repo`, { method: 'POST' });
    expect(mount.status).toBe(201);
    expect(mount.headers.get('location')).toBe(`/v2/other/repo/blobs/${digest}`);
    expect((await fetch(`${s.url}/v2/other/repo/blobs/${digest}`, { method: 'HEAD' })).status).toBe(200);
  });

  it('DELETE of a blob unlinks it from the repository', async () => {
    const digest = await pushBlob(s.url, 'deleteme', randomBytes(10));
    expect((await fetch(`${s.url}/v2/deleteme/blobs/${digest}`, { method: 'DELETE' })).status).toBe(202);
    const res = await fetch(`${s.url}/v2/deleteme/blobs/${digest}`);
    expect(res.status).toBe(404);
    expect(await errorCode(res)).toBe('BLOB_UNKNOWN');
  });

  it('cancelling an upload makes it unknown', async () => {
    const loc = await startUpload('cancel');
    expect((await fetch(loc, { method: 'DELETE' })).status).toBe(204);
    const res = await fetch(loc);
    expect(res.status).toBe(404);
    expect(await errorCode(res)).toBe('BLOB_UPLOAD_UNKNOWN');
  });

  it('an upload cannot be continued under another repository name', async () => {
    const loc = await startUpload('owner');
    const id = loc.split('/').pop();
    const res = await fetch(`${s.url}/v2/intruder/blobs/uploads/${id}`, { method: 'PATCH', body: 'x' });
    expect(res.status).toBe(404);
  });

  it('bad names, digests and upload ids are refused before touching storage', async () => {
    const bad = [
      [`/v2/UPPER/blobs/${sha256('x')}`, 400, 'NAME_INVALID'],
      ['/v2/app/blobs/sha256:abc', 400, 'DIGEST_INVALID'],
      [`/v2/app/blobs/md5:${'a'.repeat(32)}`, 405, 'UNSUPPORTED'],
      ['/v2/app/blobs/uploads/not-a-uuid', 404, 'BLOB_UPLOAD_UNKNOWN'],
      [`/v2/a%2F..%2Fb/blobs/${sha256('x')}`, 404, 'NAME_UNKNOWN'],
      [`/v2/../etc/blobs/${sha256('x')}`, 400, 'NAME_INVALID'],
      [`/v2/app/%2e%2e/blobs/${sha256('x')}`, 400, 'NAME_INVALID'],
    ] as const;
    for (const [path, status, code] of bad) {
      const res = await rawGet(s.url, path);
      expect(res.status, path).toBe(status);
      expect(JSON.parse(res.body).errors[0].code, path).toBe(code);
    }
  });

  it('Content-Length and Content-Range that disagree are refused', async () => {
    const loc = await startUpload('disagree');
    const res = await fetch(loc, { method: 'PATCH', headers: { 'Content-Range': '0-99' }, body: Buffer.alloc(10) });
    expect(res.status).toBe(400);
    expect(await errorCode(res)).toBe('SIZE_INVALID');
  });

  it('an empty blob can be pushed and pulled', async () => {
    const digest = await pushBlob(s.url, 'empty', Buffer.alloc(0));
    const res = await fetch(`${s.url}/v2/empty/blobs/${digest}`);
    expect(res.status).toBe(200);
    expect((await res.arrayBuffer()).byteLength).toBe(0);
  });

  it('pushing the same blob twice keeps one copy and both commits succeed', async () => {
    const data = randomBytes(5000);
    expect(await pushBlob(s.url, 'twice', data)).toBe(await pushBlob(s.url, 'twice', data));
  });
});
