#!/usr/bin/env node
// Pull-through caches side by side: Berth with `mirrors:` against CNCF Distribution 2.8 in proxy mode, both in front
// of one Distribution upstream (filesystem) on loopback, on the filesystem or on the Swift of tools/swift-aio.sh.
// For each: cold skopeo pulls of a one-layer image (the cache fills), a warm one (from the cache), and N concurrent
// cold pulls of a fresh image through a fresh cache, with the bytes the upstream sent for them (its access log).
//
// usage: node tools/bench-mirror.mjs [--size-mib 512] [--backend filesystem|swift] [--concurrency 8] [--trials 3] [--warm-process] [--temp-url] [--out FILE]
// --trials: cold pulls per contender (each through a fresh cache, taking turns to go first); the median is reported.
// --warm-process: each cold pull is of an image the cache has not seen, through one registry process per contender
//   that has already filled and stored one image (untimed), as a mirror that has been up for a while meets a new
//   image; by default each cold pull goes through a freshly started registry, whose first transfer also pays for its
//   start (Node's compiler and heap warming up: Berth's first 300 ms of a layer ran at a third of its later speed).
// --temp-url: Berth on Swift redirects cached blobs to temp URLs (Distribution's proxy streams them itself).
// Needs dist/ (npm run build), skopeo and /usr/bin/docker-registry.
import { execFile, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { makeImage } from './oci-image.mjs';
import { dropContainer, swiftSession } from './swift-lib.mjs';

const run = promisify(execFile);
const { values: args } = parseArgs({
  options: { 'size-mib': { type: 'string', default: '512' }, backend: { type: 'string', default: 'filesystem' }, concurrency: { type: 'string', default: '8' }, trials: { type: 'string', default: '3' }, 'warm-process': { type: 'boolean' }, 'temp-url': { type: 'boolean' }, out: { type: 'string' } },
});
const SIZE = Number(args['size-mib']);
const N = Number(args.concurrency);
const TRIALS = Number(args.trials);
const WARM_PROCESS = Boolean(args['warm-process']);
const backend = args.backend;
const repoRoot = join(dirname(new URL(import.meta.url).pathname), '..');
const work = await mkdtemp(join(tmpdir(), 'berth-bench-mirror-'));
const log = (m) => process.stderr.write(`${m}\n`);
const skopeo = (...a) => run('skopeo', ['--insecure-policy', ...a], { maxBuffer: 1 << 24 });
const cloudsFile = backend === 'swift' ? (await run(join(repoRoot, 'tools/swift-aio.sh'), ['start'])).stdout.trim().split('\n').pop() : undefined;
const authUrl = cloudsFile ? /auth_url:\s*(\S+)/.exec(readFileSync(cloudsFile, 'utf8'))[1] : undefined;
const containers = [];
const children = [];

function start(cmd, argv, ready) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    const lines = [];
    let out = '';
    let done = false;
    const onData = (d) => {
      out += d;
      let at;
      while ((at = out.indexOf('\n')) >= 0) {
        const line = out.slice(0, at);
        out = out.slice(at + 1);
        lines.push(line);
        if (!done && ready(line)) {
          done = true;
          resolve({ child, lines });
        }
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code) => done || reject(new Error(`${cmd} exited with ${code}: ${lines.slice(-5).join('\n')}`)));
  });
}
const stop = (child) => new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r() : (child.once('exit', r), child.kill('SIGTERM'))));
/** A port nothing listens on now (a counter from a random start collided with Berth's own port-0 listeners). */
const freePort = () =>
  new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

async function distribution(extra) {
  const port = await freePort();
  const container = `bench-mirror-${randomBytes(4).toString('hex')}`;
  const storage =
    backend === 'swift' && extra
      ? `  swift:\n    authurl: ${authUrl}\n    username: test:tester\n    password: testing\n    container: ${container}\n`
      : `  filesystem:\n    rootdirectory: ${join(work, `dist-${port}`)}\n`;
  if (backend === 'swift' && extra) containers.push(container);
  const file = join(work, `dist-${port}.yml`);
  await writeFile(file, `version: 0.1\nlog:\n  level: info\n  formatter: json\n  accesslog: {disabled: true}\nstorage:\n${storage}http:\n  addr: 127.0.0.1:${port}\n${extra ?? ''}`);
  const p = await start('/usr/bin/docker-registry', ['serve', file], (l) => l.includes('listening on'));
  return { ...p, host: `127.0.0.1:${port}` };
}

