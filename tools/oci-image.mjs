// A one-layer OCI layout for the benchmarks (tools/bench.mjs, tools/bench-mirror.mjs): a pre-gzipped layer of random
// bytes (skopeo sends it as is), streamed to its file 16 MiB at a time so a 4 GiB layer never sits in memory. Level
// 0 (stored blocks): deflate cannot shrink random bytes anyway, and level 1 spent about 40 s per GiB finding that out.
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';

/** The layout in `dir`, its one manifest tagged `tag`; the layer's path and size, and every blob's bytes. */
export async function makeImage(dir, tag, sizeMiB) {
  await mkdir(join(dir, 'blobs/sha256'), { recursive: true });
  const tmp = join(dir, 'layer.tmp');
  let left = sizeMiB * 1024 * 1024;
  async function* random() {
    while (left > 0) {
      const n = Math.min(left, 16 << 20);
      left -= n;
      yield randomBytes(n);
    }
  }
  await pipeline(random, createGzip({ level: 0 }), createWriteStream(tmp));
  const hash = createHash('sha256');
  await pipeline(createReadStream(tmp), hash);
  const layerHex = hash.digest('hex');
  const layerSize = (await stat(tmp)).size;
  const layerPath = join(dir, 'blobs/sha256', layerHex);
  await rename(tmp, layerPath);
  const put = async (obj) => {
    const data = Buffer.from(JSON.stringify(obj));
    const hex = createHash('sha256').update(data).digest('hex');
    await writeFile(join(dir, 'blobs/sha256', hex), data);
    return { digest: `sha256:${hex}`, size: data.length };
  };
  // A diff_id of its own: two images of one size never share a config.
  const config = await put({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [`sha256:${randomBytes(32).toString('hex')}`] } });
  const manifest = await put({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${layerHex}`, size: layerSize }],
  });
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': tag } }] }),
  );
  return { dir, tag, layerPath, layerSize, bytes: layerSize + config.size + manifest.size };
}
