import { randomBytes } from 'node:crypto';
import bcrypt from 'bcryptjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenIssuer } from '../../src/auth/tokens.js';
import { basic, pushBlob, pushImage, startServer, type TestServer } from '../helpers/server.js';

const SECRET = 'test-secret-0123456789';
const users = [
  { name: 'a-writer', pass: 'pw-a', access: 'write' as const, namespace: 'tenant-a' },
  { name: 'a-reader', pass: bcrypt.hashSync('pw-r', 4), access: 'read' as const, namespace: 'tenant-a' },
  { name: 'b-writer', pass: 'pw-b', access: 'write' as const, namespace: 'tenant-b' },
];
const creds: Record<string, Record<string, string>> = {
  'a-writer': basic('a-writer', 'pw-a'),
  'a-reader': basic('a-reader', 'pw-r'),
  'b-writer': basic('b-writer', 'pw-b'),
  anonymous: {},
};

let s: TestServer;
let imageA: Awaited<ReturnType<typeof pushImage>>;
let imageB: Awaited<ReturnType<typeof pushImage>>;
let blobA: string;

beforeAll(async () => {
  s = await startServer(undefined, { users, secret: SECRET });
  imageA = await pushImage(s.url, 'app', 'v1', [randomBytes(100)], {}, creds['a-writer']);
  imageB = await pushImage(s.url, 'app', 'v1', [randomBytes(100)], {}, creds['b-writer']);
  blobA = await pushBlob(s.url, 'src', randomBytes(50), creds['a-writer']);
});
afterAll(async () => s.close());

describe('tenancy', () => {
  it('two tenants pushing app:v1 get two independent images', async () => {
    const a = await fetch(`${s.url}/v2/app/manifests/v1`, { headers: creds['a-writer'] });
    const b = await fetch(`${s.url}/v2/app/manifests/v1`, { headers: creds['b-writer'] });
    expect(a.headers.get('docker-content-digest')).toBe(imageA.digest);
    expect(b.headers.get('docker-content-digest')).toBe(imageB.digest);
    expect(imageA.digest).not.toBe(imageB.digest);
  });

  // Every operation targets tenant-a's objects; tenant-b's credentials reach only tenant-b's namespace.
  const ops: Record<string, () => [string, RequestInit]> = {
    'pull manifest': () => [`/v2/app/manifests/${imageA.digest}`, {}],
    'pull blob': () => [`/v2/src/blobs/${blobA}`, {}],
    push: () => [`/v2/app/blobs/uploads/`, { method: 'POST' }],
    'mount from other repo': () => [`/v2/app/blobs/uploads/?mount=${blobA}&from=src`, { method: 'POST' }],
    'tags list': () => [`/v2/app/tags/list`, {}],
    catalog: () => [`/v2/_catalog`, {}],
    referrers: () => [`/v2/app/referrers/${imageA.digest}`, {}],
    'delete blob': () => [`/v2/src/blobs/${blobA}`, { method: 'DELETE' }],
  };
  const expected: Record<string, Record<string, number>> = {
    'a-writer': { 'pull manifest': 200, 'pull blob': 200, push: 202, 'mount from other repo': 201, 'tags list': 200, catalog: 200, referrers: 200, 'delete blob': 202 },
    'a-reader': { 'pull manifest': 200, 'pull blob': 200, push: 403, 'mount from other repo': 403, 'tags list': 200, catalog: 200, referrers: 200, 'delete blob': 403 },
    'b-writer': { 'pull manifest': 404, 'pull blob': 404, push: 202, 'mount from other repo': 202, 'tags list': 200, catalog: 200, referrers: 200, 'delete blob': 404 },
    anonymous: { 'pull manifest': 401, 'pull blob': 401, push: 401, 'mount from other repo': 401, 'tags list': 401, catalog: 401, referrers: 401, 'delete blob': 401 },
  };
  // a-writer last: its delete would change what the others see.
  for (const user of ['a-reader', 'b-writer', 'anonymous', 'a-writer']) {
    it(`access matrix: ${user}`, async () => {
      const got: Record<string, number> = {};
      for (const [op, make] of Object.entries(ops)) {
        const [path, init] = make();
        const res = await fetch(`${s.url}${path}`, { ...init, headers: { ...creds[user], ...(init.headers as Record<string, string>) } });
        got[op] = res.status;
        if (res.status === 401) {
          expect(res.headers.get('www-authenticate'), op).toMatch(/^Bearer realm="http:\/\/127\.0\.0\.1:\d+\/auth\/token",service="berth"/);
          expect(((await res.json()) as { errors: { code: string }[] }).errors[0].code).toBe('UNAUTHORIZED');
        } else if (res.status === 403) {
          expect(((await res.json()) as { errors: { code: string }[] }).errors[0].code).toBe('DENIED');
        } else if (op === 'tags list' || op === 'catalog') {
          const body = (await res.json()) as { tags?: string[]; repositories?: string[] };
          if (op === 'catalog') expect(body.repositories).toEqual(['app']);
        } else {
          await res.arrayBuffer();
        }
      }
      expect(got).toEqual(expected[user]);
    });
  }

  it("tenant-b's mount attempt did not reach tenant-a's blob, and nothing of tenant-b leaked into tenant-a", async () => {
    const res = await fetch(`${s.url}/v2/app/blobs/${blobA}`, { method: 'HEAD', headers: creds['b-writer'] });
    expect(res.status).toBe(404);
    const tags = await (await fetch(`${s.url}/v2/app/tags/list`, { headers: creds['a-writer'] })).json();
    expect(tags).toEqual({ name: 'app', tags: ['v1'] });
  });

  it('wrong passwords and unknown users get the same 401; malformed Authorization headers get 401', async () => {
    for (const headers of [basic('a-writer', 'nope'), basic('nobody', 'pw-a'), { Authorization: 'Basic !!!' }, { Authorization: 'Digest x' }, { Authorization: 'Basic ' + Buffer.from('nocolon').toString('base64') }]) {
      const res = await fetch(`${s.url}/v2/`, { headers });
      expect(res.status).toBe(401);
      expect(((await res.json()) as { errors: { code: string }[] }).errors[0]).toEqual({ code: 'UNAUTHORIZED', message: expect.any(String) });
    }
  });

  it('GET /v2/ with valid Basic credentials answers 200 (docker login)', async () => {
    expect((await fetch(`${s.url}/v2/`, { headers: creds['a-reader'] })).status).toBe(200);
    expect((await fetch(`${s.url}/v2/`)).status).toBe(401);
  });
});

