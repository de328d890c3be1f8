/**
 * The one driver test suite. Every storage backend must pass it: `runDriverSuite(name, factory)`.
 * Each test works under its own random prefix and checks that it left nothing behind.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, beforeEach, afterEach, describe, expect, test } from 'vitest';
import { AlreadyExists, ChecksumMismatch, DriverError, PathNotFound, SizeMismatch, type StorageDriver } from '../../src/storage/driver.js';

export type DriverFactory = () => Promise<StorageDriver>;

/** A write given up because its signal fired: an AbortError or the driver's own error, never a TypeError or the like. */
const isAbort = (e: unknown) => (e as Error)?.name === 'AbortError' || e instanceof DriverError;
/** A write failed by its body: the body's own error, or the driver's error wrapping it. */
const isBodyError = (e: unknown) =>
  /client went away/.test(String((e as Error)?.message)) || /client went away/.test(String(((e as Error)?.cause as Error)?.message)) || e instanceof DriverError;

const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');

/** Byte comparison without vitest's element-by-element diff, which takes seconds on megabytes. */
function expectSameBytes(actual: Buffer, expected: Buffer) {
  expect({ size: actual.length, md5: md5(actual) }).toEqual({ size: expected.length, md5: md5(expected) });
}

async function collect(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

async function listAll(driver: StorageDriver, prefix: string) {
  const out = [];
  for await (const o of driver.list(prefix)) out.push(o);
  return out.sort((a, b) => (a.path < b.path ? -1 : 1));
}

/** A readable that yields `total` bytes in pieces, so drivers see a real stream rather than one buffer. */
function streamOf(data: Buffer, piece = 65536): Readable {
  let at = 0;
  return new Readable({
    read() {
      if (at >= data.length) return void this.push(null);
      this.push(data.subarray(at, at + piece));
      at += piece;
    },
  });
}

export function runDriverSuite(name: string, factory: DriverFactory): void {
  describe(`storage driver: ${name}`, () => {
    let driver: StorageDriver;
    let root: string;

    beforeAll(async () => {
      driver = await factory();
    });
    afterAll(async () => {
      await driver?.close();
    });
    beforeEach(() => {
      root = `suite-${randomBytes(6).toString('hex')}`;
    });
    afterEach(async () => {
      // Clean up whatever a failing test left, then insist the test itself left nothing.
      const left = await listAll(driver, root);
      for (const o of left) await driver.delete(o.path);
      expect(left.map((o) => o.path)).toEqual([]);
    });

    test('a put object reads back byte-identical, with its size and time', async () => {
      const data = randomBytes(300_000);
      const before = Date.now() - 2000;
      const stored = await driver.put(`${root}/a/b`, streamOf(data));
      expect(stored.size).toBe(data.length);
      if (stored.md5 !== undefined) expect(stored.md5).toBe(md5(data));
      expectSameBytes(await driver.read(`${root}/a/b`), data);
      const { body, size } = await driver.get(`${root}/a/b`);
      expect(size).toBe(data.length);
      expectSameBytes(await collect(body), data);
      const st = await driver.stat(`${root}/a/b`);
      expect(st?.size).toBe(data.length);
      expect(st!.modified.getTime()).toBeGreaterThan(before);
      expect(st!.modified.getTime()).toBeLessThan(Date.now() + 2000);
      await driver.delete(`${root}/a/b`);
    });

    test('keys with colons, dots and dashes work (digests are keys)', async () => {
      const key = `${root}/blobs/sha256:${'ab'.repeat(32)}/data`;
      await driver.put(key, Buffer.from('x'));
      expect((await driver.read(key)).toString()).toBe('x');
      await driver.delete(key);
    });

    test('a Buffer body and an empty body both work', async () => {
      await driver.put(`${root}/empty`, Buffer.alloc(0));
      expect((await driver.stat(`${root}/empty`))?.size).toBe(0);
      expect((await driver.read(`${root}/empty`)).length).toBe(0);
      await driver.put(`${root}/buf`, Buffer.from('hello'));
      expect((await driver.read(`${root}/buf`)).toString()).toBe('hello');
      await driver.delete(`${root}/empty`);
      await driver.delete(`${root}/buf`);
    });

    test('a put replaces an existing object whole', async () => {
      await driver.put(`${root}/o`, Buffer.from('first version, long'));
      await driver.put(`${root}/o`, Buffer.from('second'));
      expect((await driver.read(`${root}/o`)).toString()).toBe('second');
      await driver.delete(`${root}/o`);
    });

    test('a range read returns exactly the inclusive range', async () => {
      const data = randomBytes(100_000);
      await driver.put(`${root}/r`, data);
      const { body, size } = await driver.get(`${root}/r`, { start: 1000, end: 1999 });
      expect(size).toBe(1000);
      expectSameBytes(await collect(body), data.subarray(1000, 2000));
      const last = await driver.get(`${root}/r`, { start: data.length - 1, end: data.length - 1 });
      expectSameBytes(await collect(last.body), data.subarray(data.length - 1));
      await driver.delete(`${root}/r`);
    });

    test('missing objects: get and read throw PathNotFound, stat is null, delete is quiet', async () => {
      await expect(driver.get(`${root}/nope`)).rejects.toBeInstanceOf(PathNotFound);
      await expect(driver.read(`${root}/nope`)).rejects.toBeInstanceOf(PathNotFound);
      expect(await driver.stat(`${root}/nope`)).toBeNull();
      await driver.delete(`${root}/nope`);
      await expect(driver.move(`${root}/nope`, `${root}/other`)).rejects.toBeInstanceOf(PathNotFound);
    });

    test('a directory is not an object', async () => {
      await driver.put(`${root}/dir/file`, Buffer.from('x'));
      expect(await driver.stat(`${root}/dir`)).toBeNull();
      await expect(driver.read(`${root}/dir`)).rejects.toBeInstanceOf(PathNotFound);
      await driver.delete(`${root}/dir/file`);
    });

    test('list is recursive, limited to the prefix directory, and reports sizes', async () => {
      await driver.put(`${root}/l/a`, Buffer.from('1'));
      await driver.put(`${root}/l/b/c`, Buffer.from('22'));
      await driver.put(`${root}/l/b/d/e`, Buffer.from('333'));
      await driver.put(`${root}/l-sibling`, Buffer.from('4444'));
      const listed = await listAll(driver, `${root}/l`);
      expect(listed.map((o) => [o.path, o.size])).toEqual([
        [`${root}/l/a`, 1],
        [`${root}/l/b/c`, 2],
        [`${root}/l/b/d/e`, 3],
      ]);
      expect(await listAll(driver, `${root}/none`)).toEqual([]);
      // md5 where listed is the content's; a backend reporting md5s on writes lists them too.
      const contents = ['1', '22', '333'];
      listed.forEach((o, i) => {
        if (driver.reportsMd5) expect(o.md5).toBeDefined();
        if (o.md5 !== undefined) expect(o.md5).toBe(md5(Buffer.from(contents[i])));
      });
      for (const p of ['l/a', 'l/b/c', 'l/b/d/e', 'l-sibling']) await driver.delete(`${root}/${p}`);
    });

    test('move replaces the destination and reports what it holds', async () => {
      const data = randomBytes(50_000);
      await driver.put(`${root}/src`, data);
      await driver.put(`${root}/dst/x`, Buffer.from('old'));
      const moved = await driver.move(`${root}/src`, `${root}/dst/x`);
      expect(moved.size).toBe(data.length);
      if (moved.md5 !== undefined) expect(moved.md5).toBe(md5(data));
      expect(await driver.stat(`${root}/src`)).toBeNull();
      expectSameBytes(await driver.read(`${root}/dst/x`), data);
      await driver.delete(`${root}/dst/x`);
    });

    test('a create-only move refuses an existing destination and leaves both objects as they were', async () => {
      const data = randomBytes(30_000);
      await driver.put(`${root}/src`, data);
      await driver.put(`${root}/dst/y`, Buffer.from('first'));
      await expect(driver.move(`${root}/src`, `${root}/dst/y`, { ifAbsent: true })).rejects.toBeInstanceOf(AlreadyExists);
      expectSameBytes(await driver.read(`${root}/dst/y`), Buffer.from('first'));
      expectSameBytes(await driver.read(`${root}/src`), data);
      await driver.delete(`${root}/dst/y`);
      const moved = await driver.move(`${root}/src`, `${root}/dst/y`, { ifAbsent: true });
      expect(moved.size).toBe(data.length);
      if (moved.md5 !== undefined) expect(moved.md5).toBe(md5(data));
      expect(await driver.stat(`${root}/src`)).toBeNull();
      expectSameBytes(await driver.read(`${root}/dst/y`), data);
      await driver.delete(`${root}/dst/y`);
    });

    test('create-only moves of the same bytes racing to one destination: each succeeds or finds it there, and it holds the bytes', async () => {
      // On Swift both existence checks can pass; the copy that loses then answers 202 (a newer write won).
      for (let round = 0; round < 10; round++) {
        const data = randomBytes(300_000);
        const sources = Array.from({ length: 8 }, (_, i) => `${root}/race-${round}/src-${i}`);
        await Promise.all(sources.map((src) => driver.put(src, data)));
        const outcomes = await Promise.allSettled(sources.map((src) => driver.move(src, `${root}/race-${round}/dst`, { ifAbsent: true })));
        for (const o of outcomes) {
          if (o.status === 'rejected') expect(o.reason).toBeInstanceOf(AlreadyExists);
          else expect(o.value.size).toBe(data.length);
        }
        expect(outcomes.some((o) => o.status === 'fulfilled')).toBe(true);
        expectSameBytes(await driver.read(`${root}/race-${round}/dst`), data);
        for (const [i, o] of outcomes.entries()) if (o.status === 'rejected') await driver.delete(sources[i]);
        await driver.delete(`${root}/race-${round}/dst`);
      }
    });

    test('concat joins parts in order', async () => {
      const parts = [randomBytes(1 << 20), randomBytes(1 << 20), randomBytes(777)];
      const recorded = [];
      for (const [i, p] of parts.entries()) {
        await driver.put(`${root}/blob/part-${i}`, p);
        recorded.push({ path: `${root}/blob/part-${i}`, size: p.length, md5: md5(p) });
      }
      const joined = await driver.concat(`${root}/blob/data`, recorded);
      const all = Buffer.concat(parts);
      expect(joined.size).toBe(all.length);
      const { body, size } = await driver.get(`${root}/blob/data`);
      expect(size).toBe(all.length);
      expectSameBytes(await collect(body), all);
      const mid = await driver.get(`${root}/blob/data`, { start: (1 << 20) - 5, end: (1 << 20) + 4 });
      expectSameBytes(await collect(mid.body), all.subarray((1 << 20) - 5, (1 << 20) + 5));
      for (const o of await listAll(driver, `${root}/blob`)) await driver.delete(o.path);
    });

    test('concat of one part and of no parts', async () => {
      const one = randomBytes(1234);
      await driver.put(`${root}/one/p0`, one);
      await driver.concat(`${root}/one/data`, [{ path: `${root}/one/p0`, size: one.length, md5: md5(one) }]);
      expectSameBytes(await driver.read(`${root}/one/data`), one);
      await driver.concat(`${root}/none/data`, []);
      expect((await driver.stat(`${root}/none/data`))?.size).toBe(0);
      for (const o of [...(await listAll(driver, `${root}/one`)), ...(await listAll(driver, `${root}/none`))]) await driver.delete(o.path);
    });

    test('concat refuses a part whose recorded size or md5 disagrees with storage, and writes nothing', async () => {
      const p = randomBytes(4096);
      await driver.put(`${root}/bad/p0`, p);
      await expect(
        driver.concat(`${root}/bad/data`, [{ path: `${root}/bad/p0`, size: p.length + 1, md5: md5(p) }]),
      ).rejects.toSatisfy((e) => e instanceof SizeMismatch || e instanceof ChecksumMismatch);
      expect(await driver.stat(`${root}/bad/data`)).toBeNull();
      await expect(driver.concat(`${root}/bad/data`, [{ path: `${root}/bad/missing`, size: 1, md5: md5(Buffer.from('x')) }])).rejects.toBeInstanceOf(PathNotFound);
      expect(await driver.stat(`${root}/bad/data`)).toBeNull();
      for (const o of await listAll(driver, `${root}/bad`)) await driver.delete(o.path);
    });

    test('put with a declared size refuses a body of another length and leaves nothing', async () => {
      await expect(driver.put(`${root}/short`, Buffer.from('abc'), { size: 10 })).rejects.toBeInstanceOf(SizeMismatch);
      expect(await driver.stat(`${root}/short`)).toBeNull();
    });

    test('put with an expected md5 refuses other bytes and leaves nothing', async () => {
      await expect(driver.put(`${root}/sum`, Buffer.from('abc'), { md5: md5(Buffer.from('abd')) })).rejects.toBeInstanceOf(ChecksumMismatch);
      expect(await driver.stat(`${root}/sum`)).toBeNull();
      const ok = await driver.put(`${root}/sum`, Buffer.from('abc'), { md5: md5(Buffer.from('abc')) });
      expect(ok.size).toBe(3);
      await driver.delete(`${root}/sum`);
    });

    test('an aborted put leaves nothing visible, and an old object stays whole', async () => {
      await driver.put(`${root}/keep`, Buffer.from('old content'));
      const ac = new AbortController();
      let sent = 0;
      const body = new Readable({
        read() {
          if (sent >= 4 << 20) return; // never ends by itself
          sent += 65536;
          this.push(randomBytes(65536));
          if (sent >= 1 << 20) ac.abort();
        },
      });
      await expect(driver.put(`${root}/keep`, body, { signal: ac.signal })).rejects.toSatisfy(isAbort);
      expect((await driver.read(`${root}/keep`)).toString()).toBe('old content');
      const ac2 = new AbortController();
      const body2 = new Readable({ read() { this.push(randomBytes(65536)); if (!ac2.signal.aborted) ac2.abort(); } });
      await expect(driver.put(`${root}/fresh`, body2, { signal: ac2.signal })).rejects.toSatisfy(isAbort);
      expect(await driver.stat(`${root}/fresh`)).toBeNull();
      await driver.delete(`${root}/keep`);
    });

    test('a body stream that errors fails the put and leaves nothing', async () => {
      const body = new Readable({ read() { this.destroy(new Error('client went away')); } });
      await expect(driver.put(`${root}/err`, body)).rejects.toSatisfy(isBodyError);
      expect(await driver.stat(`${root}/err`)).toBeNull();
    });

    test('reading while the object is replaced sees old or new, never a mix', async () => {
      const a = Buffer.alloc(2 << 20, 0x61);
      const b = Buffer.alloc(2 << 20, 0x62);
      await driver.put(`${root}/swap`, a);
      const reads = [];
      const writes = [];
      for (let i = 0; i < 4; i++) {
        writes.push(driver.put(`${root}/swap`, i % 2 ? a : b));
        reads.push(driver.read(`${root}/swap`));
      }
      await Promise.all(writes);
      for (const r of await Promise.all(reads)) expect(r.equals(a) || r.equals(b)).toBe(true);
      await driver.delete(`${root}/swap`);
    });

    test('a create-only put succeeds once; a later one finds the first and changes nothing', async () => {
      await driver.put(`${root}/lock`, Buffer.from('holder'), { ifAbsent: true });
      const holder = (await driver.read(`${root}/lock`)).toString();
      expect(holder).toBe('holder');
      await expect(driver.put(`${root}/lock`, Buffer.from('late'), { ifAbsent: true })).rejects.toBeInstanceOf(AlreadyExists);
      expect((await driver.read(`${root}/lock`)).toString()).toBe(holder);
      await driver.delete(`${root}/lock`);
    });

    test('a working backend says it is ready (readiness checks its root or container, not one key)', async () => {
      expect(driver.ready).toBeTypeOf('function');
      await expect(driver.ready()).resolves.toBeUndefined();
    });

    test('declared atomicCreate: of eight racing create-only puts exactly one succeeds where the driver says creates are atomic', async () => {
      const outcomes = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => driver.put(`${root}/race`, Buffer.from(`writer ${i}`), { ifAbsent: true })));
      const won = outcomes.filter((o) => o.status === 'fulfilled').length;
      for (const o of outcomes) if (o.status === 'rejected') expect(o.reason).toBeInstanceOf(AlreadyExists);
      if (driver.atomicCreate) expect(won).toBe(1);
      else expect(won).toBeGreaterThanOrEqual(1);
      expect((await driver.read(`${root}/race`)).toString()).toMatch(/^writer [0-7]$/);
      await driver.delete(`${root}/race`);
    });

    test('declared joinKeepsParts and deleteRemovesParts: a join keeps its parts, and a delete removes them, exactly as declared', async () => {
      const data = [randomBytes(1 << 20), randomBytes(1 << 20)];
      const parts = [];
      for (const [i, d] of data.entries()) {
        await driver.put(`${root}/j/parts/${i}`, d);
        parts.push({ path: `${root}/j/parts/${i}`, size: d.length, md5: md5(d) });
      }
      await driver.concat(`${root}/j/data`, parts);
      const kept = await Promise.all(parts.map(async (p) => (await driver.stat(p.path)) !== null));
      expect(kept).toEqual([driver.joinKeepsParts, driver.joinKeepsParts]);
      if (driver.joinKeepsParts) expect(await driver.segments?.(`${root}/j/data`)).toEqual(parts.map((p) => p.path));
      await driver.delete(`${root}/j/data`);
      const left = await Promise.all(parts.map(async (p) => (await driver.stat(p.path)) !== null));
      expect(left).toEqual(driver.joinKeepsParts && !driver.deleteRemovesParts ? [true, true] : [false, false]);
      for (const p of parts) await driver.delete(p.path);
    });

    test('deleteMany deletes many objects (bare paths and listing entries), absent ones without a failure', async () => {
      const keys = Array.from({ length: 30 }, (_, i) => `${root}/many/${String(i).padStart(2, '0')}`);
      await Promise.all(keys.map((k) => driver.put(k, Buffer.from(k))));
      const listed = (await listAll(driver, `${root}/many`)).slice(0, 20);
      expect(listed.every((o) => o.joined !== true)).toBe(true);
      const failures = await driver.deleteMany([...listed, ...keys.slice(20), `${root}/many/absent`, { path: `${root}/gone/x`, joined: false }]);
      expect(failures).toEqual([]);
      expect(await listAll(driver, `${root}/many`)).toEqual([]);
      expect(await driver.deleteMany([])).toEqual([]);
    });

    test('deleteMany removes a join with its parts exactly as delete does, whether given as a path or as listed', async () => {
      for (const how of ['path', 'listed'] as const) {
        const parts = [];
        for (const i of [0, 1]) {
          const d = randomBytes(1 << 20);
          await driver.put(`${root}/${how}/up/${i}`, d);
          parts.push({ path: `${root}/${how}/up/${i}`, size: d.length, md5: md5(d) });
        }
        await driver.concat(`${root}/${how}/blob/data`, parts);
        await driver.put(`${root}/${how}/blob/touched`, Buffer.alloc(0));
        const dir = await listAll(driver, `${root}/${how}/blob`);
        if (driver.joinKeepsParts) expect(dir.find((o) => o.path.endsWith('/data'))?.joined).not.toBe(false);
        const failures = await driver.deleteMany(how === 'path' ? dir.map((o) => o.path) : dir);
        expect(failures).toEqual([]);
        expect(await listAll(driver, `${root}/${how}/blob`)).toEqual([]);
        const left = await Promise.all(parts.map(async (p) => (await driver.stat(p.path)) !== null));
        expect(left).toEqual(driver.joinKeepsParts && !driver.deleteRemovesParts ? [true, true] : [false, false]);
        await driver.deleteMany(parts.map((p) => p.path));
      }
    });

    test('declared joinsPartsAnywhere: parts written in another directory (an upload\'s) join into the destination', async () => {
      const data = [randomBytes(1 << 20), randomBytes(1 << 20)];
      const parts = [];
      for (const [i, d] of data.entries()) {
        await driver.put(`${root}/uploads/u1/${i}.obj`, d);
        parts.push({ path: `${root}/uploads/u1/${i}.obj`, size: d.length, md5: md5(d) });
      }
      const joined = driver.concat(`${root}/blobs/b1/data`, parts);
      if (!driver.joinsPartsAnywhere) {
        await expect(joined).rejects.toBeInstanceOf(DriverError);
      } else {
        expect((await joined).size).toBe(2 << 20);
        expectSameBytes(await collect((await driver.get(`${root}/blobs/b1/data`)).body), Buffer.concat(data));
        if (driver.joinKeepsParts) expect(await driver.segments?.(`${root}/blobs/b1/data`)).toEqual(parts.map((p) => p.path));
        await driver.delete(`${root}/blobs/b1/data`);
      }
      for (const o of await listAll(driver, root)) await driver.delete(o.path);
    });

    test('declared listingConsistent: a listing right after a write includes it where the driver says listings are consistent', async () => {
      await driver.put(`${root}/listed/a`, Buffer.from('a'));
      const listed = (await listAll(driver, `${root}/listed`)).map((o) => o.path);
      if (driver.listingConsistent) expect(listed).toEqual([`${root}/listed/a`]);
      else expect([[], [`${root}/listed/a`]]).toContainEqual(listed);
      await driver.delete(`${root}/listed/a`);
    });

    test('objectSize cuts a length into objects no larger than maxObjectSize, and no more of them than it needs', () => {
      const max = driver.maxObjectSize;
      expect(driver.objectSize()).toBe(max);
      for (const n of [1, 4096, max, max + 1, 3 * max + 1].filter(Number.isSafeInteger)) {
        const size = driver.objectSize(n);
        expect(size).toBeLessThanOrEqual(max);
        expect(Math.ceil(n / size)).toBe(Math.ceil(n / max));
      }
    });

    test('keys that could escape are refused', async () => {
      for (const bad of ['../x', `${root}/../../etc/passwd`, `/abs`, `${root}//x`, `${root}/./x`, '']) {
        await expect(driver.put(bad, Buffer.from('x'))).rejects.toBeInstanceOf(DriverError);
      }
    });
  });
}
