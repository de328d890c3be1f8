/**
 * zuul-registry's own functional tests (playbooks/functional-test/ in its repository: setup.yaml, docker.yaml,
 * podman.yaml, docker-buildset.yaml, podman-buildset.yaml), reproduced step by step against `berth serve` with
 * their configuration (conf/registry.yaml: TLS, `testuser`/`testpass` write user, a fixed secret, filesystem
 * storage), on both backends. Each step keeps the playbook's task name as a comment. Where the playbook runs the
 * registry with docker-compose on localhost:9000, Berth runs as a process on localhost and a free port; where it
 * edits /etc/docker/daemon.json or /etc/containers/registries.conf, the private dockerd is reloaded and podman is
 * given its own registries.conf. The steps that pull from the internet (alpine from Docker Hub,
 * quay.io/0xff/alpine-sshd) are left out: this machine has no internet access; they test the upstream fallback,
 * which the "does not exist" steps already reach.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runResult, selfSignedCert, startDockerd, type Dockerd } from '../helpers/docker.js';
import { spawnServe, type ServeProcess } from '../helpers/server.js';
import { BACKENDS, storageYaml } from '../helpers/swift.js';

let dockerd: Dockerd;
let dir: string;
let testImg: string;

/** Run a command; fail with its output unless it exits with `rc` (the playbooks' failed_when). */
async function must(file: string, args: string[], env?: Record<string, string>, rc = 0) {
  const r = await runResult(file, args, env);
  if (r.code !== rc) throw new Error(`${file} ${args.join(' ')}: exit ${r.code}, wanted ${rc}: ${r.stderr}${r.stdout}`);
  return r;
}

/** podman refuses a run root longer than 50 characters. */
const runRoots: string[] = [];
async function shortDir(): Promise<string> {
  const d = join('/tmp', `bzf-${randomBytes(4).toString('hex')}`);
  await mkdir(d);
  runRoots.push(d);
  return d;
}

