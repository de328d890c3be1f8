import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import yaml from 'js-yaml';
import { describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../src/config/config.js';
import { checkForServe } from '../../src/config/startup.js';

const parse = (mirrors: string, env: NodeJS.ProcessEnv = {}, base = '/srv/berth') =>
  parseConfig(yaml.load(`registry:\n  storage: {driver: filesystem, root: d}\n  mirrors:\n${mirrors}`), base, env);

describe('registry.mirrors', () => {
  it('no mirrors key: an empty list', () => {
    expect(parseConfig(yaml.load('registry:\n  storage: {driver: filesystem, root: d}\n'), '/srv').mirrors).toEqual([]);
  });

  it('the minimal form takes every default', () => {
    const [m] = parse('    - {registry: quay.io, url: "https://quay.io/"}\n').mirrors;
    expect(m).toEqual({ registry: 'quay.io', url: 'https://quay.io', username: undefined, password: undefined, tagTtl: 300, keep: 604800, namespaces: undefined, unprefixed: [], ca: undefined, timeout: 30, maxBlobSize: 10 * 1024 ** 3, maxFills: 16, maxFillsPerClient: 8 });
  });

  it('credentials come from %(ZUUL_REGISTRY_...) placeholders; an unset one stops serve', () => {
    const text = '    - {registry: docker.io, url: "https://registry-1.docker.io", username: "%(ZUUL_REGISTRY_HUB_USER)", password: "%(ZUUL_REGISTRY_HUB_PASS)"}\n';
    const c = parse(text, { ZUUL_REGISTRY_HUB_USER: 'bot', ZUUL_REGISTRY_HUB_PASS: 's3cret' });
    expect(c.mirrors[0]).toMatchObject({ username: 'bot', password: 's3cret' });
    const unset = parse(text, { ZUUL_REGISTRY_HUB_USER: 'bot' });
    expect(() => checkForServe(unset)).toThrow(/^registry\.mirrors\[0\]\.password: the placeholder %\(ZUUL_REGISTRY_HUB_PASS\) was not replaced.*as a password/);
  });

  it('every bad value names its key path', () => {
    const cases: [string, RegExp][] = [
      ['    x: 1\n', /^registry\.mirrors: must be a list/],
      ['    - quay.io\n', /^registry\.mirrors\[0\]: must be a mapping/],
      ['    - {registry: quay.io}\n', /^registry\.mirrors\[0\]\.url: must be a non-empty string/],
      ['    - {registry: "quay.io:443", url: "https://quay.io"}\n', /^registry\.mirrors\[0\]\.registry: must be a registry host name/],
      ['    - {registry: quay, url: "https://quay.io"}\n', /^registry\.mirrors\[0\]\.registry: must be a registry host name/],
      ['    - {registry: quay.io, url: "ftp://quay.io"}\n', /^registry\.mirrors\[0\]\.url: must be an http/],
      ['    - {registry: quay.io, url: "https://u:p@quay.io"}\n', /^registry\.mirrors\[0\]\.url: .*without credentials/],
      ['    - {registry: quay.io, url: "https://quay.io"}\n    - {registry: quay.io, url: "https://quay.io"}\n', /^registry\.mirrors\[1\]\.registry: quay\.io is listed twice/],
      ['    - {registry: quay.io, url: "https://quay.io", username: u}\n', /^registry\.mirrors\[0\]\.password: username and password must be given together/],
      ['    - {registry: quay.io, url: "https://quay.io", tag-ttl: -1}\n', /^registry\.mirrors\[0\]\.tag-ttl: must be an integer/],
      ['    - {registry: quay.io, url: "https://quay.io", keep: 1}\n', /^registry\.mirrors\[0\]\.keep: must be an integer from 60/],
      ['    - {registry: quay.io, url: "https://quay.io", namespaces: []}\n', /^registry\.mirrors\[0\]\.namespaces: must be a non-empty list/],
      ['    - {registry: quay.io, url: "https://quay.io", namespaces: [Bad]}\n', /^registry\.mirrors\[0\]\.namespaces\[0\]: must be a namespace/],
      ['    - {registry: quay.io, url: "https://quay.io", unprefixed: true}\n', /^registry\.mirrors\[0\]\.unprefixed: only the docker\.io mirror/],
      ['    - {registry: docker.io, url: "https://h", namespaces: [a], unprefixed: [b]}\n', /^registry\.mirrors\[0\]\.unprefixed: b is not in this mirror's namespaces/],
      ['    - {registry: quay.io, url: "https://quay.io", shadow: 1}\n', /^registry\.mirrors\[0\]\.shadow: unknown key/],
      ['    - {registry: quay.io, url: "https://quay.io", ca: /nonexistent/ca.pem}\n', /^registry\.mirrors\[0\]\.ca: cannot read/],
    ];
    for (const [text, error] of cases) expect(() => parse(text), text).toThrow(error);
  });

  it('serve warns about a mirror namespace that nothing else names', () => {
    const c = parse('    - {registry: quay.io, url: "https://quay.io", namespaces: [_local, tema]}\n');
    expect(checkForServe(c)).toContainEqual({ msg: 'a mirror names a namespace no user or namespaces entry has', key: 'registry.mirrors[0]', namespace: 'tema' });
    expect(checkForServe(c).filter((w) => w.namespace === '_local')).toEqual([]);
  });

  it('unprefixed: true or a list of namespaces, for docker.io', () => {
    expect(parse('    - {registry: docker.io, url: "https://h", unprefixed: true}\n').mirrors[0].unprefixed).toBe('all');
    expect(parse('    - {registry: docker.io, url: "https://h", unprefixed: [_local]}\n').mirrors[0].unprefixed).toEqual(['_local']);
    expect(parse('    - {registry: docker.io, url: "https://h", unprefixed: false}\n').mirrors[0].unprefixed).toEqual([]);
  });

  it('ca is read relative to the config file and must hold a certificate', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'berth-mirror-config-'));
    try {
      await writeFile(join(dir, 'ca.pem'), '-----BEGIN CERTIFICATE-----\nMII...\n-----END CERTIFICATE-----\n');
      await writeFile(join(dir, 'junk.pem'), 'nothing');
      expect(parse('    - {registry: quay.io, url: "https://quay.io", ca: ca.pem}\n', {}, dir).mirrors[0].ca).toMatch(/BEGIN CERTIFICATE/);
      expect(() => parse('    - {registry: quay.io, url: "https://quay.io", ca: junk.pem}\n', {}, dir)).toThrow(/^registry\.mirrors\[0\]\.ca: junk\.pem holds no PEM certificate/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('the commented example etc/registry-mirrors.yaml loads', () => {
    const c = loadConfig('etc/registry-mirrors.yaml', { ZUUL_REGISTRY_SECRET: 'x'.repeat(40), ZUUL_REGISTRY_PASSWORD: 'p' });
    expect(c.mirrors.map((m) => m.registry)).toEqual(['docker.io', 'quay.io', 'ghcr.io']);
  });
});
