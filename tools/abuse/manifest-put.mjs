/**
 * Abuse: hostile manifest PUTs (issue 16, item 2). Parallel clients PUT manifests naming thousands of blobs that
 * do not exist: 1.5 MB ones of 10,000 random layer digests, and ones with just under the descriptor cap
 * (MAX_DESCRIPTORS in src/registry/manifest-doc.ts) whose config exists and whose layers do not. Meanwhile a
 * probe GETs a small manifest of another repository every 25 ms, and the server's RSS is sampled.
 *
 * Held when every hostile PUT is refused with 400, the server's RSS stays under 250 MB (read from ctx.pid's /proc
 * status when the runner gives a pid, else from /metrics), and the probe's median stays under 100 ms and its
 * maximum under 100 ms or under the same probe's maximum on the idle server just before (on a machine loaded by
 * other work, the idle maximum alone can pass 100 ms: the attack is then held if it adds nothing beyond that).
 * At small scale (the suite's run: 4 PUTs in half a second, a handful of probes, on whatever else the machine does)
 * the probe's bound is 1 s: it checks the probe is served beside the attack, not the latency target.
 *
 * ctx: { url, user?, password?, scale: 'small' | 'full', log, pid? }; returns { attack, held, detail }.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const LAYER = 'application/vnd.oci.image.layer.v1.tar';
const UNDER_CAP = 999;
const PROBE_LIMIT_MS = 100;
const SMALL_SCALE_PROBE_LIMIT_MS = 1000;
const RSS_LIMIT = 250 * 1024 * 1024;
const REQUEST_TIMEOUT_MS = 120_000;

const sha256 = (data) => `sha256:${createHash('sha256').update(data).digest('hex')}`;
const randomDigest = () => `sha256:${randomBytes(32).toString('hex')}`;

export async function run(ctx) {
  const full = ctx.scale === 'full';
  const clients = full ? 6 : 2;
  const rounds = full ? 3 : 1;
  const auth = await authorization(ctx);
  const headers = auth ? { Authorization: auth } : {};

  // A small image for the probe, and a config blob the under-cap manifests name (so only their layers are missing).
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  const configDigest = await pushBlob(ctx.url, headers, 'abuse/probe', config);
  const probeManifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length }, layers: [] }));
  await putManifest(ctx.url, headers, 'abuse/probe', 'v1', probeManifest, true);
  await pushBlob(ctx.url, headers, 'abuse/hostile', config);

  const huge = (n) => hostile(configDigest, config.length, n);

  // Built before the clock starts, and measured from a worker thread: the attacker's own JSON building and sending
  // must not show up as the server's latency.
  const batches = Array.from({ length: clients }, () => Array.from({ length: rounds }, () => [huge(10_000), huge(UNDER_CAP)]).flat());
  ctx.log(`manifest-put: ${clients} clients x ${rounds} rounds of ${(batches[0][0].length / 1e6).toFixed(2)} MB + ${(batches[0][1].length / 1e6).toFixed(2)} MB manifests`);
  const watcher = new Worker(new URL(import.meta.url), { workerData: { url: ctx.url, headers, pid: ctx.pid } });
  const statuses = {};
  let attackSeconds, probe, rss, baseline;
  try {
    await new Promise((resolve, reject) => watcher.once('message', resolve).once('error', reject));
    const started = performance.now();
    await Promise.all(
      batches.map(async (bodies) => {
        for (const body of bodies) {
          const res = await putManifest(ctx.url, headers, 'abuse/hostile', `t${randomBytes(4).toString('hex')}`, body, false).catch((err) => ({ status: `error ${err.message}` }));
          statuses[res.status] = (statuses[res.status] ?? 0) + 1;
        }
      }),
    );
    attackSeconds = (performance.now() - started) / 1000;
    watcher.postMessage('stop');
    ({ probe, rss, baseline } = await new Promise((resolve, reject) => watcher.once('message', resolve).once('error', reject)));
  } finally {
    await watcher.terminate();
  }

  const sorted = [...probe.times].sort((a, b) => a - b);
  const idle = [...baseline].sort((a, b) => a - b);
  const at = (list, p) => (list.length ? list[Math.min(list.length - 1, Math.floor((p / 100) * list.length))] : NaN);
  const pct = (p) => at(sorted, p);
  const probeMax = sorted.length ? sorted[sorted.length - 1] : NaN;
  const refused = Object.keys(statuses).every((status) => status === '400');
  const rssKnown = rss.samples > 0;
  const limitMs = full ? PROBE_LIMIT_MS : SMALL_SCALE_PROBE_LIMIT_MS;
  const probeHeld = pct(50) < limitMs && probeMax < Math.max(limitMs, at(idle, 100));
  const held = refused && probe.failures === 0 && probeHeld && (!rssKnown || rss.peak < RSS_LIMIT);
  const mb = (b) => `${Math.round(b / (1024 * 1024))} MB`;
  const detail =
    `${clients * rounds * 2} PUTs in ${attackSeconds.toFixed(1)} s, answers ${JSON.stringify(statuses)}; ` +
    `probe GET manifest idle (${idle.length}): p50 ${at(idle, 50).toFixed(1)} ms, max ${at(idle, 100).toFixed(1)} ms; under attack (${sorted.length}): p50 ${pct(50).toFixed(1)} ms, p99 ${pct(99).toFixed(1)} ms, max ${probeMax.toFixed(1)} ms, failed ${probe.failures}; ` +
    `server RSS peak ${rssKnown ? mb(rss.peak) : 'unknown'} (${rss.source}, ${rss.samples} samples)`;
  return { attack: `${clients} parallel manifest PUTs naming 10,000 and ${UNDER_CAP} unknown blobs`, held, detail };
}

/** A manifest whose config exists and whose `n` layers are random digests (about 110 bytes each). */
function hostile(configDigest, configSize, n) {
  const layers = Array.from({ length: n }, () => ({ mediaType: LAYER, digest: randomDigest(), size: 1 + Math.floor(Math.random() * 1e6) }));
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: configSize }, layers }));
}

