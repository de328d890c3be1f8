/**
 * Real clients other than skopeo against `berth serve` on both backends, with credentials: podman and buildah
 * (vfs storage, so no kernel features are needed). Multi-arch indexes and Docker schema 2 are in skopeo.test.ts.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeTarLayout } from '../helpers/oci-layout.js';
import { spawnServe, type ServeProcess } from '../helpers/server.js';
import { BACKENDS, storageYaml } from '../helpers/swift.js';

const run = promisify(execFile);

describe.each(BACKENDS)('podman and buildah against berth serve (%s)', (backend) => {
  let dir: string;
  let server: ServeProcess;
  let storage: { yaml: string; cleanup(): Promise<void> };
  let host: string;
  const podman = (...args: string[]) =>
    run('podman', ['--root', `${dir}/podman/root`, '--runroot', `${dir}/podman/run`, '--storage-driver', 'vfs', ...args], { maxBuffer: 1 << 24 });
  const buildah = (...args: string[]) =>
    run('buildah', ['--root', `${dir}/buildah/root`, '--runroot', `${dir}/buildah/run`, '--storage-driver', 'vfs', ...args], { maxBuffer: 1 << 24 });

  beforeAll(async () => {
    // podman names an oci: image after its path, which must be lowercase.
    dir = join(tmpdir(), `berth-clients-${randomBytes(6).toString('hex')}`);
    await mkdir(dir);
    storage = await storageYaml(backend, dir);
    server = await spawnServe(
      `registry:\n  address: 127.0.0.1\n  port: 0\n  secret: clients-test-secret-0123456789abcdef\n  users:\n    - {name: ci, pass: ci-pw, access: write}\n${storage.yaml}`,
      dir,
    );
    host = `127.0.0.1:${server.port}`;
  });
  afterAll(async () => {
    expect(await server.stop()).toBe(0);
    await storage.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  it('podman logs in, pushes and pulls back the same image', async () => {
    const image = await writeTarLayout(join(dir, 'src'), 'v1', [300_000, 5000]);
    const authfile = join(dir, 'podman-auth.json');
    await expect(podman('login', '--tls-verify=false', '--authfile', authfile, '-u', 'ci', '-p', 'wrong', host)).rejects.toThrow(/401|unauthorized|invalid/i);
    await podman('login', '--tls-verify=false', '--authfile', authfile, '-u', 'ci', '-p', 'ci-pw', host);
    await podman('pull', `oci:${image.dir}:v1`);
    const local = (await podman('images', '--format', '{{.Id}}')).stdout.trim().split('\n')[0];
    expect(`sha256:${local}`.startsWith(image.configDigest.slice(0, 19))).toBe(true);
    await podman('push', '--tls-verify=false', '--authfile', authfile, local, `docker://${host}/podman/app:v1`);
    await podman('rmi', '-a', '-f');
    await podman('pull', '--tls-verify=false', '--authfile', authfile, `docker://${host}/podman/app:v1`);
    const pulled = (await podman('images', '--format', '{{.Id}}')).stdout.trim();
    expect(pulled).toBe(local);
  });

  it('buildah builds on an image pulled from Berth and pushes the result', async () => {
    const image = await writeTarLayout(join(dir, 'src-b'), 'v1', [2000]);
    const creds = ['--creds', 'ci:ci-pw', '--tls-verify=false'];
    await run('skopeo', ['--insecure-policy', 'copy', '--dest-creds', 'ci:ci-pw', '--dest-tls-verify=false', `oci:${image.dir}:v1`, `docker://${host}/buildah/base:v1`]);
    const container = (await buildah('from', ...creds, `docker://${host}/buildah/base:v1`)).stdout.trim();
    await buildah('config', '--label', 'built-by=berth-test', container);
    await buildah('commit', container, 'localhost/derived:v1');
    await buildah('push', ...creds, 'localhost/derived:v1', `docker://${host}/buildah/derived:v1`);
    const { stdout } = await run('skopeo', ['inspect', '--creds', 'ci:ci-pw', '--tls-verify=false', `docker://${host}/buildah/derived:v1`]);
    const info = JSON.parse(stdout) as { Labels: Record<string, string>; Layers: string[] };
    expect(info.Labels['built-by']).toBe('berth-test');
    expect(info.Layers).toContain(image.layerDigests[0]);
  });
});
