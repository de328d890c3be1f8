/**
 * The Docker engine and CLI against `berth serve` on both backends, through the token flow: login, a multi-layer
 * push, the same image pushed to a second repository (its layers mounted, not uploaded), rmi + pull + run, a legacy
 * build FROM the pulled image and its push, and a read-only user's push refused. One private dockerd for the file.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { importBusybox, runResult, startDockerd, type Dockerd } from '../helpers/docker.js';
import { spawnServe, type ServeProcess } from '../helpers/server.js';
import { BACKENDS, storageYaml } from '../helpers/swift.js';

let dockerd: Dockerd;
let base: string;
beforeAll(async () => {
  dockerd = await startDockerd();
  base = await importBusybox(dockerd);
});
afterAll(async () => {
  await dockerd?.stop();
});

const sha256hex = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

describe.each(BACKENDS)('docker against berth serve (%s)', (backend) => {
  let dir: string;
  let server: ServeProcess;
  let storage: { yaml: string; cleanup(): Promise<void> };
  let host: string;
  const files = { a: randomBytes(300_000), b: randomBytes(200_000) };
  const skopeoRaw = async (ref: string) => {
    const r = await runResult('skopeo', ['inspect', '--raw', '--creds', 'ci:ci-pw', '--tls-verify=false', `docker://${ref}`]);
    if (r.code !== 0) throw new Error(r.stderr);
    return r.stdout;
  };

  beforeAll(async () => {
    dir = join(tmpdir(), `berth-docker-${randomBytes(6).toString('hex')}`);
    await mkdir(join(dir, 'ctx'), { recursive: true });
    storage = await storageYaml(backend, dir);
    server = await spawnServe(
      `registry:\n  address: 127.0.0.1\n  port: 0\n  secret: docker-test-secret\n  users:\n    - {name: ci, pass: ci-pw, access: write}\n    - {name: reader, pass: reader-pw, access: read}\n${storage.yaml}`,
      dir,
    );
    // Plain HTTP: docker tries HTTPS first, then HTTP, for a registry on 127.0.0.0/8 (insecure by default).
    host = `127.0.0.1:${server.port}`;
  });
  afterAll(async () => {
    const images = (await dockerd.docker(['images', '--format', '{{.Repository}}:{{.Tag}}'])).stdout.split('\n').filter((i) => i.startsWith(host));
    if (images.length) await dockerd.dockerResult(['rmi', '-f', ...images]);
    await dockerd.dockerResult(['logout', host]);
    expect(await server.stop()).toBe(0);
    await storage.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  it('logs in: a wrong password is refused, the right one accepted', async () => {
    const bad = await dockerd.dockerResult(['login', '-u', 'ci', '-p', 'wrong', host]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/unauthorized|incorrect username or password|401/i);
    const good = await dockerd.docker(['login', '-u', 'ci', '-p', 'ci-pw', host]);
    expect(good.stdout).toContain('Login Succeeded');
  });

  it('pushes a multi-layer image, then the same image to a second repository by mounting its layers', async () => {
    await writeFile(join(dir, 'ctx', 'a.bin'), files.a);
    await writeFile(join(dir, 'ctx', 'b.bin'), files.b);
    await writeFile(join(dir, 'ctx', 'Dockerfile'), `FROM ${base}\nCOPY a.bin /a.bin\nCOPY b.bin /b.bin\n`);
    await dockerd.docker(['build', '-t', `${host}/docker/multi:v1`, join(dir, 'ctx')]);
    const push = await dockerd.docker(['push', `${host}/docker/multi:v1`]);
    const pushed = /digest: (sha256:[0-9a-f]{64})/.exec(push.stdout)![1];
    const manifest = await skopeoRaw(`${host}/docker/multi:v1`);
    expect(`sha256:${sha256hex(manifest)}`).toBe(pushed);
    const layers = (JSON.parse(manifest) as { layers: { digest: string }[] }).layers;
    expect(layers).toHaveLength(3);

    await dockerd.docker(['tag', `${host}/docker/multi:v1`, `${host}/docker/copy:v1`]);
    const again = await dockerd.docker(['push', `${host}/docker/copy:v1`]);
    // Every layer is mounted from the first repository (POST ?mount= answered 201), none uploaded again.
    expect(again.stdout.match(/Mounted from docker\/multi/g)).toHaveLength(3);
    expect(again.stdout).toContain(`digest: ${pushed}`);
  });

  it('pulls the image back after rmi and runs it without a network', async () => {
    await dockerd.docker(['rmi', `${host}/docker/multi:v1`, `${host}/docker/copy:v1`]);
    expect((await dockerd.dockerResult(['image', 'inspect', `${host}/docker/multi:v1`])).code).not.toBe(0);
    const pull = await dockerd.docker(['pull', `${host}/docker/multi:v1`]);
    // The two COPY layers are downloaded; the busybox layer is still there from the base image.
    expect(pull.stdout.match(/Pull complete/g)).toHaveLength(2);
    const out = await dockerd.docker(['run', '--rm', '--network', 'none', `${host}/docker/multi:v1`, 'sha256sum', '/a.bin', '/b.bin']);
    expect(out.stdout).toContain(`${sha256hex(files.a)}  /a.bin`);
    expect(out.stdout).toContain(`${sha256hex(files.b)}  /b.bin`);
  });

  it('builds FROM the pulled image with the legacy builder and pushes the result', async () => {
    const ctx = join(dir, 'derived');
    await mkdir(ctx);
    // The legacy builder runs RUN steps in a container: no bridge here, so --network none.
    await writeFile(join(ctx, 'Dockerfile'), `FROM ${host}/docker/multi:v1\nRUN echo built-by-docker > /built\nLABEL built-by=berth-test\n`);
    await dockerd.docker(['build', '--network', 'none', '-t', `${host}/docker/derived:v1`, ctx], { DOCKER_BUILDKIT: '0' });
    const push = await dockerd.docker(['push', `${host}/docker/derived:v1`]);
    // The base image's layers are in another repository of this registry: mounted, not uploaded.
    expect(push.stdout.match(/Mounted from docker\/(multi|copy)/g)).toHaveLength(3);
    const manifest = JSON.parse(await skopeoRaw(`${host}/docker/derived:v1`)) as { layers: { digest: string }[] };
    const baseLayers = (JSON.parse(await skopeoRaw(`${host}/docker/multi:v1`)) as { layers: { digest: string }[] }).layers;
    expect(manifest.layers).toHaveLength(4);
    expect(manifest.layers.slice(0, 3)).toEqual(baseLayers);
    await dockerd.docker(['rmi', `${host}/docker/derived:v1`]);
    await dockerd.docker(['pull', `${host}/docker/derived:v1`]);
    const out = await dockerd.docker(['run', '--rm', '--network', 'none', `${host}/docker/derived:v1`, 'cat', '/built']);
    expect(out.stdout.trim()).toBe('built-by-docker');
  });

  it('a push without credentials fails at once with an authentication error', async () => {
    const anonymous = join(dir, 'anonymous-cli');
    await mkdir(anonymous);
    await writeFile(join(anonymous, 'config.json'), '{}');
    await dockerd.docker(['tag', `${host}/docker/multi:v1`, `${host}/docker/anonymous:v1`]);
    const started = Date.now();
    const push = await dockerd.dockerResult(['push', `${host}/docker/anonymous:v1`], { DOCKER_CONFIG: anonymous });
    expect(push.code).toBe(1);
    expect(push.stderr).toMatch(/unauthorized|authentication required/i);
    // docker retries a push whose token request fails without detail: 50 s before the 401 carried one. The bound is
    // loose (the spec's 5 s, tripled for a loaded machine), the difference is not.
    expect(Date.now() - started).toBeLessThan(15_000);
  });

  it("refuses a read-only user's push", async () => {
    const readerConfig = join(dir, 'reader-cli');
    await mkdir(readerConfig);
    await writeFile(join(readerConfig, 'config.json'), '{}');
    const env = { DOCKER_CONFIG: readerConfig };
    await dockerd.docker(['login', '-u', 'reader', '-p', 'reader-pw', host], env);
    // The reader may pull...
    await dockerd.docker(['pull', `${host}/docker/multi:v1`], env);
    // ...but not push, not even a tag of layers the registry already has.
    await dockerd.docker(['tag', `${host}/docker/multi:v1`, `${host}/docker/by-reader:v1`]);
    const push = await dockerd.dockerResult(['push', `${host}/docker/by-reader:v1`], env);
    expect(push.code).toBe(1);
    expect(push.stderr).toMatch(/denied|unauthorized|insufficient/i);
    const check = await runResult('skopeo', ['inspect', '--raw', '--creds', 'ci:ci-pw', '--tls-verify=false', `docker://${host}/docker/by-reader:v1`]);
    expect(check.code).not.toBe(0);
    expect(check.stderr).toMatch(/manifest unknown/i);
  });
});
