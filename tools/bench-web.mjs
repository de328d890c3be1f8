#!/usr/bin/env node
// What the web page costs on Swift: a repository of 50 tags (40 images, 10 two-platform indexes) pushed through
// the API into a fresh container of tools/swift-aio.sh's Swift, then its tags page rendered cold (manifest bytes
// not yet in the core's cache) and warm, with the time of each render and the storage operations (driver calls,
// counted by InstrumentedDriver) and Swift HTTP requests (counted at node:http, which the Swift client uses) it
// made. Also the repositories page and one image page. The app runs in this process over loopback.
// A Swift request's own latency (HEAD of the container's tag object, one at a time) is printed beside, since
// the single-node Swift shares the machine with everything else.
// Cold renders come in two kinds: with the repository's stored summaries (src/web/summaries.ts, written by the
// pushing process), and without them (deleted first: as after pushes by a process that does not serve the page).
// usage: node tools/bench-web.mjs [--backend swift|filesystem] [--tags 50] [--renders 20] [--container NAME --keep]
// (run `npm run build` and `tools/swift-aio.sh start` first). --keep leaves the pushed objects, and a later run with
// the same --container renders them without pushing again. Prints one JSON line.
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { TokenIssuer } from '../dist/auth/tokens.js';
import { Users } from '../dist/auth/users.js';
import { createApp } from '../dist/http/app.js';
import { Access } from '../dist/http/auth.js';
import { InstrumentedDriver } from '../dist/observability/instrumented-driver.js';
import { Metrics } from '../dist/observability/metrics.js';
import { Registry } from '../dist/registry/registry.js';
import { loadCloud } from '../dist/storage/swift/clouds.js';
import { SwiftDriver } from '../dist/storage/swift/driver.js';
import { FilesystemDriver } from '../dist/storage/filesystem.js';
import { mkdtemp, rm } from 'node:fs/promises';
import os, { tmpdir } from 'node:os';
import { join } from 'node:path';

const { values } = parseArgs({ options: { backend: { type: 'string', default: 'swift' }, tags: { type: 'string', default: '50' }, renders: { type: 'string', default: '20' }, container: { type: 'string' }, keep: { type: 'boolean', default: false }, clouds: { type: 'string', default: '/tmp/berth-swift/clouds.yaml' } } });
const TAGS = Number(values.tags);
const RENDERS = Number(values.renders);

// Every Swift request goes through http.request (node-fetch looks it up at each call).
let swiftRequests = 0;
const request = http.request;
http.request = function (...args) {
  swiftRequests++;
  return request.apply(this, args);
};

