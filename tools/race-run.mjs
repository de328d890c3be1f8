#!/usr/bin/env node
// Randomized interleaving of uploads across two `berth serve` processes on one Swift container, with no lock service
// (issue 23): several clients at once push blobs in chunks through either process, and while a chunk streams into one
// process the other commits, cancels, or commits another digest; some push monolithically, some push bytes another
// client pushes too; most tag a manifest naming what they pushed; `berth prune` (upload-expiry 5 s) runs all along.
// At the end: a last prune, `berth fsck`, and every blob that a kept manifest names is read back through both
// processes and hashed. Prints a summary; exits 1 on any lost or wrong blob or any fsck problem.
// usage: node tools/race-run.mjs [--duration 120] [--commit move|link] [--clients 6] [--prune-every 15] [--seed 1]
// (run `npm run build` first; it starts tools/swift-aio.sh). Not part of `npm test`.
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
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
    duration: { type: 'string', default: '120' },
    commit: { type: 'string', default: 'link' },
    clients: { type: 'string', default: '6' },
    'prune-every': { type: 'string', default: '15' },
    seed: { type: 'string', default: '1' },
  },
});
const DURATION = Number(args.duration);
const CLIENTS = Number(args.clients);
const PRUNE_EVERY = Number(args['prune-every']);
if (!['move', 'link'].includes(args.commit) || !(DURATION >= 5 && DURATION <= 3600) || !(CLIENTS >= 1 && CLIENTS <= 32) || !(PRUNE_EVERY >= 2)) {
  process.stderr.write('race-run: --commit move|link, --duration 5..3600, --clients 1..32, --prune-every >= 2\n');
  process.exit(2);
}
const TIMEOUT_MS = 120_000;
const MiB = 1 << 20;
const t0 = Date.now();
const log = (m) => process.stderr.write(`race-run: ${((Date.now() - t0) / 1000).toFixed(1)} s: ${m}\n`);
const sha = (b) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A seeded generator, so that a failing run can be repeated with the same choices (timing still varies).
let state = BigInt(Number(args.seed) || 1);
function rand() {
  state = (state * 6364136223846793005n + 1442695040888963407n) & ((1n << 64n) - 1n);
  return Number(state >> 11n) / 2 ** 53;
}
const pick = (xs) => xs[Math.floor(rand() * xs.length)];
const between = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));

const counts = {};
const count = (what) => (counts[what] = (counts[what] ?? 0) + 1);

// ---- processes ----

async function serve(file) {
  const child = spawn('node', [cli, '-c', file, 'serve'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let errors = '';
  child.stdout.on('data', (d) => {
    for (const line of String(d).split('\n')) if (/"level":50/.test(line)) errors += `${line}\n`;
  });
  const port = await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /berth listening on port (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`berth serve exited with ${code}`)));
  });
  return { base: `http://127.0.0.1:${port}`, errors: () => errors, stop: () => new Promise((r) => (child.once('exit', r), child.kill('SIGTERM'))) };
}

const berth = (file, ...argv) =>
  run('node', [cli, '-c', file, ...argv], { maxBuffer: 1 << 24, timeout: 600_000 }).then(
    (r) => ({ code: 0, out: r.stdout }),
    (e) => ({ code: e.code, out: `${e.stdout ?? ''}${e.stderr ?? ''}` }),
  );

// ---- a client's requests ----

const call = (s, method, path, init = {}) => fetch(`${s.base}${path}`, { method, ...init, signal: AbortSignal.timeout(TIMEOUT_MS) });

async function status(s, method, path, init) {
  const res = await call(s, method, path, init);
  await res.arrayBuffer();
  count(`${method.padEnd(6)} ${res.status}`);
  return res;
}

