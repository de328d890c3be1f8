#!/usr/bin/env node
// One-chunk blobs on Swift (issue 18): is a blob of ONE upload chunk better committed as (a) a one-segment SLO at
// blobs/<d>/data naming the chunk where the upload wrote it (no copy), or (b) today's plain object (a server-side
// copy of the chunk to blobs/<d>/data, then a delete of the chunk)?
// usage: node tools/bench-one-chunk.mjs [--reps 5] [--sizes 1k,64k,1m,8m,32m,64m] [--rate-n 200]
//                                       [--out .bench/one-chunk.json]
// Measures on the real Swift of tools/swift-aio.sh (started if it is not running), in a fresh container that is
// deleted at the end, per blob size, --reps times (median, min-max, milliseconds):
//  - commit: (b) as writes.ts `move` does it (HEAD of the target, HEAD of the chunk, PUT with X-Copy-From, DELETE of
//    the chunk), and the copy alone; (a) one `?multipart-manifest=put` with the SLO ETag and If-None-Match: *, as
//    writes.ts `putManifest` sends it.
//  - whole reads, to the last byte: (b) a GET as reads.ts `get` sends it (`?multipart-manifest=get`, which a plain
//    object answers with its bytes); (a) as Berth reads it (the manifest with `?multipart-manifest=get`, then the
//    segment); (a) through Swift's SLO middleware (a plain GET of the manifest); a HEAD of each (reads.ts `stat`).
//  - temp URLs (signed as src/storage/swift/temp-url.ts does, with a container key): a GET of (b) and of (a).
//  - small-blob rate: --rate-n sequential whole GETs of the 1 KiB blob each way, in rounds that alternate the ways.
// HTTP goes through node-fetch on a keep-alive agent, as Berth's Swift client does. The ways alternate within each
// repetition. Not a test: figures drift between runs on a shared machine; compare the columns of one run.
import { execFile } from 'node:child_process';
import { createHash, createHmac, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import fetch from 'node-fetch';
import { dropContainer, swiftSession } from './swift-lib.mjs';

const repoRoot = new URL('..', import.meta.url).pathname;
const { values: args } = parseArgs({
  options: {
    reps: { type: 'string', default: '5' },
    sizes: { type: 'string', default: '1k,64k,1m,8m,32m,64m' },
    'rate-n': { type: 'string', default: '200' },
    out: { type: 'string', default: '.bench/one-chunk.json' },
  },
});
const REPS = Number(args.reps);
const RATE_N = Number(args['rate-n']);
const UNITS = { k: 1024, m: 1024 ** 2 };
const SIZES = args.sizes.split(',').map((s) => Number(s.slice(0, -1)) * UNITS[s.at(-1).toLowerCase()]);
if (!(REPS >= 1) || !(RATE_N >= 1) || SIZES.some((n) => !(n >= 1))) throw new Error('bad --reps, --rate-n or --sizes');
const log = (...a) => process.stderr.write(`bench-one-chunk: ${a.join(' ')}\n`);

// ---------- Swift ----------
const cloudsFile = (await promisify(execFile)(join(repoRoot, 'tools/swift-aio.sh'), ['start'])).stdout.trim().split('\n').pop();
const authUrl = /auth_url:\s*(\S+)/.exec(readFileSync(cloudsFile, 'utf8'))[1];
const session = await swiftSession(authUrl);
const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
const container = `bench-onechunk-${randomBytes(4).toString('hex')}`;
const ns = 'bench';
const TEMP_URL_KEY = randomBytes(16).toString('hex');
const enc = (key) => key.split('/').map(encodeURIComponent).join('/');
const url = (key, query = '') => `${session.url}/${container}/${enc(key)}${query}`;

async function swift(method, key, { query = '', headers = {}, body } = {}) {
  return fetch(url(key, query), { method, agent, body, headers: { 'X-Auth-Token': session.token, ...headers } });
}
/** Read a body to its end without keeping it; returns the byte count. */
async function consume(res) {
  let n = 0;
  for await (const chunk of res.body) n += chunk.length;
  return n;
}
function expect(res, statuses, what) {
  if (!statuses.includes(res.status)) throw new Error(`${what}: HTTP ${res.status}`);
}
const ms = async (fn) => {
  const t = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t) / 1e6;
};
const unquote = (s) => s?.replace(/^"|"$/g, '');

