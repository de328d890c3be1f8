#!/usr/bin/env node
// Pushes through Berth into a Swift that misbehaves (tools/fault-proxy.mjs in front of the real one), then checks
// every outcome with the faults off: completed images must pull back byte-identically, failed ones must be absent or
// intact, and fsck must find nothing.
// usage: node tools/fault-run.mjs [--pushes 30] [--fail-rate 0.10] [--flip-rate 0.01] [--seed 7] [--out FILE]
// (run `npm run build` first; starts Swift with tools/swift-aio.sh)
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { dropContainer, swiftSession } from './swift-lib.mjs';

const run = promisify(execFile);
const root = new URL('..', import.meta.url).pathname;
const { values: args } = parseArgs({
  options: {
    pushes: { type: 'string', default: '30' },
    'fail-rate': { type: 'string', default: '0.10' },
    'flip-rate': { type: 'string', default: '0.01' },
    seed: { type: 'string', default: '7' },
    out: { type: 'string' },
  },
});
const log = (m) => process.stderr.write(`fault-run: ${m}\n`);
const sha = (b) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

function start(cmd, argv, pattern) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let buf = '';
    child.stdout.on('data', (d) => {
      buf += d;
      const m = pattern.exec(buf);
      if (m) resolve({ child, port: Number(m[1]) });
    });
    child.stderr.on('data', (d) => process.env.FAULT_DEBUG && process.stderr.write(d));
    child.once('exit', (code) => reject(new Error(`${cmd} exited with ${code}: ${buf.slice(-500)}`)));
  });
}

const work = await mkdtemp(join(tmpdir(), 'berth-faults-'));
const clouds = (await run(join(root, 'tools/swift-aio.sh'), ['start'])).stdout.trim().split('\n').pop();
const swiftAuth = /auth_url:\s*(\S+)/.exec(await readFile(clouds, 'utf8'))[1];
const upstream = new URL(swiftAuth).origin;
const fail = Number(args['fail-rate']);
const proxy = await start('node', [join(root, 'tools/fault-proxy.mjs'), '--port', '0', '--upstream', upstream, '--seed', args.seed, '--stall-ms', '4000'], /listening on port (\d+)/);
const faults = (body) =>
  fetch(`http://127.0.0.1:${proxy.port}/__faults`, { method: 'POST', body: JSON.stringify(body) }).then((r) => r.json());
await writeFile(
  join(work, 'clouds.yaml'),
  `clouds:\n  faulty:\n    auth_type: v1password\n    auth:\n      auth_url: http://127.0.0.1:${proxy.port}/auth/v1.0\n      username: test:tester\n      password: testing\n`,
);
const container = `berth-faults-${randomBytes(4).toString('hex')}`;
await writeFile(
  join(work, 'registry.yaml'),
  `registry:\n  address: 127.0.0.1\n  port: 0\n  storage:\n    driver: swift\n    cloud: faulty\n    container: ${container}\n    clouds-file: ${join(work, 'clouds.yaml')}\n    segment-size: 1048576\n    request-timeout: 2\n`,
);
const berth = await start('node', [join(root, 'dist/cli.js'), '-c', join(work, 'registry.yaml'), 'serve'], /berth listening on port (\d+)/);
const host = `127.0.0.1:${berth.port}`;
let berthExit = null;
berth.child.once('exit', (code, signal) => (berthExit = code ?? signal));
const skopeo = (...a) => run('skopeo', ['--insecure-policy', ...a], { maxBuffer: 1 << 24, timeout: 180_000 });

/** An image of two gzipped random layers (about 2.5 MiB and 200 KiB): three segments, several requests each. */
async function image(dir, n) {
  await mkdir(join(dir, 'blobs/sha256'), { recursive: true });
  const put = async (data) => {
    const d = sha(data);
    await writeFile(join(dir, 'blobs/sha256', d.slice(7)), data);
    return { digest: d, size: data.length };
  };
  const layers = [];
  for (const size of [2_500_000, 200_000]) layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...(await put(gzipSync(randomBytes(size), { level: 1 }))) });
  const config = await put(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', n, rootfs: { type: 'layers', diff_ids: [] } })));
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config }, layers }));
  const m = await put(manifest);
  await writeFile(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  await writeFile(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...m, annotations: { 'org.opencontainers.image.ref.name': 'v1' } }] }));
  return { manifest: m.digest, blobs: [config.digest, ...layers.map((l) => l.digest)] };
}

