/** The cache's fill, store and prune over the in-memory driver (and one that cuts blobs into small objects, as Swift does). */
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { MIRROR_DEFAULTS, type MirrorConfig } from '../../src/config/mirrors.js';
import { BlobTooLarge, Fill, ReaderActivity } from '../../src/mirror/fill.js';
import { pruneMirror } from '../../src/mirror/prune.js';
import { CacheStore } from '../../src/mirror/store.js';
import { paths } from '../../src/registry/paths.js';
import { DigestMismatch } from '../../src/registry/verify.js';
import type { ObjectInfo, StorageDriver } from '../../src/storage/driver.js';
import { MemoryDriver } from '../../src/storage/memory.js';
import { overriding, sha256 } from '../helpers/server.js';

const REG = 'quay.io';
const quiet = { debug() {}, info() {}, warn() {} };
const mirror: MirrorConfig = { registry: REG, url: 'http://127.0.0.1:1', tagTtl: 300, keep: 3600, unprefixed: [], timeout: 5, maxBlobSize: MIRROR_DEFAULTS.maxBlobSize, maxFills: 2, maxFillsPerClient: 8 };

function pieces(data: Buffer, size = 64 * 1024): Readable {
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i += size) out.push(data.subarray(i, i + size));
  return Readable.from(out);
}
async function collect(r: Readable): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const p of r) out.push(p as Buffer);
  return Buffer.concat(out);
}
const data = (n: number, seed = 1) => {
  const b = Buffer.alloc(Math.floor(n));
  for (let i = 0; i < b.length; i++) b[i] = (i * 31 + seed) & 255;
  return b;
};

