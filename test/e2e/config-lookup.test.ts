/**
 * `berth` as zuul-registry's image runs it: no command (it serves), the configuration found without -c, and
 * `%(ZUUL_REGISTRY_...)` placeholders filled from the environment, or start-up refused (exit 2) when the secret's
 * variable is missing.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const CLI = resolve('dist/cli.js');
let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'berth-lookup-'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

/** Run `node dist/cli.js ...args` until it listens (then SIGTERM) or exits; its log lines and exit code. */
function run(args: string[], opts: { cwd: string; env: NodeJS.ProcessEnv }): Promise<{ code: number | null; lines: Record<string, unknown>[]; stderr: string }> {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let stderr = '';
  let killed = false;
  child.stdout.on('data', (d: Buffer) => {
    out += d;
    if (!killed && out.includes('berth listening on port')) killed = child.kill('SIGTERM');
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d));
  return new Promise((done) =>
    child.once('exit', (code) => {
      const lines = out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
      done({ code, lines, stderr });
    }),
  );
}

const baseEnv = () => Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'BERTH_CONFIG' && !k.startsWith('ZUUL_REGISTRY_')));
const config = (extra = '') => `registry:\n  address: 127.0.0.1\n  port: '0'\n${extra}  storage:\n    driver: filesystem\n    root: data\n`;

describe('start-up as a container runs it', () => {
  it('no command serves, with etc/registry.yaml of the working directory when neither $BERTH_CONFIG nor /conf/registry.yaml exists', async () => {
    const cwd = join(dir, 'plain');
    await mkdir(join(cwd, 'etc'), { recursive: true });
    await writeFile(join(cwd, 'etc/registry.yaml'), config());
    const { code, lines } = await run([], { cwd, env: baseEnv() });
    expect(code).toBe(0);
    const loaded = lines.find((l) => l.msg === 'configuration loaded');
    expect(existsSync('/conf/registry.yaml'), 'this machine has a /conf/registry.yaml').toBe(false);
    expect(loaded).toMatchObject({ config: 'etc/registry.yaml', from: 'default' });
    expect(lines.some((l) => l.msg === 'berth listening')).toBe(true);
  });

  it('$BERTH_CONFIG names the file; placeholders are filled from ZUUL_REGISTRY_* variables', async () => {
    const file = join(dir, 'from-env.yaml');
    await writeFile(file, config(`  secret: "%(ZUUL_REGISTRY_SECRET)"\n  users:\n    - {name: zuul, pass: "%(ZUUL_REGISTRY_PASSWORD)", access: write}\n`));
    const env = { ...baseEnv(), BERTH_CONFIG: file, ZUUL_REGISTRY_SECRET: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', ZUUL_REGISTRY_PASSWORD: 'pw' };
    const { code, lines, stderr } = await run(['-d'], { cwd: dir, env });
    expect(code, stderr).toBe(0);
    expect(lines.find((l) => l.msg === 'configuration loaded')).toMatchObject({ config: file, from: 'BERTH_CONFIG' });
  });

  it('a secret whose variable is unset stops start-up with exit 2, naming the key and the variable', async () => {
    const file = join(dir, 'unset.yaml');
    await writeFile(file, config(`  secret: "%(ZUUL_REGISTRY_SECRET)"\n  users:\n    - {name: zuul, pass: pw, access: write}\n`));
    const { code, stderr, lines } = await run(['-c', file], { cwd: dir, env: baseEnv() });
    expect(code).toBe(2);
    expect(stderr).toMatch(/configuration error: registry\.secret: the placeholder %\(ZUUL_REGISTRY_SECRET\) was not replaced: the environment variable ZUUL_REGISTRY_SECRET is not set/);
    expect(lines.some((l) => l.msg === 'berth listening')).toBe(false);
  });

  it('a weak secret stops start-up with exit 2, saying how to make one', async () => {
    const file = join(dir, 'weak.yaml');
    await writeFile(file, config(`  secret: "%(ZUUL_REGISTRY_SECRET)"\n  users:\n    - {name: zuul, pass: pw, access: write}\n`));
    const { code, stderr } = await run(['-c', file], { cwd: dir, env: { ...baseEnv(), ZUUL_REGISTRY_SECRET: 'short' } });
    expect(code).toBe(2);
    expect(stderr).toMatch(/configuration error: registry\.secret: is 5 bytes; at least 16 are required .*openssl rand -hex 32/);
  });
});
