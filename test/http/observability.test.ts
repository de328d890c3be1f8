/** Health, readiness and Prometheus metrics, as an operator's monitoring sees them. */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../src/http/app.js';
import { Registry } from '../../src/registry/registry.js';
import { InstrumentedDriver } from '../../src/observability/instrumented-driver.js';
import { Metrics } from '../../src/observability/metrics.js';
import { DriverError, StorageUnavailable, type StorageDriver } from '../../src/storage/driver.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { pushImage, startServer, type TestServer } from '../helpers/server.js';

let s: TestServer;
let dir: string;
let broken = false;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'berth-obs-'));
  const fs = await FilesystemDriver.open(dir);
  // Storage that can be switched off: only to make readiness fail on demand (a real outage is not on tap).
  const switchable: StorageDriver = Object.assign(Object.create(fs) as StorageDriver, {
    stat: (p: string) => (broken ? Promise.reject(new DriverError('storage is down', true)) : fs.stat(p)),
    ready: () => (broken ? Promise.reject(new StorageUnavailable('storage is down')) : fs.ready()),
  });
  const metrics = new Metrics();
  s = await startServer(new InstrumentedDriver(switchable, metrics), undefined, {}, metrics);
});
afterAll(async () => {
  await s.close();
  await rm(dir, { recursive: true, force: true });
});

const metricValue = (text: string, name: string, labels: string) => {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && labels.split(',').every((kv) => l.includes(kv)));
  return line ? Number(line.split(' ').pop()) : undefined;
};

describe('health, readiness, metrics', () => {
  it('/healthz answers while the process runs; /readyz follows storage', async () => {
    expect((await fetch(`${s.url}/healthz`)).status).toBe(200);
    const ready = await fetch(`${s.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ status: 'ready', storage: 'filesystem' });
    broken = true;
    try {
      expect((await fetch(`${s.url}/readyz`)).status).toBe(503);
      expect((await fetch(`${s.url}/healthz`)).status).toBe(200);
    } finally {
      broken = false;
    }
  });

  it('/readyz fails while the filesystem root is gone, and recovers when it is back', async () => {
    const root = await mkdtemp(join(tmpdir(), 'berth-ready-'));
    const t = await startServer(await FilesystemDriver.open(root));
    try {
      expect((await fetch(`${t.url}/readyz`)).status).toBe(200);
      await rm(root, { recursive: true });
      const gone = await fetch(`${t.url}/readyz`);
      expect(gone.status).toBe(503);
      expect(await gone.json()).toEqual({ status: 'unavailable', storage: 'filesystem' });
      await mkdir(root);
      expect((await fetch(`${t.url}/readyz`)).status).toBe(200);
    } finally {
      await t.close();
      await rm(root, { recursive: true, force: true });
    }
  });

  it('/metrics counts requests by route, method and status, bytes, commits and storage operations', async () => {
    const layer = randomBytes(300_000);
    await pushImage(s.url, 'obs/app', 'v1', [layer]);
    expect((await fetch(`${s.url}/v2/obs/app/manifests/nope`)).status).toBe(404);
    const res = await fetch(`${s.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
    const text = await res.text();
    expect(metricValue(text, 'berth_http_requests_total', 'route="manifest",method="PUT",status="201"')).toBe(1);
    expect(metricValue(text, 'berth_http_requests_total', 'route="manifest",method="GET",status="404"')).toBe(1);
    expect(metricValue(text, 'berth_http_requests_total', 'route="uploads",method="POST",status="201"')).toBe(2);
    expect(Number(/^berth_http_received_bytes_total (\d+)/m.exec(text)?.[1])).toBeGreaterThan(layer.length);
    expect(Number(/^berth_upload_commit_duration_seconds_count (\d+)/m.exec(text)?.[1])).toBe(2);
    expect(metricValue(text, 'berth_storage_operations_total', 'op="put",outcome="ok"')).toBeGreaterThan(0);
    expect(metricValue(text, 'berth_storage_operations_total', 'op="read",outcome="not_found"')).toBeGreaterThanOrEqual(1);
    expect(text).toMatch(/^berth_uploads_in_progress 0$/m);
    expect(text).toMatch(/^berth_process_resident_memory_bytes \d+/m);
  });
});

describe('paths no route answers', () => {
  it('GET /nope gets 404 with the OCI error envelope and the API version header, not an HTML page', async () => {
    for (const path of ['/nope', '/auth/nope', '/v1/_ping']) {
      const res = await fetch(`${s.url}${path}`);
      expect(res.status).toBe(404);
      expect(res.headers.get('content-type')).toBe('application/json');
      expect(res.headers.get('docker-distribution-api-version')).toBe('registry/2.0');
      expect(await res.json()).toEqual({ errors: [{ code: 'NAME_UNKNOWN', message: 'no such endpoint' }] });
    }
    const head = await fetch(`${s.url}/nope`, { method: 'HEAD' });
    expect(head.status).toBe(404);
    expect(head.headers.get('docker-distribution-api-version')).toBe('registry/2.0');
  });
});

describe('request targets', () => {
  /** One raw request, so the request line is exactly as written. */
  const raw = (line: string) =>
    new Promise<{ status: number; head: string }>((resolve, reject) => {
      const url = new URL(s.url);
      const socket = net.connect(Number(url.port), url.hostname, () => socket.write(`${line}\r\nHost: ${url.host}\r\nConnection: close\r\n\r\n`));
      let text = '';
      socket.on('data', (d) => (text += d.toString('latin1')));
      socket.on('end', () => resolve({ status: Number(text.slice(9, 12)), head: text.split('\r\n\r\n')[0].toLowerCase() }));
      socket.on('error', reject);
    });

  it('the API answers /v2 with or without the slash, in any case, and absolute-form targets; other paths do not reach it', async () => {
    const { url } = s;
    for (const line of ['GET /v2 HTTP/1.1', 'GET /v2/ HTTP/1.1', 'GET /V2/ HTTP/1.1', `GET ${url}/v2/ HTTP/1.1`, 'GET /v2/?x=1 HTTP/1.1']) {
      const res = await raw(line);
      expect(res.status, line).toBe(200);
      expect(res.head, line).toContain('docker-distribution-api-version: registry/2.0');
    }
    await pushImage(s.url, 'targets/app', 'v1', [randomBytes(100)]);
    expect((await raw(`GET ${url}/v2/targets/app/tags/list HTTP/1.1`)).status).toBe(200);
    expect((await raw(`HEAD ${url}/v2/targets/app/manifests/v1 HTTP/1.1`)).status).toBe(200);
    for (const line of ['GET /v20/ HTTP/1.1', 'GET /v2x HTTP/1.1', `GET ${url}/healthz HTTP/1.1`]) {
      const res = await raw(line);
      expect(res.status, line).toBe(line.includes('healthz') ? 200 : 404);
    }
  });
});

describe('access log', () => {
  it('names each request by its full path without the query, with method, status and request id', async () => {
    const lines: string[] = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void lines.push(line) });
    const root = await mkdtemp(join(tmpdir(), 'berth-log-'));
    const server = http.createServer(createApp(new Registry(await FilesystemDriver.open(root)), { log }));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const res = await fetch(`${url}/v2/team/app/tags/list?n=1`);
      await res.arrayBuffer();
      await new Promise((r) => setImmediate(r)); // the line is written when the response finishes
      const entry = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === 'request');
      expect(entry).toMatchObject({ method: 'GET', path: '/v2/team/app/tags/list', status: 404, req: res.headers.get('x-request-id') });
    } finally {
      server.close();
      await rm(root, { recursive: true, force: true });
    }
  });
});
