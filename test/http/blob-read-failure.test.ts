/** A whole-blob GET whose storage fails mid-stream: the response is cut short and the failure is logged (issue 23). */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createApp } from '../../src/http/app.js';
import { Registry } from '../../src/registry/registry.js';
import { DriverError } from '../../src/storage/driver.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { overriding, pushBlob } from '../helpers/server.js';

let root: string;
let server: http.Server;
let url: string;
const lines: Record<string, unknown>[] = [];

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'berth-read-failure-'));
  const inner = await FilesystemDriver.open(root);
  // Blob data reads give half the bytes, then fail as a storage error would.
  const driver = overriding(inner, {
    async get(path, range) {
      const opened = await inner.get(path, range);
      if (!path.endsWith('/data') || range) return opened;
      const out = new PassThrough();
      let sent = 0;
      opened.body.on('data', (piece: Buffer) => {
        if (sent >= opened.size / 2) return opened.body.destroy(new DriverError('injected: storage went away mid-stream', true));
        sent += piece.length;
        out.write(piece);
      });
      opened.body.on('error', (err) => out.destroy(err));
      return { body: out, size: opened.size };
    },
  });
  const sink = new Writable({
    write(chunk, _enc, done) {
      for (const line of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  const app = createApp(new Registry(driver), { log: pino({ level: 'warn' }, sink) });
  server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await rm(root, { recursive: true, force: true });
});

it('a blob GET that fails on storage mid-stream is cut short and logged with its request id and cause', async () => {
  const digest = await pushBlob(url, 'read/fail', randomBytes(4 << 20));
  const res = await fetch(`${url}/v2/read/fail/blobs/${digest}`);
  expect(res.status).toBe(200);
  await expect(res.arrayBuffer()).rejects.toThrow();
  const requestId = res.headers.get('x-request-id');
  for (let i = 0; i < 100 && !lines.some((l) => l.req === requestId); i++) await new Promise((r) => setTimeout(r, 20));
  const logged = lines.find((l) => l.req === requestId && /mid-stream/.test(String(l.msg)));
  expect(logged).toMatchObject({ blob: digest, err: { message: expect.stringMatching(/injected: storage went away/) } });
});
