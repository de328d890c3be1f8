#!/usr/bin/env node
// Open uploads in one namespace until refused (issue 16 item 7: 3,000 in 40 s were all accepted). Held: a POST is
// refused with 429 TOOMANYREQUESTS before the count runs out (the default limit is 1,000 active uploads), and
// uploads are still accepted once those are cancelled. Every upload it opens, it cancels.
// Module: `export async function run(ctx)` as in patch-flood.mjs. Standalone: node tools/abuse/upload-flood.mjs
// [--url URL] [--scale small|full].
import { pathToFileURL } from 'node:url';
import { api, startLocal } from './lib/storage-client.mjs';

const COUNTS = { small: 1100, full: 3000 };

export async function run(ctx) {
  const count = COUNTS[ctx.scale] ?? COUNTS.small;
  const client = await api(ctx, 'abuse/upload-flood');
  const opened = [];
  let refused = null;
  const t0 = performance.now();
  for (let i = 0; i < count && !refused; i++) {
    const res = await client.request('POST', '/blobs/uploads/');
    if (res.status === 202) opened.push(res.headers.location);
    else refused = { at: i, status: res.status, code: safeCode(res.body) };
  }
  const seconds = (performance.now() - t0) / 1000;
  for (const location of opened) await client.request('DELETE', location);
  const after = await client.request('POST', '/blobs/uploads/');
  if (after.status === 202) await client.request('DELETE', after.headers.location);
  const detail = { opened: opened.length, refused, seconds: +seconds.toFixed(1), acceptedAfterCancel: after.status === 202 };
  const held = refused?.status === 429 && refused.code === 'TOOMANYREQUESTS' && after.status === 202;
  ctx.log?.(`upload-flood: ${JSON.stringify(detail)}`);
  return { attack: `up to ${count} open uploads in one namespace`, held, detail };
}

function safeCode(body) {
  try {
    return JSON.parse(body).errors[0].code;
  } catch {
    return null;
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { values, local } = await startLocal();
  try {
    const result = await run({ url: values.url ?? local.url, scale: values.scale, log: console.error });
    console.log(JSON.stringify(result));
    process.exitCode = result.held ? 0 : 1;
  } finally {
    await local?.stop();
  }
}
