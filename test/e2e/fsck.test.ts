/** fsck and read-time verification against corruption injected into real storage, on both backends. */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Fsck } from '../../src/registry/fsck.js';
import { paths } from '../../src/registry/paths.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { DriverError, type StorageDriver } from '../../src/storage/driver.js';
import { md5, overriding, pushBlob, pushImage, sha256, startServer, type TestServer } from '../helpers/server.js';
import { outsideTree } from '../helpers/outside.js';
import { BACKENDS, dropContainer, freshContainer, SWIFT_COMMIT, swiftDriver } from '../helpers/swift.js';

const run = promisify(execFile);

describe.each(BACKENDS)('fsck on %s', (backend) => {
  let s: TestServer;
  let driver: StorageDriver;
  let dir: string;
  let container: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-fsck-'));
    container = freshContainer();
    // Small segments on Swift, so a blob has several and one can be altered behind Swift's back.
    driver = backend === 'swift' ? await swiftDriver(container, { segmentSize: 1 << 20 }) : await FilesystemDriver.open(join(dir, 'data'));
    s = await startServer(driver, undefined, backend === 'swift' ? { commit: SWIFT_COMMIT } : {});
  });
  afterEach(async () => {
    await s.close();
    if (backend === 'swift') await dropContainer(container);
    await rm(dir, { recursive: true, force: true });
  });

  /** Replace stored bytes with others of the same size: what a disk or a buggy store might do. */
  async function corrupt(digest: string): Promise<void> {
    if (backend === 'filesystem') {
      const { size } = (await driver.stat(paths.blobData('_local', digest)))!;
      await writeFile(join(dir, 'data', paths.blobData('_local', digest)), randomBytes(size));
      return;
    }
    // The blob's second segment, wherever the commit mode put it (its parts directory, or the upload's).
    const segment = (await driver.segments!(paths.blobData('_local', digest)))[1];
    await driver.put(segment, randomBytes((await driver.stat(segment))!.size));
  }

  it('finds corrupt and missing blobs; a GET of a corrupt blob never completes; repair quarantines; a re-push restores', async () => {
    const good = randomBytes(2_500_000);
    const bad = randomBytes(2_500_000);
    const lost = randomBytes(1000);
    await pushImage(s.url, 'fsck/app', 'v1', [good, bad]);
    const other = await pushImage(s.url, 'fsck/other', 'v1', [lost]);
    const badDigest = sha256(bad);
    await corrupt(badDigest);
    await driver.delete(paths.blobData('_local', sha256(lost)));

    // Served bytes are checked: the response is cut off, never finished cleanly.
    await expect(fetch(`${s.url}/v2/fsck/app/blobs/${badDigest}`).then((r) => r.arrayBuffer())).rejects.toThrow();
    expect(md5(Buffer.from(await (await fetch(`${s.url}/v2/fsck/app/blobs/${sha256(good)}`)).arrayBuffer()))).toBe(md5(good));

    const report = await new Fsck(driver).check('_local');
    const byKind = (kind: string) => report.problems.filter((p) => p.kind === kind);
    const badPath = paths.blobData('_local', badDigest);
    if (backend === 'filesystem') expect(byKind('corrupt').map((p) => p.path)).toEqual([badPath]);
    else {
      expect(byKind('segment').map((p) => p.path)).toEqual([badPath]);
      expect([...byKind('corrupt'), ...byKind('unreadable')].map((p) => p.path)).toEqual([badPath]);
    }
    expect(byKind('missing').map((p) => p.detail)).toEqual([`manifest ${other.digest} of fsck/other references missing ${sha256(lost)}`]);
    expect(report.blobs).toBe(5); // config, good, bad, two manifests (lost has no data left)

    const repaired = await new Fsck(driver).check('_local', { repair: true });
    expect(repaired.quarantined).toBe(1);
    expect((await fetch(`${s.url}/v2/fsck/app/blobs/${badDigest}`, { method: 'HEAD' })).status).toBe(404);
    // The bytes (filesystem) or a note of what was wrong (Swift will not copy an SLO with altered segments).
    const kept = (await driver.stat(paths.quarantine('_local', badDigest))) ?? (await driver.stat(paths.quarantineNote('_local', badDigest)));
    expect(kept).not.toBeNull();
    expect(await pushBlob(s.url, 'fsck/app', bad)).toBe(badDigest);
    expect(md5(Buffer.from(await (await fetch(`${s.url}/v2/fsck/app/blobs/${badDigest}`)).arrayBuffer()))).toBe(md5(bad));
    await pushBlob(s.url, 'fsck/other', lost);
    expect((await new Fsck(driver).check('_local')).problems).toEqual([]);
  });
});

/** `inner`, but storage answers 503 (a retryable DriverError) to get() of one path and verify() of another. */
function flaky(inner: StorageDriver, failGet: string, failVerify: string): StorageDriver {
  const unavailable = (path: string) => new DriverError(`GET ${path}: 503 Service Unavailable`, true);
  return overriding(inner, {
    get: (path, range) => (path === failGet ? Promise.reject(unavailable(path)) : inner.get(path, range)),
    verify: async (path) => (path === failVerify ? Promise.reject(unavailable(path)) : ((await inner.verify?.(path)) ?? [])),
  });
}

