/**
 * tools/abuse.mjs at small scale against `berth serve` (plain and TLS, with users, 2-s timeouts and
 * a limit of 100 open uploads per namespace): every attack
 * holds. The figures at full scale are in docs/security-network.md.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnServe, type ServeProcess } from '../helpers/server.js';

const run = promisify(execFile);
let dir: string;
let plain: ServeProcess;
let secure: ServeProcess;

const config = (d: string, name: string, tls: boolean) => `registry:
  address: 127.0.0.1
  port: 0
${tls ? `  tls-cert: ${d}/tls.crt\n  tls-key: ${d}/tls.key\n` : ''}  secret: abuse-e2e-secret-0123456789abcdef
  users:
    - {name: mallory, pass: mallory-pw, access: write, namespace: tenant-m}
    - {name: victim, pass: victim-pw, access: write, namespace: tenant-v}
  timeouts: {handshake: 2, headers: 2, idle: 2, body-idle: 2, send-idle: 2}
  # upload-flood opens uploads one by one until refused: 100 rather than the default 1,000 saves ~20 s of the run
  limits: {uploads-per-namespace: 100}
  storage:
    driver: filesystem
    root: ${d}/${name}
`;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'berth-abuse-'));
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1', '-keyout', `${dir}/tls.key`, '-out', `${dir}/tls.crt`]);
  [plain, secure] = await Promise.all([spawnServe(config(dir, 'plain', false), dir), spawnServe(config(dir, 'secure', true), dir)]);
});
afterAll(async () => {
  expect(await plain.stop()).toBe(0);
  expect(await secure.stop()).toBe(0);
  await rm(dir, { recursive: true, force: true });
});

describe('tools/abuse.mjs', () => {
  // Every module in turn, a dozen of them: minutes on a busy machine.
  it('at small scale, every attack holds against a server with short timeouts', { timeout: 300_000 }, async () => {
    const args = ['tools/abuse.mjs', '--url', plain.url, '--tls-url', `https://127.0.0.1:${secure.port}`, '--user', 'mallory', '--scale', 'small'];
    args.push('--handshake', '2', '--headers', '2', '--body-idle', '2', '--send-idle', '2', '--root', join(dir, 'plain'));
    const { stdout } = await run(process.execPath, args, { env: { ...process.env, BERTH_ABUSE_PASSWORD: 'mallory-pw', BERTH_ABUSE_PROBE_USER: 'victim', BERTH_ABUSE_PROBE_PASSWORD: 'victim-pw' }, timeout: 300_000 }).catch((err: { stdout?: string; message: string }) => {
      throw new Error(`abuse runner failed: ${err.stdout ?? ''}${err.message}`);
    });
    const lines = stdout.trim().split('\n');
    expect(lines.filter((l) => !/ -> held \(/.test(l))).toEqual([]);
    expect(lines.some((l) => l.startsWith('50 idle plain connections -> held'))).toBe(true);
    expect(lines.some((l) => l.startsWith('50 half-open TLS connections -> held'))).toBe(true);
    expect(lines.some((l) => /^5 stalled PATCH \+ 5 stalled manifest PUT bodies -> held/.test(l))).toBe(true);
    expect(lines.some((l) => /^2 parallel authorized referrers GETs of 20 annotated referrers -> held/.test(l))).toBe(true);
    expect(lines.some((l) => l.startsWith('2 clients PUT 4 MiB nested-bracket manifests -> held'))).toBe(true);
    expect(lines.some((l) => /^20 clients from 20 addresses GET a 8 MiB blob over TLS and never read -> held/.test(l))).toBe(true);
    expect(lines.some((l) => /^3 chunked PATCH bodies refused mid-stream .* -> held/.test(l))).toBe(true);
    expect(lines.some((l) => /^login queue: .* -> held/.test(l))).toBe(true);
  });
});
