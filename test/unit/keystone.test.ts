/**
 * Keystone v3 login against recorded responses (shapes from a real Keystone 22, see the README): token header,
 * catalog endpoint by interface and region, expiry, refusals. A local HTTP server replays them.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuthError, login } from '../../src/storage/swift/auth.js';

const PROJECT = '6779ab3d5baf456daa411d325d3b645d';
const recorded = {
  token: {
    methods: ['password'],
    user: { id: 'u1', name: 'reg', domain: { id: 'default', name: 'Default' }, password_expires_at: null },
    expires_at: '2031-01-01T12:00:00.000000Z',
    issued_at: '2031-01-01T11:00:00.000000Z',
    project: { id: PROJECT, name: 'registry', domain: { id: 'default', name: 'Default' } },
    catalog: [
      { type: 'identity', name: 'keystone', id: 'k', endpoints: [{ id: 'e0', interface: 'public', region_id: 'RegionOne', region: 'RegionOne', url: 'http://127.0.0.1:5050/v3' }] },
      {
        type: 'object-store',
        name: 'swift',
        id: 's',
        endpoints: [
          { id: 'e1', interface: 'public', region_id: 'RegionOne', region: 'RegionOne', url: `http://public.example:8081/v1/AUTH_${PROJECT}` },
          { id: 'e2', interface: 'internal', region_id: 'RegionOne', region: 'RegionOne', url: `http://internal.example:8081/v1/AUTH_${PROJECT}` },
          { id: 'e3', interface: 'public', region_id: 'RegionTwo', region: 'RegionTwo', url: `http://two.example:8081/v1/AUTH_${PROJECT}` },
        ],
      },
    ],
  },
};

let server: http.Server;
let base: string;
const requests: { url: string; body: unknown }[] = [];
beforeAll(async () => {
  server = http.createServer((req, res) => {
    let raw = '';
    req.on('data', (d) => (raw += d));
    req.on('end', () => {
      const body = JSON.parse(raw || '{}') as { auth?: { identity?: { password?: { user?: { password?: string } } } } };
      requests.push({ url: req.url!, body });
      if (req.url !== '/v3/auth/tokens' || req.method !== 'POST') {
        res.writeHead(404).end();
      } else if (body.auth?.identity?.password?.user?.password === 'wrong') {
        res.writeHead(401, { 'Content-Type': 'application/json', 'WWW-Authenticate': 'Keystone uri="http://127.0.0.1:5050/v3"' });
        res.end(JSON.stringify({ error: { code: 401, message: 'The request you have made requires authentication.', title: 'Unauthorized' } }));
      } else {
        res.writeHead(201, { 'Content-Type': 'application/json', 'X-Subject-Token': 'gAAAAAB-recorded-fernet-token' });
        res.end(JSON.stringify(recorded));
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise((r) => server.close(r)));

const password = (extra: object = {}) => ({
  type: 'password' as const,
  authUrl: base,
  username: 'reg',
  password: 'pw',
  userDomainName: 'Default',
  projectName: 'registry',
  projectDomainName: 'Default',
  interface: 'public',
  ...extra,
});

describe('Keystone v3 login', () => {
  it('takes the token from X-Subject-Token, the storage URL from the catalog and the expiry from the body', async () => {
    const session = await login(password({ regionName: 'RegionOne' }));
    expect(session).toEqual({
      token: 'gAAAAAB-recorded-fernet-token',
      storageUrl: `http://public.example:8081/v1/AUTH_${PROJECT}`,
      expiresAt: Date.parse('2031-01-01T12:00:00Z'),
    });
    expect(requests.at(-1)!.url).toBe('/v3/auth/tokens');
  });

  it('chooses the endpoint by interface and region', async () => {
    expect((await login(password({ interface: 'internal' }))).storageUrl).toMatch(/^http:\/\/internal\.example/);
    expect((await login(password({ regionName: 'RegionTwo' }))).storageUrl).toMatch(/^http:\/\/two\.example/);
    await expect(login(password({ regionName: 'RegionNine' }))).rejects.toThrow(/no object-store endpoint with interface public in region RegionNine/);
  });

  it('application credentials log in without a scope', async () => {
    await login({ type: 'v3applicationcredential', authUrl: `${base}/v3`, id: 'abc', secret: 's3cret', interface: 'public' });
    const sent = requests.at(-1)!.body as { auth: Record<string, unknown> };
    expect(sent.auth.scope).toBeUndefined();
    expect(sent.auth.identity).toEqual({ methods: ['application_credential'], application_credential: { id: 'abc', secret: 's3cret' } });
  });

  it('a refusal is final and its message holds no secret; an unreachable Keystone is retryable', async () => {
    const refused = await login(password({ password: 'wrong' })).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(AuthError);
    expect((refused as AuthError).retryable).toBe(false);
    expect((refused as Error).message).not.toContain('wrong');
    const down = await login(password({ authUrl: 'http://127.0.0.1:1' })).catch((e: unknown) => e);
    expect(down).toBeInstanceOf(AuthError);
    expect((down as AuthError).retryable).toBe(true);
  });
});
