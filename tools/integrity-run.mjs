#!/usr/bin/env node
// Two integrity scenarios against `berth serve` (a child process, loopback only), on Swift (commit: move, the
// default), Swift with commit: link (swift-link), the filesystem, or several:
// 1. N clients push one blob digest at the same moment (half in chunks with a simultaneous final PUT, half in one
//    POST): all succeed, the blob reads back intact, no upload is left, and after `berth prune` (upload-expiry 1 s,
//    run once the pushes are older than that) at most one upload's parts remain under the blob. In link mode the
//    winning upload's directory holds the blob's segments instead: exactly one upload directory is left, claimed
//    for the digest by its `owner.<digest>` and without its record, every segment of the blob is in it, there is no parts
//    directory, and prune keeps it (one claimed directory after prune, the blob intact).
// 2. K images pushed, M of their layers corrupted behind Berth's back (filesystem: bytes overwritten in the data
//    file, same size; Swift: one SLO segment, or a one-chunk blob's plain object, overwritten through the Swift API,
//    same size; in link mode the segments are the upload's chunk objects): `berth fsck` reports
//    each one (exit 1), no GET of them ends in a clean 200, `fsck --repair` quarantines them, a fresh fsck finds
//    nothing else wrong (only the quarantined blobs missing), and pushing them again restores them (fsck exit 0).
// usage: node tools/integrity-run.mjs [--backend swift|swift-link|filesystem|both|all] [--clients 8] [--blob-mib 3] [--images 5]
//        [--corrupt 5] [--seed 3]
// (both: swift and filesystem; all: swift, swift-link and filesystem)
// (run `npm run build` first; on Swift it starts tools/swift-aio.sh). Prints one line per scenario and backend;
// exits 1 when any promised figure is off.
import { execFile, spawn } from 'node:child_process';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { dropContainer, swiftSession } from './swift-lib.mjs';

const run = promisify(execFile);
const root = new URL('..', import.meta.url).pathname;
const cli = join(root, 'dist/cli.js');
const { values: args } = parseArgs({
  options: {
    backend: { type: 'string', default: 'swift' },
    clients: { type: 'string', default: '8' },
    'blob-mib': { type: 'string', default: '3' },
    images: { type: 'string', default: '5' },
    corrupt: { type: 'string', default: '5' },
    seed: { type: 'string', default: '3' },
  },
});
const CLIENTS = Number(args.clients);
const IMAGES = Number(args.images);
const CORRUPT = Number(args.corrupt);
const BACKENDS = { both: ['swift', 'filesystem'], all: ['swift', 'swift-link', 'filesystem'] }[args.backend] ?? [args.backend];
const LAYERS = 2; // per image: about 2.5 MB (three 1 MiB segments on Swift) and 300 KB (one)
if (
  !BACKENDS.every((b) => ['swift', 'swift-link', 'filesystem'].includes(b)) ||
  !(CLIENTS >= 2 && CLIENTS <= 64) ||
  !(Number(args['blob-mib']) >= 1 && Number(args['blob-mib']) <= 256) ||
  !(IMAGES >= 1 && IMAGES <= 200) ||
  !(CORRUPT >= 1 && CORRUPT <= IMAGES * LAYERS)
) {
  process.stderr.write('integrity-run: --backend swift|swift-link|filesystem|both|all, --clients 2..64, --blob-mib 1..256, --images 1..200, --corrupt 1..2*images\n');
  process.exit(2);
}
const t0 = Date.now();
const log = (m) => process.stderr.write(`integrity-run: ${((Date.now() - t0) / 1000).toFixed(1)} s: ${m}\n`);
const sha = (b) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const TIMEOUT_MS = 120_000; // any single request or command; a hang is a failure, not a wait

