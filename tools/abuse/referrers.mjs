/**
 * Abuse: referrers amplification (issue 24). A write user PUTs N artifact manifests naming one subject, each with
 * annotations just under the bound (MAX_ANNOTATIONS_BYTES, src/registry/manifest-doc.ts), and one over it; then
 * parallel clients, each from its own loopback address and at most 20 requests a second, GET the subject's
 * referrers list for a bounded time, following the `Link: <...>; rel="next"` pages, anonymously where the registry
 * lets them (else with a token).
 * Meanwhile a worker thread GETs another tenant's manifest every 25 ms and samples the server's RSS.
 *
 * Held when the over-bound PUT gets 400 MANIFEST_INVALID, every referrers GET 200 with at most the page's byte
 * bound, the pages name every referrer, the server's RSS stays under 300 MB, and the probe's p99 under attack is
 * within 3x its idle p99 (or under 50 ms: on an idle loopback a few ms of p99 is noise, not harm).
 *
 * ctx: { url, user, password, scale, log, pid?, pidOf? }; returns { attack, held, detail }. Another tenant for
 * the probe: BERTH_ABUSE_PROBE_USER / BERTH_ABUSE_PROBE_PASSWORD (default: the same user, another repository).
 */
import { randomBytes } from 'node:crypto';
import { OCI_MANIFEST, authorization, mb, probeSummary, pushSmallImage, putManifest, send, sha256, watcher } from './lib/watch.mjs';

const ANNOTATIONS_BYTES = 16 * 1024; // MAX_ANNOTATIONS_BYTES
const PAGE_BYTES = 256 * 1024; // REFERRERS_PAGE_BYTES
const RSS_LIMIT = 300 * 1024 * 1024;
const RATIO_LIMIT = 3;
const FLOOR_MS = 50;
/** At small scale (the suite's 2-s runs on a shared machine) the probe only has to be served within a second. */
const SMALL_SCALE_FLOOR_MS = 1000;
const REPO = 'abuse/referrers';
/** Each client sends at most one GET per this many ms: a fixed rate, as from a few hosts. */
const INTERVAL_MS = 50;

