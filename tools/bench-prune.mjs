#!/usr/bin/env node
// Prune at scale on Swift (issue 27): builds a store through the API, expires half of it, runs `berth prune` and
// `berth fsck`, verifies every kept image, and prints time, Swift requests, requests per deleted object and the peak
// RSS of the prune process.
// usage: node tools/bench-prune.mjs [--manifests 500] [--tenants 4] [--concurrency 6] [--commit link|move]
//          [--berth dist/cli.js] [--before PATH/dist/cli.js] [--out .bench/prune.json]
//          [--build-only [--copies 2]] [--store .bench/prune-store-NAME.json [--before-store OTHER.json]] [--usage]
//          [--peer distribution] [--no-fsck]
// The store: --tenants repository groups in one namespace (tenantK/appN), each with one shared base layer; every
// image is that base, two small unique layers and a unique config. Two generations of --manifests/2 images each,
// pushed 20 s apart; prune's `expiration` and `upload-expiry` are then set between their ages, so the first expires.
// With --before, the same store is built twice (one per build) and each build prunes its own, same server build.
// --build-only builds the store and saves what the run needs (container, images' digests) to a file; --store runs
// the rest on a store built so (a long build can run while the code to measure is still being written); --copies
// builds several alike at once, one for --before (--before-store) and one for the build measured (--store).
// --usage times `berth usage --fresh` (issue 26: what computing usage costs) on the store before its prune.
// --peer distribution: the same kind of store built through CNCF Distribution 2.8 (docker-registry, its swift driver,
// a container of its own), the first generation's manifests deleted through its API, then `docker-registry
// garbage-collect` with the registry stopped; the kept images verified through it afterwards.
// Swift requests are counted by tools/fault-proxy.mjs (no faults) in front of Swift for usage, prune and fsck
// only; the proxy adds its own latency to both builds alike. Not a test: the machine is shared, compare within one
// run.
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { swiftRates, swiftSession } from './swift-lib.mjs';

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
    'build-only': { type: 'boolean' },
    copies: { type: 'string', default: '1' },
    store: { type: 'string' },
    'before-store': { type: 'string' },
    usage: { type: 'boolean' },
    peer: { type: 'string' },
    'no-fsck': { type: 'boolean' },
  },
});
const MANIFESTS = Number(args.manifests);
const TENANTS = Number(args.tenants);
const sha256 = (b) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const GENERATION_GAP_MS = 20_000;

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
  return { port, clouds: file, count, stop: () => p.kill() };
}

function configYaml(container, cloudsFile, cloud, extra = '') {
  return `registry:\n  address: 127.0.0.1\n  port: 0\n${extra}  storage:\n    driver: swift\n    cloud: ${cloud}\n    container: ${container}\n    clouds-file: ${cloudsFile}\n    commit: ${args.commit}\n`;
}

/** A server, started again if it exits at start (a Swift login answered 503 under load). */
async function serve(berth, config) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await serveOnce(berth, config);
    } catch (err) {
      if (attempt >= 5) throw err;
      await sleep(2000);
    }
  }
}

async function serveOnce(berth, config) {
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
  if (post.status !== 202) throw new Error(`blob upload ${repo}: ${post.status} ${await post.text()}`);
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

/**
 * A push retried on a 5xx: the loaded single-node Swift sometimes answers its own login with 503 (tempauth's
 * memcached calls time out), and a client would push again.
 */
async function pushImage(url, img) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await pushImageOnce(url, img);
    } catch (err) {
      if (attempt >= 6 || !/: 5\d\d /.test(err.message)) throw err;
      process.stderr.write(`build: retrying ${img.repo}:${img.tag} (${err.message.slice(0, 120)})\n`);
      await sleep(1000 * attempt);
    }
  }
}

async function pushImageOnce(url, img) {
  const layerDescs = [];
  for (const l of img.layers) layerDescs.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: await pushBlob(url, img.repo, l), size: l.length });
  const manifest = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: await pushBlob(url, img.repo, img.config), size: img.config.length }, layers: layerDescs };
  const res = await fetch(`${url}/v2/${img.repo}/manifests/${img.tag}`, { method: 'PUT', headers: { 'Content-Type': manifest.mediaType }, body: JSON.stringify(manifest) });
  if (res.status !== 201) throw new Error(`manifest push ${img.repo}:${img.tag}: ${res.status} ${await res.text()}`);
  // What verification needs, without the bytes (a 5,000-image store's list stays small).
  return { repo: img.repo, tag: img.tag, digest: res.headers.get('docker-content-digest'), blobs: [...img.layers, img.config].map(sha256) };
}

