/** One request at a time per upload across `berth serve` processes sharing a filesystem root (lock files). */
import { randomBytes } from 'node:crypto';
import { access, mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paths } from '../../src/registry/paths.js';
import { parseRecord } from '../../src/registry/upload-record.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { sha256, spawnServe, type ServeProcess } from '../helpers/server.js';

describe('one PATCH at a time across server processes (filesystem)', () => {
  let dir: string;
  let servers: ServeProcess[];
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-lock-procs-'));
    const config = `registry:\n  address: 127.0.0.1\n  port: 0\n  storage:\n    driver: filesystem\n    root: ${dir}/data\n`;
    servers = await Promise.all([0, 1].map(() => spawnServe(config, dir)));
  });
  afterAll(async () => {
    for (const s of servers) expect(await s.stop()).toBe(0);
    await rm(dir, { recursive: true, force: true });
  });

  const start = async () => (await fetch(`${servers[0].url}/v2/lock/procs/blobs/uploads/`, { method: 'POST' })).headers.get('location')!;
  const record = async (id: string) => parseRecord(await (await FilesystemDriver.open(join(dir, 'data'))).read(paths.uploadRecord('_local', id)));

  it('while one process streams a chunk, a PATCH, a PUT and a DELETE through the other get 416 with the Range', async () => {
    const [a, b] = servers;
    const location = await start();
    const id = location.split('/').pop()!;
    const data = randomBytes(200_000);
    let finish!: () => void;
    const first = new Promise<{ status: number; range: string | undefined }>((resolve, reject) => {
      const req = http.request(`${a.url}${location}`, { method: 'PATCH', headers: { 'Content-Range': `0-${data.length - 1}`, 'Content-Length': data.length } }, (res) => {
        res.resume();
        resolve({ status: res.statusCode!, range: res.headers.range });
      });
      req.on('error', reject);
      req.write(data.subarray(0, 100_000));
      // The second half goes once the refusals below are in.
      finish = () => req.end(data.subarray(100_000));
    });
    first.catch(() => {}); // a failed assertion below leaves it unfinished; the server's exit then resets it
    const lockFile = join(dir, 'data', paths.uploadLock('_local', id));
    for (let i = 0; i < 500 && !(await access(lockFile).then(() => true, () => false)); i++) await new Promise((r) => setTimeout(r, 10));

    const patch = await fetch(`${b.url}${location}`, { method: 'PATCH', headers: { 'Content-Range': '0-9' }, body: new Uint8Array(randomBytes(10)) });
    expect([patch.status, patch.headers.get('range')]).toEqual([416, '0-0']);
    const put = await fetch(`${b.url}${location}?digest=${sha256(data)}`, { method: 'PUT' });
    expect([put.status, put.headers.get('range')]).toEqual([416, '0-0']);
    const del = await fetch(`${b.url}${location}`, { method: 'DELETE' });
    expect(del.status).toBe(416);

    finish();
    expect(await first).toEqual({ status: 202, range: `0-${data.length - 1}` });
    expect((await record(id)).chunks.map((c) => c.size)).toEqual([data.length]);
    expect((await fetch(`${b.url}${location}?digest=${sha256(data)}`, { method: 'PUT' })).status).toBe(201);
  });

  it('PATCHes of the same chunk at once through both processes: exactly one 202, and the record holds it', async () => {
    const location = await start();
    const id = location.split('/').pop()!;
    const bodies = Array.from({ length: 8 }, () => randomBytes(300_000));
    const statuses = await Promise.all(
      bodies.map(async (body, i) => {
        const res = await fetch(`${servers[i % 2].url}${location}`, { method: 'PATCH', headers: { 'Content-Range': `0-${body.length - 1}` }, body: new Uint8Array(body) });
        await res.arrayBuffer();
        return res.status;
      }),
    );
    expect(statuses.filter((x) => x === 202).length).toBe(1);
    expect(statuses.filter((x) => x === 416).length).toBe(7);
    const winner = bodies[statuses.indexOf(202)];
    expect((await record(id)).chunks.map((c) => c.size)).toEqual([winner.length]);
    expect((await fetch(`${servers[1].url}${location}?digest=${sha256(winner)}`, { method: 'PUT' })).status).toBe(201);
  });
});
