/** skopeo and podman log in and push/pull over HTTPS (self-signed certificate) through the Bearer token flow. */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blobDigest, writeLayout, writeTarLayout } from '../helpers/oci-layout.js';
import { spawnServe, type ServeProcess } from '../helpers/server.js';

const run = promisify(execFile);
const skopeo = (...args: string[]) => run('skopeo', ['--insecure-policy', ...args], { maxBuffer: 1 << 24 });

let dir: string;
let server: ServeProcess;
const config = (d: string, cert = `${d}/tls.crt`) => `registry:
  address: 127.0.0.1
  port: 0
  tls-cert: ${cert}
  tls-key: ${d}/tls.key
  secret: e2e-secret-value-0123456789abcdef
  users:
    - {name: alice, pass: alice-pw, access: write, namespace: tenant-a}
    - {name: bob, pass: bob-pw, access: write, namespace: tenant-b}
  storage:
    driver: filesystem
    root: ${d}/data
`;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'berth-tls-'));
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', `${dir}/tls.key`, '-out', `${dir}/tls.crt`]);
  server = await spawnServe(config(dir), dir);
});
afterAll(async () => {
  expect(await server.stop()).toBe(0);
  await rm(dir, { recursive: true, force: true });
});

describe('HTTPS and token auth with skopeo', () => {
  it('plain HTTP is not served when a certificate is configured', async () => {
    await expect(fetch(`http://127.0.0.1:${server.port}/v2/`)).rejects.toThrow();
  });

  it('logs in, pushes and pulls through the token flow; another tenant does not see the image', async () => {
    const image = await writeLayout(join(dir, 'src'), 'v1', [200_000, 5000]);
    const host = `127.0.0.1:${server.port}`;
    const authfile = join(dir, 'auth.json');
    await skopeo('login', '--tls-verify=false', '--authfile', authfile, '-u', 'alice', '-p', 'alice-pw', host);
    await skopeo('copy', '--dest-tls-verify=false', '--dest-authfile', authfile, `oci:${image.dir}:v1`, `docker://${host}/team/app:v1`);
    await skopeo('copy', '--src-tls-verify=false', '--src-creds', 'alice:alice-pw', `docker://${host}/team/app:v1`, `oci:${join(dir, 'out')}:v1`);
    for (const d of image.layerDigests) expect(await blobDigest(join(dir, 'out'), d)).toBe(d);
    await expect(skopeo('inspect', '--tls-verify=false', '--creds', 'bob:bob-pw', `docker://${host}/team/app:v1`)).rejects.toThrow(/manifest unknown/i);
    await expect(skopeo('login', '--tls-verify=false', '--authfile', join(dir, 'bad.json'), '-u', 'alice', '-p', 'wrong', host)).rejects.toThrow(/401|unauthorized|invalid/i);
    await expect(skopeo('inspect', '--tls-verify=false', `docker://${host}/team/app:v1`)).rejects.toThrow(/401|unauthorized|authentication required/i);
  });

  it("headers over Node's limit get 431 with the OCI error envelope over TLS too", async () => {
    const ca = await readFile(`${dir}/tls.crt`);
    const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = https.request(`https://127.0.0.1:${server.port}/v2/`, { ca, headers: { 'X-Padding': 'a'.repeat(20_000) } }, (r) => {
        let body = '';
        r.on('data', (d) => (body += d));
        r.on('end', () => resolve({ status: r.statusCode!, body }));
      });
      req.on('error', reject);
      req.end();
    });
    expect(res.status).toBe(431);
    expect(JSON.parse(res.body)).toEqual({ errors: [{ code: 'SIZE_INVALID', message: expect.any(String) }] });
  });

  it('an unreadable certificate stops start-up with a clear message and exit code 2', async () => {
    await expect(spawnServe(config(dir, `${dir}/missing.crt`), dir)).rejects.toThrow(/exited with 2: .*cannot read TLS certificate/s);
  });
});

describe('HTTPS and token auth with podman', () => {
  // podman names an oci: image after its path, which must be lowercase (mkdtemp's suffix is not).
  let pdir: string;
  const podman = (...args: string[]) =>
    run('podman', ['--root', `${pdir}/root`, '--runroot', `${pdir}/run`, '--storage-driver', 'vfs', ...args], { maxBuffer: 1 << 24 });

  beforeAll(async () => {
    pdir = join(tmpdir(), `berth-tls-podman-${randomBytes(6).toString('hex')}`);
    // The certificate is self-signed, so it is its own CA: podman trusts what --cert-dir holds as ca.crt.
    await mkdir(join(pdir, 'certs'), { recursive: true });
    await copyFile(`${dir}/tls.crt`, join(pdir, 'certs', 'ca.crt'));
  });
  afterAll(async () => {
    await podman('rmi', '-a', '-f').catch(() => {});
    await rm(pdir, { recursive: true, force: true });
  });

  it('podman verifies the certificate from --cert-dir, logs in, pushes and pulls back the same image', async () => {
    const host = `127.0.0.1:${server.port}`;
    const certs = ['--cert-dir', join(pdir, 'certs')];
    const authfile = ['--authfile', join(pdir, 'auth.json')];
    // TLS is really verified: without the certificate podman refuses the server.
    await expect(podman('login', ...authfile, '-u', 'alice', '-p', 'alice-pw', host)).rejects.toThrow(/x509|certificate/i);
    await expect(podman('login', ...certs, ...authfile, '-u', 'alice', '-p', 'wrong', host)).rejects.toThrow(/401|unauthorized|invalid/i);
    await podman('login', ...certs, ...authfile, '-u', 'alice', '-p', 'alice-pw', host);
    const image = await writeTarLayout(join(pdir, 'src'), 'v1', [300_000, 5000]);
    await podman('pull', `oci:${image.dir}:v1`);
    const local = (await podman('images', '--format', '{{.Id}}')).stdout.trim().split('\n')[0];
    expect(`sha256:${local}`.startsWith(image.configDigest.slice(0, 19))).toBe(true);
    await podman('push', ...certs, ...authfile, local, `docker://${host}/podman/app:v1`);
    await podman('rmi', '-a', '-f');
    await podman('pull', ...certs, ...authfile, `docker://${host}/podman/app:v1`);
    expect((await podman('images', '--format', '{{.Id}}')).stdout.trim()).toBe(local);
    // bob's namespace does not hold alice's image.
    await expect(podman('pull', ...certs, '--creds', 'bob:bob-pw', `docker://${host}/podman/app:v1`)).rejects.toThrow(/manifest unknown|not found/i);
  });
});
