import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { pino, type Logger } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { TokenIssuer } from '../../src/auth/tokens.js';
import { BcryptPool } from '../../src/auth/bcrypt-pool.js';
import { Users, checkWork, comparisonsFor } from '../../src/auth/users.js';
import { parseConfig, type UserConfig } from '../../src/config/config.js';
import { anonymousPull } from '../../src/config/startup.js';
import yaml from 'js-yaml';
import { createApp } from '../../src/http/app.js';
import { Access } from '../../src/http/auth.js';
import { answerClientErrors } from '../../src/http/client-errors.js';
import { DEFAULT_NAMESPACE } from '../../src/registry/paths.js';
import { Registry } from '../../src/registry/registry.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { basic, pushBlob, pushImage, startServer, type AuthSetup, type TestServer } from '../helpers/server.js';
import { BACKENDS, dropContainer, freshContainer, SWIFT_COMMIT, swiftDriver, type Backend } from '../helpers/swift.js';

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

type ErrorBody = { errors: { code: string; message: string }[] };
const errorCode = async (res: Response) => ((await res.json()) as ErrorBody).errors[0].code;
const silent = pino({ level: 'silent' });

async function startServerWithAuth(backend: Backend, auth: AuthSetup): Promise<TestServer> {
  if (backend === 'filesystem') return startServer(undefined, auth);
  const container = freshContainer();
  const server = await startServer(await swiftDriver(container), auth, { commit: SWIFT_COMMIT });
  return {
    ...server,
    async close() {
      await server.close();
      await dropContainer(container);
    },
  };
}

