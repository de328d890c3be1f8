/** The web page at HTTP level: headers, cookie flags, sign-in checks, access rules, escaping, what the tables say. */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenIssuer } from '../../src/auth/tokens.js';
import { Users } from '../../src/auth/users.js';
import type { UserConfig } from '../../src/config/config.js';
import { createApp } from '../../src/http/app.js';
import { Access } from '../../src/http/auth.js';
import { DEFAULT_NAMESPACE } from '../../src/registry/paths.js';
import { Registry } from '../../src/registry/registry.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { parsePage, type WebOptions } from '../../src/web/pages.js';
import { Sessions, setCookie } from '../../src/web/session.js';
import { basic, pushImage, sha256 } from '../helpers/server.js';

const SECRET = 'web-test-secret-0123456789abcdef0123456789';
const CSP = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const silent = pino({ level: 'silent' });
const USERS: UserConfig[] = [
  { name: 'alice', pass: 'alice-pw', access: 'write', namespace: 'team-a' },
  { name: 'bob', pass: 'bob-pw', access: 'write', namespace: 'team-b' },
];

async function start(users: UserConfig[], web: Partial<WebOptions> = {}, extra: { anonymousPull?: boolean; failures?: number } = {}) {
  const root = await mkdtemp(join(tmpdir(), 'berth-web-'));
  const registry = new Registry(await FilesystemDriver.open(root));
  const access = new Access({
    users: new Users(users, DEFAULT_NAMESPACE, undefined, silent, { limits: { failures: extra.failures ?? 100 } }),
    tokens: new TokenIssuer(SECRET, 'berth'),
    defaultNamespace: DEFAULT_NAMESPACE,
    anonymousPull: extra.anonymousPull,
    log: silent,
  });
  const options: WebOptions = { secret: SECRET, audience: 'berth', tls: false, expirationOf: (ns) => (ns === 'team-a' ? 86400 : undefined), ...web };
  const server = http.createServer(createApp(registry, { log: silent, access, web: options }));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await registry.close();
      await rm(root, { recursive: true, force: true });
    },
  };
}

const signIn = (url: string, username: string, password: string, headers: Record<string, string> = { Origin: url }) =>
  fetch(`${url}/ui/signin`, {
    method: 'POST',
    redirect: 'manual',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams({ username, password }).toString(),
  });

async function cookieOf(url: string, user: string, pass: string): Promise<string> {
  const res = await signIn(url, user, pass);
  expect(res.status).toBe(303);
  return res.headers.get('set-cookie')!.split(';')[0];
}

const page = (url: string, path: string, cookie?: string) => fetch(`${url}${path}`, { redirect: 'manual', headers: cookie ? { Cookie: cookie } : {} });