/** A PATCH whose body streams slowly: it has read the upload's state long before it stores anything. */
function slowPatch(s, location, offset, body) {
  let finish;
  const answer = new Promise((resolve) => {
    const req = http.request(`${s.base}${location}`, { method: 'PATCH', headers: { 'Content-Range': `${offset}-${offset + body.length - 1}`, 'Transfer-Encoding': 'chunked' } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', () => resolve('reset'));
    req.write(body.subarray(0, 32 << 10));
    finish = () => req.end(body.subarray(32 << 10));
  });
  return { answer: answer.then((st) => (count(`PATCH  ${st} (streamed across a commit)`), st)), finish: () => finish() };
}

/** Bytes several clients push: the same digest committed from several uploads at once. */
const shared = Array.from({ length: 4 }, (_, i) => randomBytes(i % 2 ? 3 * MiB + 17 : 200_000 + i));
const pushed = []; // { repo, tag, manifest, layers: [{digest, size}] } answered 201

async function oneRound(servers, client, round) {
  const repo = `race/c${client}`;
  const chunks = Array.from({ length: between(1, 4) }, () => randomBytes(pick([100_000, 700_000, MiB, MiB + 300_000, 2 * MiB + 5])));
  const data = rand() < 0.15 ? pick(shared) : Buffer.concat(chunks);
  const parts = data === Buffer.concat(chunks) ? chunks : [data];
  const digest = sha(data);
  let ok = false;
  if (rand() < 0.25) {
    ok = (await status(pick(servers), 'POST', `/v2/${repo}/blobs/uploads/?digest=${digest}`, { body: data })).status === 201;
  } else {
    const start = await status(pick(servers), 'POST', `/v2/${repo}/blobs/uploads/`);
    let location = start.headers.get('location');
    if (!location) return;
    let offset = 0;
    for (const c of parts) {
      const res = await status(pick(servers), 'PATCH', location, { headers: { 'Content-Range': `${offset}-${offset + c.length - 1}` }, body: c });
      if (res.status !== 202) return;
      offset += c.length;
    }
    const [a, b] = rand() < 0.5 ? servers : [servers[1], servers[0]];
    const race = rand();
    if (race < 0.5) {
      // The loss path: a chunk streaming into one process while the other commits; then DELETE, or another commit.
      const extra = randomBytes(pick([50_000, MiB]));
      const late = slowPatch(b, location, offset, extra);
      await sleep(between(0, 300));
      // A DELETE through the other process sometimes goes just before the PUT, sometimes just after it.
      const cancelFirst = rand() < 0.15;
      const early = cancelFirst ? status(b, 'DELETE', location) : null;
      const put = status(a, 'PUT', `${location}?digest=${digest}`);
      const cancel = early ?? (rand() < 0.2 ? status(b, 'DELETE', location) : null);
      await sleep(between(0, 200));
      late.finish();
      ok = (await put).status === 201;
      if (cancel) count(`race: PUT ${(await put).status} with DELETE ${(await cancel).status} at once`);
      if ((await late.answer) === 202) {
        const after = rand() < 0.5 ? status(b, 'DELETE', location) : status(b, 'PUT', `${location}?digest=${sha(Buffer.concat([data, extra]))}`);
        await after;
      }
    } else if (race < 0.7) {
      // Two commits of one upload through both processes: the same digest (a retry) and, sometimes, another one.
      const other = rand() < 0.5 ? digest : sha(data.subarray(1));
      const [x, y] = await Promise.all([status(a, 'PUT', `${location}?digest=${digest}`), status(b, 'PUT', `${location}?digest=${other}`)]);
      ok = x.status === 201 || (other === digest && y.status === 201);
      count(`race: two PUTs (${other === digest ? 'same' : 'other'} digest) ${[x.status, y.status].sort().join('+')}`);
    } else {
      ok = (await status(a, 'PUT', `${location}?digest=${digest}`)).status === 201;
    }
  }
  if (!ok) return;
  count('blob committed');
  if (rand() < 0.2) return; // left unreferenced: prune sweeps it
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', client, round }));
  const configPush = await status(pick(servers), 'POST', `/v2/${repo}/blobs/uploads/?digest=${sha(config)}`, { body: config });
  if (configPush.status !== 201) return;
  const manifest = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest, size: data.length }],
  };
  const tag = `r${round}`;
  const res = await status(pick(servers), 'PUT', `/v2/${repo}/manifests/${tag}`, {
    headers: { 'Content-Type': manifest.mediaType },
    body: JSON.stringify(manifest),
  });
  if (res.status === 201) pushed.push({ repo, tag, layers: [manifest.config, ...manifest.layers] });
}

// ---- the run ----

