/**
 * tools/bench once with a tiny layer, to keep it working: every contender runs and lands in the table and the JSON.
 * Only that the figures exist and are sane is checked here; how fast anything is belongs to full runs by hand.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';

const run = promisify(execFile);

it('tools/bench with a 1 MiB layer prints both tables and writes every row, ratio and the small-request rates', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-bench-test-'));
  const out = join(dir, 'bench.json');
  try {
    const { stdout } = await run('node', ['tools/bench.mjs', '--size-mib', '1', '--runs', '1', '--concurrency', '2', '--small-seconds', '1', '--out', out], {
      maxBuffer: 1 << 24,
      timeout: 280_000,
      killSignal: 'SIGKILL',
    });
    const distribution = existsSync('/usr/bin/docker-registry');
    const names = [
      'raw Swift PUT / GET',
      'Berth on Swift',
      'Berth on Swift, pulls redirected to temp URLs',
      'Berth on filesystem',
      'Berth on Swift, curl',
      'Berth on filesystem, curl',
      'Berth on Swift, 2 concurrent pushes',
      ...(distribution ? ['Distribution on Swift', 'Distribution on filesystem'] : []),
    ];
    const json = JSON.parse(await readFile(out, 'utf8')) as {
      rows: { name: string; push?: number; pull?: number; pushCpu?: { client: number; registry: number; swift: number } }[];
      ratios: Record<string, number>;
      small: { headBlobRps: number; headErrors: number; getManifestRps: number; getErrors: number };
    };
    for (const name of names) {
      const row = json.rows.find((r) => r.name === name);
      expect(row, name).toBeDefined();
      expect(row!.push, name).toBeGreaterThan(0);
      expect(stdout).toContain(`| ${name} |`);
    }
    // The CPU table: a skopeo push to Berth on Swift spent CPU in skopeo and in Swift (Berth's share of a 1 MiB
    // push can round to 0 at 10-ms ticks: only its presence is checked).
    expect(stdout).toContain('| contender | push CPU s: client / registry / Swift | pull CPU s: client / registry / Swift |');
    const cpu = json.rows.find((r) => r.name === 'Berth on Swift')!.pushCpu as { client: number; registry: number; swift: number };
    expect(cpu.client).toBeGreaterThan(0);
    expect(cpu.swift).toBeGreaterThan(0);
    expect(Number.isFinite(cpu.registry)).toBe(true);
    for (const key of ['berthSwiftPushVsRawBound', 'curlBerthSwiftPushVsRawBound', 'curlBerthSwiftPullVsRawSloGet', ...(distribution ? ['berthFsPushVsDistribution'] : [])]) {
      expect(json.ratios[key], key).toBeGreaterThan(0);
    }
    expect(json.small.headBlobRps).toBeGreaterThan(0);
    expect(json.small.getManifestRps).toBeGreaterThan(0);
    expect(json.small.headErrors + json.small.getErrors).toBe(0);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}, 300_000);
