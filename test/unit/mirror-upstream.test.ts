/** The upstream client against small loopback servers that play the parts of a registry, its token service and a CDN. */
import http from 'node:http';
import https from 'node:https';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { selfSignedCert } from '../helpers/docker.js';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { MIRROR_DEFAULTS, type MirrorConfig } from '../../src/config/mirrors.js';
import { Upstream, UpstreamUnavailable, parseChallenge, readLimited } from '../../src/mirror/upstream.js';

const servers: http.Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

async function serve(handler: http.RequestListener): Promise<string> {
  const s = http.createServer(handler);
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
}

const config = (url: string, extra: Partial<MirrorConfig> = {}): MirrorConfig => ({
  registry: 'quay.io', url, tagTtl: 300, keep: 3600, unprefixed: [], timeout: 2, maxBlobSize: MIRROR_DEFAULTS.maxBlobSize, maxFills: 4, maxFillsPerClient: 8, ...extra,
});
const text = async (r: { body: NodeJS.ReadableStream }) => {
  let s = '';
  for await (const p of r.body) s += p;
  return s;
};

describe('upstream client', () => {
  it('parses Docker and Basic challenges', () => {
    expect(parseChallenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/x:pull"')).toEqual({
      scheme: 'bearer',
      params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/x:pull' },
    });
    expect(parseChallenge('Basic realm="x"')).toEqual({ scheme: 'basic', params: { realm: 'x' } });
  });

  it('the Bearer flow: token fetched with the login once, reused until it expires; the CDN redirect gets no credentials', async () => {
    const seen: { path: string; auth?: string }[] = [];
    let tokens = 0;
    const cdn = await serve((req, res) => {
      seen.push({ path: `cdn ${req.url}`, auth: req.headers.authorization });
      res.end('layer bytes');
    });
    const registry = await serve((req, res) => {
      seen.push({ path: req.url!, auth: req.headers.authorization });
      if (req.url!.startsWith('/token')) {
        tokens++;
        expect(req.headers.authorization).toBe(`Basic ${Buffer.from('bot:pw').toString('base64')}`);
        expect(new URL(req.url!, 'http://x').searchParams.get('scope')).toBe('repository:org/app:pull');
        expect(new URL(req.url!, 'http://x').searchParams.get('service')).toBe('test');
        return res.end(JSON.stringify({ token: 'tok-123', expires_in: 300 }));
      }
      if (req.headers.authorization !== 'Bearer tok-123') {
        res.statusCode = 401;
        res.setHeader('WWW-Authenticate', `Bearer realm="http://${req.headers.host}/token",service="test",scope="repository:org/app:pull"`);
        return res.end();
      }
      if (req.url!.includes('/blobs/')) {
        res.statusCode = 307;
        res.setHeader('Location', `${cdn}/bucket/blob?sig=1`);
        return res.end();
      }
      res.end('{}');
    });
    const up = new Upstream(config(registry, { username: 'bot', password: 'pw' }));
    try {
      const m = await up.manifest('org/app', 'v1', 'GET');
      expect(m.status).toBe(200);
      await text(m);
      const b = await up.blob('org/app', `sha256:${'a'.repeat(64)}`);
      expect(b.status).toBe(200);
      expect(await text(b)).toBe('layer bytes');
      expect(b.host).toBe(new URL(cdn).host);
      expect(tokens).toBe(1);
      const atCdn = seen.filter((s) => s.path.startsWith('cdn '));
      expect(atCdn).toHaveLength(1);
      expect(atCdn[0].auth).toBeUndefined();
    } finally {
      up.close();
    }
  });

  it('Basic auth when the upstream asks for it; none sent before it asks', async () => {
    const auths: (string | undefined)[] = [];
    const registry = await serve((req, res) => {
      auths.push(req.headers.authorization);
      if (!req.headers.authorization) {
        res.statusCode = 401;
        res.setHeader('WWW-Authenticate', 'Basic realm="r"');
        return res.end();
      }
      res.end('ok');
    });
    const up = new Upstream(config(registry, { username: 'u', password: 'p' }));
    try {
      const r = await up.manifest('a/b', 'v1', 'GET');
      expect(r.status).toBe(200);
      expect(auths).toEqual([undefined, `Basic ${Buffer.from('u:p').toString('base64')}`]);
    } finally {
      up.close();
    }
  });

  it('anonymous: a 401 without credentials to answer with is passed on', async () => {
    const registry = await serve((_req, res) => {
      res.statusCode = 401;
      res.setHeader('WWW-Authenticate', 'Basic realm="r"');
      res.end();
    });
    const up = new Upstream(config(registry));
    try {
      expect((await up.manifest('a/b', 'v1', 'GET')).status).toBe(401);
    } finally {
      up.close();
    }
  });

  it('an upstream that does not answer in time, or is not there, is UpstreamUnavailable naming only the host', async () => {
    const silent = await serve(() => {});
    const up = new Upstream(config(silent, { timeout: 1, username: 'u', password: 'secret-pw' }));
    try {
      const err = await up.manifest('a/b', 'v1', 'GET').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UpstreamUnavailable);
      expect(String(err)).toMatch(/did not answer within 1 s/);
    } finally {
      up.close();
    }
    const gone = new Upstream(config('http://127.0.0.1:9', { username: 'u', password: 'secret-pw' }));
    try {
      const err = await gone.manifest('a/b', 'v1', 'GET').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UpstreamUnavailable);
      expect(String(err)).toMatch(/cannot reach 127\.0\.0\.1:9: ECONNREFUSED/);
      expect(String(err)).not.toMatch(/secret-pw/);
    } finally {
      gone.close();
    }
  });

  it('a body that stalls fails with UpstreamUnavailable after the timeout; a body cut short fails as the upstream\'s', async () => {
    const stalling = await serve((_req, res) => {
      res.writeHead(200, { 'Content-Length': '1000' });
      res.write('x'.repeat(100)); // then nothing, the connection left open
    });
    const up = new Upstream(config(stalling, { timeout: 1 }));
    try {
      const res = await up.blob('a/b', `sha256:${'0'.repeat(64)}`);
      const err = await text(res).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UpstreamUnavailable);
      expect(String(err)).toMatch(/stalled for 1 s/);
    } finally {
      up.close();
    }
    const cut = await serve((_req, res) => {
      res.writeHead(200, { 'Content-Length': '1000', 'Content-Type': 'application/vnd.oci.image.manifest.v1+json' });
      res.write('{"schemaVersion":', () => res.socket?.destroy());
    });
    const up2 = new Upstream(config(cut));
    try {
      const res = await up2.manifest('a/b', 'v1', 'GET');
      const err = await readLimited(res.body, 4096).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UpstreamUnavailable);
      expect(String(err)).toMatch(/the upstream's body failed/);
    } finally {
      up2.close();
    }
  });

  it('TLS is verified: a self-signed upstream is refused, and accepted with its certificate as `ca`', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'berth-upstream-tls-'));
    try {
      const { cert, key } = await selfSignedCert(dir, ['127.0.0.1']);
      const pem = await readFile(cert, 'utf8');
      const s = https.createServer({ cert: pem, key: await readFile(key) }, (_req, res) => res.end('{}'));
      servers.push(s as unknown as http.Server);
      await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
      const url = `https://127.0.0.1:${(s.address() as AddressInfo).port}`;
      const strict = new Upstream(config(url));
      try {
        const err = await strict.manifest('a/b', 'v1', 'GET').catch((e: unknown) => e);
        expect(err).toBeInstanceOf(UpstreamUnavailable);
        expect(String(err)).toMatch(/SELF_SIGNED|CERT/);
      } finally {
        strict.close();
      }
      const trusting = new Upstream(config(url, { ca: pem }));
      try {
        expect((await trusting.manifest('a/b', 'v1', 'GET')).status).toBe(200);
      } finally {
        trusting.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