/** Bytes that depend only on --seed and `label` (AES-CTR keystream): a run can be repeated exactly. */
function seeded(label, n) {
  const key = createHash('sha256').update(`${args.seed}/${label}`).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n));
}
/** A seeded generator of floats in [0, 1) (mulberry32), one per use, so that each backend makes the same choices. */
function prng(label) {
  let state = createHash('sha256').update(`${args.seed}/${label}`).digest().readUInt32LE(0);
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---- storage, seen directly (not through Berth) ----

/** A fresh, empty store: its YAML, a lister, a reader and a corrupter that bypass Berth, and a cleanup. */
async function openStore(backend, work) {
  if (backend === 'filesystem') {
    const data = join(work, 'data');
    const walk = async (dir, rel) => {
      const entries = await readdir(dir, { withFileTypes: true }).catch((e) => (e.code === 'ENOENT' ? [] : Promise.reject(e)));
      const out = [];
      for (const e of entries) {
        if (e.isDirectory()) out.push(...(await walk(join(dir, e.name), `${rel}/${e.name}`)));
        else out.push(`${rel}/${e.name}`);
      }
      return out;
    };
    return {
      yaml: `  storage:\n    driver: filesystem\n    root: ${data}\n`,
      list: (prefix) => walk(join(data, prefix), prefix),
      read: (path) => readFile(join(data, path)).catch((e) => (e.code === 'ENOENT' ? null : Promise.reject(e))),
      segments: async () => [],
      /** Invert 4 KiB in the middle of the data file, in place: same size, same inode, other bytes. */
      async corrupt(digest) {
        const f = await open(join(data, '_local/blobs', digest, 'data'), 'r+');
        try {
          const { size } = await f.stat();
          const n = Math.min(4096, size);
          const at = Math.floor((size - n) / 2);
          const buf = Buffer.alloc(n);
          await f.read(buf, 0, n, at);
          for (let i = 0; i < n; i++) buf[i] ^= 0xff;
          await f.write(buf, 0, n, at);
          return `${n} bytes at ${at} of the data file`;
        } finally {
          await f.close();
        }
      },
      cleanup: async () => {},
    };
  }
  const clouds = (await run(join(root, 'tools/swift-aio.sh'), ['start'])).stdout.trim().split('\n').pop();
  const auth = /auth_url:\s*(\S+)/.exec(await readFile(clouds, 'utf8'))[1];
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(new URL(auth).hostname)) throw new Error(`Swift at ${auth} is not on loopback`);
  const session = await swiftSession(auth);
  const container = `berth-integrity-${randomBytes(4).toString('hex')}`;
  const headers = { 'X-Auth-Token': session.token };
  const pickSegment = prng('segment');
  const objectUrl = (name) => `${session.url}/${container}/${name.split('/').map(encodeURIComponent).join('/')}`;
  return {
    yaml:
      `  storage:\n    driver: swift\n    cloud: berth-test\n    container: ${container}\n    clouds-file: ${clouds}\n    segment-size: 1048576\n` +
      (backend === 'swift-link' ? '    commit: link\n' : ''),
    async list(prefix) {
      const out = [];
      for (let page = 0, marker = ''; page < 1000; page++) {
        const q = new URLSearchParams({ format: 'json', prefix: `${prefix}/`, limit: '1000', marker });
        const res = await fetch(`${session.url}/${container}?${q}`, { headers, signal: AbortSignal.timeout(TIMEOUT_MS) });
        if (res.status === 404 || res.status === 204) break;
        if (res.status !== 200) throw new Error(`list ${prefix}: ${res.status}`);
        const names = (await res.json()).map((o) => o.name);
        if (names.length === 0) break;
        out.push(...names);
        marker = names[names.length - 1];
      }
      return out;
    },
    /** The objects an SLO names, sub-manifests' segments included; [] for a plain object. */
    async segments(path) {
      const res = await fetch(`${objectUrl(path)}?multipart-manifest=get`, { headers, signal: AbortSignal.timeout(TIMEOUT_MS) });
      if (res.status !== 200) throw new Error(`SLO manifest ${path}: ${res.status}`);
      if (res.headers.get('x-static-large-object') !== 'True') return [];
      const out = [];
      for (const s of await res.json()) {
        const name = s.name.slice(`/${container}/`.length);
        out.push(name, ...(s.sub_slo ? await this.segments(name) : []));
      }
      return out;
    },
    /**
     * Overwrite one SLO segment of the blob (or a one-chunk blob, a plain object, itself) with other bytes of the
     * same size, as a faulty disk or store might.
     */
    async corrupt(digest) {
      const data = `_local/blobs/${digest}/data`;
      const res = await fetch(`${objectUrl(data)}?multipart-manifest=get`, { headers, signal: AbortSignal.timeout(TIMEOUT_MS) });
      if (res.status !== 200) throw new Error(`SLO manifest of ${digest}: ${res.status}`);
      if (res.headers.get('x-static-large-object') !== 'True') {
        const size = (await res.arrayBuffer()).byteLength;
        const put = await fetch(objectUrl(data), { method: 'PUT', headers, body: randomBytes(size), signal: AbortSignal.timeout(TIMEOUT_MS) });
        if (put.status !== 201) throw new Error(`PUT ${data}: ${put.status}`);
        return `object ${data} (${size} bytes)`;
      }
      const segments = (await res.json()).filter((s) => !s.sub_slo && s.bytes > 0);
      if (segments.length === 0) throw new Error(`${digest} has no plain segment to corrupt`);
      const seg = segments[Math.floor(pickSegment() * segments.length)];
      const name = seg.name.slice(`/${container}/`.length);
      // In link mode the segments are the upload's chunk objects where they were written.
      if (backend === 'swift-link' && !name.startsWith('_local/uploads/')) throw new Error(`${digest}: segment ${name} is not an upload's object`);
      const put = await fetch(objectUrl(name), { method: 'PUT', headers, body: randomBytes(seg.bytes), signal: AbortSignal.timeout(TIMEOUT_MS) });
      if (put.status !== 201) throw new Error(`PUT ${name}: ${put.status}`);
      return `segment ${name} (${seg.bytes} bytes)`;
    },
    cleanup: () => dropContainer(container, session),
  };
}

