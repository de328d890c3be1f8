/**
 * `workers: 2`: `berth serve` as a primary with two worker processes sharing the port. Requests go out on fresh
 * connections (the kernel gives each to whichever worker accepts first), and the access log's pids show that both
 * workers answered: every check below would pass on one worker alone otherwise.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeLayout } from '../helpers/oci-layout.js';
import { basic, pushImage, sha256, spawnServe, type ServeProcess } from '../helpers/server.js';
import { dropContainer, ensureSwift, freshContainer, TEST_CLOUD } from '../helpers/swift.js';

const run = promisify(execFile);

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** One request on a connection of its own. */
function request(url: string, init: { method?: string; headers?: Record<string, string | number>; body?: Buffer } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: init.method ?? 'GET', headers: init.headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end(init.body);
  });
}

/** A served process and the pids that wrote its access-log lines since it started. */
interface Served extends ServeProcess {
  lines: Record<string, unknown>[];
  pidsServing(path: RegExp, since?: number, method?: string): Set<number>;
}

async function serve(yaml: string, dir: string): Promise<Served> {
  const s = await spawnServe(yaml, dir);
  const lines: Record<string, unknown>[] = [];
  let rest = '';
  s.child.stdout!.on('data', (d: Buffer) => {
    rest += d;
    let at;
    while ((at = rest.indexOf('\n')) >= 0) {
      const line = rest.slice(0, at);
      rest = rest.slice(at + 1);
      if (line.startsWith('{')) lines.push(JSON.parse(line) as Record<string, unknown>);
    }
  });
  return {
    ...s,
    lines,
    pidsServing: (path, since = 0, method) =>
      new Set(lines.slice(since).filter((l) => l.msg === 'request' && path.test(String(l.path)) && (!method || l.method === method)).map((l) => l.pid as number)),
  };
}

