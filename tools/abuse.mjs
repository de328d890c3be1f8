#!/usr/bin/env node
// Attacks a live Berth as a hostile client would, and says for each whether the server held.
//
// usage: node tools/abuse.mjs --url http://127.0.0.1:9000 [--tls-url https://127.0.0.1:9443] --user NAME
//          [--password PW | env BERTH_ABUSE_PASSWORD] [--scale small|full] [--only connections,stalled-body]
//          [--handshake 10] [--headers 10] [--body-idle 60] [--send-idle 60]   (the server's registry.timeouts, s)
//          [--root DIR]   (a filesystem server's storage root: checked for left-over temporary files)
//          [--max-blob-mib N]   (the server's registry.limits.max-blob-size, when small enough to stream past)
//          [--all-at-once [--rss-limit 500]]   (run the selected modules concurrently while polling /readyz and RSS)
//
// Every module in tools/abuse/*.mjs exports `async function run(ctx)` returning `{ attack, held, detail }` (or an
// array of them). ctx: { url, tlsUrl, user, password, scale, log, timeouts, root, maxBlobMib, request, pidOf, fds, watchFds, basic }. Each module
// is bounded in time (small: 90 s, full: 600 s); one that throws or overruns is "broken". With --all-at-once every
// selected module starts at the same time, and one more line says whether /readyz answered 200 throughout (every
// 500 ms, within 5 s each) and the server's RSS stayed under --rss-limit MB. The user must be able to
// push to its namespace. Prints `attack -> held|broken (detail)` lines; exits 1 if any broke, 2 on bad usage.
// Certificates are not verified (the target is the server under test, often self-signed).
import { readdir, readFile, readlink } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    'tls-url': { type: 'string' },
    user: { type: 'string' },
    password: { type: 'string' },
    scale: { type: 'string', default: 'small' },
    only: { type: 'string' },
    handshake: { type: 'string', default: '10' },
    headers: { type: 'string', default: '10' },
    'body-idle': { type: 'string', default: '60' },
    'send-idle': { type: 'string', default: '60' },
    'max-blob-mib': { type: 'string' },
    root: { type: 'string' },
    'all-at-once': { type: 'boolean', default: false },
    'rss-limit': { type: 'string', default: '500' },
  },
});
const password = args.password ?? process.env.BERTH_ABUSE_PASSWORD;
if (!args.url || !args.user || !password || !['small', 'full'].includes(args.scale)) {
  process.stderr.write('usage: node tools/abuse.mjs --url URL [--tls-url URL] --user NAME --password PW [--scale small|full] [--only a,b]\n');
  process.exit(2);
}

const log = (m) => process.stderr.write(`abuse: ${m}\n`);

/** One request on a fresh connection; resolves with status, headers and body, whatever the status. */
function request(url, { method = 'GET', path = '/', headers = {}, body, timeoutMs = 30_000 } = {}) {
  const target = new URL(path, url);
  const lib = target.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.request(target, { method, headers: { Connection: 'close', ...headers }, agent: false, rejectUnauthorized: false, timeout: timeoutMs }, (res) => {
      const parts = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(parts) }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** The pid of the process listening on the URL's port, from /proc (Linux): its socket's inode, then whose fd. */
async function pidOf(url) {
  const port = Number(new URL(url).port);
  const inodes = new Set();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(table, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length > 9 && f[3] === '0A' && parseInt(f[1].split(':').pop(), 16) === port) inodes.add(f[9]);
    }
  }
  for (const pid of (await readdir('/proc')).filter((p) => /^\d+$/.test(p))) {
    const fds = await readdir(`/proc/${pid}/fd`).catch(() => []);
    for (const fd of fds) {
      const link = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
      const m = /^socket:\[(\d+)\]$/.exec(link);
      if (m && inodes.has(m[1])) return Number(pid);
    }
  }
  throw new Error(`no process of this user listens on port ${port}`);
}

/** Open descriptors of a process. */
const fds = async (pid) => (await readdir(`/proc/${pid}/fd`)).length;

/** Samples a process's descriptors every 100 ms; `peak()` is the most seen since the start. */
function watchFds(pid) {
  let peak = 0;
  const sample = () => fds(pid).then((n) => (peak = Math.max(peak, n)), () => {});
  const timer = setInterval(sample, 100);
  sample();
  return { peak: () => peak, stop: () => clearInterval(timer) };
}

const basic = (user, pw) => ({ Authorization: `Basic ${Buffer.from(`${user}:${pw}`).toString('base64')}` });

const ctx = {
  url: args.url.replace(/\/+$/, ''),
  tlsUrl: args['tls-url']?.replace(/\/+$/, ''),
  user: args.user,
  password,
  scale: args.scale,
  log,
  root: args.root,
  maxBlobMib: args['max-blob-mib'] ? Number(args['max-blob-mib']) : undefined,
  timeouts: { handshake: Number(args.handshake), headers: Number(args.headers), bodyIdle: Number(args['body-idle']), sendIdle: Number(args['send-idle']) },
  request,
  pidOf,
  fds,
  watchFds,
  basic,
};

const dir = new URL('./abuse/', import.meta.url).pathname;
const only = args.only?.split(',');
const modules = (await readdir(dir)).filter((f) => f.endsWith('.mjs') && (!only || only.includes(basename(f, '.mjs')))).sort();
const limitMs = args.scale === 'full' ? 600_000 : 90_000;
let broken = 0;

/** One module, bounded in time; its results, or one "broken" result when it threw or overran. */
async function runModule(file) {
  const name = basename(file, '.mjs');
  const started = Date.now();
  let results;
  try {
    const mod = await import(join(dir, file));
    let timer;
    const overrun = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`did not finish in ${limitMs / 1000} s`)), limitMs)));
    try {
      results = [await Promise.race([mod.run(ctx), overrun])].flat();
    } finally {
      clearTimeout(timer);
    }
  } catch (err) {
    results = [{ attack: name, held: false, detail: `the attack itself failed: ${err.message}` }];
  }
  log(`${name}: ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return results;
}

const report = (results) => {
  for (const r of results) {
    if (!r.held) broken++;
    process.stdout.write(`${r.attack} -> ${r.held ? 'held' : 'broken'} (${r.detail})\n`);
  }
};

if (args['all-at-once']) {
  const { watchServer } = await import('./abuse/lib/server-watch.mjs');
  const watch = await watchServer(ctx, Number(args['rss-limit']));
  const all = await Promise.all(modules.map(runModule));
  report([...all.flat(), await watch.stop(modules.map((f) => basename(f, '.mjs')))]);
} else {
  for (const file of modules) report(await runModule(file));
}
process.exit(broken ? 1 : 0);
