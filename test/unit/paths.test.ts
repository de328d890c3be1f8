import { describe, expect, it } from 'vitest';
import { RegistryError } from '../../src/registry/errors.js';
import { checkDigest, checkName, parseRepoPath, parseUploadPath, paths, uploadOwnerOf, validName, validTag } from '../../src/registry/paths.js';

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
  });

  it('refuses to build a path from anything unvalidated', () => {
    expect(() => paths.blobData('_local', 'sha256:../../x')).toThrow();
    expect(() => paths.tag('_local', 'app', '../x')).toThrow();
    expect(() => paths.repo('_local', '../other')).toThrow();
    expect(() => paths.repo('../ns', 'app')).toThrow();
    expect(() => paths.upload('_local', '../..')).toThrow();
    expect(() => paths.uploadChunk('_local', U, '../metadata')).toThrow();
    expect(() => paths.uploadPage('_local', U, '2.0badc0de')).toThrow();
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
});
