// Shared by the memory abuse scripts (referrers.mjs, nested-json.mjs): a registry client that can send from a
// chosen loopback address, and a watcher in a worker thread that GETs another tenant's manifest every 25 ms (idle
// first, then under attack) and samples the server's RSS every 100 ms. The watcher runs apart from the attackers so
// that their own work (building and reading megabytes) does not show up as the server's latency.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const sha256 = (data) => `sha256:${createHash('sha256').update(data).digest('hex')}`;
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const mb = (bytes) => `${Math.round(bytes / (1024 * 1024))} MB`;

/** The value at percentile `p` of `list` (sorted here), NaN for none. */
export function percentile(list, p) {
  const sorted = [...list].sort((a, b) => a - b);
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] : NaN;
}

/**
 * One request; resolves with status, headers, the body's length and (with `keep`) the body. `localAddress` sends
 * from another loopback address (127.0.0.0/8 is all local), as distinct attackers would.
 */
export function send(url, { method = 'GET', path, headers = {}, body, localAddress, keep = false, timeoutMs = 120_000 }) {
  const target = new URL(path, url);
  const lib = target.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.request(target, { method, headers, localAddress, agent: false, rejectUnauthorized: false, timeout: timeoutMs }, (res) => {
      const parts = [];
      let bytes = 0;
      res.on('data', (d) => {
        bytes += d.length;
        if (keep) parts.push(d);
      });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, bytes, body: keep ? Buffer.concat(parts) : undefined }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** An Authorization header for `user` on `repos` (a Bearer token when the registry issues them), or none. */
export async function authorization(url, user, password, repos, actions = 'pull,push') {
  if (!user) return {};
  const basic = `Basic ${Buffer.from(`${user}:${password ?? ''}`).toString('base64')}`;
  const scope = repos.map((r) => `repository:${r}:${actions}`).join(' ');
  const res = await send(url, { path: `/auth/token?scope=${encodeURIComponent(scope)}`, headers: { Authorization: basic }, keep: true });
  if (res.status !== 200) return { Authorization: basic };
  return { Authorization: `Bearer ${JSON.parse(res.body.toString()).token}` };
}

export async function pushBlob(url, headers, repo, data) {
  const digest = sha256(data);
  const res = await send(url, { method: 'POST', path: `/v2/${repo}/blobs/uploads/?digest=${digest}`, headers: { ...headers, 'Content-Length': data.length }, body: data, keep: true });
  if (res.status !== 201) throw new Error(`push blob to ${repo}: ${res.status} ${res.body}`);
  return digest;
}

export async function putManifest(url, headers, repo, reference, body, extra = {}) {
  return send(url, { method: 'PUT', path: `/v2/${repo}/manifests/${reference}`, headers: { ...headers, 'Content-Type': OCI_MANIFEST, 'Content-Length': body.length }, body, keep: true, ...extra });
}

/** A small image (empty config, no layers) under `tag`; returns its manifest bytes and digest. */
export async function pushSmallImage(url, headers, repo, tag) {
  const config = Buffer.from('{}');
  const digest = await pushBlob(url, headers, repo, config);
  const body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: 'application/vnd.oci.empty.v1+json', digest, size: 2 }, layers: [] }));
  const res = await putManifest(url, headers, repo, tag, body);
  if (res.status !== 201) throw new Error(`push manifest to ${repo}: ${res.status} ${res.body}`);
  return { body, digest: sha256(body), configDigest: digest };
}

/** The server's pid: the runner's, else the listener of the URL's port (ctx.pidOf), else none (RSS from /metrics). */
export async function serverPid(ctx) {
  if (ctx.pid) return ctx.pid;
  if (ctx.pidOf) return ctx.pidOf(ctx.url).catch(() => undefined);
  return undefined;
}

/**
 * The probe: another tenant's small image (BERTH_ABUSE_PROBE_USER / BERTH_ABUSE_PROBE_PASSWORD, else the attacker's
 * own user in another repository), pushed now. Returns the watcher: `start()` measures idle for `idleMs`, then
 * resolves; `stop()` ends the attack phase and resolves with
 * { idle: ms[], attack: ms[], failures, rss: { peak, samples, source } }.
 */
