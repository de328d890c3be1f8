#!/usr/bin/env node
// What computing a namespace's usage costs on the real Swift of tools/swift-aio.sh: builds a store of N manifests
// in a fresh container (objects written as Berth lays them out: each manifest with a tag, a unique config and layer,
// two layers from a shared pool, repository links and touched markers), then times `computeUsage` (what
// `berth usage --fresh` does), a prune that keeps everything (which records the same figure as it goes), and one
// quota refresh, counting storage requests by kind. List requests are counted as Swift pages (10,000 names each).
// usage: node tools/bench-usage.mjs [--manifests 300] [--repos 10] [--keep] (run `npm run build` first). One JSON line.
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { parseArgs, promisify } from 'node:util';
import { SwiftDriver } from '../dist/storage/swift/driver.js';
import { loadCloud } from '../dist/storage/swift/clouds.js';
import { computeUsage } from '../dist/registry/usage.js';
import { Pruner } from '../dist/registry/prune.js';
import { Quotas } from '../dist/registry/quota.js';
import { OpenUploads } from '../dist/registry/upload-limits.js';
import { paths } from '../dist/registry/paths.js';

const { values } = parseArgs({ options: { manifests: { type: 'string', default: '300' }, repos: { type: 'string', default: '10' }, keep: { type: 'boolean' } } });
const N = Number(values.manifests);
const REPOS = Number(values.repos);
const NS = '_local';
const PAGE = 10_000;

const clouds = (await promisify(execFile)('tools/swift-aio.sh', ['start'], { timeout: 600_000 })).stdout.trim().split('\n').pop();
const container = `berth-bench-usage-${randomBytes(4).toString('hex')}`;
const inner = await SwiftDriver.connect({ auth: loadCloud('berth-test', clouds), container });

/** The driver, counting calls; a listing counts one request per page of names. */
const counts = {};
const count = (k, n = 1) => (counts[k] = (counts[k] ?? 0) + n);
const driver = new Proxy(inner, {
  get(target, prop) {
    const value = Reflect.get(target, prop, target);
    if (prop === 'list') {
      return async function* (prefix) {
        let n = 0;
        for await (const o of target.list(prefix)) {
          n++;
          yield o;
        }
        count('list', Math.floor(n / PAGE) + 1);
      };
    }
    if (typeof value !== 'function') return value;
    return (...args) => {
      if (['read', 'stat', 'put', 'delete', 'get'].includes(prop)) count(prop);
      return value.apply(target, args);
    };
  },
});

const digest = (b) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
async function limited(items, n, fn) {
  let i = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (i < items.length) await fn(items[i++]);
  }));
}

// --- build ---
const t0 = Date.now();
const pool = Array.from({ length: 50 }, () => randomBytes(1024));
const writes = [];
const linked = new Set();
const blob = (d, body) => {
  writes.push([paths.blobData(NS, d), body], [paths.blobTouched(NS, d), Buffer.alloc(0)]);
};
for (const b of pool) blob(digest(b), b);
let stored = pool.reduce((n, b) => n + b.length, 0);
for (let i = 0; i < N; i++) {
  const repo = `bench/r${i % REPOS}`;
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', i }));
  const own = randomBytes(4096);
  const shared = [pool[i % pool.length], pool[(i * 7 + 3) % pool.length]];
  const layers = [own, ...shared].map((b) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: digest(b), size: b.length }));
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digest(config), size: config.length }, layers }));
  const md = digest(manifest);
  blob(digest(config), config);
  blob(digest(own), own);
  blob(md, manifest);
  stored += config.length + own.length + manifest.length;
  writes.push([paths.manifestRevision(NS, repo, md), Buffer.from(JSON.stringify({ mediaType: 'application/vnd.oci.image.manifest.v1+json', size: manifest.length }))]);
  writes.push([paths.tag(NS, repo, `t${i}`), Buffer.from(md)]);
  for (const d of [digest(config), ...layers.map((l) => l.digest), md]) {
    const link = paths.blobLink(NS, repo, d);
    if (!linked.has(link)) writes.push([link, Buffer.alloc(0)]), linked.add(link);
  }
}
await limited(writes, 16, ([path, body]) => inner.put(path, body));
const built = { objects: writes.length, seconds: (Date.now() - t0) / 1000 };

// --- measure ---
async function measure(fn) {
  for (const k of Object.keys(counts)) delete counts[k];
  const t = process.hrtime.bigint();
  const result = await fn();
  return { result, seconds: Number(process.hrtime.bigint() - t) / 1e9, requests: { ...counts } };
}
const silent = { debug() {}, info() {}, warn() {} };
const fresh = await measure(() => computeUsage(driver, NS));
const prune = await measure(() => new Pruner(driver).prune(NS, { uploadExpiry: 3600, log: silent }));
const quotas = new Quotas(driver, { byNamespace: {}, fallback: 1e12 });
quotas.useListing(new OpenUploads(driver, { chunksPerUpload: 1e4, uploadsPerNamespace: 1e3, maxBlobSize: 1e12 }, 3600));
const refresh = await measure(() => quotas.usage(NS));

console.log(JSON.stringify({
  manifests: N,
  repos: REPOS,
  built,
  expectedBytes: stored,
  fresh: { seconds: +fresh.seconds.toFixed(2), requests: fresh.requests, bytes: fresh.result.bytes, blobs: fresh.result.blobs, manifests: fresh.result.manifests },
  prune: { seconds: +prune.seconds.toFixed(2), requests: prune.requests, bytes: prune.result.usage?.bytes },
  quotaRefresh: { seconds: +refresh.seconds.toFixed(3), requests: refresh.requests },
}));

if (!values.keep) {
  const all = [];
  for await (const o of inner.list(NS)) all.push(o.path);
  await limited(all, 16, (p) => inner.delete(p));
  const { login } = await import('../dist/storage/swift/auth.js');
  const session = await login(loadCloud('berth-test', clouds));
  await fetch(`${session.storageUrl}/${container}`, { method: 'DELETE', headers: { 'X-Auth-Token': session.token } });
}
await inner.close();