/** The worker processes: the primary's children. */
async function childrenOf(pid: number): Promise<number[]> {
  const found: number[] = [];
  for (const d of await readdir('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const stat = await readFile(`/proc/${d}/stat`, 'utf8').catch(() => '');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(fields[1]) === pid && fields[0] !== 'Z') found.push(Number(d));
  }
  return found;
}

async function metric(url: string, series: string): Promise<number> {
  const text = (await request(`${url}/metrics`)).body.toString();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

async function until(what: string, check: () => Promise<boolean>, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Eight PATCHes of one upload's first chunk at once, each on its own connection: the statuses. */
async function racePatches(s: Served, repo: string): Promise<{ statuses: number[]; location: string; winner: Buffer }> {
  const start = await request(`${s.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  expect(start.status).toBe(202);
  const location = String(start.headers.location);
  const bodies = Array.from({ length: 8 }, () => randomBytes(300_000));
  const statuses = await Promise.all(
    bodies.map(async (body) => (await request(`${s.url}${location}`, { method: 'PATCH', headers: { 'Content-Range': `0-${body.length - 1}`, 'Content-Length': body.length }, body })).status),
  );
  return { statuses, location, winner: bodies[statuses.indexOf(202)] };
}

/** Races until one has reached both workers (the kernel may give all eight to one); each must have one winner. */
async function raceUntilBothWorkers(s: Served): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const since = s.lines.length;
    const { statuses, location, winner } = await racePatches(s, `w/race${attempt}`);
    expect(statuses.filter((x) => x === 202)).toHaveLength(1);
    expect(statuses.filter((x) => x === 416)).toHaveLength(7);
    expect((await request(`${s.url}${location}?digest=${sha256(winner)}`, { method: 'PUT' })).status).toBe(201);
    const blob = await request(`${s.url}/v2/w/race${attempt}/blobs/${sha256(winner)}`);
    expect(blob.body.equals(winner)).toBe(true);
    await new Promise((r) => setTimeout(r, 200)); // the last access-log lines
    if (s.pidsServing(/\/blobs\/uploads\/./, since, 'PATCH').size === 2) return;
    if (attempt === 4) throw new Error('five races, none reached both workers');
  }
}

const fsConfig = (dir: string, extra = '') => `registry:\n  address: 127.0.0.1\n  port: 0\n  workers: 2\n${extra}  storage:\n    driver: filesystem\n    root: ${dir}/data\n`;

describe('workers: 2 on the filesystem', () => {
  let dir: string;
  let s: Served;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-workers-'));
    s = await serve(fsConfig(dir), dir);
  });
  afterAll(async () => {
    if (s.child.exitCode === null) await s.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('runs a primary and two workers; pushes and pulls (HTTP API and skopeo) are answered by both', async () => {
    expect(await childrenOf(s.child.pid!)).toHaveLength(2);
    const since = s.lines.length;
    const layers = [randomBytes(100_000), randomBytes(200_000)];
    const { body, digest } = await pushImage(s.url, 'w/api', 'v1', layers);
    for (let i = 0; i < 6; i++) {
      const m = await request(`${s.url}/v2/w/api/manifests/v1`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
      expect([m.status, sha256(m.body)]).toEqual([200, digest]);
      expect(m.body.equals(body)).toBe(true);
      const l = layers[i % 2];
      const b = await request(`${s.url}/v2/w/api/blobs/${sha256(l)}`);
      expect(b.body.equals(l)).toBe(true);
    }
    expect(s.pidsServing(/^\/v2\/w\/api\/(manifests|blobs)\//, since).size).toBe(2);

    const image = await writeLayout(join(dir, 'img'), 'v1', [150_000, 150_000, 150_000]);
    const ref = `docker://127.0.0.1:${s.port}/w/skopeo:v1`;
    await run('skopeo', ['--insecure-policy', 'copy', '--dest-tls-verify=false', `oci:${image.dir}:v1`, ref]);
    await run('skopeo', ['--insecure-policy', 'copy', '--src-tls-verify=false', ref, `oci:${join(dir, 'out')}:v1`]);
    for (const d of image.layerDigests) {
      const pulled = await readFile(join(dir, 'out', 'blobs', 'sha256', d.slice(7)));
      expect(sha256(pulled)).toBe(d);
    }
  });

  it('/metrics from either worker counts the requests both answered', async () => {
    const series = 'berth_http_requests_total{route="base",method="GET",status="200"}';
    const before = await metric(s.url, series);
    const since = s.lines.length;
    for (let i = 0; i < 20; i++) expect((await request(`${s.url}/v2/`)).status).toBe(200);
    await until('log lines of both workers', async () => s.pidsServing(/^\/v2\/$/, since).size === 2, 2000);
    // Scrapes until each worker has answered one: every one sees both workers' requests.
    const scrapeSince = s.lines.length;
    await until('a scrape answered by each worker', async () => {
      expect(await metric(s.url, series)).toBe(before + 20);
      return s.pidsServing(/^\/metrics$/, scrapeSince).size === 2;
    });
    expect(await metric(s.url, 'berth_workers')).toBe(2);
  });

  it('eight PATCHes at one offset through both workers: exactly one 202', async () => {
    await raceUntilBothWorkers(s);
  });

  it('a killed worker is replaced, and the server answers throughout', async () => {
    const [victim, survivor] = await childrenOf(s.child.pid!);
    process.kill(victim, 'SIGKILL');
    const statuses: number[] = [];
    await until('a replacement worker', async () => {
      statuses.push((await request(`${s.url}/v2/`)).status);
      const now = await childrenOf(s.child.pid!);
      return now.length === 2 && !now.includes(victim) && now.includes(survivor);
    });
    const [replacement] = (await childrenOf(s.child.pid!)).filter((p) => p !== survivor);
    await until('the replacement serving', async () => {
      statuses.push((await request(`${s.url}/v2/`)).status);
      return s.pidsServing(/^\/v2\/$/).has(replacement);
    });
    expect(statuses.every((x) => x === 200)).toBe(true);
    expect(s.lines.some((l) => l.msg === 'worker exited; starting another' && l.signal === 'SIGKILL')).toBe(true);
    expect(await metric(s.url, 'berth_worker_restarts_total')).toBe(1);
  });

  it('a worker that keeps dying is started again after growing delays, each death logged', async () => {
    const deaths = () => s.lines.filter((l) => l.msg === 'worker exited; starting another');
    const before = deaths().length;
    // The first victim names the slot; then, three times, the worker that replaced it there dies too.
    let pid = (await childrenOf(s.child.pid!))[0];
    let slot: unknown;
    for (let i = 0; i < 4; i++) {
      process.kill(pid, 'SIGKILL');
      await until('the death logged', async () => deaths().length === before + i + 1, 30_000);
      slot ??= deaths().pop()!.worker;
      const died = pid;
      await until('the next worker in the slot', async () => {
        const started = s.lines.filter((l) => l.msg === 'berth listening' && l.worker === slot).pop();
        pid = started?.pid as number;
        return started !== undefined && pid !== died;
      }, 30_000);
    }
    const logged = deaths().slice(before);
    expect(logged.map((l) => l.worker)).toEqual([slot, slot, slot, slot]);
    // Each lived well under 30 s: from the second death in a row on, at least 0.5 s, each wait twice the last.
    const delays = logged.map((l) => l.restartInMs as number);
    expect(delays[1]).toBeGreaterThanOrEqual(500);
    expect([delays[2], delays[3]]).toEqual([2 * delays[1], 4 * delays[1]]);
    expect((await request(`${s.url}/v2/`)).status).toBe(200);
  });

  it('SIGTERM drains: a PATCH in flight finishes with 202, then the primary exits 0', async () => {
    const start = await request(`${s.url}/v2/w/drain/blobs/uploads/`, { method: 'POST' });
    const location = String(start.headers.location);
    const data = randomBytes(200_000);
    let finish!: () => void;
    const patch = new Promise<number>((resolve, reject) => {
      const req = http.request(`${s.url}${location}`, { method: 'PATCH', agent: false, headers: { 'Content-Range': `0-${data.length - 1}`, 'Content-Length': data.length } }, (res) => {
        res.resume();
        resolve(res.statusCode!);
      });
      req.on('error', reject);
      req.write(data.subarray(0, 100_000));
      finish = () => req.end(data.subarray(100_000));
    });
    await until('the PATCH streaming', async () => (await metric(s.url, 'berth_uploads_in_progress')) === 1);
    const exited = s.stop('SIGTERM');
    await until('both workers shutting down', async () => s.lines.filter((l) => l.msg === 'shutting down').length === 2);
    finish();
    expect(await patch).toBe(202);
    expect(await exited).toBe(0);
  });
});

describe('failed logins from one address with workers', () => {
  let dir: string;
  const servers: Record<number, Served> = {};
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-workers-login-'));
    const users = `  secret: ${randomBytes(24).toString('hex')}\n  anonymous-pull: false\n  users:\n    - name: zuul\n      pass: right-password\n      access: write\n`;
    [servers[1], servers[2]] = await Promise.all([1, 2].map((n) => serve(fsConfig(join(dir, String(n)), users).replace('workers: 2', `workers: ${n}`), dir)));
  });
  afterAll(async () => {
    for (const s of Object.values(servers)) expect(await s.stop()).toBe(0);
    await rm(dir, { recursive: true, force: true });
  });

  // One wrong password resent (cached: not a new guess), then new wrong ones until 429, then the right one.
  const sequence = async (s: Served) => {
    const token = (pass: string) => request(`${s.url}/auth/token?service=berth&scope=repository:x/y:pull`, { headers: basic('zuul', pass) }).then((r) => r.status);
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push(await token('resent-wrong'));
    for (let i = 0; i < 12; i++) statuses.push(await token(`guess-${i}`));
    statuses.push(await token('right-password'));
    return statuses;
  };

  it('are limited to the count one process allows, and a resent wrong password counts once', async () => {
    const one = await sequence(servers[1]);
    const since = servers[2].lines.length;
    const two = await sequence(servers[2]);
    // Ten failures (the resent one counted once, then nine guesses), then 429 for every check, the right one too.
    expect(one).toEqual([...Array(6).fill(401), ...Array(9).fill(401), ...Array(3).fill(429), 429]);
    expect(two).toEqual(one);
    expect(servers[2].pidsServing(/^\/auth\/token$/, since).size).toBe(2);
  });
});