function tempUrl(key) {
  const expires = Math.floor(Date.now() / 1000) + 600;
  const path = `${decodeURIComponent(new URL(session.url).pathname)}/${container}/${key}`;
  const sig = createHmac('sha256', TEMP_URL_KEY).update(`GET\n${expires}\n${path}`).digest('hex');
  return `${url(key)}?temp_url_sig=${sig}&temp_url_expires=${expires}`;
}

// ---------- the ways ----------
async function putChunk(data) {
  const key = `${ns}/uploads/${randomUUID()}/0.${randomBytes(4).toString('hex')}`;
  const md5 = createHash('md5').update(data).digest('hex');
  const res = await swift('PUT', key, { body: data, headers: { ETag: md5, 'Content-Type': 'application/octet-stream' } });
  await consume(res);
  expect(res, [201], `PUT ${key}`);
  return { key, md5, size: data.length };
}

/** (b) writes.ts move with ifAbsent: HEAD target, HEAD source, copy, check ETag, delete source. Returns the copy's ms. */
async function commitCopy(chunk, dst) {
  const absent = await swift('HEAD', dst);
  await consume(absent);
  expect(absent, [404], `HEAD ${dst}`);
  const head = await swift('HEAD', chunk.key);
  await consume(head);
  expect(head, [200], `HEAD ${chunk.key}`);
  let copy;
  const copyMs = await ms(async () => {
    copy = await swift('PUT', dst, { headers: { 'X-Copy-From': `/${encodeURIComponent(container)}/${enc(chunk.key)}`, 'Content-Length': '0' } });
    await consume(copy);
  });
  expect(copy, [201], `copy to ${dst}`);
  if (unquote(copy.headers.get('etag')) !== chunk.md5) throw new Error(`copy to ${dst}: ETag differs`);
  const del = await swift('DELETE', chunk.key);
  await consume(del);
  expect(del, [204], `DELETE ${chunk.key}`);
  return copyMs;
}

/** (a) writes.ts putManifest with ifAbsent: one segment naming the chunk in place. */
async function commitSlo(chunk, dst) {
  const expected = createHash('md5').update(chunk.md5).digest('hex');
  const body = Buffer.from(JSON.stringify([{ path: `/${container}/${chunk.key}`, etag: chunk.md5, size_bytes: chunk.size }]));
  const res = await swift('PUT', dst, {
    query: '?multipart-manifest=put',
    body,
    headers: { 'Content-Type': 'application/octet-stream', ETag: expected, 'If-None-Match': '*' },
  });
  await consume(res);
  expect(res, [201], `SLO PUT ${dst}`);
  if (unquote(res.headers.get('etag')) !== expected) throw new Error(`SLO PUT ${dst}: ETag differs`);
}

/** reads.ts get: `?multipart-manifest=get`; an SLO's segments are then read directly, each checked. */
async function berthGet(key, size) {
  const res = await swift('GET', key, { query: '?multipart-manifest=get' });
  expect(res, [200], `GET ${key}`);
  if (res.headers.get('x-static-large-object') !== 'True') {
    if ((await consume(res)) !== size) throw new Error(`GET ${key}: short`);
    return;
  }
  const segments = await res.json();
  let got = 0;
  for (const seg of segments) {
    const segKey = seg.name.slice(container.length + 2);
    const s = await swift('GET', segKey);
    expect(s, [200], `GET ${segKey}`);
    if (Number(s.headers.get('content-length')) !== seg.bytes || unquote(s.headers.get('etag')) !== seg.hash) throw new Error(`segment ${segKey} differs`);
    got += await consume(s);
  }
  if (got !== size) throw new Error(`GET ${key}: ${got} bytes, not ${size}`);
}
async function plainGet(key, size) {
  const res = await swift('GET', key);
  expect(res, [200], `GET ${key}`);
  if ((await consume(res)) !== size) throw new Error(`GET ${key}: short`);
}
async function headOf(key, size) {
  const res = await swift('HEAD', key);
  await consume(res);
  expect(res, [200], `HEAD ${key}`);
  if (Number(res.headers.get('content-length')) !== size) throw new Error(`HEAD ${key}: size ${res.headers.get('content-length')}`);
}
async function tempGet(key, size) {
  const res = await fetch(tempUrl(key), { agent });
  expect(res, [200], `temp-URL GET ${key}`);
  if ((await consume(res)) !== size) throw new Error(`temp-URL GET ${key}: short`);
}
/** Once per size, untimed: every way returns the very bytes that were written. */
async function verify(keys, data) {
  const md5 = createHash('md5').update(data).digest('hex');
  const bytesOf = async (res) => createHash('md5').update(Buffer.from(await res.arrayBuffer())).digest('hex');
  const got = {
    'copy GET': await bytesOf(await swift('GET', keys.copy)),
    'SLO via middleware': await bytesOf(await swift('GET', keys.slo)),
    'copy temp URL': await bytesOf(await fetch(tempUrl(keys.copy), { agent })),
    'SLO temp URL': await bytesOf(await fetch(tempUrl(keys.slo), { agent })),
  };
  for (const [way, h] of Object.entries(got)) if (h !== md5) throw new Error(`${way}: bytes differ from those written`);
}

