/**
 * tools/bench once with a tiny layer, to keep it working: every contender runs and lands in the table and the JSON.
 * Only that the figures exist and are sane is checked here; how fast anything is belongs to full runs by hand.
 * Of the commit: link contenders only the curl one runs (a skopeo push costs this test more than all its curl rows).
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';

const run = promisify(execFile);

const CONTENDERS = [
  'raw',
  'berth-swift',
  'berth-swift-tempurl',
  'berth-fs',
  'dist-swift',
  'dist-fs',
  'berth-swift-curl',
  'berth-swift-link-curl',
  'berth-swift-tempurl-curl',
  'berth-fs-curl',
  'dist-swift-curl',
  'dist-fs-curl',
  'berth-swift-x2',
  'small',
];

it('tools/bench with a 1 MiB layer prints both tables and writes every row, ratio and the small-request rates', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-bench-test-'));
  const out = join(dir, 'bench.json');
  try {
    const { stdout } = await run('node', ['tools/bench.mjs', '--size-mib', '1', '--runs', '1', '--concurrency', '2', '--small-seconds', '1', '--only', CONTENDERS.join(','), '--out', out], {
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
      'Berth on Swift, commit: link, curl',
      'Berth on filesystem, curl',
      'Berth on Swift, 2 concurrent pushes',
      ...(distribution ? ['Distribution on Swift', 'Distribution on filesystem'] : []),
    ];
    const json = JSON.parse(await readFile(out, 'utf8')) as {
      rows: { name: string; push?: number; patch?: number; pull?: number; commit?: number; pushCpu?: { client: number; registry: number; swift: number } }[];
      ratios: Record<string, number>;
      targets: Record<string, { op: string; value: number; met: boolean | null }>;
      finalPut: { sizeMiB: number; move: number; link: number };
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
    const ratioKeys = ['berthSwiftPushVsRawBound', 'curlBerthSwiftPushVsRawBound', 'curlBerthSwiftPullVsRawSloGet', 'curlLinkSwiftPullVsRawSloGet', 'curlLinkSwiftPushVsPatch', 'curlLinkSwiftPullVsMove'];
    for (const key of [...ratioKeys, ...(distribution ? ['berthFsPushVsDistribution', 'curlLinkSwiftPushVsDistribution'] : [])]) {
      expect(json.ratios[key], key).toBeGreaterThan(0);
    }
    // The link rows beside the move rows: their PATCH and final PUT measured apart, each target judged (met or not:
    // a 1 MiB layer says nothing about either), and the final PUT of both modes on one line.
    const linkCurl = json.rows.find((r) => r.name === 'Berth on Swift, commit: link, curl')!;
    expect(linkCurl.patch).toBeGreaterThan(0);
    expect(linkCurl.commit).toBeGreaterThan(0);
    expect(linkCurl.push).toBeCloseTo(linkCurl.patch! + linkCurl.commit!, 6);
    expect(typeof json.targets.curlLinkSwiftPushVsPatch.met).toBe('boolean');
    expect(json.targets.curlLinkSwiftPullVsRawSloGet).toMatchObject({ op: '>=', value: 0.85 });
    expect(json.finalPut.link).toBe(linkCurl.commit);
    expect(json.finalPut.move).toBeGreaterThan(0);
    expect(stdout).toMatch(/final PUT \(commit\) latency with curl: move [\d.]+ s \([\d.]+ s\/GiB\), link [\d.]+ s \([\d.]+ s\/GiB\) for 1 MiB/);
    expect(stdout).toMatch(/\| curlLinkSwiftPushVsPatch \| [\d.]+ \| ≤ 1\.10: (met|not met) \|/);
    expect(json.small.headBlobRps).toBeGreaterThan(0);
    expect(json.small.getManifestRps).toBeGreaterThan(0);
    expect(json.small.headErrors + json.small.getErrors).toBe(0);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}, 300_000);

it('tools/bench refuses a misspelt --only name before any set-up, naming the contenders it knows', async () => {
  const err = (await run('node', ['tools/bench.mjs', '--only', 'berth-swift-link-curl,berth-swift-lnk'], { timeout: 30_000 }).catch((e: unknown) => e)) as {
    code?: number;
    stderr?: string;
  };
  expect(err.code).toBe(2);
  expect(err.stderr).toContain('--only berth-swift-lnk: unknown');
  expect(err.stderr).toContain('berth-swift-link-curl');
});
