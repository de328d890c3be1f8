/** The access log says who made each request and in which namespace, and never holds a credential. */
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenIssuer } from '../../src/auth/tokens.js';
import { Users } from '../../src/auth/users.js';
import { createApp } from '../../src/http/app.js';
import { Access } from '../../src/http/auth.js';
import { DEFAULT_NAMESPACE } from '../../src/registry/paths.js';
import { Registry } from '../../src/registry/registry.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { basic, pushBlob } from '../helpers/server.js';

const PASSWORD = 'alice-secret-password-1';
const lines: string[] = [];
let root: string;
let server: http.Server;
let registry: Registry;
let url: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'berth-alog-'));
  const log = pino({ level: 'info' }, { write: (line: string) => void lines.push(line) });
  registry = new Registry(await FilesystemDriver.open(root));
  const access = new Access({
    users: new Users([{ name: 'alice', pass: PASSWORD, access: 'write', namespace: 'tenant-a' }], DEFAULT_NAMESPACE, undefined, log),
    tokens: new TokenIssuer('access-log-secret-0123456789', 'berth'),
    defaultNamespace: DEFAULT_NAMESPACE,
    log,
  });
  server = http.createServer(createApp(registry, { log, access }));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  await registry.close();
  await rm(root, { recursive: true, force: true });
});

interface Line {
  msg: string;
  req: string;
  method: string;
  path: string;
  status: number;
  user?: string;
  ns?: string;
}
const requestLine = (id: string | null) => lines.map((l) => JSON.parse(l) as Line).find((l) => l.msg === 'request' && l.req === id);

describe('access log', () => {
  it('names the user and namespace of Basic and Bearer requests, and not of anonymous ones', async () => {
    const digest = await pushBlob(url, 'app', Buffer.from('layer'), basic('alice', PASSWORD));
    const head = await fetch(`${url}/v2/app/blobs/${digest}`, { method: 'HEAD', headers: basic('alice', PASSWORD) });
    expect(head.status).toBe(200);
    expect(requestLine(head.headers.get('x-request-id'))).toMatchObject({ method: 'HEAD', status: 200, user: 'alice', ns: 'tenant-a' });

    const t = await fetch(`${url}/auth/token?service=berth&scope=repository:app:pull`, { headers: basic('alice', PASSWORD) });
    const { token } = (await t.json()) as { token: string };
    const bearer = await fetch(`${url}/v2/app/blobs/${digest}`, { method: 'HEAD', headers: { Authorization: `Bearer ${token}` } });
    expect(bearer.status).toBe(200);
    expect(requestLine(bearer.headers.get('x-request-id'))).toMatchObject({ status: 200, user: 'alice', ns: 'tenant-a' });

    // Authenticated but refused: who was refused is what an operator wants to know.
    const denied = await fetch(`${url}/v2/app/blobs/uploads/`, { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
    expect(denied.status).toBeGreaterThanOrEqual(401);
    expect(requestLine(denied.headers.get('x-request-id'))).toMatchObject({ user: 'alice', ns: 'tenant-a' });

    const anonymous = await fetch(`${url}/v2/`);
    expect(anonymous.status).toBe(401);
    const line = requestLine(anonymous.headers.get('x-request-id'))!;
    expect(line.status).toBe(401);
    expect(line.user).toBeUndefined();

    const all = lines.join('');
    expect(all).not.toContain(PASSWORD);
    expect(all).not.toContain(token);
    expect(all).not.toContain(basic('alice', PASSWORD).Authorization.slice(6));
  });
});