// ---- berth, as a child process and as a client sees it ----

async function serve(yaml, work) {
  const file = join(work, 'registry.yaml');
  await writeFile(file, `registry:\n  address: 127.0.0.1\n  port: 0\n${yaml}`);
  const child = spawn('node', [cli, '-c', file, 'serve'], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stderr.on('data', (d) => process.env.INTEGRITY_DEBUG && process.stderr.write(d));
  const port = await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /berth listening on port (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`berth serve exited with ${code}: ${out.slice(-500)}`)));
  });
  child.stdout.on('data', (d) => process.env.INTEGRITY_DEBUG && process.stderr.write(d));
  let exited = null;
  child.once('exit', (code, signal) => (exited = code ?? signal));
  return {
    file,
    base: `http://127.0.0.1:${port}`,
    port,
    crashed: () => exited,
    stop: () => (exited !== null ? Promise.resolve() : new Promise((r) => (child.once('exit', r), child.kill('SIGTERM')))),
  };
}

/** `berth -c FILE <command> ...`: its exit code and stdout. */
const berth = (file, ...argv) =>
  run('node', [cli, '-c', file, ...argv], { maxBuffer: 1 << 24, timeout: TIMEOUT_MS }).then(
    (r) => ({ code: 0, out: r.stdout }),
    (e) => ({ code: e.code, out: `${e.stdout ?? ''}${e.stderr ?? ''}` }),
  );

const call = (s, method, path, init = {}) => fetch(`${s.base}${path}`, { method, ...init, signal: AbortSignal.timeout(TIMEOUT_MS) });

async function pushBlob(s, repo, data) {
  const res = await call(s, 'POST', `/v2/${repo}/blobs/uploads/?digest=${sha(data)}`, { body: data });
  if (res.status !== 201) throw new Error(`POST ${repo} blob: ${res.status} ${await res.text()}`);
  return sha(data);
}

