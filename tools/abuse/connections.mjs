// Many connections that never finish a TLS handshake or never send a request (plain), opened by a client that
// then says nothing: the server must close them all within its handshake/headers timeout plus a few seconds, its
// descriptors must come back to where they were, and real requests must be served meanwhile.
import net from 'node:net';

const SLACK_S = 5;
/** Descriptors the server may hold beyond its baseline at the end (a storage keep-alive connection or two). */
const FD_TOLERANCE = 2;

export async function run(ctx) {
  const n = ctx.scale === 'full' ? 1000 : 50;
  const targets = [{ url: ctx.url }, ...(ctx.tlsUrl ? [{ url: ctx.tlsUrl }] : [])];
  return Promise.all(targets.map((t) => attack(ctx, t.url, n)));
}

async function attack(ctx, url, n) {
  const tls = url.startsWith('https:');
  const kind = tls ? 'half-open TLS' : 'idle plain';
  const { hostname, port } = new URL(url);
  const pid = await ctx.pidOf(url);
  const auth = ctx.basic(ctx.user, ctx.password);
  // Warm up first, so that what the first request opens for good (storage connections) is in the baseline.
  await ctx.request(url, { path: '/v2/', headers: auth });
  const base = await ctx.fds(pid);

  const watch = ctx.watchFds(pid);
  const sockets = [];
  let closedByServer = 0;
  for (let i = 0; i < n; i += 100) {
    const batch = [];
    for (let j = i; j < Math.min(n, i + 100); j++) {
      const s = net.connect(Number(port), hostname.replace(/^\[|\]$/g, ''));
      s.on('error', () => {});
      s.on('close', () => closedByServer++);
      s.on('data', () => {});
      batch.push(new Promise((resolve) => s.once('connect', resolve).once('error', resolve)));
      sockets.push(s);
      // Half send nothing; half start and stop: a TLS record header promising a ClientHello, or half a request.
      if (j % 2) s.write(tls ? Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]) : `GET /v2/ HTTP/1.1\r\nHost: ${hostname}\r\n`);
    }
    await Promise.all(batch);
  }
  const opened = Date.now();
  const bound = Math.max(tls ? ctx.timeouts.handshake : 0, ctx.timeouts.headers) + SLACK_S;

  // Real requests, one a second, while the connections are held and until they are gone.
  let served = 0;
  let failed = 0;
  let slowest = 0;
  let now = base;
  while (Date.now() - opened < (bound + SLACK_S) * 1000) {
    const t0 = Date.now();
    try {
      const res = await ctx.request(url, { path: '/v2/', headers: auth, timeoutMs: 10_000 });
      if (res.status === 200) served++;
      else failed++;
    } catch {
      failed++;
    }
    slowest = Math.max(slowest, Date.now() - t0);
    now = await ctx.fds(pid);
    if (now <= base + FD_TOLERANCE && closedByServer === n && served > 0) break;
    await new Promise((r) => setTimeout(r, Math.max(0, 1000 - (Date.now() - t0))));
  }
  const seconds = (Date.now() - opened) / 1000;
  watch.stop();
  const peak = watch.peak();
  const dropped = closedByServer;
  for (const s of sockets) s.destroy();
  const held = now <= base + FD_TOLERANCE && dropped === n && seconds <= bound && failed === 0 && served > 0;
  return {
    attack: `${n} ${kind} connections`,
    held,
    detail:
      `server fds ${base} -> ${peak} -> ${now} after ${seconds.toFixed(1)} s (bound ${bound} s); ${dropped}/${n} closed by the server; ` +
      `GET /v2/ meanwhile: ${served} served, ${failed} failed, slowest ${slowest} ms`,
  };
}
