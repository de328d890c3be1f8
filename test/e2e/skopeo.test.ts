/** skopeo, a real client, against `berth serve` (the built CLI) on each backend. */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blobDigest, writeLayout, writeMultiArchLayout, type LayoutImage } from '../helpers/oci-layout.js';
import { spawnServe, type ServeProcess } from '../helpers/server.js';
import { BACKENDS, storageYaml } from '../helpers/swift.js';

const run = promisify(execFile);
const skopeo = (...args: string[]) => run('skopeo', ['--insecure-policy', ...args], { maxBuffer: 1 << 24 });
const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';

/** The manifest an OCI layout's index.json names (the one image a single-image copy wrote). */
async function layoutManifest(dir: string): Promise<{ layers: { digest: string }[]; config: { digest: string } }> {
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
  expect(index.manifests).toHaveLength(1);
  return JSON.parse(await readFile(join(dir, 'blobs', ...index.manifests[0].digest.split(':')), 'utf8'));
}

let dir: string;
let server: ServeProcess;
/** The 256 MiB image, written (random, gzipped, hashed: seconds) once for both backends; skopeo only reads it. */
let bigDir: string;
let big: Promise<LayoutImage> | undefined;
const bigImage = () => (big ??= mkdtemp(join(tmpdir(), 'berth-e2e-big-')).then((d) => writeLayout((bigDir = d), 'v1', [256 * 1024 * 1024, 1000, 300_000])));
afterAll(async () => {
  if (bigDir) await rm(bigDir, { recursive: true, force: true });
});

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
    const image = await bigImage();
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

  it('pushes a multi-arch OCI index as a Docker manifest list and pulls one platform of it back', async () => {
    const image = await writeMultiArchLayout(join(dir, 'multi'), 'v1');
    const host = `127.0.0.1:${server.port}`;
    const repo = `${host}/e2e/list`;
    await skopeo('copy', '--all', '--format', 'v2s2', '--dest-tls-verify=false', `oci:${image.dir}:v1`, `docker://${repo}:v1`);

    const { stdout } = await skopeo('inspect', '--tls-verify=false', '--raw', `docker://${repo}:v1`);
    const list = JSON.parse(stdout) as { mediaType: string; manifests: { mediaType: string; digest: string; platform: { architecture: string; os: string } }[] };
    expect(list.mediaType).toBe(DOCKER_LIST);
    expect(list.manifests.map((m) => [m.mediaType, m.platform.os, m.platform.architecture])).toEqual([
      [DOCKER_MANIFEST, 'linux', 'amd64'],
      [DOCKER_MANIFEST, 'linux', 'arm64'],
    ]);
    const res = await fetch(`http://${host}/v2/e2e/list/manifests/v1`);
    expect(res.headers.get('content-type')).toBe(DOCKER_LIST);
    const body = Buffer.from(await res.arrayBuffer());
    expect(res.headers.get('docker-content-digest')).toBe(`sha256:${createHash('sha256').update(body).digest('hex')}`);
    expect(JSON.parse(body.toString('utf8'))).toEqual(list);

    // Each child is a Docker schema-2 image whose layer is the one of its platform in the source layout.
    for (const m of list.manifests) {
      const child = await skopeo('inspect', '--tls-verify=false', '--raw', `docker://${repo}@${m.digest}`);
      const manifest = JSON.parse(child.stdout) as { mediaType: string; layers: { digest: string }[] };
      expect(manifest.mediaType).toBe(DOCKER_MANIFEST);
      expect(manifest.layers.map((l) => l.digest)).toEqual([image.platforms[m.platform.architecture].layerDigest]);
    }

    const out = join(dir, 'multi-arm64');
    await skopeo('copy', '--override-arch', 'arm64', '--override-os', 'linux', '--src-tls-verify=false', `docker://${repo}:v1`, `oci:${out}:v1`);
    const pulled = await layoutManifest(out);
    const arm64Layer = image.platforms.arm64.layerDigest;
    expect(pulled.layers.map((l) => l.digest)).toEqual([arm64Layer]);
    expect(await blobDigest(out, arm64Layer)).toBe(arm64Layer);
    const config = JSON.parse(await readFile(join(out, 'blobs', ...pulled.config.digest.split(':')), 'utf8')) as { architecture: string };
    expect(config.architecture).toBe('arm64');
  });
});
