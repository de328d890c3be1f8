/**
 * `berth prune` as cron runs it, beside two `berth serve` processes on one storage: a client pushes images through
 * both servers while prune runs again and again, some runs at once. Afterwards every image whose manifest PUT
 * succeeded pulls intact through either server unless prune was entitled to expire its tag, every prune either
 * finished or refused for the lock, and a last prune leaves a store that fsck passes.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pushBlob, pushImage, sha256, spawnServe, type ServeProcess } from '../helpers/server.js';
import { BACKENDS, storageYaml, swiftRaw, type Backend } from '../helpers/swift.js';
import type { CommitMode } from '../../src/registry/upload-commit.js';

/**
 * Seconds. The configuration accepts 1 for both, so within the test prune really deletes idle uploads, sweeps
 * unreferenced blobs (older than UPLOAD_EXPIRY) and expires tags (older than EXPIRATION): no pre-aged fixture is
 * needed, the fixture just waits. Images of the first half expire while the second half is pushed; EXPIRATION
 * stays well above one prune run (8 s on Swift here under load), so the last images are still there to check.
 */
const UPLOAD_EXPIRY = 1;
const EXPIRATION = 8;
/**
 * On Swift, under load (other sessions' Swift benchmarks, load average 5-7 on 2 cores), prune runs took 4-27 s, and
 * in 2 of 7 link-mode runs the last images had expired before the last prune reached them (nothing lost: no image
 * was left to check). Move mode has the same exposure (runs of up to 11.5 s seen). Link mode's claims cost a GET
 * and a listing per claimed directory, yet 60 tagged images pruned in 4.6-4.9 s in link mode against 5.2-8.1 s in
 * move mode in one measurement: the spread is mostly load. More headroom on Swift.
 */
const SWIFT_EXPIRATION = 12;
/** Images pushed while prune runs: the first half before the fixture's tags expire, the second half after. */
const IMAGES = 16;
const PUSH_ATTEMPTS = 8;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface CliRun {
  args: string[];
  code: number | null;
  stdout: string;
  stderr: string;
  started: number;
  ended: number;
}

interface Pushed {
  repo: string;
  tag: string;
  digest: string;
  /** Config and layers. */
  blobs: string[];
  /** The last manifest PUT's status: 201, or 400 MANIFEST_BLOB_UNKNOWN on every attempt. */
  status: number;
  /** When the successful PUT was sent: the tag's storage time is no earlier. */
  putStart: number;
  attempts: number;
}

/** A prune that found the namespace locked: README "Two prunes" (on Swift the lock's create can also lose a race). */
const lockRefusal = (r: CliRun) =>
  r.code === 1 && /^namespace _local: skipped: another prune (holds|took) /m.test(r.stdout) && !/deletions failed/.test(r.stdout);

/** Sum of one row (uploads, tags, blobs...) of prune's summary over runs: [examined, kept, deleted]. */
function tallied(runs: CliRun[], row: string): number[] {
  const sum = [0, 0, 0];
  for (const r of runs) {
    const m = new RegExp(`^\\s+${row}\\s+(\\d+)\\s+(\\d+)\\s+(\\d+)$`, 'm').exec(r.stdout);
    if (m) for (let i = 0; i < 3; i++) sum[i] += Number(m[i + 1]);
  }
  return sum;
}

/**
 * Each backend in its default commit mode, and Swift with commit: link too: there a blob's segments stay in its
 * upload's directory, which prune must keep while the blob is stored and a racing commit must not lose.
 */
const VARIANTS = BACKENDS.flatMap((backend): [label: string, backend: Backend, commit?: CommitMode][] =>
  backend === 'swift' ? [[backend, backend], ['swift-link', backend, 'link']] : [[backend, backend]],
);