// ---------- statistics and output ----------
const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const median = s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  return { median: +median.toFixed(2), min: +s[0].toFixed(2), max: +s.at(-1).toFixed(2), n: s.length };
};
const fmt = (st) => (st.median >= 100 ? `${st.median.toFixed(0)} (${st.min.toFixed(0)}-${st.max.toFixed(0)})` : `${st.median.toFixed(1)} (${st.min.toFixed(1)}-${st.max.toFixed(1)})`);
const human = (n) => (n >= 2 ** 20 ? `${n / 2 ** 20} MiB` : `${n / 1024} KiB`);
const rotate = (xs, r) => xs.map((_, i) => xs[(i + r) % xs.length]);

// ---------- run ----------
const load0 = loadavg();
log(`container ${container}; sizes ${SIZES.map(human).join(', ')}; ${REPS} reps; ${RATE_N} GETs for the rate`);
let res = await fetch(`${session.url}/${container}`, { method: 'PUT', agent, headers: { 'X-Auth-Token': session.token, 'X-Container-Meta-Temp-URL-Key': TEMP_URL_KEY } });
await consume(res);
expect(res, [201, 202], 'PUT container');
const results = [];
let rate;
try {
  for (const size of SIZES) {
    const data = randomBytes(size);
    const t = { chunkPut: [], commitCopy: [], copyOnly: [], commitSlo: [], getCopy: [], getSloBerth: [], getSloMiddleware: [], headCopy: [], headSlo: [], tempCopy: [], tempSlo: [] };
    let keys;
    for (let r = 0; r < REPS; r++) {
      const d = `sha256/${createHash('sha256').update(data).digest('hex')}-${r}`;
      keys = { copy: `${ns}/blobs/${d}-copy/data`, slo: `${ns}/blobs/${d}-slo/data` };
      let forCopy, forSlo;
      t.chunkPut.push(await ms(async () => (forCopy = await putChunk(data))));
      t.chunkPut.push(await ms(async () => (forSlo = await putChunk(data))));
      const commits = [
        async () => {
          let copyMs;
          t.commitCopy.push(await ms(async () => (copyMs = await commitCopy(forCopy, keys.copy))));
          t.copyOnly.push(copyMs);
        },
        async () => t.commitSlo.push(await ms(() => commitSlo(forSlo, keys.slo))),
      ];
      for (const c of rotate(commits, r)) await c();
      if (r === 0) await verify(keys, data);
      const reads = [
        async () => t.getCopy.push(await ms(() => berthGet(keys.copy, size))),
        async () => t.getSloBerth.push(await ms(() => berthGet(keys.slo, size))),
        async () => t.getSloMiddleware.push(await ms(() => plainGet(keys.slo, size))),
        async () => t.headCopy.push(await ms(() => headOf(keys.copy, size))),
        async () => t.headSlo.push(await ms(() => headOf(keys.slo, size))),
        async () => t.tempCopy.push(await ms(() => tempGet(keys.copy, size))),
        async () => t.tempSlo.push(await ms(() => tempGet(keys.slo, size))),
      ];
      for (const read of rotate(reads, r)) await read();
    }
    const row = { size, ...Object.fromEntries(Object.entries(t).map(([k, xs]) => [k, stats(xs)])) };
    results.push(row);
    log(`${human(size)}: commit copy ${fmt(row.commitCopy)} ms, SLO ${fmt(row.commitSlo)} ms; GET copy ${fmt(row.getCopy)}, SLO ${fmt(row.getSloBerth)} ms`);

    if (size === 1024) {
      // The last repetition's 1 KiB blobs, requested RATE_N times each way, in rounds that alternate the ways.
      const ways = {
        'copy (Berth GET)': () => berthGet(keys.copy, size),
        'SLO as Berth reads it (2 GETs)': () => berthGet(keys.slo, size),
        'SLO via middleware': () => plainGet(keys.slo, size),
        'copy, temp URL': () => tempGet(keys.copy, size),
        'SLO, temp URL': () => tempGet(keys.slo, size),
        'HEAD copy': () => headOf(keys.copy, size),
        'HEAD SLO': () => headOf(keys.slo, size),
      };
      const spent = Object.fromEntries(Object.keys(ways).map((k) => [k, 0]));
      const ROUNDS = 4;
      for (let round = 0; round < ROUNDS; round++) {
        for (const [name, fn] of rotate(Object.entries(ways), round)) {
          const n = Math.round(RATE_N / ROUNDS);
          spent[name] += await ms(async () => {
            for (let i = 0; i < n; i++) await fn();
          });
        }
      }
      const n = Math.round(RATE_N / ROUNDS) * ROUNDS;
      rate = Object.fromEntries(Object.entries(spent).map(([k, v]) => [k, { requests: n, seconds: +(v / 1000).toFixed(3), perSecond: +((n * 1000) / v).toFixed(0) }]));
    }
  }
} finally {
  await dropContainer(container, session).catch((err) => log(`could not delete ${container}: ${err.message}`));
  agent.destroy();
}

