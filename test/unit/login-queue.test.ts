/**
 * The password-check queue is shared out by client prefix (src/auth/login-queue.ts): no address or /24 fills it, the
 * next check comes from the prefix with the fewest failures, and a full queue drops the worst prefix's waiting work,
 * never a clean prefix's first check. Real bcrypt on a one-thread pool (cost 4: milliseconds).
 */
import bcrypt from 'bcryptjs';
import { afterEach, describe, expect, it } from 'vitest';
import { BcryptPool, PoolBusy } from '../../src/auth/bcrypt-pool.js';
import { LoginQueue, sourceOf } from '../../src/auth/login-queue.js';

const hash = bcrypt.hashSync('right', 4);
const pools: BcryptPool[] = [];
afterEach(async () => {
  for (const p of pools.splice(0)) await p.close();
});
// A still clock: failures counted a few ms apart on a slow machine would otherwise decay to different loads.
const pool = (maxWaiting: number) => {
  const p = new BcryptPool({ size: 1, maxWaiting, now: () => 0 });
  pools.push(p);
  return p;
};
const settle = (p: Promise<boolean>) => p.then(() => 'ok', (err) => (err instanceof PoolBusy ? 'busy' : String(err)));

describe('client prefixes', () => {
  it('counts IPv4 by /24 and IPv6 by /56 (addresses by /64), mapped IPv4 as IPv4', () => {
    expect(sourceOf('127.0.5.77')).toEqual({ address: '127.0.5.77', prefix: '127.0.5.0/24' });
    expect(sourceOf('::ffff:10.1.2.3')).toEqual({ address: '10.1.2.3', prefix: '10.1.2.0/24' });
    expect(sourceOf('2001:db8:aa:bbcc:1::2')).toEqual({ address: '2001:db8:aa:bbcc::/64', prefix: '2001:db8:aa:bb00::/56' });
    expect(sourceOf('2001:db8:aa:bb01::9').prefix).toBe(sourceOf('2001:db8:aa:bbff::1').prefix);
    expect(sourceOf(undefined)).toEqual({ address: 'unknown', prefix: 'unknown' });
  });

  it('failures halve every minute', () => {
    let now = 0;
    const q = new LoginQueue(1024, () => now);
    for (let i = 0; i < 8; i++) q.failed('10.0.0.1');
    expect(q.load('10.0.0.0/24')).toBe(8);
    now = 60_000;
    expect(q.load('10.0.0.0/24')).toBeCloseTo(4);
  });
});

describe('the password-check queue', () => {
  it('refuses an address past 1/64 of the queue and a /24 past 1/16, while another /24 still gets in', async () => {
    const p = pool(128); // shares: 2 per address, 8 per /24
    const checks = [p.compare('right', hash, 0, undefined, '10.0.0.1')]; // taken by the worker at once
    checks.push(p.compare('right', hash, 0, undefined, '10.0.0.1'), p.compare('right', hash, 0, undefined, '10.0.0.1'));
    const third = settle(p.compare('right', hash, 0, undefined, '10.0.0.1'));
    for (let i = 2; i < 5; i++) checks.push(p.compare('right', hash, 0, undefined, `10.0.0.${i}`), p.compare('right', hash, 0, undefined, `10.0.0.${i}`));
    const ninth = settle(p.compare('right', hash, 0, undefined, '10.0.0.9'));
    const other = p.compare('right', hash, 0, undefined, '10.0.1.1');
    expect([await third, await ninth]).toEqual(['busy', 'busy']);
    expect(await Promise.all([...checks, other])).toEqual(Array(checks.length + 1).fill(true));
  });

  it('serves a clean /24 before a /24 that has failed, whatever the addresses and the order of arrival', async () => {
    const p = pool(1024);
    for (let i = 0; i < 5; i++) p.failed(`127.0.5.${i}`);
    const done: string[] = [];
    const run = (label: string, address: string) => p.compare('right', hash, 1, undefined, address).then(() => void done.push(label));
    await Promise.all([run('busy', '127.0.5.1'), run('guess-1', '127.0.5.2'), run('guess-2', '127.0.5.3'), run('clean', '127.0.6.1'), run('guess-3', '127.0.5.4')]);
    expect(done).toEqual(['busy', 'clean', 'guess-1', 'guess-2', 'guess-3']);
  });

  it('when full, refuses waiting checks of the prefix with the most failures to let a clean prefix in, never the other way', async () => {
    const p = pool(16); // shares: 1 per address, 1 per /24: sixteen /24s fill it
    for (let i = 0; i < 2; i++) p.failed('10.9.0.1');
    const attackers: Promise<string>[] = [settle(p.compare('right', hash, 0, undefined, '10.9.0.1'))]; // running
    for (let i = 1; i <= 16; i++) {
      p.failed(`10.9.${i}.1`);
      attackers.push(settle(p.compare('right', hash, 0, undefined, `10.9.${i}.1`)));
    }
    // Full. A prefix with more failures than those waiting cannot push them out...
    const another = settle(p.compare('right', hash, 0, undefined, '10.9.0.2'));
    // ...but a clean one does: one attacker's waiting check is refused instead.
    const clean = settle(p.compare('right', hash, 0, undefined, '192.0.2.1'));
    for (let i = 0; i < 3; i++) p.failed('10.9.3.1');
    const second = settle(p.compare('right', hash, 0, undefined, '192.0.3.1'));
    expect([await clean, await second]).toEqual(['ok', 'ok']);
    // The first clean check refused one of the equally failing (the first); the second, the one that failed most.
    expect((await Promise.all(attackers)).map((r, i) => (r === 'busy' ? i : -1)).filter((i) => i >= 0)).toEqual([1, 3]);
    expect(await another).toBe('busy');
  });
});
