/** `berth prune` as cron runs it: the built CLI, its exit codes and its summary. */
import { mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { berthCli, pushImage, startServer } from '../helpers/server.js';

let dir: string;
let config: string;

const berth = (...args: string[]) => berthCli(config, ...args);

/** Age every file under `path` by two hours, as if the pushes happened then. */
async function age(path: string): Promise<void> {
  const then = new Date(Date.now() - 2 * 3600_000);
  for (const e of await readdir(path, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) await utimes(join(e.parentPath, e.name), then, then);
  }
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'berth-prune-cli-'));
  const s = await startServer(await FilesystemDriver.open(join(dir, 'data')));
  await pushImage(s.url, 'cron/app', 'v1', [randomBytes(1000)]);
  await s.close();
  await age(join(dir, 'data'));
  config = join(dir, 'registry.yaml');
  await writeFile(config, `registry:\n  expiration: 3600\n  storage:\n    driver: filesystem\n    root: ${dir}/data\n`);
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('berth prune', () => {
  it('refuses bad arguments with exit code 2 and the usage', async () => {
    for (const args of [['--bogus'], ['--namespace', 'Bad!']]) {
      const r = await berth('prune', ...args);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/usage: berth .* prune \[--dry-run\]/);
    }
  });

  it('a dry run reports what would go and deletes nothing', async () => {
    const r = await berth('prune', '--dry-run');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/namespace _local \(dry run/);
    expect(r.stdout).toMatch(/tags\s+1\s+0\s+1\n/);
    expect(r.stdout).toMatch(/blobs\s+3\s+0\s+3\n/);
    expect(await readdir(join(dir, 'data/_local/blobs'))).toHaveLength(3);
  });

  it('skips a namespace another prune holds, with exit code 1', async () => {
    await writeFile(join(dir, 'data/_local/prune.lock'), '{"token":"other"}');
    const r = await berth('prune');
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/namespace _local: skipped: another prune holds/);
    await rm(join(dir, 'data/_local/prune.lock'));
  });

  it('a real run deletes the expired image and exits 0', async () => {
    const r = await berth('prune');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/manifests\s+1\s+0\s+1\n/);
    expect(r.stdout).toMatch(/blobs\s+3\s+0\s+3\n/);
    const left = await readdir(join(dir, 'data/_local'), { recursive: true }).catch(() => []);
    // Only the usage figure the run recorded (berth usage prints it).
    expect(left.sort()).toEqual(['usage', 'usage/last.json']);
    expect(r.stdout).toMatch(/stored\s+0 bytes in 0 blobs, 0 manifests, 0 tags\n/);
  });
});
