/**
 * On real Swift: a registry whose container disappears, or whose Swift stops answering, says so. /readyz answers
 * 503 and pushes get 503 UNAVAILABLE (not 500 UNKNOWN), with the cause in the log.
 */
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadCloud } from '../../src/storage/swift/clouds.js';
import { SwiftDriver } from '../../src/storage/swift/driver.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { TEST_CLOUD, dropContainer, ensureSwift, freshContainer, swiftDriver } from '../helpers/swift.js';

beforeAll(async () => {
  await ensureSwift();
});

const errorOf = async (res: Response) => ((await res.json()) as { errors: { code: string }[] }).errors[0].code;

describe('Swift storage that cannot serve', () => {
  let s: TestServer;
  const container = freshContainer();
  beforeAll(async () => {
    s = await startServer(await swiftDriver(container));
  });
  afterAll(async () => {
    await s.close();
    await dropContainer(container);
  });

  it('a container deleted under a running server: /readyz 503, a push 503 UNAVAILABLE', async () => {
    expect((await fetch(`${s.url}/readyz`)).status).toBe(200);
    expect((await fetch(`${s.url}/v2/app/blobs/uploads/`, { method: 'POST' })).status).toBe(202);
    await dropContainer(container);
    const ready = await fetch(`${s.url}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.json()).toEqual({ status: 'unavailable', storage: 'swift' });
    const push = await fetch(`${s.url}/v2/app/blobs/uploads/`, { method: 'POST' });
    expect(push.status).toBe(503);
    expect(await errorOf(push)).toBe('UNAVAILABLE');
  });
});

describe('Swift that stops answering', () => {
  let s: TestServer;
  let proxy: net.Server;
  const sockets = new Set<net.Socket>();
  const container = freshContainer();
  beforeAll(async () => {
    // A TCP relay to Swift that can be shut: Swift's tempauth names the relay in the storage URL it hands out, so
    // every request of the driver goes through it.
    proxy = net.createServer((client) => {
      const upstream = net.connect(8080, '127.0.0.1');
      for (const sock of [client, upstream]) {
        sockets.add(sock);
        sock.on('close', () => sockets.delete(sock));
        sock.on('error', () => {});
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const auth = loadCloud(TEST_CLOUD, await ensureSwift());
    const port = (proxy.address() as AddressInfo).port;
    s = await startServer(await SwiftDriver.connect({ auth: { ...auth, authUrl: auth.authUrl.replace(':8080', `:${port}`) }, container }));
  });
  afterAll(async () => {
    await s.close();
    await dropContainer(container);
  });

  it('connections refused: /readyz 503, a push 503 UNAVAILABLE', async () => {
    expect((await fetch(`${s.url}/readyz`)).status).toBe(200);
    await new Promise((resolve) => {
      proxy.close(resolve);
      for (const sock of sockets) sock.destroy();
    });
    expect((await fetch(`${s.url}/readyz`)).status).toBe(503);
    const push = await fetch(`${s.url}/v2/app/blobs/uploads/`, { method: 'POST' });
    expect(push.status).toBe(503);
    expect(await errorOf(push)).toBe('UNAVAILABLE');
  });
});

describe('Swift that refuses our credentials', () => {
  let s: TestServer;
  let proxy: http.Server;
  let refusing = false;
  const container = freshContainer();
  beforeAll(async () => {
    // An HTTP relay to Swift that can start answering 401 to everything, login included (a revoked password or
    // application credential): only an injected fault, as the shared Swift's accounts are not ours to change.
    proxy = http.createServer((req, res) => {
      if (refusing) return void res.writeHead(401, { 'Content-Length': '0' }).end();
      const up = http.request({ host: '127.0.0.1', port: 8080, method: req.method, path: req.url, headers: req.headers }, (answer) => {
        res.writeHead(answer.statusCode!, answer.headers);
        answer.pipe(res);
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const auth = loadCloud(TEST_CLOUD, await ensureSwift());
    const port = (proxy.address() as AddressInfo).port;
    s = await startServer(await SwiftDriver.connect({ auth: { ...auth, authUrl: auth.authUrl.replace(':8080', `:${port}`) }, container }));
  });
  afterAll(async () => {
    await s.close();
    proxy.closeAllConnections();
    await new Promise((resolve) => proxy.close(resolve));
    await dropContainer(container);
  });

  it('token and login refused: /readyz 503, a push 503 UNAVAILABLE', async () => {
    expect((await fetch(`${s.url}/readyz`)).status).toBe(200);
    refusing = true;
    expect((await fetch(`${s.url}/readyz`)).status).toBe(503);
    const push = await fetch(`${s.url}/v2/app/blobs/uploads/`, { method: 'POST' });
    expect(push.status).toBe(503);
    expect(await errorOf(push)).toBe('UNAVAILABLE');
  });
});
