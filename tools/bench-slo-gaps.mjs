#!/usr/bin/env node
// How long a whole-SLO read through the Swift driver waits at its segment boundaries: the wait before each piece
// that holds a segment's first byte, summed over an SLO of 8 segments of 64 MiB read in this process as fast as it
// comes, by one or more compiled builds in turn. Less noisy than a whole pull on a shared machine: it isolates what
// reading ahead changes.
//
// usage: node tools/bench-slo-gaps.mjs [--rounds 6] --build LABEL=DIST_DIR [--build ...]
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { dropContainer } from './swift-lib.mjs';

const SEGMENT = 64 << 20;
const SEGMENTS = 8;
const repoRoot = new URL('..', import.meta.url).pathname;
const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '6' },
    build: { type: 'string', multiple: true, default: [`berth=${join(repoRoot, 'dist')}`] },
  },
});
const cloudsFile = (await promisify(execFile)(join(repoRoot, 'tools/swift-aio.sh'), ['start'])).stdout.trim().split('\n').pop();
const container = `bench-gaps-${randomBytes(4).toString('hex')}`;
const drivers = [];
try {
  for (const b of args.build) {
    const [label, dist] = [b.split('=')[0], b.slice(b.indexOf('=') + 1)];
    const { SwiftDriver } = await import(join(dist, 'storage/swift/driver.js'));
    const { loadCloud } = await import(join(dist, 'storage/swift/clouds.js'));
    drivers.push({ label, driver: await SwiftDriver.connect({ auth: loadCloud('berth-test', cloudsFile), container }), total: [], gaps: [] });
  }
  const parts = [];
  for (let i = 0; i < SEGMENTS; i++) {
    const bytes = randomBytes(SEGMENT);
    await drivers[0].driver.put(`parts/${i}`, bytes);
    parts.push({ path: `parts/${i}`, size: SEGMENT, md5: createHash('md5').update(bytes).digest('hex') });
  }
  await drivers[0].driver.concat('slo', parts);
  for (let r = 0; r < Number(args.rounds); r++) {
    for (const d of r % 2 ? [...drivers].reverse() : drivers) {
      const started = performance.now();
      let at = 0;
      let last = started;
      let gaps = 0;
      for await (const piece of (await d.driver.get('slo')).body) {
        const now = performance.now();
        // The piece that holds a segment's first byte waited for that segment's request.
        if (at > 0 && Math.floor((at + piece.length - 1) / SEGMENT) > Math.floor((at - 1) / SEGMENT)) gaps += now - last;
        at += piece.length;
        last = now;
      }
      d.total.push((performance.now() - started) / 1000);
      d.gaps.push(gaps);
    }
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
  console.log(`${SEGMENTS} x ${SEGMENT >> 20} MiB, ${args.rounds} rounds: whole read s, and the ${SEGMENTS - 1} boundary gaps summed in ms (medians, then each round)`);
  for (const d of drivers) {
    console.log(`${d.label}: ${median(d.total).toFixed(2)} s (${d.total.map((t) => t.toFixed(2)).join(' ')}); gaps ${median(d.gaps).toFixed(0)} ms (${d.gaps.map((g) => g.toFixed(0)).join(' ')})`);
  }
} finally {
  for (const d of drivers) await d.driver.close();
  await dropContainer(container).catch(() => {});
}
