/**
 * The zuul-jobs registry flows end to end. The buildset registry is Berth's own image (etc/container/Containerfile,
 * built here on a debootstrapped base) run under a private dockerd with --network host, configured exactly as
 * run-buildset-registry renders it: TLS with a self-signed certificate, '::' and a port, public-url, one `zuul` write
 * user, a random secret, the secret and the password given as %(ZUUL_REGISTRY_...) environment variables. Clients
 * are set up as use-buildset-registry sets them up: dockerd with registry-mirrors, podman with its registries.conf,
 * containerd with hosts.toml. The intermediate registry is `berth serve` on Swift, with its prune.
 *
 * The registry's address is this machine's external IPv4 address when it has one: docker skips TLS verification for
 * every 127.0.0.0/8 registry, and the point is to verify it as a job node does (the role installs the CA; here it goes
 * to /etc/docker/certs.d/<host:port>/, which docker, podman and skopeo all read, instead of the system store).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBerthImage, externalAddress, freePort, httpsRequest, importBusybox, runResult, selfSignedCert, startDockerd, type Dockerd } from '../helpers/docker.js';
import { writeMultiArchLayout, writeTarLayout } from '../helpers/oci-layout.js';
import { spawnServe, type ServeProcess } from '../helpers/server.js';
import { storageYaml } from '../helpers/swift.js';

const run = promisify(execFile);
const sha256 = (b: string | Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

let dockerd: Dockerd;
let dir: string;
let host: string;
let ca: Buffer;
const container = `berth-buildset-${randomBytes(4).toString('hex')}`;
const secret = randomBytes(24).toString('hex');
const password = randomBytes(12).toString('hex');
let busyboxId: string;
let image: string;

/** What run-buildset-registry renders (its secret and password left to the environment). */
const buildsetConfig = (ip: string, port: number) => `registry:
  address: '::'
  port: ${port}
  public-url: 'https://${ip}:${port}'
  tls-cert: /tls/cert.pem
  tls-key: /tls/cert.key
  secret: '%(ZUUL_REGISTRY_SECRET)'
  users:
    - name: zuul
      pass: '%(ZUUL_REGISTRY_PASSWORD)'
      access: write
  storage:
    driver: filesystem
    root: /storage
`;

const skopeo = (...args: string[]) => run('skopeo', ['--insecure-policy', ...args], { maxBuffer: 1 << 24 });