/** An in-process server whose users (htpasswd included) and log the test chooses, with the CLI's clientError handling. */
async function startWithUsers(userList: UserConfig[], opts: { htpasswd?: string; log?: Logger } = {}) {
  const root = await mkdtemp(join(tmpdir(), 'berth-auth-'));
  const log = opts.log ?? silent;
  const registry = new Registry(await FilesystemDriver.open(root));
  const access = new Access({
    users: new Users(userList, DEFAULT_NAMESPACE, opts.htpasswd, log),
    tokens: new TokenIssuer(SECRET, 'berth'),
    defaultNamespace: DEFAULT_NAMESPACE,
    log,
  });
  const server = http.createServer(createApp(registry, { log, access }));
  answerClientErrors(server);
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

describe.each(BACKENDS)('access control on %s', (backend) => {
  let s: TestServer;
  let imageA: Awaited<ReturnType<typeof pushImage>>;
  let imageB: Awaited<ReturnType<typeof pushImage>>;
  let doomed: Awaited<ReturnType<typeof pushImage>>;
  let blobA: string;
  let uploadA: string;

  beforeAll(async () => {
    s = await startServerWithAuth(backend, { users, secret: SECRET });
    imageA = await pushImage(s.url, 'app', 'v1', [randomBytes(100)], {}, creds['a-writer']);
    imageB = await pushImage(s.url, 'app', 'v1', [randomBytes(100)], {}, creds['b-writer']);
    doomed = await pushImage(s.url, 'app', 'doomed', [randomBytes(100)], {}, creds['a-writer']);
    blobA = await pushBlob(s.url, 'src', randomBytes(50), creds['a-writer']);
    const started = await fetch(`${s.url}/v2/app/blobs/uploads/`, { method: 'POST', headers: creds['a-writer'] });
    expect(started.status).toBe(202);
    uploadA = started.headers.get('location')!;
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
      tag: () => [`/v2/app/manifests/retagged`, { method: 'PUT', body: imageA.body, headers: { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json' } }],
      'delete manifest': () => [`/v2/app/manifests/${doomed.digest}`, { method: 'DELETE' }],
      'cancel upload': () => [uploadA, { method: 'DELETE' }],
    };
    // tenant-b: tenant-a's objects do not exist in its namespace (a tag of tenant-a's manifest names blobs it lacks).
    const expected: Record<string, Record<string, number>> = {
      'a-writer': { 'pull manifest': 200, 'pull blob': 200, push: 202, 'mount from other repo': 201, 'tags list': 200, catalog: 200, referrers: 200, 'delete blob': 202, tag: 201, 'delete manifest': 202, 'cancel upload': 204 },
      'a-reader': { 'pull manifest': 200, 'pull blob': 200, push: 403, 'mount from other repo': 403, 'tags list': 200, catalog: 200, referrers: 200, 'delete blob': 403, tag: 403, 'delete manifest': 403, 'cancel upload': 403 },
      'b-writer': { 'pull manifest': 404, 'pull blob': 404, push: 202, 'mount from other repo': 202, 'tags list': 200, catalog: 200, referrers: 200, 'delete blob': 404, tag: 400, 'delete manifest': 404, 'cancel upload': 404 },
      anonymous: { 'pull manifest': 401, 'pull blob': 401, push: 401, 'mount from other repo': 401, 'tags list': 401, catalog: 401, referrers: 401, 'delete blob': 401, tag: 401, 'delete manifest': 401, 'cancel upload': 401 },
    };
    // a-writer last: its deletes would change what the others see.
    for (const user of ['a-reader', 'b-writer', 'anonymous', 'a-writer']) {
      it(`access matrix: ${user}`, async () => {
        const got: Record<string, number> = {};
        for (const [op, make] of Object.entries(ops)) {
          const [path, init] = make();
          const res = await fetch(`${s.url}${path}`, { ...init, headers: { ...creds[user], ...(init.headers as Record<string, string>) } });
          got[op] = res.status;
          if (res.status === 401) {
            expect(res.headers.get('www-authenticate'), op).toMatch(/^Bearer realm="http:\/\/127\.0\.0\.1:\d+\/auth\/token",service="berth"/);
            expect(await errorCode(res), op).toBe('UNAUTHORIZED');
          } else if (res.status === 403) {
            expect(await errorCode(res), op).toBe('DENIED');
          } else if (op === 'tag' && res.status === 400) {
            expect(await errorCode(res), op).toBe('MANIFEST_BLOB_UNKNOWN');
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

    it("after the matrix, each tenant's repository holds exactly what its own writer did", async () => {
      const res = await fetch(`${s.url}/v2/app/blobs/${blobA}`, { method: 'HEAD', headers: creds['b-writer'] });
      expect(res.status).toBe(404);
      // tenant-a: tagged by a-writer, the doomed manifest deleted by a-writer (its tag with it), the upload gone.
      expect(await (await fetch(`${s.url}/v2/app/tags/list`, { headers: creds['a-writer'] })).json()).toEqual({ name: 'app', tags: ['retagged', 'v1'] });
      const retagged = await fetch(`${s.url}/v2/app/manifests/retagged`, { method: 'HEAD', headers: creds['a-writer'] });
      expect(retagged.headers.get('docker-content-digest')).toBe(imageA.digest);
      expect((await fetch(`${s.url}/v2/app/manifests/${doomed.digest}`, { method: 'HEAD', headers: creds['a-writer'] })).status).toBe(404);
      expect((await fetch(`${s.url}${uploadA}`, { headers: creds['a-writer'] })).status).toBe(404);
      // tenant-b: its tag and delete attempts changed nothing.
      expect(await (await fetch(`${s.url}/v2/app/tags/list`, { headers: creds['b-writer'] })).json()).toEqual({ name: 'app', tags: ['v1'] });
    });

    it('wrong passwords and unknown users get the same 401; malformed Authorization headers get 401', async () => {
      for (const headers of [basic('a-writer', 'nope'), basic('nobody', 'pw-a'), { Authorization: 'Basic !!!' }, { Authorization: 'Digest x' }, { Authorization: 'Basic ' + Buffer.from('nocolon').toString('base64') }]) {
        const res = await fetch(`${s.url}/v2/`, { headers });
        expect(res.status).toBe(401);
        expect(((await res.json()) as ErrorBody).errors[0]).toEqual({ code: 'UNAUTHORIZED', message: expect.any(String) });
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

    it('tampered, unsigned, expired, other-secret and wrong-service tokens get 401 with the OCI body and a Bearer challenge', async () => {
      const good = await token('a-writer', 'repository:app:pull');
      const [h, p, sig] = good.split('.');
      const payload = JSON.parse(Buffer.from(p, 'base64url').toString());
      const forged = Buffer.from(JSON.stringify({ ...payload, ns: 'tenant-b' })).toString('base64url');
      const none = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
      const flipped = sig.slice(0, -2) + (sig.endsWith('AA') ? 'BB' : 'AA');
      const expired = (await new TokenIssuer(SECRET, 'berth').issue({ sub: 'a-writer', ns: 'tenant-a', access: payload.access }, Date.now() - 3_600_000)).token;
      const otherService = (await new TokenIssuer(SECRET, 'elsewhere').issue({ sub: 'a-writer', ns: 'tenant-a', access: payload.access })).token;
      const otherSecret = (await new TokenIssuer('another-secret', 'berth').issue({ sub: 'a-writer', ns: 'tenant-a', access: payload.access })).token;
      const bad = { tampered: `${h}.${forged}.${sig}`, 'alg none': `${none}.${p}.`, 'flipped signature': `${h}.${p}.${flipped}`, expired, 'other service': otherService, 'other secret': otherSecret };
      for (const [kind, t] of Object.entries(bad)) {
        const res = await fetch(`${s.url}/v2/app/manifests/v1`, { headers: bearer(t) });
        expect(res.status, kind).toBe(401);
        expect(res.headers.get('www-authenticate'), kind).toMatch(/^Bearer realm="http:\/\/127\.0\.0\.1:\d+\/auth\/token",service="berth"/);
        expect(res.headers.get('content-type'), kind).toMatch(/^application\/json/);
        expect(((await res.json()) as ErrorBody).errors, kind).toEqual([{ code: 'UNAUTHORIZED', message: expect.any(String) }]);
      }
      expect((await fetch(`${s.url}/v2/app/manifests/v1`, { headers: bearer(good) })).status).toBe(200);
    });

    it('the token endpoint refuses bad credentials and anonymous requests when nobody may read anonymously', async () => {
      expect((await fetch(`${s.url}/auth/token?service=berth`, { headers: basic('a-writer', 'wrong') })).status).toBe(401);
      expect((await fetch(`${s.url}/auth/token?service=berth&scope=repository:app:pull`)).status).toBe(401);
    });
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

  it('the catalog needs credentials on both paths: anonymous GET /v2/_catalog gets 401, an anonymous token carries no catalog scope', async () => {
    const direct = await fetch(`${p.url}/v2/_catalog`);
    expect(direct.status).toBe(401);
    expect(direct.headers.get('www-authenticate')).toContain('scope="registry:catalog:*"');
    const t = await fetch(`${p.url}/auth/token?service=berth&scope=registry:catalog:*`);
    expect(t.status).toBe(200);
    const token = ((await t.json()) as { token: string }).token;
    expect(JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()).access).toEqual([]);
    const withToken = await fetch(`${p.url}/v2/_catalog`, { headers: { Authorization: `Bearer ${token}` } });
    expect(withToken.status).toBe(401);
    expect(withToken.headers.get('www-authenticate')).toContain('error="insufficient_scope"');
    // The user of the namespace lists it, with Basic credentials or a token.
    expect(await (await fetch(`${p.url}/v2/_catalog`, { headers: basic('w', 'pw') })).json()).toEqual({ repositories: ['lib/base'] });
    const userToken = await fetch(`${p.url}/auth/token?service=berth&scope=registry:catalog:*`, { headers: basic('w', 'pw') });
    const bearer = { Authorization: `Bearer ${((await userToken.json()) as { token: string }).token}` };
    expect((await fetch(`${p.url}/v2/_catalog`, { headers: bearer })).status).toBe(200);
  });
});

describe("zuul-registry's access rule: who may pull without credentials", () => {
  const config = (body: string) => parseConfig(yaml.load(`registry:\n  secret: ${SECRET}\n${body}  storage: {driver: filesystem, root: d}\n`), '/srv', {});
  const zuul = bcrypt.hashSync('zuul-pw', 4);
  const writerOnly = `  users:\n    - {name: zuul, pass: '${zuul}', access: write}\n`;

  it.each([
    ['write users only (as run-buildset-registry renders it)', writerOnly, { allowed: true, implicit: true }],
    ['write users and a read-only user', `${writerOnly}    - {name: r, pass: pw, access: read}\n`, { allowed: false, implicit: false }],
    ["zuul-registry's example: a writer and the anonymous reader", `${writerOnly}    - {name: anonymous, pass: '', access: read}\n`, { allowed: false, implicit: false }],
    ['a user with a namespace', `  users:\n    - {name: a, pass: pw, access: write, namespace: team}\n`, { allowed: false, implicit: false }],
    ['a namespaces: section', `${writerOnly}  namespaces:\n    _local: {expiration: 60}\n`, { allowed: false, implicit: false }],
    ['write users only, anonymous-pull: false', `${writerOnly}  anonymous-pull: false\n`, { allowed: false, implicit: false }],
    ['a read-only user, anonymous-pull: true', `${writerOnly}    - {name: r, pass: pw, access: read}\n  anonymous-pull: true\n`, { allowed: true, implicit: false }],
    ['no users (an open registry: the rule does not apply)', '', { allowed: false, implicit: false }],
  ])('%s', (_, body, expected) => {
    expect(anonymousPull(config(body))).toEqual(expected);
  });

  it('anonymous-pull: true and a public namespace cannot both be given (anonymous clients read one namespace)', () => {
    expect(() => config(`  users:\n    - {name: a, pass: pw, access: write, namespace: pub}\n  namespaces:\n    pub: {public: true}\n  anonymous-pull: true\n`)).toThrow(/^registry\.anonymous-pull: /);
  });

  /** A server for a configuration, with the access rule the CLI would derive from it. */
  async function serverFor(body: string) {
    const c = config(body);
    return startServer(undefined, { users: c.users, secret: SECRET, anonymousPull: anonymousPull(c).allowed });
  }
  const tokenRequest = (url: string, scope: string | undefined, headers: Record<string, string>) =>
    fetch(`${url}/auth/token?service=berth${scope === undefined ? '' : `&scope=${encodeURIComponent(scope)}`}`, { headers });
  const accessOf = async (res: Response) => JSON.parse(Buffer.from(((await res.json()) as { token: string }).token.split('.')[1], 'base64url').toString()).access;

  describe('write users only', () => {
    let s: TestServer;
    beforeAll(async () => {
      s = await serverFor(writerOnly);
      await pushImage(s.url, 'library/busybox', 'latest', [randomBytes(64)], {}, basic('zuul', 'zuul-pw'));
    });
    afterAll(async () => s.close());
    afterEach(() => vi.restoreAllMocks());

    it('pulls need no credentials; pushes still do', async () => {
      expect((await fetch(`${s.url}/v2/library/busybox/manifests/latest`)).status).toBe(200);
      expect((await fetch(`${s.url}/v2/library/busybox/blobs/uploads/`, { method: 'POST' })).status).toBe(401);
      // docker's first request: the challenge sends it to the token endpoint.
      expect((await fetch(`${s.url}/v2/`)).status).toBe(401);
      // Reads by name only: the catalog needs credentials here too.
      expect((await fetch(`${s.url}/v2/_catalog`)).status).toBe(401);
      expect((await fetch(`${s.url}/v2/_catalog`, { headers: basic('zuul', 'zuul-pw') })).status).toBe(200);
    });

    it("a pull-only token request gets a read token whatever it carries (none, wrong, another registry's), without any password check", async () => {
      const check = vi.spyOn(Users.prototype, 'check');
      const compare = vi.spyOn(bcrypt, 'compare');
      for (const headers of [{}, basic('zuul', 'wrong'), basic('dockerhub-user', 'hub-pw'), { Authorization: 'Basic !!!' }]) {
        const res = await tokenRequest(s.url, 'repository:library/busybox:pull', headers);
        expect(res.status, JSON.stringify(headers)).toBe(200);
        const token = ((await res.json()) as { token: string }).token;
        expect((await fetch(`${s.url}/v2/library/busybox/manifests/latest`, { headers: { Authorization: `Bearer ${token}` } })).status).toBe(200);
      }
      expect(check).not.toHaveBeenCalled();
      expect(compare).not.toHaveBeenCalled();
    });

    it('push scope and no scope (a login) still check the password', async () => {
      const check = vi.spyOn(Users.prototype, 'check');
      expect((await tokenRequest(s.url, 'repository:library/busybox:pull,push', basic('zuul', 'wrong'))).status).toBe(401);
      expect((await tokenRequest(s.url, 'repository:library/busybox:pull repository:other:push', basic('zuul', 'wrong'))).status).toBe(401);
      expect((await tokenRequest(s.url, undefined, basic('zuul', 'wrong'))).status).toBe(401);
      expect(check).toHaveBeenCalledTimes(3);
      const right = await tokenRequest(s.url, 'repository:library/busybox:pull,push', basic('zuul', 'zuul-pw'));
      expect(await accessOf(right)).toEqual([{ type: 'repository', name: 'library/busybox', actions: ['pull', 'push'] }]);
    });
  });

  it('anonymous-pull: false keeps pulls behind credentials, and pull-only token requests are checked', async () => {
    const s = await serverFor(`${writerOnly}  anonymous-pull: false\n`);
    try {
      await pushImage(s.url, 'app', 'v1', [randomBytes(8)], {}, basic('zuul', 'zuul-pw'));
      expect((await fetch(`${s.url}/v2/app/manifests/v1`)).status).toBe(401);
      expect((await tokenRequest(s.url, 'repository:app:pull', basic('zuul', 'wrong'))).status).toBe(401);
      expect((await tokenRequest(s.url, 'repository:app:pull', {})).status).toBe(401);
      expect(await accessOf(await tokenRequest(s.url, 'repository:app:pull', basic('zuul', 'zuul-pw')))).toEqual([{ type: 'repository', name: 'app', actions: ['pull'] }]);
    } finally {
      await s.close();
    }
  });

  it("a configuration with a namespace keeps today's rules: no anonymous pull, every token request checked", async () => {
    const s = await serverFor(`  users:\n    - {name: zuul, pass: zuul-pw, access: write, namespace: ci}\n`);
    try {
      await pushImage(s.url, 'app', 'v1', [randomBytes(8)], {}, basic('zuul', 'zuul-pw'));
      expect((await fetch(`${s.url}/v2/app/manifests/v1`)).status).toBe(401);
      expect((await tokenRequest(s.url, 'repository:app:pull', basic('zuul', 'wrong'))).status).toBe(401);
      expect((await tokenRequest(s.url, 'repository:app:pull', basic('other', 'x'))).status).toBe(401);
      expect((await tokenRequest(s.url, 'repository:app:pull', {})).status).toBe(401);
    } finally {
      await s.close();
    }
  });
});

describe('password checks do the same work for known and unknown names', () => {
  const plain = 'plain-pw';
  const hash4 = bcrypt.hashSync('bcrypt-pw', 4);
  const hash5 = bcrypt.hashSync('other-pw', 5);
  /** What a check costs, without saying which comparison is real. */
  const shape = (secret: string | undefined, secrets: string[]) => comparisonsFor(secret, checkWork(secrets)).map((c) => (c.kind === 'bcrypt' ? `bcrypt/${c.cost}` : c.kind));

  it('plain users only: one SHA-256 comparison for a known name and for an unknown one, no bcrypt', () => {
    const secrets = [plain, 'another'];
    expect(shape(plain, secrets)).toEqual(['sha256']);
    expect(shape(undefined, secrets)).toEqual(['sha256']);
  });

  it('bcrypt users only: an unknown name is compared against a dummy hash of the configured cost', () => {
    expect(shape(hash4, [hash4])).toEqual(['sha256', 'bcrypt/4']);
    expect(shape(undefined, [hash4])).toEqual(['sha256', 'bcrypt/4']);
    expect(comparisonsFor(undefined, checkWork([hash4]))).toEqual([
      { kind: 'sha256', dummy: true },
      { kind: 'bcrypt', cost: 4, dummy: true },
    ]);
  });

  it('plain and bcrypt users mixed: plain users pay a dummy bcrypt too, so no name answers faster', () => {
    const secrets = [plain, hash4];
    for (const secret of [plain, hash4, undefined]) expect(shape(secret, secrets)).toEqual(['sha256', 'bcrypt/4']);
    expect(comparisonsFor(plain, checkWork(secrets))).toEqual([
      { kind: 'sha256', dummy: false },
      { kind: 'bcrypt', cost: 4, dummy: true },
    ]);
  });

  it('bcrypt hashes of several costs: unknown names cost as much as the dearest one', () => {
    expect(checkWork([hash4, hash5, plain])).toEqual({ bcryptCost: 5 });
    expect(shape(undefined, [hash4, hash5])).toEqual(['sha256', 'bcrypt/5']);
  });

  describe('Users.check runs exactly those comparisons', () => {
    const pool = new BcryptPool({ size: 1 });
    afterEach(() => vi.restoreAllMocks());
    afterAll(() => pool.close());
    const config = (list: [string, string][]): UserConfig[] => list.map(([name, pass]) => ({ name, pass, access: 'write' }));

    it('with a plain and a bcrypt user, every check (known, unknown, right or wrong password) runs one bcrypt comparison of the same cost', async () => {
      const u = new Users(config([['plain', plain], ['hashed', hash4]]), DEFAULT_NAMESPACE, undefined, silent, { pool });
      const compare = vi.spyOn(pool, 'compare');
      const attempts: [string, string, boolean][] = [
        ['plain', plain, true],
        ['plain', 'wrong', false],
        ['hashed', 'bcrypt-pw', true],
        ['hashed', 'wrong', false],
        ['nobody', plain, false],
      ];
      for (const [name, password, ok] of attempts) {
        compare.mockClear();
        expect((await u.check(name, password)) !== null, `${name}/${password}`).toBe(ok);
        expect(compare.mock.calls.map(([, hash]) => bcrypt.getRounds(hash as string)), `${name}/${password}`).toEqual([4]);
      }
    });

    it('with plain users only, neither a known nor an unknown name costs a bcrypt comparison', async () => {
      const u = new Users(config([['plain', plain]]), DEFAULT_NAMESPACE, undefined, silent, { pool });
      const compare = vi.spyOn(pool, 'compare');
      expect(await u.check('plain', plain)).toMatchObject({ name: 'plain' });
      expect(await u.check('plain', 'wrong')).toBeNull();
      expect(await u.check('nobody', plain)).toBeNull();
      expect(compare).not.toHaveBeenCalled();
    });

    it('a malformed bcrypt pass cannot log in (not even with the hash text) and costs what an unknown name costs', async () => {
      const broken = hash4.slice(0, -1);
      const u = new Users(config([['broken', broken], ['hashed', hash4]]), DEFAULT_NAMESPACE, undefined, silent, { pool });
      const compare = vi.spyOn(pool, 'compare');
      expect(await u.check('broken', broken)).toBeNull();
      expect(compare.mock.calls.map(([, hash]) => bcrypt.getRounds(hash as string))).toEqual([4]);
    });
  });
});

describe('htpasswd users', () => {
  let dir: string;
  let server: Awaited<ReturnType<typeof startWithUsers>>;
  // `htpasswd -B` writes `name:$2y$05$...`; bcryptjs writes $2b$, the same algorithm.
  const entry = (name: string, password: string) => `${name}:${bcrypt.hashSync(password, 5).replace(/^\$2b\$/, '$2y$')}\n`;
  const login = async (password: string) => (await fetch(`${server.url}/v2/`, { headers: basic('h-user', password) })).status;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-htpasswd-'));
    await writeFile(join(dir, 'htpasswd'), `# written by the test\n${entry('h-user', 'old-pw')}${entry('not-a-user', 'x')}`);
    server = await startWithUsers([{ name: 'h-user', access: 'write', namespace: 'tenant-h' }, { name: 'plain', pass: 'plain-pw', access: 'read' }], { htpasswd: join(dir, 'htpasswd') });
  });
  afterAll(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('a user whose bcrypt password is in the htpasswd file logs in and gets a token for their namespace', async () => {
    expect(await login('old-pw')).toBe(200);
    expect(await login('new-pw')).toBe(401);
    // Listed in the file but not among the users: no access.
    expect((await fetch(`${server.url}/v2/`, { headers: basic('not-a-user', 'x') })).status).toBe(401);
    const res = await fetch(`${server.url}/auth/token?service=berth&scope=repository:app:pull,push`, { headers: basic('h-user', 'old-pw') });
    const payload = JSON.parse(Buffer.from(((await res.json()) as { token: string }).token.split('.')[1], 'base64url').toString());
    expect(payload).toMatchObject({ sub: 'h-user', ns: 'tenant-h', access: [{ type: 'repository', name: 'app', actions: ['pull', 'push'] }] });
  });

  it('after the file is rewritten with a new password, the new one works and the old one no longer does', async () => {
    await writeFile(join(dir, 'htpasswd'), `# written by the test\n${entry('h-user', 'new-pw')}${entry('not-a-user', 'x')}`);
    // The file is looked at again at most once a second: wait for the change to show, however long that takes.
    await vi.waitFor(async () => expect(await login('new-pw')).toBe(200), { timeout: 30_000, interval: 250 });
    expect(await login('old-pw')).toBe(401);
    expect((await fetch(`${server.url}/v2/`, { headers: basic('plain', 'plain-pw') })).status).toBe(200);
  });
});

describe('failed logins in the log', () => {
  const lines: string[] = [];
  let server: Awaited<ReturnType<typeof startWithUsers>>;
  const password = 'Pa55-w0rd-that-must-never-be-logged';

  beforeAll(async () => {
    const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(line) });
    server = await startWithUsers([{ name: 'alice', pass: 'alice-pw', access: 'write' }], { log });
  });
  afterAll(async () => server.close());

  it("a failed login's log line names the user and never holds the password", async () => {
    expect((await fetch(`${server.url}/v2/`, { headers: basic('alice', password) })).status).toBe(401);
    expect((await fetch(`${server.url}/auth/token?service=berth&scope=repository:app:pull`, { headers: basic('mallory', password) })).status).toBe(401);
    const failed = lines.map((l) => JSON.parse(l) as { msg: string; user?: string }).filter((l) => l.msg === 'failed login');
    expect(failed.map((l) => l.user)).toEqual(['alice', 'mallory']);
    const all = lines.join('');
    expect(all).not.toContain(password);
    expect(all).not.toContain(basic('alice', password).Authorization.slice(6));
    expect(all).not.toContain(basic('mallory', password).Authorization.slice(6));
  });
});

describe('oversized request headers', () => {
  let server: Awaited<ReturnType<typeof startWithUsers>>;
  beforeAll(async () => {
    server = await startWithUsers([{ name: 'alice', pass: 'alice-pw', access: 'write' }]);
  });
  afterAll(async () => server.close());

  it("headers over Node's limit get 431 with the OCI error envelope, and the connection is closed", async () => {
    const res = await new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>((resolve, reject) => {
      const req = http.request(`${server.url}/v2/`, { headers: { 'X-Padding': 'a'.repeat(20_000) } }, (r) => {
        let body = '';
        r.on('data', (d) => (body += d));
        r.on('end', () => resolve({ status: r.statusCode!, headers: r.headers, body }));
      });
      req.on('error', reject);
      req.end();
    });
    expect(res.status).toBe(431);
    expect(res.headers['content-type']).toBe('application/json');
    expect(res.headers.connection).toBe('close');
    expect(JSON.parse(res.body)).toEqual({ errors: [{ code: 'SIZE_INVALID', message: expect.stringContaining('headers') }] });
    // The server still answers ordinary requests.
    expect((await fetch(`${server.url}/v2/`, { headers: basic('alice', 'alice-pw') })).status).toBe(200);
  });
});
