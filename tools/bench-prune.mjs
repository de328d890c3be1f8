#!/usr/bin/env node
// Prune at scale on Swift (issue 27): builds a store through the API, expires half of it, runs `berth prune` and
// `berth fsck`, verifies every kept image, and prints time, Swift requests, requests per deleted object and the peak
// RSS of the prune process.
// usage: node tools/bench-prune.mjs [--manifests 500] [--tenants 4] [--concurrency 6] [--commit link|move]
//                                   [--berth dist/cli.js] [--before PATH/dist/cli.js] [--out .bench/prune.json]
// The store: --tenants repository groups in one namespace (tenantK/appN), each with one shared base layer; every
// image is that base, two small unique layers and a unique config. Two generations of --manifests/2 images each,
// pushed 15 s apart; prune's `expiration` and `upload-expiry` are then set between their ages, so the first expires.
// With --before, the same store is built twice (one per build) and each build prunes its own, same server build.
// Swift requests are counted by tools/fault-proxy.mjs (no faults) in front of Swift for prune and fsck only; the
// proxy adds its own latency to both builds alike. Not a test: the machine is shared, compare within one run.
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { swiftSession } from './swift-lib.mjs';

const run = promisify(execFile);
const root = new URL('..', import.meta.url).pathname;
const { values: args } = parseArgs({
  options: {
    manifests: { type: 'string', default: '500' },
    tenants: { type: 'string', default: '4' },
    concurrency: { type: 'string', default: '6' },
    commit: { type: 'string', default: 'link' },
    berth: { type: 'string', default: join(root, 'dist/cli.js') },
    before: { type: 'string' },
    out: { type: 'string', default: '.bench/prune.json' },
  },
});
const MANIFESTS = Number(args.manifests);
const TENANTS = Number(args.tenants);
const sha256 = (b) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const clouds = (await run(join(root, 'tools/swift-aio.sh'), ['start'], { timeout: 600_000 })).stdout.trim().split('\n').pop();
const dir = await mkdtemp(join(tmpdir(), 'berth-bench-prune-'));

/** tools/fault-proxy.mjs in front of Swift; its log has one line per request. */
async function proxy() {
  const log = join(dir, `proxy-${randomBytes(3).toString('hex')}.log`);
  const p = spawn('node', [join(root, 'tools/fault-proxy.mjs'), '--port', '0', '--log', log], { stdio: ['ignore', 'pipe', 'ignore'] });
  const port = await new Promise((resolve) => p.stdout.on('data', (d) => resolve(Number(/port (\d+)/.exec(String(d))[1]))));
  const file = join(dir, `clouds-${port}.yaml`);
  await writeFile(file, `clouds:\n  via-proxy:\n    auth_type: v1password\n    auth:\n      auth_url: http://127.0.0.1:${port}/auth/v1.0\n      username: test:tester\n      password: testing\n`);
  const count = async () => (await readFile(log, 'utf8').catch(() => '')).split('\n').filter((l) => l && !l.includes('/auth/')).length;
  return { clouds: file, count, stop: () => p.kill() };
}

function configYaml(container, cloudsFile, cloud, extra = '') {
  return `registry:\n  address: 127.0.0.1\n  port: 0\n${extra}  storage:\n    driver: swift\n    cloud: ${cloud}\n    container: ${container}\n    clouds-file: ${cloudsFile}\n    commit: ${args.commit}\n`;
}

