/**
 * Keystone v3 for real: tools/keystone-aio.sh runs Debian's Keystone 22 (127.0.0.1:5050) in front of a Swift proxy
 * with authtoken + keystoneauth (127.0.0.1:8081). Password and application-credential logins (by id and by name)
 * open storage through the factory `berth serve` uses, and `berth serve` itself pushes and pulls with
 * `cloud: ks-appcred`. Refused credentials stop `berth serve` with exit 1 and a message without the secret.
 * No skip: if Keystone cannot start, the suite fails with the script's log tail.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import yaml from 'js-yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStorage } from '../../src/storage/factory.js';
import { login, type Session } from '../../src/storage/swift/auth.js';
import { loadCloud } from '../../src/storage/swift/clouds.js';
import { md5, pushBlob, pushImage, spawnServe } from '../helpers/server.js';

const run = promisify(execFile);
const CLOUDS = ['ks-password', 'ks-appcred', 'ks-appcred-name'] as const;
const STORAGE_URL = /^http:\/\/127\.0\.0\.1:8081\/v1\/AUTH_[0-9a-f]{32}$/;

let clouds: string;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'berth-keystone-'));
  try {
    const { stdout } = await run('tools/keystone-aio.sh', ['start'], { timeout: 290_000, maxBuffer: 1 << 22 });
    clouds = stdout.trim().split('\n').pop()!;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    // The script's stderr ends with the tail of every log it keeps (never a secret).
    throw new Error(`tools/keystone-aio.sh start failed:\n${e.stderr || e.message}`);
  }
}, 300_000);
afterAll(() => rm(dir, { recursive: true, force: true }));

const freshContainer = () => `berth-ks-${randomBytes(5).toString('hex')}`;

const sessions = new Map<string, Promise<Session>>();

/** A request to Swift (8081) with a token of `cloud` (one login per cloud), for what the driver does not expose. */
async function swiftRaw(cloud: string, path: string, init: RequestInit = {}): Promise<Response> {
  if (!sessions.has(cloud)) sessions.set(cloud, login(loadCloud(cloud, clouds)));
  const session = await sessions.get(cloud)!;
  return fetch(`${session.storageUrl}/${path}`, { ...init, headers: { ...(init.headers as Record<string, string>), 'X-Auth-Token': session.token } });
}

async function dropContainer(cloud: string, container: string): Promise<void> {
  for (;;) {
    const res = await swiftRaw(cloud, `${container}?format=json&limit=1000`);
    if (res.status === 404) return;
    const names = ((await res.json()) as { name: string }[]).map((o) => o.name);
    if (names.length === 0) break;
    for (const n of names) await (await swiftRaw(cloud, `${container}/${n.split('/').map(encodeURIComponent).join('/')}`, { method: 'DELETE' })).arrayBuffer();
  }
  await (await swiftRaw(cloud, container, { method: 'DELETE' })).arrayBuffer();
}

const serveConfig = (cloud: string, container: string, file: string) =>
  `registry:\n  address: 127.0.0.1\n  port: 0\n  storage:\n    driver: swift\n    cloud: ${cloud}\n    container: ${container}\n    clouds-file: ${file}\n`;

