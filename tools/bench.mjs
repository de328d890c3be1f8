#!/usr/bin/env node
// Berth against raw Swift and CNCF Distribution, in one run, on a fresh single-node Swift (tools/swift-aio.sh).
// usage: tools/bench [--size-mib 512] [--runs 3] [--out .bench/bench.json] [--concurrency 2,4] [--no-distribution]
//                    [--small-seconds 5] [--only berth-swift,berth-swift-link-curl,raw,...] [--workers N]
// `mirror` (issue 25): tools/bench-mirror.mjs on Swift, once, after the runs: Berth's pull-through cache against
// Distribution's proxy mode, cold, warm and 8 concurrent cold pulls of the same layer size, as rows and ratios here.
// Medians of --runs runs per contender, contenders alternating. Prints one table (seconds, MiB/s, ratios) and
// writes it as JSON. Not a test: figures drift ±30% between runs on shared machines, compare ratios of one run.
// Berth on Swift runs in both commit modes (storage.commit: move, the default, and link), side by side.
// Layers of more than 2 GiB in all are written to disk rather than /dev/shm (tmpfs is RAM).
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { makeImage } from './oci-image.mjs';
import { dropContainer } from './swift-lib.mjs';
import { load } from './load.mjs';

const run = promisify(execFile);
const repoRoot = new URL('..', import.meta.url).pathname;
const { values: args } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '512' },
    runs: { type: 'string', default: '3' },
    out: { type: 'string', default: '.bench/bench.json' },
    concurrency: { type: 'string', default: '2,4' },
    'no-distribution': { type: 'boolean', default: false },
    'small-seconds': { type: 'string', default: '5' },
    only: { type: 'string' },
    // Berth's registry.workers (docs/performance.md, "Workers"); its RSS and CPU columns then count the primary only.
    workers: { type: 'string', default: '1' },
  },
});
const SIZE_MIB = Number(args['size-mib']);
const RUNS = Number(args.runs);
const CONCURRENCY = args.concurrency.split(',').filter(Boolean).map(Number);
const only = args.only ? new Set(args.only.split(',').filter(Boolean)) : null;
const wanted = (name) => !only || only.has(name);
const log = (...a) => process.stderr.write(`bench: ${a.join(' ')}\n`);
// Every contender's name, so a misspelt --only fails before minutes of set-up rather than measuring nothing.
const NAMES = [
  'raw',
  ...['berth-swift', 'berth-swift-link', 'berth-swift-tempurl', 'berth-fs', 'dist-swift', 'dist-fs'].flatMap((n) => [n, `${n}-curl`]),
  ...CONCURRENCY.map((n) => `berth-swift-x${n}`),
  'small',
  'mirror',
];
const unknown = [...(only ?? [])].filter((n) => !NAMES.includes(n));
if (unknown.length) {
  process.stderr.write(`bench: --only ${unknown.join(',')}: unknown; one of ${NAMES.join(', ')}\n`);
  process.exit(2);
}
// One image per concurrent push, only for the concurrency rows that run.
const CONCURRENT = CONCURRENCY.filter((n) => wanted(`berth-swift-x${n}`));
const IMAGE_COUNT = Math.max(1, ...CONCURRENT);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const seconds = async (fn) => {
  const t = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t) / 1e9;
};

// ---------- set-up ----------
const inRam = existsSync('/dev/shm') && SIZE_MIB * IMAGE_COUNT <= 2048;
const work = await mkdtemp(inRam ? '/dev/shm/berth-bench-' : join(tmpdir(), 'berth-bench-'));
process.on('exit', () => {
  try {
    execFile('rm', ['-rf', work]);
  } catch {}
});
log(`work dir ${work}${inRam ? '' : ' (on disk: the layers would not fit in RAM)'}; layer ${SIZE_MIB} MiB; ${RUNS} runs`);
if (!existsSync(join(repoRoot, 'dist/cli.js'))) await run('npm', ['run', 'build'], { cwd: repoRoot });
const cloudsFile = (await run(join(repoRoot, 'tools/swift-aio.sh'), ['start'])).stdout.trim().split('\n').pop();
const haveDistribution = !args['no-distribution'] && existsSync('/usr/bin/docker-registry');
if (!args['no-distribution'] && !haveDistribution) log('docker-registry not installed (apt-get install docker-registry): Distribution rows skipped');