async function serve(berth, config) {
  const p = spawn('node', ['--single-threaded-gc', berth, '-c', config, 'serve'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const url = await new Promise((resolve, reject) => {
    let out = '';
    const seen = (d) => {
      out += d;
      const port = /berth listening on port (\d+)/.exec(out)?.[1];
      if (port) resolve(`http://127.0.0.1:${port}`);
    };
    p.stdout.on('data', seen);
    p.stderr.on('data', (d) => (out += d));
    p.on('exit', (code) => reject(new Error(`berth serve exited ${code}: ${out.slice(-500)}`)));
  });
  return { url: url.replace(/\/$/, ''), stop: () => p.kill() };
}

async function pushBlob(url, repo, body) {
  const digest = sha256(body);
  if ((await fetch(`${url}/v2/${repo}/blobs/${digest}`, { method: 'HEAD' })).status === 200) return digest;
  const post = await fetch(`${url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  const loc = new URL(post.headers.get('location'), url);
  loc.searchParams.set('digest', digest);
  const put = await fetch(loc, { method: 'PUT', headers: { 'Content-Type': 'application/octet-stream' }, body });
  if (put.status !== 201) throw new Error(`blob push ${repo}: ${put.status} ${await put.text()}`);
  return digest;
}

const bases = Array.from({ length: TENANTS }, () => randomBytes(32 * 1024));
/** Image i: its repository, tag, and blobs (base, two layers, config). */
function image(i) {
  const t = i % TENANTS;
  const layers = [bases[t], randomBytes(2048), randomBytes(2048)];
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', image: i, rootfs: { type: 'layers', diff_ids: [] } }));
  return { repo: `tenant${t}/app${Math.floor(i / TENANTS) % 10}`, tag: `v${i}`, layers, config };
}

async function pushImage(url, img) {
  const layerDescs = [];
  for (const l of img.layers) layerDescs.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: await pushBlob(url, img.repo, l), size: l.length });
  const manifest = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: await pushBlob(url, img.repo, img.config), size: img.config.length }, layers: layerDescs };
  const res = await fetch(`${url}/v2/${img.repo}/manifests/${img.tag}`, { method: 'PUT', headers: { 'Content-Type': manifest.mediaType }, body: JSON.stringify(manifest) });
  if (res.status !== 201) throw new Error(`manifest push ${img.repo}:${img.tag}: ${res.status} ${await res.text()}`);
  return { ...img, digest: res.headers.get('docker-content-digest') };
}

async function pushAll(url, from, to) {
  const out = [];
  let next = from;
  await Promise.all(Array.from({ length: Number(args.concurrency) }, async () => {
    while (next < to) out.push(await pushImage(url, image(next++)));
  }));
  return out;
}

/** Every kept image whole: its manifest by tag, and each blob's bytes by digest. */
async function verify(url, images) {
  let bad = 0;
  for (const img of images) {
    const m = await fetch(`${url}/v2/${img.repo}/manifests/${img.tag}`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
    if (m.status !== 200 || sha256(Buffer.from(await m.arrayBuffer())) !== img.digest) bad++;
    for (const b of [...img.layers, img.config]) {
      const r = await fetch(`${url}/v2/${img.repo}/blobs/${sha256(b)}`);
      if (r.status !== 200 || sha256(Buffer.from(await r.arrayBuffer())) !== sha256(b)) bad++;
    }
  }
  return bad;
}

async function objectCount(container) {
  const s = await swiftSession();
  const res = await fetch(`${s.url}/${container}`, { method: 'HEAD', headers: { 'X-Auth-Token': s.token } });
  return Number(res.headers.get('x-container-object-count'));
}

/** Timed run of a berth command through the counting proxy; peak RSS from /usr/bin/time. */
async function timed(berth, config, counter, cmd) {
  const before = await counter.count();
  const started = Date.now();
  const r = await run('/usr/bin/time', ['-v', 'node', berth, '-c', config, cmd], { maxBuffer: 64 << 20 }).catch((e) => e);
  const seconds = (Date.now() - started) / 1000;
  await sleep(500);
  const rssKb = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(r.stderr ?? '')?.[1] ?? 0);
  return { seconds, requests: (await counter.count()) - before, rssMb: Math.round(rssKb / 1024), code: r.code ?? 0, stdout: r.stdout ?? '' };
}

async function contender(name, berth) {
  const container = `berth-bench-${randomBytes(4).toString('hex')}`;
  const cfg = join(dir, `${name}.yaml`);
  await writeFile(cfg, configYaml(container, clouds, 'berth-test'));
  const server = await serve(join(root, 'dist/cli.js'), cfg);
  const t0 = Date.now();
  const old = await pushAll(server.url, 0, MANIFESTS / 2);
  await sleep(15_000);
  const genTwo = Date.now();
  const kept = await pushAll(server.url, MANIFESTS / 2, MANIFESTS);
  const buildSeconds = (Date.now() - t0) / 1000;
  const expiry = Math.ceil((Date.now() - genTwo) / 1000) + 8;
  const counter = await proxy();
  const pcfg = join(dir, `${name}-prune.yaml`);
  await writeFile(pcfg, configYaml(container, counter.clouds, 'via-proxy', `  expiration: ${expiry}\n  upload-expiry: ${expiry}\n`));
  await sleep(3000); // container listings settle (Swift updates them asynchronously)
  const objectsBefore = await objectCount(container);
  const prune = await timed(berth, pcfg, counter, 'prune');
  await sleep(3000);
  const objectsAfter = await objectCount(container);
  const fsck = await timed(berth, pcfg, counter, 'fsck');
  const badKept = await verify(server.url, kept);
  const goneOld = (await Promise.all(old.slice(0, 20).map(async (i) => (await fetch(`${server.url}/v2/${i.repo}/manifests/${i.tag}`)).status))).filter((s) => s === 404).length;
  server.stop();
  counter.stop();
  const deleted = objectsBefore - objectsAfter;
  return {
    name, berth, manifests: MANIFESTS, buildSeconds, objectsBefore, objectsAfter, deleted,
    prune: { seconds: prune.seconds, requests: prune.requests, perDeleted: +(prune.requests / deleted).toFixed(2), rssMb: prune.rssMb, exit: prune.code, summary: prune.stdout.trim() },
    fsck: { seconds: fsck.seconds, requests: fsck.requests, exit: fsck.code },
    keptImagesBroken: badKept, expiredSampledGone: `${goneOld}/${Math.min(20, old.length)}`, container,
  };
}

const results = [];
if (args.before) results.push(await contender('before', args.before));
results.push(await contender('after', args.berth));
const load = (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
for (const r of results) {
  console.log(`${r.name}: ${r.manifests} manifests, objects ${r.objectsBefore} -> ${r.objectsAfter} (store built in ${r.buildSeconds.toFixed(0)} s)`);
  console.log(`  prune ${r.prune.seconds.toFixed(1)} s, ${r.prune.requests} Swift requests, ${r.prune.perDeleted} per deleted object, peak RSS ${r.prune.rssMb} MB, exit ${r.prune.exit}`);
  console.log(`  fsck ${r.fsck.seconds.toFixed(1)} s, ${r.fsck.requests} requests, exit ${r.fsck.exit}; kept images broken: ${r.keptImagesBroken}; expired sampled gone: ${r.expiredSampledGone}`);
}
console.log(`load average at the end: ${load}; containers left for inspection: ${results.map((r) => r.container).join(', ')}`);
await mkdir(join(root, '.bench'), { recursive: true });
await writeFile(join(root, args.out), JSON.stringify({ load, results }, null, 2));
await rm(dir, { recursive: true, force: true });