async function pushManifest(s, repo, tag, configData, layers) {
  const desc = (mediaType, d) => ({ mediaType, digest: sha(d), size: d.length });
  const body = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: desc('application/vnd.oci.image.config.v1+json', configData),
      layers: layers.map((l) => desc('application/vnd.oci.image.layer.v1.tar', l)),
    }),
  );
  const res = await call(s, 'PUT', `/v2/${repo}/manifests/${tag}`, { headers: { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json' }, body });
  if (res.status !== 201) throw new Error(`PUT ${repo}:${tag}: ${res.status} ${await res.text()}`);
}

const configFor = (n) => Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', n, rootfs: { type: 'layers', diff_ids: [] } }));

/**
 * GET a blob as a client would and say how it ended: `clean` only when a 200 arrived whole (every byte the
 * Content-Length promised, the connection not cut). `cut` is what Berth does when the bytes fail their digest.
 */
function getBlob(s, repo, digest) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port: s.port, path: `/v2/${repo}/blobs/${digest}`, timeout: TIMEOUT_MS }, (res) => {
      // A refusal is all a client needs to see (and an error body may promise more bytes than it sends).
      if (res.statusCode !== 200) {
        resolve({ outcome: 'error', status: res.statusCode });
        return void req.destroy();
      }
      const hash = createHash('sha256');
      res.on('data', (c) => hash.update(c));
      res.on('error', () => {});
      res.on('close', () => {
        const got = `sha256:${hash.digest('hex')}`;
        if (!res.complete) resolve({ outcome: 'cut', status: 200 });
        else resolve({ outcome: 'clean', status: 200, intact: got === digest });
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err) => resolve({ outcome: 'cut', status: -1, error: err.code }));
  });
}

const partDirs = async (store, digest) => new Set((await store.list(`_local/blobs/${digest}/parts`)).map((p) => p.split('/')[4]));

/**
 * The upload directories that hold objects, but those claimed for a blob in `others`, and what each is: `claimed`
 * when its owner names `digest`, `record` when its metadata is still there, and whether every segment of the blob
 * is in it.
 */
async function uploadDirs(store, digest, others = []) {
  const byId = new Map();
  for (const p of await store.list('_local/uploads')) {
    const id = p.split('/')[2];
    byId.set(id, [...(byId.get(id) ?? []), p.split('/').slice(3).join('/')]);
  }
  const segments = await store.segments(`_local/blobs/${digest}/data`);
  const out = [];
  for (const [id, names] of byId) {
    // The claim's name says the blob: owner.<digest>.
    const owner = names.find((n) => n.startsWith('owner.'))?.slice('owner.'.length);
    if (others.includes(owner)) continue;
    // A seal alone is what a commit leaves on Swift (a PATCH begun before it must still find it): not an upload.
    if (names.every((n) => n === 'sealed')) continue;
    out.push({
      id,
      claimed: owner === digest,
      record: names.includes('metadata'),
      holdsBlob: segments.length > 0 && segments.every((p) => p.startsWith(`_local/uploads/${id}/`)),
    });
  }
  return out;
}
/** Link mode's promise: one upload directory, claimed for the blob, without its record, holding all its segments. */
const oneClaim = (dirs) => dirs.length === 1 && dirs[0].claimed && !dirs[0].record && dirs[0].holdsBlob;
const describeDirs = (dirs) =>
  dirs.length === 0
    ? 'none'
    : dirs.map((d) => `${d.claimed ? 'claimed' : 'unclaimed'}, ${d.record ? 'with' : 'no'} record, ${d.holdsBlob ? 'every' : 'NOT every'} segment in it`).join('; ');

// ---- scenario 1: one digest, many clients at once ----