beforeAll(async () => {
  // podman and buildah name images after paths, which must be lowercase.
  dir = join(tmpdir(), `berth-zuul-ft-${randomBytes(6).toString('hex')}`);
  await mkdir(dir);
  dockerd = await startDockerd();
  // setup.yaml: "Create a local containers image": buildah commit --rm $(buildah from scratch) testimage
  const buildah = ['--root', `${dir}/buildah/root`, '--runroot', `${dir}/buildah/run`, '--storage-driver', 'vfs'];
  const from = (await must('buildah', [...buildah, 'from', 'scratch'])).stdout.trim();
  await must('buildah', [...buildah, 'commit', '--rm', from, 'testimage']);
  // "Copy the local image to a file"
  testImg = join(dir, 'test.img');
  await must('skopeo', ['copy', `containers-storage:[vfs@${dir}/buildah/root+${dir}/buildah/run]localhost/testimage:latest`, `docker-archive:${testImg}`]);
  // "Remove test image from containers storage"
  await must('buildah', [...buildah, 'rmi', 'localhost/testimage:latest']);
}, 300_000);
afterAll(async () => {
  for (const d of runRoots) await rm(d, { recursive: true, force: true });
  await dockerd?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe.each(BACKENDS)("zuul-registry's functional tests against berth serve (%s)", (backend) => {
  let server: ServeProcess;
  let storage: { yaml: string; cleanup(): Promise<void> };
  let registry: string;
  let bdir: string;

  beforeAll(async () => {
    bdir = join(dir, backend);
    await mkdir(join(bdir, 'tls'), { recursive: true });
    // setup.yaml: "Generate a TLS key for the registry" (CN=localhost, SAN DNS:localhost, IP:127.0.0.1)
    const { cert, key } = await selfSignedCert(join(bdir, 'tls'), ['127.0.0.1'], ['localhost']);
    storage = await storageYaml(backend, bdir);
    // conf/registry.yaml, with a free port for 9000 and the backend's storage for /storage
    server = await spawnServe(
      `registry:\n  address: '0.0.0.0'\n  port: 0\n  tls-cert: ${cert}\n  tls-key: ${key}\n  secret: test_token_secret\n  users:\n    - name: testuser\n      pass: testpass\n      access: write\n${storage.yaml}`,
      bdir,
    );
    registry = `localhost:${server.port}`;
    // setup.yaml: "Install the CA cert" (here for this registry only; docker, podman and skopeo read certs.d)
    await dockerd.trustCa(registry, cert);
  });
  afterAll(async () => {
    await dockerd.configure({});
    expect(await server.stop()).toBe(0);
    await storage.cleanup();
  });

  it('docker.yaml: push and pull from the standard registry', async () => {
    const cli = (args: string[], rc = 0) => dockerd.dockerResult(args).then((r) => (r.code === rc ? r : Promise.reject(new Error(`docker ${args.join(' ')}: exit ${r.code}: ${r.stderr}`))));
    const list = async () => (await cli(['image', 'ls', '--all', '--digests', '--no-trunc'])).stdout;
    // "Print list of images" (failed_when 'test/image' in stdout)
    expect(await list()).not.toContain('test/image');
    // "Copy the test image into local docker image storage"
    await must('skopeo', ['copy', '--dest-daemon-host', `unix://${dockerd.socket}`, `docker-archive:${testImg}`, `docker-daemon:${registry}/test/image:latest`]);
    // "Log in to registry"
    await cli(['login', registry, '-u', 'testuser', '-p', 'testpass']);
    // "Push the test image to the standard registry"
    await cli(['push', `${registry}/test/image`]);
    // "Remove the test image from the local cache", "Clean up the local image cache"
    await cli(['rmi', `${registry}/test/image`]);
    await cli(['image', 'prune', '-f']);
    expect(await list()).not.toContain('test/image');
    // "Pull the image from the standard registry"
    await cli(['pull', `${registry}/test/image`]);
    expect(await list()).toContain('test/image');
    // "Try to pull an image that does not exist" (failed_when result.rc != 1)
    const dne = await cli(['pull', `${registry}/test/dne`], 1);
    expect(dne.stderr).toMatch(/not found|manifest unknown/i);
    // "Log out of registry"; the image is removed for the buildset test, which must pull it through the mirror
    await cli(['logout', registry]);
    await cli(['rmi', `${registry}/test/image`]);
  });

  it('podman.yaml: push and pull from the standard registry', async () => {
    const pdir = join(bdir, 'podman');
    const run = await shortDir();
    const storageOpts = ['--root', `${pdir}/root`, '--runroot', run, '--storage-driver', 'vfs'];
    const env = { REGISTRY_AUTH_FILE: join(pdir, 'auth.json') };
    const podman = (args: string[], rc = 0) => must('podman', [...storageOpts, ...args], env, rc);
    const list = async () => (await podman(['image', 'ls', '--all', '--digests', '--no-trunc'])).stdout;
    await mkdir(pdir, { recursive: true });
    expect(await list()).not.toContain('test/image');
    // "Copy the test image into local containers image storage"
    await must('skopeo', ['copy', `docker-archive:${testImg}`, `containers-storage:[vfs@${pdir}/root+${run}]${registry}/test/image:latest`]);
    // "Log in to registry"
    await podman(['login', registry, '-u', 'testuser', '-p', 'testpass']);
    // "Push the test image to the standard registry"
    await podman(['push', `${registry}/test/image`]);
    // "Remove the test image from the local cache", "Clean up the local image cache" (-f: no terminal to confirm)
    await podman(['rmi', `${registry}/test/image`]);
    await podman(['image', 'prune', '-f']);
    expect(await list()).not.toContain('test/image');
    // "Pull the image from the standard registry"
    await podman(['pull', `${registry}/test/image`]);
    expect(await list()).toContain('test/image');
    // "Try to pull an image that does not exist" (failed_when result.rc != 125)
    await podman(['pull', `${registry}/test/dne`], 125);
    // "Log out of registry"
    await podman(['logout', registry]);
    await podman(['rmi', '-a', '-f']);
  });

  it('docker-buildset.yaml: the daemon pulls through the registry as its mirror, with an empty docker config', async () => {
    // "Write docker daemon configuration" (registry-mirrors) and "Restart docker daemon": a reload here
    await dockerd.configure({ 'registry-mirrors': [`https://${registry}`] });
    // "Write docker user configuration": {}
    const cliDir = join(bdir, 'empty-docker-config');
    await mkdir(cliDir, { recursive: true });
    await writeFile(join(cliDir, 'config.json'), '{}');
    const cli = async (args: string[], rc = 0) => {
      const r = await dockerd.dockerResult(args, { DOCKER_CONFIG: cliDir });
      if (r.code !== rc) throw new Error(`docker ${args.join(' ')}: exit ${r.code}, wanted ${rc}: ${r.stderr}`);
      return r;
    };
    const list = async () => (await cli(['image', 'ls', '--all', '--digests', '--no-trunc'])).stdout;
    // "Copy the test image into the buildset registry"
    await must('skopeo', ['copy', '--dest-creds', 'testuser:testpass', `docker-archive:${testImg}`, `docker://${registry}/test/image:latest`]);
    // "Print list of images"
    expect(await list()).not.toMatch(/^test\/image /m);
    // "Pull the image from the buildset registry"
    await cli(['pull', 'test/image']);
    expect(await list()).toMatch(/^test\/image /m);
    // "Try to pull an image that does not exist" (failed_when result.rc != 1): the mirror's 404, then Docker Hub
    await cli(['pull', 'test/dne'], 1);
    // "Pull an image from upstream" (docker pull alpine): left out, no internet here.
    // "Remove the test image from the local cache"
    await cli(['rmi', 'test/image']);
    await dockerd.configure({});
  });

  it('podman-buildset.yaml: podman pulls through the registry as docker.io and quay.io mirror, with empty auth', async () => {
    const pdir = join(bdir, 'podman-buildset');
    await mkdir(pdir, { recursive: true });
    // files/registries.conf, with this registry for localhost:9000
    await writeFile(
      join(pdir, 'registries.conf'),
      ['docker.io', 'quay.io']
        .map((r) => `[[registry]]\nprefix = "${r}"\nlocation = "${r}"\n\n[[registry.mirror]]\nlocation = "${registry}/${r}"\n\n[[registry.mirror]]\nlocation = "${r}"\n`)
        .reduce((all, block) => `${all}\n${block}`, 'unqualified-search-registries = ["docker.io"]\n'),
    );
    // "Write docker user configuration", "Write containers auth configuration": {}
    await writeFile(join(pdir, 'auth.json'), '{}');
    const env = { CONTAINERS_REGISTRIES_CONF: join(pdir, 'registries.conf'), REGISTRY_AUTH_FILE: join(pdir, 'auth.json') };
    const run = await shortDir();
    const podman = (args: string[], rc = 0) => must('podman', ['--root', `${pdir}/root`, '--runroot', run, '--storage-driver', 'vfs', ...args], env, rc);
    const list = async () => (await podman(['image', 'ls', '--all', '--digests', '--no-trunc'])).stdout;
    // "Copy the test image into the buildset registry" (twice: under docker.io/ and quay.io/)
    await must('skopeo', ['copy', '--dest-creds', 'testuser:testpass', `docker-archive:${testImg}`, `docker://${registry}/docker.io/test/image:latest`]);
    await must('skopeo', ['copy', '--dest-creds', 'testuser:testpass', `docker-archive:${testImg}`, `docker://${registry}/quay.io/test/quay-image:latest`]);
    expect(await list()).not.toContain('test/image');
    // "Pull the shadowed docker image from the buildset registry"
    await podman(['pull', 'test/image']);
    expect(await list()).toContain('docker.io/test/image');
    await podman(['rmi', 'docker.io/test/image']);
    // "Pull the shadowed quay image from the buildset registry"
    await podman(['pull', 'quay.io/test/quay-image']);
    expect(await list()).toContain('quay.io/test/quay-image');
    await podman(['rmi', 'quay.io/test/quay-image']);
    // "Try to pull an image that does not exist" (failed_when result.rc != 125)
    await podman(['pull', 'test/dne'], 125);
    // "Pull an image from docker.io" (alpine) and "Pull an image from quay.io" (0xff/alpine-sshd): left out, no
    // internet here.
  });
});
