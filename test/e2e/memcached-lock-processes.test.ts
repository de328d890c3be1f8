/**
 * One request at a time per upload across `berth serve` processes on one real Swift container, through real
 * memcached servers (registry.locks.memcached); and what happens when memcached goes away.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paths } from '../../src/registry/paths.js';
import { parseRecord } from '../../src/registry/upload-record.js';
import { startMemcached, type MemcachedServer } from '../helpers/memcached.js';
import { sha256, spawnServe, type ServeProcess } from '../helpers/server.js';
import { storageYaml, swiftDriver } from '../helpers/swift.js';

describe('one PATCH at a time across server processes on Swift, locked in memcached', () => {
  let dir: string;
  let servers: ServeProcess[];
  let memcached: MemcachedServer[];
  let container: string;
  let cleanup: () => Promise<void>;
  const logs: string[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-memlock-'));
    memcached = await Promise.all([startMemcached(), startMemcached()]);
    const storage = await storageYaml('swift', dir);
    cleanup = storage.cleanup;
    container = /container: (\S+)/.exec(storage.yaml)![1];
    const config = `registry:\n  address: 127.0.0.1\n  port: 0\n${storage.yaml}  locks:\n    memcached: [${memcached.map((m) => m.address).join(', ')}]\n`;
    servers = await Promise.all([0, 1, 2].map(() => spawnServe(config, dir)));
    servers.forEach((s, i) => {
      logs[i] = '';
      s.child.stdout!.on('data', (d) => (logs[i] += d));
    });
  }, 120_000);
  afterAll(async () => {
    for (const s of servers ?? []) expect(await s.stop()).toBe(0);
    await Promise.all((memcached ?? []).map((m) => m.stop()));
    await cleanup?.();
    await rm(dir, { recursive: true, force: true });
  });

  const start = async () => (await fetch(`${servers[0].url}/v2/lock/procs/blobs/uploads/`, { method: 'POST' })).headers.get('location')!;
  const record = async (id: string) => parseRecord(await (await swiftDriver(container)).read(paths.uploadRecord('_local', id)));

  /** Eight PATCHes of chunk 0 at once, spread over `n` processes; returns the statuses, the winner, and checks the record. */
  async function race(n: number) {
    const location = await start();
    const id = location.split('/').pop()!;
    const bodies = Array.from({ length: 8 }, () => randomBytes(300_000));
    const statuses = await Promise.all(
      bodies.map(async (body, i) => {
        const res = await fetch(`${servers[i % n].url}${location}`, { method: 'PATCH', headers: { 'Content-Range': `0-${body.length - 1}` }, body: new Uint8Array(body) });
        await res.arrayBuffer();
        return res.status;
      }),
    );
    return { location, id, statuses, winner: bodies[statuses.indexOf(202)] };
  }

  for (const n of [2, 3]) {
    it(`eight PATCHes of one chunk at once through ${n} processes: exactly one 202, the others 416, and the record holds that chunk`, async () => {
      for (let round = 0; round < 2; round++) {
        const { location, id, statuses, winner } = await race(n);
        expect(statuses.filter((x) => x === 202).length).toBe(1);
        expect(statuses.filter((x) => x === 416).length).toBe(7);
        expect((await record(id)).chunks.map((c) => c.size)).toEqual([winner.length]);
        expect((await fetch(`${servers[n - 1].url}${location}?digest=${sha256(winner)}`, { method: 'PUT' })).status).toBe(201);
        const blob = await fetch(`${servers[0].url}/v2/lock/procs/blobs/${sha256(winner)}`);
        expect(Buffer.from(await blob.arrayBuffer()).equals(winner)).toBe(true);
      }
    }, 120_000);
  }

  it('memcached stopped mid-upload: the push still works through every process, /readyz stays 200, a warning is logged', async () => {
    const chunks = [randomBytes(200_000), randomBytes(150_000), randomBytes(100_000)];
    const whole = Buffer.concat(chunks);
    let location = await start();
    let offset = 0;
    const patch = async (i: number) => {
      const res = await fetch(`${servers[i].url}${location}`, { method: 'PATCH', headers: { 'Content-Range': `${offset}-${offset + chunks[i].length - 1}` }, body: new Uint8Array(chunks[i]) });
      await res.arrayBuffer();
      expect(res.status).toBe(202);
      offset += chunks[i].length;
      location = res.headers.get('location')!;
    };
    await patch(0);
    await Promise.all(memcached.map((m) => m.stop()));
    await patch(1);
    await patch(2);
    expect((await fetch(`${servers[0].url}${location}?digest=${sha256(whole)}`, { method: 'PUT' })).status).toBe(201);
    const blob = await fetch(`${servers[1].url}/v2/lock/procs/blobs/${sha256(whole)}`);
    expect(Buffer.from(await blob.arrayBuffer()).equals(whole)).toBe(true);
    for (const s of servers) expect((await fetch(`${s.url}/readyz`)).status).toBe(200);
    for (const i of [1, 2]) expect(logs[i]).toMatch(/"level":40,[^\n]*"msg":"lock service unreachable: requests on its uploads go on without a lock across processes"/);
    const metrics = await (await fetch(`${servers[1].url}/metrics`)).text();
    expect(metrics).toMatch(/^berth_lock_service_errors_total\{op="acquire"\} [1-9]/m);
  }, 120_000);
});