/** Images from..to-1, --concurrency at a time; a progress line on stderr every 30 s. */
async function pushAll(url, from, to) {
  const out = [];
  let next = from;
  const started = Date.now();
  const timer = setInterval(() => {
    const rate = out.length / ((Date.now() - started) / 1000);
    process.stderr.write(`build: ${next}/${MANIFESTS} images pushed, ${rate.toFixed(1)} images/s, about ${Math.round((to - next) / rate)} s left in this generation\n`);
  }, 30_000);
  try {
    await Promise.all(Array.from({ length: Number(args.concurrency) }, async () => {
      while (next < to) out.push(await pushImage(url, image(next++)));
    }));
  } finally {
    clearInterval(timer);
  }
  return out;
}

/** Every kept image whole: its manifest by tag, and each blob's bytes by digest; 16 images at a time. */
async function verify(url, images) {
  let bad = 0;
  let next = 0;
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next < images.length) {
      const img = images[next++];
      const m = await fetch(`${url}/v2/${img.repo}/manifests/${img.tag}`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
      if (m.status !== 200 || sha256(Buffer.from(await m.arrayBuffer())) !== img.digest) bad++;
      for (const d of img.blobs) {
        const r = await fetch(`${url}/v2/${img.repo}/blobs/${d}`);
        if (r.status !== 200 || sha256(Buffer.from(await r.arrayBuffer())) !== d) bad++;
      }
    }
  }));
  return bad;
}

async function objectCount(container) {
  const s = await swiftSession();
  const res = await fetch(`${s.url}/${container}`, { method: 'HEAD', headers: { 'X-Auth-Token': s.token } });
  return Number(res.headers.get('x-container-object-count'));
}

/** Timed run of a berth command through the counting proxy; peak RSS from /usr/bin/time. */
async function timed(berth, config, counter, ...cmd) {
  const before = await counter.count();
  const started = Date.now();
  const r = await run('/usr/bin/time', ['-v', 'node', berth, '-c', config, ...cmd], { maxBuffer: 64 << 20 }).catch((e) => e);
  // The command's own progress lines (stage times), kept beside the results.
  await writeFile(join(root, '.bench', `${cmd[0]}-${process.pid}-${started}.stderr`), r.stderr ?? '');
  const seconds = (Date.now() - started) / 1000;
  await sleep(500);
  const rssKb = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(r.stderr ?? '')?.[1] ?? 0);
  return { seconds, requests: (await counter.count()) - before, rssMb: Math.round(rssKb / 1024), code: r.code ?? 0, stdout: r.stdout ?? '' };
}

/** Two generations pushed through a server of this tree's build; what the rest of the run needs. */
async function build(name) {
  const container = `berth-bench-${randomBytes(4).toString('hex')}`;
  const cfg = join(dir, `${name}.yaml`);
  await writeFile(cfg, configYaml(container, clouds, 'berth-test'));
  const server = await serve(join(root, 'dist/cli.js'), cfg);
  const t0 = Date.now();
  const old = await pushAll(server.url, 0, MANIFESTS / 2);
  await sleep(GENERATION_GAP_MS);
  const genTwo = Date.now();
  const kept = await pushAll(server.url, MANIFESTS / 2, MANIFESTS);
  server.stop();
  return { container, manifests: MANIFESTS, buildSeconds: (Date.now() - t0) / 1000, genTwo, old: old.slice(0, 20), kept };
}

/** Prune's `expiration` and `upload-expiry`, computed just before it starts: between the two generations' ages. */
const expirySeconds = (store) => Math.ceil((Date.now() - store.genTwo) / 1000) + GENERATION_GAP_MS / 2000;