describe('a blob fill', () => {
  it('streams verified bytes to every joined reader and to storage', async () => {
    const driver = new MemoryDriver();
    const store = new CacheStore(driver, 1000);
    const blob = data(3 * 1024 * 1024);
    const digest = sha256(blob);
    const fill = await Fill.start(pieces(blob), digest, { spoolDir: tmpdir(), maxBytes: 1 << 30, stallMs: 5000, store: (body: Readable) => store.writeBlob(REG, digest, body, blob.length, new AbortController().signal) });
    const readers = [fill.reader(), fill.reader()];
    const got = await Promise.all(readers.map(collect));
    for (const g of got) expect(g.equals(blob)).toBe(true);
    expect(await fill.done).toMatchObject({ stored: true, bytes: blob.length });
    expect((await driver.read(paths.mirrorBlobData(REG, digest))).equals(blob)).toBe(true);
    expect(await driver.stat(paths.mirrorTouched(REG, digest))).not.toBeNull();
    expect(await driver.stat(paths.mirrorPulled(REG, digest))).not.toBeNull();
  });

  it('a reader that joins late reads the whole blob from the spool; a reader that does not read holds back neither the others nor storage', async () => {
    const driver = new MemoryDriver();
    const store = new CacheStore(driver, 1000);
    const blob = data(12 * 1024 * 1024, 11);
    const digest = sha256(blob);
    // A short store delay: storage does not wait the default 10 s for a client that never reads.
    const fill = await Fill.start(pieces(blob, 256 * 1024), digest, { spoolDir: tmpdir(), maxBytes: 1 << 30, stallMs: 60_000, storeDelayMs: 300, store: (body: Readable) => store.writeBlob(REG, digest, body, blob.length, new AbortController().signal) });
    // Never read: in lock-step with its readers, the fill would wait for it forever.
    const idle = fill.reader();
    const first = fill.reader();
    const got: Buffer[] = [];
    let late: Promise<Buffer> | undefined;
    for await (const p of first) {
      got.push(p as Buffer);
      if (!late && got.reduce((n, b) => n + b.length, 0) >= 10 * 1024 * 1024) {
        expect(fill.joinable).toBe(true);
        late = collect(fill.reader());
      }
    }
    expect(Buffer.concat(got).equals(blob)).toBe(true);
    expect((await late!).equals(blob)).toBe(true);
    expect((await fill.done).stored).toBe(true);
    expect(fill.joinable).toBe(false);
    // The idle reader still gets everything afterwards, from the (unlinked) spool it holds open.
    expect((await collect(idle)).equals(blob)).toBe(true);
  });

  it('readers joining at any point get exact bytes, whether they read from memory or from the spool, whatever the pieces', async () => {
    const driver = new MemoryDriver();
    const store = new CacheStore(driver, 1000);
    const blob = data(9 * 1024 * 1024 + 123, 5);
    const digest = sha256(blob);
    // Odd piece sizes: a reader's position falls inside pieces, never on their edges only.
    const fill = await Fill.start(pieces(blob, 77_777), digest, { spoolDir: tmpdir(), maxBytes: 1 << 30, stallMs: 60_000, storeDelayMs: 300, store: (body: Readable) => store.writeBlob(REG, digest, body, blob.length, new AbortController().signal) });
    const first = fill.reader();
    const joins = [1, 3, 6, 8.9].map((mib) => mib * 1024 * 1024);
    const late: Promise<Buffer>[] = [];
    let seen = 0;
    for await (const p of first) {
      seen += (p as Buffer).length;
      while (joins.length > 0 && seen >= joins[0]) {
        joins.shift();
        late.push(collect(fill.reader()));
      }
    }
    expect(late).toHaveLength(4);
    for (const got of await Promise.all(late)) expect(got.equals(blob)).toBe(true);
    expect((await fill.done).stored).toBe(true);
    expect((await driver.read(paths.mirrorBlobData(REG, digest))).equals(blob)).toBe(true);
  });

  it("storage is written only after the fill's clients have their bytes (not beside them)", async () => {
    const driver = new MemoryDriver();
    const store = new CacheStore(driver, 1000);
    const blob = data(6 * 1024 * 1024, 13);
    const digest = sha256(blob);
    const events: string[] = [];
    const fill = await Fill.start(pieces(blob), digest, {
      spoolDir: tmpdir(),
      maxBytes: 1 << 30,
      stallMs: 5000,
      store: (body: Readable, size: number) => (events.push('store'), store.writeBlob(REG, digest, body, size, new AbortController().signal)),
    });
    const reader = fill.reader();
    reader.on('end', () => events.push('client done'));
    expect((await collect(reader)).equals(blob)).toBe(true);
    expect((await fill.done).stored).toBe(true);
    expect(events).toEqual(['client done', 'store']);
  });

  it("storage waits while a client of another fill still reads (one activity per process), then starts", async () => {
    const activity = new ReaderActivity();
    const events: string[] = [];
    const a = data(2 * 1024 * 1024, 14);
    const b = data(2 * 1024 * 1024, 15);
    // A minute's cap: only the other fill's client can hold the store back here.
    const opts = (label: string) => ({ spoolDir: tmpdir(), maxBytes: 1 << 30, stallMs: 60_000, storeDelayMs: 60_000, activity, store: async (body: Readable) => (events.push(`store ${label}`), await collect(body), true) });
    // Each client joins as its fill starts, as the mirror's first client does: on a loaded machine fill A can be
    // fetched while fill B's spool opens, and with no client yet it would store and close at once.
    const fillA = await Fill.start(pieces(a), sha256(a), opts('a'));
    const readerA = fillA.reader();
    const fillB = await Fill.start(pieces(b), sha256(b), opts('b'));
    const readerB = fillB.reader();
    expect((await collect(readerA)).equals(a)).toBe(true);
    events.push('client a done');
    await new Promise((r) => setTimeout(r, 1500)); // longer than the settle time: A's store would have started
    events.push("client b reads");
    expect((await collect(readerB)).equals(b)).toBe(true);
    await Promise.all([fillA.done, fillB.done]);
    expect(events.slice(0, 2)).toEqual(['client a done', 'client b reads']);
    expect(events.slice(2).sort()).toEqual(['store a', 'store b']);
  });

  it('a fill waiting for a slot ends the wait for quiet at once (the waiting stores hold the slots)', async () => {
    const activity = new ReaderActivity();
    activity.opened(); // a client of some fill reads on
    let over = false;
    const waiting = activity.quiet(1000, Date.now() + 60_000).then(() => (over = true));
    await new Promise((r) => setTimeout(r, 100));
    expect(over).toBe(false);
    const unpress = activity.press();
    await waiting;
    unpress();
    // Unpressed, a wait for quiet waits again.
    let second = false;
    void activity.quiet(1000, Date.now() + 60_000).then(() => (second = true));
    await new Promise((r) => setTimeout(r, 100));
    expect(second).toBe(false);
    activity.closed();
  });

  it('the spool is unlinked at once: nothing is left in its directory, even while the fill runs', async () => {
    const dir = await import('node:fs/promises').then((f) => f.mkdtemp(`${tmpdir()}/berth-spool-`));
    const blob = data(2 * 1024 * 1024, 12);
    const digest = sha256(blob);
    const fill = await Fill.start(pieces(blob), digest, { spoolDir: dir, maxBytes: 1 << 30, stallMs: 5000, store: async (body: Readable) => (await collect(body), true) });
    expect(await readdir(dir)).toEqual([]);
    expect((await collect(fill.reader())).equals(blob)).toBe(true);
    await fill.done;
  });

  it('wrong bytes: every reader errors before the last byte and nothing is stored', async () => {
    const driver = new MemoryDriver();
    const store = new CacheStore(driver, 1000);
    const blob = data(3 * 1024 * 1024);
    const digest = sha256(blob);
    const corrupt = Buffer.from(blob);
    corrupt[corrupt.length - 10] ^= 1;
    const fill = await Fill.start(pieces(corrupt), digest, { spoolDir: tmpdir(), maxBytes: 1 << 30, stallMs: 5000, store: (body: Readable) => store.writeBlob(REG, digest, body, blob.length, new AbortController().signal) });
    const reader = fill.reader();
    let received = 0;
    reader.on('data', (p: Buffer) => (received += p.length));
    await expect(new Promise((resolve, reject) => (reader.on('error', reject), reader.on('end', resolve)))).rejects.toBeInstanceOf(DigestMismatch);
    expect(received).toBeLessThan(blob.length);
    await expect(fill.done).rejects.toBeInstanceOf(DigestMismatch);
    expect(await driver.stat(paths.mirrorBlobData(REG, digest))).toBeNull();
  });

  it('a reader that goes away does not stop the fill: the cache still gets the blob', async () => {
    const driver = new MemoryDriver();
    const store = new CacheStore(driver, 1000);
    const blob = data(4 * 1024 * 1024, 9);
    const digest = sha256(blob);
    const fill = await Fill.start(pieces(blob), digest, { spoolDir: tmpdir(), maxBytes: 1 << 30, stallMs: 5000, store: (body: Readable) => store.writeBlob(REG, digest, body, blob.length, new AbortController().signal) });
    const leaving = fill.reader();
    leaving.once('data', () => leaving.destroy());
    expect((await fill.done).stored).toBe(true);
    expect((await driver.read(paths.mirrorBlobData(REG, digest))).equals(blob)).toBe(true);
  });

  it('more bytes than max-blob-size: cut, nothing stored', async () => {
    const driver = new MemoryDriver();
    const store = new CacheStore(driver, 1000);
    const blob = data(2 * 1024 * 1024);
    const digest = sha256(blob);
    const fill = await Fill.start(pieces(blob), digest, { spoolDir: tmpdir(), maxBytes: 1024 * 1024, stallMs: 5000, store: (body: Readable) => store.writeBlob(REG, digest, body, undefined, new AbortController().signal) });
    fill.reader().resume().on('error', () => {});
    await expect(fill.done).rejects.toBeInstanceOf(BlobTooLarge);
    expect(await driver.stat(paths.mirrorBlobData(REG, digest))).toBeNull();
  });
});

