/**
 * tools/bench-mirror.mjs once per mode with a tiny layer, to keep it working: both contenders land in the table and
 * the JSON with one cold pull per trial, and the upstream's access log shows what each cache fetched. How fast
 * anything is belongs to full runs by hand (docs/mirrors.md).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);

interface Row {
  name: string;
  coldTrials: number[];
  warm: number;
  fetched: number;
  concurrentFetched: number;
  imageBytes: number;
}

describe.each([
  { mode: 'fresh processes', flags: [] as string[], warmProcess: false },
  { mode: '--warm-process', flags: ['--warm-process'], warmProcess: true },
])('tools/bench-mirror.mjs, $mode', ({ flags, warmProcess }) => {
  it('pulls cold and warm through both caches; Berth fetches one image for concurrent pulls and none for the warm one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'berth-bench-mirror-test-'));
    const out = join(dir, 'mirror.json');
    try {
      const { stdout } = await run('node', ['tools/bench-mirror.mjs', '--size-mib', '2', '--backend', 'filesystem', '--trials', '2', '--concurrency', '2', ...flags, '--out', out], {
        maxBuffer: 1 << 24,
        timeout: 200_000,
        killSignal: 'SIGKILL',
      });
      expect(stdout).toContain(`cold pull s (median of 2${warmProcess ? ', warm process' : ''})`);
      expect(stdout).toMatch(/Berth \/ Distribution speed: cold \d+\.\d+x, warm \d+\.\d+x, concurrent \d+\.\d+x/);
      const json = JSON.parse(await readFile(out, 'utf8')) as { warmProcess: boolean; rows: Row[] };
      expect(json.warmProcess).toBe(warmProcess);
      const [berth, distribution] = json.rows;
      expect([berth.name, distribution.name]).toEqual(['Berth mirror', 'Distribution proxy']);
      for (const row of json.rows) {
        expect(row.coldTrials).toHaveLength(2);
        for (const s of [...row.coldTrials, row.warm]) expect(s).toBeGreaterThan(0);
      }
      // In images (the upstream's blob GETs: layer and config; an image's bytes also count its small manifest): the
      // last cold pull's blobs once and its warm pull from the cache; Distribution's proxy fetches them again to store.
      const images = (row: Row, bytes: number) => bytes / row.imageBytes;
      expect(images(berth, berth.fetched)).toBeCloseTo(1, 2);
      expect(images(distribution, distribution.fetched)).toBeCloseTo(2, 2);
      expect(images(berth, berth.concurrentFetched)).toBeCloseTo(1, 2);
      expect(images(distribution, distribution.concurrentFetched)).toBeGreaterThan(1.5);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 220_000);
});