beforeAll(async () => {
  dir = join(tmpdir(), `berth-zuul-${randomBytes(6).toString('hex')}`);
  for (const d of ['conf', 'tls', 'storage', 'certs', 'cli-empty', 'cli-hub', 'cli-push']) await mkdir(join(dir, d), { recursive: true });
  dockerd = await startDockerd();
  image = await buildBerthImage(dockerd);
  const ip = externalAddress() ?? '127.0.0.1';
  const port = await freePort();
  host = `${ip}:${port}`;
  const { cert, key } = await selfSignedCert(join(dir, 'tls'), [ip, '127.0.0.1']);
  await copyFile(cert, join(dir, 'tls', 'cert.pem'));
  await copyFile(key, join(dir, 'tls', 'cert.key'));
  await copyFile(cert, join(dir, 'certs', 'ca.crt'));
  ca = await readFile(cert);
  await dockerd.trustCa(host, cert);
  await writeFile(join(dir, 'conf', 'registry.yaml'), buildsetConfig(ip, port));
  // prettier-ignore
  await dockerd.docker(['run', '-d', '--name', container, '--network', 'host',
    '-e', `ZUUL_REGISTRY_SECRET=${secret}`, '-e', `ZUUL_REGISTRY_PASSWORD=${password}`,
    '-v', `${dir}/conf:/conf:ro`, '-v', `${dir}/tls:/tls:ro`, '-v', `${dir}/storage:/storage`, image]);
  for (let i = 0; ; i++) {
    const logs = await dockerd.dockerResult(['logs', container]);
    if (/listening on port/.test(logs.stdout)) break;
    if (i > 600) throw new Error(`the buildset registry did not start: ${logs.stdout}${logs.stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  for (const d of ['cli-empty', 'cli-push']) await writeFile(join(dir, d, 'config.json'), '{}');
  // The Docker Hub login a job node may carry: dockerd sends it to the mirror.
  const hub = Buffer.from('hubuser:hub-password').toString('base64');
  await writeFile(join(dir, 'cli-hub', 'config.json'), JSON.stringify({ auths: { 'https://index.docker.io/v1/': { auth: hub } } }));

  // busybox, pushed as a job pushes what later jobs pull as docker.io/library/busybox.
  const base = await importBusybox(dockerd);
  busyboxId = (await dockerd.docker(['image', 'inspect', '--format', '{{.Id}}', base])).stdout.trim();
  const push = { DOCKER_CONFIG: join(dir, 'cli-push') };
  await dockerd.docker(['login', '-u', 'zuul', '-p', password, host], push);
  await dockerd.docker(['tag', base, `${host}/library/busybox:latest`]);
  await dockerd.docker(['push', `${host}/library/busybox:latest`], push);
  await dockerd.docker(['rmi', base, `${host}/library/busybox:latest`]);
  await dockerd.configure({ 'registry-mirrors': [`https://${host}/`] });
}, 900_000);

afterAll(async () => {
  if (dockerd) {
    // The registry stops cleanly on docker's SIGTERM (node runs as PID 1 and handles it).
    await dockerd.dockerResult(['stop', container]);
    const exit = (await dockerd.dockerResult(['inspect', '--format', '{{.State.ExitCode}}', container])).stdout.trim();
    await dockerd.stop();
    expect(exit).toBe('0');
  }
  await rm(dir, { recursive: true, force: true });
});

describe('the buildset registry from the image, configured as run-buildset-registry renders it', () => {
  it('serves HTTPS with the configured certificate and checks the password from the environment', async () => {
    const v2 = await httpsRequest(`https://${host}/v2/`, ca);
    expect(v2.status).toBe(401);
    expect(v2.headers['www-authenticate']).toContain(`realm="https://${host}/auth/token"`);
    const env = { DOCKER_CONFIG: join(dir, 'cli-push') };
    // The placeholder's literal text is not the password.
    const literal = await dockerd.dockerResult(['login', '-u', 'zuul', '-p', '%(ZUUL_REGISTRY_PASSWORD)', host], env);
    expect(literal.code).toBe(1);
    expect((await dockerd.docker(['login', '-u', 'zuul', '-p', password, host], env)).stdout).toContain('Login Succeeded');
  });

  it("runs a command other than serve with the same /conf/registry.yaml (zuul's cron prune)", async () => {
    // prettier-ignore
    const r = await dockerd.docker(['run', '--rm', '--network', 'none', '-v', `${dir}/conf:/conf:ro`, '-v', `${dir}/storage:/storage`,
      image, 'prune', '--dry-run']);
    expect(r.stdout).toMatch(/namespace _local \(dry run/);
    expect(r.stderr).toContain('/conf/registry.yaml');
  });
});

describe('docker: registry-mirrors', () => {
  const pullAndRun = async (config: string) => {
    const env = { DOCKER_CONFIG: join(dir, config) };
    await dockerd.docker(['pull', 'busybox'], env);
    // No internet here: the image can only have come from the mirror.
    expect((await dockerd.docker(['image', 'inspect', '--format', '{{.Id}}', 'busybox'])).stdout.trim()).toBe(busyboxId);
    const out = await dockerd.docker(['run', '--rm', '--network', 'none', 'busybox', 'echo', 'mirrored'], env);
    expect(out.stdout.trim()).toBe('mirrored');
    await dockerd.docker(['rmi', 'busybox']);
  };

  it('dockerd pulls busybox through the mirror without credentials', async () => {
    await pullAndRun('cli-empty');
  });

  it('dockerd pulls busybox through the mirror while sending unrelated Docker Hub credentials', async () => {
    await pullAndRun('cli-hub');
  });

  it('a miss answers 404 MANIFEST_UNKNOWN, and dockerd falls back to Docker Hub', async () => {
    const token = await httpsRequest(`https://${host}/auth/token?service=${host}&scope=repository:library/busybox:pull`, ca);
    expect(token.status).toBe(200);
    const { token: bearer } = JSON.parse(token.body) as { token: string };
    const miss = await httpsRequest(`https://${host}/v2/library/busybox/manifests/no-such-tag`, ca, { headers: { Authorization: `Bearer ${bearer}` } });
    expect(miss.status).toBe(404);
    expect((JSON.parse(miss.body) as { errors: { code: string }[] }).errors[0].code).toBe('MANIFEST_UNKNOWN');
    const before = dockerd.log().length;
    const pull = await dockerd.dockerResult(['pull', 'busybox:no-such-tag'], { DOCKER_CONFIG: join(dir, 'cli-empty') });
    expect(pull.code).toBe(1);
    // The fallback is Docker Hub itself, which this machine cannot reach: the client's usual network error.
    expect(pull.stderr).toMatch(/registry-1\.docker\.io|index\.docker\.io/);
    expect(dockerd.log().slice(before)).toMatch(/no-such-tag|Attempting next endpoint|not found/i);
  });
});

describe('podman: the roles registries.conf', () => {
  let pdir: string;
  const podman = (...args: string[]) =>
    runResult('podman', ['--root', `${pdir}/root`, '--runroot', `${pdir}/run`, '--storage-driver', 'vfs', ...args], {
      CONTAINERS_REGISTRIES_CONF: join(pdir, 'registries.conf'),
      REGISTRY_AUTH_FILE: join(pdir, 'auth.json'),
    });
  let quayImage: Awaited<ReturnType<typeof writeTarLayout>>;

  beforeAll(async () => {
    // podman names an oci: image after its path, which must be lowercase.
    pdir = join(tmpdir(), `berth-zuul-podman-${randomBytes(6).toString('hex')}`);
    await mkdir(pdir);
    await writeFile(join(pdir, 'auth.json'), '{}');
    // use-buildset-registry's registries.conf: docker.io's mirror has no path prefix, other registries' mirrors do.
    const block = (registry: string, mirror: string) =>
      `[[registry]]\nprefix = "${registry}"\nlocation = "${registry}"\n[[registry.mirror]]\nlocation = "${mirror}"\n[[registry.mirror]]\nlocation = "${registry}"\n`;
    await writeFile(join(pdir, 'registries.conf'), `unqualified-search-registries = ["docker.io"]\n\n${block('docker.io', host)}\n${block('quay.io', `${host}/quay.io`)}`);
    quayImage = await writeTarLayout(join(pdir, 'src'), 'latest', [4000]);
    await skopeo('copy', '--dest-creds', `zuul:${password}`, '--dest-cert-dir', join(dir, 'certs'), `oci:${quayImage.dir}:latest`, `docker://${host}/quay.io/zuul/test:latest`);
  });
  afterAll(async () => {
    await podman('rmi', '-a', '-f');
    await rm(pdir, { recursive: true, force: true });
  });

  it('pulls docker.io and quay.io images through their mirrors without credentials', async () => {
    const busybox = await podman('pull', 'busybox');
    expect(busybox.code, busybox.stderr).toBe(0);
    const quay = await podman('pull', 'quay.io/zuul/test:latest');
    expect(quay.code, quay.stderr).toBe(0);
    const images = (await podman('images', '--format', '{{.Repository}}:{{.Tag}} {{.Digest}}')).stdout;
    expect(images).toContain('docker.io/library/busybox:latest');
    expect(images).toContain(`quay.io/zuul/test:latest ${quayImage.manifestDigest}`);
  });

  it('a miss falls back to the upstream registry (unreachable here): exit 125', async () => {
    const miss = await podman('pull', 'quay.io/zuul/no-such-image:latest');
    expect(miss.code).toBe(125);
    expect(miss.stderr).toMatch(/quay\.io/);
  });
});

describe('containerd: the roles hosts.toml', () => {
  let cdir: string;
  let containerd: ChildProcess;
  let socket: string;
  const ctr = (...args: string[]) => runResult('ctr', ['--address', socket, '--namespace', 'berth-zuul', ...args]);

  beforeAll(async () => {
    cdir = join(tmpdir(), `berth-zuul-ctr-${randomBytes(6).toString('hex')}`);
    socket = join(cdir, 'containerd.sock');
    await mkdir(join(cdir, 'hosts', 'docker.io'), { recursive: true });
    await mkdir(join(cdir, 'hosts', 'quay.io'), { recursive: true });
    const cafile = join(dir, 'certs', 'ca.crt');
    // docker.io's mirror at the registry's root; quay.io's under /v2/quay.io with override_path, as the roles write.
    await writeFile(
      join(cdir, 'hosts', 'docker.io', 'hosts.toml'),
      `server = "https://registry-1.docker.io"\n\n[host."https://${host}"]\n  capabilities = ["pull", "resolve"]\n  ca = "${cafile}"\n`,
    );
    await writeFile(
      join(cdir, 'hosts', 'quay.io', 'hosts.toml'),
      `server = "https://quay.io"\n\n[host."https://${host}/v2/quay.io"]\n  capabilities = ["pull", "resolve"]\n  override_path = true\n  ca = "${cafile}"\n`,
    );
    await writeFile(
      join(cdir, 'config.toml'),
      `version = 2\nroot = "${cdir}/root"\nstate = "${cdir}/state"\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "${socket}"\n`,
    );
    containerd = spawn('containerd', ['--config', join(cdir, 'config.toml')], { stdio: 'ignore' });
    for (let i = 0; i < 100 && (await ctr('version')).code !== 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect((await ctr('version')).code).toBe(0);
  });
  afterAll(async () => {
    containerd?.kill('SIGTERM');
    await new Promise((r) => containerd?.once('exit', r));
    await rm(cdir, { recursive: true, force: true });
  });

  it('ctr pulls docker.io and quay.io images through the mirror without credentials', async () => {
    const hostsDir = ['--hosts-dir', join(cdir, 'hosts'), '--snapshotter', 'native'];
    const busybox = await ctr('images', 'pull', ...hostsDir, 'docker.io/library/busybox:latest');
    expect(busybox.code, busybox.stderr).toBe(0);
    const quay = await ctr('images', 'pull', ...hostsDir, 'quay.io/zuul/test:latest');
    expect(quay.code, quay.stderr).toBe(0);
    const listed = (await ctr('images', 'ls')).stdout;
    expect(listed).toContain('docker.io/library/busybox:latest');
    expect(listed).toContain('quay.io/zuul/test:latest');
    const miss = await ctr('images', 'pull', ...hostsDir, 'quay.io/zuul/no-such-image:latest');
    expect(miss.code).not.toBe(0);
    expect(miss.stderr).toMatch(/quay\.io/);
  });
});

describe('intermediate registry on Swift', () => {
  let server: ServeProcess;
  let storage: { yaml: string; cleanup(): Promise<void> };
  let config: string;

  beforeAll(async () => {
    storage = await storageYaml('swift', dir);
    const yaml = `registry:\n  address: 127.0.0.1\n  port: 0\n  secret: intermediate-secret\n  users:\n    - {name: zuul, pass: inter-pw, access: write}\n  expiration: 10\n  upload-expiry: 10\n${storage.yaml}`;
    config = join(dir, 'intermediate.yaml');
    await writeFile(config, yaml);
    server = await spawnServe(yaml, dir);
  });
  afterAll(async () => {
    expect(await server.stop()).toBe(0);
    await storage.cleanup();
  });

  it('skopeo copy --all to <uuid>_<tag> and back keeps the digest; prune removes it after expiration, not before', async () => {
    const image = await writeMultiArchLayout(join(dir, 'multi'), 'latest');
    const certs = join(dir, 'certs');
    const inter = `127.0.0.1:${server.port}`;
    await skopeo('copy', '--all', '--dest-creds', `zuul:${password}`, '--dest-cert-dir', certs, `oci:${image.dir}:latest`, `docker://${host}/zuul/app:latest`);
    // push-to-intermediate-registry: buildset registry -> intermediate, tagged with the buildset's uuid.
    const tag = `${randomUUID().replaceAll('-', '')}_latest`;
    // prettier-ignore
    await skopeo('copy', '--all', '--src-creds', `zuul:${password}`, '--src-cert-dir', certs, '--dest-creds', 'zuul:inter-pw', '--dest-tls-verify=false',
      `docker://${host}/zuul/app:latest`, `docker://${inter}/zuul/app:${tag}`);
    const pushed = Date.now();
    const prune = () => run(process.execPath, ['dist/cli.js', '-c', config, 'prune']);
    // The cron prune, right after the push: not expired yet, kept.
    expect((await prune()).stdout).toMatch(/tags\s+1\s+1\s+0\n/);
    const raw = (await skopeo('inspect', '--raw', '--creds', 'zuul:inter-pw', '--tls-verify=false', `docker://${inter}/zuul/app:${tag}`)).stdout;
    expect(sha256(raw)).toBe(image.indexDigest);
    // pull-from-intermediate-registry: back into a (new) buildset registry under the plain tag.
    // prettier-ignore
    await skopeo('copy', '--all', '--src-creds', 'zuul:inter-pw', '--src-tls-verify=false', '--dest-creds', `zuul:${password}`, '--dest-cert-dir', certs,
      `docker://${inter}/zuul/app:${tag}`, `docker://${host}/next-buildset/app:latest`);
    const back = (await skopeo('inspect', '--raw', '--creds', `zuul:${password}`, '--cert-dir', certs, `docker://${host}/next-buildset/app:latest`)).stdout;
    expect(sha256(back)).toBe(image.indexDigest);

    // After the expiration (10 s), the next prune deletes the tag and the image's blobs.
    await new Promise((r) => setTimeout(r, Math.max(0, pushed + 11_000 - Date.now())));
    const { stdout } = await prune();
    expect(stdout).toMatch(/tags\s+1\s+0\s+1\n/);
    await expect(skopeo('inspect', '--raw', '--creds', 'zuul:inter-pw', '--tls-verify=false', `docker://${inter}/zuul/app:${tag}`)).rejects.toThrow(/manifest unknown/i);
    const blob = await fetch(`http://${inter}/v2/zuul/app/blobs/${image.platforms.amd64.layerDigest}`, {
      headers: { Authorization: `Basic ${Buffer.from('zuul:inter-pw').toString('base64')}` },
    });
    expect(blob.status).toBe(404);
  });
});
