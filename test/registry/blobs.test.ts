/** The core hands out blob streams already checked against their digest. */
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BlobLinks, Blobs } from '../../src/registry/blobs.js';
import { paths } from '../../src/registry/paths.js';
import { DigestMismatch } from '../../src/registry/verify.js';
import { MemoryDriver } from '../../src/storage/memory.js';

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function drain(body: NodeJS.ReadableStream): Promise<Buffer> {
  const pieces: Buffer[] = [];
  for await (const p of body) pieces.push(p as Buffer);
  return Buffer.concat(pieces);
}

describe('Blobs.read', () => {
  const driver = new MemoryDriver();
  const blobs = new Blobs(driver, new BlobLinks(driver));

  it('streams a whole blob whose bytes match its digest', async () => {
    const data = randomBytes(3 << 20);
    const digest = sha256(data);
    await driver.put(paths.blobData('_local', digest), data);
    const { body, size } = await blobs.read('_local', digest);
    expect(size).toBe(data.length);
    expect((await drain(body)).equals(data)).toBe(true);
  });

  it('ends a whole blob whose stored bytes are wrong with DigestMismatch, before its last bytes', async () => {
    const data = randomBytes(3 << 20);
    const digest = sha256(data);
    const damaged = Buffer.from(data);
    damaged[damaged.length - 1] ^= 0xff;
    await driver.put(paths.blobData('_local', digest), damaged);
    const { body } = await blobs.read('_local', digest);
    let received = 0;
    const failure = await (async () => {
      try {
        for await (const p of body) received += (p as Buffer).length;
      } catch (err) {
        return err;
      }
    })();
    expect(failure).toBeInstanceOf(DigestMismatch);
    expect(received).toBeLessThan(data.length);
  });

  it('hands out a range as stored (a range cannot be checked)', async () => {
    const data = randomBytes(4096);
    const digest = sha256(data);
    await driver.put(paths.blobData('_local', digest), data);
    const { body, size } = await blobs.read('_local', digest, { start: 10, end: 19 });
    expect(size).toBe(10);
    expect((await drain(body)).equals(data.subarray(10, 20))).toBe(true);
  });
});

describe('BlobLinks.intact, beside a prune sweeping the blob', () => {
  it("never reports a blob intact that prune deleted while the check's reads were in flight", async () => {
    const driver = new MemoryDriver();
    const data = randomBytes(64);
    const digest = sha256(data);
    const dataPath = paths.blobData('_local', digest);
    const tombstone = paths.blobTombstone('_local', digest);
    await driver.put(dataPath, data);
    await driver.put(tombstone, Buffer.alloc(0));
    // The tombstone's stat is held (a slow request) while prune finishes: data deleted first, tombstone last.
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const stat = driver.stat.bind(driver);
    driver.stat = async (path: string) => {
      if (path === tombstone) {
        await held;
        return stat(path);
      }
      return stat(path);
    };
    const check = new BlobLinks(driver).intact('_local', digest);
    // Let a data stat issued beside the tombstone's be answered before prune deletes (the race this guards).
    await new Promise((r) => setTimeout(r, 20));
    await driver.delete(dataPath);
    await driver.delete(tombstone);
    release();
    expect(await check).toBe(false);
  });
});