describe('token flow', () => {
  async function token(user: string, scope: string): Promise<string> {
    const res = await fetch(`${s.url}/auth/token?service=berth&scope=${encodeURIComponent(scope)}`, { headers: creds[user] });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { token: string; access_token: string; expires_in: number; issued_at: string };
    expect(body.access_token).toBe(body.token);
    expect(body.expires_in).toBeGreaterThan(0);
    expect(Date.parse(body.issued_at)).not.toBeNaN();
    return body.token;
  }
  const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });

  it('a token grants what was asked and allowed: a reader asking for push gets pull only', async () => {
    const t = await token('a-reader', 'repository:app:pull,push');
    const payload = JSON.parse(Buffer.from(t.split('.')[1], 'base64url').toString());
    expect(payload.access).toEqual([{ type: 'repository', name: 'app', actions: ['pull'] }]);
    expect(payload.ns).toBe('tenant-a');
    expect((await fetch(`${s.url}/v2/app/manifests/v1`, { headers: bearer(t) })).status).toBe(200);
    const push = await fetch(`${s.url}/v2/app/blobs/uploads/`, { method: 'POST', headers: bearer(t) });
    expect(push.status).toBe(401);
    expect(push.headers.get('www-authenticate')).toContain('error="insufficient_scope"');
  });

  it("a writer's token pushes a whole image; it is scoped to the repository named", async () => {
    const t = await token('a-writer', 'repository:tok/app:pull,push');
    await pushImage(s.url, 'tok/app', 'v1', [randomBytes(10)], {}, bearer(t));
    expect((await fetch(`${s.url}/v2/app/manifests/v1`, { headers: bearer(t) })).status).toBe(401);
  });

  it('tampered, unsigned, expired and wrong-service tokens get 401', async () => {
    const good = await token('a-writer', 'repository:app:pull');
    const [h, p, sig] = good.split('.');
    const payload = JSON.parse(Buffer.from(p, 'base64url').toString());
    const forged = Buffer.from(JSON.stringify({ ...payload, ns: 'tenant-b' })).toString('base64url');
    const none = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
    const flipped = sig.slice(0, -2) + (sig.endsWith('AA') ? 'BB' : 'AA');
    const expired = (await new TokenIssuer(SECRET, 'berth').issue({ sub: 'a-writer', ns: 'tenant-a', access: payload.access }, Date.now() - 3_600_000)).token;
    const otherService = (await new TokenIssuer(SECRET, 'elsewhere').issue({ sub: 'a-writer', ns: 'tenant-a', access: payload.access })).token;
    const otherSecret = (await new TokenIssuer('another-secret', 'berth').issue({ sub: 'a-writer', ns: 'tenant-a', access: payload.access })).token;
    for (const bad of [`${h}.${forged}.${sig}`, `${none}.${p}.`, `${h}.${p}.${flipped}`, expired, otherService, otherSecret]) {
      const res = await fetch(`${s.url}/v2/app/manifests/v1`, { headers: bearer(bad) });
      expect(res.status).toBe(401);
    }
    expect((await fetch(`${s.url}/v2/app/manifests/v1`, { headers: bearer(good) })).status).toBe(200);
  });

  it('the token endpoint refuses bad credentials and anonymous requests when nobody may read anonymously', async () => {
    expect((await fetch(`${s.url}/auth/token?service=berth`, { headers: basic('a-writer', 'wrong') })).status).toBe(401);
    expect((await fetch(`${s.url}/auth/token?service=berth&scope=repository:app:pull`)).status).toBe(401);
  });
});

describe('anonymous reads of the public namespace', () => {
  let p: TestServer;
  beforeAll(async () => {
    p = await startServer(undefined, { users: [{ name: 'w', pass: 'pw', access: 'write', namespace: 'pub' }], secret: SECRET, publicNamespace: 'pub' });
    await pushImage(p.url, 'lib/base', 'v1', [randomBytes(10)], {}, basic('w', 'pw'));
  });
  afterAll(async () => p.close());

  it('anonymous clients pull from the public namespace but cannot push', async () => {
    expect((await fetch(`${p.url}/v2/lib/base/manifests/v1`)).status).toBe(200);
    expect((await fetch(`${p.url}/v2/lib/base/blobs/uploads/`, { method: 'POST' })).status).toBe(401);
    const t = await fetch(`${p.url}/auth/token?service=berth&scope=repository:lib/base:pull,push`);
    expect(t.status).toBe(200);
    const payload = JSON.parse(Buffer.from(((await t.json()) as { token: string }).token.split('.')[1], 'base64url').toString());
    expect(payload.access).toEqual([{ type: 'repository', name: 'lib/base', actions: ['pull'] }]);
  });
});
