/** The upload record stays small however many chunks an upload has: full runs of entries are sealed into pages. */
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { paths } from '../../src/registry/paths.js';
import { PAGE_CHUNKS, parseRecord } from '../../src/registry/upload-record.js';
import { md5, sha256, startServer, type TestServer } from '../helpers/server.js';

// On the filesystem: pages are plain objects, put and read like the record. Swift goes through nine pages in the
// 1,200-chunk test of test/http/swift-uploads.test.ts.
describe('upload records', () => {
  let s: TestServer;
  beforeEach(async () => {
    s = await startServer();
  });
  afterEach(async () => s.close());

  it('an upload of a page and a third of chunks keeps a record of one page at most, and commits every byte in order', async () => {
    const count = PAGE_CHUNKS + 44;
    const data = randomBytes(count * 10);
    let location = (await fetch(`${s.url}/v2/pages/app/blobs/uploads/`, { method: 'POST' })).headers.get('location')!;
    const id = location.split('/').pop()!;
    let largest = 0;
    for (let i = 0; i < count; i++) {
      const res = await fetch(`${s.url}${location}`, {
        method: 'PATCH',
        headers: { 'Content-Range': `${i * 10}-${i * 10 + 9}` },
        body: new Uint8Array(data.subarray(i * 10, i * 10 + 10)),
      });
      expect(res.status).toBe(202);
      location = res.headers.get('location')!;
      largest = Math.max(largest, (await s.registry.driver.read(paths.uploadRecord('_local', id))).length);
    }
    const record = parseRecord(await s.registry.driver.read(paths.uploadRecord('_local', id)));
    expect(record.v).toBe(2);
    expect(record.pages?.map((p) => p.size)).toEqual([PAGE_CHUNKS * 10]);
    expect(record.chunks.length).toBe(44);
    // At most one page's entries (about 30 bytes each) and the rest of the record.
    expect(largest).toBeLessThan(PAGE_CHUNKS * 40 + 1000);
    expect((await fetch(`${s.url}${location}`)).headers.get('range')).toBe(`0-${data.length - 1}`);

    const put = await fetch(`${s.url}${location}?digest=${sha256(data)}`, { method: 'PUT' });
    expect(put.status).toBe(201);
    const got = Buffer.from(await (await fetch(`${s.url}/v2/pages/app/blobs/${sha256(data)}`)).arrayBuffer());
    expect(md5(got)).toBe(md5(data));
    expect((await s.registry.driver.stat(paths.uploadRecord('_local', id))) ?? null).toBeNull();
  });

  it('a record written with fewer chunks than a page is version 1, as before', async () => {
    const location = (await fetch(`${s.url}/v2/pages/app/blobs/uploads/`, { method: 'POST' })).headers.get('location')!;
    await fetch(`${s.url}${location}`, { method: 'PATCH', body: new Uint8Array(randomBytes(10)) });
    const record = parseRecord(await s.registry.driver.read(paths.uploadRecord('_local', location.split('/').pop()!.split('?')[0])));
    expect(record).toMatchObject({ v: 1, chunks: [{ size: 10 }] });
    expect(record.pages).toBeUndefined();
  });
});
