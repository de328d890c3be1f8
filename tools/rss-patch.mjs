#!/usr/bin/env node
// Peak RSS of `berth serve` while one PATCH streams a large layer (default 2 GiB) and the PUT commits it.
// usage: node tools/rss-patch.mjs [--size-mib 2048] [--config FILE]   (run `npm run build` first)
// Without --config it serves a fresh filesystem store in a temp directory. Prints one JSON line.
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { 'size-mib': { type: 'string', default: '2048' }, config: { type: 'string' } } });
const size = Number(values['size-mib']) * 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'berth-rss-'));
let config = values.config;
if (!config) {
  config = join(dir, 'registry.yaml');
  writeFileSync(config, `registry:\n  address: 127.0.0.1\n  port: 0\n  storage:\n    driver: filesystem\n    root: ${dir}/data\n`);
}
const child = spawn(process.execPath, ['--single-threaded-gc', 'dist/cli.js', '-c', config, 'serve'], { stdio: ['ignore', 'pipe', 'inherit'] });
const port = await new Promise((resolve, reject) => {
  let out = '';
  child.stdout.on('data', (d) => {
    out += d;
    const m = /listening on port (\d+)/.exec(out);
    if (m) resolve(Number(m[1]));
  });
  child.once('exit', (code) => reject(new Error(`serve exited ${code}`)));
});
const status = () => readFileSync(`/proc/${child.pid}/status`, 'utf8');
const kib = (field) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status())[1]);
const baseline = kib('VmRSS');

function request(method, path, headers, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, headers }, (res) => {
      res.resume();
      res.on('end', () => resolve(res));
    });
    req.on('error', reject);
    if (typeof body === 'function') body(req);
    else req.end(body);
  });
}

const block = randomBytes(1 << 20);
const hash = createHash('sha256');
const started = await request('POST', '/v2/rss/test/blobs/uploads/', {});
const location = started.headers.location;
const t0 = performance.now();
await request('PATCH', location, { 'Content-Length': size, 'Content-Type': 'application/octet-stream' }, (req) => {
  let sent = 0;
  const pump = () => {
    while (sent < size) {
      const piece = block.subarray(0, Math.min(block.length, size - sent));
      hash.update(piece);
      sent += piece.length;
      if (!req.write(piece)) return void req.once('drain', pump);
    }
    req.end();
  };
  pump();
});
const t1 = performance.now();
const digest = `sha256:${hash.digest('hex')}`;
const put = await request('PUT', `${location}?digest=${digest}`, { 'Content-Length': 0 });
const t2 = performance.now();
const peak = kib('VmHWM');
child.kill('SIGTERM');
await new Promise((r) => child.once('exit', r));
rmSync(dir, { recursive: true, force: true });
const result = {
  sizeMiB: size / 2 ** 20,
  putStatus: put.statusCode,
  patchSeconds: +((t1 - t0) / 1000).toFixed(2),
  patchMiBps: +(size / 2 ** 20 / ((t1 - t0) / 1000)).toFixed(1),
  commitSeconds: +((t2 - t1) / 1000).toFixed(2),
  baselineRssMB: +(baseline / 1024).toFixed(1),
  peakRssMB: +(peak / 1024).toFixed(1),
};
console.log(JSON.stringify(result));
process.exitCode = put.statusCode === 201 ? 0 : 1;
