import { describe, expect, it } from 'vitest';
import yaml from 'js-yaml';
import { availableParallelism } from 'node:os';
import { loadConfig, parseConfig } from '../../src/config/config.js';
import { readFileSync, readdirSync } from 'node:fs';
import { CONTAINER_CONFIG, EXAMPLE_SECRETS, checkForServe, locateConfig, tokenAudience } from '../../src/config/startup.js';
import { loadCloud } from '../../src/storage/swift/clouds.js';
import { Registry } from '../../src/registry/registry.js';
import { MemoryDriver } from '../../src/storage/memory.js';

const parse = (text: string, env: NodeJS.ProcessEnv = {}) => parseConfig(yaml.load(text), '/srv/berth', env);
const FS = '  storage: {driver: filesystem, root: d}\n';
const GOOD = 'a3f1c0de5b7e9d2468ace0135792bdf0a3f1c0de5b7e9d2468ace0135792bdf0';

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

  it('quota: a default and per namespace, in bytes or with a unit; a bad value names its key', () => {
    const storage = '  storage: {driver: filesystem, root: data}\n';
    const c = parse(`registry:\n${storage}  quota: 20G\n  quota-interval: 2\n  namespaces:\n    big: {quota: 1.5T}\n    small: {quota: 500MB}\n    exact: {quota: 1048576}\n`);
    expect(c.quota).toBe(20 * 1024 ** 3);
    expect(c.quotaInterval).toBe(2);
    expect([c.namespaces.big.quota, c.namespaces.small.quota, c.namespaces.exact.quota]).toEqual([1.5 * 1024 ** 4, 500e6, 1048576]);
    expect(parse(`registry:\n${storage}`)).toMatchObject({ quota: undefined, quotaInterval: 5 });
    expect(() => parse(`registry:\n${storage}  quota: 20X\n`)).toThrow(/^registry\.quota: must be a size in bytes/);
    expect(() => parse(`registry:\n${storage}  namespaces:\n    t: {quota: -1}\n`)).toThrow(/^registry\.namespaces\.t\.quota: must be an integer/);
    expect(() => parse(`registry:\n${storage}  namespaces:\n    t: {quota: 0}\n`)).toThrow(/^registry\.namespaces\.t\.quota/);
    expect(() => parse(`registry:\n${storage}  quota-interval: 0\n`)).toThrow(/^registry\.quota-interval/);
  });

  it('workers: 1 by default; a number (quoted too) or auto (one per core); anything else names the key', () => {
    const storage = '  storage: {driver: filesystem, root: data}\n';
    expect(parse(`registry:\n${storage}`).workers).toBe(1);
    expect(parse(`registry:\n${storage}  workers: 3\n`).workers).toBe(3);
    expect(parse(`registry:\n${storage}  workers: '2'\n`).workers).toBe(2);
    expect(parse(`registry:\n${storage}  workers: auto\n`).workers).toBe(availableParallelism());
    for (const bad of ['0', '-1', '1.5', 'many', '300']) expect(() => parse(`registry:\n${storage}  workers: ${bad}\n`)).toThrow('registry.workers: must be auto or an integer from 1 to 256');
  });

  it('storage.commit: move or link on Swift; link refused where joins copy (the filesystem), anything else named', () => {
    const swift = (extra: string) => parse(`registry:\n  storage: {driver: swift, cloud: prod, container: images${extra}}\n`).storage;
    expect(swift('')).toEqual({ driver: 'swift', cloud: 'prod', container: 'images' });
    expect(swift(', commit: link')).toMatchObject({ commit: 'link' });
    expect(swift(', commit: move')).toMatchObject({ commit: 'move' });
    expect(() => swift(', commit: copy')).toThrow(/^registry\.storage\.commit: must be move or link, not "copy"/);
    expect(parse(`registry:\n  storage: {driver: filesystem, root: data, commit: move}\n`).storage.driver).toBe('filesystem');
    expect(() => parse(`registry:\n  storage: {driver: filesystem, root: data, commit: link}\n`)).toThrow(/^registry\.storage\.commit: link needs Swift/);
    // The core refuses it too, from the driver's declared capabilities rather than its name.
    expect(() => new Registry(new MemoryDriver(), { commit: 'link' })).toThrow(/commit: link needs a backend whose joins keep their parts/);
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
      const c = parse(`registry:\n  secret: ${GOOD}\n  users:\n    - {name: zuul, pass: pw, access: write}\n    - {name: anonymous, pass: '', access: read}\n${FS}`);
      expect(c.users[1]).toEqual({ name: 'anonymous', pass: '', access: 'read' });
      expect(checkForServe(c)).toEqual([{ msg: expect.stringContaining('empty password'), user: 'anonymous' }]);
      expect(() => parse(`registry:\n  secret: s3cret\n  users:\n    - {name: zuul, pass: '', access: write}\n${FS}`)).toThrow(/^registry\.users\[0\]\.pass: an empty password is refused for a write user/);
      expect(() => parse(`registry:\n  secret: s3cret\n  users:\n    - {name: r, pass: '', access: read, namespace: team}\n${FS}`)).toThrow(/^registry\.users\[0\]\.pass: .*namespace/);
    });

    it('public: true beside a read-only user is said at start-up to be ignored (nobody pulls without credentials then)', () => {
      const users = `  users:\n    - {name: w, pass: pw, access: write, namespace: pub}\n`;
      const pub = `  namespaces:\n    pub: {public: true}\n`;
      const withReader = parse(`registry:\n  secret: ${GOOD}\n${users}    - {name: r, pass: pw, access: read, namespace: pub}\n${pub}${FS}`);
      expect(checkForServe(withReader)).toEqual([{ msg: expect.stringMatching(/^public: true is ignored: a read-only user exists/), namespace: 'pub', user: 'r' }]);
      expect(checkForServe(parse(`registry:\n  secret: ${GOOD}\n${users}${pub}${FS}`))).toEqual([]);
    });

    it('shadow: is refused saying what it was; other unknown keys (xstorage) stay errors naming their path', () => {
      expect(() => parse(`registry:\n  shadow:\n    docker.io: {hostname: registry-1.docker.io}\n${FS}`)).toThrow(/^registry\.shadow: was zuul-registry's early pull-through option.*registry\.mirrors/);
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

  describe('the signing secret', () => {
    const withSecret = (secret: string, extra = '') => parse(`registry:\n  secret: '${secret}'\n  users:\n    - {name: ci, pass: pw, access: write, namespace: ci}\n${extra}${FS}`);

    it('under 16 bytes is refused, saying how to make one', () => {
      expect(() => checkForServe(withSecret('x'))).toThrow(/^registry\.secret: is 1 bytes; at least 16 are required .*openssl rand -hex 32/);
      expect(() => checkForServe(withSecret('fifteen-bytes!!'))).toThrow(/^registry\.secret: is 15 bytes/);
    });

    it("every example's secret in etc/ is refused as it stands, whatever its case", () => {
      const found = readdirSync('etc')
        .filter((f) => f.endsWith('.yaml'))
        .flatMap((f) => [...readFileSync(`etc/${f}`, 'utf8').matchAll(/^\s*#?\s*secret:\s*(\S+)/gm)].map((m) => m[1]));
      expect(found.length).toBeGreaterThan(0);
      for (const secret of [...found, ...EXAMPLE_SECRETS, 'change-me-to-a-long-random-string']) {
        expect(() => checkForServe(withSecret(secret)), secret).toThrow(/^registry\.secret: is the example's text: .*openssl rand -hex 32/);
      }
    });

    it('16 to 31 bytes is accepted with a warning (zuul-jobs makes 20 characters); 32 and more, silently', () => {
      expect(checkForServe(withSecret('0123456789abcdefghij'))).toEqual([{ msg: expect.stringContaining('shorter than 32 bytes'), bytes: 20 }]);
      expect(checkForServe(withSecret(GOOD))).toEqual([]);
    });
  });

  describe("tokens' audience", () => {
    const at = (extra: string, secret = GOOD) => tokenAudience(parse(`registry:\n  secret: ${secret}\n${extra}${FS}`));
    it('is the public URL when there is one, else listen address, port and a hash of the secret', () => {
      expect(at(`  public-url: https://reg.example.org:5000/\n`)).toBe('https://reg.example.org:5000');
      const derived = at(`  address: 10.0.0.1\n  port: 5000\n`);
      expect(derived).toMatch(/^berth:10\.0\.0\.1:5000:[0-9a-f]{16}$/);
      expect(derived).not.toContain(GOOD.slice(0, 16));
      expect(at(`  address: 10.0.0.1\n  port: 5000\n`)).toBe(derived);
      for (const other of [at(`  address: 10.0.0.2\n  port: 5000\n`), at(`  address: 10.0.0.1\n  port: 5001\n`), at(`  address: 10.0.0.1\n  port: 5000\n`, GOOD.replace('a', 'b'))]) {
        expect(other).not.toBe(derived);
      }
    });
  });
});

describe('config: connection timeouts', () => {
  const base = 'registry:\n  storage: {driver: filesystem, root: /d}\n';
  it('defaults bound every stage of a connection; each can be set in seconds', () => {
    expect(parse(base).timeouts).toEqual({ handshake: 10, headers: 10, idle: 65, bodyIdle: 60, sendIdle: 60 });
    expect(parse(`${base}  timeouts: {handshake: 3, body-idle: 120, send-idle: 30}\n`).timeouts).toEqual({ handshake: 3, headers: 10, idle: 65, bodyIdle: 120, sendIdle: 30 });
  });

  it('refuses zero, fractions, unknown keys, and a handshake over five minutes, naming the key', () => {
    expect(() => parse(`${base}  timeouts: {headers: 0}\n`)).toThrow(/registry\.timeouts\.headers: must be an integer from 1/);
    expect(() => parse(`${base}  timeouts: {idle: 1.5}\n`)).toThrow(/registry\.timeouts\.idle/);
    expect(() => parse(`${base}  timeouts: {request: 5}\n`)).toThrow(/registry\.timeouts\.request: unknown key/);
    expect(() => parse(`${base}  timeouts: {handshake: 301}\n`)).toThrow(/registry\.timeouts\.handshake/);
    expect(() => parse(`${base}  timeouts: {send-idle: 0}\n`)).toThrow(/registry\.timeouts\.send-idle: must be an integer from 1/);
  });
});