describe('the cache store', () => {
  it('a blob larger than one object is written in parts and joined, as on Swift', async () => {
    const inner = new MemoryDriver();
    const small: StorageDriver = overriding(inner, { maxObjectSize: 1024 * 1024, objectSize: () => 1024 * 1024 });
    const store = new CacheStore(small, 1000);
    const blob = data(2.5 * 1024 * 1024, 5);
    const digest = sha256(blob);
    expect(await store.writeBlob(REG, digest, pieces(blob, 100_000), blob.length, new AbortController().signal)).toBe(true);
    expect((await inner.read(paths.mirrorBlobData(REG, digest))).equals(blob)).toBe(true);
    const { body } = await store.readBlob(REG, digest);
    expect((await collect(body)).equals(blob)).toBe(true);
  });

  it('a tombstone seen after the write reports the blob as not kept by the cache, and hides it', async () => {
    const driver = new MemoryDriver();
    const store = new CacheStore(driver, 1000);
    const blob = data(1000);
    const digest = sha256(blob);
    await driver.put(paths.mirrorTombstone(REG, digest), Buffer.alloc(0));
    expect(await store.writeBlob(REG, digest, pieces(blob), blob.length, new AbortController().signal)).toBe(false);
    expect(await store.blobSize(REG, digest)).toBeNull();
  });

  it('records a pull at most once per interval', async () => {
    let puts = 0;
    const inner = new MemoryDriver();
    const counting = overriding(inner, { put: (p, b, o) => (puts++, inner.put(p, b, o)) });
    const store = new CacheStore(counting, 60_000);
    const digest = sha256('x');
    for (let i = 0; i < 5; i++) await store.pulled(REG, digest);
    expect(puts).toBe(1);
  });
});

