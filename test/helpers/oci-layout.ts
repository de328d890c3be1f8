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

/** A one-file tar archive (ustar), so that clients that unpack layers (podman, buildah, containerd) can. */
export function tarOf(name: string, content: Buffer): Buffer {
  const header = Buffer.alloc(512);
  const field = (value: string, at: number, len: number) => header.write(value, at, len, 'ascii');
  const octal = (n: number, len: number) => n.toString(8).padStart(len - 1, '0') + '\0';
  field(name, 0, 100);
  field(octal(0o644, 8), 100, 8);
  field(octal(0, 8), 108, 8);
  field(octal(0, 8), 116, 8);
  field(octal(content.length, 12), 124, 12);
  field(octal(1_700_000_000, 12), 136, 12);
  field('        ', 148, 8);
  field('0', 156, 1);
  field('ustar\0', 257, 6);
  field('00', 263, 2);
  let sum = 0;
  for (const b of header) sum += b;
  field(octal(sum, 7) + ' ', 148, 8);
  const pad = Buffer.alloc((512 - (content.length % 512)) % 512);
  return Buffer.concat([header, content, pad, Buffer.alloc(1024)]);
}

/** An image whose layers are gzipped tars of one random file each, with the right diff_ids: runnable by podman. */
export async function writeTarLayout(dir: string, tag: string, fileSizes: number[]): Promise<LayoutImage & { configDigest: string }> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const layers = [];
  const diffIds = [];
  for (const [i, size] of fileSizes.entries()) {
    const tar = tarOf(`file${i}`, randomBytes(size));
    diffIds.push(`sha256:${sha(tar)}`);
    const gz = gzipSync(tar, { level: 1 });
    layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: await writeBlob(dir, gz), size: gz.length });
  }
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: diffIds }, history: diffIds.map(() => ({ created: '2026-01-01T00:00:00Z' })) }));
  const configDigest = await writeBlob(dir, config);
  const manifest = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length }, layers }),
  );
  const manifestDigest = await writeBlob(dir, manifest);
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: manifestDigest, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': tag } }] }),
  );
  return { dir, tag, layerDigests: layers.map((l) => l.digest), manifestDigest, configDigest };
}

/** An OCI index of two single-layer images (linux/amd64 and linux/arm64) under `tag`. */
export async function writeMultiArchLayout(dir: string, tag: string): Promise<{ dir: string; indexDigest: string; platforms: Record<string, { manifestDigest: string; layerDigest: string }> }> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const platforms: Record<string, { manifestDigest: string; layerDigest: string }> = {};
  const entries = [];
  for (const arch of ['amd64', 'arm64']) {
    const tar = tarOf(`hello-${arch}`, randomBytes(1000));
    const gz = gzipSync(tar, { level: 1 });
    const layerDigest = await writeBlob(dir, gz);
    const config = Buffer.from(JSON.stringify({ architecture: arch, os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [`sha256:${sha(tar)}`] } }));
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: await writeBlob(dir, config), size: config.length },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: layerDigest, size: gz.length }],
      }),
    );
    const manifestDigest = await writeBlob(dir, manifest);
    platforms[arch] = { manifestDigest, layerDigest };
    entries.push({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: manifestDigest, size: manifest.length, platform: { os: 'linux', architecture: arch } });
  }
  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: entries }));
  const indexDigest = await writeBlob(dir, index);
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.index.v1+json', digest: indexDigest, size: index.length, annotations: { 'org.opencontainers.image.ref.name': tag } }] }),
  );
  return { dir, indexDigest, platforms };
}
