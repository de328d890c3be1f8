/**
 * Connections that say nothing are closed, at every stage (TLS handshake, headers, keep-alive, request body), and
 * TLS 1.2 offers only ECDHE with AEAD ciphers. The servers are the CLI's own (src/http/server.ts), with 1-s timeouts.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import type http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Timeouts } from '../../src/config/config.js';
import { createApp } from '../../src/http/app.js';
import { createServer } from '../../src/http/server.js';
import { Registry } from '../../src/registry/registry.js';
import type { StorageDriver } from '../../src/storage/driver.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { overriding, sha256 } from '../helpers/server.js';

const TIMEOUTS: Timeouts = { handshake: 1, headers: 1, idle: 1, bodyIdle: 1, sendIdle: 1 };
const log = pino({ level: process.env.BERTH_TEST_LOG ?? 'silent' });

let dir: string;
let cert: { cert: Buffer; key: Buffer };
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'berth-conn-'));
  await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1', '-keyout', `${dir}/tls.key`, '-out', `${dir}/tls.crt`]);
  cert = { cert: await readFile(`${dir}/tls.crt`), key: await readFile(`${dir}/tls.key`) };
});
afterAll(() => rm(dir, { recursive: true, force: true }));

async function serve(opts: { tls?: boolean; wrap?: (d: StorageDriver) => StorageDriver; timeouts?: Partial<Timeouts> } = {}) {
  const root = await mkdtemp(join(dir, 'root-'));
  const fs = await FilesystemDriver.open(root);
  const registry = new Registry(opts.wrap ? opts.wrap(fs) : fs);
  const server = createServer(createApp(registry, { log }), { tls: opts.tls ? cert : undefined, timeouts: { ...TIMEOUTS, ...opts.timeouts }, log });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    root,
    url: `http://127.0.0.1:${port}`,
    server,
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await registry.close();
    },
  };
}

/** Resolves with what the peer sent once the server closes the connection. */
function closed(socket: net.Socket): Promise<string> {
  let got = '';
  socket.on('data', (d) => (got += d));
  socket.on('error', () => {});
  return new Promise((resolve) => socket.on('close', () => resolve(got)));
}

const connect = (port: number) => net.connect(port, '127.0.0.1');
const openConnections = (server: http.Server) => new Promise<number>((resolve, reject) => server.getConnections((err, n) => (err ? reject(err) : resolve(n))));

describe('idle connections are closed', () => {
  it('a TLS connection that never sends its ClientHello, or only part of it, is closed', { timeout: 15_000 }, async () => {
    const s = await serve({ tls: true });
    try {
      const silent = connect(s.port);
      const partial = connect(s.port);
      partial.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])); // a record header promising more
      expect(await Promise.all([closed(silent), closed(partial)])).toEqual(['', '']);
      expect(await openConnections(s.server)).toBe(0);
    } finally {
      await s.close();
    }
  });

  it('a TLS connection whose handshake finished but that sends no request is closed', { timeout: 15_000 }, async () => {
    const s = await serve({ tls: true });
    try {
      const socket = tls.connect({ port: s.port, host: '127.0.0.1', rejectUnauthorized: false });
      await new Promise((resolve) => socket.once('secureConnect', resolve));
      await closed(socket);
      expect(await openConnections(s.server)).toBe(0);
    } finally {
      await s.close();
    }
  });

  it('a plain connection that sends nothing, or half its headers, is closed (408 for the half)', { timeout: 15_000 }, async () => {
    const s = await serve();
    try {
      const silent = connect(s.port);
      const partial = connect(s.port);
      partial.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n');
      const [a, b] = await Promise.all([closed(silent), closed(partial)]);
      expect(a === '' || a.startsWith('HTTP/1.1 408')).toBe(true);
      expect(b).toMatch(/^HTTP\/1\.1 408/);
    } finally {
      await s.close();
    }
  });

  it('a keep-alive connection is closed after its idle time, having been served', async () => {
    const s = await serve();
    try {
      const socket = connect(s.port);
      socket.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n');
      expect(await closed(socket)).toMatch(/^HTTP\/1\.1 200/);
    } finally {
      await s.close();
    }
  });

  it('headers over the limit still get the OCI 431 over TLS (the connection speaks HTTP by then)', async () => {
    const s = await serve({ tls: true });
    try {
      const socket = tls.connect({ port: s.port, host: '127.0.0.1', rejectUnauthorized: false });
      socket.write(`GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Padding: ${'a'.repeat(20_000)}\r\n\r\n`);
      const got = await closed(socket);
      expect(got).toMatch(/^HTTP\/1\.1 431/);
      expect(got).toContain('"code":"SIZE_INVALID"');
    } finally {
      await s.close();
    }
  });
});

