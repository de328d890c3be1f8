/**
 * Every shipped way to run Berth passes --single-threaded-gc (V8's concurrent GC helpers cost about a quarter of
 * Berth's CPU on large transfers: README, Performance), and `serve` says in its start-up line which GC it runs.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { addon } from '../../src/registry/native-hash.js';

const FLAG = '--single-threaded-gc';

describe('launchers', () => {
  it('npm start, the systemd unit, the cron line and the built CLI (its #! line) pass the GC flag', () => {
    const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.start).toMatch(new RegExp(`^node ${FLAG} dist/cli\\.js `));
    expect(readFileSync('etc/berth.service', 'utf8')).toMatch(new RegExp(`^ExecStart=/usr/bin/node ${FLAG} /opt/berth/dist/cli\\.js `, 'm'));
    expect(readFileSync('etc/berth-prune.cron', 'utf8')).toMatch(new RegExp(`/usr/bin/node ${FLAG} /opt/berth/dist/cli\\.js `));
    expect(readFileSync('dist/cli.js', 'utf8').split('\n')[0]).toBe(`#!/usr/bin/env -S node ${FLAG}`);
  });

  it('dist/cli.js run as a program serves, and logs that it runs the single-threaded GC and keeps freed memory', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'berth-launch-'));
    try {
      const config = join(dir, 'registry.yaml');
      await writeFile(config, `registry:\n  address: 127.0.0.1\n  port: 0\n  storage:\n    driver: filesystem\n    root: ${dir}/data\n`);
      const child = spawn('./dist/cli.js', ['-c', config, 'serve'], { stdio: ['ignore', 'pipe', 'pipe'] });
      const line = await new Promise<Record<string, unknown>>((resolve, reject) => {
        let out = '';
        const onData = (d: Buffer) => {
          out += d;
          for (const l of out.split('\n')) {
            if (l.includes('"msg":"berth listening"')) resolve(JSON.parse(l));
          }
        };
        child.stdout.on('data', onData);
        child.stderr.on('data', onData);
        child.once('exit', (code) => reject(new Error(`exited with ${code}: ${out}`)));
      });
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(line.gc).toBe('single-threaded');
      // glibc keeps freed memory for reuse (src/registry/native-hash.ts) where the addon is built, as CI requires.
      expect(line.freedMemory).toBe(addon ? 'kept' : 'glibc defaults');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
