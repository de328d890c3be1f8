// Uploads and manifest PUTs that send part of their body and then nothing, from a user allowed to push: the server
// must drop each after its body-idle timeout (plus a few seconds), give back the descriptors, leave each upload as
// it was (and resumable), store no manifest, and (with --root, filesystem) leave no temporary file.
import { readdir } from 'node:fs/promises';
import net from 'node:net';
import tls from 'node:tls';

const SLACK_S = 5;
const FD_TOLERANCE = 2;
const REPO = 'abuse/stalled';

export async function run(ctx) {
  const n = ctx.scale === 'full' ? 100 : 5;
  const url = ctx.url;
  const auth = ctx.basic(ctx.user, ctx.password);
  const pid = await ctx.pidOf(url);
  const uploads = [];
  for (let i = 0; i < n; i++) {
    const start = await ctx.request(url, { method: 'POST', path: `/v2/${REPO}/blobs/uploads/`, headers: auth });
    if (start.status !== 202) throw new Error(`POST upload: ${start.status} ${start.body}`);
    const location = start.headers.location;
    const first = await ctx.request(url, { method: 'PATCH', path: location, headers: { ...auth, 'Content-Range': '0-999', 'Content-Length': '1000' }, body: Buffer.alloc(1000, 7) });
    if (first.status !== 202) throw new Error(`PATCH: ${first.status} ${first.body}`);
    uploads.push(location);
  }
  const base = await ctx.fds(pid);

  const { hostname, port } = new URL(url);
  const open = () =>
    url.startsWith('https:')
      ? tls.connect({ host: hostname, port: Number(port), rejectUnauthorized: false })
      : net.connect(Number(port), hostname);
  const watch = ctx.watchFds(pid);
  const authLine = `Authorization: ${auth.Authorization}\r\n`;
  let closed = 0;
  const stalled = [];
  const stall = (head, part) => {
    const s = open();
    s.on('error', () => {});
    s.on('data', () => {});
    s.on('close', () => closed++);
    s.write(head + authLine + '\r\n');
    s.write(part);
    stalled.push(s);
  };
  for (const location of uploads) {
    stall(`PATCH ${location} HTTP/1.1\r\nHost: ${hostname}\r\nContent-Type: application/octet-stream\r\nContent-Range: 1000-1049575\r\nContent-Length: 1048576\r\n`, Buffer.alloc(65536, 1));
  }
  for (let i = 0; i < n; i++) {
    stall(`PUT /v2/${REPO}/manifests/stalled-${i} HTTP/1.1\r\nHost: ${hostname}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 2000\r\n`, '{"schemaVersion":2,"mediaType":');
  }
  const started = Date.now();
  const bound = ctx.timeouts.bodyIdle + SLACK_S;
  let now = base;
  while (Date.now() - started < (bound + SLACK_S) * 1000) {
    now = await ctx.fds(pid);
    if (closed === stalled.length && now <= base + FD_TOLERANCE) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  const seconds = (Date.now() - started) / 1000;
  watch.stop();
  const peak = watch.peak();
  const dropped = closed;
  for (const s of stalled) s.destroy();

  const problems = [];
  for (const location of uploads) {
    const status = await ctx.request(url, { path: location, headers: auth });
    if (status.status !== 204 || status.headers.range !== '0-999') problems.push(`upload now ${status.status} ${status.headers.range}`);
  }
  const more = await ctx.request(url, { method: 'PATCH', path: uploads[0], headers: { ...auth, 'Content-Range': '1000-1009', 'Content-Length': '10' }, body: Buffer.alloc(10) });
  if (more.status !== 202) problems.push(`the upload cannot go on: ${more.status}`);
  for (let i = 0; i < n; i++) {
    const m = await ctx.request(url, { method: 'HEAD', path: `/v2/${REPO}/manifests/stalled-${i}`, headers: auth });
    if (m.status !== 404) problems.push(`manifest stalled-${i}: ${m.status}`);
  }
  if (ctx.root) {
    const temps = (await readdir(ctx.root, { recursive: true })).filter((p) => p.split('/').pop().startsWith('.tmp-'));
    if (temps.length) problems.push(`${temps.length} temporary files left`);
  }
  for (const location of uploads) await ctx.request(url, { method: 'DELETE', path: location, headers: auth }).catch(() => {});

  const held = dropped === stalled.length && now <= base + FD_TOLERANCE && seconds <= bound && problems.length === 0;
  return {
    attack: `${n} stalled PATCH + ${n} stalled manifest PUT bodies`,
    held,
    detail:
      `${dropped}/${stalled.length} dropped by the server after ${seconds.toFixed(1)} s (bound ${bound} s); server fds ${base} -> ${peak} -> ${now}; ` +
      (problems.length ? problems.slice(0, 3).join('; ') : `uploads unchanged and resumable, no manifest stored${ctx.root ? ', no temporary file' : ''}`),
  };
}
