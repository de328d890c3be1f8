#!/usr/bin/env node
// Seeded fuzzing of the HTTP API against a live `berth serve`: paths, methods, headers, ranges and bodies, valid
// and hostile. Checks: no 5xx, no crash, no internal path or stack trace in any response, memory stable, and every
// upload the server accepted (201 with a digest) still verifies byte for byte.
// Memory: the server's RSS is read after a warm-up (the first 10% of the requests, when the heap and caches have
// grown to their working size) and again at the end; it may grow by at most --rss-growth-mb or
// --rss-growth-pct percent of the warm RSS, whichever is larger: room for the heap's and the allocator's own
// growth, not for a per-request leak, which over a long run (--requests 10000 or more) crosses it. Exit 1 on any
// 5xx, leak, crash, unverified upload or growth past that bound.
// usage: node tools/fuzz.mjs [--requests 10000] [--seed 1] [--concurrency 16] [--backend filesystem|swift]
//        [--rss-growth-mb 64] [--rss-growth-pct 50]
// (run `npm run build` first)
import { spawn, execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { dropContainer } from './swift-lib.mjs';

const run = promisify(execFile);
const root = new URL('..', import.meta.url).pathname;
const { values: args } = parseArgs({
  options: {
    requests: { type: 'string', default: '10000' },
    seed: { type: 'string', default: '1' },
    concurrency: { type: 'string', default: '16' },
    backend: { type: 'string', default: 'filesystem' },
    'rss-growth-mb': { type: 'string', default: '64' },
    'rss-growth-pct': { type: 'string', default: '50' },
  },
});

let seed = Number(args.seed) >>> 0;
const rnd = () => {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const pick = (xs) => xs[Math.floor(rnd() * xs.length)];
const bytes = (n) => Buffer.from(Array.from({ length: n }, () => Math.floor(rnd() * 256)));
const sha = (b) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

const work = await mkdtemp(join(tmpdir(), 'berth-fuzz-'));
const container = `berth-fuzz-${randomBytes(4).toString('hex')}`;
const storage =
  args.backend === 'swift'
    ? `  storage:\n    driver: swift\n    cloud: berth-test\n    container: ${container}\n    clouds-file: ${(await run(join(root, 'tools/swift-aio.sh'), ['start'])).stdout.trim().split('\n').pop()}\n`
    : `  storage:\n    driver: filesystem\n    root: ${join(work, 'data')}\n`;
await writeFile(join(work, 'registry.yaml'), `registry:\n  address: 127.0.0.1\n  port: 0\n${storage}`);
const server = spawn('node', [join(root, 'dist/cli.js'), '-c', join(work, 'registry.yaml'), 'serve'], { stdio: ['ignore', 'pipe', 'pipe'] });
let crashed = null;
server.once('exit', (code, sig) => (crashed = `exited ${code ?? sig}`));
const port = await new Promise((resolve) => {
  let out = '';
  server.stdout.on('data', (d) => {
    out += d;
    const m = /berth listening on port (\d+)/.exec(out);
    if (m) resolve(Number(m[1]));
  });
});
server.stdout.resume();
server.stderr.resume();
const rss = () => Number(/VmRSS:\s+(\d+)/.exec(require_('/proc/' + server.pid + '/status'))?.[1] ?? 0) / 1024;
function require_(f) {
  try {
    return require('node:fs').readFileSync(f, 'utf8');
  } catch {
    return '';
  }
}
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);

// ---- the generator ----
const goodDigest = () => sha(bytes(8));
const names = () => pick(['app', 'a/b/c', 'team/app', 'x'.repeat(300), 'UPPER', 'a..b', '-lead', 'a/../b', '%2e%2e/x', 'a%2Fb', 'ünï', 'a//b', '_catalog', 'a_b__c', 'a-_b']);
const refs = () => pick(['latest', 'v1', goodDigest(), 'sha256:xyz', 'md5:abc', 'sha512:' + 'a'.repeat(128), '..', '%2e%2e', 'a'.repeat(200), '-x', 'TAG.1']);
const digests = () => pick([goodDigest(), 'sha256:' + 'A'.repeat(64), 'sha256:12', 'foo:bar', '', 'sha256:' + 'a'.repeat(64) + '/../x', 'sha999:' + 'a'.repeat(64)]);
const uuids = () => pick(['00000000-0000-4000-8000-000000000000', 'nope', '../../etc', randomBytes(16).toString('hex'), '%2e%2e']);
function path() {
  const n = names();
  switch (Math.floor(rnd() * 9)) {
    case 0: return '/v2/';
    case 1: return `/v2/_catalog?n=${pick(['1', '-1', 'x', '99999999999', ''])}&last=${pick(['a', '', '%00'])}`;
    case 2: return `/v2/${n}/blobs/${digests()}`;
    case 3: return `/v2/${n}/blobs/uploads/${pick(['', `?digest=${digests()}`, `?mount=${digests()}&from=${names()}`])}`;
    case 4: return `/v2/${n}/blobs/uploads/${uuids()}${pick(['', `?digest=${digests()}`])}`;
    case 5: return `/v2/${n}/manifests/${refs()}`;
    case 6: return `/v2/${n}/tags/list?n=${pick(['0', '2', '-5', 'abc', '100000'])}&last=${pick(['a', 'zz', ''])}`;
    case 7: return `/v2/${n}/referrers/${digests()}${pick(['', '?artifactType=a/b', '?artifactType=%zz'])}`;
    default: return pick(['/', '/v2', '/v3/', '/v2/../etc/passwd', '/v2/%00', '/healthz', '/readyz', '/metrics', '/auth/token?scope=x']);
  }
}
function headers(body) {
  const h = {};
  if (rnd() < 0.3) h['Content-Range'] = pick(['0-9', `0-${body.length - 1}`, 'bytes=0-1', '5-1', '-1-3', 'x', '0-99999999999999999999']);
  if (rnd() < 0.3) h.Range = pick(['bytes=0-0', 'bytes=-5', 'bytes=5-', 'bytes=9-1', 'bytes=0-1,3-4', 'items=0-1', 'bytes=99999999-']);
  if (rnd() < 0.4) h['Content-Type'] = pick(['application/octet-stream', 'application/vnd.oci.image.manifest.v1+json', 'application/vnd.oci.image.index.v1+json', 'text/plain', 'application/vnd.docker.distribution.manifest.v1+prettyjws', '']);
  if (rnd() < 0.1) h.Authorization = pick(['Basic Zm9vOmJhcg==', 'Bearer x.y.z', 'Basic !!!', 'Bearer ']);
  return h;
}
function body() {
  switch (Math.floor(rnd() * 6)) {
    case 0: return Buffer.alloc(0);
    case 1: return bytes(Math.floor(rnd() * 4096));
    case 2: return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'a/b', digest: goodDigest(), size: 1 }, layers: [] }));
    case 3: return Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'a/b', digest: digests(), size: -1 }] }));
    case 4: return Buffer.from(pick(['{', 'null', '[]', '{"schemaVersion":1}', '"x"', '{"schemaVersion":2,"layers":"x"}']));
    default: return bytes(Math.floor(rnd() * 70000));
  }
}