async function contender(name, berth, store) {
  const { container } = store;
  const cfg = join(dir, `${name}.yaml`);
  await writeFile(cfg, configYaml(container, clouds, 'berth-test'));
  const counter = await proxy();
  const pcfg = join(dir, `${name}-prune.yaml`);
  let usage;
  if (args.usage) {
    await writeFile(pcfg, configYaml(container, counter.clouds, 'via-proxy'));
    usage = await timed(berth, pcfg, counter, 'usage', '--fresh');
  }
  // The floor, through the same proxy, just before (and before the expiry is computed, which must be last): what
  // Swift alone needs to delete as many objects.
  const swift = await swiftRates(await swiftSession(`http://127.0.0.1:${counter.port}/auth/v1.0`));
  await sleep(3000); // container listings settle (Swift updates them asynchronously)
  const objectsBefore = await objectCount(container);
  const expiry = expirySeconds(store);
  await writeFile(pcfg, configYaml(container, counter.clouds, 'via-proxy', `  expiration: ${expiry}\n  upload-expiry: ${expiry}\n`));
  const prune = await timed(berth, pcfg, counter, 'prune');
  await sleep(3000);
  const objectsAfter = await objectCount(container);
  // fsck reads every object: on a large store on a loaded machine it can take longer than the rest together.
  const fsck = args['no-fsck'] ? { seconds: NaN, requests: NaN, code: 'skipped' } : await timed(berth, pcfg, counter, 'fsck');
  const server = await serve(join(root, 'dist/cli.js'), cfg);
  const verifyStarted = Date.now();
  const badKept = await verify(server.url, store.kept);
  const verifySeconds = (Date.now() - verifyStarted) / 1000;
  const goneOld = (await Promise.all(store.old.map(async (i) => (await fetch(`${server.url}/v2/${i.repo}/manifests/${i.tag}`)).status))).filter((s) => s === 404).length;
  server.stop();
  counter.stop();
  const deleted = objectsBefore - objectsAfter;
  return {
    name, berth, manifests: store.manifests, buildSeconds: store.buildSeconds, objectsBefore, objectsAfter, deleted,
    usage: usage && { seconds: usage.seconds, requests: usage.requests, rssMb: usage.rssMb, exit: usage.code },
    prune: { seconds: prune.seconds, requests: prune.requests, perDeleted: +(prune.requests / deleted).toFixed(2), rssMb: prune.rssMb, exit: prune.code, summary: prune.stdout.trim() },
    fsck: { seconds: fsck.seconds, requests: fsck.requests, exit: fsck.code },
    swift: { ...swift, floorSeconds: +(deleted / swift.deletes).toFixed(1) },
    keptImagesBroken: badKept, keptImages: store.kept.length, verifySeconds, expiredSampledGone: `${goneOld}/${store.old.length}`, container,
  };
}

