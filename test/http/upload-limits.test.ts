/** Upload limits: chunks per upload, open uploads per namespace, blob size; each refusal an OCI error. */
import { randomBytes } from 'node:crypto';
import { utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { paths } from '../../src/registry/paths.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { sha256, startServer, type TestServer } from '../helpers/server.js';
import { DEFAULT_LIMITS, type UploadLimits } from '../../src/registry/upload-limits.js';

const servers: TestServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
});
async function serve(limits: Partial<UploadLimits>, driver?: FilesystemDriver): Promise<TestServer> {
  const s = await startServer(driver, undefined, { limits: { ...DEFAULT_LIMITS, ...limits }, uploadExpiry: 3600 });
  servers.push(s);
  return s;
}
const code = async (res: Response) => ((await res.json()) as { errors: { code: string }[] }).errors[0].code;
const post = (s: TestServer) => fetch(`${s.url}/v2/limits/app/blobs/uploads/`, { method: 'POST' });

describe('upload limits', () => {
  it('a PATCH beyond chunks-per-upload gets 400 BLOB_UPLOAD_INVALID and changes nothing; PUT still finishes the upload', async () => {
    const s = await serve({ chunksPerUpload: 3 });
    const location = (await post(s)).headers.get('location')!;
    const data = randomBytes(40);
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${s.url}${location}`, { method: 'PATCH', body: new Uint8Array(data.subarray(i * 10, i * 10 + 10)) });
      expect(res.status).toBe(202);
    }
    const over = await fetch(`${s.url}${location}`, { method: 'PATCH', body: new Uint8Array(data.subarray(30)) });
    expect([over.status, await code(over)]).toEqual([400, 'BLOB_UPLOAD_INVALID']);
    expect((await fetch(`${s.url}${location}`)).headers.get('range')).toBe('0-29');
    expect((await fetch(`${s.url}${location}?digest=${sha256(data.subarray(0, 30))}`, { method: 'PUT' })).status).toBe(201);
  });

  it('a body that would pass max-blob-size gets 413 SIZE_INVALID, declared or not, and the upload keeps what it had', async () => {
    const s = await serve({ maxBlobSize: 1000 });
    const location = (await post(s)).headers.get('location')!;
    const declared = await fetch(`${s.url}${location}`, { method: 'PATCH', headers: { 'Content-Range': '0-1000' }, body: new Uint8Array(randomBytes(1001)) });
    expect([declared.status, await code(declared)]).toEqual([413, 'SIZE_INVALID']);
    const ok = await fetch(`${s.url}${location}`, { method: 'PATCH', body: new Uint8Array(randomBytes(600)) });
    expect(ok.status).toBe(202);
    // Streamed without a length: refused once the running total passes the limit.
    const streamed = await fetch(`${s.url}${location}`, {
      method: 'PATCH',
      body: new ReadableStream({
        start(c) {
          c.enqueue(new Uint8Array(randomBytes(300)));
          c.enqueue(new Uint8Array(randomBytes(300)));
          c.close();
        },
      }),
      duplex: 'half',
    } as RequestInit);
    expect([streamed.status, await code(streamed)]).toEqual([413, 'SIZE_INVALID']);
    expect((await fetch(`${s.url}${location}`)).headers.get('range')).toBe('0-599');
  });

  it('a POST beyond uploads-per-namespace gets 429 TOOMANYREQUESTS; finished, cancelled and expired uploads do not count', async () => {
    const s = await serve({ uploadsPerNamespace: 2 });
    const first = (await post(s)).headers.get('location')!;
    expect((await post(s)).status).toBe(202);
    const refused = await post(s);
    expect([refused.status, await code(refused)]).toEqual([429, 'TOOMANYREQUESTS']);
    expect((await fetch(`${s.url}${first}`, { method: 'DELETE' })).status).toBe(204);
    expect((await post(s)).status).toBe(202);
    expect((await post(s)).status).toBe(429);

    // The uploads left open go idle past the upload expiry: another process, counting afresh, does not count them.
    const old = new Date(Date.now() - 2 * 3600 * 1000);
    for await (const o of s.registry.driver.list(paths.uploads('_local'))) await utimes(join(s.root, o.path), old, old);
    const other = await serve({ uploadsPerNamespace: 2 }, await FilesystemDriver.open(s.root));
    expect((await post(other)).status).toBe(202);
    expect((await post(other)).status).toBe(202);
    expect((await post(other)).status).toBe(429);
  });
});
