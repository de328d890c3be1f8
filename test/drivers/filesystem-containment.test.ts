/** The filesystem driver never follows a symbolic link below its root: such paths read as absent, writes refuse. */
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PathNotFound, UnsafePath } from '../../src/storage/driver.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';

async function listed<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

describe('filesystem driver containment', () => {
  let dir: string;
  let driver: FilesystemDriver;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-contain-'));
    await mkdir(join(dir, 'outside/sub'), { recursive: true });
    await writeFile(join(dir, 'outside/secret'), 'outside');
    await writeFile(join(dir, 'outside/sub/file'), 'outside too');
    await mkdir(join(dir, 'root/ns'), { recursive: true });
    driver = await FilesystemDriver.open(join(dir, 'root'));
  });
  afterEach(async () => {
    await driver.close();
    await rm(dir, { recursive: true, force: true });
  });
  const outside = async () => [await readFile(join(dir, 'outside/secret'), 'utf8'), await readFile(join(dir, 'outside/sub/file'), 'utf8')];

  it('a link as the last component reads as absent, is not listed, not deleted through, not moved', async () => {
    await symlink(join(dir, 'outside/secret'), join(dir, 'root/ns/link'));
    await driver.put('ns/real', Buffer.from('inside'));
    await expect(driver.read('ns/link')).rejects.toBeInstanceOf(PathNotFound);
    await expect(driver.get('ns/link')).rejects.toBeInstanceOf(PathNotFound);
    expect(await driver.stat('ns/link')).toBeNull();
    expect((await listed(driver.list('ns'))).map((o) => o.path)).toEqual(['ns/real']);
    await expect(driver.move('ns/link', 'ns/moved')).rejects.toBeInstanceOf(PathNotFound);
    await expect(driver.concat('ns/joined', [{ path: 'ns/link', size: 7 }, { path: 'ns/real', size: 6 }])).rejects.toBeInstanceOf(PathNotFound);
    await driver.delete('ns/link');
    expect(await outside()).toEqual(['outside', 'outside too']);
    expect(await driver.stat('ns/joined')).toBeNull();
  });

  it('a link as a directory component: reads absent, listing empty, delete a no-op, writes and moves refused', async () => {
    await symlink(join(dir, 'outside'), join(dir, 'root/ns/dir'));
    await symlink(join(dir, 'outside'), join(dir, 'root/linked-ns'));
    await driver.put('ns/real', Buffer.from('inside'));
    for (const key of ['ns/dir/secret', 'ns/dir/sub/file', 'linked-ns/secret']) {
      await expect(driver.read(key)).rejects.toBeInstanceOf(PathNotFound);
      expect(await driver.stat(key)).toBeNull();
      await driver.delete(key);
    }
    expect(await listed(driver.list('ns/dir'))).toEqual([]);
    expect(await listed(driver.list('linked-ns'))).toEqual([]);
    await expect(driver.put('ns/dir/new', Buffer.from('x'))).rejects.toBeInstanceOf(UnsafePath);
    await expect(driver.put('ns/dir/sub/deeper/new', Buffer.from('x'))).rejects.toBeInstanceOf(UnsafePath);
    await expect(driver.put('linked-ns/new', Buffer.from('x'), { ifAbsent: true })).rejects.toBeInstanceOf(UnsafePath);
    await expect(driver.move('ns/real', 'ns/dir/taken')).rejects.toBeInstanceOf(UnsafePath);
    await expect(driver.move('ns/dir/secret', 'ns/stolen')).rejects.toBeInstanceOf(PathNotFound);
    expect(await outside()).toEqual(['outside', 'outside too']);
    expect(await driver.read('ns/real')).toEqual(Buffer.from('inside'));
    await expect(readFile(join(dir, 'outside/new'))).rejects.toThrow();
    await expect(readFile(join(dir, 'outside/sub/deeper/new'))).rejects.toThrow();
  });

  it('a root that is itself a link works as usual', async () => {
    await symlink(join(dir, 'root'), join(dir, 'root-link'));
    const linked = await FilesystemDriver.open(join(dir, 'root-link'));
    await linked.put('ns/a/b', Buffer.from('ok'));
    expect((await linked.read('ns/a/b')).toString()).toBe('ok');
    expect((await listed(linked.list('ns'))).map((o) => o.path)).toEqual(['ns/a/b']);
    await linked.move('ns/a/b', 'ns/c');
    expect(await linked.stat('ns/c')).toMatchObject({ size: 2 });
    await linked.delete('ns/c');
    expect(await linked.stat('ns/c')).toBeNull();
  });
});
