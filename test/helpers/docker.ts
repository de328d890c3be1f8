/**
 * A private Docker engine for a test file: dockerd with vfs storage, no iptables, no bridge (containers run with
 * `--network none` or `--network host`), its own socket, data root, exec root and pid file under a temp dir, and its
 * registry settings in a daemon.json that configure() rewrites and reloads (SIGHUP) without a restart.
 *
 * dockerd reads registry CAs only from /etc/docker/certs.d/<host:port>/ (a private path exists only in rootless
 * mode), so trustCa() writes there for a host:port no other test uses (a fresh port) and stop() removes it.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, openSync, closeSync, readFileSync } from 'node:fs';
import { chmod, mkdir, readFile, rm, symlink, writeFile, copyFile } from 'node:fs/promises';
import https from 'node:https';
import net from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The CLI of the docker.io package that tools/test.sh installs (a newer docker elsewhere in PATH may differ). */
export const DOCKER_CLI = existsSync('/usr/bin/docker') ? '/usr/bin/docker' : 'docker';
const CERTS_D = '/etc/docker/certs.d';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface DaemonSettings {
  'registry-mirrors'?: string[];
  'insecure-registries'?: string[];
}

export interface Dockerd {
  dir: string;
  socket: string;
  /** The CLI's config directory (DOCKER_CONFIG): where `docker login` keeps credentials. */
  cliConfig: string;
  log(): string;
  /** Run the CLI; rejects on a non-zero exit, with stderr in the message. */
  docker(args: string[], env?: Record<string, string>): Promise<{ stdout: string; stderr: string }>;
  /** Run the CLI and return its exit code and output, whatever they are. */
  dockerResult(args: string[], env?: Record<string, string>): Promise<RunResult>;
  /** Replace the registry settings and wait until dockerd has reloaded them. */
  configure(settings: DaemonSettings): Promise<void>;
  /** Trust a CA for a registry at host:port (until stop()). */
  trustCa(hostPort: string, caFile: string): Promise<void>;
  stop(): Promise<void>;
}

/** The address other machines would reach this one at: docker treats every 127.0.0.0/8 registry as insecure. */
export function externalAddress(): string | undefined {
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return undefined;
}

