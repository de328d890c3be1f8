/** An upload's chunks through different `berth serve` processes on one storage, and clients that misbehave. */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { md5, sha256, spawnServe, type ServeProcess } from '../helpers/server.js';
import { BACKENDS, storageYaml } from '../helpers/swift.js';

let dir: string;
let servers: ServeProcess[];

describe.each(BACKENDS)('several server processes on one storage (%s)', (backend) => {
  let storage: { yaml: string; cleanup(): Promise<void> };
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-procs-'));
    storage = await storageYaml(backend, dir);
    const config = `registry:\n  address: 127.0.0.1\n  port: 0\n${storage.yaml}`;
    servers = await Promise.all([0, 1, 2].map(() => spawnServe(config, dir)));
  });
  afterAll(async () => {
    for (const s of servers) expect(await s.stop()).toBe(0);
    await storage.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  it('chunk 1 through one process, chunk 2 through another, commit through a third', async () => {
    const [a, b, c] = servers;
    const data = randomBytes(3 * 1024 * 1024 + 17);
    const half = 1024 * 1024 + 5;
    const start = await fetch(`${a.url}/v2/multi/proc/blobs/uploads/`, { method: 'POST' });
    const location = start.headers.get('location')!;
    const p1 = await fetch(`${a.url}${location}`, { method: 'PATCH', headers: { 'Content-Range': `0-${half - 1}` }, body: data.subarray(0, half) });
    expect(p1.status).toBe(202);
    const p2 = await fetch(`${b.url}${location}`, { method: 'PATCH', headers: { 'Content-Range': `${half}-${data.length - 1}` }, body: data.subarray(half) });
    expect(p2.status).toBe(202);
    expect(p2.headers.get('range')).toBe(`0-${data.length - 1}`);
    const digest = sha256(data);
    const put = await fetch(`${c.url}${location}?digest=${digest}`, { method: 'PUT' });
    expect(put.status).toBe(201);
    for (const s of servers) {
      const got = Buffer.from(await (await fetch(`${s.url}/v2/multi/proc/blobs/${digest}`)).arrayBuffer());
      expect(md5(got)).toBe(md5(data));
    }
  });

  it('a client that disconnects mid-chunk leaves the upload at its last complete chunk, and the push can go on', async () => {
    const [a, b] = servers;
    const first = randomBytes(100_000);
    const start = await fetch(`${a.url}/v2/disconnect/app/blobs/uploads/`, { method: 'POST' });
    const location = start.headers.get('location')!;
    await fetch(`${a.url}${location}`, { method: 'PATCH', body: first });

    // Declare 1 MiB, send 200 KB, then drop the connection.
    await new Promise<void>((resolve) => {
      const req = http.request(`${a.url}${location}`, { method: 'PATCH', headers: { 'Content-Range': `100000-${100000 + (1 << 20) - 1}`, 'Content-Length': 1 << 20 } });
      req.on('error', () => resolve());
      req.write(randomBytes(200_000), () => setTimeout(() => (req.destroy(), resolve()), 200));
    });

    const status = await fetch(`${b.url}${location}`);
    expect(status.status).toBe(204);
    expect(status.headers.get('range')).toBe('0-99999');
    const rest = randomBytes(5000);
    const digest = sha256(Buffer.concat([first, rest]));
    const put = await fetch(`${b.url}${location}?digest=${digest}`, { method: 'PUT', headers: { 'Content-Range': '100000-104999' }, body: rest });
    expect(put.status).toBe(201);
  });

  it('a chunked body shorter than its Content-Range is refused and changes nothing', async () => {
    const [a] = servers;
    const start = await fetch(`${a.url}/v2/short/app/blobs/uploads/`, { method: 'POST' });
    const location = start.headers.get('location')!;
    const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.request(`${a.url}${location}`, { method: 'PATCH', headers: { 'Content-Range': '0-99', 'Transfer-Encoding': 'chunked' } }, (r) => {
        let body = '';
        r.on('data', (d) => (body += d));
        r.on('end', () => resolve({ status: r.statusCode!, body }));
      });
      req.on('error', reject);
      req.end(Buffer.alloc(10));
    });
    expect(res.status).toBe(400);
    expect(JSON.parse(res.body).errors[0].code).toBe('SIZE_INVALID');
    expect((await fetch(`${a.url}${location}`)).headers.get('range')).toBe('0-0');
  });

  it('SIGTERM stops a server cleanly (exit 0)', async () => {
    const extra = await spawnServe(`registry:\n  address: 127.0.0.1\n  port: 0\n  storage:\n    driver: filesystem\n    root: ${dir}/data\n`, dir);
    expect((await fetch(`${extra.url}/v2/`)).status).toBe(200);
    expect(await extra.stop('SIGTERM')).toBe(0);
  });
});
