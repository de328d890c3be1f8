/**
 * One request at a time per upload, within one process: a second PATCH while one runs gets 416, never a false 202.
 * Across processes on Swift (no lock) a lost chunk is caught at the commit instead.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { paths } from '../../src/registry/paths.js';
import { parseRecord } from '../../src/registry/upload-record.js';
import { md5, sha256, startServer, type TestServer } from '../helpers/server.js';
import { BACKENDS, dropContainer, freshContainer, startServerOn, swiftDriver } from '../helpers/swift.js';

describe.each(BACKENDS)('concurrent requests on one upload (%s)', (backend) => {
  let s: TestServer;
  beforeEach(async () => {
    s = await startServerOn(backend);
  });
  afterEach(async () => s.close());

  it('eight PATCHes of the same chunk at once: exactly one 202, the others 416 with the Range, the record holds that one', async () => {
    const location = (await fetch(`${s.url}/v2/lock/app/blobs/uploads/`, { method: 'POST' })).headers.get('location')!;
    const id = location.split('/').pop()!;
    const bodies = Array.from({ length: 8 }, () => randomBytes(100_000));
    const answers = await Promise.all(
      bodies.map(async (body) => {
        const res = await fetch(`${s.url}${location}`, { method: 'PATCH', headers: { 'Content-Range': `0-${body.length - 1}` }, body: new Uint8Array(body) });
        return { status: res.status, range: res.headers.get('range'), code: res.status === 202 ? null : ((await res.json()) as { errors: { code: string }[] }).errors[0].code, body };
      }),
    );
    expect(answers.map((a) => a.status).sort()).toEqual([202, 416, 416, 416, 416, 416, 416, 416]);
    for (const a of answers.filter((x) => x.status === 416)) {
      expect(a.code).toBe('RANGE_INVALID');
      // Refused either while the winner ran (nothing stored yet) or after it (at the wrong offset).
      expect(['0-0', '0-99999']).toContain(a.range);
    }
    const record = parseRecord(await s.registry.driver.read(paths.uploadRecord('_local', id)));
    expect(record.chunks.map((c) => c.size)).toEqual([100_000]);
    const winner = answers.find((a) => a.status === 202)!.body;
    const put = await fetch(`${s.url}${location}?digest=${sha256(winner)}`, { method: 'PUT' });
    expect(put.status).toBe(201);
    expect(md5(Buffer.from(await (await fetch(`${s.url}/v2/lock/app/blobs/${sha256(winner)}`)).arrayBuffer()))).toBe(md5(winner));
  });
});

// Swift only (not in `npm run test:fast`, which has no Swift).
if (BACKENDS.includes('swift')) describe('concurrent PATCHes of one upload through two processes on Swift (no cross-process lock)', () => {
  it('are not refused, but the chunk one of them loses fails the commit: DIGEST_INVALID, and no blob is stored', async () => {
    const container = freshContainer();
    // Two registries with their own drivers stand for two processes: they share nothing but the container.
    const [a, b] = [await startServer(await swiftDriver(container)), await startServer(await swiftDriver(container))];
    try {
      const location = (await fetch(`${a.url}/v2/lock/swift/blobs/uploads/`, { method: 'POST' })).headers.get('location')!;
      const [one, two] = [randomBytes(50_000), randomBytes(50_000)];
      // Both bodies stay open until both requests have begun, so each reads the record before either writes it.
      const sends = [a, b].map((s, i) => {
        let finish!: () => void;
        const answer = new Promise<number>((resolve, reject) => {
          const body = [one, two][i];
          const req = http.request(`${s.url}${location}`, { method: 'PATCH', headers: { 'Content-Length': body.length } }, (res) => {
            res.resume();
            resolve(res.statusCode!);
          });
          req.on('error', reject);
          req.write(body.subarray(0, 1000));
          finish = () => req.end(body.subarray(1000));
        });
        return { answer, finish: () => finish() };
      });
      await new Promise((r) => setTimeout(r, 500));
      for (const s of sends) s.finish();
      expect(await Promise.all(sends.map((s) => s.answer))).toEqual([202, 202]);
      // The client believes it sent both; the record keeps one.
      const put = await fetch(`${b.url}${location}?digest=${sha256(Buffer.concat([one, two]))}`, { method: 'PUT' });
      expect(put.status).toBe(400);
      expect(((await put.json()) as { errors: { code: string }[] }).errors[0].code).toBe('DIGEST_INVALID');
      for (const digest of [sha256(Buffer.concat([one, two])), sha256(Buffer.concat([two, one]))]) {
        expect((await fetch(`${a.url}/v2/lock/swift/blobs/${digest}`, { method: 'HEAD' })).status).toBe(404);
      }
    } finally {
      await a.close();
      await b.close();
      await dropContainer(container);
    }
  });
});
