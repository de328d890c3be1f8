import { describe, expect, it } from 'vitest';
import { RegistryError } from '../../src/registry/errors.js';
import { checkDigest, checkName, parseMirrorBlobPath, parseMirrorTagPath, parseRepoPath, parseUploadPath, paths, uploadOwnerOf, validMirrorRegistry, validName, validNamespace, validTag } from '../../src/registry/paths.js';

const D = `sha256:${'a'.repeat(64)}`;
const S = `sha256:${'b'.repeat(64)}`;
const U = '3f2b8c1e-6d4a-4b7e-9c2d-1a2b3c4d5e6f';

describe('storage paths', () => {
  it('pins every path of the layout', () => {
    expect(paths.uploadRecord('_local', U)).toBe(`_local/uploads/${U}/metadata`);
    expect(paths.uploadChunk('_local', U, '3.0badc0de')).toBe(`_local/uploads/${U}/3.0badc0de`);
    expect(paths.uploadPage('_local', U, 'p2.0badc0de')).toBe(`_local/uploads/${U}/p2.0badc0de`);
    expect(paths.uploadLock('_local', U)).toBe(`_local/uploads/${U}/lock`);
    expect(paths.uploadSeal('_local', U)).toBe(`_local/uploads/${U}/sealed`);
    expect(paths.uploadOwner('_local', U, D)).toBe(`_local/uploads/${U}/owner.${D}`);
    expect(uploadOwnerOf(`owner.${D}`)).toBe(D);
    for (const rest of ['owner', 'owner.', 'owner.sha256:00', `x/owner.${D}`, 'metadata']) expect(uploadOwnerOf(rest)).toBeNull();
    expect(paths.blobData('t1', D)).toBe(`t1/blobs/${D}/data`);
    expect(paths.blobPart('t1', D, U, 7)).toBe(`t1/blobs/${D}/parts/${U}/7`);
    expect(paths.blobLink('t1', 'a/b', D)).toBe(`t1/repos/a/b/_blobs/${D}`);
    expect(paths.manifestRevision('t1', 'a/b', D)).toBe(`t1/repos/a/b/_manifests/revisions/${D}`);
    expect(paths.tag('t1', 'a/b', 'v1.0')).toBe('t1/repos/a/b/_manifests/tags/v1.0');
    expect(paths.referrer('t1', 'a/b', S, D)).toBe(`t1/repos/a/b/_referrers/${S}/${D}`);
    expect(paths.usageReport('t1')).toBe('t1/usage/last.json');
    expect(paths.usageLive('t1')).toBe('t1/usage/live');
    expect(paths.usageProcess('t1', 'host-1.1234.0badc0de')).toBe('t1/usage/live/host-1.1234.0badc0de');
    expect(paths.webSummary('t1', 'team/app')).toBe('t1/web/team/app/_summary');
  });

  it('refuses to build a path from anything unvalidated', () => {
    expect(() => paths.blobData('_local', 'sha256:../../x')).toThrow();
    expect(() => paths.tag('_local', 'app', '../x')).toThrow();
    expect(() => paths.repo('_local', '../other')).toThrow();
    expect(() => paths.repo('../ns', 'app')).toThrow();
    expect(() => paths.upload('_local', '../..')).toThrow();
    expect(() => paths.uploadChunk('_local', U, '../metadata')).toThrow();
    expect(() => paths.uploadPage('_local', U, '2.0badc0de')).toThrow();
    expect(() => paths.usageProcess('_local', '../last.json')).toThrow();
    expect(() => paths.usageProcess('_local', 'a/b')).toThrow();
  });

  it('validates names, tags and digests by the OCI grammar', () => {
    for (const ok of ['a', 'library/ubuntu', 'a.b_c__d-e--f/g']) expect(validName(ok)).toBe(true);
    for (const bad of ['', 'A', 'a/', '/a', 'a//b', '_a', 'a/_blobs', '..', 'a/..', 'a'.repeat(256)]) expect(validName(bad), bad).toBe(false);
    expect(validTag('v1.0_rc-1')).toBe(true);
    expect(validTag('.hidden')).toBe(false);
    expect(validTag('a'.repeat(129))).toBe(false);
    expect(checkDigest(D)).toBe(D);
    expect(() => checkDigest('sha256:ABC')).toThrow(RegistryError);
    expect(() => checkDigest(`sha1:${'a'.repeat(40)}`)).toThrow(/unsupported/);
    expect(() => checkName('Bad')).toThrow(/invalid repository name/);
  });

  it('parses repository paths back, even for names that look like layout directories', () => {
    expect(parseRepoPath('_local', `_local/repos/a/manifests/_blobs/${D}`)).toEqual({ repo: 'a/manifests', rest: `_blobs/${D}` });
    expect(parseRepoPath('_local', `_local/blobs/${D}/data`)).toBeNull();
  });

  it('parses upload paths back into the upload id', () => {
    const id = '0a1b2c3d-0000-4000-8000-00000000000f';
    expect(parseUploadPath('_local', `_local/uploads/${id}/metadata`)).toEqual({ id, rest: 'metadata' });
    expect(parseUploadPath('_local', `_local/uploads/${id}/3.0a1b2c3d`)).toEqual({ id, rest: '3.0a1b2c3d' });
    expect(parseUploadPath('_local', `_local/blobs/${D}/data`)).toBeNull();
    expect(parseUploadPath('team', `_local/uploads/${id}/metadata`)).toBeNull();
  });

  it('pins the pull-through cache layout, apart from every namespace', () => {
    expect(paths.mirror('quay.io')).toBe('mirror.cache/quay.io');
    expect(paths.mirrorBlobData('docker.io', D)).toBe(`mirror.cache/docker.io/blobs/${D}/data`);
    expect(paths.mirrorBlobPart('docker.io', D, U, 2)).toBe(`mirror.cache/docker.io/blobs/${D}/parts/${U}/2`);
    expect(paths.mirrorManifestMeta('quay.io', D)).toBe(`mirror.cache/quay.io/blobs/${D}/manifest`);
    expect(paths.mirrorTouched('quay.io', D)).toBe(`mirror.cache/quay.io/blobs/${D}/touched`);
    expect(paths.mirrorPulled('quay.io', D)).toBe(`mirror.cache/quay.io/blobs/${D}/pulled`);
    expect(paths.mirrorTombstone('quay.io', D)).toBe(`mirror.cache/quay.io/blobs/${D}/tombstone`);
    expect(paths.mirrorTag('quay.io', 'org/app', 'v1')).toBe('mirror.cache/quay.io/tags/org/app/_tag/v1');
    expect(paths.mirrorPruneLock('quay.io')).toBe('mirror.cache/quay.io/prune.lock');
    expect(paths.mirrorUsageReport('quay.io')).toBe('mirror.cache/quay.io/usage/last.json');
    expect(paths.mirrorUsageProcess('quay.io', 'host.1.ab')).toBe('mirror.cache/quay.io/usage/live/host.1.ab');
    // The root cannot be a namespace, so no tenant's paths reach the cache.
    expect(validNamespace('mirror.cache')).toBe(false);
    expect(parseMirrorBlobPath('quay.io', `mirror.cache/quay.io/blobs/${D}/pulled`)).toEqual({ digest: D, rest: 'pulled' });
    expect(parseMirrorBlobPath('quay.io', `mirror.cache/docker.io/blobs/${D}/data`)).toBeNull();
    expect(parseMirrorTagPath('quay.io', 'mirror.cache/quay.io/tags/a/_tag/b/_tag/v1')).toBeNull();
    expect(parseMirrorTagPath('quay.io', 'mirror.cache/quay.io/tags/org/app/_tag/v1')).toEqual({ repo: 'org/app', tag: 'v1' });
  });

  it('refuses a mirror path for a registry that is not a host name or for unvalidated parts', () => {
    for (const ok of ['docker.io', 'quay.io', 'registry.k8s.io', 'my-registry.example.org']) expect(validMirrorRegistry(ok), ok).toBe(true);
    for (const bad of ['docker', 'quay.io:443', '../x', 'Quay.io', '.io', 'a..b', '', 'a/b.io']) expect(validMirrorRegistry(bad), bad).toBe(false);
    expect(() => paths.mirrorBlobData('..', D)).toThrow();
    expect(() => paths.mirrorTag('quay.io', '../x', 'v1')).toThrow();
    expect(() => paths.mirrorTag('quay.io', 'x', '../v1')).toThrow();
  });
});
