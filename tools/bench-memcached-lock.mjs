#!/usr/bin/env node
// What the memcached upload lock costs a request: take + release pairs (add; gets + cas) against a real memcached
// started here on a free loopback port (never Swift's 11211), then what a request waits when that server is dead
// (refused, then inside the backoff) or hung (SIGSTOP: the deadline once, then the backoff).
// usage: node tools/bench-memcached-lock.mjs [--pairs 2000] (run `npm run build` first). Prints one JSON line.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { userInfo } from 'node:os';
import { parseArgs } from 'node:util';
import { MemcachedLocks } from '../dist/locks/memcached.js';

const { values } = parseArgs({ options: { pairs: { type: 'string', default: '2000' } } });
const pairs = Number(values.pairs);

const port = await new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  });
});
const args = ['-p', String(port), '-l', '127.0.0.1', '-U', '0', '-t', '1', '-m', '8', ...(userInfo().uid === 0 ? ['-u', 'root'] : [])];
const memcached = spawn('memcached', args, { stdio: 'ignore' });
for (let i = 0; i < 100; i++) {
  const ok = await new Promise((resolve) => net.createConnection({ host: '127.0.0.1', port }).once('connect', function () { this.destroy(); resolve(true); }).once('error', () => resolve(false)));
  if (ok) break;
  await new Promise((r) => setTimeout(r, 50));
}

const ms = (list) => {
  list.sort((a, b) => a - b);
  const at = (q) => +list[Math.min(list.length - 1, Math.floor(q * list.length))].toFixed(3);
  return { median: at(0.5), p99: at(0.99), max: +list[list.length - 1].toFixed(3) };
};

try {
  const locks = new MemcachedLocks([{ host: '127.0.0.1', port }], { timeoutMs: 1000 });
  const taken = [];
  const held = [];
  for (let i = 0; i < pairs; i++) {
    const path = `_local/uploads/bench-${i}/lock`;
    let t = performance.now();
    const lock = await locks.tryLock(path, 30_000);
    taken.push(performance.now() - t);
    t = performance.now();
    await lock.release();
    held.push(performance.now() - t);
  }
  // A refusal is one add too: the common answer to a waiting request.
  const holder = await locks.tryLock('_local/uploads/busy/lock', 30_000);
  const refused = [];
  for (let i = 0; i < pairs; i++) {
    const t = performance.now();
    if ((await locks.tryLock('_local/uploads/busy/lock', 30_000)) !== null) throw new Error('not refused');
    refused.push(performance.now() - t);
  }
  await holder.release();

  memcached.kill('SIGSTOP');
  await new Promise((r) => setTimeout(r, 200));
  const hung = [];
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    await locks.tryLock(`_local/uploads/hung-${i}/lock`, 30_000).catch(() => null);
    hung.push(performance.now() - t);
  }
  memcached.kill('SIGCONT');
  memcached.kill('SIGKILL');
  await new Promise((r) => memcached.once('exit', r));
  const dead = [];
  for (let i = 0; i < 200; i++) {
    const t = performance.now();
    await locks.tryLock(`_local/uploads/dead-${i}/lock`, 30_000).catch(() => null);
    dead.push(performance.now() - t);
  }
  await locks.close();
  console.log(JSON.stringify({ pairs, acquireMs: ms(taken), releaseMs: ms(held), refusedMs: ms(refused), hungServerMs: hung.map((x) => +x.toFixed(1)), deadServerMs: ms(dead) }));
} finally {
  if (memcached.exitCode === null && memcached.signalCode === null) memcached.kill('SIGKILL');
}
