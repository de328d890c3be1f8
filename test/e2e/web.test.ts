/**
 * The web page in a real browser: Debian's chromium, driven through playwright-core (which downloads no browser),
 * against `berth serve` (dist/cli.js: run `npm run build` first). Signs in, walks namespace → repository → tag →
 * layers, checks what each page shows against the API, that another tenant's images never appear and that the API
 * refuses the session cookie, and writes a screenshot of each page under the OS tmpdir (paths printed).
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { basic, pushImage, sha256, spawnServe, type ServeProcess } from '../helpers/server.js';

const CHROMIUM = process.env.BERTH_CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = join(tmpdir(), 'berth-web-screenshots');
const alice = basic('alice', 'alice-pw');

type Manifest = { config: { digest: string; size: number }; layers: { digest: string; size: number; mediaType: string }[] };

describe.skipIf(!existsSync(CHROMIUM))('web page in chromium', () => {
  let dir: string;
  let serve: ServeProcess;
  let browser: Browser;
  let url: string;
  const shots: string[] = [];
  let v1: Awaited<ReturnType<typeof pushImage>>;
  let index: { digest: string; children: Awaited<ReturnType<typeof pushImage>>[] };

  const api = async <T>(path: string, headers: Record<string, string> = alice): Promise<T> => {
    const res = await fetch(`${url}${path}`, { headers });
    expect(res.status, path).toBe(200);
    return (await res.json()) as T;
  };
  const shoot = async (page: Page, name: string) => {
    const file = join(SHOTS, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    shots.push(file);
  };
  const cells = (page: Page, selector: string, attribute: string) => page.$$eval(selector, (rows, a) => rows.map((r) => r.getAttribute(a) ?? ''), attribute);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-web-e2e-'));
    await mkdir(SHOTS, { recursive: true });
    serve = await spawnServe(
      `registry:
  address: 127.0.0.1
  port: 0
  secret: web-e2e-secret-0123456789abcdef0123456789
  storage: {driver: filesystem, root: ${join(dir, 'data')}}
  expiration: 604800
  namespaces: {team-a: {expiration: 86400}}
  users:
    - {name: alice, pass: alice-pw, access: write, namespace: team-a}
    - {name: bob, pass: bob-pw, access: write, namespace: team-b}
`,
      dir,
    );
    url = serve.url;
    v1 = await pushImage(url, 'app/web', 'v1', [randomBytes(4000), randomBytes(12_345)], {}, alice);
    await pushImage(url, 'app/web', 'v1-sig', [randomBytes(64)], { artifactType: 'application/vnd.dev.cosign.artifact.sig.v1+json', subject: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: v1.digest, size: v1.body.length } }, alice);
    const children = [await pushImage(url, 'app/web', 'amd64', [randomBytes(700)], {}, alice), await pushImage(url, 'app/web', 'arm64', [randomBytes(900)], {}, alice)];
    const body = JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: children.map((c, i) => ({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: c.digest, size: c.body.length, platform: { os: 'linux', architecture: ['amd64', 'arm64'][i] } })),
    });
    const put = await fetch(`${url}/v2/app/web/manifests/multi`, { method: 'PUT', headers: { 'Content-Type': 'application/vnd.oci.image.index.v1+json', ...alice }, body });
    expect(put.status).toBe(201);
    index = { digest: sha256(body), children };
    await pushImage(url, 'tenant-b/private', 'v1', [randomBytes(100)], {}, basic('bob', 'bob-pw'));
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], timeout: 30_000 });
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await serve?.stop();
    await rm(dir, { recursive: true, force: true });
    for (const f of shots) console.log(`web page screenshot: ${f}`);
  });

  it('signs in and walks namespace → repository → tag → layers, showing what the API says', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    const violations: string[] = [];
    page.on('console', (m) => {
      if (/Content Security Policy|Refused to/i.test(m.text())) violations.push(m.text());
    });

    // Signed out: the page sends the browser to sign in.
    await page.goto(`${url}/ui/`);
    expect(new URL(page.url()).pathname).toBe('/ui/signin');
    await shoot(page, '1-signin');
    await page.fill('#username', 'alice');
    await page.fill('#password', 'alice-pw');
    await Promise.all([page.waitForURL(`${url}/ui/`), page.click('button[type=submit]')]);

    // The stylesheet loaded under the CSP (the header is coloured by it).
    expect(await page.$eval('header', (h) => getComputedStyle(h).backgroundColor)).toBe('rgb(31, 58, 95)');
    const catalog = await api<{ repositories: string[] }>('/v2/_catalog');
    expect(await cells(page, '#repositories tbody tr', 'data-repository')).toEqual(catalog.repositories);
    expect(await page.content()).not.toContain('tenant-b');
    await shoot(page, '2-repositories');

    await Promise.all([page.waitForURL(`${url}/ui/repo/app/web`), page.click('a[href="/ui/repo/app/web"]')]);
    const tags = (await api<{ tags: string[] }>('/v2/app/web/tags/list')).tags;
    expect((await cells(page, '#tags tbody tr', 'data-tag')).sort()).toEqual([...tags].sort());
    for (const tag of tags) {
      const head = await fetch(`${url}/v2/app/web/manifests/${tag}`, { method: 'HEAD', headers: { ...alice, Accept: 'application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json' } });
      expect(await page.getAttribute(`#tags tr[data-tag="${tag}"]`, 'data-digest'), tag).toBe(head.headers.get('docker-content-digest'));
    }
    const m1 = await api<Manifest>('/v2/app/web/manifests/v1', { ...alice, Accept: 'application/vnd.oci.image.manifest.v1+json' });
    const size1 = m1.config.size + m1.layers.reduce((n, l) => n + l.size, 0);
    expect(await page.getAttribute('#tags tr[data-tag="v1"]', 'data-size')).toBe(String(size1));
    expect(await page.textContent('#tags tr[data-tag="multi"]')).toMatch(/linux\/amd64[\s\S]*linux\/arm64/);
    await shoot(page, '3-tags');

    await Promise.all([page.waitForURL(/\/manifest\/v1$/), page.click('#tags tr[data-tag="v1"] a')]);
    expect(await page.textContent('#manifest-digest')).toBe(v1.digest);
    expect(await cells(page, '#layers tbody tr', 'data-digest')).toEqual(m1.layers.map((l) => l.digest));
    expect(await cells(page, '#layers tbody tr', 'data-size')).toEqual(m1.layers.map((l) => String(l.size)));
    expect(await page.getAttribute('#config td.digest', 'data-digest')).toBe(m1.config.digest);
    const referrers = await api<{ manifests: { digest: string }[] }>(`/v2/app/web/referrers/${v1.digest}`);
    expect(await cells(page, '#referrers tbody tr', 'data-digest')).toEqual(referrers.manifests.map((r) => r.digest));
    expect(await page.textContent('#pull')).toContain(`docker pull ${new URL(url).host}/app/web:v1`);
    await shoot(page, '4-image-layers');

    // An index: its platforms, then one platform's layers.
    await page.goto(`${url}/ui/repo/app/web/-/manifest/multi`);
    expect(await cells(page, '#platforms tbody tr', 'data-digest')).toEqual(index.children.map((c) => c.digest));
    await shoot(page, '5-index-platforms');
    await Promise.all([page.waitForURL(/\/manifest\/sha256:/), page.click(`#platforms a[href$="${index.children[1].digest}"]`)]);
    expect(await cells(page, '#layers tbody tr', 'data-digest')).toEqual(index.children[1].manifest.layers.map((l: { digest: string }) => l.digest));
    await shoot(page, '6-platform-layers');
    expect(violations).toEqual([]);

    // The cookie as the browser keeps it, and the API's answer to it.
    const [cookie] = await context.cookies();
    expect(cookie).toMatchObject({ name: 'berth_ui', httpOnly: true, sameSite: 'Strict', path: '/ui', secure: false });
    for (const path of ['/v2/_catalog', '/v2/app/web/tags/list', '/v2/app/web/manifests/v1']) {
      expect((await fetch(`${url}${path}`, { headers: { Cookie: `berth_ui=${cookie.value}` } })).status, path).toBe(401);
    }
    // Nor does the browser itself get in with it (it does not even send it outside /ui).
    expect((await page.goto(`${url}/v2/_catalog`))!.status()).toBe(401);
    await context.close();
  }, 60_000);

  it("another tenant's images never appear", async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${url}/ui/signin`);
    await page.fill('#username', 'bob');
    await page.fill('#password', 'bob-pw');
    await Promise.all([page.waitForURL(`${url}/ui/`), page.click('button[type=submit]')]);
    expect(await cells(page, '#repositories tbody tr', 'data-repository')).toEqual(['tenant-b/private']);
    expect(await page.content()).not.toContain('app/web');
    for (const path of ['/ui/repo/app/web', '/ui/repo/app/web/-/manifest/v1', `/ui/repo/app/web/-/manifest/${v1.digest}`]) {
      const res = await page.goto(`${url}${path}`);
      expect(res!.status(), path).toBe(404);
      expect(await page.content()).not.toContain(v1.digest.slice(7, 20));
    }
    await shoot(page, '7-other-tenant-404');
    await context.close();
  }, 30_000);
});
