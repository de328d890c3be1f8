/**
 * Figures for docs/zuul-flows.md: a docker push of an image with one 256 MiB layer of random (incompressible) bytes
 * to `berth serve`, and a pull of it by a dockerd that uses Berth as its registry mirror (as zuul-jobs sets it up),
 * on the filesystem and on Swift (tools/swift-aio.sh). A private dockerd as in the tests; an open registry (no
 * users), so that the figures are the data path's.
 *
 *   npx tsc -p tsconfig.build.json && npx tsx tools/docker-timing.ts [MiB]
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { importBusybox, startDockerd } from '../test/helpers/docker.js';
import { spawnServe } from '../test/helpers/server.js';
import { BACKENDS, storageYaml } from '../test/helpers/swift.js';

const mib = Number(process.argv[2] ?? 256);
const dir = join(tmpdir(), `berth-docker-timing-${randomBytes(4).toString('hex')}`);
await mkdir(join(dir, 'ctx'), { recursive: true });
const dockerd = await startDockerd();
const seconds = async (f: () => Promise<unknown>) => {
  const t = process.hrtime.bigint();
  await f();
  return Number(process.hrtime.bigint() - t) / 1e9;
};
try {
  const base = await importBusybox(dockerd);
  // Written in 1-MiB pieces: one 256-MiB Buffer of random bytes is slow to make and to hold.
  const parts: Buffer[] = [];
  for (let i = 0; i < mib; i++) parts.push(randomBytes(1 << 20));
  await writeFile(join(dir, 'ctx', 'big.bin'), parts);
  await writeFile(join(dir, 'ctx', 'Dockerfile'), `FROM ${base}\nCOPY big.bin /big.bin\n`);
  await dockerd.docker(['build', '-t', 'timing/big:v1', join(dir, 'ctx')]);
  const rows = [];
  for (const backend of BACKENDS) {
    const storage = await storageYaml(backend, dir);
    const server = await spawnServe(`registry:\n  address: 127.0.0.1\n  port: 0\n${storage.yaml}`, dir);
    const host = `127.0.0.1:${server.port}`;
    try {
      await dockerd.docker(['tag', 'timing/big:v1', `${host}/library/big:v1`]);
      const push = await seconds(() => dockerd.docker(['push', `${host}/library/big:v1`]));
      await dockerd.docker(['rmi', `${host}/library/big:v1`]);
      // The mirror pull must fetch the big layer: drop the local image (the busybox layer stays, as on a job node).
      await dockerd.docker(['rmi', 'timing/big:v1']);
      await dockerd.configure({ 'registry-mirrors': [`http://${host}`], 'insecure-registries': [host] });
      const pull = await seconds(() => dockerd.docker(['pull', 'big:v1']));
      await dockerd.docker(['tag', 'big:v1', 'timing/big:v1']);
      await dockerd.docker(['rmi', 'big:v1']);
      await dockerd.configure({});
      rows.push({ backend, layerMiB: mib, pushSeconds: +push.toFixed(1), mirrorPullSeconds: +pull.toFixed(1) });
    } finally {
      await server.stop();
      await storage.cleanup();
    }
  }
  console.table(rows);
  console.log(JSON.stringify(rows));
} finally {
  await dockerd.stop();
  await rm(dir, { recursive: true, force: true });
}