/** One client's push, held at `gate` until every client is ready to commit, so that the commits race. */
async function racingPush(s, repo, data, chunked, ready, gate) {
  let signalled = false;
  const arrive = () => signalled || ((signalled = true), ready());
  try {
    const digest = sha(data);
    if (!chunked) {
      arrive();
      await gate;
      return (await call(s, 'POST', `/v2/${repo}/blobs/uploads/?digest=${digest}`, { body: data })).status;
    }
    const started = await call(s, 'POST', `/v2/${repo}/blobs/uploads/`);
    if (started.status !== 202) return started.status;
    let location = started.headers.get('location');
    const CHUNK = 1 << 20;
    for (let at = 0; at < data.length; at += CHUNK) {
      const chunk = data.subarray(at, Math.min(at + CHUNK, data.length));
      const res = await call(s, 'PATCH', location, {
        headers: { 'Content-Range': `${at}-${at + chunk.length - 1}`, 'Content-Type': 'application/octet-stream' },
        body: chunk,
      });
      if (res.status !== 202) return res.status;
      location = res.headers.get('location');
    }
    arrive();
    await gate;
    return (await call(s, 'PUT', `${location}${location.includes('?') ? '&' : '?'}digest=${digest}`)).status;
  } finally {
    arrive(); // a client that failed early must not hold the others at the gate
  }
}

async function oneDigestManyClients(backend) {
  const work = await mkdtemp(join(tmpdir(), 'berth-integrity-'));
  let store;
  let s;
  const link = backend === 'swift-link';
  const fig = { succeeded: 0, intact: false, uploadsLeft: -1, partsBefore: -1, partsAfter: -1, pruneCode: -1, fsckCode: -1, crashed: null };
  let dirsBefore = [];
  let dirsAfter = [];
  try {
    store = await openStore(backend, work);
    s = await serve(store.yaml, work);
    const data = seeded('one-digest', Number(args['blob-mib']) * 1024 * 1024 + 12345); // not a whole number of chunks
    const digest = sha(data);
    let waiting = CLIENTS;
    let release;
    const gate = new Promise((r) => (release = r));
    const ready = () => --waiting === 0 && release();
    const statuses = await Promise.all(
      Array.from({ length: CLIENTS }, (_, i) => racingPush(s, 'same/blob', data, i % 2 === 0, ready, gate).catch((e) => `${e.message}`)),
    );
    fig.succeeded = statuses.filter((st) => st === 201).length;
    if (fig.succeeded !== CLIENTS) log(`${backend}: push outcomes ${JSON.stringify(statuses)}`);
    const first = await getBlob(s, 'same/blob', digest);
    // Seals aside: a commit on Swift leaves its seal until prune, after the upload expiry (docs/internals.md).
    fig.uploadsLeft = (await store.list('_local/uploads')).filter((p) => !p.endsWith('/sealed')).length;
    fig.partsBefore = (await partDirs(store, digest)).size;
    if (link) dirsBefore = await uploadDirs(store, digest);

    // A manifest keeps the blob through prune; the parts of commits that lost the race are fair game once they are
    // older than upload-expiry (1 s here; Swift's Last-Modified has whole seconds, hence the wait).
    await pushBlob(s, 'same/blob', configFor('one-digest'));
    await pushManifest(s, 'same/blob', 'v1', configFor('one-digest'), [data]);
    const pruneFile = join(work, 'prune.yaml');
    await writeFile(pruneFile, `registry:\n  upload-expiry: 1\n${store.yaml}`);
    await sleep(2500);
    const prune = await berth(pruneFile, 'prune');
    fig.pruneCode = prune.code;
    if (prune.code !== 0) log(`${backend}: prune: ${prune.out}`);
    fig.partsAfter = (await partDirs(store, digest)).size;
    if (link) dirsAfter = await uploadDirs(store, digest, [sha(configFor('one-digest'))]); // the config's own claim aside
    const again = await getBlob(s, 'same/blob', digest);
    fig.intact = first.outcome === 'clean' && first.intact && again.outcome === 'clean' && again.intact;
    const fsck = await berth(s.file, 'fsck');
    fig.fsckCode = fsck.code;
    if (fsck.code !== 0) log(`${backend}: fsck: ${fsck.out}`);
    fig.crashed = s.crashed();
  } finally {
    await s?.stop();
    await store?.cleanup();
    await rm(work, { recursive: true, force: true });
  }
  // Move mode: the uploads are gone, the parts of at most one are under the blob. Link mode: the winner's directory
  // is the blob's segments, before and after prune, and no parts directory exists. Before prune another claimed
  // directory may be left (a join that replaced the winner's after its check: Swift's create-only is not atomic),
  // as move mode may leave a second parts directory; prune keeps only the one the blob reads from.
  const holder = dirsBefore.find((d) => d.holdsBlob);
  const layoutOk = link
    ? dirsBefore.every((d) => d.claimed && !d.record) && dirsBefore.filter((d) => d.holdsBlob).length === 1 &&
      oneClaim(dirsAfter) && holder.id === dirsAfter[0].id && fig.partsBefore === 0 && fig.partsAfter === 0
    : fig.uploadsLeft === 0 && fig.partsAfter <= 1;
  const ok = fig.succeeded === CLIENTS && fig.intact && layoutOk && fig.pruneCode === 0 && fig.fsckCode === 0 && fig.crashed === null;
  const layout = link
    ? `${dirsBefore.length} upload ${dirsBefore.length === 1 ? 'directory' : 'directories'} left (${describeDirs(dirsBefore)}), ` +
      `${dirsAfter.length} after prune (${describeDirs(dirsAfter)}${dirsAfter.length === 1 && holder?.id === dirsAfter[0].id ? ', the same' : ''}), ` +
      `${fig.partsAfter} parts directories (${fig.partsBefore} before)`
    : `${fig.uploadsLeft} uploads left, ${fig.partsAfter} parts ${fig.partsAfter === 1 ? 'directory' : 'directories'} after prune (${fig.partsBefore} before)`;
  const line =
    `${CLIENTS} clients pushing one digest (${backend}): ${fig.succeeded}/${CLIENTS} succeeded, ${fig.intact ? 1 : 0} intact blob, ` +
    `${layout}, prune exit ${fig.pruneCode}, fsck exit ${fig.fsckCode}` +
    (fig.crashed === null ? '' : `, server CRASHED (${fig.crashed})`);
  return { ok, line };
}