describe.each(CLOUDS)('Keystone cloud %s', (cloud) => {
  it('logs in with POST /v3/auth/tokens and takes the project object-store endpoint from the catalog', async () => {
    const session = await login(loadCloud(cloud, clouds));
    expect(session.storageUrl).toMatch(STORAGE_URL);
    expect(session.token).toMatch(/^gAAAAA/); // a fernet token
    expect(session.expiresAt).toBeGreaterThan(Date.now() + 30 * 60_000); // Keystone's expires_at, an hour ahead
    // 8081 is behind Keystone: the account refuses a request without a token or with a made-up one.
    expect((await fetch(session.storageUrl, { method: 'HEAD' })).status).toBe(401);
    expect((await fetch(session.storageUrl, { method: 'HEAD', headers: { 'X-Auth-Token': 'gAAAAAnot-a-token' } })).status).toBe(401);
    expect([200, 204]).toContain((await fetch(session.storageUrl, { method: 'HEAD', headers: { 'X-Auth-Token': session.token } })).status);
  });

  it('storage from the factory puts, reads, lists and deletes in a fresh container', async () => {
    const container = freshContainer();
    const driver = await openStorage({ driver: 'swift', cloud, container, cloudsFile: clouds });
    try {
      const data = randomBytes(100_000);
      const stored = await driver.put('ks/a/object', data, { size: data.length, md5: md5(data) });
      expect(stored).toMatchObject({ size: data.length, md5: md5(data) });
      expect(await driver.read('ks/a/object')).toEqual(data);
      const listed: string[] = [];
      for await (const o of driver.list('ks')) listed.push(o.path);
      expect(listed).toEqual(['ks/a/object']);
      // It is in the project's account, where the other logins of the same project see it.
      const other = cloud === 'ks-password' ? 'ks-appcred' : 'ks-password';
      expect((await swiftRaw(other, `${container}/ks/a/object`, { method: 'HEAD' })).status).toBe(200);
      await driver.delete('ks/a/object');
      expect(await driver.stat('ks/a/object')).toBeNull();
    } finally {
      await driver.close();
      await dropContainer(cloud, container);
    }
  });
});

describe('berth serve with cloud: ks-appcred', () => {
  it('pushes a blob and an image and pulls them back, stored in the project behind Keystone', async () => {
    const container = freshContainer();
    const server = await spawnServe(serveConfig('ks-appcred', container, clouds), dir);
    try {
      const data = randomBytes(300_000);
      const digest = await pushBlob(server.url, 'ks/app', data);
      const blob = await fetch(`${server.url}/v2/ks/app/blobs/${digest}`);
      expect(blob.status).toBe(200);
      expect(Buffer.from(await blob.arrayBuffer())).toEqual(data);
      const image = await pushImage(server.url, 'ks/app', 'v1', [randomBytes(2000)]);
      const manifest = await fetch(`${server.url}/v2/ks/app/manifests/v1`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
      expect(manifest.status).toBe(200);
      expect(Buffer.from(await manifest.arrayBuffer())).toEqual(image.body);
      const objects = (await (await swiftRaw('ks-appcred', `${container}?format=json`)).json()) as { name: string }[];
      expect(objects.map((o) => o.name)).toContainEqual(expect.stringMatching(new RegExp(`/blobs/${digest}/data$`)));
      expect(await server.stop()).toBe(0);
    } finally {
      await server.stop();
      await dropContainer('ks-appcred', container);
    }
  });

  it.each([
    ['ks-password', 'password'],
    ['ks-appcred', 'application_credential_secret'],
  ])('a wrong secret in %s (auth.%s): exit 1, and neither secret is in the message', async (cloud, key) => {
    const doc = yaml.load(await readFile(clouds, 'utf8')) as { clouds: Record<string, { auth: Record<string, string> }> };
    const real = doc.clouds[cloud].auth[key];
    const wrong = `wrong-${randomBytes(8).toString('hex')}`;
    doc.clouds[cloud].auth[key] = wrong;
    const bad = join(dir, `clouds-${cloud}.yaml`);
    await writeFile(bad, yaml.dump(doc), { mode: 0o600 });
    const err = await spawnServe(serveConfig(cloud, 'berth-ks-never-created', bad), dir).then(
      async (s) => {
        await s.stop();
        return new Error('it started');
      },
      (e: unknown) => e as Error,
    );
    expect(err.message).toMatch(/exited with 1: .*Keystone refused the credentials \(401\)/s);
    expect(err.message).not.toContain(wrong);
    // Not toContain(real): a failing assertion would print the real secret.
    expect(err.message.includes(real), 'the real secret appears in the message').toBe(false);
  });
});