describe('TLS versions and ciphers', () => {
  const hello = (port: number, opts: tls.ConnectionOptions) =>
    new Promise<string>((resolve, reject) => {
      const socket = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, ...opts }, () => {
        resolve(`${socket.getProtocol()} ${socket.getCipher().standardName}`);
        socket.destroy();
      });
      socket.on('error', reject);
    });

  it('TLS 1.2 refuses static RSA and CBC suites and accepts ECDHE with GCM; TLS 1.3 works; TLS 1.1 does not', async () => {
    const s = await serve({ tls: true });
    try {
      const v12 = { maxVersion: 'TLSv1.2' as const };
      await expect(hello(s.port, { ...v12, ciphers: 'AES128-SHA' })).rejects.toThrow();
      await expect(hello(s.port, { ...v12, ciphers: 'AES128-GCM-SHA256' })).rejects.toThrow();
      await expect(hello(s.port, { ...v12, ciphers: 'ECDHE-RSA-AES128-SHA' })).rejects.toThrow();
      expect(await hello(s.port, { ...v12, ciphers: 'ECDHE-RSA-AES128-GCM-SHA256' })).toBe('TLSv1.2 TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256');
      expect(await hello(s.port, {})).toMatch(/^TLSv1\.3 TLS_/);
      await expect(hello(s.port, { minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' })).rejects.toThrow();
    } finally {
      await s.close();
    }
  });
});

/** A PATCH whose body is `first`, then silence (the socket stays open) or, with `rest`, the rest after `pauseMs`. */
function patch(port: number, path: string, length: number, first: Buffer): { socket: net.Socket; answer: Promise<string> } {
  const socket = connect(port);
  socket.write(`PATCH ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: ${length}\r\n\r\n`);
  socket.write(first);
  return { socket, answer: closed(socket) };
}

async function startUpload(url: string): Promise<string> {
  const res = await fetch(`${url}/v2/stall/app/blobs/uploads/`, { method: 'POST' });
  expect(res.status).toBe(202);
  return res.headers.get('location')!;
}

async function tempFiles(root: string): Promise<string[]> {
  const all = await readdir(root, { recursive: true });
  return all.filter((p) => p.split('/').pop()!.startsWith('.tmp-'));
}

describe('request bodies', () => {
  it('a stalled PATCH is abandoned after the body idle time: no temporary file is left and the upload is unchanged', { timeout: 15_000 }, async () => {
    const s = await serve();
    try {
      const location = await startUpload(s.url);
      const first = randomBytes(1000);
      const ok = await fetch(`${s.url}${location}`, { method: 'PATCH', body: first, headers: { 'Content-Range': '0-999' } });
      expect(ok.status).toBe(202);
      const { answer } = patch(s.port, location, 100_000, randomBytes(40_000));
      await answer; // the server closed it
      expect(await tempFiles(s.root)).toEqual([]);
      const status = await fetch(`${s.url}${location}`);
      expect(status.status).toBe(204);
      expect(status.headers.get('range')).toBe('0-999');
      // The upload goes on from where it was.
      const next = await fetch(`${s.url}${location}`, { method: 'PATCH', body: Buffer.alloc(10), headers: { 'Content-Range': '1000-1009' } });
      expect(next.status).toBe(202);
    } finally {
      await s.close();
    }
  });

  it('a stalled manifest PUT is abandoned and stores nothing', { timeout: 15_000 }, async () => {
    const s = await serve();
    try {
      const socket = connect(s.port);
      socket.write('PUT /v2/stall/app/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 500\r\n\r\n{"schemaVersion":2,');
      expect(await closed(socket)).toBe('');
      expect((await fetch(`${s.url}/v2/stall/app/manifests/v1`)).status).toBe(404);
    } finally {
      await s.close();
    }
  });

  it('silence is not counted while storage holds the body back, nor while the client waits for the commit', async () => {
    // Storage that takes nothing for 3 s (three body-idle periods) when an upload's data starts, and commits slowly.
    const slow = (d: StorageDriver) =>
      overriding(d, {
        put: async (path, body, opts) => {
          if (path.includes('/uploads/') && !Buffer.isBuffer(body)) await new Promise((r) => setTimeout(r, 3000));
          return d.put(path, body, opts);
        },
        move: async (src, dst, opts) => {
          await new Promise((r) => setTimeout(r, 2500));
          return d.move(src, dst, opts);
        },
      });
    const s = await serve({ wrap: slow });
    try {
      const location = await startUpload(s.url);
      // Far more than the socket and request buffers hold, so the client really is held back.
      const data = randomBytes(32 << 20);
      const res = await fetch(`${s.url}${location}`, { method: 'PATCH', body: Readable.from([data]) as unknown as BodyInit, duplex: 'half', headers: { 'Content-Length': String(data.length) } } as RequestInit);
      expect(res.status).toBe(202);
      expect(res.headers.get('range')).toBe(`0-${data.length - 1}`);
      const put = await fetch(`${s.url}${location}?digest=${sha256(data)}`, { method: 'PUT' });
      expect(put.status).toBe(201);
    } finally {
      await s.close();
    }
  }, 20_000);
});

describe('responses', () => {
  it('a download whose client stops reading is closed after send-idle, and its storage read with it', { timeout: 20_000 }, async () => {
    const reads: Readable[] = [];
    const tracked = (d: StorageDriver) =>
      overriding(d, {
        get: async (path, range) => {
          const got = await d.get(path, range);
          reads.push(got.body);
          return got;
        },
      });
    // Only the send side is short: pushing the blob on a busy machine must not trip the others.
    const s = await serve({ wrap: tracked, timeouts: { headers: 30, bodyIdle: 30, idle: 30 } });
    try {
      // Far more than the kernel's socket buffers on both sides take, so the server really has bytes waiting.
      const data = randomBytes(32 << 20);
      const put = await fetch(`${s.url}/v2/stall/app/blobs/uploads/?digest=${sha256(data)}`, { method: 'POST', body: data });
      expect(put.status).toBe(201);
      const socket = connect(s.port);
      socket.on('error', () => {});
      let head = '';
      const headers = new Promise<void>((resolve) => {
        const onData = (d: Buffer) => {
          head += d.subarray(0, 512).toString('latin1');
          if (!head.includes('\r\n\r\n')) return;
          socket.off('data', onData);
          socket.pause(); // and never read again
          resolve();
        };
        socket.on('data', onData);
      });
      // The server's end of this connection (fetch keeps its own open): a paused client would not see it close.
      const serverSide = new Promise<net.Socket>((resolve) =>
        s.server.on('connection', (peer: net.Socket) => {
          const match = () => peer.remotePort === socket.localPort && resolve(peer);
          if (socket.localPort !== undefined) match();
          else socket.once('connect', match);
        }),
      );
      socket.write(`GET /v2/stall/app/blobs/${sha256(data)} HTTP/1.1\r\nHost: x\r\n\r\n`);
      await headers;
      expect(head).toMatch(/^HTTP\/1\.1 200 /);
      const peer = await serverSide;
      const deadline = Date.now() + 10_000;
      while (!peer.destroyed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      expect(peer.destroyed).toBe(true);
      expect(reads).toHaveLength(1);
      expect(reads[0].destroyed).toBe(true);
      socket.destroy();
    } finally {
      await s.close();
    }
  });
});
