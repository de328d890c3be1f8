/** The memcached lock service against real memcached servers (own ports; never Swift's 11211). */
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import yaml from 'js-yaml';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/config.js';
import { keyFor, MemcachedLocks, MemcachedUnavailable } from '../../src/locks/memcached.js';
import { Metrics } from '../../src/observability/metrics.js';
import { UploadLocks } from '../../src/registry/upload-lock.js';
import { MemoryDriver } from '../../src/storage/memory.js';
import { rawCommand, startMemcached, type MemcachedServer } from '../helpers/memcached.js';

const at = (m: MemcachedServer) => ({ host: '127.0.0.1', port: m.port });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Retry `f` until it returns something, for up to `ms` (memcached's clock ticks once a second). */
async function eventually<T>(f: () => Promise<T | null>, ms = 6000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = await f().catch(() => null);
    if (v) return v;
    if (Date.now() > until) throw new Error('gave up waiting');
    await sleep(100);
  }
}

function capturedLog() {
  const lines: { level: string; obj: Record<string, unknown>; msg: string }[] = [];
  return {
    lines,
    log: {
      warn: (obj: object, msg: string) => void lines.push({ level: 'warn', obj: obj as Record<string, unknown>, msg }),
      info: (obj: object, msg: string) => void lines.push({ level: 'info', obj: obj as Record<string, unknown>, msg }),
    } as never,
  };
}

