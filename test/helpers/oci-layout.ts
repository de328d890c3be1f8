/** Write OCI image layouts for real clients (skopeo) to push, and read back what they pulled. */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

export interface LayoutImage {
  dir: string;
  tag: string;
  layerDigests: string[];
  manifestDigest: string;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function writeBlob(dir: string, data: Buffer): Promise<string> {
  const hex = sha(data);
  await writeFile(join(dir, 'blobs', 'sha256', hex), data);
  return `sha256:${hex}`;
}

/** An image whose layers are gzip streams of random bytes of the given sizes (gzip level 1: quick, incompressible). */
export async function writeLayout(dir: string, tag: string, layerSizes: number[]): Promise<LayoutImage> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const layers = [];
  for (const size of layerSizes) {
    const data = gzipSync(randomBytes(size), { level: 1 });
    layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: await writeBlob(dir, data), size: data.length });
  }
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) } }));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: await writeBlob(dir, config), size: config.length },
      layers,
    }),
  );
  const manifestDigest = await writeBlob(dir, manifest);
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: manifestDigest, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': tag } }],
    }),
  );
  return { dir, tag, layerDigests: layers.map((l) => l.digest), manifestDigest };
}

/** Re-hash a blob in a layout; returns its real digest. */
export async function blobDigest(dir: string, digest: string): Promise<string> {
  const data = await readFile(join(dir, 'blobs', ...digest.split(':')));
  return `sha256:${sha(data)}`;
}
