#!/usr/bin/env node
// Many one-byte PATCHes on one upload, then the PUT: the record must not cost more per PATCH as chunks pile up
// (issue 16 item 7: 5,000 of them grew the record to 179 KB, rewritten on every PATCH, and the PUT took 29 s).
// Held: the last PATCHes cost at most 3x the first ones (plus 2 ms) and the PUT answers 201 within 10 s.
// Module: `export async function run(ctx)`, ctx = { url, user, password, scale: 'small'|'full', log, root? } ->
// { attack, held, detail }. Standalone: node tools/abuse/patch-flood.mjs [--url URL] [--scale small|full]; without
// --url it serves a fresh filesystem store from dist/cli.js (run `npx tsc -p tsconfig.build.json` first).
import { createHash } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { api, startLocal } from './lib/storage-client.mjs';

const COUNTS = { small: 400, full: 5000 };
/** PATCHes averaged at each end of the run. */
const WINDOW = 100;

export async function run(ctx) {
  const count = COUNTS[ctx.scale] ?? COUNTS.small;
  const client = await api(ctx, 'abuse/patch-flood');
  const started = await client.request('POST', '/blobs/uploads/');
  if (started.status !== 202) throw new Error(`POST answered ${started.status}`);
  let location = started.headers.location;
  const hash = createHash('sha256');
  const times = [];
  let refused = null;
  const t0 = performance.now();
  for (let i = 0; i < count; i++) {
    const byte = Buffer.from([i & 0xff]);
    const t = performance.now();
    const res = await client.request('PATCH', location, byte, { 'Content-Range': `${i}-${i}`, 'Content-Type': 'application/octet-stream' });
    times.push(performance.now() - t);
    if (res.status !== 202) {
      refused = { at: i, status: res.status, body: res.body.slice(0, 200) };
      break;
    }
    hash.update(byte);
    location = res.headers.location;
  }
  const patchSeconds = (performance.now() - t0) / 1000;
  const avg = (xs) => xs.reduce((a, b) => a + b, 0) / Math.max(xs.length, 1);
  const firstMs = avg(times.slice(0, WINDOW));
  const lastMs = avg(times.slice(-WINDOW));
  // Given a filesystem server's storage root (ctx.root), the record's size just before the commit.
  const id = location.split('?')[0].split('/').pop();
  const recordBytes = ctx.root
    ? readdirSync(ctx.root).map((ns) => statSync(`${ctx.root}/${ns}/uploads/${id}/metadata`, { throwIfNoEntry: false })?.size).find((n) => n !== undefined)
    : undefined;
  const t1 = performance.now();
  const put = await client.request('PUT', `${location}${location.includes('?') ? '&' : '?'}digest=sha256:${hash.digest('hex')}`, Buffer.alloc(0));
  const putSeconds = (performance.now() - t1) / 1000;
  const detail = {
    patches: times.length,
    refused,
    patchSeconds: +patchSeconds.toFixed(2),
    firstPatchMs: +firstMs.toFixed(2),
    lastPatchMs: +lastMs.toFixed(2),
    recordBytes,
    putStatus: put.status,
    putSeconds: +putSeconds.toFixed(2),
  };
  const held = refused === null && put.status === 201 && lastMs <= 3 * firstMs + 2 && putSeconds < 10;
  ctx.log?.(`patch-flood: ${JSON.stringify(detail)}`);
  return { attack: `${count} one-byte PATCHes on one upload, then PUT`, held, detail };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { values, local } = await startLocal();
  try {
    const result = await run({ url: values.url ?? local.url, root: local?.root, scale: values.scale, log: console.error });
    console.log(JSON.stringify(result));
    process.exitCode = result.held ? 0 : 1;
  } finally {
    await local?.stop();
  }
}