// ---- scenario 2: corruption behind Berth's back, found by fsck ----

/** fsck's problem lines, `KIND path: detail`. */
const problems = (out) =>
  out
    .split('\n')
    .map((l) => /^(CORRUPT|SEGMENT|UNREADABLE|MISSING) (\S+): (.*)$/.exec(l))
    .filter(Boolean)
    .map(([, kind, path, detail]) => ({ kind, path, detail }));

async function fsckFindsCorruption(backend) {
  const work = await mkdtemp(join(tmpdir(), 'berth-integrity-'));
  let store;
  let s;
  const fig = { found: 0, foundCode: -1, others: -1, servedClean: 0, cut: 0, refused: 0, quarantined: -1, cleanAfterRepair: false, restored: 0, finalCode: -1, crashed: null };
  try {
    store = await openStore(backend, work);
    s = await serve(store.yaml, work);
    const layers = [];
    for (let i = 0; i < IMAGES; i++) {
      const repo = `fsck/app${i}`;
      const own = [seeded(`image${i}/0`, 2_500_000 + i), seeded(`image${i}/1`, 300_000 + i)];
      for (const l of own) await pushBlob(s, repo, l);
      await pushBlob(s, repo, configFor(i));
      await pushManifest(s, repo, 'v1', configFor(i), own);
      layers.push(...own.map((data) => ({ repo, data, digest: sha(data) })));
    }
    const baseline = await berth(s.file, 'fsck');
    if (baseline.code !== 0) throw new Error(`fsck before any corruption: exit ${baseline.code}: ${baseline.out}`);

    // M layers, chosen by the seed.
    const victims = [];
    const pool = [...layers];
    const rnd = prng('victims');
    while (victims.length < CORRUPT) victims.push(pool.splice(Math.floor(rnd() * pool.length), 1)[0]);
    for (const v of victims) log(`${backend}: corrupted ${v.digest.slice(0, 19)}: ${await store.corrupt(v.digest)}`);
    const dataPath = (d) => `_local/blobs/${d}/data`;
    const victimPaths = new Set(victims.map((v) => dataPath(v.digest)));

    // No client may get a clean 200 of these: the response is cut short or refused.
    const served = async () => {
      for (const v of victims) {
        const r = await getBlob(s, v.repo, v.digest);
        if (r.outcome === 'cut') fig.cut++;
        if (r.outcome === 'error') fig.refused++;
        if (r.outcome === 'clean') {
          fig.servedClean++;
          log(`${backend}: ${v.digest} served clean (${r.intact ? 'right' : 'WRONG'} bytes)`);
        }
      }
    };
    await served();

    const found = await berth(s.file, 'fsck');
    const reported = problems(found.out);
    fig.found = victims.filter((v) => reported.some((p) => (p.kind === 'CORRUPT' || p.kind === 'SEGMENT') && p.path === dataPath(v.digest))).length;
    fig.others = reported.filter((p) => !victimPaths.has(p.path)).length;
    fig.foundCode = found.code;
    if (fig.others > 0) log(`${backend}: fsck reported more than the corrupted blobs:\n${found.out}`);

    const repair = await berth(s.file, 'fsck', '--repair');
    fig.quarantined = Number(/(\d+) blobs quarantined/.exec(repair.out)?.[1] ?? -1);
    await served(); // now 404: quarantined blobs are not served either

    // Nothing wrong is left, only the blobs taken out of service are missing from their manifests.
    const after = problems((await berth(s.file, 'fsck')).out);
    const missingOnlyVictims = after.every((p) => p.kind === 'MISSING' && victims.some((v) => p.detail.endsWith(`references missing ${v.digest}`)));
    fig.cleanAfterRepair = missingOnlyVictims && victims.every((v) => after.some((p) => p.detail.endsWith(`references missing ${v.digest}`)));
    if (!fig.cleanAfterRepair) log(`${backend}: fsck after repair: ${JSON.stringify(after)}`);

    for (const v of victims) {
      await pushBlob(s, v.repo, v.data);
      const r = await getBlob(s, v.repo, v.digest);
      if (r.outcome === 'clean' && r.intact) fig.restored++;
    }
    const final = await berth(s.file, 'fsck');
    fig.finalCode = final.code;
    if (final.code !== 0) log(`${backend}: final fsck: ${final.out}`);
    fig.crashed = s.crashed();
  } finally {
    await s?.stop();
    await store?.cleanup();
    await rm(work, { recursive: true, force: true });
  }
  const ok =
    fig.found === CORRUPT &&
    fig.foundCode === 1 &&
    fig.others === 0 &&
    fig.servedClean === 0 &&
    fig.quarantined === CORRUPT &&
    fig.cleanAfterRepair &&
    fig.restored === CORRUPT &&
    fig.finalCode === 0 &&
    fig.crashed === null;
  const line =
    `fsck (${backend}): ${fig.found}/${CORRUPT} corrupted blobs found (exit ${fig.foundCode}), ${fig.others} other problems, ${fig.servedClean} served clean ` +
    `(of ${fig.cut + fig.refused + fig.servedClean} GETs before and after repair: ${fig.cut} cut short, ${fig.refused} refused), ` +
    `${fig.quarantined} quarantined, ${fig.cleanAfterRepair ? 'clean after repair' : 'NOT clean after repair'}, ` +
    `${fig.restored}/${CORRUPT} restored by a re-push, final fsck exit ${fig.finalCode}` +
    (fig.crashed === null ? '' : `, server CRASHED (${fig.crashed})`);
  return { ok, line };
}

let failed = 0;
for (const backend of BACKENDS) {
  for (const [name, scenario] of [
    [`${CLIENTS} clients pushing one digest (${backend})`, oneDigestManyClients],
    [`fsck (${backend})`, fsckFindsCorruption],
  ]) {
    log(`${name}...`);
    const r = await scenario(backend).catch((err) => ({ ok: false, line: `${name}: FAILED: ${err.message}` }));
    process.stdout.write(`${r.line}\n`);
    if (!r.ok) failed++;
  }
}
process.exitCode = failed === 0 ? 0 : 1;
