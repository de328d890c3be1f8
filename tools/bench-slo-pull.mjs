#!/usr/bin/env node
// Whole-blob pulls of one Swift SLO with curl: Berth builds side by side against a raw GET of the same SLO through
// Swift's SLO middleware, alternating round by round so that the shared machine's load falls on all of them alike.
// One blob is pushed once (one PATCH, so segments of `segment-size`); then each round GETs it once from each.
//
// usage: node tools/bench-slo-pull.mjs [--size-mib 512] [--rounds 5] [--build LABEL=DIST_DIR ...]
//   DIST_DIR is a compiled Berth (npx tsc -p tsconfig.build.json; copy dist/ aside to compare builds);
//   default: this worktree's dist/ as "berth".
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { parseArgs, promisify } from 'node:util';
import { dropContainer, swiftSession } from './swift-lib.mjs';

const run = promisify(execFile);
const repoRoot = new URL('..', import.meta.url).pathname;
const { values: args } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '512' },
    rounds: { type: 'string', default: '5' },
    build: { type: 'string', multiple: true, default: [`berth=${join(repoRoot, 'dist')}`] },
  },
});
const builds = args.build.map((b) => ({ label: b.split('=')[0], dist: b.slice(b.indexOf('=') + 1) }));
const log = (...a) => process.stderr.write(`bench-slo-pull: ${a.join(' ')}\n`);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];

const cloudsFile = (await run(join(repoRoot, 'tools/swift-aio.sh'), ['start'])).stdout.trim().split('\n').pop();
const work = await mkdtemp(join(tmpdir(), 'berth-slo-pull-'));
const container = `bench-slo-${randomBytes(4).toString('hex')}`;
const servers = [];
try {
  const layer = join(work, 'layer');
  let left = Number(args['size-mib']) << 20;
  const hash = createHash('sha256');
  await pipeline(async function* () {
    while (left > 0) {
      const piece = randomBytes(Math.min(left, 16 << 20));
      left -= piece.length;
      hash.update(piece);
      yield piece;
    }
  }, createWriteStream(layer));
  const digest = `sha256:${hash.digest('hex')}`;

  for (const b of builds) {
    const dir = await mkdtemp(join(work, 'berth-'));
    await writeFile(join(dir, 'registry.yaml'), `registry:\n  address: 127.0.0.1\n  port: 0\n  storage:\n    driver: swift\n    cloud: berth-test\n    container: ${container}\n    clouds-file: ${cloudsFile}\n`);
    servers.push({ ...b, ...(await serve(b.dist, join(dir, 'registry.yaml'))) });
  }
  const base = `http://127.0.0.1:${servers[0].port}/v2/bench/slo`;
  const post = await fetch(`${base}/blobs/uploads/`, { method: 'POST' });
  const location = new URL(post.headers.get('location'), base).href;
  const patched = await run('curl', ['-sS', '-o', '/dev/null', '-D', '-', '-X', 'PATCH', '-H', 'Content-Type: application/octet-stream', '-T', layer, location]);
  const next = new URL(/^location:\s*(\S+)/im.exec(patched.stdout)[1], base).href;
  await curl('-X', 'PUT', `${next}${next.includes('?') ? '&' : '?'}digest=${digest}`);

  const s = await swiftSession();
  const listing = await (await fetch(`${s.url}/${container}?format=json`, { headers: { 'X-Auth-Token': s.token } })).json();
  const slo = listing.find((o) => o.name.endsWith(`blobs/${digest}/data`)).name;
  const contenders = [
    { label: 'raw SLO GET', get: () => curl('-H', `X-Auth-Token: ${s.token}`, `${s.url}/${container}/${slo.split('/').map(encodeURIComponent).join('/')}`) },
    ...servers.map((b) => ({ label: b.label, get: () => curl(`http://127.0.0.1:${b.port}/v2/bench/slo/blobs/${digest}`) })),
  ];
  const times = Object.fromEntries(contenders.map((c) => [c.label, []]));
  for (let r = 0; r < Number(args.rounds); r++) {
    const order = r % 2 ? [...contenders].reverse() : contenders;
    for (const c of order) times[c.label].push(await c.get());
    log(`round ${r + 1}: ${contenders.map((c) => `${c.label} ${times[c.label][r].toFixed(2)} s`).join(', ')}`);
  }
  const raw = times['raw SLO GET'];
  console.log(`${args['size-mib']} MiB, ${args.rounds} rounds, medians (and per-round ratios raw SLO GET / Berth)`);
  for (const c of contenders) {
    const ratios = c.label === 'raw SLO GET' ? '' : ` ratio ${(median(raw) / median(times[c.label])).toFixed(2)} (${times[c.label].map((t, i) => (raw[i] / t).toFixed(2)).join(' ')})`;
    console.log(`${c.label}: ${median(times[c.label]).toFixed(2)} s (${times[c.label].map((t) => t.toFixed(2)).join(' ')})${ratios}`);
  }
} finally {
  for (const srv of servers) srv.child.kill('SIGTERM');
  await dropContainer(container).catch(() => {});
  await rm(work, { recursive: true, force: true });
}

async function curl(...a) {
  const { stdout } = await run('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code} %{time_total}', ...a]);
  const [code, time] = stdout.trim().split(' ');
  if (!code.startsWith('2')) throw new Error(`curl ${a.join(' ')}: HTTP ${code}`);
  return Number(time);
}

function serve(dist, config) {
  return new Promise((resolve, reject) => {
    const child = spawn('node', ['--single-threaded-gc', join(dist, 'cli.js'), '-c', config, 'serve'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const seen = (d) => {
      const port = /berth listening on port (\d+)/.exec(String(d))?.[1];
      if (port) resolve({ child, port: Number(port) });
    };
    child.stdout.on('data', seen);
    child.stderr.on('data', seen);
    child.once('exit', (code) => reject(new Error(`berth (${dist}) exited with ${code}`)));
  });
}