describe('web page', () => {
  let s: Awaited<ReturnType<typeof start>>;
  let alice: string;
  let bob: string;
  let image: Awaited<ReturnType<typeof pushImage>>;
  const layers = [randomBytes(1000), randomBytes(2345)];
  const XSS = '<script>alert(1)</script>';

  beforeAll(async () => {
    s = await start(USERS);
    const a = basic('alice', 'alice-pw');
    image = await pushImage(s.url, 'app/web', 'v1', layers, { annotations: { 'org.opencontainers.image.title': XSS, [`x"><img src=x>`]: 'ok' } }, a);
    await pushImage(s.url, 'app/web', 'sig', [randomBytes(10)], { artifactType: 'application/vnd.example.sig', subject: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: image.digest, size: image.body.length }, annotations: { note: XSS } }, a);
    await pushImage(s.url, 'secret-b', 'v1', [randomBytes(50)], {}, basic('bob', 'bob-pw'));
    alice = await cookieOf(s.url, 'alice', 'alice-pw');
    bob = await cookieOf(s.url, 'bob', 'bob-pw');
  });
  afterAll(async () => s.close());

  it('every page sends the strict CSP, nosniff and no-referrer; the stylesheet is same-origin', async () => {
    for (const [path, status] of [['/ui/signin', 200], ['/ui/', 200], ['/ui/repo/app/web', 200], ['/ui/style.css', 200], ['/ui/icon.svg', 200], ['/ui/nope', 404], [`/ui/repo/app/web/-/manifest/${image.digest}`, 200]] as const) {
      const res = await page(s.url, path, alice);
      expect(res.status, path).toBe(status);
      expect(res.headers.get('content-security-policy'), path).toBe(CSP);
      expect(res.headers.get('x-content-type-options')).toBe('nosniff');
      // The sign-in form's page: with no-referrer, browsers would send its POST with "Origin: null".
      expect(res.headers.get('referrer-policy'), path).toBe(path === '/ui/signin' ? 'same-origin' : 'no-referrer');
      // Nothing to fetch from elsewhere (an SVG's xmlns is a name, not a fetch).
      const body = (await res.text()).replace('xmlns="http://www.w3.org/2000/svg"', '');
      expect(body).not.toMatch(/<script|https?:\/\/(?!127\.0\.0\.1)/i);
    }
    const html = await (await page(s.url, '/ui/', alice)).text();
    expect(html).toContain('<link rel="stylesheet" href="/ui/style.css">');
  });

  it('the session cookie is HttpOnly, SameSite=Strict, limited to /ui and short-lived; Secure with TLS', async () => {
    const res = await signIn(s.url, 'alice', 'alice-pw');
    const cookie = res.headers.get('set-cookie')!;
    expect(cookie).toMatch(/^berth_ui=[\w-]+\.[\w-]+\.[\w-]+; /);
    expect(cookie.split('; ').slice(1).sort()).toEqual(['HttpOnly', 'Max-Age=1800', 'Path=/ui', 'SameSite=Strict']);
    expect(setCookie('v', true)).toContain('; Secure');
    const tls = await start(USERS, { publicUrl: 'https://registry.example' });
    try {
      expect((await signIn(tls.url, 'alice', 'alice-pw', { Origin: 'https://registry.example' })).headers.get('set-cookie')).toMatch(/; Secure$/);
    } finally {
      await tls.close();
    }
  });

  it('the API refuses the cookie: alone, or sent as a Bearer token', async () => {
    for (const path of ['/v2/', '/v2/_catalog', '/v2/app/web/tags/list', `/v2/app/web/manifests/v1`]) {
      const res = await fetch(`${s.url}${path}`, { headers: { Cookie: alice } });
      expect(res.status, path).toBe(401);
      const bearer = await fetch(`${s.url}${path}`, { headers: { Authorization: `Bearer ${alice.split('=')[1]}` } });
      expect(bearer.status, path).toBe(401);
    }
  });

  it('sign-in needs a same-origin Origin; every other method than GET is refused', async () => {
    expect((await signIn(s.url, 'alice', 'alice-pw', {})).status).toBe(403);
    expect((await signIn(s.url, 'alice', 'alice-pw', { Origin: 'http://evil.example' })).status).toBe(403);
    expect((await signIn(s.url, 'alice', 'alice-pw', { Origin: 'null' })).status).toBe(403);
    expect((await signIn(s.url, 'alice', 'alice-pw', { Origin: s.url, 'Sec-Fetch-Site': 'cross-site' })).status).toBe(403);
    const huge = await fetch(`${s.url}/ui/signin`, { method: 'POST', headers: { Origin: s.url, 'Content-Type': 'application/x-www-form-urlencoded' }, body: `username=alice&password=${'x'.repeat(5000)}` });
    expect(huge.status).toBe(400);
    const json = await fetch(`${s.url}/ui/signin`, { method: 'POST', headers: { Origin: s.url, 'Content-Type': 'application/json' }, body: '{"username":"alice","password":"alice-pw"}' });
    expect(json.status).toBe(400);
    const wrong = await signIn(s.url, 'alice', 'nope');
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get('set-cookie')).toBeNull();
    for (const method of ['POST', 'PUT', 'DELETE']) {
      const res = await fetch(`${s.url}/ui/repo/app/web`, { method, headers: { Cookie: alice, Origin: s.url } });
      expect(res.status, method).toBe(405);
    }
  });

  it('without a valid session, pages send the browser to sign in', async () => {
    for (const cookie of [undefined, 'berth_ui=abc.def.ghi', alice.slice(0, -3) + 'AAA']) {
      const res = await page(s.url, '/ui/repo/app/web', cookie);
      expect(res.status).toBe(303);
      expect(res.headers.get('location')).toBe('/ui/signin');
    }
  });

  it("a tenant sees its own repositories only; another tenant's are not found", async () => {
    const a = await (await page(s.url, '/ui/', alice)).text();
    expect(a).toContain('data-repository="app/web"');
    expect(a).not.toContain('secret-b');
    const b = await (await page(s.url, '/ui/', bob)).text();
    expect(b).toContain('data-repository="secret-b"');
    expect(b).not.toContain('app/web');
    expect((await page(s.url, '/ui/repo/app/web', bob)).status).toBe(404);
    expect((await page(s.url, `/ui/repo/app/web/-/manifest/${image.digest}`, bob)).status).toBe(404);
    expect((await page(s.url, '/ui/repo/secret-b/-/manifest/v1', alice)).status).toBe(404);
  });

  it('the tags table gives digest, size (config + layers), push time and expiry by the namespace rule', async () => {
    const html = await (await page(s.url, '/ui/repo/app/web', alice)).text();
    const configSize = image.manifest.config.size;
    const row = new RegExp(`<tr data-tag="v1" data-digest="${image.digest}" data-size="${configSize + 1000 + 2345}">`);
    expect(html).toMatch(row);
    const stamp = (html.match(/<tr data-tag="v1"[\s\S]*?<\/tr>/)![0].match(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC/g) ?? []).map((t) => Date.parse(t.replace(' UTC', 'Z').replace(' ', 'T')));
    expect(stamp).toHaveLength(2);
    expect(stamp[1] - stamp[0]).toBe(86400_000);
    expect(Math.abs(stamp[0] - Date.now())).toBeLessThan(600_000);
  });

  it("a tag pushed again shows its new manifest (what the page remembers is keyed by the tag's write time)", async () => {
    const a = basic('alice', 'alice-pw');
    const first = await pushImage(s.url, 'moving', 'latest', [randomBytes(10)], {}, a);
    expect(await (await page(s.url, '/ui/repo/moving', alice)).text()).toContain(`data-digest="${first.digest}"`);
    const second = await pushImage(s.url, 'moving', 'latest', [randomBytes(20)], {}, a);
    const html = await (await page(s.url, '/ui/repo/moving', alice)).text();
    expect(html).toContain(`data-digest="${second.digest}"`);
    expect(html).not.toContain(first.digest);
  });

  it('values from manifests are shown escaped, never as markup', async () => {
    const html = await (await page(s.url, `/ui/repo/app/web/-/manifest/v1`, alice)).text();
    expect(html).not.toContain(XSS);
    expect(html).not.toContain('<img');
    expect(html).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(html).toContain('x&quot;&gt;&lt;img src=x&gt;');
  });

  it('the image page lists config, layers, referrers and pull commands for the public host', async () => {
    const html = await (await page(s.url, `/ui/repo/app/web/-/manifest/v1`, alice)).text();
    expect(html).toContain(`data-digest="${image.manifest.config.digest}"`);
    for (const l of layers) expect(html).toContain(`<tr data-digest="${sha256(l)}" data-size="${l.length}">`);
    expect(html).toMatch(/<table id="referrers">[\s\S]*application\/vnd\.example\.sig/);
    const host = new URL(s.url).host;
    expect(html).toContain(`docker pull ${host}/app/web:v1`);
    expect(html).toContain(`podman pull --tls-verify=false ${host}/app/web:v1`);
    expect(html).toContain(`skopeo copy --src-tls-verify=false docker://${host}/app/web:v1 oci-archive:web-v1.tar`);
    expect(html).toContain(`docker pull ${host}/app/web@${image.digest}`);
  });

  it('an index shows its platforms, each with its size, and a total of the distinct blobs', async () => {
    const a = basic('alice', 'alice-pw');
    const shared = randomBytes(300);
    const amd = await pushImage(s.url, 'multi', 'amd64', [shared, randomBytes(100)], {}, a);
    const arm = await pushImage(s.url, 'multi', 'arm64', [shared, randomBytes(200)], {}, a);
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: [
          { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: amd.digest, size: amd.body.length, platform: { os: 'linux', architecture: 'amd64' } },
          { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: arm.digest, size: arm.body.length, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
        ],
      }),
    );
    const put = await fetch(`${s.url}/v2/multi/manifests/latest`, { method: 'PUT', headers: { 'Content-Type': 'application/vnd.oci.image.index.v1+json', ...a }, body: index });
    expect(put.status).toBe(201);
    const config = amd.manifest.config.size;
    const html = await (await page(s.url, '/ui/repo/multi', alice)).text();
    // Both configs are the same bytes: counted once in the total.
    expect(html).toMatch(new RegExp(`<tr data-tag="latest" data-digest="${sha256(index)}" data-size="${config + 300 + 100 + 200}">`));
    expect(html).toMatch(/linux\/amd64[\s\S]*linux\/arm64\/v8/);
    const detail = await (await page(s.url, '/ui/repo/multi/-/manifest/latest', alice)).text();
    expect(detail).toContain(`<tr data-digest="${amd.digest}" data-size="${config + 400}">`);
    expect(detail).toContain(`<tr data-digest="${arm.digest}" data-size="${config + 500}">`);
    expect(detail).toContain('skopeo copy --all ');
  });

  it('page paths are parsed strictly', () => {
    expect(parsePage('repo/a/b/c')).toEqual({ kind: 'tags', repo: 'a/b/c' });
    expect(parsePage('repo/a/b/-/manifest/v1')).toEqual({ kind: 'image', repo: 'a/b', reference: 'v1' });
    for (const bad of ['repo/A', 'repo/a/-/manifest/..', 'repo/a%2Fb', 'repo/a/-/manifest/v1/x', 'repo/a/-/blob/v1', 'other']) expect(parsePage(bad), bad).toBeNull();
  });
});

