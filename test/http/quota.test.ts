/**
 * Quotas through the API: refused at the right point with nothing half-written and the message naming the usage
 * and the limit; open uploads count; pulls, deletes, mounts and manifests are never refused.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MemoryDriver } from '../../src/storage/memory.js';
import type { StorageDriver } from '../../src/storage/driver.js';
import { Metrics } from '../../src/observability/metrics.js';
import { Pruner } from '../../src/registry/prune.js';
import { pushBlob, pushImage, sha256, startServer, type TestServer } from '../helpers/server.js';
import { dropContainer, freshContainer, swiftDriver } from '../helpers/swift.js';

const FAST = process.env.BERTH_TEST_TIER === 'fast';
const QUOTA = 100_000;

const BACKENDS: { name: string; driver(): Promise<{ driver: StorageDriver; cleanup(): Promise<void> }> }[] = [
  { name: 'memory', driver: async () => ({ driver: new MemoryDriver(), cleanup: async () => {} }) },
  {
    name: 'filesystem',
    driver: async () => {
      const { FilesystemDriver } = await import('../../src/storage/filesystem.js');
      const { mkdtemp, rm } = await import('node:fs/promises');
      const root = await mkdtemp('/tmp/berth-quota-');
      return { driver: await FilesystemDriver.open(root), cleanup: () => rm(root, { recursive: true, force: true }) };
    },
  },
  ...(FAST
    ? []
    : [
        {
          name: 'swift',
          driver: async () => {
            const container = freshContainer();
            return { driver: await swiftDriver(container), cleanup: () => dropContainer(container) };
          },
        },
      ]),
];

/** Every object under the namespace's `prefix`, by path, but seals (a sealed upload's, kept on Swift until prune). */
async function stored(driver: StorageDriver, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const o of driver.list(`_local/${prefix}`)) if (!o.path.endsWith('/sealed')) out.push(o.path);
  return out;
}

