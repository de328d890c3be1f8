/**
 * containerd's ctr against `berth serve` on both backends: a private containerd (its own socket, root and state,
 * no CRI plugin, the native snapshotter), pulling a multi-arch index one platform at a time and pushing back.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeMultiArchLayout } from '../helpers/oci-layout.js';
import { spawnServe, type ServeProcess } from '../helpers/server.js';
import { BACKENDS, storageYaml } from '../helpers/swift.js';

const run = promisify(execFile);
let dir: string;
let containerd: ChildProcess;
let socket: string;

beforeAll(async () => {
  dir = join(tmpdir(), `berth-ctr-${randomBytes(6).toString('hex')}`);
  await mkdir(dir);
  socket = join(dir, 'containerd.sock');
  await writeFile(
    join(dir, 'config.toml'),
    `version = 2\nroot = "${dir}/root"\nstate = "${dir}/state"\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "${socket}"\n`,
  );
  containerd = spawn('containerd', ['--config', join(dir, 'config.toml')], { stdio: 'ignore' });
  for (let i = 0; i < 100 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 100));
  expect(existsSync(socket)).toBe(true);
});
afterAll(async () => {
  containerd?.kill('SIGTERM');
  await new Promise((r) => containerd?.once('exit', r));
  await rm(dir, { recursive: true, force: true });
});

const ctr = (...args: string[]) => run('ctr', ['--address', socket, '--namespace', 'berth-test', ...args], { maxBuffer: 1 << 24 });

describe.each(BACKENDS)('containerd (ctr) against berth serve (%s)', (backend) => {
  let server: ServeProcess;
  let storage: { yaml: string; cleanup(): Promise<void> };
  beforeAll(async () => {
    storage = await storageYaml(backend, dir);
    server = await spawnServe(
      `registry:\n  address: 127.0.0.1\n  port: 0\n  secret: ctr-test-secret-0123456789abcdef0123\n  users:\n    - {name: ci, pass: ci-pw, access: write}\n${storage.yaml}`,
      dir,
    );
  });
  afterAll(async () => {
    expect(await server.stop()).toBe(0);
    await storage.cleanup();
  });

  it('pulls each platform of a multi-arch index and pushes an image back', async () => {
    const host = `127.0.0.1:${server.port}`;
    const image = await writeMultiArchLayout(join(dir, `multi-${backend}`), 'v1');
    await run('skopeo', ['--insecure-policy', 'copy', '--all', '--dest-creds', 'ci:ci-pw', '--dest-tls-verify=false', `oci:${image.dir}:v1`, `docker://${host}/ctr/multi:v1`]);
    const ref = `${host}/ctr/multi:v1`;
    for (const arch of ['amd64', 'arm64']) {
      await ctr('images', 'pull', '--plain-http', '--user', 'ci:ci-pw', '--snapshotter', 'native', '--platform', `linux/${arch}`, ref);
      // The content store now holds that platform's layer, verified by digest on the way in.
      const { stdout } = await ctr('content', 'ls', '-q');
      expect(stdout).toContain(image.platforms[arch].layerDigest);
    }
    const listed = (await ctr('images', 'ls')).stdout;
    expect(listed).toContain(image.indexDigest);
    await ctr('images', 'tag', '--force', ref, `${host}/ctr/copy:v1`);
    await ctr('images', 'push', '--plain-http', '--user', 'ci:ci-pw', '--platform', 'linux/amd64', `${host}/ctr/copy:v1`);
    const { stdout } = await run('skopeo', ['inspect', '--raw', '--creds', 'ci:ci-pw', '--tls-verify=false', `docker://${host}/ctr/copy:v1`]);
    // ctr pushes the one platform it was asked for: the amd64 manifest, byte for byte.
    expect(`sha256:${createHash('sha256').update(stdout).digest('hex')}`).toBe(image.platforms.amd64.manifestDigest);
    await ctr('images', 'rm', ref, `${host}/ctr/copy:v1`);
  });
});
