import { describe, expect, it } from 'vitest';
import { MIRROR_DEFAULTS, type MirrorConfig } from '../../src/config/mirrors.js';
import { MirrorNames } from '../../src/mirror/names.js';

const mirror = (registry: string, extra: Partial<MirrorConfig> = {}): MirrorConfig => ({
  registry,
  url: `https://${registry}`,
  tagTtl: MIRROR_DEFAULTS.tagTtl,
  keep: MIRROR_DEFAULTS.keep,
  unprefixed: [],
  timeout: 30,
  maxBlobSize: MIRROR_DEFAULTS.maxBlobSize,
  maxFills: 4, maxFillsPerClient: 8,
  ...extra,
});

const names = new MirrorNames([mirror('quay.io'), mirror('docker.io', { unprefixed: ['_local'] }), mirror('ghcr.io', { namespaces: ['team'] })]);
const upstream = (ns: string, name: string, q?: string) => {
  const t = names.map(ns, name, q);
  return t && `${t.mirror.registry} ${t.upstreamName}`;
};

describe('mirror name mapping', () => {
  it('podman and skopeo: a prefixed name maps to the rest on that upstream', () => {
    expect(upstream('_local', 'quay.io/org/app')).toBe('quay.io org/app');
    expect(upstream('_local', 'quay.io/zuul/test')).toBe('quay.io zuul/test');
    expect(upstream('_local', 'docker.io/library/busybox')).toBe('docker.io library/busybox');
  });

  it("docker.io's single-component names are its official images, under library/", () => {
    expect(upstream('_local', 'docker.io/busybox')).toBe('docker.io library/busybox');
    expect(upstream('_local', 'busybox')).toBe('docker.io library/busybox');
    expect(upstream('_local', 'quay.io/app')).toBe('quay.io app');
  });

  it("containerd's ?ns= with the prefixed path is mapped once, not twice", () => {
    expect(upstream('_local', 'quay.io/org/app', 'quay.io')).toBe('quay.io org/app');
    expect(upstream('_local', 'docker.io/library/x', 'docker.io')).toBe('docker.io library/x');
    // A repository really called quay.io/quay.io/x upstream keeps its second prefix.
    expect(upstream('_local', 'quay.io/quay.io/x', 'quay.io')).toBe('quay.io quay.io/x');
  });

  it("containerd's ?ns= with an unprefixed path (a plain mirror host) names the registry explicitly", () => {
    expect(upstream('_local', 'org/app', 'quay.io')).toBe('quay.io org/app');
    expect(upstream('team', 'library/x', 'docker.io')).toBe('docker.io library/x');
  });

  it('?ns= naming an unconfigured registry, or one the namespace may not use, maps to nothing', () => {
    expect(upstream('_local', 'gcr.io/x/y', 'gcr.io')).toBeNull();
    expect(upstream('_local', 'quay.io/x/y', 'gcr.io')).toBeNull();
    expect(upstream('_local', 'ghcr.io/x/y', 'ghcr.io')).toBeNull();
    expect(upstream('team', 'ghcr.io/x/y', 'ghcr.io')).toBe('ghcr.io x/y');
  });

  it('unprefixed names go to docker.io only in namespaces that opted in', () => {
    expect(upstream('_local', 'library/x')).toBe('docker.io library/x');
    expect(upstream('_local', 'team/app')).toBe('docker.io team/app');
    expect(upstream('team', 'library/x')).toBeNull();
    expect(upstream('team', 'team/app')).toBeNull();
    const off = new MirrorNames([mirror('docker.io')]);
    expect(off.map('_local', 'library/x')).toBeNull();
    expect(off.map('_local', 'docker.io/library/x')?.upstreamName).toBe('library/x');
    const all = new MirrorNames([mirror('docker.io', { unprefixed: 'all', namespaces: ['a', 'b'] })]);
    expect(all.map('a', 'x')?.upstreamName).toBe('library/x');
    expect(all.map('c', 'x')).toBeNull();
  });

  it('a name whose first component has a dot is never sent to docker.io unprefixed', () => {
    expect(upstream('_local', 'gcr.io/distroless/static')).toBeNull();
    expect(upstream('_local', 'registry.example.org/app')).toBeNull();
  });

  it('an upstream restricted to some namespaces maps nothing for the others', () => {
    expect(upstream('_local', 'ghcr.io/org/app')).toBeNull();
    expect(upstream('team', 'ghcr.io/org/app')).toBe('ghcr.io org/app');
  });

  it('a registry alone, or with nothing valid after it, maps to nothing', () => {
    expect(names.map('_local', 'quay.io', undefined)).toBeNull();
    expect(upstream('team', 'quay.io')).toBeNull();
    expect(names.map('_local', 'Quay.io/x')).toBeNull();
    expect(names.map('_local', '../x')).toBeNull();
  });

  it('local repositories come first: the name as sent, and for docker.io the same repository prefixed or not', () => {
    expect(names.map('_local', 'quay.io/org/app')!.local).toEqual(['quay.io/org/app']);
    expect(names.map('_local', 'docker.io/team/app')!.local).toEqual(['docker.io/team/app', 'team/app']);
    expect(names.map('_local', 'team/app')!.local).toEqual(['team/app', 'docker.io/team/app']);
    expect(names.map('_local', 'docker.io/library/x', 'docker.io')!.local).toEqual(['docker.io/library/x', 'library/x']);
  });

  it('no mirrors: nothing maps', () => {
    const none = new MirrorNames([]);
    expect(none.enabled).toBe(false);
    expect(none.map('_local', 'docker.io/library/x', 'docker.io')).toBeNull();
    expect(none.map('_local', 'busybox')).toBeNull();
  });
});