async function main() {
  const clouds = (await run(join(root, 'tools/swift-aio.sh'), ['start'])).stdout.trim().split('\n').pop();
  const auth = /auth_url:\s*(\S+)/.exec(await readFile(clouds, 'utf8'))[1];
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(new URL(auth).hostname)) throw new Error(`Swift at ${auth} is not on loopback`);
  const container = `berth-race-${randomBytes(4).toString('hex')}`;
  const work = await mkdtemp(join(tmpdir(), 'berth-race-'));
  const file = join(work, 'registry.yaml');
  await writeFile(
    file,
    `registry:\n  address: 127.0.0.1\n  port: 0\n  upload-expiry: 5\n  storage:\n    driver: swift\n    cloud: berth-test\n    container: ${container}\n` +
      `    clouds-file: ${clouds}\n    segment-size: 1048576\n    commit: ${args.commit}\n`,
  );
  const servers = await Promise.all([serve(file), serve(file)]);
  log(`two processes on container ${container}, commit: ${args.commit}, ${CLIENTS} clients for ${DURATION} s, prune every ${PRUNE_EVERY} s`);
  const until = Date.now() + DURATION * 1000;
  let prunes = 0;
  let pruneFailures = 0;
  const pruner = (async () => {
    while (Date.now() < until) {
      await sleep(PRUNE_EVERY * 1000);
      const p = await berth(file, 'prune');
      prunes++;
      if (p.code !== 0) pruneFailures++;
    }
  })();
  let errors = 0;
  const clients = Array.from({ length: CLIENTS }, async (_, client) => {
    for (let round = 0; Date.now() < until; round++) {
      try {
        await oneRound(servers, client, round);
      } catch (err) {
        errors++;
        log(`client ${client}: ${err.message}`);
      }
    }
  });
  await Promise.all([...clients, pruner]);
  log(`clients done; last prune and fsck`);
  const last = await berth(file, 'prune');
  if (last.code !== 0) pruneFailures++;
  const fsck = await berth(file, 'fsck');
  const problems = fsck.out.split('\n').filter((l) => /^(CORRUPT|UNREADABLE|SEGMENT|MISSING|SHARED) /.test(l));

  // Every blob a kept manifest names, read through both processes and hashed.
  let checked = 0;
  const lost = [];
  for (const { repo, tag, layers } of pushed) {
    const m = await call(pick(servers), 'GET', `/v2/${repo}/manifests/${tag}`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
    if (m.status !== 200) {
      lost.push(`${repo}:${tag} manifest ${m.status}`);
      continue;
    }
    await m.arrayBuffer();
    for (const l of layers) {
      for (const s of servers) {
        checked++;
        const res = await call(s, 'GET', `/v2/${repo}/blobs/${l.digest}`).catch((err) => ({ status: err.message }));
        let got = null;
        if (res.status === 200) got = await res.arrayBuffer().then((b) => Buffer.from(b), () => null);
        if (!got || got.length !== l.size || sha(got) !== l.digest) lost.push(`${repo}:${tag} ${l.digest} through ${s.base}: ${got ? 'wrong bytes' : res.status}`);
      }
    }
  }
  const logged = servers.map((s) => s.errors()).join('');
  await Promise.all(servers.map((s) => s.stop()));
  await dropContainer(container, await swiftSession(auth));
  await rm(work, { recursive: true, force: true });

  const summary = {
    commit: args.commit,
    seconds: Math.round((Date.now() - t0) / 1000),
    clients: CLIENTS,
    requests: counts,
    manifestsKept: pushed.length,
    blobReadsChecked: checked,
    lost: lost.length,
    fsckExit: fsck.code,
    fsckProblems: problems.length,
    prunes,
    pruneFailures,
    clientErrors: errors,
    serverErrorLines: logged.split('\n').filter(Boolean).length,
  };
  process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  for (const l of lost.slice(0, 20)) process.stdout.write(`LOST ${l}\n`);
  for (const p of problems.slice(0, 20)) process.stdout.write(`FSCK ${p}\n`);
  if (logged) process.stdout.write(`server errors (first 5):\n${logged.split('\n').slice(0, 5).join('\n')}\n`);
  process.exit(lost.length > 0 || problems.length > 0 || fsck.code !== 0 ? 1 : 0);
}

main().catch((err) => {
  process.stderr.write(`race-run: ${err.stack}\n`);
  process.exit(1);
});