log('writing images');
const images = [];
for (let i = 0; i < IMAGE_COUNT; i++) images.push(await makeImage(join(work, `img${i}`), 'bench', SIZE_MIB));
const MiB = images[0].layerSize / 2 ** 20;

// ---------- raw Swift ----------
const clouds = readFileSync(cloudsFile, 'utf8');
const authUrl = /auth_url:\s*(\S+)/.exec(clouds)[1];
async function swiftSession() {
  const res = await fetch(authUrl, { headers: { 'X-Auth-User': 'test:tester', 'X-Auth-Key': 'testing' } });
  return { token: res.headers.get('x-auth-token'), url: res.headers.get('x-storage-url') };
}
async function curl(...a) {
  const { stdout } = await run('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code} %{time_total}', ...a], { maxBuffer: 1 << 20 });
  const [code, time] = stdout.trim().split(' ');
  if (!code.startsWith('2')) throw new Error(`curl ${a.join(' ')}: HTTP ${code}`);
  return Number(time);
}
async function rawSwift() {
  const s = await swiftSession();
  const c = `bench-raw-${randomBytes(4).toString('hex')}`;
  const H = ['-H', `X-Auth-Token: ${s.token}`];
  await curl(...H, '-X', 'PUT', `${s.url}/${c}`);
  const file = images[0].layerPath;
  let at = cpuNow();
  const put = await curl(...H, '-H', 'Content-Type: application/octet-stream', '-T', file, `${s.url}/${c}/obj`);
  const putCpu = cpuSince(at, (at = cpuNow()));
  const get = await curl(...H, `${s.url}/${c}/obj`);
  const getCpu = cpuSince(at, cpuNow());
  const copy = await curl(...H, '-X', 'COPY', '-H', `Destination: ${c}/obj-copy`, `${s.url}/${c}/obj`);
  // Eight segments and an SLO over them, as a registry would store the blob.
  const segDir = join(work, 'segs');
  await mkdir(segDir, { recursive: true });
  await run('split', ['-n', '8', '-d', file, join(segDir, 's')]);
  let segPut = 0;
  const manifest = [];
  for (let i = 0; i < 8; i++) {
    const f = join(segDir, `s0${i}`);
    segPut += await curl(...H, '-H', 'Content-Type: application/octet-stream', '-T', f, `${s.url}/${c}/seg/${i}`);
    manifest.push({ path: `/${c}/seg/${i}`, size_bytes: (await stat(f)).size });
  }
  await writeFile(join(segDir, 'manifest.json'), JSON.stringify(manifest));
  segPut += await curl(...H, '-X', 'PUT', '-T', join(segDir, 'manifest.json'), `${s.url}/${c}/slo?multipart-manifest=put`);
  at = cpuNow();
  const sloGet = await curl(...H, `${s.url}/${c}/slo`);
  const sloGetCpu = cpuSince(at, cpuNow());
  await rm(segDir, { recursive: true, force: true });
  await dropContainer(c, s);
  return { put, get, copy, segPut, sloGet, pushCpu: putCpu, pullCpu: getCpu, sloGetCpu };
}
// ---------- registries ----------
function startProcess(cmd, argv, ready) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const lines = [];
    const onData = (d) => {
      out += d;
      let at;
      while ((at = out.indexOf('\n')) >= 0) {
        const line = out.slice(0, at);
        out = out.slice(at + 1);
        lines.push(line);
        const port = ready(line);
        if (port) resolve({ child, port, lines });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code) => reject(new Error(`${cmd} exited with ${code}: ${lines.slice(-5).join('\n')}`)));
  });
}
async function waitHttp(url) {
  for (let i = 0; i < 100; i++) {
    try {
      const res = await fetch(url);
      await res.arrayBuffer();
      if (res.status === 200 || res.status === 401) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not answer`);
}
function peakRssMB(pid) {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}
// CPU seconds (user + system) from /proc: this machine's cores are shared by the client, the registry and Swift,
// so a contender's wall time is bounded by what all three spend; the second table shows who spent it.
const TICKS = 100; // USER_HZ on Linux
function cpuOf(pid, children = false) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (children ? Number(f[13]) + Number(f[14]) : Number(f[11]) + Number(f[12])) / TICKS;
  } catch {
    return 0;
  }
}
function swiftPids() {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        return /swift-(proxy|object|container|account)-server/.test(readFileSync(`/proc/${d}/cmdline`, 'utf8'));
      } catch {
        return false;
      }
    });
}
/** Client (reaped children of this script: skopeo, curl), registry and Swift CPU seconds so far. */
function cpuNow(registryPid) {
  return {
    client: cpuOf('self', true),
    registry: registryPid ? cpuOf(registryPid) : 0,
    swift: swiftPids().reduce((sum, pid) => sum + cpuOf(pid), 0),
  };
}
const cpuSince = (a, b) => ({ client: b.client - a.client, registry: b.registry - a.registry, swift: b.swift - a.swift });

async function stop(child) {
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
  child.kill('SIGKILL');
}

let nextPort = 5100;
/** commit: the Swift storage's commit mode (move, Berth's default, or link: chunks joined where they were written). */
async function startBerth(backend, { tempUrl = false, commit } = {}) {
  const dir = await mkdtemp(join(work, 'berth-'));
  const container = `bench-berth-${randomBytes(4).toString('hex')}`;
  const storage =
    backend === 'swift'
      ? `  storage:\n    driver: swift\n    cloud: berth-test\n    container: ${container}\n    clouds-file: ${cloudsFile}\n${tempUrl ? '    temp-url-key: bench-temp-url-key-0123456789\n' : ''}${commit ? `    commit: ${commit}\n` : ''}`
      : `  storage:\n    driver: filesystem\n    root: ${join(work, 'berth-data-' + randomBytes(4).toString('hex'))}\n`;
  await writeFile(join(dir, 'registry.yaml'), `registry:\n  address: 127.0.0.1\n  port: 0\n  workers: ${args.workers}\n${storage}`);
  const p = await startProcess('node', ['--single-threaded-gc', join(repoRoot, 'dist/cli.js'), '-c', join(dir, 'registry.yaml'), 'serve'], (line) => /berth listening on port (\d+)/.exec(line)?.[1]);
  return {
    ...p,
    host: `127.0.0.1:${p.port}`,
    commitSeconds: () => {
      const puts = p.lines
        .map((l) => {
          try {
            return JSON.parse(l);
          } catch {
            return null;
          }
        })
        .filter((l) => l && l.msg === 'request' && l.method === 'PUT' && /\/blobs\/uploads\//.test(l.path));
      return Math.max(0, ...puts.map((l) => l.ms / 1000));
    },
    async close() {
      await stop(p.child);
      if (backend === 'swift') await dropContainer(container, await swiftSession()).catch(() => {});
    },
  };
}
async function startDistribution(backend) {
  const port = nextPort++;
  const container = `bench-dist-${randomBytes(4).toString('hex')}`;
  const storage =
    backend === 'swift'
      ? `  swift:\n    authurl: ${authUrl}\n    username: test:tester\n    password: testing\n    container: ${container}\n`
      : `  filesystem:\n    rootdirectory: ${join(work, 'dist-data-' + randomBytes(4).toString('hex'))}\n`;
  const file = join(work, `dist-${port}.yml`);
  await writeFile(file, `version: 0.1\nlog:\n  level: error\nstorage:\n${storage}  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:${port}\n`);
  const child = spawn('/usr/bin/docker-registry', ['serve', file], { stdio: ['ignore', 'ignore', 'ignore'] });
  await waitHttp(`http://127.0.0.1:${port}/v2/`);
  return {
    child,
    host: `127.0.0.1:${port}`,
    commitSeconds: () => NaN,
    async close() {
      await stop(child);
      if (backend === 'swift') await dropContainer(container, await swiftSession()).catch(() => {});
    },
  };
}
const skopeo = (...a) => run('skopeo', ['--insecure-policy', ...a], { maxBuffer: 1 << 24 });

async function pushPull(start, image, label) {
  const reg = await start();
  try {
    const ref = `docker://${reg.host}/bench/${label}:bench`;
    let at = cpuNow(reg.child.pid);
    const push = await seconds(() => skopeo('copy', '--dest-tls-verify=false', `oci:${image.dir}:bench`, ref));
    const pushCpu = cpuSince(at, (at = cpuNow(reg.child.pid)));
    const out = join(work, `pull-${randomBytes(4).toString('hex')}`);
    const pull = await seconds(() => skopeo('copy', '--src-tls-verify=false', ref, `oci:${out}:bench`));
    const pullCpu = cpuSince(at, cpuNow(reg.child.pid));
    await rm(out, { recursive: true, force: true });
    return { push, pull, commit: reg.commitSeconds(), rssMB: reg.child.pid ? peakRssMB(reg.child.pid) : NaN, pushCpu, pullCpu };
  } finally {
    await reg.close();
  }
}
/**
 * The same work with curl as the client, so Berth is compared with raw Swift through the same client: POST, one
 * PATCH of the whole layer, PUT ?digest= (timed apart: the PUT is the commit), then a GET of the blob (following a
 * temp-URL redirect) to /dev/null.
 */
async function curlPushPull(start, image) {
  const reg = await start();
  try {
    const base = `http://${reg.host}/v2/bench/curl`;
    const digest = `sha256:${image.layerPath.split('/').pop()}`;
    let at = cpuNow(reg.child.pid);
    const post = await fetch(`${base}/blobs/uploads/`, { method: 'POST' });
    await post.arrayBuffer();
    let location = new URL(post.headers.get('location'), base).href;
    const { stdout } = await run('curl', ['-sS', '-o', '/dev/null', '-D', '-', '-w', '%{http_code} %{time_total}', '-X', 'PATCH', '-H', 'Content-Type: application/octet-stream', '-T', image.layerPath, location], { maxBuffer: 1 << 20 });
    const [code, patch] = stdout.trim().split('\n').pop().split(' ');
    if (code !== '202') throw new Error(`curl PATCH: HTTP ${code}`);
    location = new URL(/^location:\s*(\S+)/im.exec(stdout)?.[1] ?? location, base).href;
    const put = await curl('-X', 'PUT', `${location}${location.includes('?') ? '&' : '?'}digest=${digest}`);
    const pushCpu = cpuSince(at, (at = cpuNow(reg.child.pid)));
    const pull = await curl('-L', `${base}/blobs/${digest}`);
    const pullCpu = cpuSince(at, cpuNow(reg.child.pid));
    return { push: Number(patch) + put, patch: Number(patch), commit: put, pull, rssMB: reg.child.pid ? peakRssMB(reg.child.pid) : NaN, pushCpu, pullCpu };
  } finally {
    await reg.close();
  }
}
async function concurrentPushes(n) {
  const reg = await startBerth('swift');
  try {
    const wall = await seconds(() =>
      Promise.all(images.slice(0, n).map((img, i) => skopeo('copy', '--dest-tls-verify=false', `oci:${img.dir}:bench`, `docker://${reg.host}/bench/c${i}:bench`))),
    );
    return { wall, rssMB: peakRssMB(reg.child.pid) };
  } finally {
    await reg.close();
  }
}

async function smallRequests() {
  const reg = await startBerth('filesystem');
  try {
    const small = await makeImage(join(work, 'small'), 'bench', 1);
    await skopeo('copy', '--dest-tls-verify=false', `oci:${small.dir}:bench`, `docker://${reg.host}/bench/small:bench`);
    const manifest = JSON.parse(await readFile(join(small.dir, 'index.json'), 'utf8')).manifests[0];
    const layer = JSON.parse(await readFile(join(small.dir, 'blobs/sha256', manifest.digest.slice(7)), 'utf8')).layers[0].digest;
    const secs = Number(args['small-seconds']);
    const head = await load(`http://${reg.host}/v2/bench/small/blobs/${layer}`, { method: 'HEAD', seconds: secs });
    const get = await load(`http://${reg.host}/v2/bench/small/manifests/bench`, { method: 'GET', seconds: secs });
    return { headBlobRps: head.rps, headErrors: head.errors, getManifestRps: get.rps, getErrors: get.errors };
  } finally {
    await reg.close();
  }
}

// ---------- the run ----------
const contenders = [
  ['raw', () => rawSwift()],
  ['berth-swift', () => pushPull(() => startBerth('swift'), images[0], 'berth-swift')],
  ['berth-swift-link', () => pushPull(() => startBerth('swift', { commit: 'link' }), images[0], 'berth-swift-link')],
  ['berth-swift-tempurl', () => pushPull(() => startBerth('swift', { tempUrl: true }), images[0], 'berth-swift-tempurl')],
  ['berth-fs', () => pushPull(() => startBerth('filesystem'), images[0], 'berth-fs')],
  ...(haveDistribution
    ? [
        ['dist-swift', () => pushPull(() => startDistribution('swift'), images[0], 'dist-swift')],
        ['dist-fs', () => pushPull(() => startDistribution('filesystem'), images[0], 'dist-fs')],
      ]
    : []),
  ['berth-swift-curl', () => curlPushPull(() => startBerth('swift'), images[0])],
  ['berth-swift-link-curl', () => curlPushPull(() => startBerth('swift', { commit: 'link' }), images[0])],
  ['berth-swift-tempurl-curl', () => curlPushPull(() => startBerth('swift', { tempUrl: true }), images[0])],
  ['berth-fs-curl', () => curlPushPull(() => startBerth('filesystem'), images[0])],
  ...(haveDistribution
    ? [
        ['dist-swift-curl', () => curlPushPull(() => startDistribution('swift'), images[0])],
        ['dist-fs-curl', () => curlPushPull(() => startDistribution('filesystem'), images[0])],
      ]
    : []),
  ...CONCURRENT.map((n) => [`berth-swift-x${n}`, () => concurrentPushes(n)]),
].filter(([name]) => wanted(name));
const results = Object.fromEntries(contenders.map(([n]) => [n, []]));
for (let r = 0; r < RUNS; r++) {
  // Alternate the order so no contender always runs first (writeback from the previous one is noise).
  const order = r % 2 ? [...contenders].reverse() : contenders;
  for (const [name, fn] of order) {
    log(`run ${r + 1}/${RUNS}: ${name}`);
    results[name].push(await fn());
  }
}
const small = wanted('small') ? await smallRequests() : null;
const mirror = wanted('mirror') && haveDistribution ? await mirrorRows() : null;

/** tools/bench-mirror.mjs on Swift with this run's layer size: its rows (seconds) and the upstream bytes. */
async function mirrorRows() {
  log('mirror: tools/bench-mirror.mjs');
  const out = join(work, 'mirror.json');
  const child = spawn(process.execPath, [join(repoRoot, 'tools/bench-mirror.mjs'), '--size-mib', String(SIZE_MIB), '--backend', 'swift', '--concurrency', '8', '--out', out], { stdio: ['ignore', 'ignore', 'inherit'] });
  const code = await new Promise((r) => child.once('exit', r));
  if (code !== 0) throw new Error(`bench-mirror exited with ${code}`);
  return JSON.parse(await readFile(out, 'utf8'));
}

// ---------- table ----------
const med = (name, key) => median((results[name] ?? []).map((x) => x[key]));
const medCpu = (name, key) => {
  const xs = (results[name] ?? []).map((x) => x[key]).filter(Boolean);
  return xs.length ? { client: median(xs.map((c) => c.client)), registry: median(xs.map((c) => c.registry)), swift: median(xs.map((c) => c.swift)) } : undefined;
};
const maxOf = (name, key) => Math.max(...(results[name] ?? []).map((x) => x[key]));
const raw = results.raw?.length ? { put: med('raw', 'put'), get: med('raw', 'get'), copy: med('raw', 'copy'), segPut: med('raw', 'segPut'), sloGet: med('raw', 'sloGet') } : null;
const rows = [];
const rate = (s) => MiB / s;
if (raw) {
  rows.push({ name: 'raw Swift PUT / GET', push: raw.put, pull: raw.get, pushCpu: medCpu('raw', 'pushCpu'), pullCpu: medCpu('raw', 'pullCpu') });
  rows.push({ name: 'raw Swift server-side COPY', push: raw.copy });
  rows.push({ name: 'raw Swift 8 segments + SLO / SLO GET', push: raw.segPut, pull: raw.sloGet, pullCpu: medCpu('raw', 'sloGetCpu') });
  rows.push({ name: 'raw bound for a registry push (PUT + COPY)', push: raw.put + raw.copy });
}
for (const [name, label] of [
  ['berth-swift', 'Berth on Swift'],
  ['berth-swift-link', 'Berth on Swift, commit: link'],
  ['berth-swift-tempurl', 'Berth on Swift, pulls redirected to temp URLs'],
  ['dist-swift', 'Distribution on Swift'],
  ['berth-fs', 'Berth on filesystem'],
  ['dist-fs', 'Distribution on filesystem'],
]) {
  if (!results[name]?.length) continue;
  rows.push({ name: label, key: name, push: med(name, 'push'), pull: med(name, 'pull'), commit: med(name, 'commit'), rssMB: maxOf(name, 'rssMB'), pushCpu: medCpu(name, 'pushCpu'), pullCpu: medCpu(name, 'pullCpu') });
}
for (const [name, label] of [
  ['berth-swift-curl', 'Berth on Swift, curl'],
  ['berth-swift-link-curl', 'Berth on Swift, commit: link, curl'],
  ['berth-swift-tempurl-curl', 'Berth on Swift, curl, GET redirected to a temp URL'],
  ['dist-swift-curl', 'Distribution on Swift, curl'],
  ['berth-fs-curl', 'Berth on filesystem, curl'],
  ['dist-fs-curl', 'Distribution on filesystem, curl'],
]) {
  if (!results[name]?.length) continue;
  rows.push({ name: label, key: name, push: med(name, 'push'), patch: med(name, 'patch'), pull: med(name, 'pull'), commit: med(name, 'commit'), rssMB: maxOf(name, 'rssMB'), pushCpu: medCpu(name, 'pushCpu'), pullCpu: medCpu(name, 'pullCpu') });
}
for (const n of CONCURRENT) {
  const name = `berth-swift-x${n}`;
  if (!results[name]?.length) continue;
  const wall = med(name, 'wall');
  rows.push({ name: `Berth on Swift, ${n} concurrent pushes`, push: wall, aggregateMiBps: (n * MiB) / wall, rssMB: maxOf(name, 'rssMB') });
}
if (mirror) {
  for (const r of mirror.rows) {
    const who = r.name.startsWith('Berth') ? 'Berth mirror' : 'Distribution proxy';
    rows.push({ name: `${who} on Swift, cold pull`, key: `${who}-cold`, pull: r.cold });
    rows.push({ name: `${who} on Swift, warm pull`, key: `${who}-warm`, pull: r.warm });
    rows.push({ name: `${who} on Swift, 8 concurrent cold pulls (upstream sent ${(r.concurrentFetched / r.imageBytes).toFixed(2)} images)`, key: `${who}-x8`, pull: r.concurrent });
  }
}
const find = (key) => rows.find((r) => r.key === key);
const ratios = {};
if (raw && find('berth-swift')) {
  ratios.berthSwiftPushVsRawBound = (raw.put + raw.copy) / find('berth-swift').push;
  ratios.berthSwiftPullVsRawSloGet = raw.sloGet / find('berth-swift').pull;
  ratios.berthSwiftPullVsRawGet = raw.get / find('berth-swift').pull;
  ratios.berthSwiftCommitSecondsPerGiB = find('berth-swift').commit / (MiB / 1024);
}
if (raw && find('berth-swift-tempurl')) {
  ratios.berthTempUrlPullVsRawSloGet = raw.sloGet / find('berth-swift-tempurl').pull;
  ratios.berthTempUrlPullVsRawGet = raw.get / find('berth-swift-tempurl').pull;
}
if (find('dist-swift') && find('berth-swift')) {
  ratios.berthSwiftPushVsDistribution = find('dist-swift').push / find('berth-swift').push;
  ratios.berthSwiftPullVsDistribution = find('dist-swift').pull / find('berth-swift').pull;
}
// Same client (curl) on both sides: what Berth itself costs over raw Swift and over Distribution.
if (raw && find('berth-swift-curl')) {
  ratios.curlBerthSwiftPushVsRawBound = (raw.put + raw.copy) / find('berth-swift-curl').push;
  ratios.curlBerthSwiftPatchVsRawPut = raw.put / med('berth-swift-curl', 'patch');
  ratios.curlBerthSwiftCommitVsRawCopy = raw.copy / find('berth-swift-curl').commit;
  ratios.curlBerthSwiftPullVsRawSloGet = raw.sloGet / find('berth-swift-curl').pull;
}
if (raw && find('berth-swift-tempurl-curl')) ratios.curlBerthTempUrlPullVsRawGet = raw.get / find('berth-swift-tempurl-curl').pull;
if (find('dist-swift-curl') && find('berth-swift-curl')) {
  ratios.curlBerthSwiftPushVsDistribution = find('dist-swift-curl').push / find('berth-swift-curl').push;
  ratios.curlBerthSwiftPullVsDistribution = find('dist-swift-curl').pull / find('berth-swift-curl').pull;
}
if (find('dist-fs-curl') && find('berth-fs-curl')) {
  ratios.curlBerthFsPushVsDistribution = find('dist-fs-curl').push / find('berth-fs-curl').push;
  ratios.curlBerthFsPullVsDistribution = find('dist-fs-curl').pull / find('berth-fs-curl').pull;
}
if (find('dist-fs') && find('berth-fs')) {
  ratios.berthFsPushVsDistribution = find('dist-fs').push / find('berth-fs').push;
  ratios.berthFsPullVsDistribution = find('dist-fs').pull / find('berth-fs').pull;
}
if (mirror) {
  const [b, d] = ['Berth mirror', 'Distribution proxy'];
  ratios.mirrorColdPullVsDistribution = find(`${d}-cold`).pull / find(`${b}-cold`).pull;
  ratios.mirrorWarmPullVsDistribution = find(`${d}-warm`).pull / find(`${b}-warm`).pull;
  ratios.mirror8ConcurrentColdVsDistribution = find(`${d}-x8`).pull / find(`${b}-x8`).pull;
  const berth = mirror.rows.find((r) => r.name.startsWith('Berth'));
  ratios.mirror8ConcurrentUpstreamImages = berth.concurrentFetched / berth.imageBytes;
}
// commit: link beside move (issue 18), with its targets. Both modes' s/GiB and push/PATCH, so they read side by side.
const GiB = MiB / 1024;
const link = find('berth-swift-link');
const linkCurl = find('berth-swift-link-curl');
const moveCurl = find('berth-swift-curl');
if (link) ratios.linkSwiftCommitSecondsPerGiB = link.commit / GiB;
if (link && find('dist-swift')) ratios.linkSwiftPushVsDistribution = find('dist-swift').push / link.push;
if (link && find('berth-swift')) {
  ratios.linkSwiftPushVsMove = find('berth-swift').push / link.push;
  ratios.linkSwiftPullVsMove = find('berth-swift').pull / link.pull;
}
if (moveCurl) {
  ratios.curlBerthSwiftCommitSecondsPerGiB = moveCurl.commit / GiB;
  ratios.curlBerthSwiftPushVsPatch = moveCurl.push / moveCurl.patch;
}
if (linkCurl) {
  ratios.curlLinkSwiftCommitSecondsPerGiB = linkCurl.commit / GiB;
  ratios.curlLinkSwiftPushVsPatch = linkCurl.push / linkCurl.patch;
}
if (linkCurl && find('dist-swift-curl')) ratios.curlLinkSwiftPushVsDistribution = find('dist-swift-curl').push / linkCurl.push;
if (linkCurl && moveCurl) {
  ratios.curlLinkSwiftPushVsMove = moveCurl.push / linkCurl.push;
  ratios.curlLinkSwiftPullVsMove = moveCurl.pull / linkCurl.pull;
}
if (raw && linkCurl) ratios.curlLinkSwiftPullVsRawSloGet = raw.sloGet / linkCurl.pull;
// Issue 18's targets, judged on this run's figures (met or not: nothing here asserts them).
const TARGETS = {
  linkSwiftPushVsDistribution: ['>=', 1.2],
  curlLinkSwiftPushVsDistribution: ['>=', 1.2],
  curlLinkSwiftPushVsPatch: ['<=', 1.1],
  linkSwiftCommitSecondsPerGiB: ['<=', 0.3],
  curlLinkSwiftCommitSecondsPerGiB: ['<=', 0.3],
  curlBerthSwiftPullVsRawSloGet: ['>=', 0.85],
  curlLinkSwiftPullVsRawSloGet: ['>=', 0.85],
  linkSwiftPullVsMove: ['~', 1],
  // Issue 25's, the pull-through cache against Distribution's proxy mode.
  mirrorColdPullVsDistribution: ['>=', 1.0],
  mirrorWarmPullVsDistribution: ['>=', 2.0],
  mirror8ConcurrentUpstreamImages: ['<=', 1.0],
  curlLinkSwiftPullVsMove: ['~', 1],
};
const targets = {};
for (const [key, [op, value]] of Object.entries(TARGETS)) {
  if (ratios[key] === undefined || Number.isNaN(ratios[key])) continue;
  // '~': within noise of move mode; runs differ by up to 20% here, so no line is drawn and nothing is judged.
  targets[key] = op === '~' ? { op, value, met: null } : { op, value, met: op === '>=' ? ratios[key] >= value : ratios[key] <= value };
}
const finalPut = moveCurl || linkCurl ? { sizeMiB: MiB, move: moveCurl?.commit, link: linkCurl?.commit } : null;

const f = (x, d = 2) => (x === undefined || Number.isNaN(x) ? '' : x.toFixed(d));
const lines = [];
lines.push(`layer ${f(MiB, 1)} MiB (gzip of random bytes), medians of ${RUNS} runs, ${new Date().toISOString()}`);
lines.push('');
lines.push('| contender | push s | push MiB/s | PATCH s | pull s | pull MiB/s | commit s | peak RSS MB |');
lines.push('|---|---|---|---|---|---|---|---|');
for (const r of rows) {
  lines.push(
    `| ${r.name} | ${f(r.push)} | ${f(r.aggregateMiBps ?? (r.push ? rate(r.push) : undefined), 0)} | ${f(r.patch)} | ${f(r.pull)} | ${f(r.pull ? rate(r.pull) : undefined, 0)} | ${f(r.commit)} | ${f(r.rssMB, 0)} |`,
  );
}
if (finalPut) {
  const mode = (m, s) => (s === undefined ? `${m} not run` : `${m} ${f(s)} s (${f(s / GiB)} s/GiB)`);
  lines.push('');
  lines.push(`final PUT (commit) latency with curl: ${mode('move', finalPut.move)}, ${mode('link', finalPut.link)} for ${f(MiB, 0)} MiB`);
}
lines.push('');
lines.push(`CPU seconds spent during each push and pull (medians), by the client (skopeo or curl), the registry process and Swift's servers, on a machine with ${cpus().length} CPUs that all three share:`);
lines.push('');
lines.push('| contender | push CPU s: client / registry / Swift | pull CPU s: client / registry / Swift |');
lines.push('|---|---|---|');
const cpuCell = (c) => (c ? `${f(c.client, 1)} / ${f(c.registry, 1)} / ${f(c.swift, 1)}` : '');
for (const r of rows) if (r.pushCpu || r.pullCpu) lines.push(`| ${r.name} | ${cpuCell(r.pushCpu)} | ${cpuCell(r.pullCpu)} |`);
lines.push('');
lines.push('Ratios are the other side over Berth (higher is better for Berth), except SecondsPerGiB and PushVsPatch (lower is better). Targets are issue 18\'s (and 25\'s for the mirror), judged on this run alone:');
lines.push('');
lines.push('| ratio | value | target |');
lines.push('|---|---|---|');
const targetCell = (t) => (!t ? '' : t.op === '~' ? 'within noise of move mode (about 1)' : `${t.op === '>=' ? '≥' : '≤'} ${f(t.value)}: ${t.met ? 'met' : 'not met'}`);
for (const [k, v] of Object.entries(ratios)) lines.push(`| ${k} | ${f(v)} | ${targetCell(targets[k])} |`);
if (small) {
  lines.push('');
  lines.push(`small requests (Berth, filesystem, ${args.workers === '1' ? 'one process' : `workers: ${args.workers}`}, 32 keep-alive connections): HEAD blob ${f(small.headBlobRps, 0)} req/s (${small.headErrors} errors), GET manifest ${f(small.getManifestRps, 0)} req/s (${small.getErrors} errors)`);
}
const table = lines.join('\n');
process.stdout.write(table + '\n');
await mkdir(dirname(args.out), { recursive: true });
await writeFile(args.out, JSON.stringify({ sizeMiB: MiB, runs: RUNS, rows, ratios, targets, finalPut, small, mirror, raw: results }, null, 2));
log(`wrote ${args.out}`);
await rm(work, { recursive: true, force: true });