export async function watcher(ctx, repo, idleMs = 3000) {
  const user = process.env.BERTH_ABUSE_PROBE_USER ?? ctx.user;
  const password = process.env.BERTH_ABUSE_PROBE_PASSWORD ?? ctx.password;
  const headers = await authorization(ctx.url, user, password, [repo]);
  await pushSmallImage(ctx.url, headers, repo, 'probe');
  const pid = await serverPid(ctx);
  const worker = new Worker(new URL(import.meta.url), { workerData: { url: ctx.url, headers, pid, path: `/v2/${repo}/manifests/probe`, idleMs } });
  const next = () => new Promise((resolve, reject) => worker.once('message', resolve).once('error', reject));
  return {
    pid,
    probeUser: user,
    async start() {
      await next();
    },
    async stop() {
      worker.postMessage('stop');
      try {
        return await next();
      } finally {
        await worker.terminate();
      }
    },
  };
}

/** "idle p99 a ms, under attack p99 b ms (c x), max d ms, n probes, f failed": the probe's figures in one line. */
export function probeSummary(w) {
  const idle = percentile(w.idle, 99);
  const attack = percentile(w.attack, 99);
  return {
    idleP99: idle,
    attackP99: attack,
    ratio: attack / idle,
    cpu: w.cpu,
    text: `${w.cpu ? `server CPU ${w.cpu.seconds.toFixed(1)} s in ${w.cpu.wall.toFixed(1)} s; ` : ''}probe GET manifest idle p99 ${idle.toFixed(1)} ms (${w.idle.length}), under attack p50 ${percentile(w.attack, 50).toFixed(1)} ms, p99 ${attack.toFixed(1)} ms (${(attack / idle).toFixed(2)}x idle), max ${percentile(w.attack, 100).toFixed(1)} ms (${w.attack.length}), failed ${w.failures}`,
  };
}

async function residentBytes(url, pid) {
  if (pid) {
    const m = /VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  }
  const res = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5000) });
  const m = /^berth_process_resident_memory_bytes (\S+)$/m.exec(await res.text());
  return m ? Number(m[1]) : null;
}

/** User and system CPU time of a process, in seconds (clock ticks of 1/100 s on Linux). */
async function cpuSeconds(pid) {
  if (!pid) return 0;
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).replace(/^.*\) /, '').split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

async function watch({ url, headers, pid, path, idleMs }) {
  const probeOnce = async () => {
    const started = performance.now();
    const res = await send(url, { path, headers: { ...headers, Accept: OCI_MANIFEST }, timeoutMs: 60_000 }).catch(() => null);
    return res?.status === 200 ? performance.now() - started : null;
  };
  const idle = [];
  for (const until = performance.now() + idleMs; performance.now() < until; await sleep(25)) {
    const t = await probeOnce();
    if (t !== null) idle.push(t);
  }
  let stopping = false;
  parentPort.once('message', () => (stopping = true));
  const cpuBefore = await cpuSeconds(pid);
  const startedAt = performance.now();
  parentPort.postMessage('ready');
  const rss = { peak: 0, samples: 0, source: pid ? 'proc' : 'metrics' };
  const sampler = (async () => {
    while (!stopping) {
      const v = await residentBytes(url, pid).catch(() => null);
      if (v !== null) {
        rss.first ??= v;
        rss.peak = Math.max(rss.peak, v);
        rss.samples++;
      }
      await sleep(100);
    }
  })();
  const attack = [];
  let failures = 0;
  while (!stopping) {
    const t = await probeOnce();
    if (t === null) failures++;
    else attack.push(t);
    await sleep(25);
  }
  await sampler;
  const cpu = pid ? { seconds: (await cpuSeconds(pid)) - cpuBefore, wall: (performance.now() - startedAt) / 1000 } : undefined;
  parentPort.postMessage({ idle, attack, failures, rss, cpu });
}

if (!isMainThread && workerData?.path) await watch(workerData);