async function berth(upstreamHost) {
  const container = `bench-mirror-${randomBytes(4).toString('hex')}`;
  const storage =
    backend === 'swift'
      ? `  storage:\n    driver: swift\n    cloud: berth-test\n    container: ${container}\n    clouds-file: ${cloudsFile}\n${args['temp-url'] ? '    temp-url-key: bench-mirror-temp-url-key-0123\n' : ''}`
      : `  storage:\n    driver: filesystem\n    root: ${join(work, `berth-${container}`)}\n`;
  if (backend === 'swift') containers.push(container);
  const file = join(work, `${container}.yaml`);
  await writeFile(file, `registry:\n  address: 127.0.0.1\n  port: 0\n${storage}  mirrors:\n    - {registry: quay.io, url: "http://${upstreamHost}"}\n`);
  let port;
  const p = await start('node', ['--single-threaded-gc', ...(process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean), join(repoRoot, 'dist/cli.js'), '-c', file, 'serve'], (l) => (port = /berth listening on port (\d+)/.exec(l)?.[1]));
  return { ...p, host: `127.0.0.1:${port}` };
}

/** CPU seconds a process has used (user + system; /proc's clock ticks are 1/100 s on Linux). */
const cpu = (pid) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
/** Dirty pages written back (sync) and a moment for the writeback's tail, so no pull pays for an earlier one's disk. */
const settle = async () => {
  await run('sync');
  await sleep(1000);
};
const seconds = async (f) => {
  const t = process.hrtime.bigint();
  await f();
  return Number(process.hrtime.bigint() - t) / 1e9;
};
/** A skopeo pull into a fresh OCI layout, removed afterwards (eight 512 MiB copies would otherwise stay on disk). */
const pull = async (ref) => {
  const out = join(work, `out-${randomBytes(4).toString('hex')}`);
  try {
    // Distribution's proxy answers 500 to some concurrent manifest misses, which skopeo does not retry: the pull is
    // retried (up to 3 times), its time counting every attempt, as a CI job would see it.
    return await seconds(async () => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await skopeo('copy', '--retry-times', '3', '--src-tls-verify=false', ref, `oci:${out}:v1`);
        } catch (err) {
          if (attempt >= 3) throw err;
          log(`retrying ${ref}: ${String(err.stderr ?? err).trim().split('\n').pop()}`);
        }
      }
    });
  } finally {
    await rm(out, { recursive: true, force: true });
  }
};
/** Berth's own per-fill figures (its `mirror fill: blob` log lines): upstream fetch and total with storage, in s. */
const fillTimes = (reg, from) =>
  reg.lines.slice(from).flatMap((l) => {
    try {
      const o = JSON.parse(l);
      if (o.msg === 'mirror fill: manifest') return [`manifest fetched and stored ${(o.ms / 1000).toFixed(2)} s`];
      return o.msg === 'mirror fill: blob' && o.bytes > 1 << 20 ? [`layer fetch ${(o.fetchMs / 1000).toFixed(2)} s, stored ${(o.ms / 1000).toFixed(2)} s`] : [];
    } catch {
      return [];
    }
  });