/** Pull `ref` into a fresh layout and re-hash everything: true when every byte is right. */
async function intact(ref, expected) {
  const out = join(work, `pull-${randomBytes(4).toString('hex')}`);
  try {
    await skopeo('copy', '--src-tls-verify=false', ref, `oci:${out}:v1`);
    const index = JSON.parse(await readFile(join(out, 'index.json'), 'utf8'));
    if (index.manifests[0].digest !== expected.manifest) return false;
    for (const d of [expected.manifest, ...expected.blobs]) if (sha(await readFile(join(out, 'blobs/sha256', d.slice(7)))) !== d) return false;
    return true;
  } catch {
    return false;
  } finally {
    await rm(out, { recursive: true, force: true });
  }
}

const N = Number(args.pushes);
const result = { attempted: 0, completed: 0, failedCleanly: 0, failedDirty: 0, completedButWrong: 0, lostAfterCompletion: 0 };
const pushes = [];
log(`pushing ${N} images with ${fail * 100}% of Swift object requests failing and ${Number(args['flip-rate']) * 100}% of bodies corrupted`);
// Failures split between 5xx answers, connection resets mid-body, stalls past the timeout and truncated reads.
await faults({ error: fail * 0.4, reset: fail * 0.3, stall: fail * 0.1, truncate: fail * 0.2, flip: Number(args['flip-rate']) });
for (let i = 0; i < N; i++) {
  const img = await image(join(work, `img${i}`), i);
  const ref = `docker://${host}/faults/app${i}:v1`;
  result.attempted++;
  let ok = true;
  try {
    await skopeo('copy', '--retry-times', '2', '--dest-tls-verify=false', `oci:${join(work, `img${i}`)}:v1`, ref);
  } catch {
    ok = false;
  }
  pushes.push({ ref, img, ok });
  log(`push ${i + 1}/${N}: ${ok ? 'completed' : 'failed'}`);
}
const injected = (await faults({ off: true })).counts;
for (const p of pushes) {
  const good = await intact(p.ref, p.img);
  if (p.ok) {
    result.completed++;
    if (!good) {
      // Distinguish wrong bytes from a missing image.
      const there = await skopeo('inspect', '--raw', '--tls-verify=false', p.ref).then(() => true, () => false);
      if (there) result.completedButWrong++;
      else result.lostAfterCompletion++;
    }
  } else {
    const there = await skopeo('inspect', '--raw', '--tls-verify=false', p.ref).then(() => true, () => false);
    if (!there || good) result.failedCleanly++;
    else result.failedDirty++;
  }
}
const fsck = await run('node', [join(root, 'dist/cli.js'), '-c', join(work, 'registry.yaml'), 'fsck'], { maxBuffer: 1 << 24 }).then(
  (r) => ({ code: 0, out: r.stdout }),
  (e) => ({ code: e.code, out: e.stdout }),
);
result.fsckProblems = Number(/; (\d+) problems/.exec(fsck.out)?.[1] ?? -1);
result.injected = injected;
result.serverCrashed = berthExit !== null;
berth.child.kill('SIGTERM');
proxy.child.kill('SIGTERM');
if (berthExit === null) await new Promise((r) => berth.child.once('exit', r));
await dropContainer(container, await swiftSession(swiftAuth));
await rm(work, { recursive: true, force: true });

process.stdout.write(
  `${result.attempted} pushes attempted, ${result.completed} completed, ${result.failedCleanly} failed cleanly, ` +
    `${result.failedDirty} failed leaving a broken image, ${result.completedButWrong} completed-but-wrong, ` +
    `${result.lostAfterCompletion} lost after completion; fsck problems: ${result.fsckProblems}; ` +
    `server ${result.serverCrashed ? `CRASHED (${berthExit})` : 'never crashed'}; ` +
    `faults injected: ${JSON.stringify(injected)}\n`,
);
if (args.out) await writeFile(args.out, JSON.stringify(result, null, 2));
process.exitCode = result.completedButWrong + result.lostAfterCompletion + result.failedDirty + result.fsckProblems === 0 && !result.serverCrashed ? 0 : 1;
