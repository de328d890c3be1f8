#!/usr/bin/env node
// Several `berth serve` processes on one Swift container behind a round-robin load balancer (a TCP proxy in this
// script). A chunking client uploads a blob; in the middle of a chunk the process serving that chunk is killed
// with SIGKILL (and restarted). The client does what the spec says: GET the upload status through the balancer,
// PATCH again from the reported offset, then PUT. skopeo pushes through the balancer at the same time.
// usage: node tools/lb-kill.mjs [--kills 20] [--servers 3] [--backend swift|filesystem] [--blob-mib 8]
// (run `npm run build` first). Prints "N/N pushes completed after a kill" and exits 1 unless all completed.
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { dropContainer } from './swift-lib.mjs';

const run = promisify(execFile);
const root = new URL('..', import.meta.url).pathname;
const { values: args } = parseArgs({
  options: {
    kills: { type: 'string', default: '20' },
    servers: { type: 'string', default: '3' },
    backend: { type: 'string', default: 'swift' },
    'blob-mib': { type: 'string', default: '8' },
  },
});
const log = (m) => process.stderr.write(`lb-kill: ${m}\n`);
const work = await mkdtemp(join(tmpdir(), 'berth-lb-'));
const container = `berth-lb-${randomBytes(4).toString('hex')}`;
let storage;
if (args.backend === 'swift') {
  const clouds = (await run(join(root, 'tools/swift-aio.sh'), ['start'])).stdout.trim().split('\n').pop();
  storage = `  storage:\n    driver: swift\n    cloud: berth-test\n    container: ${container}\n    clouds-file: ${clouds}\n    segment-size: 1048576\n`;
} else {
  storage = `  storage:\n    driver: filesystem\n    root: ${join(work, 'data')}\n`;
}

// ---- servers on fixed ports, restartable ----
const servers = [];
async function startServer(i, port) {
  const file = join(work, `registry-${i}.yaml`);
  await writeFile(file, `registry:\n  address: 127.0.0.1\n  port: ${port}\n${storage}`);
  const child = spawn('node', [join(root, 'dist/cli.js'), '-c', file, 'serve'], { stdio: ['ignore', 'pipe', 'ignore'] });
  await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /berth listening on port (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (c) => reject(new Error(`server exited ${c}`)));
  }).then((p) => (servers[i] = { child, port: p }));
  child.stdout.resume();
}
for (let i = 0; i < Number(args.servers); i++) await startServer(i, 0);

// ---- round-robin TCP balancer; remembers which server each client connection went to ----
// Like nginx or haproxy, it passes a connection that a server refuses (one being restarted) to the next server:
// nothing was sent yet, so that is safe for any request. A connection cut after it was established is not retried.
let next = 0;
const routeOf = new Map(); // client local port -> server index
const balancer = net.createServer((client) => {
  client.pause();
  const first = next++ % servers.length;
  const attempt = (k) => {
    const i = (first + k) % servers.length;
    const upstream = net.connect(servers[i].port, '127.0.0.1');
    const refused = () => {
      upstream.destroy();
      if (k + 1 < servers.length) attempt(k + 1);
      else client.destroy();
    };
    upstream.once('error', refused);
    upstream.once('connect', () => {
      upstream.off('error', refused);
      routeOf.set(client.remotePort, i);
      client.pipe(upstream).pipe(client);
      client.resume();
      const close = () => {
        client.destroy();
        upstream.destroy();
        routeOf.delete(client.remotePort);
      };
      client.on('error', close);
      upstream.on('error', close);
      client.on('close', close);
      upstream.on('close', close);
    });
  };
  client.on('error', () => client.destroy());
  attempt(0);
});
await new Promise((r) => balancer.listen(0, '127.0.0.1', r));
const lb = `127.0.0.1:${balancer.address().port}`;
log(`${servers.length} servers behind ${lb} on ${args.backend}`);

// ---- the chunking client ----
const agent = new http.Agent({ keepAlive: false });
function request(method, path, { headers = {}, body, onSocket } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: balancer.address().port, method, path, headers, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (onSocket) req.on('socket', (s) => s.on('connect', () => onSocket(s)));
    if (typeof body === 'function') body(req);
    else req.end(body);
  });
}

/** Restarts in progress: the client may recover through the other servers before one ends, and must not outrun it. */
const restarts = new Set();
function killAndRestart(i) {
  const { child, port } = servers[i];
  const restart = (async () => {
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    await startServer(i, port);
  })();
  restarts.add(restart);
  return restart.finally(() => restarts.delete(restart));
}

