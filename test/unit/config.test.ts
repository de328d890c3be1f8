import { describe, expect, it } from 'vitest';
import yaml from 'js-yaml';
import { loadConfig, parseConfig } from '../../src/config/config.js';
import { CONTAINER_CONFIG, checkForServe, locateConfig } from '../../src/config/startup.js';
import { loadCloud } from '../../src/storage/swift/clouds.js';

const parse = (text: string, env: NodeJS.ProcessEnv = {}) => parseConfig(yaml.load(text), '/srv/berth', env);
const FS = '  storage: {driver: filesystem, root: d}\n';

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

  describe('as zuul-registry reads it', () => {
    // The file run-buildset-registry renders, with the secret and password given through the environment.
    const buildset = `registry:
  address: '::'
  port: '5000'
  public-url: 'https://%(ZUUL_REGISTRY_HOST):5000'
  secret: "%(ZUUL_REGISTRY_secret)"
  users:
    - name: zuul
      pass: "%(ZUUL_REGISTRY_PASSWORD)"
      access: write
  storage:
    driver: filesystem
    root: /storage
    expiration: 86400
`;
    const env = { ZUUL_REGISTRY_HOST: 'reg.example.org', ZUUL_REGISTRY_secret: 'f0e1d2c3b4a5968778695a4b3c2d1e0f', ZUUL_REGISTRY_PASSWORD: 'pw-from-env' };

    it('%(ZUUL_REGISTRY_<NAME>) is replaced from the environment in every string value, lists included', () => {
      const c = parse(buildset, env);
      expect(c.publicUrl).toBe('https://reg.example.org:5000');
      expect(c.secret).toBe(env.ZUUL_REGISTRY_secret);
      expect(c.users).toEqual([{ name: 'zuul', pass: 'pw-from-env', access: 'write' }]);
      expect(c.unresolved).toEqual([]);
      // The only thing said at start-up: zuul-registry's access rule applies (anyone may pull).
      expect(checkForServe(c)).toEqual([{ msg: expect.stringContaining("zuul-registry's rule") }]);
    });

    it('a quoted port and storage.expiration are read as zuul-registry means them', () => {
      const c = parse(buildset, env);
      expect(c.port).toBe(5000);
      expect(c.address).toBe('::');
      expect(c.expiration).toBe(86400);
      expect(parse(`registry:\n  expiration: 60\n  storage: {driver: filesystem, root: d, expiration: 60}\n`).expiration).toBe(60);
      expect(() => parse(`registry:\n  expiration: 60\n  storage: {driver: filesystem, root: d, expiration: 61}\n`)).toThrow(/^registry\.storage\.expiration: is 61 but registry\.expiration is 60/);
      expect(() => parse(`registry:\n  port: 'ninety'\n${FS}`)).toThrow(/^registry\.port: /);
    });

    it('an unset variable leaves the text; serving refuses it in the secret or a password, naming key and variable', () => {
      const c = parse(buildset, { ZUUL_REGISTRY_HOST: 'h', ZUUL_REGISTRY_PASSWORD: 'pw' });
      expect(c.secret).toBe('%(ZUUL_REGISTRY_secret)');
      expect(c.unresolved).toEqual([{ key: 'registry.secret', variable: 'ZUUL_REGISTRY_secret' }]);
      expect(() => checkForServe(c)).toThrow(/^registry\.secret: the placeholder %\(ZUUL_REGISTRY_secret\) was not replaced: the environment variable ZUUL_REGISTRY_secret is not set/);
      const noPass = parse(buildset, { ...env, ZUUL_REGISTRY_PASSWORD: undefined });
      expect(() => checkForServe(noPass)).toThrow(/^registry\.users\[0\]\.pass: the placeholder %\(ZUUL_REGISTRY_PASSWORD\) was not replaced/);
      // Elsewhere it is only said: zuul-registry would use the text too.
      const noHost = parse(buildset, { ...env, ZUUL_REGISTRY_HOST: undefined });
      expect(noHost.publicUrl).toBe('https://%(ZUUL_REGISTRY_HOST):5000');
      expect(checkForServe(noHost)).toContainEqual({ msg: expect.stringContaining('not set'), key: 'registry.public-url', variable: 'ZUUL_REGISTRY_HOST' });
    });

    it("zuul-registry's example anonymous reader (pass: '') is accepted with a warning; an empty password elsewhere is refused", () => {
      const c = parse(`registry:\n  secret: s3cret\n  users:\n    - {name: zuul, pass: pw, access: write}\n    - {name: anonymous, pass: '', access: read}\n${FS}`);
      expect(c.users[1]).toEqual({ name: 'anonymous', pass: '', access: 'read' });
      expect(checkForServe(c)).toEqual([{ msg: expect.stringContaining('empty password'), user: 'anonymous' }]);
      expect(() => parse(`registry:\n  secret: s3cret\n  users:\n    - {name: zuul, pass: '', access: write}\n${FS}`)).toThrow(/^registry\.users\[0\]\.pass: an empty password is refused for a write user/);
      expect(() => parse(`registry:\n  secret: s3cret\n  users:\n    - {name: r, pass: '', access: read, namespace: team}\n${FS}`)).toThrow(/^registry\.users\[0\]\.pass: .*namespace/);
    });

    it('shadow: is refused saying what it was; other unknown keys (xstorage) stay errors naming their path', () => {
      expect(() => parse(`registry:\n  shadow:\n    docker.io: {hostname: registry-1.docker.io}\n${FS}`)).toThrow(/^registry\.shadow: was zuul-registry's early pull-through option.*Berth does not proxy upstream registries/);
      expect(() => parse(`registry:\n  xstorage: {driver: swift}\n${FS}`)).toThrow(/^registry\.xstorage: unknown key/);
    });
  });

  describe('which file is read', () => {
    const none = () => false;
    it('-c wins, then $BERTH_CONFIG, then /conf/registry.yaml when it exists, then etc/registry.yaml', () => {
      expect(locateConfig('x.yaml', { BERTH_CONFIG: 'y.yaml' }, () => true)).toEqual({ file: 'x.yaml', from: '-c' });
      expect(locateConfig(undefined, { BERTH_CONFIG: 'y.yaml' }, () => true)).toEqual({ file: 'y.yaml', from: 'BERTH_CONFIG' });
      expect(locateConfig(undefined, {}, (f) => f === CONTAINER_CONFIG)).toEqual({ file: '/conf/registry.yaml', from: 'container default' });
      expect(locateConfig(undefined, { BERTH_CONFIG: '' }, none)).toEqual({ file: 'etc/registry.yaml', from: 'default' });
    });
  });
});
