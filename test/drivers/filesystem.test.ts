import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { runDriverSuite } from './suite.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

runDriverSuite('filesystem', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-fs-'));
  dirs.push(dir);
  return FilesystemDriver.open(dir);
});
