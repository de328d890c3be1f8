import { createHash, randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paths } from '../../src/registry/paths.js';
import { parseRecord } from '../../src/registry/upload-record.js';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DriverError } from '../../src/storage/driver.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { md5, overriding, pushBlob, rawGet, sha256, startServer, type TestServer } from '../helpers/server.js';
import { IN_PROCESS_BACKENDS, startServerOn } from '../helpers/swift.js';

let s: TestServer;

const errorCode = async (res: Response) => ((await res.json()) as { errors: { code: string }[] }).errors[0].code;
const sha512 = (data: Buffer | string) => `sha512:${createHash('sha512').update(data).digest('hex')}`;

/** A request whose body is written piece by piece with no Content-Length (chunked), as fetch cannot send one. */
function chunkedRequest(url: string, method: string, headers: Record<string, string>, pieces: Buffer[]): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('error', reject);
    for (const p of pieces) req.write(p);
    req.end();
  });
}

async function startUpload(repo: string) {
  const res = await fetch(`${s.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  expect(res.status).toBe(202);
  expect(res.headers.get('range')).toBe('0-0');
  const id = res.headers.get('docker-upload-uuid')!;
  expect(res.headers.get('location')).toBe(`/v2/${repo}/blobs/uploads/${id}`);
  return `${s.url}${res.headers.get('location')}`;
}

describe.each(IN_PROCESS_BACKENDS)('blob API on %s', (backend) => {
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

  it('the upload record keeps an md5 per chunk only where storage reports one to check it against', async () => {
    const pieces = [randomBytes(5 << 20), randomBytes(1000)]; // one pooled md5, one inline
    const loc = await startUpload('md5s');
    let offset = 0;
    for (const p of pieces) {
      const res = await fetch(loc, { method: 'PATCH', headers: { 'Content-Range': `${offset}-${offset + p.length - 1}` }, body: new Uint8Array(p) });
      expect(res.status).toBe(202);
      offset += p.length;
    }
    const id = loc.slice(loc.lastIndexOf('/') + 1);
    const record = parseRecord(await s.registry.driver.read(paths.uploadRecord('_local', id)));
    const expected = backend === 'swift' ? pieces.map(md5) : pieces.map(() => undefined);
    expect(record.chunks.map((c) => c.md5)).toEqual(expected);
    expect(s.registry.driver.reportsMd5).toBe(backend === 'swift');
    const data = Buffer.concat(pieces);
    expect((await fetch(`${loc}?digest=${sha256(data)}`, { method: 'PUT' })).status).toBe(201);
    expect(md5(Buffer.from(await (await fetch(`${s.url}/v2/md5s/blobs/${sha256(data)}`)).arrayBuffer()))).toBe(md5(data));
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

  it('an inverted Range (bytes=500-0) gets 416 with Content-Range bytes */<size>, on GET and HEAD', async () => {
    const data = randomBytes(2048);
    const digest = await pushBlob(s.url, 'ranges/inverted', data);
    for (const method of ['GET', 'HEAD']) {
      const res = await fetch(`${s.url}/v2/ranges/inverted/blobs/${digest}`, { method, headers: { Range: 'bytes=500-0' } });
      expect(res.status, method).toBe(416);
      expect(res.headers.get('content-range'), method).toBe('bytes */2048');
      if (method === 'GET') expect(await errorCode(res)).toBe('RANGE_INVALID');
    }
    // A one-byte range at the same start is still served.
    const one = await fetch(`${s.url}/v2/ranges/inverted/blobs/${digest}`, { headers: { Range: 'bytes=500-500' } });
    expect(one.status).toBe(206);
    expect(Buffer.from(await one.arrayBuffer()).equals(data.subarray(500, 501))).toBe(true);
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

  it('a monolithic POST with a sha512 digest commits and the blob is served under that digest', async () => {
    const data = randomBytes(100_000);
    const digest = sha512(data);
    const post = await fetch(`${s.url}/v2/sha512/mono/blobs/uploads/?digest=${digest}`, { method: 'POST', body: data });
    expect(post.status).toBe(201);
    expect(post.headers.get('docker-content-digest')).toBe(digest);
    expect(post.headers.get('location')).toBe(`/v2/sha512/mono/blobs/${digest}`);
    const head = await fetch(`${s.url}/v2/sha512/mono/blobs/${digest}`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe('100000');
    expect(head.headers.get('docker-content-digest')).toBe(digest);
    const get = await fetch(`${s.url}/v2/sha512/mono/blobs/${digest}`);
    expect(get.status).toBe(200);
    expect(get.headers.get('docker-content-digest')).toBe(digest);
    expect(Buffer.from(await get.arrayBuffer()).equals(data)).toBe(true);
    // The same bytes are not also stored under their sha256.
    expect((await fetch(`${s.url}/v2/sha512/mono/blobs/${sha256(data)}`, { method: 'HEAD' })).status).toBe(404);
  });

  it('a chunked upload finished with a sha512 digest commits and the blob is served under that digest', async () => {
    const data = randomBytes(250_000);
    const loc = await startUpload('sha512/chunked');
    let offset = 0;
    for (const size of [100_000, 100_000]) {
      const res = await fetch(loc, { method: 'PATCH', headers: { 'Content-Range': `${offset}-${offset + size - 1}` }, body: data.subarray(offset, offset + size) });
      expect(res.status).toBe(202);
      offset += size;
    }
    const digest = sha512(data);
    const put = await fetch(`${loc}?digest=${digest}`, { method: 'PUT', body: data.subarray(offset) });
    expect(put.status).toBe(201);
    expect(put.headers.get('docker-content-digest')).toBe(digest);
    expect(put.headers.get('location')).toBe(`/v2/sha512/chunked/blobs/${digest}`);
    const get = await fetch(`${s.url}/v2/sha512/chunked/blobs/${digest}`);
    expect(get.status).toBe(200);
    expect(Buffer.from(await get.arrayBuffer()).equals(data)).toBe(true);
    const range = await fetch(`${s.url}/v2/sha512/chunked/blobs/${digest}`, { headers: { Range: 'bytes=99990-100009' } });
    expect(range.status).toBe(206);
    expect(Buffer.from(await range.arrayBuffer()).equals(data.subarray(99_990, 100_010))).toBe(true);
  });

  it('a sha512 digest that does not match the data fails with DIGEST_INVALID and stores nothing, monolithic or chunked', async () => {
    const data = randomBytes(5000);
    const wrong = sha512('other');
    const post = await fetch(`${s.url}/v2/sha512/wrong/blobs/uploads/?digest=${wrong}`, { method: 'POST', body: data });
    expect(post.status).toBe(400);
    expect(await errorCode(post)).toBe('DIGEST_INVALID');

    const loc = await startUpload('sha512/wrong');
    expect((await fetch(loc, { method: 'PATCH', headers: { 'Content-Range': '0-4999' }, body: data })).status).toBe(202);
    const put = await fetch(`${loc}?digest=${wrong}`, { method: 'PUT' });
    expect(put.status).toBe(400);
    expect(await errorCode(put)).toBe('DIGEST_INVALID');
    // A sha512 of sha256's length is malformed, not merely wrong.
    const short = await fetch(`${loc}?digest=sha512:${'a'.repeat(64)}`, { method: 'PUT' });
    expect(short.status).toBe(400);
    expect(await errorCode(short)).toBe('DIGEST_INVALID');
    for (const d of [wrong, sha512(data)]) expect((await fetch(`${s.url}/v2/sha512/wrong/blobs/${d}`, { method: 'HEAD' })).status, d).toBe(404);
  });

  it('a malformed Content-Range (abc, 5-2, 0-) gets 416 RANGE_INVALID and leaves the upload unchanged', async () => {
    const first = randomBytes(10);
    const second = randomBytes(10);
    const loc = await startUpload('badrange');
    expect((await fetch(loc, { method: 'PATCH', headers: { 'Content-Range': '0-9' }, body: first })).status).toBe(202);
    for (const range of ['abc', '5-2', '0-', '10-', '-19', '10-19-29', 'bytes=a-b']) {
      const res = await fetch(loc, { method: 'PATCH', headers: { 'Content-Range': range }, body: second });
      expect(res.status, range).toBe(416);
      expect(await errorCode(res), range).toBe('RANGE_INVALID');
      const status = await fetch(loc);
      expect(status.status, range).toBe(204);
      expect(status.headers.get('range'), range).toBe('0-9');
    }
    // The saved hash state is untouched too: the upload goes on and commits to the right digest.
    expect((await fetch(loc, { method: 'PATCH', headers: { 'Content-Range': '10-19' }, body: second })).status).toBe(202);
    const put = await fetch(`${loc}?digest=${sha256(Buffer.concat([first, second]))}`, { method: 'PUT' });
    expect(put.status).toBe(201);
  });

  it('a PATCH body longer than its Content-Range declares gets SIZE_INVALID and leaves the upload unchanged', async () => {
    const first = randomBytes(10);
    const second = randomBytes(10);
    const loc = await startUpload('toolong');
    expect((await fetch(loc, { method: 'PATCH', headers: { 'Content-Range': '0-9' }, body: first })).status).toBe(202);
    // With a Content-Length of 30 for a range of 10 bytes.
    const declared = await fetch(loc, { method: 'PATCH', headers: { 'Content-Range': '10-19' }, body: randomBytes(30) });
    expect(declared.status).toBe(400);
    expect(await errorCode(declared)).toBe('SIZE_INVALID');
    expect((await fetch(loc)).headers.get('range')).toBe('0-9');
    // Chunked, with no Content-Length: the excess is found only while the body streams in.
    const streamed = await chunkedRequest(loc, 'PATCH', { 'Content-Range': '10-19' }, [second, randomBytes(20)]);
    expect(streamed.status).toBe(400);
    expect(JSON.parse(streamed.body).errors[0].code).toBe('SIZE_INVALID');
    expect((await fetch(loc)).headers.get('range')).toBe('0-9');
    // The same for the final chunk of a PUT: nothing is committed and the upload keeps its bytes.
    const digest = sha256(Buffer.concat([first, second]));
    const put = await chunkedRequest(`${loc}?digest=${digest}`, 'PUT', { 'Content-Range': '10-19' }, [second, randomBytes(20)]);
    expect(put.status).toBe(400);
    expect(JSON.parse(put.body).errors[0].code).toBe('SIZE_INVALID');
    expect((await fetch(loc)).headers.get('range')).toBe('0-9');
    expect((await fetch(`${s.url}/v2/toolong/blobs/${digest}`, { method: 'HEAD' })).status).toBe(404);
    expect((await fetch(loc, { method: 'PATCH', headers: { 'Content-Range': '10-19' }, body: second })).status).toBe(202);
    expect((await fetch(`${loc}?digest=${digest}`, { method: 'PUT' })).status).toBe(201);
  });

  it('a well-formed but unknown upload id gets 404 BLOB_UPLOAD_UNKNOWN for PATCH, PUT, GET and DELETE and creates nothing', async () => {
    const live = await startUpload('unknownid');
    expect((await fetch(live, { method: 'PATCH', headers: { 'Content-Range': '0-4' }, body: Buffer.from('hello') })).status).toBe(202);
    const id = randomUUID();
    const loc = `${s.url}/v2/unknownid/blobs/uploads/${id}`;
    const data = Buffer.from('hello');
    const calls: [string, string, RequestInit][] = [
      ['PATCH', loc, { headers: { 'Content-Range': '0-4' }, body: data }],
      ['PATCH', loc, { body: data }],
      ['PUT', `${loc}?digest=${sha256(data)}`, { body: data }],
      ['PUT', `${loc}?digest=${sha256(data)}`, {}],
      ['GET', loc, {}],
      ['DELETE', loc, {}],
    ];
    for (const [method, url, init] of calls) {
      const res = await fetch(url, { method, ...init });
      expect(res.status, method).toBe(404);
      expect(await errorCode(res), method).toBe('BLOB_UPLOAD_UNKNOWN');
    }
    const left: string[] = [];
    for await (const o of s.registry.driver.list(paths.upload('_local', id))) left.push(o.path);
    expect(left).toEqual([]);
    expect((await fetch(`${s.url}/v2/unknownid/blobs/${sha256(data)}`, { method: 'HEAD' })).status).toBe(404);
    // Another upload of the repository is untouched.
    expect((await fetch(live)).headers.get('range')).toBe('0-4');
  });
});

describe('blob GET when storage fails after the blob was found', () => {
  it('answers the OCI error with its own length and none of the blob\'s headers, so the client is not left waiting', async () => {
    const inner = await FilesystemDriver.open(await mkdtemp(join(tmpdir(), 'berth-failget-')));
    // Storage answers 503 to every streamed read; stats and small reads still work.
    const failing = overriding(inner, { get: () => Promise.reject(new DriverError('GET: 503 Service Unavailable', true)) });
    const server = await startServer(failing);
    try {
      const digest = await pushBlob(server.url, 'fail/get', randomBytes(300_000));
      const res = await new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>((resolve, reject) => {
        const req = http.get(`${server.url}/v2/fail/get/blobs/${digest}`, (r) => {
          let body = '';
          r.on('data', (d) => (body += d));
          r.on('end', () => resolve({ status: r.statusCode!, headers: r.headers, body }));
          r.on('error', reject);
        });
        // A stale Content-Length would keep the response open until the server's keep-alive timeout.
        req.setTimeout(10_000, () => req.destroy(new Error('the error response never completed')));
        req.on('error', reject);
      });
      expect(res.status).toBe(503);
      expect((JSON.parse(res.body) as { errors: { code: string }[] }).errors[0].code).toBe('UNAVAILABLE');
      expect(res.headers['content-length']).toBe(String(Buffer.byteLength(res.body)));
      expect(res.headers['docker-content-digest']).toBeUndefined();
    } finally {
      await server.close();
    }
  });
});

describe('chunk objects and their sizes', () => {
  it('a PATCH of declared length tells storage each object\'s size before it streams; a chunked one cannot; objects are numbered in order', async () => {
    const inner = await FilesystemDriver.open(await mkdtemp(join(tmpdir(), 'berth-sizes-')));
    const sizes: (number | undefined)[] = [];
    const indexes: string[] = [];
    // Objects of at most 1 MiB, cut equal as Swift cuts them, so one PATCH spans several; every chunk put's declared
    // size is recorded.
    const recording = overriding(inner, {
      maxObjectSize: 1 << 20,
      objectSize: (length) => (length ? Math.ceil(length / Math.ceil(length / (1 << 20))) : 1 << 20),
      put(path, body, opts) {
        if (!path.endsWith('/metadata')) {
          sizes.push(opts?.size);
          indexes.push(path.slice(path.lastIndexOf('/') + 1).split('.')[0]);
        }
        return inner.put(path, body, opts);
      },
    });
    const server = await startServer(recording);
    try {
      const data = randomBytes((5 << 20) / 2); // 2.5 MiB: three equal objects
      const start = await fetch(`${server.url}/v2/sizes/blobs/uploads/`, { method: 'POST' });
      const loc = `${server.url}${start.headers.get('location')}`;
      expect((await fetch(loc, { method: 'PATCH', body: new Uint8Array(data) })).status).toBe(202);
      const third = Math.ceil(data.length / 3);
      expect(sizes).toEqual([third, third, data.length - 2 * third]);
      expect(indexes).toEqual(['0', '1', '2']);
      sizes.length = 0;
      const more = randomBytes(1000);
      expect((await chunkedRequest(loc, 'PATCH', {}, [more])).status).toBe(202);
      expect(sizes).toEqual([undefined]);
      expect(indexes).toEqual(['0', '1', '2', '3']);
      const all = Buffer.concat([data, more]);
      expect((await fetch(`${loc}?digest=${sha256(all)}`, { method: 'PUT' })).status).toBe(201);
      expect(md5(Buffer.from(await (await fetch(`${server.url}/v2/sizes/blobs/${sha256(all)}`)).arrayBuffer()))).toBe(md5(all));
    } finally {
      await server.close();
    }
  });
});
