#!/usr/bin/env node
// Throughput of Berth's resumable SHA-256 (state saved and restored every chunk, as uploads do) against
// node:crypto's one-shot SHA-256 and md5, in one run. usage: node tools/bench-hash.mjs [--mib 1024] [--chunk-mib 64]
// (run `npm run build` first). Prints a table and one JSON line.
import { createHash, randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { createNobleSha256, createSha256, nativeSha256Available } from '../dist/registry/sha256state.js';

const { values } = parseArgs({ options: { mib: { type: 'string', default: '1024' }, 'chunk-mib': { type: 'string', default: '64' } } });
const total = Number(values.mib) * 2 ** 20;
const chunk = Number(values['chunk-mib']) * 2 ** 20;
const block = randomBytes(1 << 20);

function time(label, run, mib = total / 2 ** 20) {
  const runs = [];
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    run(mib);
    runs.push((performance.now() - t) / 1000);
  }
  runs.sort((a, b) => a - b);
  return { label, MBps: +((mib * 2 ** 20) / runs[1] / 1e6).toFixed(0) };
}

function resumable(create) {
  return (mib) => {
    let state;
    let done = 0;
    while (done < mib * 2 ** 20) {
      const h = create(state);
      for (let n = 0; n < chunk && done < mib * 2 ** 20; n += block.length, done += block.length) h.update(block);
      state = JSON.parse(JSON.stringify(h.state()));
    }
    create(state).digestHex();
  };
}
const plain = (alg) => (mib) => {
  const h = createHash(alg);
  for (let i = 0; i < mib; i++) h.update(block);
  h.digest();
};

const rows = [
  time('node:crypto sha256 (no saved state)', plain('sha256')),
  time(`berth resumable sha256 (${nativeSha256Available ? 'native OpenSSL' : 'noble fallback'})`, resumable(createSha256)),
  time('berth resumable sha256 (noble fallback)', resumable(createNobleSha256), Math.min(256, total / 2 ** 20)),
  time('node:crypto md5', plain('md5')),
];
for (const r of rows) console.log(`${r.label.padEnd(45)} ${String(r.MBps).padStart(6)} MB/s`);
console.log(JSON.stringify({ native: nativeSha256Available, chunkMiB: chunk / 2 ** 20, results: rows }));