// ---------- report ----------
const load1 = loadavg();
const lines = [];
lines.push(`Swift ${authUrl}, ${REPS} reps, ms as median (min-max); load average ${load0[0].toFixed(2)} at start, ${load1[0].toFixed(2)} at end`);
lines.push('');
lines.push('| size | chunk PUT | (b) commit: move | of which COPY | (a) commit: SLO PUT | saved by (a) |');
lines.push('|---|---|---|---|---|---|');
for (const r of results) {
  lines.push(`| ${human(r.size)} | ${fmt(r.chunkPut)} | ${fmt(r.commitCopy)} | ${fmt(r.copyOnly)} | ${fmt(r.commitSlo)} | ${(r.commitCopy.median - r.commitSlo.median).toFixed(1)} |`);
}
lines.push('');
lines.push('| size | GET (b) | GET (a) as Berth | GET (a) middleware | (a)/(b) Berth | HEAD (b) | HEAD (a) | temp URL (b) | temp URL (a) | (a)/(b) temp |');
lines.push('|---|---|---|---|---|---|---|---|---|---|');
for (const r of results) {
  const ratio = (a, b) => (a.median / b.median).toFixed(2);
  lines.push(
    `| ${human(r.size)} | ${fmt(r.getCopy)} | ${fmt(r.getSloBerth)} | ${fmt(r.getSloMiddleware)} | ${ratio(r.getSloBerth, r.getCopy)} | ${fmt(r.headCopy)} | ${fmt(r.headSlo)} | ${fmt(r.tempCopy)} | ${fmt(r.tempSlo)} | ${ratio(r.tempSlo, r.tempCopy)} |`,
  );
}
if (rate) {
  lines.push('');
  lines.push(`| 1 KiB blob, ${Object.values(rate)[0].requests} sequential requests | s | requests/s |`);
  lines.push('|---|---|---|');
  for (const [k, v] of Object.entries(rate)) lines.push(`| ${k} | ${v.seconds} | ${v.perSecond} |`);
}
console.log(lines.join('\n'));
const out = join(repoRoot, args.out);
await mkdir(dirname(out), { recursive: true });
await writeFile(out, JSON.stringify({ date: new Date().toISOString(), authUrl, reps: REPS, loadavg: { start: load0, end: load1 }, unit: 'ms', sizes: results, rate }, null, 2));
log(`wrote ${out}`);