describe('fsck against a storage that fails some requests', () => {
  it('--repair reports blobs it could not read, leaves them in place, checks the rest and still quarantines a corrupt one', async () => {
    const s = await startServer();
    try {
      const [readFails, verifyFails, bad] = [randomBytes(3000), randomBytes(3000), randomBytes(3000)];
      await pushImage(s.url, 'flaky/app', 'v1', [readFails, verifyFails, bad]);
      await writeFile(join(s.root, paths.blobData('_local', sha256(bad))), randomBytes(3000));
      const at = (data: Buffer) => paths.blobData('_local', sha256(data));

      const report = await new Fsck(flaky(s.registry.driver, at(readFails), at(verifyFails))).check('_local', { repair: true });
      const blobProblems = report.problems.filter((p) => p.kind !== 'missing').map((p) => [p.kind, p.path]);
      expect(blobProblems).toHaveLength(3);
      expect(blobProblems).toEqual(
        expect.arrayContaining([
          ['unreadable', at(readFails)],
          ['unreadable', at(verifyFails)],
          ['corrupt', at(bad)],
        ]),
      );
      // Checked after the repair: the manifest now names the quarantined blob, and only that one.
      expect(report.problems.filter((p) => p.kind === 'missing').map((p) => p.detail)).toEqual([expect.stringMatching(`references missing ${sha256(bad)}$`)]);
      expect(report.blobs).toBe(5); // config, three layers, the manifest
      expect(report.quarantined).toBe(1);
      for (const kept of [readFails, verifyFails]) {
        expect(await s.registry.driver.stat(at(kept))).not.toBeNull();
        expect(await s.registry.driver.stat(paths.quarantine('_local', sha256(kept)))).toBeNull();
        expect(md5(Buffer.from(await (await fetch(`${s.url}/v2/flaky/app/blobs/${sha256(kept)}`)).arrayBuffer()))).toBe(md5(kept));
      }
      expect(await s.registry.driver.stat(at(bad))).toBeNull();
      expect(await s.registry.driver.stat(paths.quarantine('_local', sha256(bad)))).not.toBeNull();
    } finally {
      await s.close();
    }
  });
});

describe('berth fsck (the CLI)', () => {
  it('prints each problem with its path, exits 1, and 0 once the store is clean', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'berth-fsck-cli-'));
    try {
      const s = await startServer(await FilesystemDriver.open(join(dir, 'data')));
      const layer = randomBytes(5000);
      await pushImage(s.url, 'cli/app', 'v1', [layer]);
      await s.close();
      const config = join(dir, 'registry.yaml');
      await writeFile(config, `registry:\n  storage:\n    driver: filesystem\n    root: ${dir}/data\n`);
      const fsck = (...a: string[]) =>
        run('node', ['dist/cli.js', '-c', config, 'fsck', ...a]).then(
          (r) => ({ code: 0, out: r.stdout }),
          (e: { code: number; stdout: string }) => ({ code: e.code, out: e.stdout }),
        );
      expect(await fsck()).toMatchObject({ code: 0, out: expect.stringMatching(/namespace _local: 3 blobs .* 1 manifests checked .*; 0 problems/) });
      await writeFile(join(dir, 'data', paths.blobData('_local', sha256(layer))), randomBytes(5000));
      const broken = await fsck();
      expect(broken.code).toBe(1);
      expect(broken.out).toContain(`CORRUPT ${paths.blobData('_local', sha256(layer))}: content hashes to sha256:`);
      expect((await fsck('--repair')).out).toMatch(/1 blobs quarantined/);
      expect((await fsck()).out).toMatch(/; 1 problems/); // the manifest now names a blob that is gone
      expect((await fsck('--bogus')).code).toBe(2);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('fsck --repair never reaches outside the filesystem root through a symbolic link', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-fsck-links-'));
  });
  afterEach(async () => rm(dir, { recursive: true, force: true }));

  // Issue 16: a link at <ns>/blobs made fsck --repair move a file from outside the root into quarantine.
  it.each(['<ns>', '<ns>/blobs', '<ns>/blobs/<digest>', '<ns>/blobs/<digest>/data', '<ns>/repos'])('a link at %s', async (at) => {
    const tree = await outsideTree(join(dir, 'outside'));
    const before = await tree.snapshot();
    const root = join(dir, 'root');
    const [link, target] = {
      '<ns>': ['_local', ''],
      '<ns>/blobs': ['_local/blobs', 'blobs'],
      '<ns>/blobs/<digest>': [`_local/blobs/${tree.digest}`, `blobs/${tree.digest}`],
      '<ns>/blobs/<digest>/data': [`_local/blobs/${tree.digest}/data`, `blobs/${tree.digest}/data`],
      '<ns>/repos': ['_local/repos', 'repos'],
    }[at]!;
    await mkdir(join(root, link, '..'), { recursive: true });
    await symlink(join(tree.dir, target), join(root, link));
    const driver = await FilesystemDriver.open(root);
    const report = await new Fsck(driver).check('_local', { repair: true });
    expect(report.quarantined).toBe(0);
    expect(report.problems.filter((p) => p.kind === 'corrupt')).toEqual([]);
    expect(await tree.snapshot()).toEqual(before);
    expect(await driver.stat(paths.quarantine('_local', tree.digest))).toBeNull();
  });
});