const agent = new http.Agent({ keepAlive: true, maxSockets: Number(args.concurrency) });
function send(method, p, h, b) {
  return new Promise((resolve) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: p, headers: h, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('latin1') }));
      res.on('error', () => resolve({ status: -1, body: '' }));
    });
    req.on('error', (err) => resolve({ status: -1, body: String(err.code) }));
    if (h['X-Send-Short']) req.write(b.subarray(0, b.length >> 1));
    else req.end(b);
    if (h['X-Send-Short']) req.destroy();
  });
}

const result = { requests: 0, byStatus: {}, fiveHundreds: [], leaks: [], accepted: [], crashed: null };
const LEAK = /\/work\/|\/tmp\/|node_modules|\bat [\w.<>]+ \(|Error: |EACCES|ENOENT|stack/;
let issued = 0;
const N = Number(args.requests);
async function worker(until) {
  while (issued < until) {
    issued++;
    const method = pick(['GET', 'HEAD', 'PUT', 'POST', 'PATCH', 'DELETE', 'OPTIONS', 'PROPFIND', 'GET', 'POST', 'PATCH']);
    const p = path();
    const b = ['GET', 'HEAD', 'DELETE', 'OPTIONS'].includes(method) && rnd() < 0.8 ? Buffer.alloc(0) : body();
    const h = headers(b);
    if (rnd() < 0.02) h['X-Send-Short'] = '1'; // a client that goes away mid-body
    const r = await send(method, p, h, b);
    result.requests++;
    result.byStatus[r.status] = (result.byStatus[r.status] ?? 0) + 1;
    if (r.status >= 500) result.fiveHundreds.push(`${method} ${p} -> ${r.status} ${r.body.slice(0, 200)}`);
    if (LEAK.test(r.body)) result.leaks.push(`${method} ${p} -> ${r.body.slice(0, 200)}`);
    if (r.status === 201 && r.headers?.['docker-content-digest'] && /\/blobs\//.test(p)) {
      result.accepted.push({ location: r.headers.location, digest: r.headers['docker-content-digest'] });
    }
  }
}
// A few honest uploads mixed in, so that accepted uploads exist to verify.
for (let i = 0; i < 20; i++) {
  const data = bytes(1000 + i * 100);
  const r = await send('POST', `/v2/fuzz/ok/blobs/uploads/?digest=${sha(data)}`, {}, data);
  if (r.status === 201) result.accepted.push({ location: r.headers.location, digest: r.headers['docker-content-digest'] });
}
const workers = (until) => Promise.all(Array.from({ length: Number(args.concurrency) }, () => worker(until)));
/** RSS once the server is idle for a moment, so that both readings are taken in the same state. */
const settledRss = () => new Promise((r) => setTimeout(() => r(rss()), 500));
await workers(Math.floor(N / 10));
const rssStart = await settledRss();
await workers(N);
const rssEnd = await settledRss();
const rssLimit = Math.max(Number(args['rss-growth-mb']), (rssStart * Number(args['rss-growth-pct'])) / 100);
const memoryStable = rssEnd - rssStart <= rssLimit;
// Every accepted blob still verifies.
let verified = 0;
const wrong = [];
for (const a of result.accepted) {
  const r = await new Promise((resolve) => http.get({ host: '127.0.0.1', port, path: a.location }, (res) => {
    const h = createHash('sha256');
    res.on('data', (c) => h.update(c));
    res.on('end', () => resolve({ status: res.statusCode, digest: `sha256:${h.digest('hex')}` }));
  }).on('error', () => resolve({ status: -1 })));
  if (r.status === 200 && r.digest === a.digest) verified++;
  else wrong.push(`${a.location}: ${r.status}`);
}
const healthy = (await send('GET', '/healthz', {}, Buffer.alloc(0))).status === 200;
result.crashed = crashed ?? (healthy ? null : 'not answering');
server.kill('SIGTERM');
await new Promise((r) => (crashed ? r() : server.once('exit', r)));
if (args.backend === 'swift') await dropContainer(container).catch(() => {});
await rm(work, { recursive: true, force: true });
process.stdout.write(
  `${result.requests} fuzzed requests: ${result.crashed ? `CRASHED (${result.crashed})` : '0 crashes'}, ${result.fiveHundreds.length} 5xx, ` +
    `${result.leaks.length} responses leaking internals, ${verified}/${result.accepted.length} accepted uploads verify; ` +
    `memory ${memoryStable ? 'stable' : 'GREW'} (RSS ${rssStart.toFixed(0)} -> ${rssEnd.toFixed(0)} MB after warm-up, limit +${rssLimit.toFixed(0)} MB); ` +
    `statuses ${JSON.stringify(result.byStatus)}\n`,
);
for (const line of [...result.fiveHundreds, ...result.leaks, ...wrong].slice(0, 20)) process.stdout.write(`  ${line}\n`);
process.exitCode = result.crashed || result.fiveHundreds.length || result.leaks.length || wrong.length || !memoryStable ? 1 : 0;
