/** Lock files of the filesystem driver: exclusive, released, renewed while held, taken over once stale. */
import { mkdtemp, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FilesystemDriver } from '../../src/storage/filesystem.js';

describe('filesystem driver tryLock', () => {
  let dir: string;
  let a: FilesystemDriver;
  let b: FilesystemDriver;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-lock-'));
    // Two drivers on one root stand for two processes: nothing is shared but the files.
    a = await FilesystemDriver.open(dir);
    b = await FilesystemDriver.open(dir);
  });
  afterEach(async () => rm(dir, { recursive: true, force: true }));

  it('a held lock refuses another holder until released; then it can be taken, and release leaves no file', async () => {
    const held = await a.tryLock('ns/up/lock', 30_000);
    expect(held).not.toBeNull();
    expect(await b.tryLock('ns/up/lock', 30_000)).toBeNull();
    expect(await a.tryLock('ns/up/lock', 30_000)).toBeNull();
    await held!.release();
    const next = await b.tryLock('ns/up/lock', 30_000);
    expect(next).not.toBeNull();
    await next!.release();
    expect(await a.stat('ns/up/lock')).toBeNull();
  });

  it('a lock older than its expiry (its holder died) is taken over; its holder then cannot release the new one', async () => {
    const dead = await a.tryLock('ns/up/lock', 30_000);
    const old = new Date(Date.now() - 60_000);
    await utimes(join(dir, 'ns/up/lock'), old, old);
    const taken = await b.tryLock('ns/up/lock', 30_000);
    expect(taken).not.toBeNull();
    await dead!.release();
    expect(await a.tryLock('ns/up/lock', 30_000)).toBeNull();
    await taken!.release();
    expect(await a.stat('ns/up/lock')).toBeNull();
  });

  it('a held lock is renewed, so it outlives its expiry while its holder lives', async () => {
    const held = await a.tryLock('ns/up/lock', 600);
    await new Promise((r) => setTimeout(r, 1500));
    expect(await b.tryLock('ns/up/lock', 600)).toBeNull();
    await held!.release();
  });
});
