/** One request at a time per upload, within one process: a second PATCH while one runs gets 416, never a false 202. */
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { paths } from '../../src/registry/paths.js';
import { parseRecord } from '../../src/registry/upload-record.js';
import { md5, sha256, type TestServer } from '../helpers/server.js';
import { BACKENDS, startServerOn } from '../helpers/swift.js';

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
