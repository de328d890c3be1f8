/**
 * What the cluster primary holds for its workers (upload locks, failed-login buckets, the login cache), through
 * the same Channel code the processes use, here wired in memory: one primary, two workers.
 */
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { LoginRefused } from '../../src/auth/login-limiter.js';
import { Users } from '../../src/auth/users.js';
import { Channel, type Handler } from '../../src/cluster/ipc.js';
import { LockTable } from '../../src/cluster/lock-table.js';
import { ClusterLimiter, ClusterLoginCache, SharedLogins } from '../../src/cluster/logins.js';
import { ClusterLocks } from '../../src/locks/cluster.js';

/** A worker's channel to a primary whose handlers are `primary`; messages cross asynchronously, in order. */
function link(primary: Record<string, Handler>, worker: Record<string, Handler> = {}): { toPrimary: Channel; toWorker: Channel } {
  let toPrimary!: Channel;
  let toWorker!: Channel;
  const deliver = (to: () => Channel) => (m: unknown) => {
    setImmediate(() => to().receive(JSON.parse(JSON.stringify(m))));
    return true;
  };
  toPrimary = new Channel(deliver(() => toWorker), worker);
  toWorker = new Channel(deliver(() => toPrimary), primary);
  return { toPrimary, toWorker };
}

describe('the primary\'s lock table', () => {
  it('one holder at a time; a lapsed lock is taken over and its old token renews and releases nothing', () => {
    let now = 0;
    const t = new LockTable(() => now);
    const a = t.tryLock(1, 'k', 1000)!;
    expect(a).toBeTruthy();
    expect(t.tryLock(2, 'k', 1000)).toBeNull();
    now = 999;
    expect(t.tryLock(2, 'k', 1000)).toBeNull();
    now = 1000;
    const b = t.tryLock(2, 'k', 1000)!;
    expect(b).toBeTruthy();
    expect(t.renew('k', a, 1000)).toBe(false);
    t.release('k', a);
    expect(t.tryLock(1, 'k', 1000)).toBeNull();
    t.release('k', b);
    expect(t.tryLock(1, 'k', 1000)).toBeTruthy();
  });

  it('a worker that exits loses its locks at once', () => {
    const t = new LockTable();
    t.tryLock(1, 'x', 60_000);
    t.tryLock(2, 'y', 60_000);
    t.dropOwner(1);
    expect(t.tryLock(3, 'x', 60_000)).toBeTruthy();
    expect(t.tryLock(3, 'y', 60_000)).toBeNull();
  });

  it('refuses malformed calls', () => {
    const h = new LockTable().handlers(1);
    expect(() => h['lock.try']({ key: '', ttlMs: 10 })).toThrow('bad lock key');
    expect(() => h['lock.try']({ key: 'k', ttlMs: -1 })).toThrow('bad lock ttl');
    expect(() => h['lock.try']({ key: 'k'.repeat(2000), ttlMs: 10 })).toThrow('bad lock key');
  });

  it('ClusterLocks over a channel: the second worker is refused until the first releases', async () => {
    const table = new LockTable();
    const one = new ClusterLocks(link(table.handlers(1)).toPrimary);
    const two = new ClusterLocks(link(table.handlers(2)).toPrimary);
    const held = await one.tryLock('uploads/u1', 30_000);
    expect(held).not.toBeNull();
    expect(await two.tryLock('uploads/u1', 30_000)).toBeNull();
    await held!.release();
    const second = await two.tryLock('uploads/u1', 30_000);
    expect(second).not.toBeNull();
    await second!.release();
  });
});

describe('failed logins and the login cache shared by two workers', () => {
  const log = pino({ level: 'silent' });
  const setup = async () => {
    const shared = new SharedLogins();
    const workers = await Promise.all(
      [1, 2].map(async (owner) => {
        const primary = link(shared.handlers(owner)).toPrimary;
        const results = await ClusterLoginCache.connect(primary);
        return new Users([{ name: 'zuul', pass: 'right', access: 'write' }], '_local', undefined, log, { shared: { limiter: new ClusterLimiter(primary), results } });
      }),
    );
    return { shared, workers };
  };

  it('ten failures from one address across both workers, then 429 on either, the right password included', async () => {
    const { workers } = await setup();
    for (let i = 0; i < 10; i++) expect(await workers[i % 2].check('zuul', `guess-${i}`, { address: '192.0.2.1' })).toBeNull();
    for (const w of workers) await expect(w.check('zuul', 'right', { address: '192.0.2.1' })).rejects.toBeInstanceOf(LoginRefused);
    // Another address is not affected.
    expect(await workers[1].check('zuul', 'right', { address: '192.0.2.2' })).toMatchObject({ name: 'zuul' });
  });

  it('a wrong password resent to the other worker is remembered there: not a new failure', async () => {
    const { shared, workers } = await setup();
    expect(await workers[0].check('zuul', 'old-docker-hub', { address: '192.0.2.3' })).toBeNull();
    for (let i = 0; i < 20; i++) expect(await workers[1].check('zuul', 'old-docker-hub', { address: '192.0.2.3' })).toBeNull();
    expect(shared.cache.size).toEqual({ good: 0, bad: 1 });
    // Nine tokens left: nine more guesses, then refused.
    for (let i = 0; i < 9; i++) expect(await workers[i % 2].check('zuul', `guess-${i}`, { address: '192.0.2.3' })).toBeNull();
    await expect(workers[0].check('zuul', `guess-9`, { address: '192.0.2.3' })).rejects.toBeInstanceOf(LoginRefused);
  });

  it('a clear from one worker drops every entry, and an answer looked up before it is not stored after it', async () => {
    const { shared } = await setup();
    const [a, b] = [1, 2].map((owner) => link(shared.handlers(owner)).toPrimary);
    const [ca, cb] = await Promise.all([ClusterLoginCache.connect(a), ClusterLoginCache.connect(b)]);
    ca.remember('zuul', 'right', true, ca.generation); // not looked up first: nothing to send
    expect(await ca.lookup('zuul', 'right')).toBeUndefined();
    ca.remember('zuul', 'right', true, ca.generation);
    expect(await cb.lookup('zuul', 'right')).toBe('good');
    expect(await cb.lookup('zuul', 'x')).toBeUndefined(); // b's check of x begins
    ca.clear(); // a reloads htpasswd
    expect(await cb.lookup('zuul', 'right')).toBeUndefined();
    cb.remember('zuul', 'x', true, cb.generation); // b's check ends, from entries that may be old
    expect(await ca.lookup('zuul', 'x')).toBeUndefined();
  });

  it('a worker that exits mid-check keeps its token spent', async () => {
    const { shared } = await setup();
    const primary = link(shared.handlers(7)).toPrimary;
    const limiter = new ClusterLimiter(primary);
    await limiter.reserve('192.0.2.9');
    shared.dropOwner(7);
    // Nine left for that address.
    for (let i = 0; i < 9; i++) await (await limiter.reserve('192.0.2.9')).keep();
    await new Promise((r) => setTimeout(r, 10));
    await expect(limiter.reserve('192.0.2.9')).rejects.toBeInstanceOf(LoginRefused);
  });
});
