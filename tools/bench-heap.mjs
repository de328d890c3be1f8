#!/usr/bin/env node
// Berth with its allocator setting (src/registry/native-hash.ts, keepFreedHeap: freed memory kept for reuse) against
// glibc's defaults (BERTH_KEEP_FREED_HEAP=0), taking turns round by round so the shared machine's load falls on both
// alike. Each round, for each: a fresh `berth serve` on one storage; curl pushes one blob (POST, PUT ?digest= of the
// whole blob), GETs it back, and GETs another blob through the pull-through cache (a cold fill from a second Berth
// on the filesystem as the upstream). Per step: wall seconds, the server's CPU seconds and its page faults (minor),
// medians of --rounds; ratio = defaults / kept (above 1: the setting helps).
//
// usage: node tools/bench-heap.mjs [--size-mib 512] [--rounds 4] [--backend swift|filesystem]   (npm run build first)
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { parseArgs, promisify } from 'node:util';
import { dropContainer, swiftSession } from './swift-lib.mjs';

const run = promisify(execFile);
const repoRoot = new URL('..', import.meta.url).pathname;
const { values: args } = parseArgs({
  options: { 'size-mib': { type: 'string', default: '512' }, rounds: { type: 'string', default: '4' }, backend: { type: 'string', default: 'swift' } },
});
if (!['swift', 'filesystem'].includes(args.backend)) throw new Error('--backend is swift or filesystem');
const log = (...a) => process.stderr.write(`bench-heap: ${a.join(' ')}\n`);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
/** CPU seconds (user + system) and minor page faults of a process, from /proc (clock ticks are 1/100 s). */
const usage = (pid) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return { cpu: (Number(f[11]) + Number(f[12])) / 100, faults: Number(f[7]) };
};

const cloudsFile = args.backend === 'swift' ? (await run(join(repoRoot, 'tools/swift-aio.sh'), ['start'])).stdout.trim().split('\n').pop() : null;
const work = await mkdtemp(join(tmpdir(), 'berth-bench-heap-'));
const containers = [];
const servers = new Set();

/** A blob of random bytes on disk, and its digest. */
async function blob(name) {
  const file = join(work, name);
  const hash = createHash('sha256');
  let left = Number(args['size-mib']) << 20;
  await pipeline(async function* () {
    for (; left > 0; left -= 1 << 20) {
      const piece = randomBytes(Math.min(left, 1 << 20));
      hash.update(piece);
      yield piece;
    }
  }, createWriteStream(file));
  return { file, digest: `sha256:${hash.digest('hex')}` };
}

async function serve(name, storage, extra, env) {
  const config = join(work, `${name}.yaml`);
  await writeFile(config, `registry:\n  address: 127.0.0.1\n  port: 0\n${storage}${extra}`);
  const child = spawn('node', [join(repoRoot, 'dist/cli.js'), '-c', config, 'serve'], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  servers.add(child);
  child.once('exit', () => servers.delete(child));
  const port = await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /berth listening on port (\d+)/.exec(out);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`berth exited with ${code}`)));
  });
  child.stdout.resume();
  return { child, url: `http://127.0.0.1:${port}` };
}
const stop = (child) => new Promise((r) => (child.exitCode !== null ? r() : (child.once('exit', r), child.kill('SIGTERM'))));
const storageFor = (name) => {
  if (!cloudsFile) return `  storage:\n    driver: filesystem\n    root: ${join(work, name)}\n`;
  containers.push(name);
  return `  storage:\n    driver: swift\n    cloud: berth-test\n    container: ${name}\n    clouds-file: ${cloudsFile}\n`;
};
const curl = (...a) => run('curl', ['-fsS', ...a], { maxBuffer: 1 << 20 });
async function push(url, repo, { file, digest }) {
  const head = (await curl('-X', 'POST', '-D', '-', '-o', '/dev/null', `${url}/v2/${repo}/blobs/uploads/`)).stdout;
  const location = /^location: (\S+)/im.exec(head)[1];
  const target = new URL(location, url);
  target.searchParams.set('digest', digest);
  await curl('-X', 'PUT', '-H', 'content-type: application/octet-stream', '--data-binary', `@${file}`, target.href);
}
/** Wall seconds, and the server's CPU seconds and page faults, of `f`. */
async function measure(pid, f) {
  const before = usage(pid);
  const t = process.hrtime.bigint();
  await f();
  const seconds = Number(process.hrtime.bigint() - t) / 1e9;
  const after = usage(pid);
  return { seconds, cpu: after.cpu - before.cpu, faults: after.faults - before.faults };
}

