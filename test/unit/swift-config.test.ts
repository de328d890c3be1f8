/** clouds.yaml reading, Keystone request shapes and SLO planning: the parts of the Swift driver that need no Swift. */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { objectStoreEndpoint, v3Request, v3Url } from '../../src/storage/swift/auth.js';
import { CloudConfigError, loadCloud } from '../../src/storage/swift/clouds.js';
import { MAX_SMALL_SEGMENTS, planManifests, planMerges, sloEtag } from '../../src/storage/swift/slo.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'berth-clouds-'));
  await writeFile(
    join(dir, 'clouds.yaml'),
    `clouds:
  tempauth: {auth_type: v1password, auth: {auth_url: 'http://h/auth/v1.0', username: 'a:b', password: pw}}
  ks-password:
    auth_type: password
    auth: {auth_url: 'http://k:5000', username: reg, password: pw, project_name: registry, user_domain_name: Default, project_domain_name: Default}
    region_name: RegionOne
    interface: internal
  ks-appcred:
    auth_type: v3applicationcredential
    auth: {auth_url: 'http://k:5000/v3/', application_credential_id: abc, application_credential_secret: s3}
  broken: {auth_type: v1password, auth: {auth_url: 'http://h', username: u}}
  odd: {auth_type: token, auth: {auth_url: 'http://h'}}
`,
  );
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('clouds.yaml', () => {
  it('reads tempauth, Keystone password and application-credential clouds', () => {
    const file = join(dir, 'clouds.yaml');
    expect(loadCloud('tempauth', file)).toEqual({ type: 'v1password', authUrl: 'http://h/auth/v1.0', username: 'a:b', password: 'pw' });
    expect(loadCloud('ks-password', file)).toMatchObject({ type: 'password', projectName: 'registry', regionName: 'RegionOne', interface: 'internal' });
    expect(loadCloud('ks-appcred', file)).toMatchObject({ type: 'v3applicationcredential', id: 'abc', interface: 'public' });
  });

  it('finds the file through OS_CLIENT_CONFIG_FILE', () => {
    const saved = process.env.OS_CLIENT_CONFIG_FILE;
    process.env.OS_CLIENT_CONFIG_FILE = join(dir, 'clouds.yaml');
    try {
      expect(loadCloud('tempauth').type).toBe('v1password');
    } finally {
      if (saved === undefined) delete process.env.OS_CLIENT_CONFIG_FILE;
      else process.env.OS_CLIENT_CONFIG_FILE = saved;
    }
  });

  it('names the missing cloud, the missing key or the unsupported auth type', () => {
    const file = join(dir, 'clouds.yaml');
    expect(() => loadCloud('nope', file)).toThrow(/no cloud named "nope"/);
    expect(() => loadCloud('broken', file)).toThrow(/clouds\.broken\.auth\.password is required/);
    expect(() => loadCloud('odd', file)).toThrow(CloudConfigError);
    expect(() => loadCloud('x', join(dir, 'missing.yaml'))).toThrow(/no clouds.yaml found/);
  });

  it('a YAML syntax error next to a password names the file and position but never shows the password', async () => {
    const file = join(dir, 'bad-clouds.yaml');
    // The unclosed flow mapping fails a line below the password, well inside js-yaml's snippet window.
    await writeFile(file, `clouds:\n  berth:\n    auth_type: v1password\n    auth:\n      password: hunter2-secret\n      username: {a: b\n`);
    let err: unknown;
    try {
      loadCloud('berth', file);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CloudConfigError);
    expect((err as Error).message).toMatch(/bad-clouds\.yaml: not valid YAML: .*\(\d+:\d+\)$/);
    expect((err as Error).message).not.toContain('hunter2');
    expect((err as Error).stack).not.toContain('hunter2');
  });
});