/** Upload one blob in 1 MiB chunks; kill the server handling chunk `killAt` halfway through it; recover. */
async function pushWithKill(n) {
  const blob = randomBytes(Number(args['blob-mib']) * 1024 * 1024);
  const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}`;
  const started = await request('POST', `/v2/lb/app${n}/blobs/uploads/`);
  if (started.status !== 202) throw new Error(`POST ${started.status}`);
  let location = started.headers.location;
  const CHUNK = 1024 * 1024;
  const killAt = 1 + Math.floor(Math.random() * (blob.length / CHUNK - 2));
  let offset = 0;
  let killed = false;
  let recoveries = 0;
  while (offset < blob.length) {
    const end = Math.min(offset + CHUNK, blob.length);
    const chunk = blob.subarray(offset, end);
    const doKill = !killed && offset / CHUNK >= killAt;
    let res;
    try {
      res = await request('PATCH', location, {
        headers: { 'Content-Range': `${offset}-${end - 1}`, 'Content-Length': chunk.length, 'Content-Type': 'application/octet-stream' },
        body: (req) => {
          if (!doKill) return req.end(chunk);
          // Half the chunk, then SIGKILL whichever server this connection landed on.
          req.write(chunk.subarray(0, chunk.length / 2));
          req.on('socket', () => {});
          setTimeout(async () => {
            killed = true;
            const i = routeOf.get(req.socket.localPort);
            if (i !== undefined) await killAndRestart(i);
            req.end(chunk.subarray(chunk.length / 2));
          }, 50);
        },
      });
    } catch {
      res = null;
    }
    if (res && res.status === 202) {
      location = res.headers.location;
      offset = end;
      continue;
    }
    // Recovery as the spec describes: ask where the upload stands, go on from there.
    // (A client retries a request that failed to connect: a killed server takes a moment to come back.)
    recoveries++;
    let status = null;
    for (let attempt = 0; attempt < 10 && status?.status !== 204; attempt++) {
      status = await request('GET', location).catch(() => null);
      if (status?.status !== 204) await new Promise((r) => setTimeout(r, 200));
    }
    if (status?.status !== 204) throw new Error(`upload status after a failure: ${status?.status}`);
    offset = Number(/^0-(\d+)$/.exec(status.headers.range ?? '')?.[1] ?? -1) + 1;
  }
  let put = null;
  for (let attempt = 0; attempt < 10 && put?.status !== 201; attempt++) {
    put = await request('PUT', `${location}${location.includes('?') ? '&' : '?'}digest=${digest}`).catch(() => null);
    if (put?.status !== 201) await new Promise((r) => setTimeout(r, 200));
  }
  if (put?.status !== 201) throw new Error(`PUT ${put?.status} ${put?.body}`);
  const got = await request('GET', `/v2/lb/app${n}/blobs/${digest}`);
  const ok = got.status === 200 && createHash('sha256').update(got.body).digest('hex') === digest.slice(7);
  return { ok, killed, recoveries };
}

// skopeo through the balancer meanwhile (it restarts a failed push: --retry-times).
async function skopeoPushes(count) {
  let done = 0;
  for (let i = 0; i < count; i++) {
    const dir = join(work, `img${i}`);
    await mkdir(join(dir, 'blobs/sha256'), { recursive: true });
    const put = async (data) => {
      const d = createHash('sha256').update(data).digest('hex');
      await writeFile(join(dir, 'blobs/sha256', d), data);
      return { digest: `sha256:${d}`, size: data.length };
    };
    const layer = await put(gzipSync(randomBytes(3_000_000), { level: 1 }));
    const config = await put(Buffer.from(JSON.stringify({ os: 'linux', architecture: 'amd64', n: i, rootfs: { type: 'layers', diff_ids: [] } })));
    const m = await put(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config }, layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...layer }] })));
    await writeFile(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    await writeFile(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...m, annotations: { 'org.opencontainers.image.ref.name': 'v1' } }] }));
    try {
      await run('skopeo', ['--insecure-policy', 'copy', '--retry-times', '3', '--dest-tls-verify=false', `oci:${dir}:v1`, `docker://${lb}/lb/skopeo${i}:v1`]);
      done++;
    } catch (err) {
      log(`skopeo push ${i + 1}/${count} failed: ${String(err.stderr ?? err.message).trim().split('\n').pop()}`);
    }
  }
  return done;
}

const kills = Number(args.kills);
const skopeoCount = Math.max(1, Math.floor(kills / 4));
const skopeoDone = skopeoPushes(skopeoCount);
let completed = 0;
let recoveries = 0;
for (let n = 0; n < kills; n++) {
  try {
    const r = await pushWithKill(n);
    if (r.ok && r.killed) completed++;
    recoveries += r.recoveries;
    log(`push ${n + 1}/${kills}: ${r.ok ? 'completed' : 'WRONG BYTES'} after ${r.recoveries} recoveries`);
  } catch (err) {
    log(`push ${n + 1}/${kills}: failed: ${err.message}`);
  }
}
const skopeoOk = await skopeoDone;
// A server still starting would outlive the SIGTERMs below (and keep this script alive through its pipe).
await Promise.allSettled([...restarts]);
for (const s of servers) s.child.kill('SIGTERM');
balancer.close();
if (args.backend === 'swift') await dropContainer(container);
await rm(work, { recursive: true, force: true });
process.stdout.write(`${completed}/${kills} pushes completed after a SIGKILL mid-chunk (${recoveries} recoveries); skopeo through the balancer: ${skopeoOk}/${skopeoCount}\n`);
process.exitCode = completed === kills && skopeoOk === skopeoCount ? 0 : 1;
