/**
 * Debian's HAProxy (/usr/sbin/haproxy) in front of N `berth serve` processes (the built CLI) on one store:
 * etc/haproxy.cfg on free loopback ports (round-robin, health checks on /readyz, the client address passed by PROXY
 * v2 or X-Forwarded-For). Backends can be killed and restarted on their port; HAProxy's admin socket says which backend
 * is serving a request at a moment and which are up. Suites add cases by starting one of these with their own
 * storage and `registry:` settings (users, locks).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { spawnServe, type ServeProcess } from './server.js';

export const HAPROXY = '/usr/sbin/haproxy';

export interface BalancerOptions {
  /** A scratch directory for configs and HAProxy's socket. */
  dir: string;
  processes: number;
  /** The `storage:` block, indented for `registry:` (storageYaml). */
  storage: string;
  /** How HAProxy passes the client address to Berth. */
  forward: 'proxy-protocol' | 'x-forwarded-for';
  /** More of the `registry:` mapping (users, secret, locks), indented by two spaces. */
  extraYaml?: string;
}

export interface Balancer {
  /** http://127.0.0.1:PORT of HAProxy; also every process's `public-url`. */
  url: string;
  /** 127.0.0.1:PORT, for image references. */
  host: string;
  backends: ServeProcess[];
  /** The config of every process (ports aside): for `berth fsck` and `berth prune`. */
  configFile: string;
  /** What process `i` has written to stdout (its log) since it last started. */
  log(i: number): string;
  /** HAProxy's log: one line per request with the server it went to and its status, and check results. */
  haproxyLog(): string;
  /** The processes that have a request in progress, by HAProxy's count. */
  serving(): Promise<number[]>;
  /** SIGKILL process `i` (then call `killed`), and start it again on its port (HAProxy's checks bring it back). */
  killAndRestart(i: number, killed?: () => void): Promise<void>;
  /** Wait until HAProxy sees every process up. */
  allUp(): Promise<void>;
  /** `berth fsck` on the shared store: exit code and report. */
  fsck(): Promise<{ code: number; out: string }>;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as net.AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

export async function startBalancer(o: BalancerOptions): Promise<Balancer> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const trust = o.forward === 'proxy-protocol' ? 'proxy-protocol: true' : 'x-forwarded-for: true';
  // Only HAProxy's own address is trusted: test clients connect from other loopback addresses (127.0.0.2, ...).
  const body = `  public-url: ${url}\n  trusted-proxies:\n    addresses: [127.0.0.1]\n    ${trust}\n${o.storage}${o.extraYaml ?? ''}`;
  const yaml = (p: number) => `registry:\n  address: 127.0.0.1\n  port: ${p}\n${body}`;
  const configFile = join(o.dir, 'berth.yaml');
  await writeFile(configFile, yaml(0));

  const backends: ServeProcess[] = [];
  const logs: string[] = [];
  const start = async (i: number, p: number) => {
    const s = await spawnServe(yaml(p), o.dir);
    logs[i] = '';
    s.child.stdout!.on('data', (d) => (logs[i] += d));
    backends[i] = s;
  };
  await Promise.all(Array.from({ length: o.processes }, (_, i) => start(i, 0)));

  const socket = join(o.dir, 'haproxy.sock');
  const cfg = join(o.dir, 'haproxy.cfg');
  await writeFile(cfg, await haproxyConfig(port, socket, o.forward, backends.map((b) => b.port)));
  const haproxy: ChildProcess = spawn(HAPROXY, ['-db', '-f', cfg], { stdio: ['ignore', 'ignore', 'pipe'] });
  let haproxyErr = '';
  haproxy.stderr!.on('data', (d) => (haproxyErr += d));

  const admin = (command: string) =>
    new Promise<string>((resolve, reject) => {
      const c = net.connect(socket);
      let out = '';
      c.on('connect', () => c.end(`${command}\n`));
      c.on('data', (d) => (out += d));
      c.on('error', reject);
      c.on('close', () => resolve(out));
    });
  /** Rows of `show stat` for the backend's servers: [index, current sessions, status]. */
  const servers = async () =>
    (await admin('show stat'))
      .split('\n')
      .map((l) => l.split(','))
      .filter((f) => f[0] === 'berth' && /^b\d+$/.test(f[1]))
      .map((f) => ({ i: Number(f[1].slice(1)), scur: Number(f[4]), status: f[17] }));

  const allUp = async () => {
    for (let n = 0; ; n++) {
      if (haproxy.exitCode !== null) throw new Error(`haproxy exited with ${haproxy.exitCode}: ${haproxyErr}`);
      const rows = await servers().catch(() => []);
      if (rows.length === o.processes && rows.every((r) => r.status === 'UP')) return;
      if (n > 300) throw new Error(`haproxy backends not up after 30 s: ${JSON.stringify(rows)} ${haproxyErr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  await allUp();

  return {
    url,
    host: `127.0.0.1:${port}`,
    backends,
    configFile,
    log: (i) => logs[i],
    haproxyLog: () => haproxyErr,
    serving: async () => (await servers()).filter((r) => r.scur > 0).map((r) => r.i),
    async killAndRestart(i, killed) {
      const { child, port: p } = backends[i];
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
      killed?.();
      await start(i, p);
    },
    allUp,
    fsck: () =>
      new Promise((resolve) => {
        execFile(process.execPath, ['dist/cli.js', '-c', configFile, 'fsck'], { maxBuffer: 1 << 24 }, (err, stdout, stderr) => {
          resolve({ code: err ? Number((err as { code?: number }).code ?? -1) : 0, out: `${stdout}${stderr}` });
        });
      }),
    async stop() {
      if (haproxy.exitCode === null) {
        const exited = new Promise((r) => haproxy.once('exit', r));
        haproxy.kill('SIGTERM');
        await exited;
      }
      await Promise.all(backends.map((b) => b.stop()));
    },
  };
}

/**
 * etc/haproxy.cfg as shipped, with the test's ports, a log on stderr, an admin socket and quicker health checks
 * (a restarted process is back within a second). A line the example no longer has fails here, loudly.
 */
async function haproxyConfig(port: number, socket: string, forward: BalancerOptions['forward'], ports: number[]): Promise<string> {
  let text = await readFile('etc/haproxy.cfg', 'utf8');
  const swap = (pattern: RegExp, by: string) => {
    if (!pattern.test(text)) throw new Error(`etc/haproxy.cfg: no line matches ${pattern}`);
    text = text.replace(pattern, by);
  };
  swap(/^  log \/dev\/log local0$/m, `  log stderr format raw local0 info\n  stats socket ${socket} mode 600 level admin`);
  swap(/^  bind .*$/m, `  bind 127.0.0.1:${port}`);
  swap(/^  default-server inter \S+ fall \d+ rise \d+/m, '  default-server inter 500ms fall 3 rise 1');
  if (forward === 'x-forwarded-for') {
    swap(/ send-proxy-v2 check-send-proxy$/m, '');
    swap(/^  # option forwardfor$/m, '  option forwardfor');
  }
  swap(/^  server .*\n(?:  server .*\n)*/m, ports.map((p, i) => `  server b${i} 127.0.0.1:${p} check\n`).join(''));
  return text;
}
