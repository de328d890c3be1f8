// Login flood: clients loop bad passwords (16 at scale 1) while a legitimate client asks for tokens with the right
// one (GET /auth/token with Basic, as `docker login` and every push do), its first one during the flood. Held when
// the legitimate logins all answer 200, their median stays under 150 ms during the flood and under 50 ms on the
// idle server afterwards. Point it at a server with a costly bcrypt user (cost 12 is what the issue measured) that
// has not seen the legitimate password in the last 5 minutes (else the first login is a cache hit).
//
// Against a loopback URL every attacker connects from its own address (127.0.0.20, .21, ...), the legitimate client
// from 127.0.0.1: the limit on failed logins is per address, so this is the case it helps least. Against another
// host they all share this host's address and the legitimate client is refused along with them (by design).
//
// usage: node tools/abuse/login.mjs URL USER PASSWORD [--bad-user NAME] [--scale 1]
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
};
const basic = (u, p) => `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`;

/** One GET; resolves with the status and the milliseconds it took (socket errors count as status 0). */
function get(url, authorization, agent) {
  const started = performance.now();
  const lib = url.protocol === 'https:' ? https : http;
  return new Promise((resolve) => {
    const req = lib.get(url, { agent, headers: { Authorization: authorization }, rejectUnauthorized: false }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode, ms: performance.now() - started }));
      res.on('error', () => resolve({ status: 0, ms: performance.now() - started }));
    });
    req.on('error', () => resolve({ status: 0, ms: performance.now() - started }));
  });
}

export async function run({ url, user, password, badUser = user, scale = 1 }) {
  const attackers = Math.max(2, Math.round(16 * scale));
  const samples = Math.max(5, Math.round(20 * scale));
  const floodSeconds = Math.max(3, 15 * scale);
  // A server that checks every login at full cost takes seconds per login: each phase stops sampling by then.
  const phaseSeconds = Math.max(20, 60 * scale);
  const base = new URL(url);
  if (base.hostname === 'localhost') base.hostname = '127.0.0.1';
  const loopback = /^127\./.test(base.hostname);
  const token = new URL('/auth/token?scope=repository:abuse/login:pull', base);
  const Agent = base.protocol === 'https:' ? https.Agent : http.Agent;
  const legit = new Agent({ keepAlive: true, maxSockets: 1, ...(loopback ? { localAddress: '127.0.0.1' } : {}) });
  const attack = `login flood: ${attackers} clients loop bad passwords for "${badUser}"; "${user}" asks for tokens`;

  /**
   * Legitimate logins one after another, 100 ms apart, `count` of them or until `until` (whichever comes later, but
   * none started after phaseSeconds): their times and any non-200 answers.
   */
  async function logins(count, until = 0) {
    const deadline = Date.now() + phaseSeconds * 1000;
    const times = [];
    const refused = [];
    while ((times.length < count || Date.now() < until) && Date.now() < deadline) {
      if (times.length) await new Promise((resolve) => setTimeout(resolve, 100));
      const r = await get(token, basic(user, password), legit);
      times.push(r.ms);
      if (r.status !== 200) refused.push(r.status);
    }
    return { times, refused };
  }

  // The flood first, so that the legitimate client's first login (not cached yet) is made during it.
  let flooding = true;
  const statuses = {};
  const agents = [];
  const answered = new Set();
  const loops = Array.from({ length: attackers }, async (_, i) => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1, ...(loopback ? { localAddress: `127.0.0.${20 + i}` } : {}) });
    agents.push(agent);
    while (flooding) {
      const r = await get(token, basic(badUser, randomBytes(9).toString('base64')), agent);
      if (!flooding) break;
      answered.add(i);
      statuses[r.status] = (statuses[r.status] ?? 0) + 1;
      // A refusal answers at once: pausing keeps the flood from spinning this process instead of loading the server.
      if (flooding && (r.status === 429 || r.status === 0)) await new Promise((resolve) => setTimeout(resolve, 20));
    }
  });
  // The flood is under way once every attacker has had an answer (each address has failed once): until then a new
  // client's first check waits behind one check per attacking address, as nothing tells it from them.
  const warm = Date.now() + Math.max(10, 40 * scale) * 1000;
  while (answered.size < attackers && Date.now() < warm) await new Promise((resolve) => setTimeout(resolve, 100));
  const warmedUp = answered.size === attackers;
  const flood = await logins(samples, Date.now() + floodSeconds * 1000);
  flooding = false;
  // Attackers' requests still waiting for their check are abandoned, not waited for.
  for (const agent of agents) agent.destroy();
  await Promise.all(loops);

  // The idle server, with the password checked once.
  await new Promise((resolve) => setTimeout(resolve, 500));
  const idle = await logins(samples);
  legit.destroy();

  const refused = [...flood.refused, ...idle.refused];
  const idleMedian = median(idle.times);
  const floodMedian = median(flood.times);
  const held = refused.length === 0 && idle.times.length > 0 && flood.times.length > 0 && idleMedian < 50 && floodMedian < 150;
  const ms = (x) => `${Math.round(x)} ms`;
  const detail =
    `during the flood: first login ${ms(flood.times[0])}, median ${ms(floodMedian)}, max ${ms(Math.max(...flood.times))} over ${flood.times.length} (limit 150 ms); ` +
    `idle afterwards: median ${ms(idleMedian)} over ${idle.times.length} (limit 50 ms); ` +
    `legitimate logins refused: ${refused.length ? refused.join(',') : 'none'}; attackers' answers: ${JSON.stringify(statuses)}` +
    (loopback ? `; attackers from ${attackers} loopback addresses` : '; attackers share this host address') +
    (warmedUp ? '' : `; only ${answered.size} attackers had an answer when the first login was sent`);
  return { attack, held, detail };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { 'bad-user': { type: 'string' }, scale: { type: 'string' } } });
  if (positionals.length !== 3) {
    process.stderr.write('usage: node tools/abuse/login.mjs URL USER PASSWORD [--bad-user NAME] [--scale 1]\n');
    process.exit(2);
  }
  const [url, user, password] = positionals;
  const result = await run({ url, user, password, badUser: values['bad-user'] ?? user, scale: Number(values.scale ?? 1) });
  process.stdout.write(`${result.attack} -> ${result.held ? 'held' : 'BROKEN'}\n  ${result.detail}\n`);
  process.exitCode = result.held ? 0 : 1;
}
