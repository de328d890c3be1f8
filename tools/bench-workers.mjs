#!/usr/bin/env node
// Small requests against `workers: 1` and `workers: 2` (or any list) in one run: one Berth per setting on the
// filesystem (tmpfs), all started at once, then rounds of HEAD blob and GET manifest with tools/load.mjs, the
// settings taking turns within each round (the order flips every round) so that they share the machine's noise.
// usage: node tools/bench-workers.mjs [--workers 1,2] [--rounds 6] [--seconds 3] [--connections 32]
// Prints every round's req/s and the median of each setting's per-round ratio to the first. Needs dist/ (npm run build).
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { load } from './load.mjs';

const { values: args } = parseArgs({
  options: {
    workers: { type: 'string', default: '1,2' },
    rounds: { type: 'string', default: '6' },
    seconds: { type: 'string', default: '3' },
    connections: { type: 'string', default: '32' },
  },
});
const settings = args.workers.split(',').map(Number);
const repoRoot = new URL('..', import.meta.url).pathname;
const work = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'berth-bench-workers-'));
const sha = (b) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function start(workers) {
  const dir = join(work, `w${workers}`);
  const file = `${dir}.yaml`;
  await writeFile(file, `registry:\n  address: 127.0.0.1\n  port: 0\n  workers: ${workers}\n  storage:\n    driver: filesystem\n    root: ${dir}\n`);
  // The access log goes to a file, as to journald: a pipe read by this process, busy generating the load, fills
  // up, and pino's synchronous writes then sleep 100 ms on each EAGAIN.
  const log = await open(`${dir}.log`, 'w');
  const child = spawn(process.execPath, ['--single-threaded-gc', join(repoRoot, 'dist/cli.js'), '-c', file, 'serve'], { stdio: ['ignore', log.fd, 'inherit'] });
  await log.close();
  let port;
  for (let i = 0; i < 600 && !port; i++) {
    if (child.exitCode !== null) throw new Error(`berth (workers: ${workers}) exited with ${child.exitCode}`);
    port = Number(/berth listening on port (\d+)/.exec(await readFile(`${dir}.log`, 'utf8'))?.[1]);
    if (!port) await new Promise((r) => setTimeout(r, 100));
  }
  const url = `http://127.0.0.1:${port}`;
  // A small image: a 1 KiB layer, its config and a manifest.
  const push = async (data) => {
    const res = await fetch(`${url}/v2/bench/small/blobs/uploads/?digest=${sha(data)}`, { method: 'POST', body: data });
    if (res.status !== 201) throw new Error(`push: ${res.status}`);
    return { digest: sha(data), size: data.length };
  };
  const layer = await push(randomBytes(1024));
  const config = await push(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [layer.digest] } })));
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
  });
  const res = await fetch(`${url}/v2/bench/small/manifests/v1`, { method: 'PUT', headers: { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json' }, body: manifest });
  if (res.status !== 201) throw new Error(`manifest: ${res.status}`);
  return { workers, child, logFile: `${dir}.log`, head: `${url}/v2/bench/small/blobs/${layer.digest}`, get: `${url}/v2/bench/small/manifests/v1` };
}

/** CPU seconds (user + system) of a server: the process and, with workers, its children. */
function cpuOf(pid) {
  const stat = (p) => {
    try {
      const t = readFileSync(`/proc/${p}/stat`, 'utf8');
      return t.slice(t.lastIndexOf(')') + 2).split(' ');
    } catch {
      return null;
    }
  };
  const ticks = (f) => (Number(f[11]) + Number(f[12])) / 100;
  let total = ticks(stat(pid));
  for (const d of readdirSync('/proc')) {
    const f = /^\d+$/.test(d) ? stat(d) : null;
    if (f && Number(f[1]) === pid) total += ticks(f);
  }
  return total;
}

/** Requests each process logged since the log's byte `from` (is the load spread over the workers?). */
function spread(s, from) {
  const counts = {};
  const text = readFileSync(s.logFile, 'utf8').slice(from);
  for (const m of text.matchAll(/"pid":(\d+)[^\n]*"msg":"request"/g)) counts[m[1]] = (counts[m[1]] ?? 0) + 1;
  return Object.values(counts).sort((a, b) => b - a);
}

const servers = await Promise.all(settings.map(start));
servers.forEach((s, i) => (s.index = i));
const opts = { seconds: Number(args.seconds), connections: Number(args.connections) };
// By position in --workers, so that a setting may be listed twice (1,2,1,2: how far apart are equal settings?).
const figures = settings.map(() => ({ head: [], get: [], cpu: [] }));
try {
  for (let r = 0; r < Number(args.rounds); r++) {
    const order = r % 2 ? [...servers].reverse() : servers;
    const line = [];
    for (const s of order) {
      const cpu = cpuOf(s.child.pid);
      const from = readFileSync(s.logFile, 'utf8').length;
      const head = await load(s.head, { ...opts, method: 'HEAD' });
      const get = await load(s.get, { ...opts, method: 'GET' });
      if (head.errors || get.errors) throw new Error(`workers ${s.workers}: ${head.errors + get.errors} errors`);
      const requests = (head.rps + get.rps) * opts.seconds;
      const cpuMsPerRequest = ((cpuOf(s.child.pid) - cpu) * 1000) / requests;
      figures[s.index].head.push(head.rps);
      figures[s.index].get.push(get.rps);
      figures[s.index].cpu.push(cpuMsPerRequest);
      line.push(`workers ${s.workers}: HEAD blob ${head.rps.toFixed(0)}, GET manifest ${get.rps.toFixed(0)} req/s, ${cpuMsPerRequest.toFixed(2)} CPU ms/request, per process ${spread(s, from).join('/')}`);
    }
    process.stdout.write(`round ${r + 1}: ${line.join('; ')}\n`);
  }
  for (let j = 1; j < settings.length; j++) {
    const ratio = (k) => median(figures[j][k].map((x, i) => x / figures[0][k][i])).toFixed(2);
    process.stdout.write(`workers ${settings[j]} / workers ${settings[0]}, median of per-round ratios: HEAD blob ${ratio('head')}, GET manifest ${ratio('get')}\n`);
  }
  settings.forEach((w, j) => {
    process.stdout.write(`workers ${w} medians: HEAD blob ${median(figures[j].head).toFixed(0)}, GET manifest ${median(figures[j].get).toFixed(0)} req/s, ${median(figures[j].cpu).toFixed(2)} CPU ms/request\n`);
  });
} finally {
  await Promise.all(servers.map((s) => new Promise((resolve) => (s.child.once('exit', resolve), s.child.kill('SIGTERM')))));
  await rm(work, { recursive: true, force: true });
}