/** A free loopback port (for docker-registry, which cannot be given port 0 and report it). */
async function freePort() {
  const { createServer } = await import('node:net');
  const srv = createServer().listen(0, '127.0.0.1');
  await new Promise((r) => srv.once('listening', r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

/** docker-registry serving `file` on `port`; resolves once /v2/ answers. */
async function distribution(file, port) {
  const child = spawn('/usr/bin/docker-registry', ['serve', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err = (err + d).slice(-2000)));
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited ${child.exitCode}: ${err}`);
    const ok = await fetch(`${url}/v2/`).then((r) => r.status === 200, () => false);
    if (ok) break;
    if (i > 300) throw new Error(`docker-registry did not answer: ${err}`);
    await sleep(200);
  }
  return { url, stop: () => new Promise((r) => (child.once('exit', r), child.kill())) };
}

/**
 * The peer row: Distribution 2.8 on the same Swift, all of its requests through a counting proxy. It has no
 * expiry, so the first generation's manifests are deleted through its API (8 at a time), then the registry stops
 * and `garbage-collect` runs (Distribution's GC is offline).
 */
async function distributionPeer() {
  const container = `dist-bench-${randomBytes(4).toString('hex')}`;
  const counter = await proxy();
  const port = await freePort();
  const file = join(dir, 'distribution.yml');
  await writeFile(file, `version: 0.1\nlog:\n  level: error\nstorage:\n  swift:\n    authurl: http://127.0.0.1:${counter.port}/auth/v1.0\n    username: test:tester\n    password: testing\n    container: ${container}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:${port}\n`);
  let registry = await distribution(file, port);
  const t0 = Date.now();
  const old = await pushAll(registry.url, 0, MANIFESTS / 2);
  await sleep(GENERATION_GAP_MS);
  const kept = await pushAll(registry.url, MANIFESTS / 2, MANIFESTS);
  const buildSeconds = (Date.now() - t0) / 1000;
  await sleep(3000);
  const objectsBefore = await objectCount(container);
  const requestsBefore = await counter.count();
  const deleteStarted = Date.now();
  let next = 0;
  let failedDeletes = 0;
  await Promise.all(Array.from({ length: 8 }, async () => {
    while (next < old.length) {
      const img = old[next++];
      const r = await fetch(`${registry.url}/v2/${img.repo}/manifests/${img.digest}`, { method: 'DELETE' });
      await r.arrayBuffer();
      if (r.status !== 202) failedDeletes++;
    }
  }));
  const deletes = { seconds: (Date.now() - deleteStarted) / 1000, requests: (await counter.count()) - requestsBefore, manifests: old.length, failed: failedDeletes };
  await registry.stop();
  const gcBefore = await counter.count();
  const gcStarted = Date.now();
  const gcRun = await run('/usr/bin/time', ['-v', '/usr/bin/docker-registry', 'garbage-collect', file], { maxBuffer: 256 << 20 }).catch((e) => e);
  const gc = { seconds: (Date.now() - gcStarted) / 1000, requests: (await counter.count()) - gcBefore, exit: gcRun.code ?? 0, rssMb: Math.round(Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(gcRun.stderr ?? '')?.[1] ?? 0) / 1024) };
  await sleep(3000);
  const objectsAfter = await objectCount(container);
  registry = await distribution(file, port);
  const badKept = await verify(registry.url, kept);
  const goneOld = (await Promise.all(old.slice(0, 20).map(async (i) => (await fetch(`${registry.url}/v2/${i.repo}/manifests/${i.tag}`)).status))).filter((st) => st === 404).length;
  await registry.stop();
  counter.stop();
  return { name: 'distribution', manifests: MANIFESTS, buildSeconds, objectsBefore, objectsAfter, deleted: objectsBefore - objectsAfter, deletes, gc, keptImagesBroken: badKept, keptImages: kept.length, expiredSampledGone: `${goneOld}/${Math.min(20, old.length)}`, container };
}

await mkdir(join(root, '.bench'), { recursive: true });
if (args['build-only']) {
  for (const store of await Promise.all(Array.from({ length: Number(args.copies) }, (_, i) => build(`store${i}`)))) {
    const file = join(root, '.bench', `prune-store-${store.container}.json`);
    await writeFile(file, JSON.stringify(store));
    console.log(`store built in ${store.buildSeconds.toFixed(0)} s: ${store.container}; saved to ${file}`);
  }
  process.exit(0);
}
if (args.peer) {
  if (args.peer !== 'distribution') throw new Error(`--peer: only distribution is known, not ${args.peer}`);
  const r = await distributionPeer();
  console.log(`distribution 2.8: ${r.manifests} manifests, objects ${r.objectsBefore} -> ${r.objectsAfter} (store built in ${r.buildSeconds.toFixed(0)} s)`);
  console.log(`  manifest deletes ${r.deletes.seconds.toFixed(1)} s (${r.deletes.manifests}, ${r.deletes.failed} failed), ${r.deletes.requests} Swift requests`);
  console.log(`  garbage-collect ${r.gc.seconds.toFixed(1)} s, ${r.gc.requests} Swift requests, peak RSS ${r.gc.rssMb} MB, exit ${r.gc.exit}`);
  console.log(`  deletes + GC ${(r.deletes.seconds + r.gc.seconds).toFixed(1)} s, ${((r.deletes.requests + r.gc.requests) / Math.max(1, r.deleted)).toFixed(2)} requests per deleted object; kept images broken: ${r.keptImagesBroken} of ${r.keptImages}; expired sampled gone: ${r.expiredSampledGone}`);
  await writeFile(join(root, args.out), JSON.stringify({ load: (await readFile('/proc/loadavg', 'utf8')).trim(), results: [r] }, null, 2));
  await rm(dir, { recursive: true, force: true });
  process.exit(0);
}
const results = [];
const saved = async (file) => JSON.parse(await readFile(file, 'utf8'));
if (args.before) results.push(await contender('before', args.before, args['before-store'] ? await saved(args['before-store']) : await build('before')));
results.push(await contender('after', args.berth, args.store ? await saved(args.store) : await build('after')));
const load = (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
for (const r of results) {
  console.log(`${r.name}: ${r.manifests} manifests, objects ${r.objectsBefore} -> ${r.objectsAfter} (store built in ${r.buildSeconds.toFixed(0)} s)`);
  if (r.usage) console.log(`  usage --fresh ${r.usage.seconds.toFixed(1)} s, ${r.usage.requests} Swift requests, peak RSS ${r.usage.rssMb} MB, exit ${r.usage.exit}`);
  console.log(`  prune ${r.prune.seconds.toFixed(1)} s, ${r.prune.requests} Swift requests, ${r.prune.perDeleted} per deleted object, peak RSS ${r.prune.rssMb} MB, exit ${r.prune.exit}`);
  console.log(`  Swift alone (same proxy, just before): ${r.swift.deletes} bulk deletes/s, ${r.swift.puts} PUTs/s; deleting these ${r.deleted} objects takes it ${r.swift.floorSeconds} s: prune = ${(r.prune.seconds / r.swift.floorSeconds).toFixed(2)}x that floor`);
  console.log(`  fsck ${r.fsck.seconds.toFixed(1)} s, ${r.fsck.requests} requests, exit ${r.fsck.exit}; kept images broken: ${r.keptImagesBroken} of ${r.keptImages} (verified in ${r.verifySeconds.toFixed(0)} s); expired sampled gone: ${r.expiredSampledGone}`);
}
console.log(`load average at the end: ${load}; containers left for inspection: ${results.map((r) => r.container).join(', ')}`);
await writeFile(join(root, args.out), JSON.stringify({ load, results }, null, 2));
await rm(dir, { recursive: true, force: true });