/** A PATCH (or PUT) with a chunked body (no length declared), written by node:http so fetch's buffering does not interfere. */
function patchStreaming(url: string, location: string, pieces: Buffer[], method = 'PATCH'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${url}${location}`, { method, headers: { 'Content-Type': 'application/octet-stream' } }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('error', (err) => (err.message.includes('EPIPE') || err.message.includes('ECONNRESET') ? undefined : reject(err)));
    (async () => {
      for (const p of pieces) {
        if (!req.write(p)) await new Promise((r) => req.once('drain', r));
      }
      req.end();
    })().catch(() => {});
  });
}

describe.each(BACKENDS)('quotas on $name', (backend) => {
  let server: TestServer;
  let driver: StorageDriver;
  let cleanup: () => Promise<void>;
  let image: Awaited<ReturnType<typeof pushImage>>;

  beforeAll(async () => {
    ({ driver, cleanup } = await backend.driver());
    server = await startServer(driver, undefined, { quotas: { byNamespace: {}, fallback: QUOTA, timing: { refreshMs: 300 } } });
    image = await pushImage(server.url, 'app', 'v1', [randomBytes(20_000)]);
  });
  afterAll(async () => {
    await server?.close();
    await cleanup?.();
  });
  afterEach(async () => {
    // Each test starts from the image alone: what it left open is cancelled.
    for await (const o of driver.list('_local/uploads')) await driver.delete(o.path);
  });

  it('a monolithic push that would go over is refused before its bytes are accepted, naming the usage and the limit', async () => {
    const usage = await server.registry.quotas!.usage('_local');
    expect(usage).toBeGreaterThan(20_000);
    const data = randomBytes(QUOTA - usage + 1);
    const res = await fetch(`${server.url}/v2/app/blobs/uploads/?digest=${sha256(data)}`, { method: 'POST', body: data });
    expect(res.status).toBe(403);
    const body = (await res.json()) as { errors: { code: string; message: string; detail: { usage: number; quota: number } }[] };
    expect(body.errors[0].code).toBe('DENIED');
    expect(body.errors[0].message).toContain(`stores ${usage} bytes`);
    expect(body.errors[0].message).toContain(`quota is ${QUOTA} bytes`);
    expect(body.errors[0].detail).toMatchObject({ usage, quota: QUOTA });
    expect(await stored(driver, 'uploads')).toEqual([]);
    expect(await driver.stat(`_local/blobs/${sha256(data)}/data`)).toBeNull();
    // One that fits is accepted.
    const fits = randomBytes(100);
    expect((await fetch(`${server.url}/v2/app/blobs/uploads/?digest=${sha256(fits)}`, { method: 'POST', body: fits })).status).toBe(201);
    expect(await server.registry.quotas!.usage('_local')).toBe(usage + 100);
  });

  it('open uploads count: a second upload whose declared chunk would go over is refused and removed', async () => {
    const usage = await server.registry.quotas!.usage('_local');
    const room = QUOTA - usage;
    const first = await fetch(`${server.url}/v2/app/blobs/uploads/`, { method: 'POST' });
    const second = await fetch(`${server.url}/v2/app/blobs/uploads/`, { method: 'POST' });
    const a = first.headers.get('location')!;
    const b = second.headers.get('location')!;
    const half = randomBytes(Math.ceil(room * 0.6));
    expect((await fetch(`${server.url}${a}`, { method: 'PATCH', body: half, headers: { 'Content-Range': `0-${half.length - 1}` } })).status).toBe(202);
    const res = await fetch(`${server.url}${b}`, { method: 'PATCH', body: half, headers: { 'Content-Range': `0-${half.length - 1}` } });
    expect(res.status).toBe(403);
    expect(await res.text()).toContain(`quota is ${QUOTA} bytes`);
    // Nothing of the refused upload stays; the first is untouched and can still finish.
    expect((await fetch(`${server.url}${b}`)).status).toBe(404);
    const left = (await stored(driver, 'uploads')).map((p) => p.split('/')[2]);
    expect(new Set(left)).toEqual(new Set([/\/uploads\/([0-9a-f-]{36})/.exec(a)![1]]));
    expect((await fetch(`${server.url}${a}?digest=${sha256(half)}`, { method: 'PUT' })).status).toBe(201);
    expect(await server.registry.quotas!.usage('_local')).toBe(usage + half.length);
  });

  it('a streamed chunk of undeclared length is cut off at the quota and its upload removed', async () => {
    const start = await fetch(`${server.url}/v2/app/blobs/uploads/`, { method: 'POST' });
    const location = start.headers.get('location')!;
    const pieces = Array.from({ length: 16 }, () => randomBytes(16 * 1024));
    const res = await patchStreaming(server.url, location, pieces);
    expect(res.status).toBe(403);
    expect(res.body).toContain(`quota is ${QUOTA} bytes`);
    expect((await fetch(`${server.url}${location}`)).status).toBe(404);
    expect(await stored(driver, 'uploads')).toEqual([]);
  });

  it('a commit whose streamed last chunk (length undeclared) goes over is refused, leaving no upload and no blob', async () => {
    const start = await fetch(`${server.url}/v2/app/blobs/uploads/`, { method: 'POST' });
    const location = start.headers.get('location')!;
    const first = randomBytes(1000);
    expect((await fetch(`${server.url}${location}`, { method: 'PATCH', body: first, headers: { 'Content-Range': `0-${first.length - 1}` } })).status).toBe(202);
    const pieces = Array.from({ length: 16 }, () => randomBytes(16 * 1024));
    const digest = sha256(Buffer.concat([first, ...pieces]));
    const res = await patchStreaming(server.url, `${location}${location.includes('?') ? '&' : '?'}digest=${digest}`, pieces, 'PUT');
    expect(res.status).toBe(403);
    expect(res.body).toContain(`quota is ${QUOTA} bytes`);
    expect((await fetch(`${server.url}${location}`)).status).toBe(404);
    expect(await stored(driver, 'uploads')).toEqual([]);
    expect(await driver.stat(`_local/blobs/${digest}/data`)).toBeNull();
  });

  it('a monolithic push of undeclared length that goes over is refused, leaving no upload and no blob', async () => {
    const pieces = Array.from({ length: 16 }, () => randomBytes(16 * 1024));
    const digest = sha256(Buffer.concat(pieces));
    const res = await patchStreaming(server.url, `/v2/app/blobs/uploads/?digest=${digest}`, pieces, 'POST');
    expect(res.status).toBe(403);
    expect(res.body).toContain(`quota is ${QUOTA} bytes`);
    expect(await stored(driver, 'uploads')).toEqual([]);
    expect(await driver.stat(`_local/blobs/${digest}/data`)).toBeNull();
  });

  it('an upload that fit is refused at its commit when commits of other processes took the room meanwhile', async () => {
    const start = await fetch(`${server.url}/v2/app/blobs/uploads/`, { method: 'POST' });
    const location = start.headers.get('location')!;
    const data = randomBytes(1000);
    expect((await fetch(`${server.url}${location}`, { method: 'PATCH', body: data, headers: { 'Content-Range': `0-${data.length - 1}` } })).status).toBe(202);
    // Another process's record of what it committed since the last prune, as it writes it every few seconds.
    const other = '_local/usage/live/elsewhere.1.0badc0de';
    const now = Date.now();
    await driver.put(other, Buffer.from(JSON.stringify({ buckets: [{ from: now, to: now, bytes: QUOTA }] })));
    await new Promise((r) => setTimeout(r, 400));
    const res = await fetch(`${server.url}${location}?digest=${sha256(data)}`, { method: 'PUT' });
    expect(res.status).toBe(403);
    expect(await res.text()).toContain(`quota is ${QUOTA} bytes`);
    expect((await fetch(`${server.url}${location}`)).status).toBe(404);
    expect(await stored(driver, 'uploads')).toEqual([]);
    expect(await driver.stat(`_local/blobs/${sha256(data)}/data`)).toBeNull();
    await driver.delete(other);
    await new Promise((r) => setTimeout(r, 400));
    expect(await pushBlob(server.url, 'app', data)).toBe(sha256(data));
  });

  it('over quota, pulls, mounts, manifests naming stored blobs and deletes still work', async () => {
    // Fill the quota with an upload left open, so the namespace is over it.
    const start = await fetch(`${server.url}/v2/app/blobs/uploads/`, { method: 'POST' });
    const location = start.headers.get('location')!;
    const room = QUOTA - (await server.registry.quotas!.usage('_local'));
    const fill = randomBytes(room);
    expect((await fetch(`${server.url}${location}`, { method: 'PATCH', body: fill, headers: { 'Content-Range': `0-${room - 1}` } })).status).toBe(202);
    const one = randomBytes(10);
    expect((await fetch(`${server.url}/v2/app/blobs/uploads/?digest=${sha256(one)}`, { method: 'POST', body: one })).status).toBe(403);

    expect((await fetch(`${server.url}/v2/app/manifests/v1`)).status).toBe(200);
    const layer = image.manifest.layers[0].digest;
    expect((await fetch(`${server.url}/v2/app/blobs/${layer}`)).status).toBe(200);
    for (const d of [layer, image.manifest.config.digest]) {
      expect((await fetch(`${server.url}/v2/other/blobs/uploads/?mount=${d}&from=app`, { method: 'POST' })).status).toBe(201);
    }
    const again = await fetch(`${server.url}/v2/other/manifests/copy`, { method: 'PUT', headers: { 'Content-Type': image.manifest.mediaType }, body: image.body });
    expect(again.status).toBe(201);
    expect((await fetch(`${server.url}/v2/other/manifests/copy`, { method: 'DELETE' })).status).toBe(202);
    expect((await fetch(`${server.url}${location}`, { method: 'DELETE' })).status).toBe(204);
    // With the open upload gone, there is room again.
    expect(await pushBlob(server.url, 'app', one)).toBe(sha256(one));
  });
  it('/metrics shows the stored figure, the quota and the usage it is enforced against, per configured namespace', async () => {
    await new Pruner(driver).prune('_local', { uploadExpiry: 3600, log: { debug() {}, info() {}, warn() {} } });
    const metrics = new Metrics();
    metrics.watchUsage(['_local', 'other-tenant'], driver, server.registry.quotas);
    const before = await server.registry.quotas!.usage('_local');
    const text = await metrics.render();
    const after = await server.registry.quotas!.usage('_local');
    const stored = /berth_namespace_stored_bytes\{namespace="_local"\} ([0-9]+)/.exec(text);
    expect(Number(stored![1])).toBeGreaterThan(20_000);
    expect(text).toContain(`berth_namespace_quota_bytes{namespace="_local"} ${QUOTA}`);
    // The gauge reads the same view as refusals do (refreshed at most every 300 ms here: before or after the render).
    const gauge = Number(/berth_namespace_usage_bytes\{namespace="_local"\} ([0-9]+)/.exec(text)![1]);
    expect([before, after]).toContain(gauge);
    // A namespace without a figure yet has no stored series; the label set is the configured namespaces.
    expect(text).not.toMatch(/berth_namespace_stored_bytes\{namespace="other-tenant"\}/);
  });
});
