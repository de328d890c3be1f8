/** /auth/token as clients use it: GET, and POST with the OAuth2 form (password and refresh_token grants). */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { TokenIssuer } from '../../src/auth/tokens.js';
import { Users } from '../../src/auth/users.js';
import type { UserConfig } from '../../src/config/config.js';
import { createApp } from '../../src/http/app.js';
import { Access } from '../../src/http/auth.js';
import { DEFAULT_NAMESPACE } from '../../src/registry/paths.js';
import { Registry } from '../../src/registry/registry.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { basic, pushImage } from '../helpers/server.js';

const SECRET = 'token-endpoint-test-secret-0123456789abcdef';
const silent = pino({ level: 'silent' });

type TokenBody = { token: string; access_token: string; expires_in: number; issued_at: string; refresh_token?: string };
type ErrorBody = { errors: { code: string; message: string; detail?: unknown }[] };
const claimsOf = (token: string) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()) as Record<string, unknown>;

async function start(users: UserConfig[], opts: { htpasswd?: string; anonymousPull?: boolean; tokens?: TokenIssuer } = {}) {
  const root = await mkdtemp(join(tmpdir(), 'berth-token-'));
  const registry = new Registry(await FilesystemDriver.open(root));
  const access = new Access({
    users: new Users(users, DEFAULT_NAMESPACE, opts.htpasswd, silent),
    tokens: opts.tokens ?? new TokenIssuer(SECRET, 'berth'),
    defaultNamespace: DEFAULT_NAMESPACE,
    anonymousPull: opts.anonymousPull,
    log: silent,
  });
  const server = http.createServer(createApp(registry, { log: silent, access }));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await registry.close();
      await rm(root, { recursive: true, force: true });
    },
  };
}