describe('Keystone v3 requests', () => {
  it('scopes password logins to the project and sends application credentials without a scope', () => {
    expect(v3Url('http://k:5000')).toBe('http://k:5000/v3');
    expect(v3Url('http://k:5000/v3/')).toBe('http://k:5000/v3');
    const pw = v3Request({ type: 'password', authUrl: 'x', username: 'reg', password: 'pw', userDomainName: 'Default', projectName: 'registry', projectDomainName: 'Default', interface: 'public' });
    expect(pw).toEqual({
      auth: {
        identity: { methods: ['password'], password: { user: { name: 'reg', domain: { name: 'Default' }, password: 'pw' } } },
        scope: { project: { name: 'registry', domain: { name: 'Default' } } },
      },
    });
    const ac = v3Request({ type: 'v3applicationcredential', authUrl: 'x', name: 'ci', secret: 's', username: 'reg', userDomainName: 'Default', interface: 'public' });
    expect(ac).toEqual({
      auth: { identity: { methods: ['application_credential'], application_credential: { name: 'ci', secret: 's', user: { name: 'reg', domain: { name: 'Default' } } } } },
    });
  });

  it('picks the object-store endpoint by interface and region', () => {
    const catalog = [
      { type: 'identity', endpoints: [{ interface: 'public', region_id: 'R1', url: 'http://k' }] },
      {
        type: 'object-store',
        endpoints: [
          { interface: 'public', region_id: 'R1', url: 'http://s1/v1/AUTH_p' },
          { interface: 'internal', region_id: 'R1', url: 'http://i1/v1/AUTH_p' },
          { interface: 'public', region_id: 'R2', url: 'http://s2/v1/AUTH_p' },
        ],
      },
    ];
    expect(objectStoreEndpoint(catalog, 'public', 'R2')).toBe('http://s2/v1/AUTH_p');
    expect(objectStoreEndpoint(catalog, 'internal')).toBe('http://i1/v1/AUTH_p');
    expect(objectStoreEndpoint(catalog, 'admin')).toBeUndefined();
  });
});

describe('SLO planning', () => {
  const MiB = 1 << 20;
  const part = (i: number, size: number) => ({ path: `b/p${i}`, size, md5: i.toString(16).padStart(32, '0') });

  it('keeps parts as segments when few are small', () => {
    const parts = [part(0, 5 * MiB), part(1, 100), part(2, 5 * MiB), part(3, 7)];
    expect(planMerges('b', parts)).toEqual({ merges: [], segments: parts.map((p) => ({ path: p.path, etag: p.md5, size: p.size })) });
  });

  it('merges runs of small parts into groups of at least 1 MiB, leaving large parts alone', () => {
    const parts = [...Array.from({ length: 25 }, (_, i) => part(i, 100_000)), part(25, 4 * MiB), part(26, 10)];
    const plan = planMerges('b', parts);
    const sizes = plan.merges.map((m) => m.parts.reduce((n, p) => n + p.size, 0));
    expect(sizes.slice(0, -1).every((n) => n >= MiB)).toBe(true);
    expect(plan.merges.flatMap((m) => m.parts).length).toBe(25);
    expect(plan.segments.filter((s) => 'path' in s && s.size < MiB).length).toBeLessThanOrEqual(MAX_SMALL_SEGMENTS);
    expect(plan.segments.at(-2)).toEqual({ path: 'b/p25', etag: parts[25].md5, size: 4 * MiB });
  });

  it('nests more segments than a manifest holds, with the sub-manifests SLO etags', () => {
    const segs = Array.from({ length: 5 }, (_, i) => ({ path: `b/p${i}`, etag: i.toString(16).padStart(32, '0'), size: MiB }));
    const plan = planManifests('b', segs, 3);
    expect(plan.subManifests.map((s) => s.segments.length)).toEqual([3, 2]);
    expect(plan.top).toEqual(plan.subManifests.map((s) => ({ path: s.path, etag: sloEtag(s.segments), size: s.segments.length * MiB })));
    expect(planManifests('b', segs, 5)).toEqual({ subManifests: [], top: segs });
    // One level of nesting: up to 1000 x 1000 segments.
    expect(() => planManifests('b', segs, 2)).toThrow(/too many parts/);
  });
});