describe.each(VARIANTS)('prune beside two server processes (%s)', (label, backend, commit) => {
  const expiration = backend === 'swift' ? SWIFT_EXPIRATION : EXPIRATION;
  let dir: string;
  let config: string;
  let storage: { yaml: string; cleanup(): Promise<void> };
  let servers: ServeProcess[];
  const runs: CliRun[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-prune-procs-'));
    storage = await storageYaml(backend, dir, commit);
    const yaml = `registry:\n  address: 127.0.0.1\n  port: 0\n  expiration: ${expiration}\n  upload-expiry: ${UPLOAD_EXPIRY}\n${storage.yaml}`;
    config = join(dir, 'registry.yaml');
    await writeFile(config, yaml);
    servers = await Promise.all([0, 1].map(() => spawnServe(yaml, dir)));
  });
  afterAll(async () => {
    for (const s of servers ?? []) expect(await s.stop()).toBe(0);
    await storage?.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  /** The built CLI; `-d` so that each deletion is in the log, for the report of a failure. */
  function berth(...args: string[]): Promise<CliRun> {
    const started = Date.now();
    return new Promise((resolve) => {
      execFile(process.execPath, ['dist/cli.js', '-c', config, '-d', ...args], { maxBuffer: 256 << 20 }, (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
        const run = { args, code, stdout, stderr, started, ended: Date.now() };
        if (args[0] === 'prune') runs.push(run);
        resolve(run);
      });
    });
  }

  /** What prune logged about a digest (its deletions, claims and failures), to name the culprit of a lost blob. */
  function pruneLogAbout(digest: string): string[] {
    const hex = digest.slice(7);
    const out: string[] = [];
    for (const [i, r] of runs.entries()) {
      for (const line of r.stderr.split('\n')) {
        if (line.includes(hex)) out.push(`prune run ${i} (${new Date(r.started).toISOString()}..${new Date(r.ended).toISOString()}): ${line}`);
      }
    }
    return out.slice(0, 8);
  }

  const status = async (url: string, method = 'GET') => {
    const res = await fetch(url, { method });
    await res.arrayBuffer();
    return res.status;
  };

  async function until(what: string, done: () => Promise<boolean>, ms = 40_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!(await done())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(200);
    }
  }

  /**
   * Upload one blob: monolithically through `a`, or in two chunks, POST and PUT through `a` and the PATCH between
   * through `b`. An upload may legitimately vanish (prune deletes one idle for UPLOAD_EXPIRY); it is started again.
   */
  async function uploadBlob(repo: string, data: Buffer, a: string, b: string, chunked: boolean, hiccups: string[]): Promise<void> {
    const digest = sha256(data);
    for (let attempt = 1; ; attempt++) {
      let outcome: string;
      if (!chunked) {
        const res = await fetch(`${a}/v2/${repo}/blobs/uploads/?digest=${digest}`, { method: 'POST', body: new Uint8Array(data) });
        outcome = `monolithic POST ${res.status} ${await res.text()}`;
        if (res.status === 201) return;
      } else {
        const half = data.length >> 1;
        const start = await fetch(`${a}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
        await start.arrayBuffer();
        const location = start.headers.get('location');
        const patch = await fetch(`${b}${location}`, { method: 'PATCH', headers: { 'Content-Range': `0-${half - 1}` }, body: new Uint8Array(data.subarray(0, half)) });
        await patch.arrayBuffer();
        const put = await fetch(`${a}${location}?digest=${digest}`, {
          method: 'PUT',
          headers: { 'Content-Range': `${half}-${data.length - 1}` },
          body: new Uint8Array(data.subarray(half)),
        });
        outcome = `POST ${start.status}, PATCH ${patch.status}, PUT ${put.status} ${await put.text()}`;
        if (start.status === 202 && patch.status === 202 && put.status === 201) return;
      }
      hiccups.push(`${repo} ${digest}: ${outcome}`);
      if (attempt === PUSH_ATTEMPTS) throw new Error(`upload of ${digest} to ${repo} failed ${attempt} times; last: ${outcome}`);
      await sleep(100 * attempt);
    }
  }

  /**
   * Push like a client: HEAD each blob and upload what is missing, then PUT the manifest; on MANIFEST_BLOB_UNKNOWN
   * (a sweep won the race for a blob) start again. Which servers take which requests depends on `mode`.
   */
  async function pushVia(mode: number, repo: string, tag: string, blobs: Buffer[], hiccups: string[]): Promise<Pushed> {
    const [a, b] = servers.map((s) => s.url);
    // 0: all through a; 1: all through b; 2: blobs through a, manifest through b; 3: chunks a→b→a, manifest b.
    const blobServer = mode === 1 ? b : a;
    const manifestServer = mode === 0 ? a : b;
    const digests = blobs.map((d) => sha256(d));
    const body = JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digests[0], size: blobs[0].length },
      layers: blobs.slice(1).map((l, i) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: digests[i + 1], size: l.length })),
    });
    const pushed: Pushed = { repo, tag, digest: sha256(body), blobs: digests, status: 0, putStart: 0, attempts: 0 };
    while (pushed.attempts < PUSH_ATTEMPTS) {
      pushed.attempts++;
      for (const [i, data] of blobs.entries()) {
        if ((await status(`${blobServer}/v2/${repo}/blobs/${digests[i]}`, 'HEAD')) === 200) continue;
        await uploadBlob(repo, data, blobServer, mode === 3 ? b : blobServer, mode === 3, hiccups);
      }
      const putStart = Date.now();
      const res = await fetch(`${manifestServer}/v2/${repo}/manifests/${tag}`, { method: 'PUT', headers: { 'Content-Type': OCI_MANIFEST }, body });
      const text = await res.text();
      pushed.status = res.status;
      if (res.status === 201) {
        pushed.putStart = putStart;
        return pushed;
      }
      // Anything but a clean refusal naming a blob is a failure of the protocol.
      const code = res.status === 400 ? (JSON.parse(text) as { errors: { code: string }[] }).errors[0]?.code : undefined;
      if (code !== 'MANIFEST_BLOB_UNKNOWN') throw new Error(`manifest PUT ${repo}:${tag}: ${res.status} ${text}`);
      hiccups.push(`${repo}:${tag}: ${text.trim()}`);
      await sleep(100 * pushed.attempts);
    }
    return pushed;
  }

  /**
   * Every image whose PUT succeeded: its tag resolves through both servers to the manifest pushed, and each blob
   * GET through both servers re-hashes to its digest; or the tag is gone and some prune that ran after the tag was
   * EXPIRATION old could have expired it (a second of margin for storage clocks).
   */
  async function verify(pushed: Pushed[], lastPruneEnded: number): Promise<{ problems: string[]; intact: number }> {
    const problems: string[] = [];
    let intact = 0;
    for (const p of pushed.filter((x) => x.status === 201)) {
      const name = `${p.repo}:${p.tag} (${p.digest}, put ${new Date(p.putStart).toISOString()})`;
      const byTag = await Promise.all(
        servers.map(async (s) => {
          const res = await fetch(`${s.url}/v2/${p.repo}/manifests/${p.tag}`, { headers: { Accept: OCI_MANIFEST } });
          return { status: res.status, digest: sha256(Buffer.from(await res.arrayBuffer())) };
        }),
      );
      if (byTag.every((t) => t.status === 404)) {
        if (p.putStart + (expiration - 1) * 1000 >= lastPruneEnded) {
          problems.push(`${name}: tag gone though no prune could have expired it yet; ${pruneLogAbout(p.digest).join('; ')}`);
        }
        continue;
      }
      let ok = true;
      for (const [i, t] of byTag.entries()) {
        if (t.status !== 200 || t.digest !== p.digest) {
          ok = false;
          problems.push(`${name}: manifest by tag through server ${i}: ${t.status}, ${t.digest}; ${pruneLogAbout(p.digest).join('; ')}`);
        }
      }
      for (const d of p.blobs) {
        for (const [i, s] of servers.entries()) {
          const res = await fetch(`${s.url}/v2/${p.repo}/blobs/${d}`);
          const got = await res.arrayBuffer().then((b) => sha256(Buffer.from(b)), (err: Error) => `unreadable: ${err.message}`);
          if (res.status !== 200 || got !== d) {
            ok = false;
            problems.push(`${name}: blob ${d} through server ${i}: ${res.status}, ${got}; prune log: ${pruneLogAbout(d).join('; ') || 'nothing'}`);
          }
        }
      }
      if (ok) intact++;
    }
    return { problems, intact };
  }

  it('images pushed through either process while prunes run, some at once, pull intact through both; fsck passes after', async () => {
    const [a, b] = servers.map((s) => s.url);
    const hiccups: string[] = [];
    const phases: Record<string, number> = { fixture: Date.now() };
    // Fixture: two tagged images whose layers S0 and S1 the second half of the pushes names again once the tags
    // have expired; S2 and S3 pushed unreferenced, named by the first half of the pushes while the first sweeps
    // run; two orphans nothing names; an upload abandoned after one chunk.
    const shared = Array.from({ length: 4 }, () => randomBytes(1500 + Math.floor(Math.random() * 1000)));
    const oldImages = [];
    for (const i of [0, 1]) oldImages.push(await pushImage(a, 'race/app', `old-${i}`, [shared[i], randomBytes(900)]));
    for (const l of shared.slice(2)) await pushBlob(b, 'race/app', l);
    const orphans = [];
    for (let i = 0; i < 2; i++) orphans.push(await pushBlob(a, 'race/app', randomBytes(700)));
    const start = await fetch(`${b}/v2/race/app/blobs/uploads/`, { method: 'POST' });
    const abandoned = start.headers.get('location')!;
    expect((await fetch(`${a}${abandoned}`, { method: 'PATCH', headers: { 'Content-Range': '0-99' }, body: new Uint8Array(randomBytes(100)) })).status).toBe(202);
    // Older than the upload expiry: the first prune may sweep the unreferenced blobs and the upload.
    await sleep(UPLOAD_EXPIRY * 1000 + 300);
    phases.loop = Date.now();

    let pushing = true;
    const pruneLoop = async (delayMs: number) => {
      await sleep(delayMs);
      while (pushing) {
        // A refused run costs a process start and nothing else; give the holder time instead of spinning.
        if (lockRefusal(await berth('prune'))) await sleep(2000);
      }
    };
    // Three at once at the start (the lock's create races itself), then two loops that overlap now and then.
    const prunes = Promise.all([berth('prune'), berth('prune'), berth('prune'), pruneLoop(0), pruneLoop(700)]);

    // Image i of the first half has its own layer; image i + IMAGES/2 names it again, about when image i expires
    // and prune sweeps that layer. Some images are in another repository, where a layer is uploaded again and its
    // commit finds the blob stored (or being swept).
    const own = Array.from({ length: IMAGES / 2 }, () => randomBytes(1000 + Math.floor(Math.random() * 500)));
    const image = (i: number) => {
      const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', n: i, nonce: randomBytes(4).toString('hex') }));
      const first = i < IMAGES / 2;
      const sharedLayer = first ? shared[2 + (i % 2)] : shared[i % 4];
      const layers = i % 3 === 0 ? [own[i % (IMAGES / 2)]] : [sharedLayer, own[i % (IMAGES / 2)]];
      return pushVia(i % 4, i % 5 === 4 ? 'race/other' : 'race/app', `t${i}`, [config, ...layers], hiccups);
    };
    const pushAll = async (from: number, to: number) => {
      const lane = async (first: number) => {
        const out: Pushed[] = [];
        for (let i = first; i < to; i += 2) out.push(await image(i));
        return out;
      };
      return (await Promise.all([lane(from), lane(from + 1)])).flat();
    };
    let pushed: Pushed[] = [];
    try {
      pushed = await pushAll(0, IMAGES / 2);
      await until('the fixture tags to expire', async () => {
        const gone = await Promise.all([0, 1].map(async (i) => (await status(`${a}/v2/race/app/manifests/old-${i}`, 'HEAD')) === 404));
        return gone.every(Boolean);
      });
      phases.secondHalf = Date.now();
      pushed.push(...(await pushAll(IMAGES / 2, IMAGES)));
    } finally {
      pushing = false;
      await prunes;
    }

    // A last prune alone, at once (so that the images of the last seconds are not yet EXPIRATION old): it finishes.
    const last = await berth('prune');
    const marks: Record<string, number> = { ...phases, stopped: last.started, lastPrune: last.ended };
    const describeRun = (r: CliRun) => `exit ${r.code}: ${r.stdout.trim()} ${r.stderr.split('\n').filter((l) => /"level":(40|50|60)/.test(l)).join(' ')}`;
    expect(last.code, describeRun(last)).toBe(0);
    expect(runs.filter((r) => r.code !== 0 && !lockRefusal(r)).map(describeRun)).toEqual([]);
    // The fixture went as configured: orphans and the exclusive layers of the expired images swept, the
    // abandoned upload deleted, the expired manifests gone.
    for (const d of [...orphans, ...oldImages.map((o) => (o.manifest.layers[1] as { digest: string }).digest)]) {
      expect(await status(`${a}/v2/race/app/blobs/${d}`, 'HEAD')).toBe(404);
    }
    for (const o of oldImages) expect(await status(`${b}/v2/race/app/manifests/${o.digest}`, 'HEAD')).toBe(404);
    expect(await status(`${a}${abandoned}`)).toBe(404);

    expect(pushed.filter((p) => p.status === 201).length).toBeGreaterThan(0);
    const checked = await verify(pushed, last.ended);
    // With BERTH_TEST_LOG set (as for the servers' logs), what the race did (before the assertions, so that a failure has it too): nothing here is asserted.
    if (process.env.BERTH_TEST_LOG) {
      const row = (name: string) => tallied(runs, name).join('/');
      const lastPut = Math.max(...pushed.map((p) => p.putStart));
      const durations = runs
        .filter((r) => r.code === 0)
        .map((r) => ((r.ended - r.started) / 1000).toFixed(1))
        .join(', ');
      const claimed = runs.reduce((n, r) => n + r.stderr.split('a push claimed the blob').length - 1, 0);
      const at = Object.entries(marks).map(([k, t]) => `${k} +${((t - marks.fixture) / 1000).toFixed(1)}s`).join(', ');
      process.stderr.write(
        `prune-processes ${label}: ${at}; ${runs.length} prunes (${runs.filter(lockRefusal).length} refused for the lock); ` +
          `examined/kept/deleted summed: uploads ${row('uploads')}, tags ${row('tags')}, manifests ${row('manifests')}, blobs ${row('blobs')}; ` +
          `${claimed} blobs claimed by a push during a sweep; ` +
          `${pushed.filter((p) => p.status === 201).length}/${pushed.length} pushed (${pushed.filter((p) => p.attempts > 1).length} retried), ` +
          `${checked.intact} checked intact; last manifest PUT ${((last.started - lastPut) / 1000).toFixed(1)} s before the last prune; prune runs that finished took ${durations} s; ${hiccups.length} hiccups:\n  ${hiccups.join('\n  ')}\n`,
      );
    }
    expect(checked.problems).toEqual([]);
    // The last images were pushed less than EXPIRATION before the last prune began, so some are checked.
    expect(checked.intact).toBeGreaterThan(0);
    const fsck = await berth('fsck');
    expect(fsck.code, `${fsck.stdout}\n${fsck.stderr}`).toBe(0);
    if (commit === 'link') {
      // The store really is in link mode: blobs read from claimed upload directories, nothing was moved to parts/.
      const container = /container: (\S+)/.exec(storage.yaml)![1];
      const names = ((await (await swiftRaw(`${container}?format=json&prefix=_local/&limit=10000`)).json()) as { name: string }[]).map((o) => o.name);
      expect(names.filter((n) => /^_local\/uploads\/[^/]+\/owner\.sha256:[0-9a-f]{64}$/.test(n)).length).toBeGreaterThan(0);
      expect(names.filter((n) => n.includes('/parts/'))).toEqual([]);
    }

  });
});