describe('web sign-in and access', () => {
  it('goes through the login limiter the token endpoint uses: web failures make the token endpoint answer 429', async () => {
    const s = await start(USERS, {}, { failures: 3 });
    try {
      for (let i = 0; i < 3; i++) expect((await signIn(s.url, 'alice', `wrong-${i}`)).status).toBe(401);
      const limited = await signIn(s.url, 'alice', 'alice-pw');
      expect(limited.status).toBe(429);
      expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(0);
      expect((await fetch(`${s.url}/auth/token?service=berth`, { headers: basic('alice', 'alice-pw') })).status).toBe(429);
    } finally {
      await s.close();
    }
  });

  it('anonymous visitors browse where pulls are anonymous (the default namespace), and nowhere else', async () => {
    const s = await start([{ name: 'zuul', pass: 'zuul-pw', access: 'write' }], {}, { anonymousPull: true });
    try {
      await pushImage(s.url, 'pub', 'v1', [randomBytes(10)], {}, basic('zuul', 'zuul-pw'));
      // Listing repositories is the catalog, which needs credentials on the API too; a repository by name is a pull.
      const res = await page(s.url, '/ui/');
      expect([res.status, res.headers.get('location')]).toEqual([303, '/ui/signin']);
      expect(await (await page(s.url, '/ui/repo/pub')).text()).toContain('data-tag="v1"');
      expect(await (await page(s.url, '/ui/signin')).text()).toContain('Browse without signing in');
      const byName = await page(s.url, '/ui/repo?name=pub');
      expect([byName.status, byName.headers.get('location')]).toEqual([303, '/ui/repo/pub']);
      expect((await page(s.url, '/ui/repo?name=..%2Fx')).status).toBe(404);
    } finally {
      await s.close();
    }
  });
});

describe('web sessions', () => {
  const entry = JSON.stringify(['u', 'pw', 'read', 'team-a']);

  it('are bound to the user entry, expire, and are neither another deployment\'s nor API tokens', async () => {
    const sessions = new Sessions(SECRET, 'berth');
    const token = await sessions.issue('u', entry);
    expect(await sessions.verify(token, () => entry)).toBe('u');
    for (const other of [['u', 'pw2', 'read', 'team-a'], ['u', 'pw', 'write', 'team-a'], ['u', 'pw', 'read', 'team-b']]) {
      expect(await sessions.verify(token, () => JSON.stringify(other)), JSON.stringify(other)).toBeNull();
    }
    expect(await sessions.verify(token, () => undefined)).toBeNull();
    const old = await sessions.issue('u', entry, Date.now() - 1801_000);
    expect(await sessions.verify(old, () => entry)).toBeNull();
    expect(await new Sessions(SECRET, 'another-audience').verify(token, () => entry)).toBeNull();
    expect(await new Sessions(`${SECRET}x`, 'berth').verify(token, () => entry)).toBeNull();
    expect(await new TokenIssuer(SECRET, 'berth').verify(token)).toBeNull();
  });
});