/** A Bearer token for the user (one bcrypt check, not one per request), or nothing on an open registry. */
async function authorization(ctx) {
  if (!ctx.user) return undefined;
  const basic = `Basic ${Buffer.from(`${ctx.user}:${ctx.password}`).toString('base64')}`;
  const scope = ['abuse/probe', 'abuse/hostile'].map((r) => `repository:${r}:pull,push`).join(' ');
  const res = await fetch(`${ctx.url}/auth/token?scope=${encodeURIComponent(scope)}`, { headers: { Authorization: basic } });
  if (res.status !== 200) return basic;
  return `Bearer ${(await res.json()).token}`;
}

async function pushBlob(url, headers, repo, data) {
  const digest = sha256(data);
  const res = await fetch(`${url}/v2/${repo}/blobs/uploads/?digest=${digest}`, { method: 'POST', headers, body: data });
  if (res.status !== 201) throw new Error(`push blob: ${res.status} ${await res.text()}`);
  return digest;
}

async function putManifest(url, headers, repo, ref, body, mustSucceed) {
  const res = await fetch(`${url}/v2/${repo}/manifests/${ref}`, {
    method: 'PUT',
    headers: { ...headers, 'Content-Type': OCI_MANIFEST },
    body,
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  await res.arrayBuffer();
  if (mustSucceed && res.status !== 201) throw new Error(`push manifest: ${res.status}`);
  return res;
}

async function residentBytes(ctx) {
  if (ctx.pid) {
    const m = /VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${ctx.pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  }
  const res = await fetch(`${ctx.url}/metrics`, { signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  const m = /^berth_process_resident_memory_bytes (\d+(?:\.\d+)?(?:e\+\d+)?)$/m.exec(text);
  return m ? Number(m[1]) : null;
}

/** The worker: probe another repository's manifest every 25 ms and sample the server's RSS until told to stop. */
async function watch({ url, headers, pid }) {
  const probe = { times: [], failures: 0 };
  const rss = { peak: 0, samples: 0, source: pid ? 'proc' : 'metrics' };
  // The same probe on the idle server first: on a loaded machine its latency is the yardstick for the one below.
  const baseline = [];
  for (const until = performance.now() + 2000; performance.now() < until; await sleep(25)) {
    const started = performance.now();
    const res = await fetch(`${url}/v2/abuse/probe/manifests/v1`, { headers: { ...headers, Accept: OCI_MANIFEST } }).catch(() => null);
    if (res) await res.arrayBuffer();
    if (res?.status === 200) baseline.push(performance.now() - started);
  }
  let stopping = false;
  parentPort.once('message', () => (stopping = true));
  parentPort.postMessage('ready');
  const sampler = (async () => {
    while (!stopping) {
      const v = await residentBytes({ url, pid }).catch(() => null);
      if (v !== null) {
        rss.peak = Math.max(rss.peak, v);
        rss.samples++;
      }
      await sleep(100);
    }
  })();
  while (!stopping) {
    const started = performance.now();
    const res = await fetch(`${url}/v2/abuse/probe/manifests/v1`, { headers: { ...headers, Accept: OCI_MANIFEST }, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) }).catch(() => null);
    if (res) await res.arrayBuffer();
    if (res?.status === 200) probe.times.push(performance.now() - started);
    else probe.failures++;
    await sleep(25);
  }
  await sampler;
  parentPort.postMessage({ probe, rss, baseline });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Standalone: node tools/abuse/manifest-put.mjs URL [small|full] [pid] (BERTH_USER / BERTH_PASSWORD for a login).
if (!isMainThread && workerData?.url) {
  await watch(workerData);
} else if (import.meta.url === `file://${process.argv[1]}`) {
  const [url, scale = 'small', pid] = process.argv.slice(2);
  const result = await run({ url, user: process.env.BERTH_USER, password: process.env.BERTH_PASSWORD, scale, pid: pid ? Number(pid) : undefined, log: (m) => console.error(m) });
  console.log(`${result.attack} -> ${result.held ? 'held' : 'BROKEN'}\n  ${result.detail}`);
  process.exitCode = result.held ? 0 : 1;
}