describe('memcached lock service', () => {
  let m1: MemcachedServer;
  let m2: MemcachedServer;
  const services: MemcachedLocks[] = [];
  /** A service as one Berth process would hold it. */
  const service = (servers: MemcachedServer[], opts: ConstructorParameters<typeof MemcachedLocks>[1] = {}) => {
    const s = new MemcachedLocks(servers.map(at), { timeoutMs: 2000, ...opts }); // generous: the test host is loaded
    services.push(s);
    return s;
  };
  /** A lock path not used before whose key lands on `m` among `servers`. */
  const pathOn = (m: MemcachedServer, servers: MemcachedServer[]) => {
    const probe = service(servers);
    for (;;) {
      const path = `_local/uploads/${randomUUID()}/lock`;
      if (probe.serverFor(path) === m.address) return path;
    }
  };

  beforeAll(async () => {
    [m1, m2] = await Promise.all([startMemcached(), startMemcached()]);
  });
  afterEach(async () => {
    for (const s of services.splice(0)) await s.close();
    for (const m of [m1, m2]) if (m.child.exitCode !== null || m.child.signalCode !== null) await m.restart();
  });
  afterAll(async () => {
    await Promise.all([m1?.stop(), m2?.stop()]);
  });

  it('one taker wins the add; another process and the same process are refused while it is held; release frees it', async () => {
    const [a, b] = [service([m1]), service([m1])];
    const lock = await a.tryLock('_local/uploads/one/lock', 30_000);
    expect(lock).not.toBeNull();
    expect(await b.tryLock('_local/uploads/one/lock', 30_000)).toBeNull();
    expect(await a.tryLock('_local/uploads/one/lock', 30_000)).toBeNull();
    expect(await b.tryLock('_local/uploads/other/lock', 30_000)).not.toBeNull();
    await lock!.release();
    expect(await b.tryLock('_local/uploads/one/lock', 30_000)).not.toBeNull();
  });

  it('the item is berth:lock:<sha256 of the path> holding a 32-character token: a valid memcached key for any path', async () => {
    const path = `_local/uploads/${'x'.repeat(400)} with spaces\u0001/lock`;
    expect(keyFor(path)).toMatch(/^berth:lock:[0-9a-f]{64}$/);
    const lock = await service([m1]).tryLock(path, 30_000);
    expect(lock).not.toBeNull();
    expect(await rawCommand(m1.port, `get ${keyFor(path)}\r\n`)).toMatch(new RegExp(`^VALUE ${keyFor(path)} 0 32\r\n[0-9a-f]{32}\r\nEND\r\n$`));
    await lock!.release();
    expect(await rawCommand(m1.port, `get ${keyFor(path)}\r\n`)).toBe('END\r\n');
  });

  it('a held lock is renewed past its TTL; a holder that stops renewing (dies) loses it after the TTL', async () => {
    const [a, b] = [service([m1]), service([m1])];
    const path = '_local/uploads/renewed/lock';
    expect(await a.tryLock(path, 1000)).not.toBeNull();
    await sleep(2500);
    expect(await b.tryLock(path, 1000)).toBeNull();
    await a.close(); // no release: as if the process had died
    expect(await b.tryLock(path, 1000)).toBeNull();
    expect(await eventually(() => b.tryLock(path, 1000))).not.toBeNull();
  });

  it('a release only removes its own lock: after an eviction and a new holder, the old holder releases nothing', async () => {
    const { log, lines } = capturedLog();
    const metrics = new Metrics();
    const [a, b, c] = [service([m1], { log, metrics }), service([m1]), service([m1])];
    const path = '_local/uploads/evicted/lock';
    const old = await a.tryLock(path, 1000);
    expect(await rawCommand(m1.port, `delete ${keyFor(path)}\r\n`)).toBe('DELETED\r\n'); // evicted
    expect(await b.tryLock(path, 30_000)).not.toBeNull();
    // a's renewal finds another holder's token: it stops renewing and says so.
    await eventually(async () => lines.find((l) => /lost while held/.test(l.msg)) ?? null, 3000);
    expect((await metrics.lockServiceErrors.get()).values).toEqual([expect.objectContaining({ labels: { op: 'lost' }, value: 1 })]);
    await old!.release();
    expect(await c.tryLock(path, 30_000)).toBeNull();
  });

  it("a key stays on its server while that server is down: tryLock rejects, the other server never gets it, and it comes back", async () => {
    const servers = [m1, m2];
    const path = pathOn(m1, servers);
    const { log, lines } = capturedLog();
    const metrics = new Metrics();
    const a = service(servers, { log, metrics });
    const other = pathOn(m2, servers);
    await m1.stop();
    for (let i = 0; i < 3; i++) await expect(a.tryLock(path, 30_000)).rejects.toBeInstanceOf(MemcachedUnavailable);
    expect(await rawCommand(m2.port, `get ${keyFor(path)}\r\n`)).toBe('END\r\n');
    expect(await a.tryLock(other, 30_000)).not.toBeNull();
    // Counted each time, logged once (rate-limited).
    expect((await metrics.lockServiceErrors.get()).values).toEqual([expect.objectContaining({ labels: { op: 'acquire' }, value: 3 })]);
    expect(lines.filter((l) => l.level === 'warn').map((l) => l.obj.server)).toEqual([m1.address]);
    expect((await metrics.lockServers.get()).values.map((v) => [v.labels.state, v.value])).toEqual([['up', 1], ['down', 1]]);

    await m1.restart();
    expect(await eventually(() => a.tryLock(path, 30_000))).not.toBeNull();
    expect(lines.some((l) => l.level === 'info' && /answering again/.test(l.msg))).toBe(true);
    expect((await metrics.lockServers.get()).values.map((v) => [v.labels.state, v.value])).toEqual([['up', 2], ['down', 0]]);
  });

  it('a hung server: a request fails at its deadline, the next ones at once while it backs off', async () => {
    const a = service([m1], { timeoutMs: 1000 });
    expect(await a.tryLock('_local/uploads/warm/lock', 30_000)).not.toBeNull(); // connected
    await m1.freeze();
    try {
      await expect(a.tryLock('_local/uploads/hung/lock', 30_000)).rejects.toThrow(/no reply within 1000 ms/);
      await expect(a.tryLock('_local/uploads/hung/lock', 30_000)).rejects.toThrow(/down, next attempt/);
    } finally {
      m1.thaw();
    }
    // (The add sent to the frozen server may still be applied when it wakes: that lock waits out its TTL.)
    expect(await eventually(() => a.tryLock('_local/uploads/after/lock', 30_000))).not.toBeNull();
  });

  it('a reply that is not memcached\'s drops the connection and fails the request', async () => {
    const fake = net.createServer((s) => s.on('data', () => s.write('VALUE someone-elses-key 0 3 1\r\nabc\r\nEND\r\n')));
    await new Promise<void>((resolve) => fake.listen(0, '127.0.0.1', resolve));
    try {
      const port = (fake.address() as net.AddressInfo).port;
      const a = new MemcachedLocks([{ host: '127.0.0.1', port }], { timeoutMs: 500 });
      services.push(a);
      await expect(a.tryLock('_local/uploads/x/lock', 30_000)).rejects.toThrow(/unexpected reply/);
    } finally {
      fake.close();
    }
  });

  it('a server started without CAS (-C) is found at start-up and its locks are not taken (they could not be released)', async () => {
    const noCas = await startMemcached(['-C']);
    try {
      const { log, lines } = capturedLog();
      const a = await MemcachedLocks.connect([at(noCas), at(m1)], { log, timeoutMs: 2000 });
      services.push(a);
      expect(lines[0]).toMatchObject({ level: 'warn', obj: { down: [], withoutCas: [noCas.address] } });
      await expect(a.tryLock(pathOn(noCas, [noCas, m1]), 30_000)).rejects.toThrow(/without CAS/);
      expect(await a.tryLock(pathOn(m1, [noCas, m1]), 30_000)).not.toBeNull();
    } finally {
      await noCas.stop();
    }
  });

  it('UploadLocks: one holder across two processes; with memcached down, requests go on without it', async () => {
    const driver = new MemoryDriver();
    const [p1, p2] = [new UploadLocks(driver, service([m1])), new UploadLocks(driver, service([m1]))];
    const id = '0b3c4d5e-1111-4222-8333-944455556666';
    const release = await p1.acquire('_local', id);
    expect(release).not.toBeNull();
    expect(await p2.acquire('_local', id)).toBeNull();
    await release!();
    const again = await p2.acquire('_local', id);
    expect(again).not.toBeNull();
    await again!();

    await m1.stop();
    const fallback = await p1.acquire('_local', id);
    expect(fallback).not.toBeNull();
    // The in-process lock still holds within a process.
    expect(await p1.acquire('_local', id)).toBeNull();
    await fallback!();
  });
});

