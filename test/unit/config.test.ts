import { describe, expect, it } from 'vitest';
import yaml from 'js-yaml';
import { loadConfig, parseConfig } from '../../src/config/config.js';
import { loadCloud } from '../../src/storage/swift/clouds.js';

const parse = (text: string) => parseConfig(yaml.load(text), '/srv/berth');

describe('config', () => {
  it('the shipped etc/registry.yaml loads: filesystem under ./data, port 9000', () => {
    const c = loadConfig('etc/registry.yaml');
    expect(c.port).toBe(9000);
    expect(c.storage).toEqual({ driver: 'filesystem', root: `${process.cwd()}/data` });
    expect(c.uploadExpiry).toBe(3600);
  });

  it('the shipped Swift example loads, and its clouds.yaml example entries parse', () => {
    const c = loadConfig('etc/registry-swift.yaml');
    expect(c.storage).toEqual({ driver: 'swift', cloud: 'berth', container: 'berth' });
    expect(c.expiration).toBe(604800);
    for (const cloud of ['berth-tempauth', 'berth', 'berth-appcred']) {
      expect(loadCloud(cloud, 'etc/clouds.yaml.example').authUrl).toMatch(/^https?:\/\//);
    }
  });

  it('the multi-tenant example loads: users with namespaces, htpasswd, a public namespace, TLS', () => {
    const c = loadConfig('etc/registry-tenants.yaml');
    expect(c.users.map((u) => [u.name, u.namespace])).toEqual([['alice', 'tenant-a'], ['bob', 'tenant-b'], ['publisher', 'public']]);
    expect(c.namespaces.public.public).toBe(true);
    expect(c.htpasswd).toBe('/etc/berth/htpasswd');
    expect(c.tlsCert).toBe('/etc/berth/tls.crt');
  });

  it('limits: defaults without the key; each may be set; a bad value names its key', () => {
    const storage = '  storage: {driver: filesystem, root: data}\n';
    expect(parse(`registry:\n${storage}`).limits).toEqual({ chunksPerUpload: 10_000, uploadsPerNamespace: 1_000, maxBlobSize: 100 * 1024 ** 3 });
    expect(parse(`registry:\n${storage}  limits: {chunks-per-upload: 50, max-blob-size: 1048576}\n`).limits).toEqual({
      chunksPerUpload: 50,
      uploadsPerNamespace: 1_000,
      maxBlobSize: 1048576,
    });
    expect(() => parse(`registry:\n${storage}  limits: {uploads-per-namespace: 0}\n`)).toThrow(/registry\.limits\.uploads-per-namespace/);
    expect(() => parse(`registry:\n${storage}  limits: {chunks: 5}\n`)).toThrow(/registry\.limits\.chunks: unknown key/);
  });

  it("accepts zuul-registry's keys unchanged", () => {
    const c = parse(`registry:
  address: 127.0.0.1
  port: 5000
  public-url: https://reg.example.org/
  tls-cert: tls/cert.pem
  tls-key: tls/key.pem
  secret: s3cret
  users:
    - {name: ci, pass: pw, access: write}
    - {name: r, pass: pw, access: read}
  storage: {driver: swift, cloud: prod, container: images}
  expiration: 86400
`);
    expect(c).toMatchObject({
      address: '127.0.0.1',
      port: 5000,
      publicUrl: 'https://reg.example.org',
      tlsCert: '/srv/berth/tls/cert.pem',
      storage: { driver: 'swift', cloud: 'prod', container: 'images' },
      expiration: 86400,
    });
    expect(c.users.map((u) => u.access)).toEqual(['write', 'read']);
  });

  it.each([
    ['registry:\n  prot: 1\n  storage: {driver: filesystem, root: d}', 'registry.prot'],
    ['registry:\n  port: 70000\n  storage: {driver: filesystem, root: d}', 'registry.port'],
    ['registry:\n  port: 1', 'registry.storage'],
    ['registry:\n  storage: {driver: s3}', 'registry.storage.driver'],
    ['registry:\n  storage: {driver: filesystem, root: d, rot: x}', 'registry.storage.rot'],
    ['registry:\n  storage: {driver: swift, cloud: c}', 'registry.storage.container'],
    ['registry:\n  users: [{name: a, pass: b, access: admin}]\n  storage: {driver: filesystem, root: d}', 'registry.users[0].access'],
    ['registry:\n  tls-cert: a\n  storage: {driver: filesystem, root: d}', 'registry.tls-key'],
    ['other: 1', 'other'],
  ])('refuses %j naming the key %s', (text, key) => {
    expect(() => parse(text)).toThrow(new RegExp(`^${key.replace(/[[\].]/g, '\\$&')}: `));
  });
});
