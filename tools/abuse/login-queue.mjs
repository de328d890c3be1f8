// The password-check queue under a flood from one /24: attackers from 127.0.5.1 ... 127.0.5.N, each running C
// concurrent bad logins for ctx.user (full: 128 × 10, small: 16 × 4), while a client from another /24 (127.0.6.1)
// asks for its first token with the right password. Held when that login answers 200 within 2 s. Also timed: one
// check with a fresh wrong password from a third /24 (never cached, so it always waits its turn in the queue), and
// the same check on the idle server before the flood (what one check costs here). At small scale (CI, where users
// usually have plain passwords and the machine is busy) the bound is 10 s: it checks the client is let in at all.
//
// Point it at a server whose ctx.user has a costly bcrypt password (cost 12, as the issue measured) that was not
// used in the last 5 minutes: a cached right password answers at once and measures nothing (the detail says so).
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { performance } from 'node:perf_hooks';


/** One GET /auth/token with Basic credentials; resolves with status and milliseconds (0: the socket failed). */
function token(base, user, password, agent) {
  const url = new URL('/auth/token?scope=repository:abuse/login-queue:pull', base);
  const lib = url.protocol === 'https:' ? https : http;
  const started = performance.now();
  const authorization = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
  return new Promise((resolve) => {
    const req = lib.get(url, { agent, headers: { Authorization: authorization }, rejectUnauthorized: false }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode, ms: performance.now() - started, retryAfter: Number(res.headers['retry-after']) }));
      res.on('error', () => resolve({ status: 0, ms: performance.now() - started }));
    });
    req.on('error', () => resolve({ status: 0, ms: performance.now() - started }));
  });
}

export async function run(ctx) {
  const full = ctx.scale === 'full';
  const addresses = full ? 128 : 16;
  const concurrency = full ? 10 : 4;
  const floodSeconds = full ? 20 : 5;
  const limitMs = full ? 2000 : 10_000;
  const base = new URL(ctx.tlsUrl ?? ctx.url);
  if (!/^127\./.test(base.hostname)) throw new Error('needs a loopback URL (the attackers bind 127.0.5.x)');
  const Agent = base.protocol === 'https:' ? https.Agent : http.Agent;
  const agent = (localAddress, maxSockets = 1) => new Agent({ keepAlive: true, maxSockets, localAddress });
  const fresh = () => randomBytes(12).toString('base64');

  // What one uncached check costs on the idle server (a wrong password: counted once against 127.0.7.1).
  const idleAgent = agent('127.0.7.1');
  const idle = await token(base, ctx.user, fresh(), idleAgent);
  ctx.log(`login-queue: one check on the idle server ${idle.status} in ${Math.round(idle.ms)} ms; flooding`);

  let flooding = true;
  // Ends the attackers' Retry-After waits as soon as the flood is over (they can be told to wait 30 s and more).
  let endFlood;
  const floodOver = new Promise((resolve) => (endFlood = resolve));
  const statuses = {};
  const agents = [];
  const loops = [];
  for (let a = 0; a < addresses; a++) {
    const attacker = agent(`127.0.5.${a + 1}`, concurrency);
    agents.push(attacker);
    for (let c = 0; c < concurrency; c++) {
      loops.push(
        (async () => {
          while (flooding) {
            const r = await token(base, ctx.user, fresh(), attacker);
            if (!flooding) break;
            statuses[r.status] = (statuses[r.status] ?? 0) + 1;
            // A refusal says when to come back (Retry-After, at least 1 s): attackers that ignore it measure how fast
            // the server can say no, which is another attack (connections, requests), not this one.
            if (r.status === 429 || r.status === 0) {
              let timer;
              await Promise.race([floodOver, new Promise((resolve) => (timer = setTimeout(resolve, 1000 * Math.max(1, r.retryAfter || 1))))]);
              clearTimeout(timer);
            }
          }
        })(),
      );
    }
  }
  // Let the flood fill the queue before the clean clients ask.
  await new Promise((resolve) => setTimeout(resolve, Math.min(3, floodSeconds / 2) * 1000));
  const legitAgent = agent('127.0.6.1');
  const [legit, clean] = await Promise.all([token(base, ctx.user, ctx.password, legitAgent), token(base, ctx.user, fresh(), idleAgent)]);
  ctx.log(`login-queue: first token ${legit.status} in ${Math.round(legit.ms)} ms`);
  const later = [];
  const until = Date.now() + floodSeconds * 1000;
  while (Date.now() < until) {
    later.push(await token(base, ctx.user, ctx.password, legitAgent));
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  flooding = false;
  endFlood();
  ctx.log('login-queue: flood over');
  for (const a of [...agents, legitAgent, idleAgent]) a.destroy();
  await Promise.all(loops);

  const ms = (x) => `${Math.round(x)} ms`;
  const refusedLater = later.filter((r) => r.status !== 200).length;
  const held = legit.status === 200 && legit.ms <= limitMs && refusedLater === 0;
  return {
    attack: `login queue: ${addresses} addresses of 127.0.5.0/24 × ${concurrency} concurrent bad logins for "${ctx.user}"; a client from 127.0.6.1 logs in`,
    held,
    detail:
      `first token ${legit.status} in ${ms(legit.ms)} (limit ${limitMs} ms)${legit.ms < 20 ? ' (a cache hit: restart the server to measure a first check)' : ''}; ` +
      `a fresh wrong password from 127.0.7.1 answered ${clean.status} in ${ms(clean.ms)} during the flood, ${idle.status} in ${ms(idle.ms)} idle; ` +
      `${later.length} later logins, ${refusedLater} refused; attackers' answers ${JSON.stringify(statuses)}`,
  };
}