describe('registry.locks configuration', () => {
  const parse = (locks: string) => parseConfig(yaml.load(`registry:\n  storage: {driver: filesystem, root: d}\n${locks}`), '/srv');

  it('absent: no lock service; memcached servers as HOST:PORT, names lowercased, IPv6 in brackets', () => {
    expect(parse('').locks).toBeUndefined();
    expect(parse('  locks: {memcached: [127.0.0.1:11211, "[::1]:11212", Cache-1.example.org:11213]}\n').locks).toEqual({
      memcached: [
        { host: '127.0.0.1', port: 11211 },
        { host: '::1', port: 11212 },
        { host: 'cache-1.example.org', port: 11213 },
      ],
    });
  });

  it.each([
    ['  locks: {memcached: []}\n', 'registry.locks.memcached: must be a non-empty list'],
    ['  locks: {memcached: cache:11211}\n', 'registry.locks.memcached: must be a non-empty list'],
    ['  locks: {redis: [a:1]}\n', 'registry.locks.redis: unknown key'],
    ['  locks: {memcached: [cache]}\n', 'registry.locks.memcached[0]: must be HOST:PORT'],
    ['  locks: {memcached: [a:1, "cache:0"]}\n', 'registry.locks.memcached[1]: must be HOST:PORT'],
    ['  locks: {memcached: ["cache:65536"]}\n', 'registry.locks.memcached[0]: must be HOST:PORT'],
    ['  locks: {memcached: ["::1:11211"]}\n', 'registry.locks.memcached[0]: must be HOST:PORT'],
    ['  locks: {memcached: ["[::g]:11211"]}\n', 'registry.locks.memcached[0]: must be HOST:PORT'],
    ['  locks: {memcached: ["a b:1"]}\n', 'registry.locks.memcached[0]: must be HOST:PORT'],
    ['  locks: {memcached: ["-a.example:1"]}\n', 'registry.locks.memcached[0]: must be HOST:PORT'],
    ['  locks: {memcached: [a:1, A:1]}\n', 'registry.locks.memcached[1]: "A:1" is listed twice'],
    ['  locks: [a:1]\n', 'registry.locks: must be a mapping'],
  ])('%s is refused with the key path', (text, message) => {
    expect(() => parse(text)).toThrow(message);
  });
});