const post = (url: string, form: Record<string, string>, headers: Record<string, string> = {}) =>
  fetch(`${url}/auth/token`, { method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded', ...headers }, body: new URLSearchParams(form).toString() });

describe('POST /auth/token (OAuth2 form)', () => {
  let s: Awaited<ReturnType<typeof start>>;
  beforeAll(async () => {
    s = await start([
      { name: 'ci', pass: 'ci-pw', access: 'write', namespace: 'ci' },
      { name: 'reader', pass: 'r-pw', access: 'read', namespace: 'ci' },
    ]);
    await pushImage(s.url, 'app', 'v1', [randomBytes(32)], {}, basic('ci', 'ci-pw'));
  });
  afterAll(async () => s.close());

  it('grant_type=password answers as GET does; a refresh token only when access_type=offline', async () => {
    const form = { grant_type: 'password', username: 'ci', password: 'ci-pw', scope: 'repository:app:pull,push', service: 'berth', client_id: 'containerd-client' };
    const online = await post(s.url, form);
    expect(online.status).toBe(200);
    expect(online.headers.get('cache-control')).toBe('no-store');
    const body = (await online.json()) as TokenBody;
    expect(body).toEqual({ token: body.access_token, access_token: expect.any(String), expires_in: 300, issued_at: expect.any(String) });
    expect(claimsOf(body.access_token)).toMatchObject({ sub: 'ci', ns: 'ci', access: [{ type: 'repository', name: 'app', actions: ['pull', 'push'] }] });
    const offline = (await (await post(s.url, { ...form, access_type: 'offline' })).json()) as TokenBody;
    expect(offline.refresh_token).toEqual(expect.any(String));
    const get = (await (await fetch(`${s.url}/auth/token?service=berth&scope=repository:app:pull`, { headers: basic('ci', 'ci-pw') })).json()) as TokenBody;
    expect(get.refresh_token).toBeUndefined();
  });

  it('GET with offline_token=true (docker login) gets a refresh token too', async () => {
    const res = await fetch(`${s.url}/auth/token?service=berth&offline_token=true&client_id=docker`, { headers: basic('ci', 'ci-pw') });
    expect(((await res.json()) as TokenBody).refresh_token).toEqual(expect.any(String));
  });

  it('grant_type=refresh_token gets access tokens for any scope the user may have, and no new refresh token', async () => {
    const { refresh_token } = (await (await post(s.url, { grant_type: 'password', username: 'reader', password: 'r-pw', access_type: 'offline', service: 'berth' })).json()) as TokenBody;
    const res = await post(s.url, { grant_type: 'refresh_token', refresh_token: refresh_token!, scope: 'repository:app:pull,push', service: 'berth', client_id: 'docker' });
    expect(res.status).toBe(200);
    const body = (await res.json()) as TokenBody;
    expect(body.refresh_token).toBeUndefined();
    // The reader's access as configured: pull only.
    expect(claimsOf(body.access_token)).toMatchObject({ sub: 'reader', ns: 'ci', access: [{ type: 'repository', name: 'app', actions: ['pull'] }] });
    expect((await fetch(`${s.url}/v2/app/manifests/v1`, { headers: { Authorization: `Bearer ${body.access_token}` } })).status).toBe(200);
  });

  it('a refresh token is not an access token, and an access token is not a refresh token', async () => {
    const { refresh_token, access_token } = (await (await post(s.url, { grant_type: 'password', username: 'ci', password: 'ci-pw', access_type: 'offline', scope: 'repository:app:pull' })).json()) as TokenBody;
    expect((await fetch(`${s.url}/v2/app/manifests/v1`, { headers: { Authorization: `Bearer ${refresh_token}` } })).status).toBe(401);
    expect((await post(s.url, { grant_type: 'refresh_token', refresh_token: access_token })).status).toBe(401);
  });

  it('refusals: a wrong password 401, a forged refresh token 401, a malformed request 400, an oversized form 413, all with the OCI body', async () => {
    const cases: [Promise<Response>, number, string][] = [
      [post(s.url, { grant_type: 'password', username: 'ci', password: 'wrong' }), 401, 'UNAUTHORIZED'],
      [post(s.url, { grant_type: 'refresh_token', refresh_token: 'eyJhbGciOiJIUzI1NiJ9.e30.AAAA' }), 401, 'UNAUTHORIZED'],
      [post(s.url, { grant_type: 'client_credentials' }), 400, 'UNSUPPORTED'],
      [post(s.url, { grant_type: 'password', username: 'ci' }), 400, 'UNSUPPORTED'],
      [post(s.url, { grant_type: 'password', username: 'ci', password: 'ci-pw', service: 'elsewhere' }), 400, 'UNSUPPORTED'],
      [fetch(`${s.url}/auth/token`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"grant_type":"password"}' }), 400, 'UNSUPPORTED'],
      [post(s.url, { grant_type: 'password', username: 'ci', password: 'x'.repeat(20_000) }), 413, 'SIZE_INVALID'],
    ];
    for (const [pending, status, code] of cases) {
      const res = await pending;
      expect(res.status).toBe(status);
      expect(((await res.json()) as ErrorBody).errors[0].code).toBe(code);
    }
  });

  it('a parameter meant once (service, offline_token, a form field) given twice is refused with 400 naming it, even when both values would do', async () => {
    const get = (query: string) => fetch(`${s.url}/auth/token?${query}`, { headers: basic('ci', 'ci-pw') });
    const form = (body: string) => fetch(`${s.url}/auth/token`, { method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body });
    const cases: [Promise<Response>, string][] = [
      [get('service=berth&service=elsewhere&scope=repository:app:pull'), 'service'],
      [get('service=berth&service=berth'), 'service'],
      [get('offline_token=true&offline_token=false'), 'offline_token'],
      [form('grant_type=password&username=ci&password=ci-pw&service=berth&service=other'), 'service'],
      [form('grant_type=password&username=ci&username=reader&password=ci-pw'), 'username'],
    ];
    for (const [pending, name] of cases) {
      const res = await pending;
      expect(res.status, name).toBe(400);
      expect(((await res.json()) as ErrorBody).errors[0], name).toEqual({ code: 'UNSUPPORTED', message: `parameter ${name} given more than once` });
    }
    // Scope is a list: repeating it is how clients ask for several.
    const several = await get('service=berth&scope=repository:app:pull&scope=repository:other:pull');
    expect(several.status).toBe(200);
  });

  it('an anonymous push-scope request gets a 401 with detail, which docker treats as final (no 50 s of retries)', async () => {
    const res = await fetch(`${s.url}/auth/token?service=berth&scope=repository:app:pull,push`);
    expect(res.status).toBe(401);
    // docker reads {code, message: "authentication required"} without detail as a bare code and retries the push.
    expect(((await res.json()) as ErrorBody).errors[0]).toEqual({ code: 'UNAUTHORIZED', message: 'authentication required', detail: { scope: 'repository:app:pull,push' } });
  });
});

describe('refresh tokens end when the user changes', () => {
  let dir: string;
  let s: Awaited<ReturnType<typeof start>>;
  const entry = (name: string, password: string) => `${name}:${bcrypt.hashSync(password, 4)}\n`;
  const refresh = (token: string) => post(s.url, { grant_type: 'refresh_token', refresh_token: token, scope: 'repository:app:pull' });
  const offline = async (password: string) =>
    ((await (await post(s.url, { grant_type: 'password', username: 'h', password, access_type: 'offline' })).json()) as TokenBody).refresh_token!;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-refresh-'));
    await writeFile(join(dir, 'htpasswd'), entry('h', 'old-pw'));
    s = await start([{ name: 'h', access: 'write' }], { htpasswd: join(dir, 'htpasswd') });
  });
  afterAll(async () => {
    await s.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('a new password in the htpasswd file ends the old refresh tokens; removing the user ends the new ones', async () => {
    const old = await offline('old-pw');
    expect((await refresh(old)).status).toBe(200);
    await writeFile(join(dir, 'htpasswd'), `# rewritten\n${entry('h', 'new-pw')}`);
    // The file is looked at again at most once a second.
    await vi.waitFor(async () => expect((await refresh(old)).status).toBe(401), { timeout: 30_000, interval: 250 });
    const renewed = await offline('new-pw');
    expect((await refresh(renewed)).status).toBe(200);
    await writeFile(join(dir, 'htpasswd'), '# nobody\n');
    await vi.waitFor(async () => expect((await refresh(renewed)).status).toBe(401), { timeout: 30_000, interval: 250 });
  });
});

describe('refresh token claims', () => {
  const issuer = new TokenIssuer(SECRET, 'berth', { refreshSeconds: 3600 });
  const entry = JSON.stringify(['u', 'pw', 'write', '_local']);

  it('bound to the entry: another password, access or namespace, or no user, ends it', async () => {
    const token = await issuer.issueRefresh('u', entry);
    expect(await issuer.verifyRefresh(token, () => entry)).toBe('u');
    for (const other of [['u', 'pw2', 'write', '_local'], ['u', 'pw', 'read', '_local'], ['u', 'pw', 'write', 'ns']]) {
      expect(await issuer.verifyRefresh(token, () => JSON.stringify(other)), JSON.stringify(other)).toBeNull();
    }
    expect(await issuer.verifyRefresh(token, () => undefined)).toBeNull();
  });

  it('expires after the configured lifetime (default one day)', async () => {
    expect(new TokenIssuer(SECRET, 'berth').refreshSeconds).toBe(86_400);
    const stale = await issuer.issueRefresh('u', entry, Date.now() - 3601_000);
    expect(await issuer.verifyRefresh(stale, () => entry)).toBeNull();
    expect(claimsOf(await issuer.issueRefresh('u', entry))).toMatchObject({ iss: 'berth-refresh', sub: 'u', bind: expect.any(String) });
  });

  it("the binding in the readable payload is keyed: it holds neither the password nor a plain hash of the entry", async () => {
    const { bind } = claimsOf(await issuer.issueRefresh('u', entry)) as { bind: string };
    const { createHash } = await import('node:crypto');
    expect(bind).not.toBe(createHash('sha256').update(entry).digest('base64url'));
    expect(bind).not.toContain('pw');
  });
});

describe("zuul-registry's rule through POST", () => {
  let s: Awaited<ReturnType<typeof start>>;
  afterEach(() => vi.restoreAllMocks());
  beforeAll(async () => {
    s = await start([{ name: 'zuul', pass: 'zuul-pw', access: 'write' }], { anonymousPull: true });
  });
  afterAll(async () => s.close());

  it('a pull-only POST gets a read token whatever grant it carries, unchecked; a push scope is checked', async () => {
    const check = vi.spyOn(Users.prototype, 'check');
    for (const form of <Record<string, string>[]>[
      { grant_type: 'password', username: 'dockerhub-user', password: 'hub-pw' },
      { grant_type: 'refresh_token', refresh_token: 'another-registrys-token' },
    ]) {
      const res = await post(s.url, { ...form, scope: 'repository:library/busybox:pull', access_type: 'offline' });
      expect(res.status).toBe(200);
      const body = (await res.json()) as TokenBody;
      expect(claimsOf(body.access_token)).toMatchObject({ sub: '', access: [{ type: 'repository', name: 'library/busybox', actions: ['pull'] }] });
      // Nobody's password was checked: no refresh token.
      expect(body.refresh_token).toBeUndefined();
    }
    expect(check).not.toHaveBeenCalled();
    expect((await post(s.url, { grant_type: 'password', username: 'zuul', password: 'wrong', scope: 'repository:x:pull,push' })).status).toBe(401);
    expect(check).toHaveBeenCalledTimes(1);
  });
});

describe('tokens are for this deployment and its namespaces only', () => {
  let s: Awaited<ReturnType<typeof start>>;
  const audience = 'berth:127.0.0.1:5000:0123456789abcdef';
  const push = (token: string) => fetch(`${s.url}/v2/app/blobs/uploads/`, { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
  const forge = (issuer: TokenIssuer, ns: string) => issuer.issue({ sub: 'mallory', ns, access: [{ type: 'repository', name: 'app', actions: ['pull', 'push'] }] }).then((t) => t.token);
  beforeAll(async () => {
    s = await start([{ name: 'ci', pass: 'ci-pw', access: 'write', namespace: 'ci' }], { tokens: new TokenIssuer(SECRET, 'berth', { audience }) });
  });
  afterAll(async () => s.close());

  it("tokens carry the deployment's audience; one signed with the same secret for another audience is refused", async () => {
    const res = await fetch(`${s.url}/auth/token?service=berth&scope=repository:app:pull,push`, { headers: basic('ci', 'ci-pw') });
    const { token } = (await res.json()) as TokenBody;
    expect(claimsOf(token).aud).toBe(audience);
    expect((await push(token)).status).toBe(202);
    const elsewhere = new TokenIssuer(SECRET, 'berth', { audience: 'berth:127.0.0.1:5001:0123456789abcdef' });
    expect((await push(await forge(elsewhere, 'ci'))).status).toBe(401);
  });

  it('a well-signed token for a namespace the configuration does not know is refused (it would create one prune never visits)', async () => {
    const here = new TokenIssuer(SECRET, 'berth', { audience });
    expect((await push(await forge(here, 'ci'))).status).toBe(202);
    expect((await push(await forge(here, DEFAULT_NAMESPACE))).status).toBe(202);
    const res = await push(await forge(here, 'invented'));
    expect(res.status).toBe(401);
    expect(((await res.json()) as ErrorBody).errors[0].code).toBe('UNAUTHORIZED');
  });
});
