import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { BcryptPool, PoolBusy } from '../../src/auth/bcrypt-pool.js';
import { LoginLimiter, LoginRefused, addressKey } from '../../src/auth/login-limiter.js';
import { TokenIssuer } from '../../src/auth/tokens.js';
import { Users, type LoginOptions } from '../../src/auth/users.js';
import type { UserConfig } from '../../src/config/config.js';
import { createApp } from '../../src/http/app.js';
import { Access } from '../../src/http/auth.js';
import { DEFAULT_NAMESPACE } from '../../src/registry/paths.js';
import { Registry } from '../../src/registry/registry.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';

const silent = pino({ level: 'silent' });
const pool = new BcryptPool({ size: 1 });
afterAll(() => pool.close());
afterEach(() => vi.restoreAllMocks());

describe('the bcrypt worker pool', () => {
  const hash = bcrypt.hashSync('right', 4);

  it('answers true for the right password and false for a wrong one', async () => {
    expect(await pool.compare('right', hash)).toBe(true);
    expect(await pool.compare('wrong', hash)).toBe(false);
    expect(pool.threads).toBe(1);
  });

  it('serves waiting checks lowest priority first, in order of arrival within one priority', async () => {
    const done: string[] = [];
    const run = (label: string, priority: number) => pool.compare('right', hash, priority).then(() => void done.push(label));
    // The first one takes the only worker; the rest wait and are then picked by priority.
    await Promise.all([run('busy', 9), run('guess-1', 5), run('guess-2', 5), run('clean', 0), run('guess-3', 7)]);
    expect(done).toEqual(['busy', 'clean', 'guess-1', 'guess-2', 'guess-3']);
  });

  it('drops a waiting check whose signal aborts (its client went away); the others go on', async () => {
    const gone = new AbortController();
    const busy = pool.compare('right', hash);
    const dropped = pool.compare('right', hash, 0, gone.signal);
    const kept = pool.compare('wrong', hash, 0);
    gone.abort(new Error('client went away'));
    await expect(dropped).rejects.toThrow('client went away');
    expect([await busy, await kept]).toEqual([true, false]);
  });

  it('refuses checks beyond its queue with PoolBusy instead of queueing without end', async () => {
    const small = new BcryptPool({ size: 1, maxWaiting: 2 });
    try {
      // One running, two waiting: the fourth is refused (each from its own /24, so no share of the queue is exceeded).
      const from = (i: number) => [0, undefined, `10.0.${i}.1`] as const;
      const accepted = [small.compare('right', hash, ...from(1)), small.compare('right', hash, ...from(2)), small.compare('wrong', hash, ...from(3))];
      await expect(small.compare('right', hash, ...from(4))).rejects.toBeInstanceOf(PoolBusy);
      expect(await Promise.all(accepted)).toEqual([true, true, false]);
    } finally {
      await small.close();
    }
  });
});

