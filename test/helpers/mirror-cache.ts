/** The pull-through cache's storage on each in-process backend, and items to fill it with (tests of prune, cap, fsck). */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach } from 'vitest';
import { MIRROR_DEFAULTS, type MirrorConfig } from '../../src/config/mirrors.js';
import { CacheStore } from '../../src/mirror/store.js';
import { paths } from '../../src/registry/paths.js';
import type { StorageDriver } from '../../src/storage/driver.js';
import { FilesystemDriver } from '../../src/storage/filesystem.js';
import { MemoryDriver } from '../../src/storage/memory.js';
import { overriding, sha256 } from './server.js';
import { dropContainer, freshContainer, swiftDriver, type InProcessBackend } from './swift.js';

export const REG = 'quay.io';
export const quiet = { debug() {}, info() {}, warn() {} };
export const cacheConfig = (extra: Partial<MirrorConfig> = {}): MirrorConfig => ({
  registry: REG,
  url: 'http://127.0.0.1:1',
  tagTtl: 300,
  keep: 3600,
  unprefixed: [],
  timeout: 5,
  maxBlobSize: MIRROR_DEFAULTS.maxBlobSize,
  maxFills: 2,
  maxFillsPerClient: 8,
  ...extra,
});

/** Objects of at most 1 MiB everywhere (Swift segments; elsewhere the same rule), so a larger blob is stored in parts. */
export const OBJECT = 1 << 20;

export interface CacheBackend {
  driver: StorageDriver;
  /** The cache's items and tags (its usage/ figures aside), for "nothing is left" checks. */
  left(): Promise<string[]>;
  close(): Promise<void>;
}

export async function cacheBackend(backend: InProcessBackend): Promise<CacheBackend> {
  let driver: StorageDriver;
  let close: () => Promise<void>;
  if (backend === 'swift') {
    const container = freshContainer();
    driver = await swiftDriver(container, { segmentSize: OBJECT });
    close = async () => {
      await driver.close();
      await dropContainer(container);
    };
  } else {
    const dir = backend === 'filesystem' ? await mkdtemp(join(tmpdir(), 'berth-cache-')) : undefined;
    const inner = dir ? await FilesystemDriver.open(dir) : new MemoryDriver();
    driver = overriding(inner, { maxObjectSize: OBJECT, objectSize: () => OBJECT });
    close = async () => {
      await inner.close();
      if (dir) await rm(dir, { recursive: true, force: true });
    };
  }
  return {
    driver,
    async left() {
      const out: string[] = [];
      for (const prefix of [paths.mirrorBlobs(REG), paths.mirrorTags(REG)]) for await (const o of driver.list(prefix)) out.push(o.path);
      return out;
    },
    close,
  };
}

/** Inside a suite over one backend: fresh cache storage for each test, closed after it (call the result in the test). */
export function freshCacheEach(backend: InProcessBackend): () => CacheBackend {
  let b: CacheBackend | undefined;
  beforeEach(async () => {
    b = await cacheBackend(backend);
  });
  afterEach(async () => {
    await b?.close();
  });
  return () => b!;
}

export const bytes = (n: number, seed = 1): Buffer => {
  const b = Buffer.alloc(Math.floor(n));
  for (let i = 0; i < b.length; i++) b[i] = (i * 31 + seed * 7) & 255;
  // Distinct contents for distinct seeds, whatever the size.
  if (b.length >= 4) b.writeUInt32BE(seed >>> 0, 0);
  return b;
};

/** Store `blob` as a fill would (touched, data or parts joined, pulled); returns its digest. */
export async function cacheBlob(store: CacheStore, blob: Buffer): Promise<string> {
  const digest = sha256(blob);
  const pieces: Buffer[] = [];
  for (let i = 0; i < blob.length; i += 256 * 1024) pieces.push(blob.subarray(i, i + 256 * 1024));
  await store.writeBlob(REG, digest, Readable.from(pieces), blob.length, new AbortController().signal);
  return digest;
}

export const MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json';

/** A cached image manifest naming `layers` (digests of blobs), tagged `repo:tag`; returns its digest. */
export async function cacheManifest(store: CacheStore, repo: string, tag: string, layers: Buffer[]): Promise<{ digest: string; body: Buffer }> {
  const desc = (b: Buffer) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(b), size: b.length });
  const body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MANIFEST_TYPE, config: desc(layers[0]), layers: layers.slice(1).map(desc) }));
  const digest = sha256(body);
  await store.writeManifest(REG, digest, body, MANIFEST_TYPE);
  await store.setTag(REG, repo, tag, { digest, mediaType: MANIFEST_TYPE, size: body.length, checked: Date.now() });
  return { digest, body };
}