/** Bytes the upstream sent in blob GET answers since its log had `from` lines. */
const upstreamBytes = (up, from) =>
  up.lines.slice(from).map((l) => {
    try {
      return JSON.parse(l);
    } catch {
      return null;
    }
  }).filter((l) => l && l.msg === 'response completed' && l['http.request.method'] === 'GET' && /\/blobs\//.test(l['http.request.uri'])).reduce((n, l) => n + (l['http.response.written'] ?? 0), 0);

const rows = [];
try {
  log(`work ${work}; layer ${SIZE} MiB; backend ${backend}; ${N} concurrent`);
  const upstream = await distribution();
  const images = [];
  const push = async (name) => {
    const image = await makeImage(join(work, `img-${name}`), 'v1', SIZE);
    await skopeo('copy', '--dest-tls-verify=false', `oci:${image.dir}:v1`, `docker://${upstream.host}/bench/${name}:v1`);
    await rm(image.dir, { recursive: true, force: true });
    return image;
  };
  for (const name of ['berth', 'dist', 'berth-conc', 'dist-conc']) images.push(await push(name));
  const contenders = [
    { name: 'Berth mirror', start: () => berth(upstream.host), ref: (h, n) => `docker://${h}/quay.io/bench/${n}:v1`, image: 'berth' },
    { name: 'Distribution proxy', start: () => distribution(`proxy:\n  remoteurl: http://${upstream.host}\n`), ref: (h, n) => `docker://${h}/bench/${n}:v1`, image: 'dist' },
  ];
  // --warm-process: the first image of each process (untimed), then one new image per trial.
  if (WARM_PROCESS) for (const c of contenders) for (let k = 0; k <= TRIALS; k++) await push(`${c.image}-p${k}`);
  const results = contenders.map(() => ({ cold: [], coldCpu: [] }));
  /** Until the fill of a cold pull that started when `reg` had logged `at` lines and the upstream `from` is stored. */
  const stored = async (c, reg, at, from) => {
    // Berth logs its fill's end; Distribution's background store fetched the layer a second time (its own GET),
    // then commits it: a few seconds more on Swift, a rename on the filesystem.
    if (c.name.startsWith('Berth')) for (let k = 0; k < 1200 && !fillTimes(reg, at).some((t) => t.startsWith('layer')); k++) await sleep(100);
    else {
      for (let k = 0; k < 1200 && upstreamBytes(upstream, from) < 2 * SIZE * 1024 * 1024; k++) await sleep(100);
      await sleep(backend === 'swift' ? 5000 : 1000);
    }
  };
  /**
   * One timed cold pull of `image` through `reg`; the last trial's cache then serves the warm pull, once the fill is
   * stored (a warm pull should read the cache, not a fill still storing). In a warm process every fill is let store
   * before the next pull.
   */
  const coldPull = async (c, r, reg, image, last) => {
    const from = upstream.lines.length;
    const at = reg.lines.length;
    await settle();
    const cpu0 = cpu(reg.child.pid);
    r.cold.push(await pull(c.ref(reg.host, image)));
    r.coldCpu.push(cpu(reg.child.pid) - cpu0);
    if (!last && !WARM_PROCESS) return;
    await stored(c, reg, at, from);
    if (!last) return;
    const stages = fillTimes(reg, at);
    if (stages.length) log(`${c.name} cold fill: ${stages.join('; ')}`);
    await settle();
    const cpu1 = cpu(reg.child.pid);
    r.warm = await pull(c.ref(reg.host, image));
    r.warmCpu = cpu(reg.child.pid) - cpu1;
    r.fetched = upstreamBytes(upstream, from);
  };
  // Cold pulls, the contenders taking turns to go first; the disk is synced before each timed pull (building and
  // pushing the images leaves gigabytes to write back, which the first pull would pay).
  const running = [];
  if (WARM_PROCESS) {
    for (const c of contenders) {
      const reg = await c.start();
      running.push(reg);
      const from = upstream.lines.length;
      await pull(c.ref(reg.host, `${c.image}-p0`));
      await stored(c, reg, 0, from);
    }
  }
  for (let trial = 0; trial < TRIALS; trial++) {
    const order = trial % 2 === 0 ? [0, 1] : [1, 0];
    for (const i of order) {
      const c = contenders[i];
      if (WARM_PROCESS) {
        await coldPull(c, results[i], running[i], `${c.image}-p${trial + 1}`, trial === TRIALS - 1);
        continue;
      }
      // Each through a fresh cache: a registry started for this pull.
      const reg = await c.start();
      await coldPull(c, results[i], reg, c.image, trial === TRIALS - 1);
      await stop(reg.child);
    }
  }
  for (const reg of running) await stop(reg.child);
  for (const [i, c] of contenders.entries()) {
    const r = results[i];
    const regC = await c.start();
    const fromC = upstream.lines.length;
    await settle();
    const conc = await seconds(() => Promise.all(Array.from({ length: N }, () => pull(c.ref(regC.host, `${c.image}-conc`)))));
    const fetchedC = upstreamBytes(upstream, fromC);
    await stop(regC.child);
    rows.push({ name: c.name, cold: median(r.cold), coldTrials: r.cold, warm: r.warm, coldCpu: median(r.coldCpu), warmCpu: r.warmCpu, fetched: r.fetched, concurrent: conc, concurrentFetched: fetchedC, imageBytes: images[0].bytes });
    log(`${c.name}: cold ${median(r.cold).toFixed(2)} s (median of ${r.cold.map((x) => x.toFixed(2)).join(', ')}; registry CPU ${median(r.coldCpu).toFixed(1)} s), warm ${r.warm.toFixed(2)} s (CPU ${r.warmCpu.toFixed(1)} s), ${N} concurrent cold ${conc.toFixed(2)} s, upstream ${(fetchedC / images[0].bytes).toFixed(2)} images`);
  }
  const [b, d] = rows;
  const table =
    `| ${SIZE} MiB layer, ${backend} | cold pull s (median of ${TRIALS}${WARM_PROCESS ? ', warm process' : ''}) | warm pull s | upstream bytes (cold+warm) | ${N} concurrent cold pulls s | upstream bytes for them (images) |\n|---|---|---|---|---|---|\n` +
    rows.map((r) => `| ${r.name} | ${r.cold.toFixed(2)} | ${r.warm.toFixed(2)} | ${r.fetched} | ${r.concurrent.toFixed(2)} | ${r.concurrentFetched} (${(r.concurrentFetched / r.imageBytes).toFixed(2)}) |`).join('\n') +
    `\n\nBerth / Distribution speed: cold ${(d.cold / b.cold).toFixed(2)}x, warm ${(d.warm / b.warm).toFixed(2)}x, concurrent ${(d.concurrent / b.concurrent).toFixed(2)}x\n`;
  process.stdout.write(table);
  if (args.out) await writeFile(args.out, JSON.stringify({ sizeMiB: SIZE, backend, concurrency: N, warmProcess: WARM_PROCESS, rows }, null, 2));
  await stop(upstream.child);
} finally {
  for (const c of children) await stop(c);
  if (containers.length) {
    const session = await swiftSession(authUrl);
    for (const c of containers) await dropContainer(c, session).catch(() => {});
  }
  await rm(work, { recursive: true, force: true });
}