describe('the failed-login limit', () => {
  it('after `failures` failed checks an address is refused with a retry time until a token refills; other addresses are not', () => {
    let now = 1_000_000;
    const limiter = new LoginLimiter({ failures: 3, refillSeconds: 30 }, () => now);
    for (let i = 0; i < 3; i++) limiter.reserve('10.0.0.1').keep();
    const refused = (() => {
      try {
        limiter.reserve('10.0.0.1');
      } catch (err) {
        return err as LoginRefused;
      }
    })();
    expect(refused).toBeInstanceOf(LoginRefused);
    expect(refused!.retryAfter).toBe(30);
    expect(() => limiter.reserve('10.0.0.2').refund()).not.toThrow();
    now += 10_000;
    expect(() => limiter.reserve('10.0.0.1')).toThrow(LoginRefused);
    now += 20_000;
    expect(() => limiter.reserve('10.0.0.1').keep()).not.toThrow();
    expect(() => limiter.reserve('10.0.0.1')).toThrow(LoginRefused);
  });

  it('successful checks give their token back, and forget the address once it owes nothing', () => {
    const limiter = new LoginLimiter({ failures: 2 });
    for (let i = 0; i < 10; i++) limiter.reserve('10.0.0.1').refund();
    expect(limiter.size).toBe(0);
    limiter.reserve('10.0.0.1').keep();
    expect(limiter.size).toBe(1);
    const last = limiter.reserve('10.0.0.1');
    expect(last.priority).toBe(2);
    expect(last.keep()).toBe(true);
  });

  it('remembers at most maxAddresses, the least recently seen going first', () => {
    const limiter = new LoginLimiter({ failures: 1, maxAddresses: 2 });
    for (const a of ['10.0.0.1', '10.0.0.2', '10.0.0.3']) limiter.reserve(a).keep();
    expect(limiter.size).toBe(2);
    expect(() => limiter.reserve('10.0.0.3')).toThrow(LoginRefused);
    expect(() => limiter.reserve('10.0.0.1')).not.toThrow();
  });

  it('limits IPv6 clients by their /64 and IPv4-mapped addresses as IPv4', () => {
    expect(addressKey('2001:db8:1:2:3:4:5:6')).toBe(addressKey('2001:db8:1:2::99'));
    expect(addressKey('2001:db8:1:2::99')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:db8:1:3::1')).not.toBe(addressKey('2001:db8:1:2::1'));
    expect(addressKey('::1')).toBe('0:0:0:0::/64');
    expect(addressKey('::ffff:192.0.2.7')).toBe('192.0.2.7');
    expect(addressKey(undefined)).toBe('unknown');
  });
});

describe('the login cache', () => {
  let dir: string;
  const entry = (name: string, password: string) => `${name}:${bcrypt.hashSync(password, 4)}\n`;
  const htpasswdUser: UserConfig[] = [{ name: 'h', access: 'write' }];
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-login-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  async function usersWith(password: string, opts: LoginOptions = {}) {
    const file = join(dir, `htpasswd-${Math.random()}`);
    await writeFile(file, entry('h', password));
    return { file, users: new Users(htpasswdUser, DEFAULT_NAMESPACE, file, silent, { pool, ...opts }) };
  }

  it('a repeated right password is answered without bcrypt', async () => {
    const { users } = await usersWith('pw');
    const compare = vi.spyOn(pool, 'compare');
    expect(await users.check('h', 'pw')).toMatchObject({ name: 'h' });
    expect(compare).toHaveBeenCalledTimes(1);
    expect(await users.check('h', 'pw')).toMatchObject({ name: 'h' });
    expect(compare).toHaveBeenCalledTimes(1);
    // Another password for the same name is a new check.
    expect(await users.check('h', 'pw2')).toBeNull();
    expect(compare).toHaveBeenCalledTimes(2);
  });

  it('a repeated wrong password is neither checked again nor counted as another failure', async () => {
    const { users } = await usersWith('pw', { limits: { failures: 2 } });
    const compare = vi.spyOn(pool, 'compare');
    for (let i = 0; i < 5; i++) expect(await users.check('h', 'docker-hub-pw', { address: '10.0.0.1' })).toBeNull();
    expect(compare).toHaveBeenCalledTimes(1);
    expect(await users.check('h', 'guess', { address: '10.0.0.1' })).toBeNull();
    await expect(users.check('h', 'pw', { address: '10.0.0.1' })).rejects.toBeInstanceOf(LoginRefused);
  });

  it('an htpasswd reload drops it: a changed password stops working at once', async () => {
    const { file, users } = await usersWith('old-pw');
    const compare = vi.spyOn(pool, 'compare');
    expect(await users.check('h', 'old-pw')).not.toBeNull();
    expect(await users.check('h', 'old-pw')).not.toBeNull();
    expect(compare).toHaveBeenCalledTimes(1);
    await writeFile(file, entry('h', 'new-pw'));
    // The file is looked at again at most once a second.
    await vi.waitFor(async () => expect(await users.check('h', 'new-pw')).not.toBeNull(), { timeout: 30_000, interval: 250 });
    expect(await users.check('h', 'old-pw')).toBeNull();
  });
});

describe('failed logins over HTTP', () => {
  const lines: { msg: string; req?: string; user?: string; address?: string }[] = [];
  const log = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  let root: string;
  let server: http.Server;
  let url: string;
  let registry: Registry;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'berth-login-http-'));
    registry = new Registry(await FilesystemDriver.open(root));
    const users = new Users([{ name: 'zuul', pass: bcrypt.hashSync('zuul-pw', 4), access: 'write' }], DEFAULT_NAMESPACE, undefined, log, {
      pool,
      limits: { failures: 3, refillSeconds: 60 },
    });
    const access = new Access({ users, tokens: new TokenIssuer('test-secret-0123456789', 'berth'), defaultNamespace: DEFAULT_NAMESPACE, log });
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

  /** A GET from a chosen loopback address (Linux routes all of 127/8 to lo). */
  function get(path: string, headers: Record<string, string>, localAddress: string) {
    return new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>((resolve, reject) => {
      const req = http.get(`${url}${path}`, { headers, localAddress, agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
      });
      req.on('error', reject);
    });
  }
  const basicAuth = (user: string, pass: string) => ({ Authorization: `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}` });

  it("after N failures one address gets 429 with Retry-After, right password included; another address still logs in as that user, and the limited one's token still works", async () => {
    const attacker = '127.0.0.1';
    const good = await get('/auth/token?service=berth&scope=repository:app:pull', basicAuth('zuul', 'zuul-pw'), attacker);
    expect(good.status).toBe(200);
    const token = (JSON.parse(good.body) as { token: string }).token;
    for (let i = 0; i < 3; i++) expect((await get('/v2/', basicAuth('zuul', `guess-${i}`), attacker)).status).toBe(401);
    for (const path of ['/v2/', '/auth/token?service=berth']) {
      for (const pass of ['guess-x', 'zuul-pw']) {
        const res = await get(path, basicAuth('zuul', pass), attacker);
        expect(res.status, `${path} ${pass}`).toBe(429);
        expect(Number(res.headers['retry-after']), `${path} ${pass}`).toBeGreaterThanOrEqual(1);
        expect(JSON.parse(res.body)).toEqual({ errors: [{ code: 'TOOMANYREQUESTS', message: expect.any(String) }] });
      }
    }
    expect((await get('/v2/', basicAuth('zuul', 'zuul-pw'), '127.0.0.2')).status).toBe(200);
    expect((await get('/auth/token?service=berth', basicAuth('zuul', 'zuul-pw'), '127.0.0.3')).status).toBe(200);
    expect((await get('/v2/', { Authorization: `Bearer ${token}` }, attacker)).status).toBe(200);
    expect(lines.filter((l) => l.msg.startsWith('too many failed logins')).map((l) => l.address)).toEqual([attacker]);
  });

  it('a failed login is logged with the request id the client was given', async () => {
    for (const path of ['/v2/', '/auth/token?service=berth']) {
      const res = await get(path, basicAuth('zuul', `wrong-${path}`), '127.0.0.4');
      expect(res.status).toBe(401);
      const id = res.headers['x-request-id'];
      expect(id).toMatch(/^[0-9a-f-]{36}$/);
      expect(lines.filter((l) => l.msg === 'failed login' && l.req === id).map((l) => [l.user, l.address])).toEqual([['zuul', '127.0.0.4']]);
    }
  });
});
