/** The shared driver suite and Swift-specific behaviour (SLOs, auth, container), against a real Swift. */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { ChecksumMismatch, DriverError, PathNotFound, type ObjectInfo } from '../../src/storage/driver.js';
import { Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { loadCloud } from '../../src/storage/swift/clouds.js';
import { SwiftDriver, type SwiftOptions } from '../../src/storage/swift/driver.js';
import { dropContainer, ensureSwift, freshContainer, swiftDriver, swiftRaw } from '../helpers/swift.js';
import { runDriverSuite } from './suite.js';

const containers: string[] = [];
const proxies: ChildProcess[] = [];
afterAll(async () => {
  for (const p of proxies) p.kill(); // also those of a test that failed before its close()
  for (const c of containers) await dropContainer(c);
});
async function driverOnFreshContainer(opts = {}) {
  const c = freshContainer();
  containers.push(c);
  return { container: c, driver: await swiftDriver(c, opts) };
}

runDriverSuite('swift', async () => (await driverOnFreshContainer()).driver);

/**
 * A driver whose requests pass through tools/fault-proxy.mjs (no faults): its log counts the GETs each object got, and
 * its `open` count says how many requests are still open.
 */
async function driverThroughProxy(opts: Partial<SwiftOptions> = {}) {
  await ensureSwift();
  const dir = await mkdtemp(join(tmpdir(), 'berth-swift-proxy-'));
  const proxy = spawn('node', ['tools/fault-proxy.mjs', '--port', '0', '--log', join(dir, 'requests.log')], { stdio: ['ignore', 'pipe', 'ignore'] });
  proxies.push(proxy);
  const port = await new Promise<number>((resolve) => proxy.stdout!.on('data', (d: Buffer) => resolve(Number(/port (\d+)/.exec(String(d))![1]))));
  await writeFile(join(dir, 'clouds.yaml'), `clouds:\n  via-proxy:\n    auth_type: v1password\n    auth:\n      auth_url: http://127.0.0.1:${port}/auth/v1.0\n      username: test:tester\n      password: testing\n`);
  const container = freshContainer();
  containers.push(container);
  const driver = await SwiftDriver.connect({ auth: loadCloud('via-proxy', join(dir, 'clouds.yaml')), container, ...opts });
  const requests = async () => (await readFile(join(dir, 'requests.log'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { method: string; url: string });
  return {
    driver,
    /** How many requests the log holds so far, to count from. */
    mark: async () => (await requests()).length,
    /** GETs of the object at `key` (no query string) since `from`. */
    gets: async (key: string, from: number) => (await requests()).slice(from).filter((r) => r.method === 'GET' && r.url.endsWith(`/${container}/${key}`)).length,
    open: async () => ((await (await fetch(`http://127.0.0.1:${port}/__faults`)).json()) as { counts: { open: number } }).counts.open,
    async close() {
      await driver.close();
      proxy.kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Polls `check` until it holds or about 10 s have passed; the caller asserts what it then sees. */
async function until(check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200 && !(await check()); i++) await new Promise((r) => setTimeout(r, 50));
}

/** A reader of about 2 MiB/s, in pieces of at most 64 KiB, that is never stalled. */
function slowReader(chunks: Buffer[]): Writable {
  return new Writable({
    highWaterMark: 1,
    write(chunk: Buffer, _enc, done) {
      chunks.push(chunk);
      setTimeout(done, 30);
    },
  });
}

const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');

async function putParts(driver: SwiftDriver, dir: string, sizes: number[]) {
  const data = sizes.map((n) => randomBytes(n));
  const parts = [];
  for (const [i, d] of data.entries()) {
    await driver.put(`${dir}/p${i}`, d);
    parts.push({ path: `${dir}/p${i}`, size: d.length, md5: md5(d) });
  }
  return { data: Buffer.concat(data), parts };
}

async function collect(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function readUntilError(body: Readable): Promise<{ bytes: Buffer; error?: Error }> {
  const chunks: Buffer[] = [];
  try {
    for await (const c of body) chunks.push(c as Buffer);
    return { bytes: Buffer.concat(chunks) };
  } catch (error) {
    return { bytes: Buffer.concat(chunks), error: error as Error };
  }
}

async function keysUnder(driver: SwiftDriver, prefix: string): Promise<string[]> {
  const keys = [];
  for await (const o of driver.list(prefix)) keys.push(o.path);
  return keys;
}

async function rawManifest(container: string, key: string): Promise<{ path: string; size_bytes: number }[]> {
  const res = await swiftRaw(`${container}/${key}?multipart-manifest=get&format=raw`);
  expect(res.headers.get('x-static-large-object')).toBe('True');
  return (await res.json()) as { path: string; size_bytes: number }[];
}

describe('swift driver specifics', () => {
  test('concat writes an SLO over the parts; deleting it removes the segments too', async () => {
    const { container, driver } = await driverOnFreshContainer();
    const { data, parts } = await putParts(driver, 'b/parts', [1 << 20, 1 << 20, 500]);
    const joined = await driver.concat('b/data', parts);
    expect(joined.size).toBe(data.length);
    expect((await rawManifest(container, 'b/data')).map((s) => s.path)).toEqual(parts.map((p) => `/${container}/${p.path}`));
    expect(md5(await driver.read('b/data'))).toBe(md5(data));
    await driver.delete('b/data');
    expect(await keysUnder(driver, 'b')).toEqual([]);
    await driver.close();
  });

  test('concat refuses a part with no recorded md5 (nothing to check its ETag against) and writes nothing', async () => {
    const { driver } = await driverOnFreshContainer();
    expect(driver.reportsMd5).toBe(true);
    const { parts } = await putParts(driver, 'u/parts', [1 << 20, 500]);
    await expect(driver.concat('u/data', [parts[0], { ...parts[1], md5: undefined }])).rejects.toBeInstanceOf(DriverError);
    expect(await driver.stat('u/data')).toBeNull();
    expect(await keysUnder(driver, 'u')).toEqual(parts.map((p) => p.path));
    await driver.close();
  });

  test('many small parts are merged, so the SLO keeps fewer than 10 segments under 1 MiB', async () => {
    const { container, driver } = await driverOnFreshContainer();
    const { data, parts } = await putParts(driver, 's/parts', Array.from({ length: 30 }, (_, i) => 100_000 + i));
    await driver.concat('s/data', parts);
    const segments = await rawManifest(container, 's/data');
    expect(segments.slice(0, -1).filter((s) => s.size_bytes < 1 << 20).length).toBeLessThan(10);
    expect(md5(await driver.read('s/data'))).toBe(md5(data));
    expect((await keysUnder(driver, 's')).every((p) => p === 's/data' || p.startsWith('s/parts/'))).toBe(true);
    await driver.delete('s/data');
    expect(await keysUnder(driver, 's')).toEqual([]);
    await driver.close();
  });

  test('more parts than a manifest may hold are nested in sub-manifests', async () => {
    const { container, driver } = await driverOnFreshContainer({ maxManifestSegments: 2 });
    const { data, parts } = await putParts(driver, 'n/parts', [1 << 20, 1 << 20, 1 << 20, 7]);
    const joined = await driver.concat('n/data', parts);
    expect(joined.size).toBe(data.length);
    expect((await rawManifest(container, 'n/data')).length).toBe(2);
    expect(md5(await driver.read('n/data'))).toBe(md5(data));
    const range = await driver.get('n/data', { start: (2 << 20) - 3, end: (2 << 20) + 2 });
    const chunks: Buffer[] = [];
    for await (const c of range.body) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).equals(data.subarray((2 << 20) - 3, (2 << 20) + 3))).toBe(true);
    await driver.delete('n/data');
    expect(await keysUnder(driver, 'n')).toEqual([]);
    await driver.close();
  });

  test('a whole get of an SLO reads its segments in order, nested manifests included; a reader may stop early', async () => {
    const { container, driver } = await driverOnFreshContainer({ maxManifestSegments: 3 });
    const { data, parts } = await putParts(driver, 'w/parts', [1 << 20, 3 << 20, 1 << 20, 12345, 1]);
    await driver.concat('w/data', parts);
    expect((await rawManifest(container, 'w/data')).length).toBe(2); // nested
    const whole = await driver.get('w/data');
    expect(whole.size).toBe(data.length);
    expect(md5(await collect(whole.body))).toBe(md5(data));
    // Stopping after the first piece cancels the reads in flight; the driver goes on working.
    const early = await driver.get('w/data');
    for await (const piece of early.body) {
      expect((piece as Buffer).length).toBeGreaterThan(0);
      break;
    }
    expect(early.body.destroyed).toBe(true);
    expect(md5(await collect((await driver.get('w/data')).body))).toBe(md5(data));
    await driver.close();
  });

  test('a reader slower than the request timeout over a whole segment, but never stalled, still gets every byte', async () => {
    // Each segment takes the reader about 1.5 s; no request may sit idle that long (700 ms) waiting for it.
    const { driver } = await driverOnFreshContainer({ requestTimeoutMs: 700 });
    const { data, parts } = await putParts(driver, 'slow/parts', [3 << 20, 3 << 20, 1 << 20]);
    await driver.concat('slow/data', parts);
    const chunks: Buffer[] = [];
    const started = Date.now();
    await pipeline((await driver.get('slow/data')).body, slowReader(chunks));
    expect(md5(Buffer.concat(chunks))).toBe(md5(data));
    expect(Date.now() - started).toBeGreaterThan(1500); // the reader was as slow as the test means it to be
    await driver.close();
  }, 60_000);

  test('a segment requested ahead is given up while a slow reader is still on the one before, and requested again when reached', async () => {
    const swift = await driverThroughProxy({ requestTimeoutMs: 700 });
    const { data, parts } = await putParts(swift.driver, 'ahead/parts', [3 << 20, 3 << 20, 1 << 20]);
    await swift.driver.concat('ahead/data', parts);
    const from = await swift.mark();
    const chunks: Buffer[] = [];
    await pipeline((await swift.driver.get('ahead/data')).body, slowReader(chunks));
    expect(md5(Buffer.concat(chunks))).toBe(md5(data));
    // The first segment once; each later one twice: ahead of need (given up after 350 ms), then when reached.
    expect(await Promise.all(parts.map((p) => swift.gets(p.path, from)))).toEqual([1, 2, 2]);
    await swift.close();
  }, 60_000);

  test('a fast reader gets each segment with one request, the next one opened ahead; stopping early cancels both', async () => {
    const swift = await driverThroughProxy();
    // Segments larger than the socket buffers hold, so a request left open ahead would stay open at the proxy.
    const { data, parts } = await putParts(swift.driver, 'stop/parts', [24 << 20, 24 << 20, 1 << 20]);
    await swift.driver.concat('stop/data', parts);
    let from = await swift.mark();
    expect(md5(await collect((await swift.driver.get('stop/data')).body))).toBe(md5(data));
    expect(await Promise.all(parts.map((p) => swift.gets(p.path, from)))).toEqual([1, 1, 1]);

    from = await swift.mark();
    let read = 0;
    for await (const piece of (await swift.driver.get('stop/data')).body) {
      read += (piece as Buffer).length;
      if ((await swift.gets(parts[1].path, from)) === 1) break; // stops (destroys the body) once the next is requested
    }
    // The second segment was requested while the reader was still on the first, and no further one.
    expect(read).toBeLessThan(24 << 20);
    expect(await Promise.all(parts.map((p) => swift.gets(p.path, from)))).toEqual([1, 1, 0]);
    await until(async () => (await swift.open()) === 0);
    expect(await swift.open()).toBe(0);
    await swift.close();
  }, 60_000);

  test('a segment changed or removed behind its SLO fails a whole get, naming it, before any of its bytes are passed on', async () => {
    const { container, driver } = await driverOnFreshContainer();
    const { data, parts } = await putParts(driver, 'x/parts', [1 << 20, 1 << 20, 1 << 20]);
    await driver.concat('x/data', parts);
    // Same size, other bytes: what a disk or a stray write through the Swift API might leave.
    await (await swiftRaw(`${container}/${parts[1].path}`, { method: 'PUT', body: randomBytes(1 << 20) })).arrayBuffer();
    const changed = await readUntilError((await driver.get('x/data')).body);
    expect(changed.error).toBeInstanceOf(ChecksumMismatch);
    expect(changed.error?.message).toContain(parts[1].path);
    expect(changed.bytes.equals(data.subarray(0, changed.bytes.length))).toBe(true);
    expect(changed.bytes.length).toBeLessThanOrEqual(1 << 20);
    await (await swiftRaw(`${container}/${parts[2].path}`, { method: 'DELETE' })).arrayBuffer();
    const removed = await readUntilError((await driver.get('x/data')).body);
    expect(removed.error?.message).toContain(parts[1].path); // the first bad segment stops it
    await (await swiftRaw(`${container}/${parts[1].path}`, { method: 'PUT', body: data.subarray(1 << 20, 2 << 20) })).arrayBuffer();
    const gone = await readUntilError((await driver.get('x/data')).body);
    expect(gone.error).toBeInstanceOf(PathNotFound);
    expect(gone.bytes.length).toBeLessThanOrEqual(2 << 20);
    await driver.close();
  });

  test('joins of one blob from two uploads: one SLO stays readable, the later join removes its own parts', async () => {
    const { container, driver } = await driverOnFreshContainer({ maxManifestSegments: 4 });
    // The same bytes cut three ways, with small parts (merged) and more segments than a manifest holds (nested).
    const data = randomBytes(12 << 20);
    const cut = async (dir: string, sizes: number[]) => {
      const parts = [];
      let at = 0;
      for (const [i, n] of sizes.entries()) {
        const piece = data.subarray(at, (at += n));
        await driver.put(`${dir}/${i}`, piece);
        parts.push({ path: `${dir}/${i}`, size: n, md5: md5(piece) });
      }
      return parts;
    };
    const small = Array.from({ length: 24 }, () => 128 << 10);
    const a = await cut('r/parts/a', [...small, 3 << 20, 3 << 20, 3 << 20]);
    const b = await cut('r/parts/b', [1 << 20, 2 << 20, 3 << 20, ...small, 3 << 20]);
    const c = await cut('r/parts/c', [6 << 20, ...small, 3 << 20]);
    // At once: neither clobbers the other's merged parts or sub-manifests, whichever manifest stays.
    const results = await Promise.all([driver.concat('r/data', a), driver.concat('r/data', b)]);
    expect(results.map((r) => r.size)).toEqual([data.length, data.length]);
    expect(md5(await driver.read('r/data'))).toBe(md5(data));
    expect(await driver.verify!('r/data')).toEqual([]);
    // After: the blob exists, so the join leaves it alone and deletes its own parts.
    const manifestBefore = await rawManifest(container, 'r/data');
    expect((await driver.concat('r/data', c)).size).toBe(data.length);
    expect(await rawManifest(container, 'r/data')).toEqual(manifestBefore);
    expect(await keysUnder(driver, 'r/parts/c')).toEqual([]);
    expect(md5(await driver.read('r/data'))).toBe(md5(data));
    // segments() names exactly what the blob reads from, so prune can tell stray parts.
    const used = new Set(await driver.segments!('r/data'));
    expect([...used].every((k) => k.startsWith('r/parts/'))).toBe(true);
    for (const k of used) expect(await driver.stat(k)).not.toBeNull();
    await driver.delete('r/data');
    expect((await keysUnder(driver, 'r')).filter((k) => used.has(k))).toEqual([]);
    await driver.close();
  });

  test('a part changed after it was recorded (same size, other bytes) stops the SLO', async () => {
    const { driver } = await driverOnFreshContainer();
    const { parts } = await putParts(driver, 'c/parts', [1 << 20, 1000]);
    await driver.put(parts[1].path, randomBytes(1000));
    await expect(driver.concat('c/data', parts)).rejects.toBeInstanceOf(ChecksumMismatch);
    expect(await driver.stat('c/data')).toBeNull();
    for (const p of parts) await driver.delete(p.path);
    await driver.close();
  });

  test('listings page with a marker past the page size, in order, without repeats', async () => {
    const { driver } = await driverOnFreshContainer({ listPageSize: 10 });
    const keys = Array.from({ length: 25 }, (_, i) => `l/${String(i).padStart(3, '0')}`);
    for (const k of keys) await driver.put(k, Buffer.from(k));
    await driver.put('l2/outside', Buffer.from('x'));
    expect(await keysUnder(driver, 'l')).toEqual(keys);
    await driver.close();
  });

  test('deleteMany uses bulk delete as /info offers it: one request per bulkDeleteMax names, absent ones counted as not found', async () => {
    const { driver } = await driverOnFreshContainer({ bulkDeleteMax: 4 });
    expect(driver.bulkDelete).toBe(true);
    const keys = Array.from({ length: 11 }, (_, i) => `bulk/o${i}`);
    await Promise.all(keys.map((k) => driver.put(k, Buffer.from(k))));
    const listed: ObjectInfo[] = [];
    for await (const o of driver.list('bulk')) listed.push(o);
    expect(listed.map((o) => o.joined)).toEqual(keys.map(() => false));
    const before = driver.requestCount();
    expect(await driver.deleteMany([...listed, { path: 'bulk/absent', joined: false }])).toEqual([]);
    expect(driver.requestCount() - before).toBe(3); // 12 names, 4 per request
    for (const k of keys) expect(await driver.stat(k)).toBeNull();
    await driver.close();
  });

  test('deleteMany without bulk delete (bulkDeleteMax 0) deletes one by one and still reports nothing failed', async () => {
    const { driver } = await driverOnFreshContainer({ bulkDeleteMax: 0 });
    expect(driver.bulkDelete).toBe(false);
    await Promise.all(['nb/a', 'nb/b'].map((k) => driver.put(k, Buffer.from(k))));
    const before = driver.requestCount();
    expect(await driver.deleteMany([{ path: 'nb/a', joined: false }, 'nb/b', 'nb/absent'])).toEqual([]);
    // A multipart delete first, then a plain one for each plain object; one for the absent one.
    expect(driver.requestCount() - before).toBe(5);
    expect(await driver.stat('nb/a')).toBeNull();
    await driver.close();
  });

  test('move checks the copy and removes the source', async () => {
    const { driver } = await driverOnFreshContainer();
    const d = randomBytes(3 << 20);
    await driver.put('m/src', d);
    const moved = await driver.move('m/src', 'm/dst');
    expect(moved).toEqual({ size: d.length, md5: md5(d) });
    expect(await driver.stat('m/src')).toBeNull();
    await driver.delete('m/dst');
    await driver.close();
  });

  test('an expired or revoked token is replaced by a fresh login, once', async () => {
    const { driver } = await driverOnFreshContainer();
    await driver.put('t/x', Buffer.from('x'));
    (driver as unknown as { client: { session: { token: string } } }).client.session.token = 'AUTH_tk00000000000000000000000000000000';
    expect((await driver.read('t/x')).toString()).toBe('x');
    await driver.delete('t/x');
    await driver.close();
  });

  test('the container is created at connect; bad credentials fail with a message that holds no secret', async () => {
    const { container, driver } = await driverOnFreshContainer();
    expect((await swiftRaw(container, { method: 'HEAD' })).status).toBe(204);
    await driver.close();
    const err = await SwiftDriver.connect({
      auth: { type: 'v1password', authUrl: 'http://127.0.0.1:8080/auth/v1.0', username: 'test:tester', password: 'not-the-password' },
      container: freshContainer(),
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DriverError);
    expect((err as Error).message).toMatch(/refused user test:tester/);
    expect((err as Error).message).not.toContain('not-the-password');
  });

  test('a user who may not read or create the container gets a clear error', async () => {
    await ensureSwift();
    // test:reader has no .admin role and no ACL: Swift answers 403 for the container.
    const err = await SwiftDriver.connect({
      auth: { type: 'v1password', authUrl: 'http://127.0.0.1:8080/auth/v1.0', username: 'test:reader', password: 'reading' },
      container: freshContainer(),
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DriverError);
    expect((err as Error).message).toMatch(/cannot (read|create) Swift container berth-test-\w+: 403/);
  });
});