const variants = [
  { label: 'kept', env: {} },
  { label: 'glibc defaults', env: { BERTH_KEEP_FREED_HEAP: '0' } },
];
const steps = ['push', 'pull', 'cold mirror GET'];
const results = variants.map(() => Object.fromEntries(steps.map((s) => [s, []])));
try {
  log(`${args['size-mib']} MiB blobs, ${args.backend}, ${args.rounds} rounds`);
  const pushed = await blob('pushed');
  const mirrored = await blob('mirrored');
  const upstream = await serve('upstream', `  storage:\n    driver: filesystem\n    root: ${join(work, 'upstream')}\n`, '', {});
  await push(upstream.url, 'bench/x', mirrored);
  for (let round = 0; round < Number(args.rounds); round++) {
    for (const i of round % 2 === 0 ? [0, 1] : [1, 0]) {
      const name = `bench-heap-${randomBytes(4).toString('hex')}`;
      const mirror = `  mirrors:\n    - {registry: quay.io, url: "${upstream.url}"}\n`;
      const { child, url } = await serve(name, storageFor(name), mirror, variants[i].env);
      await run('sync');
      const r = results[i];
      r.push.push(await measure(child.pid, () => push(url, 'bench/x', pushed)));
      r.pull.push(await measure(child.pid, () => curl('-o', '/dev/null', `${url}/v2/bench/x/blobs/${pushed.digest}`)));
      r['cold mirror GET'].push(await measure(child.pid, () => curl('-o', '/dev/null', `${url}/v2/quay.io/bench/x/blobs/${mirrored.digest}`)));
      log(`round ${round + 1} ${variants[i].label}: ${steps.map((s) => `${s} ${r[s].at(-1).seconds.toFixed(2)} s ${r[s].at(-1).cpu.toFixed(2)} CPU-s ${r[s].at(-1).faults} faults`).join('; ')}`);
      await stop(child);
    }
  }
  const rows = steps.map((s) => {
    const [k, d] = results.map((r) => ({ seconds: median(r[s].map((x) => x.seconds)), cpu: median(r[s].map((x) => x.cpu)), faults: median(r[s].map((x) => x.faults)) }));
    return `| ${s} | ${k.seconds.toFixed(2)} / ${k.cpu.toFixed(2)} / ${k.faults} | ${d.seconds.toFixed(2)} / ${d.cpu.toFixed(2)} / ${d.faults} | ${(d.seconds / k.seconds).toFixed(2)}x | ${(d.cpu / k.cpu).toFixed(2)}x |`;
  });
  process.stdout.write(
    `| ${args['size-mib']} MiB, ${args.backend}, medians of ${args.rounds} | kept: s / CPU-s / faults | glibc defaults: s / CPU-s / faults | time ratio | CPU ratio |\n|---|---|---|---|---|\n${rows.join('\n')}\n`,
  );
} finally {
  for (const c of servers) await stop(c);
  if (cloudsFile && containers.length) {
    const session = await swiftSession(/auth_url:\s*(\S+)/.exec(readFileSync(cloudsFile, 'utf8'))[1]);
    for (const c of containers) await dropContainer(c, session).catch(() => {});
  }
  await rm(work, { recursive: true, force: true });
}