export async function run(ctx) {
  const full = ctx.scale === 'full';
  const floorMs = full ? FLOOR_MS : SMALL_SCALE_FLOOR_MS;
  const referrers = full ? 200 : 20;
  const clients = full ? 6 : 2;
  const seconds = full ? 20 : 2;
  // Refreshed when it expires: on a busy Swift the 200 pushes can outlast a token.
  let headers = await authorization(ctx.url, ctx.user, ctx.password, [REPO]);

  const subject = await pushSmallImage(ctx.url, headers, REPO, 'subject');
  const artifact = (annotations) =>
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        artifactType: 'application/vnd.example.abuse',
        config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: subject.configDigest, size: 2 },
        layers: [],
        subject: { mediaType: OCI_MANIFEST, digest: subject.digest, size: subject.body.length },
        annotations,
      }),
    );
  // {"a":"..."} at `bytes` of JSON.
  const sized = (bytes) => ({ a: randomBytes(8).toString('hex').padEnd(bytes - 8, 'x') });
  const over = await putManifest(ctx.url, headers, REPO, sha256(artifact(sized(ANNOTATIONS_BYTES + 1))), artifact(sized(ANNOTATIONS_BYTES + 1)));
  const overRefused = over.status === 400 && /MANIFEST_INVALID/.test(over.body);
  const pushed = new Set();
  for (let i = 0; i < referrers; i++) {
    const body = artifact(sized(ANNOTATIONS_BYTES));
    let res = await putManifest(ctx.url, headers, REPO, sha256(body), body);
    if (res.status === 401) {
      headers = await authorization(ctx.url, ctx.user, ctx.password, [REPO]);
      res = await putManifest(ctx.url, headers, REPO, sha256(body), body);
    }
    if (res.status !== 201) throw new Error(`referrer PUT ${i}: ${res.status} ${res.body}`);
    pushed.add(sha256(body));
  }
  const first = `/v2/${REPO}/referrers/${subject.digest}`;
  const anonymous = (await send(ctx.url, { path: first })).status === 200;
  const getHeaders = anonymous ? {} : headers;

  // One walk of every page, to check that the pages together name each referrer once.
  const seen = [];
  let walked = 0;
  for (let path = first; path; walked++) {
    const res = await send(ctx.url, { path, headers: getHeaders, keep: true });
    if (res.status !== 200) throw new Error(`referrers GET: ${res.status}`);
    seen.push(...JSON.parse(res.body.toString()).manifests.map((m) => m.digest));
    path = /^<([^>]+)>; rel="next"$/.exec(res.headers.link ?? '')?.[1];
  }
  // Earlier runs against the same server add their own referrers of this subject: each of ours once is the check.
  const listed = new Set(seen);
  const complete = listed.size === seen.length && [...pushed].every((d) => listed.has(d));

  ctx.log(`referrers: ${referrers} referrers of ${ANNOTATIONS_BYTES} bytes of annotations, ${clients} ${anonymous ? 'anonymous' : 'authorized'} clients for ${seconds} s`);
  // Idle as long as the attack: a longer window sees more of the machine's other load, so equal ones compare.
  const w = await watcher(ctx, 'abuse/referrers-probe', seconds * 1000);
  await w.start();
  const statuses = {};
  let pages = 0;
  let bytes = 0;
  let largest = 0;
  const until = Date.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: clients }, async (_, i) => {
      const localAddress = `127.0.24.${i + 1}`;
      for (let path = first; Date.now() < until; ) {
        const started = performance.now();
        const res = await send(ctx.url, { path, headers: getHeaders, localAddress }).catch((err) => ({ status: `error ${err.message}`, headers: {}, bytes: 0 }));
        const took = performance.now() - started;
        if (took < INTERVAL_MS) await new Promise((r) => setTimeout(r, INTERVAL_MS - took));
        statuses[res.status] = (statuses[res.status] ?? 0) + 1;
        pages++;
        bytes += res.bytes;
        largest = Math.max(largest, res.bytes);
        path = /^<([^>]+)>; rel="next"$/.exec(res.headers.link ?? '')?.[1] ?? first;
      }
    }),
  );
  const watched = await w.stop();
  const probe = probeSummary(watched);
  const rssKnown = watched.rss.samples > 0;
  const allOk = Object.keys(statuses).every((s) => s === '200');
  const held =
    overRefused && complete && allOk && largest <= PAGE_BYTES + 1024 && watched.failures === 0 &&
    (probe.ratio <= RATIO_LIMIT || probe.attackP99 < floorMs) && (!rssKnown || watched.rss.peak < RSS_LIMIT);
  const detail =
    `over-bound PUT ${over.status}; ${pushed.size} referrers pushed, ${seen.length} listed over ${walked} pages (${complete ? 'each once' : 'NOT each once'}); ` +
    `${pages} page GETs in ${seconds} s, answers ${JSON.stringify(statuses)}, ${mb(bytes)} sent, largest page ${Math.round(largest / 1024)} KiB; ` +
    `${probe.text}${w.probeUser !== ctx.user ? ` (tenant ${w.probeUser})` : ''}; server RSS ${rssKnown ? `${mb(watched.rss.first)} at the start, peak ${mb(watched.rss.peak)}` : 'unknown'} (${watched.rss.source}, ${watched.rss.samples} samples)`;
  return { attack: `${clients} parallel ${anonymous ? 'anonymous' : 'authorized'} referrers GETs of ${referrers} annotated referrers`, held, detail };
}

// Standalone: node tools/abuse/referrers.mjs URL [small|full] [server-pid] (BERTH_USER / BERTH_PASSWORD for a login).
if (import.meta.url === `file://${process.argv[1]}`) {
  const [url, scale = 'small', pid] = process.argv.slice(2);
  const result = await run({ url, user: process.env.BERTH_USER, password: process.env.BERTH_PASSWORD, scale, pid: pid ? Number(pid) : undefined, log: (m) => console.error(m) });
  console.log(`${result.attack} -> ${result.held ? 'held' : 'BROKEN'}\n  ${result.detail}`);
  process.exitCode = result.held ? 0 : 1;
}