describe('workers: 2 on Swift', () => {
  let dir: string;
  let container: string;
  let s: Served;
  beforeAll(async () => {
    const clouds = await ensureSwift();
    dir = await mkdtemp(join(tmpdir(), 'berth-workers-swift-'));
    container = freshContainer();
    s = await serve(`registry:\n  address: 127.0.0.1\n  port: 0\n  workers: 2\n  storage:\n    driver: swift\n    cloud: ${TEST_CLOUD}\n    container: ${container}\n    clouds-file: ${clouds}\n`, dir);
  }, 120_000);
  afterAll(async () => {
    expect(await s.stop()).toBe(0);
    await dropContainer(container);
    await rm(dir, { recursive: true, force: true });
  });

  it('eight PATCHes at one offset through both workers: exactly one 202 (the lock is the primary\'s)', async () => {
    await raceUntilBothWorkers(s);
  });
});

describe('workers that cannot start', () => {
  it('stop the primary with their exit code (2: a configuration the storage refuses), not a restart loop', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'berth-workers-bad-'));
    try {
      await writeFile(join(dir, 'clouds.yaml'), 'clouds: {}\n');
      const yaml = `registry:\n  address: 127.0.0.1\n  port: 0\n  workers: 2\n  storage:\n    driver: swift\n    cloud: nowhere\n    container: c\n    clouds-file: ${join(dir, 'clouds.yaml')}\n`;
      await expect(spawnServe(yaml, dir)).rejects.toThrow(/exited with 2: .*no cloud named "nowhere"/s);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
