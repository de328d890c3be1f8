#!/usr/bin/env node
// Concurrent PATCHes of the same chunk of one upload (issue 16 item 8: all were answered 202, one was kept).
// Held: in every round exactly one 202, the others 416 RANGE_INVALID, and the upload's size is that one chunk.
// Module: `export async function run(ctx)` as in patch-flood.mjs. Standalone: node tools/abuse/patch-race.mjs
// [--url URL] [--scale small|full]. Against several processes behind a balancer on Swift, the refusal is not
// guaranteed (docs/security-storage.md); a lost chunk then fails the commit's digest check instead.
import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { api, startLocal } from './lib/storage-client.mjs';

const ROUNDS = { small: 5, full: 50 };
const PARALLEL = 8;

export async function run(ctx) {
  const rounds = ROUNDS[ctx.scale] ?? ROUNDS.small;
  const client = await api(ctx, 'abuse/patch-race');
  const broken = [];
  for (let r = 0; r < rounds; r++) {
    const location = (await client.request('POST', '/blobs/uploads/')).headers.location;
    const size = 256 * 1024;
    const statuses = await Promise.all(
      Array.from({ length: PARALLEL }, async () => {
        const res = await client.request('PATCH', location, randomBytes(size), { 'Content-Range': `0-${size - 1}`, 'Content-Type': 'application/octet-stream' });
        return res.status;
      }),
    );
    const range = (await client.request('GET', location)).headers.range;
    const accepted = statuses.filter((s) => s === 202).length;
    if (accepted !== 1 || statuses.some((s) => s !== 202 && s !== 416) || range !== `0-${size - 1}`) broken.push({ round: r, statuses, range });
    await client.request('DELETE', location);
  }
  const detail = { rounds, parallel: PARALLEL, broken };
  ctx.log?.(`patch-race: ${JSON.stringify(detail)}`);
  return { attack: `${PARALLEL} concurrent PATCHes of one chunk, ${rounds} rounds`, held: broken.length === 0, detail };
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
