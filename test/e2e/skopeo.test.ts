/** skopeo, a real client, against `berth serve` (the built CLI) on each backend. */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blobDigest, writeLayout } from '../helpers/oci-layout.js';
import { spawnServe, type ServeProcess } from '../helpers/server.js';
import { BACKENDS, storageYaml } from '../helpers/swift.js';

const run = promisify(execFile);
const skopeo = (...args: string[]) => run('skopeo', ['--insecure-policy', ...args], { maxBuffer: 1 << 24 });

let dir: string;
let server: ServeProcess;

describe.each(BACKENDS)('skopeo against berth serve (%s)', (backend) => {
  let storage: { yaml: string; cleanup(): Promise<void> };
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-e2e-'));
    storage = await storageYaml(backend, dir);
    server = await spawnServe(`registry:\n  address: 127.0.0.1\n  port: 0\n${storage.yaml}`, dir);
  });
  afterAll(async () => {
    expect(await server.stop()).toBe(0);
    await storage.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  it('copies a multi-layer image (one layer 256 MiB) in and out byte for byte', async () => {
    const image = await writeLayout(join(dir, 'src'), 'v1', [256 * 1024 * 1024, 1000, 300_000]);
    const ref = `docker://127.0.0.1:${server.port}/e2e/app:v1`;
    await skopeo('copy', '--dest-tls-verify=false', `oci:${image.dir}:v1`, ref);
    const { stdout } = await skopeo('inspect', '--tls-verify=false', '--raw', ref);
    expect(JSON.parse(stdout).layers).toHaveLength(3);
    await skopeo('copy', '--src-tls-verify=false', ref, `oci:${join(dir, 'out')}:v1`);
    for (const d of image.layerDigests) expect(await blobDigest(join(dir, 'out'), d)).toBe(d);
    const tags = await skopeo('list-tags', '--tls-verify=false', `docker://127.0.0.1:${server.port}/e2e/app`);
    expect(JSON.parse(tags.stdout).Tags).toEqual(['v1']);
  });

  it('pushes as Docker schema 2 and deletes by digest', async () => {
    const image = await writeLayout(join(dir, 'src2'), 'v2', [2000]);
    const ref = `docker://127.0.0.1:${server.port}/e2e/docker:v2`;
    await skopeo('copy', '--format', 'v2s2', '--dest-tls-verify=false', `oci:${image.dir}:v2`, ref);
    const { stdout } = await skopeo('inspect', '--tls-verify=false', '--raw', ref);
    expect(JSON.parse(stdout).mediaType).toBe('application/vnd.docker.distribution.manifest.v2+json');
    await skopeo('delete', '--tls-verify=false', ref);
    await expect(skopeo('inspect', '--tls-verify=false', ref)).rejects.toThrow(/manifest unknown/i);
  });
});