const log = pino({ level: 'silent' });
const metrics = new Metrics();
const container = values.container ?? `berth-bench-web-${randomBytes(4).toString('hex')}`;
// --backend filesystem: the same on a temporary directory, to tell the page's own cost from Swift's latency.
const root = values.backend === 'filesystem' ? await mkdtemp(join(tmpdir(), 'berth-bench-web-')) : undefined;
const swift = root ? await FilesystemDriver.open(root) : await SwiftDriver.connect({ auth: loadCloud('berth-test', values.clouds), container });
const driver = new InstrumentedDriver(swift, metrics);
const registry = new Registry(driver);
const secret = randomBytes(24).toString('hex');
const access = new Access({
  users: new Users([{ name: 'dev', pass: 'dev-pw', access: 'write', namespace: 'team' }], '_local', undefined, log),
  tokens: new TokenIssuer(secret, 'berth'),
  defaultNamespace: '_local',
  log,
});
const web = { secret, audience: 'berth', tls: false, expirationOf: () => 7 * 86400 };
// A fresh app remembers nothing (as after a restart): each cold render gets one.
let server;
let url;
async function startApp() {
  if (server) {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
  server = http.createServer(createApp(registry, { log, access, web }));
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${server.address().port}`;
}
await startApp();
const auth = { Authorization: `Basic ${Buffer.from('dev:dev-pw').toString('base64')}` };
const sha256 = (b) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function blob(repo, data) {
  const d = sha256(data);
  const res = await fetch(`${url}/v2/${repo}/blobs/uploads/?digest=${d}`, { method: 'POST', body: data, headers: auth });
  if (res.status !== 201) throw new Error(`blob: ${res.status}`);
  return { digest: d, size: data.length };
}
async function manifest(repo, ref, doc) {
  const body = Buffer.from(JSON.stringify(doc));
  const res = await fetch(`${url}/v2/${repo}/manifests/${ref}`, { method: 'PUT', body, headers: { ...auth, 'Content-Type': doc.mediaType } });
  if (res.status !== 201) throw new Error(`manifest: ${res.status} ${await res.text()}`);
  return { digest: sha256(body), size: body.length };
}
async function image(repo, ref, arch) {
  const config = await blob(repo, Buffer.from(JSON.stringify({ architecture: arch, os: 'linux', created: new Date().toISOString(), rootfs: { type: 'layers', diff_ids: [] }, n: randomBytes(8).toString('hex') })));
  const layers = [await blob(repo, randomBytes(2048)), await blob(repo, randomBytes(4096))];
  return manifest(repo, ref, {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...l })),
  });
}

const counts = () => ({ ops: metrics.storageRequests.get().then((m) => m.values.reduce((n, v) => n + v.value, 0)), swift: swiftRequests });
async function measure(path, cookie) {
  const before = counts();
  const beforeOps = await before.ops;
  const t = performance.now();
  const res = await fetch(`${url}${path}`, { headers: { Cookie: cookie } });
  const text = await res.text();
  const ms = performance.now() - t;
  if (res.status !== 200) throw new Error(`${path}: ${res.status} ${text.slice(0, 200)}`);
  return { ms, ops: (await counts().ops) - beforeOps, swift: swiftRequests - before.swift, bytes: text.length };
}
const summary = (list) => {
  const ms = list.map((r) => r.ms).sort((a, b) => a - b);
  const at = (q) => +ms[Math.min(ms.length - 1, Math.floor(q * ms.length))].toFixed(1);
  return { median_ms: at(0.5), p90_ms: at(0.9), max_ms: +ms[ms.length - 1].toFixed(1), storage_ops: list[0].ops, swift_requests: list[0].swift };
};

try {
  const repo = 'bench/app';
  const started = performance.now();
  const work = Array.from({ length: TAGS }, (_, i) => i);
  let pushed = 0;
  const tops = [];
  for await (const _ of swift.list(`team/repos/${repo}/_manifests/tags`)) pushed++;
  // Pushed a few at a time; every fifth tag is a two-platform index.
  for (let at = 0; pushed < TAGS && at < work.length; at += 10) {
    await Promise.all(
      work.slice(at, at + 10).map(async (i) => {
        const tag = `build-${String(i).padStart(3, '0')}`;
        if (i % 5 !== 4) return tops.push((await image(repo, tag, 'amd64')).digest);
        const children = [await image(repo, `${tag}-amd64-tmp`, 'amd64'), await image(repo, `${tag}-arm64-tmp`, 'arm64')];
        for (const a of ['amd64', 'arm64']) await fetch(`${url}/v2/${repo}/manifests/${tag}-${a}-tmp`, { method: 'DELETE', headers: auth });
        const index = await manifest(repo, tag, {
          schemaVersion: 2,
          mediaType: 'application/vnd.oci.image.index.v1+json',
          manifests: children.map((c, k) => ({ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...c, platform: { os: 'linux', architecture: ['amd64', 'arm64'][k] } })),
        });
        tops.push(index.digest);
      }),
    );
  }
  const pushSeconds = (performance.now() - started) / 1000;
  // The pushing process writes the repository's summaries a second after its last push (an index's once its
  // platforms were read): wait until they hold every tag's manifest, as a page opened a little later would find.
  for (const until = Date.now() + 30_000; tops.length > 0 && Date.now() < until; ) {
    await new Promise((resolve) => setTimeout(resolve, 500));
    const stored = await swift.read(`team/web/${repo}/_summary`).then((b) => JSON.parse(b.toString()), () => ({}));
    if (tops.every((d) => d in stored)) break;
  }
  const signIn = await fetch(`${url}/ui/signin`, { method: 'POST', redirect: 'manual', headers: { Origin: url, 'Content-Type': 'application/x-www-form-urlencoded' }, body: 'username=dev&password=dev-pw' });
  const cookie = signIn.headers.get('set-cookie').split(';')[0];
  const tagsPage = `/ui/repo/${repo}`;
  const cold = [];
  for (let i = 0; i < 5; i++) {
    await startApp();
    cold.push(await measure(tagsPage, cookie));
  }
  // Without stored summaries: a read per tag, manifest and platform; the render then writes them (after it answers).
  const bare = [];
  for (let i = 0; i < 3; i++) {
    await swift.delete(`team/web/${repo}/_summary`).catch(() => {});
    await startApp();
    bare.push(await measure(tagsPage, cookie));
    // The render writes what it computed a second later, in one write: wait for it to land.
    for (const until = Date.now() + 30_000; Date.now() < until; ) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      if (await swift.stat(`team/web/${repo}/_summary`)) break;
    }
  }
  const rewritten = [];
  for (let i = 0; i < 3; i++) {
    await startApp();
    rewritten.push(await measure(tagsPage, cookie));
  }
  const warm = [];
  for (let i = 0; i < RENDERS; i++) warm.push(await measure(tagsPage, cookie));
  const repos = [];
  for (let i = 0; i < 5; i++) repos.push(await measure('/ui/', cookie));
  const images = [];
  for (let i = 0; i < 5; i++) images.push(await measure(`/ui/repo/${repo}/-/manifest/build-004`, cookie));
  const single = [];
  for (let i = 0; i < 20; i++) {
    const t = performance.now();
    await swift.stat(`team/repos/${repo}/_manifests/tags/build-000`);
    single.push({ ms: performance.now() - t, ops: 1, swift: root ? 0 : 1 });
  }
  // The two requests of a cold render, alone: the tags listing (a container GET) and the stored summaries' GET.
  const listing = [];
  const summaryRead = [];
  for (let i = 0; i < 10; i++) {
    let t = performance.now();
    for await (const _ of swift.list(`team/repos/${repo}/_manifests/tags`));
    listing.push({ ms: performance.now() - t, ops: 1, swift: root ? 0 : 1 });
    t = performance.now();
    await swift.read(`team/web/${repo}/_summary`);
    summaryRead.push({ ms: performance.now() - t, ops: 1, swift: root ? 0 : 1 });
  }
  const html = await (await fetch(`${url}${tagsPage}`, { headers: { Cookie: cookie } })).text();
  const rows = (html.match(/<tr data-tag=/g) ?? []).length;
  process.stdout.write(
    JSON.stringify({
      backend: values.backend,
      tags: TAGS,
      rows_rendered: rows,
      push_s: +pushSeconds.toFixed(1),
      container: root ? undefined : container,
      load_average: os.loadavg().map((l) => +l.toFixed(1)),
      tags_page_cold: summary(cold),
      tags_page_cold_no_summaries: summary(bare),
      tags_page_cold_summaries_rewritten: summary(rewritten),
      tags_page_warm: summary(warm),
      repositories_page: summary(repos),
      index_page: summary(images),
      storage_stat_alone: summary(single),
      tags_listing_alone: summary(listing),
      summaries_read_alone: summary(summaryRead),
    }) + '\n',
  );
} finally {
  server.closeAllConnections();
  server.close();
  // The objects go; the empty container stays (the driver has no call to remove one).
  if (root) await rm(root, { recursive: true, force: true });
  else if (!values.keep) for await (const o of swift.list('team')) await swift.delete(o.path).catch(() => {});
  await registry.close();
}
