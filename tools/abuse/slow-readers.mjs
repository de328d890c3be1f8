// Downloads never read: N clients, each from its own loopback address (127.0.10.1, 127.0.10.2, ...), GET one large
// blob, read the response headers and then take no byte more. The server must close every such connection within
// its send-idle timeout (plus slack), keep its RSS bounded while they wait (what one paused response may hold:
// docs/security-network.md), and give the memory back once they are gone.
//
// Prefers --tls-url (the issue's case: TLS costs a second buffer per connection). The blob is pushed by ctx.user;
// the readers GET it with a pull token (or anonymously when the namespace is public and no user is given).
// Full scale: 200 readers of a 64 MiB blob, RSS under 400 MB. Small: 20 readers of 8 MiB, RSS under base + 150 MB.
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { rssMb } from './lib/server-watch.mjs';

const REPO = 'abuse/slow-readers';
const SLACK_S = 5;
const FD_TOLERANCE = 2;

/** An Authorization value for `actions` on `repo` ("pull" or "pull,push"); undefined when /v2/ needs none. */
export async function authFor(ctx, repo, actions = 'pull') {
  const base = ctx.tlsUrl ?? ctx.url;
  const probe = await ctx.request(base, { path: '/v2/' });
  if (probe.status === 200) return undefined;
  const challenge = probe.headers['www-authenticate'] ?? '';
  const realm = /realm="([^"]+)"/.exec(challenge)?.[1];
  if (!challenge.startsWith('Bearer') || !realm) return ctx.basic(ctx.user, ctx.password).Authorization;
  const service = /service="([^"]+)"/.exec(challenge)?.[1] ?? '';
  const target = new URL(realm);
  const path = `${target.pathname}?service=${encodeURIComponent(service)}&scope=${encodeURIComponent(`repository:${repo}:${actions}`)}`;
  const res = await ctx.request(target.origin, { path, headers: ctx.user ? ctx.basic(ctx.user, ctx.password) : {} });
  if (res.status !== 200) throw new Error(`token request answered ${res.status}`);
  return `Bearer ${JSON.parse(res.body).token}`;
}

/** Push `size` random bytes as a blob of `repo` (one monolithic POST); returns its digest. */
export async function pushBlob(ctx, repo, size) {
  const data = randomBytes(size);
  const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
  const authorization = await authFor(ctx, repo, 'pull,push');
  const headers = { 'Content-Type': 'application/octet-stream', 'Content-Length': String(size), ...(authorization ? { Authorization: authorization } : {}) };
  const res = await ctx.request(ctx.tlsUrl ?? ctx.url, { method: 'POST', path: `/v2/${repo}/blobs/uploads/?digest=${digest}`, headers, body: data });
  if (res.status !== 201) throw new Error(`blob push answered ${res.status} ${String(res.body).slice(0, 200)}`);
  return digest;
}

/** The n-th attacker's loopback address, clear of those other scripts use (127.0.0.x, 127.0.5.x, 127.0.6.x). */
export const readerAddress = (i) => `127.0.${10 + Math.floor(i / 250)}.${1 + (i % 250)}`;

export async function run(ctx) {
  const full = ctx.scale === 'full';
  const n = full ? 200 : 20;
  const size = (full ? 64 : 8) << 20;
  const url = ctx.tlsUrl ?? ctx.url;
  const sendIdle = ctx.timeouts.sendIdle;
  const pid = await ctx.pidOf(url);
  const digest = await pushBlob(ctx, REPO, size);
  const authorization = await authFor(ctx, REPO);
  const base = await ctx.fds(pid);
  const rssBase = await rssMb(pid);
  const limit = full ? 400 : rssBase + 150;

  const { hostname, port } = new URL(url);
  const request = `GET /v2/${REPO}/blobs/${digest} HTTP/1.1\r\nHost: ${hostname}\r\n${authorization ? `Authorization: ${authorization}\r\n` : ''}\r\n`;
  let rssPeak = rssBase;
  const sampler = setInterval(() => rssMb(pid).then((r) => (rssPeak = Math.max(rssPeak, r)), () => {}), 250);
  const watch = ctx.watchFds(pid);
  const statuses = {};
  const readers = await Promise.all(
    Array.from({ length: n }, (_, i) => {
      const opts = { host: hostname, port: Number(port), localAddress: readerAddress(i) };
      const s = url.startsWith('https:') ? tls.connect({ ...opts, rejectUnauthorized: false }) : net.connect(opts);
      s.on('error', () => {});
      return new Promise((resolve) => {
        let head = '';
        let received = 0;
        const onData = (d) => {
          received += d.length;
          head += d.subarray(0, 1024).toString('latin1');
          if (!head.includes('\r\n\r\n')) return;
          // Headers read: from here on this client takes nothing.
          s.off('data', onData);
          s.pause();
          const status = /^HTTP\/1\.1 (\d+)/.exec(head)?.[1] ?? '?';
          statuses[status] = (statuses[status] ?? 0) + 1;
          resolve({ s, received: () => received, opened: Date.now() });
        };
        s.on('data', onData);
        s.once(url.startsWith('https:') ? 'secureConnect' : 'connect', () => s.write(request));
        s.once('close', () => resolve({ s, received: () => received, opened: Date.now() }));
      });
    }),
  );
  const started = Date.now();
  const bound = sendIdle + SLACK_S;
  let fdsNow = await ctx.fds(pid);
  let closedAfter;
  while (Date.now() - started < (bound + SLACK_S) * 1000) {
    fdsNow = await ctx.fds(pid);
    if (fdsNow <= base + FD_TOLERANCE) {
      closedAfter = (Date.now() - started) / 1000;
      break;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  const rssHeld = await rssMb(pid);
  // Resume every reader: each must end short of the whole blob (the server cut it off), none receives it all.
  let whole = 0;
  await Promise.all(
    readers.map(({ s }) => {
      if (s.destroyed) return undefined;
      let got = 0;
      s.on('data', (d) => (got += d.length));
      const done = new Promise((resolve) => s.once('close', resolve));
      s.resume();
      setTimeout(() => s.destroy(), 5000).unref();
      return done.then(() => (got >= size ? whole++ : undefined));
    }),
  );
  clearInterval(sampler);
  watch.stop();
  await new Promise((r) => setTimeout(r, 3000));
  const rssAfter = await rssMb(pid);

  const ok = statuses['200'] === n;
  const held = ok && closedAfter !== undefined && closedAfter <= bound && rssPeak < limit && whole === 0;
  const mb = (x) => `${Math.round(x)} MB`;
  return {
    attack: `${n} clients from ${n} addresses GET a ${size >> 20} MiB blob${url.startsWith('https:') ? ' over TLS' : ''} and never read`,
    held,
    detail:
      `answers ${JSON.stringify(statuses)}; ` +
      (closedAfter === undefined ? `server still held ${fdsNow - base} connections after ${bound + SLACK_S} s` : `all closed by the server after ${closedAfter.toFixed(1)} s (send-idle ${sendIdle} s, bound ${bound} s)`) +
      `; server fds ${base} -> ${watch.peak()} -> ${fdsNow}; RSS ${mb(rssBase)} -> peak ${mb(rssPeak)} (limit ${mb(limit)}) -> ${mb(rssHeld)} when closed -> ${mb(rssAfter)} 3 s later` +
      (whole ? `; ${whole} readers got the whole blob` : ''),
  };
}
