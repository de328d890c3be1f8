/** Test servers: the app in-process over a fresh filesystem root, or `berth serve` as a child process. */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { TokenIssuer } from '../../src/auth/tokens.js';
import { Users } from '../../src/auth/users.js';
import type { UserConfig } from '../../src/config/config.js';
import { createApp } from '../../src/http/app.js';
import { Access } from '../../src/http/auth.js';
import { DEFAULT_NAMESPACE } from '../../src/registry/paths.js';
import { Registry } from '../../src/registry/registry.js';
import type { StorageDriver } from '../../src/storage/driver.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import type { Metrics } from '../../src/observability/metrics.js';

/** `inner` with some members replaced (to inject faults or record calls); every other member is inner's own. */
export function overriding(inner: StorageDriver, members: Partial<StorageDriver>): StorageDriver {
  return new Proxy(inner, {
    get(target, prop) {
      if (Object.hasOwn(members, prop)) return members[prop as keyof StorageDriver];
      const value = Reflect.get(target, prop, target) as unknown;
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

export interface TestServer {
  url: string;
  root: string;
  registry: Registry;
  close(): Promise<void>;
}

export interface AuthSetup {
  users: UserConfig[];
  secret?: string;
  publicNamespace?: string;
  anonymousPull?: boolean;
  service?: string;
}

export async function startServer(
  driver?: StorageDriver,
  auth?: AuthSetup,
  registryOpts: ConstructorParameters<typeof Registry>[1] = {},
  metrics?: Metrics,
): Promise<TestServer> {
  const root = await mkdtemp(join(tmpdir(), 'berth-http-'));
  const registry = new Registry(driver ?? (await FilesystemDriver.open(root)), registryOpts);
  const log = pino({ level: process.env.BERTH_TEST_LOG ?? 'silent' }, pino.destination(2));
  const access = auth
    ? new Access({
        users: new Users(auth.users, DEFAULT_NAMESPACE, undefined, log),
        tokens: auth.secret ? new TokenIssuer(auth.secret, auth.service ?? 'berth') : null,
        defaultNamespace: DEFAULT_NAMESPACE,
        publicNamespace: auth.publicNamespace,
        anonymousPull: auth.anonymousPull,
        log,
      })
    : undefined;
  const app = createApp(registry, { log, access, metrics });
  const server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    root,
    registry,
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await registry.close();
      await rm(root, { recursive: true, force: true });
    },
  };
}

export interface ServeProcess {
  url: string;
  port: number;
  child: ChildProcess;
  /** Everything the process has written to stdout so far (its log lines). */
  output(): string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Run the built CLI (`dist/cli.js serve`) with the given `registry:` YAML body. */
export async function spawnServe(configYaml: string, dir: string): Promise<ServeProcess> {
  const file = join(dir, `registry-${Math.random().toString(36).slice(2)}.yaml`);
  await writeFile(file, configYaml);
  const child = spawn(process.execPath, ['--single-threaded-gc', 'dist/cli.js', '-c', file, 'serve'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  let out = '';
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d;
      const m = /berth listening on port (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`berth serve exited with ${code}: ${stderr}`)));
  });
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    child,
    output: () => out,
    stop: (signal = 'SIGTERM') =>
      new Promise((resolve) => {
        if (child.exitCode !== null) return resolve(child.exitCode);
        child.once('exit', (code) => resolve(code));
        child.kill(signal);
      }),
  };
}

export const sha256 = (data: Buffer | string) => `sha256:${createHash('sha256').update(data).digest('hex')}`;
export const md5 = (data: Buffer) => createHash('md5').update(data).digest('hex');

/** Push a blob monolithically; returns its digest. */
export async function pushBlob(url: string, repo: string, data: Buffer, headers: Record<string, string> = {}): Promise<string> {
  const digest = sha256(data);
  const res = await fetch(`${url}/v2/${repo}/blobs/uploads/?digest=${digest}`, { method: 'POST', body: data as Buffer<ArrayBuffer>, headers });
  if (res.status !== 201) throw new Error(`push blob: ${res.status} ${await res.text()}`);
  return digest;
}

/** Start an upload and PATCH `chunks` in order; returns the location to commit at. Throws on any other status. */
export async function startChunkedUpload(url: string, repo: string, chunks: Buffer[]): Promise<string> {
  const start = await fetch(`${url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  if (start.status !== 202) throw new Error(`start upload: ${start.status}`);
  let location = start.headers.get('location')!;
  let offset = 0;
  for (const c of chunks) {
    const res = await fetch(`${url}${location}`, {
      method: 'PATCH',
      headers: { 'Content-Range': `${offset}-${offset + c.length - 1}`, 'Content-Type': 'application/octet-stream' },
      body: new Uint8Array(c),
    });
    if (res.status !== 202) throw new Error(`PATCH chunk at ${offset}: ${res.status}`);
    offset += c.length;
    location = res.headers.get('location')!;
  }
  return location;
}

/** Push a minimal OCI image (config + layers); returns the manifest, its bytes and digest. */
export async function pushImage(url: string, repo: string, tag: string, layers: Buffer[], extra: Record<string, unknown> = {}, headers: Record<string, string> = {}) {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  const configDigest = await pushBlob(url, repo, config, headers);
  const layerDescs = [];
  for (const l of layers) layerDescs.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: await pushBlob(url, repo, l, headers), size: l.length });
  const manifest = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
    layers: layerDescs,
    ...extra,
  };
  const body = Buffer.from(JSON.stringify(manifest));
  const res = await fetch(`${url}/v2/${repo}/manifests/${tag}`, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json', ...headers },
    body,
  });
  if (res.status !== 201) throw new Error(`push manifest: ${res.status} ${await res.text()}`);
  return { manifest, body, digest: sha256(body) };
}

/** GET a path exactly as written (fetch would normalize "..", which is what an attacker's client would not do). */
export function rawGet(url: string, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { path, method: 'GET' }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

export const basic = (user: string, pass: string) => ({ Authorization: `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}` });

/** `node dist/cli.js -c CONFIG ARGS...` to its end: exit code and output, a failing exit included. */
export async function berthCli(config: string, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)('node', ['dist/cli.js', '-c', config, ...args]);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}
