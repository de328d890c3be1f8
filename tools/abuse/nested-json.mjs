/**
 * Abuse: deeply nested manifest JSON (issue 24). Parallel clients, each from its own loopback address, PUT 4 MiB
 * bodies of nothing but `[` for a bounded time; then (full scale only), as the baseline, the same clients PUT
 * flat 4 MiB bodies (a manifest whose `layers` is two million zeros) for the same time. A worker thread GETs
 * another tenant's manifest every 25 ms and samples the server's RSS, idle first and then through each phase.
 *
 * Held when every hostile PUT gets 400 MANIFEST_INVALID (or its connection closed: the server reads no more of a
 * body once it has gone too deep, so a client still sending may see the close first), the server's RSS stays
 * under 300 MB, and the probe's p99 under the nested flood is within 3x its idle p99 (or under 50 ms) and, at full
 * scale, no worse than 1.5x its p99 under the flat flood (the point of the depth check: no body costs more than a
 * flat one of the same size).
 *
 * ctx: { url, user, password, scale, log, pid?, pidOf? }; returns { attack, held, detail }. Another tenant for
 * the probe: BERTH_ABUSE_PROBE_USER / BERTH_ABUSE_PROBE_PASSWORD (default: the same user, another repository).
 */
import { authorization, mb, percentile, probeSummary, putManifest, watcher } from './lib/watch.mjs';

const SIZE = 4 * 1024 * 1024; // MAX_MANIFEST_SIZE
const RSS_LIMIT = 300 * 1024 * 1024;
const RATIO_LIMIT = 3;
const FLOOR_MS = 50;
/** At small scale (the suite's 2-s runs on a shared machine) the probe only has to be served within a second. */
const SMALL_SCALE_FLOOR_MS = 1000;
/** Each client sends at most one PUT per this many ms: a fixed rate, as a flood from a few hosts would be. */
const INTERVAL_MS = 50;
const REPO = 'abuse/nested';

export async function run(ctx) {
  const full = ctx.scale === 'full';
  const floorMs = full ? FLOOR_MS : SMALL_SCALE_FLOOR_MS;
  const clients = full ? 6 : 2;
  const seconds = full ? 20 : 2;
  const headers = await authorization(ctx.url, ctx.user, ctx.password, [REPO]);
  const nested = Buffer.alloc(SIZE, '[');
  const head = '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[';
  const zeros = SIZE - head.length - 2;
  const flat = Buffer.from(`${head}${zeros % 2 ? '0' : ' 0'}${',0'.repeat(Math.floor((zeros - 1) / 2))}]}`);

  const flood = async (body) => {
    const statuses = {};
    const times = [];
    const until = Date.now() + seconds * 1000;
    await Promise.all(
      Array.from({ length: clients }, async (_, i) => {
        for (let n = 0; Date.now() < until; n++) {
          const started = performance.now();
          // The server refuses at the first piece and closes: the client may see that before the 400 ("closed").
          const res = await putManifest(ctx.url, headers, REPO, `t${i}-${n}`, body, { localAddress: `127.0.25.${i + 1}` }).catch((err) =>
            ['EPIPE', 'ECONNRESET'].includes(err.code) ? { status: 'closed', body: '' } : { status: `error ${err.message}`, body: '' },
          );
          const key = res.status === 400 && /MANIFEST_INVALID/.test(res.body) ? '400' : String(res.status);
          statuses[key] = (statuses[key] ?? 0) + 1;
          const took = performance.now() - started;
          times.push(took);
          if (took < INTERVAL_MS) await new Promise((r) => setTimeout(r, INTERVAL_MS - took));
        }
      }),
    );
    return { statuses, times };
  };

  ctx.log(`nested-json: ${clients} clients, ${seconds} s of 4 MiB of '['${full ? `, then ${seconds} s of flat 4 MiB bodies` : ''}`);
  const phases = {};
  // Nested first: the flat phase's parses grow the heap, and its RSS would be counted against the nested one. The
  // flat baseline only at full scale: at small scale (the test suite's) the verdict needs the nested phase alone.
  for (const [name, body] of full ? [['nested', nested], ['flat', flat]] : [['nested', nested]]) {
    // Idle as long as the flood: a longer window sees more of the machine's other load, so equal ones compare.
    const w = await watcher(ctx, `abuse/nested-probe-${name}`, seconds * 1000);
    await w.start();
    const puts = await flood(body);
    const watched = await w.stop();
    phases[name] = { puts, watched, probe: probeSummary(watched) };
  }
  const { flat: f, nested: n } = phases;
  const refused = Object.keys(n.puts.statuses).every((s) => s === '400' || s === 'closed');
  const rss = n.watched.rss;
  const rssKnown = rss.samples > 0;
  const held =
    refused && n.watched.failures === 0 && (!rssKnown || rss.peak < RSS_LIMIT) &&
    (n.probe.ratio <= RATIO_LIMIT || n.probe.attackP99 < floorMs) && (!f || n.probe.attackP99 <= Math.max(1.5 * f.probe.attackP99, floorMs));
  const phase = (p) =>
    `${p.puts.times.length} PUTs ${JSON.stringify(p.puts.statuses)}${p.probe.cpu ? ` (server CPU ${((p.probe.cpu.seconds / p.puts.times.length) * 1000).toFixed(1)} ms each)` : ''}, PUT p50 ${percentile(p.puts.times, 50).toFixed(0)} ms, max ${percentile(p.puts.times, 100).toFixed(0)} ms; ` +
    `${p.probe.text}; RSS ${p.watched.rss.samples ? `${mb(p.watched.rss.first)} at the start, peak ${mb(p.watched.rss.peak)}` : 'unknown'}`;
  const detail = `nested: ${phase(n)}${f ? ` | flat baseline: ${phase(f)}` : ''}`;
  return { attack: `${clients} clients PUT 4 MiB nested-bracket manifests`, held, detail };
}

// Standalone: node tools/abuse/nested-json.mjs URL [small|full] [server-pid] (BERTH_USER / BERTH_PASSWORD for a login).
if (import.meta.url === `file://${process.argv[1]}`) {
  const [url, scale = 'small', pid] = process.argv.slice(2);
  const result = await run({ url, user: process.env.BERTH_USER, password: process.env.BERTH_PASSWORD, scale, pid: pid ? Number(pid) : undefined, log: (m) => console.error(m) });
  console.log(`${result.attack} -> ${result.held ? 'held' : 'BROKEN'}\n  ${result.detail}`);
  process.exitCode = result.held ? 0 : 1;
}