export function runResult(file: string, args: string[], env?: Record<string, string>, timeout = 300_000): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(file, args, { env: { ...process.env, ...env }, maxBuffer: 1 << 26, timeout }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

export async function startDockerd(settings: DaemonSettings = {}): Promise<Dockerd> {
  const dir = join(tmpdir(), `berth-dockerd-${randomBytes(6).toString('hex')}`);
  await mkdir(join(dir, 'cli'), { recursive: true });
  await writeFile(join(dir, 'cli', 'config.json'), '{}');
  const socket = join(dir, 'docker.sock');
  const pidFile = join(dir, 'docker.pid');
  const daemonJson = join(dir, 'daemon.json');
  await writeFile(daemonJson, JSON.stringify(settings));
  const logFile = join(dir, 'dockerd.log');
  const logFd = openSync(logFile, 'a');
  // prettier-ignore
  const child: ChildProcess = spawn('dockerd', [
    '--config-file', daemonJson, '--storage-driver', 'vfs', '--iptables=false', '--ip6tables=false', '--bridge=none',
    '--data-root', join(dir, 'data'), '--exec-root', join(dir, 'exec'), '--pidfile', pidFile, '-H', `unix://${socket}`,
  ], { stdio: ['ignore', logFd, logFd] });
  closeSync(logFd);
  const trusted: string[] = [];
  const cliConfig = join(dir, 'cli');
  const baseEnv = { DOCKER_HOST: `unix://${socket}`, DOCKER_CONFIG: cliConfig, DOCKER_BUILDKIT: '0' };
  const dockerResult = (args: string[], env?: Record<string, string>) => runResult(DOCKER_CLI, args, { ...baseEnv, ...env });
  const docker = async (args: string[], env?: Record<string, string>) => {
    const r = await dockerResult(args, env);
    if (r.code !== 0) throw new Error(`docker ${args.join(' ')} exited with ${r.code}: ${r.stderr}${r.stdout}`);
    return r;
  };
  const log = () => readFileSync(logFile, 'utf8');
  const registryConfig = async () => (await docker(['info', '--format', '{{json .RegistryConfig}}'])).stdout;

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      const pid = existsSync(pidFile) ? Number(await readFile(pidFile, 'utf8')) : child.pid!;
      process.kill(pid, 'SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 20_000))]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    // dockerd leaves its network namespace mounted under the exec root.
    const mounts = readFileSync('/proc/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1]).filter((m) => m?.startsWith(dir));
    for (const m of mounts.reverse()) await run('umount', ['-l', m]).catch(() => {});
    for (const hostPort of trusted) await rm(join(CERTS_D, hostPort), { recursive: true, force: true });
    await rm(dir, { recursive: true, force: true });
  };

  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`dockerd exited with ${child.exitCode}: ${log().slice(-2000)}`);
    if (existsSync(socket) && (await dockerResult(['version'])).code === 0) break;
    if (i > 300) {
      await stop();
      throw new Error(`dockerd did not answer in 30 s: ${log().slice(-2000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }

  return {
    dir,
    socket,
    cliConfig,
    log,
    docker,
    dockerResult,
    async configure(next) {
      // A key left out keeps its old value across a reload: write every one.
      await writeFile(daemonJson, JSON.stringify({ 'registry-mirrors': [], 'insecure-registries': [], ...next }));
      process.kill(child.pid!, 'SIGHUP');
      const want = next['registry-mirrors'] ?? [];
      for (let i = 0; i < 100; i++) {
        const mirrors = (JSON.parse(await registryConfig()) as { Mirrors: string[] | null }).Mirrors ?? [];
        // dockerd normalizes each mirror URL with a trailing slash.
        if (want.length === mirrors.length && want.every((m) => mirrors.includes(m.replace(/\/?$/, '/')))) return;
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`dockerd did not reload its registry settings: ${await registryConfig()}`);
    },
    async trustCa(hostPort, caFile) {
      await mkdir(join(CERTS_D, hostPort), { recursive: true });
      await copyFile(caFile, join(CERTS_D, hostPort, 'ca.crt'));
      trusted.push(hostPort);
    },
    stop,
  };
}

/**
 * A base image without internet: `docker import` of a root file system holding busybox-static and its applets.
 * Returns the image's name.
 */
export async function importBusybox(d: Dockerd, name = 'berth-test/busybox:latest'): Promise<string> {
  const root = join(d.dir, 'busybox-root');
  await mkdir(join(root, 'bin'), { recursive: true });
  const busybox = ['/bin/busybox', '/usr/bin/busybox'].find((p) => existsSync(p));
  if (!busybox) throw new Error('busybox-static is not installed');
  await copyFile(busybox, join(root, 'bin', 'busybox'));
  await chmod(join(root, 'bin', 'busybox'), 0o755);
  const applets = (await run(busybox, ['--list'])).stdout.split('\n').filter((a) => /^[a-z0-9_.[-]+$/.test(a) && a !== 'busybox');
  for (const a of applets) await symlink('busybox', join(root, 'bin', a));
  await mkdir(join(root, 'tmp'));
  await run('tar', ['-C', root, '--numeric-owner', '-cf', join(d.dir, 'busybox.tar'), '.']);
  await d.docker(['import', '--change', 'CMD ["/bin/sh"]', join(d.dir, 'busybox.tar'), name]);
  await rm(root, { recursive: true, force: true });
  return name;
}

/** A self-signed certificate (its own CA) for the given IP addresses and names, in dir/tls.crt and dir/tls.key. */
export async function selfSignedCert(dir: string, ips: string[], names: string[] = ['localhost']): Promise<{ cert: string; key: string }> {
  const san = [...ips.map((ip) => `IP:${ip}`), ...names.map((n) => `DNS:${n}`)].join(',');
  const cert = join(dir, 'tls.crt');
  const key = join(dir, 'tls.key');
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=${ips[0] ?? names[0]}`, '-addext', `subjectAltName=${san}`, '-keyout', key, '-out', cert]);
  return { cert, key };
}

/**
 * Berth's image from etc/container/Containerfile, built under `d` on a base imported from the cached Debian root
 * file system (tools/container-rootfs.sh: debootstrap once per machine, with this machine's Node 20). Needs a
 * built dist/. Returns the image's name.
 */
export async function buildBerthImage(d: Dockerd, name = 'berth-test/berth:latest'): Promise<string> {
  const rootfs = (await run('tools/container-rootfs.sh', [], { timeout: 900_000, maxBuffer: 1 << 24 })).stdout.trim().split('\n').pop()!;
  const base = `berth-test/debian-node:${/rootfs-([0-9a-f]+)\.tar$/.exec(rootfs)![1]}`;
  await d.docker(['import', rootfs, base]);
  const context = join(d.dir, 'image-context');
  await run(process.execPath, ['tools/container-context.mjs', context]);
  // The legacy builder (no bridge here; the Containerfile has no RUN step, so no network is needed).
  await d.docker(['build', '--network', 'none', '-f', join(context, 'Containerfile'), '--build-arg', `BASE=${base}`, '-t', name, context]);
  await rm(context, { recursive: true, force: true });
  return name;
}

/** A TCP port free right now (for a server whose port must be known before it starts, e.g. in a container). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** An HTTPS request verified against `ca`; resolves with the status, headers and body. */
export function httpsRequest(url: string, ca: Buffer, init: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { ca, method: init.method ?? 'GET', headers: init.headers }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end(init.body);
  });
}