describe('cache prune', () => {
  /** Objects whose path includes one of `old` look a day old to listings and stats. */
  function aged(inner: MemoryDriver, old: string[]): StorageDriver {
    const age = (o: ObjectInfo): ObjectInfo => (old.some((d) => o.path.includes(d)) ? { ...o, modified: new Date(Date.now() - 86_400_000) } : o);
    return overriding(inner, {
      stat: async (p) => {
        const o = await inner.stat(p);
        return o && age(o);
      },
      list: async function* (prefix) {
        for await (const o of inner.list(prefix)) yield age(o);
      },
    });
  }

  it('expires items unpulled for longer than keep, keeps what a kept manifest needs, and reports rows', async () => {
    const inner = new MemoryDriver();
    const store = new CacheStore(inner, 1000);
    const layer = data(5000, 2);
    const orphan = data(6000, 3);
    const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'x', digest: sha256(layer), size: layer.length }, layers: [] }));
    for (const b of [layer, orphan]) await store.writeBlob(REG, sha256(b), pieces(b), b.length, new AbortController().signal);
    await store.writeManifest(REG, sha256(manifest), manifest, 'application/vnd.oci.image.manifest.v1+json');
    await store.setTag(REG, 'org/app', 'v1', { digest: sha256(manifest), mediaType: 'application/vnd.oci.image.manifest.v1+json', size: manifest.length, checked: Date.now() });
    await store.setTag(REG, 'org/gone', 'v1', { digest: sha256(orphan), mediaType: 'x', size: 1, checked: 0 });
    const driver = aged(inner, [sha256(layer), sha256(orphan), 'org/gone']);

    const dry = await pruneMirror(driver, mirror, { log: quiet, dryRun: true });
    expect(dry.blobs).toEqual({ examined: 3, kept: 2, deleted: 1 });
    expect(await inner.stat(paths.mirrorBlobData(REG, sha256(orphan)))).not.toBeNull();

    const report = await pruneMirror(driver, mirror, { log: quiet });
    expect(report.blobs).toEqual({ examined: 3, kept: 2, deleted: 1 });
    expect(report.tags).toEqual({ examined: 2, kept: 1, deleted: 1 });
    expect(report.bytes.deleted).toBe(orphan.length);
    expect(await inner.stat(paths.mirrorBlobData(REG, sha256(orphan)))).toBeNull();
    expect(await inner.stat(paths.mirrorTombstone(REG, sha256(orphan)))).toBeNull();
    expect([...(await listAll(inner, paths.mirrorBlob(REG, sha256(orphan))))]).toEqual([]);
    expect(await inner.stat(paths.mirrorBlobData(REG, sha256(layer)))).not.toBeNull();
    expect(await inner.stat(paths.mirrorPruneLock(REG))).toBeNull();
  });

  it('max-size: the least recently used go first until the cache fits; what was used in the last minutes stays', async () => {
    const inner = new MemoryDriver();
    const store = new CacheStore(inner, 1000);
    const [a, b, c] = [data(5000, 21), data(6000, 22), data(7000, 23)];
    for (const x of [a, b, c]) await store.writeBlob(REG, sha256(x), pieces(x), x.length, new AbortController().signal);
    const agoMs: Record<string, number> = { [sha256(a)]: 2 * 3600_000, [sha256(b)]: 3600_000 };
    const shift = (o: ObjectInfo): ObjectInfo => {
      const d = Object.keys(agoMs).find((k) => o.path.includes(k));
      return d ? { ...o, modified: new Date(Date.now() - agoMs[d]) } : o;
    };
    const driver = overriding(inner, {
      stat: async (p) => {
        const o = await inner.stat(p);
        return o && shift(o);
      },
      list: async function* (prefix) {
        for await (const o of inner.list(prefix)) yield shift(o);
      },
    });
    const capped = { ...mirror, keep: 86_400, maxSize: 10_000 };
    const report = await pruneMirror(driver, capped, { log: quiet });
    expect(report.blobs).toEqual({ examined: 3, kept: 1, deleted: 2 });
    expect(await store.blobSize(REG, sha256(c))).toBe(c.length);
    expect(await store.blobSize(REG, sha256(a))).toBeNull();
    // Only fresh items left over the cap: kept (the next run judges again).
    const tight = await pruneMirror(driver, { ...capped, maxSize: 1 }, { log: quiet });
    expect(tight.blobs).toEqual({ examined: 1, kept: 1, deleted: 0 });
  });

  it('a fill or pull that touches the item after prune listed it keeps it (the tombstone is lifted)', async () => {
    const inner = new MemoryDriver();
    const store = new CacheStore(inner, 1000);
    const blob = data(2000, 4);
    const digest = sha256(blob);
    await store.writeBlob(REG, digest, pieces(blob), blob.length, new AbortController().signal);
    // Listings see it old; the stat prune makes after its tombstone sees the fresh pull.
    const driver = overriding(inner, {
      list: async function* (prefix) {
        for await (const o of inner.list(prefix)) yield { ...o, modified: new Date(0) };
      },
    });
    const report = await pruneMirror(driver, mirror, { log: quiet });
    expect(report.blobs).toEqual({ examined: 1, kept: 1, deleted: 0 });
    expect(await inner.stat(paths.mirrorTombstone(REG, digest))).toBeNull();
    expect(await store.blobSize(REG, digest)).toBe(blob.length);
  });
});

async function listAll(driver: StorageDriver, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const o of driver.list(prefix)) out.push(o.path);
  return out;
}
