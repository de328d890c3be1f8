/** skopeo logs in and pushes/pulls over HTTPS (self-signed certificate) through the Bearer token flow. */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blobDigest, writeLayout } from '../helpers/oci-layout.js';
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
  secret: e2e-secret-value
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

  it('an unreadable certificate stops start-up with a clear message and exit code 2', async () => {
    await expect(spawnServe(config(dir, `${dir}/missing.crt`), dir)).rejects.toThrow(/exited with 2: .*cannot read TLS certificate/s);
  });
});
