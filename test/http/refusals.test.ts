/**
 * A refusal sent before the request body was read (a 413 on a streamed PATCH, a 401 on a PUT with a body) leaves
 * the connection usable or closed, never hung: the next request on it is answered or the server closes it.
 * Raw sockets, because fetch and Node's agent hide what the connection does.
 */
import net, { type AddressInfo } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Timeouts } from '../../src/config/config.js';
import { createApp } from '../../src/http/app.js';
import { createServer } from '../../src/http/server.js';
import { Registry } from '../../src/registry/registry.js';
import { DEFAULT_LIMITS } from '../../src/registry/upload-limits.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';

// Idle timeouts far longer than the test: a connection left hanging fails it rather than being tidied away.
const TIMEOUTS: Timeouts = { handshake: 30, headers: 30, idle: 30, bodyIdle: 30, sendIdle: 30 };
const log = pino({ level: process.env.BERTH_TEST_LOG ?? 'silent' });

let dir: string;
let server: ReturnType<typeof createServer>;
let registry: Registry;
let port: number;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'berth-refusals-'));
  registry = new Registry(await FilesystemDriver.open(dir), { limits: { ...DEFAULT_LIMITS, maxBlobSize: 100_000 }, uploadExpiry: 3600 });
  server = createServer(createApp(registry, { log }), { timeouts: TIMEOUTS, log });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  await registry.close();
  await rm(dir, { recursive: true, force: true });
});

/** Everything the server sends on one connection, and whether (and when) it closed it. */
function rawConnection() {
  const socket = net.connect(port, '127.0.0.1');
  let got = '';
  let closed = false;
  socket.on('data', (d) => (got += d.toString('latin1')));
  socket.on('error', () => {});
  const ended = new Promise<void>((resolve) => socket.on('close', () => resolve(void (closed = true))));
  return {
    socket,
    text: () => got,
    closed: () => closed,
    ended,
    /** Resolves once `pattern` has arrived, or the connection closed, or `ms` passed. */
    async until(pattern: RegExp, ms: number): Promise<boolean> {
      const deadline = Date.now() + ms;
      while (!pattern.test(got) && !closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      return pattern.test(got);
    },
  };
}

async function startUpload(): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/v2/refusals/app/blobs/uploads/`, { method: 'POST' });
  return res.headers.get('location')!;
}

const chunk = (data: Buffer) => `${data.length.toString(16)}\r\n${data.toString('latin1')}\r\n`;

describe('refusals before the body is read', () => {
  it('a 413 on a streamed PATCH says Connection: close and the connection ends; it does not hang', { timeout: 15_000 }, async () => {
    const location = await startUpload();
    const c = rawConnection();
    c.socket.write(`PATCH ${location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n`);
    // Past the limit, then more the client is still sending when the answer comes.
    for (let i = 0; i < 4; i++) c.socket.write(chunk(Buffer.alloc(60_000, 1)));
    expect(await c.until(/^HTTP\/1\.1 413 /, 5000)).toBe(true);
    expect(c.text()).toMatch(/\r\nConnection: close\r\n/i);
    // The client sends its next request on the same connection: it is either answered or the connection closes.
    c.socket.write(chunk(Buffer.alloc(1000, 2)));
    c.socket.write('0\r\n\r\n');
    c.socket.write(`GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n`);
    await Promise.race([c.ended, new Promise((r) => setTimeout(r, 5000))]);
    expect(c.closed()).toBe(true);
    expect(c.text()).not.toMatch(/HTTP\/1\.1 200/);
  });

  it('a client that keeps sending after the refusal is cut off after a small drain, not read to the end', { timeout: 15_000 }, async () => {
    const location = await startUpload();
    const c = rawConnection();
    c.socket.write(`PATCH ${location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n`);
    const piece = chunk(Buffer.alloc(60_000, 3));
    let sending = true;
    c.ended.then(() => (sending = false));
    (async () => {
      while (sending) {
        if (!c.socket.write(piece)) await new Promise((r) => c.socket.once('drain', r));
      }
    })().catch(() => {});
    expect(await c.until(/^HTTP\/1\.1 413 /, 5000)).toBe(true);
    await Promise.race([c.ended, new Promise((r) => setTimeout(r, 8000))]);
    expect(c.closed()).toBe(true);
  });

  it('a refusal of a body the server never started reading (unknown upload) closes too; the next request is not left waiting', { timeout: 15_000 }, async () => {
    const c = rawConnection();
    c.socket.write(`PATCH /v2/refusals/app/blobs/uploads/nonexistent HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n`);
    c.socket.write(Buffer.alloc(100_000, 4));
    expect(await c.until(/^HTTP\/1\.1 404 /, 5000)).toBe(true);
    expect(c.text()).toMatch(/\r\nConnection: close\r\n/i);
    await Promise.race([c.ended, new Promise((r) => setTimeout(r, 5000))]);
    expect(c.closed()).toBe(true);
  });

  it('a refusal after the body was read (wrong digest) keeps the connection: the next request is answered', { timeout: 15_000 }, async () => {
    const location = await startUpload();
    const c = rawConnection();
    c.socket.write(`PUT ${location}?digest=sha256:${'0'.repeat(64)} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello`);
    expect(await c.until(/^HTTP\/1\.1 400 /, 5000)).toBe(true);
    expect(c.text()).not.toMatch(/\r\nConnection: close\r\n/i);
    c.socket.write(`GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n`);
    expect(await c.until(/HTTP\/1\.1 200 /, 5000)).toBe(true);
    expect(c.closed()).toBe(false);
    c.socket.destroy();
  });
});
