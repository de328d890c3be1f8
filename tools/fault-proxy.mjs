#!/usr/bin/env node
// A fault-injecting HTTP proxy in front of a real Swift. Point a clouds.yaml's auth_url at it: it rewrites the
// X-Storage-Url of tempauth answers so that every later request comes through it too.
//
// usage: node tools/fault-proxy.mjs [--port 8089] [--upstream http://127.0.0.1:8080] [--seed N] [--log FILE]
//        [--error 0.05] [--reset 0.02] [--stall 0.01] [--stall-ms 8000] [--truncate 0.01] [--delay 0.05]
//        [--delay-ms 200] [--flip 0.01] [--match REGEX]
// Rates are probabilities per object request (auth and container requests pass untouched; --match names other
// requests that may fail instead, e.g. '^/v2/.+/blobs/sha256:' in front of a registry):
//   error     answer 500 or 503 without forwarding        reset     forward, then cut the connection mid-body
//   stall     hold the request for --stall-ms             truncate  end a GET response early
//   delay     add --delay-ms                              flip      flip one byte of a PUT body or GET response
// Control while running: GET /__faults (rates and counts; `open`: requests whose response has not closed yet), POST
// /__faults with a JSON body of new rates ({"error":0} etc.; {"off":true} sets every rate to 0). Prints
// "fault-proxy listening on port N" when ready.
import { appendFileSync } from 'node:fs';
import http from 'node:http';
import { Transform } from 'node:stream';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '8089' },
    upstream: { type: 'string', default: 'http://127.0.0.1:8080' },
    seed: { type: 'string', default: '1' },
    log: { type: 'string' },
    error: { type: 'string', default: '0' },
    reset: { type: 'string', default: '0' },
    stall: { type: 'string', default: '0' },
    'stall-ms': { type: 'string', default: '8000' },
    truncate: { type: 'string', default: '0' },
    delay: { type: 'string', default: '0' },
    'delay-ms': { type: 'string', default: '200' },
    flip: { type: 'string', default: '0' },
    match: { type: 'string' },
  },
});
const KINDS = ['error', 'reset', 'stall', 'truncate', 'delay', 'flip'];
const rates = Object.fromEntries(KINDS.map((k) => [k, Number(values[k])]));
const counts = Object.fromEntries([...KINDS, 'requests', 'open'].map((k) => [k, 0]));
const upstream = new URL(values.upstream);
const agent = new http.Agent({ keepAlive: true, maxSockets: 128 });

// Seeded PRNG (mulberry32) so a run can be repeated.
let seed = Number(values.seed) >>> 0;
const random = () => {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};

/** One fault (or none) for this request, chosen by the rates. */
function pick(req) {
  let r = random();
  for (const k of KINDS) {
    if (k === 'flip' && req.method !== 'PUT' && req.method !== 'GET') continue;
    if (k === 'truncate' && req.method !== 'GET') continue;
    if (r < rates[k]) return k;
    r -= rates[k];
  }
  return null;
}

/** Flips one byte somewhere in the stream (at a random offset within the first MiB that passes). */
function flipper() {
  let at = Math.floor(random() * 1024 * 1024);
  return new Transform({
    transform(chunk, _enc, done) {
      if (at >= 0 && at < chunk.length) {
        chunk = Buffer.from(chunk);
        chunk[at] ^= 0x55;
      }
      at -= chunk.length;
      done(null, chunk);
    },
  });
}

const eligible = values.match ? new RegExp(values.match) : /^\/v1\/[^/]+\/[^/?]+\/[^?]+/;
const isObject = (path) => eligible.test(path);

const server = http.createServer((req, res) => {
  if (req.url.startsWith('/__faults')) {
    if (req.method === 'POST') {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        const update = JSON.parse(body || '{}');
        if (update.off) for (const k of KINDS) rates[k] = 0;
        for (const k of KINDS) if (typeof update[k] === 'number') rates[k] = update[k];
        res.end(JSON.stringify({ rates, counts }));
      });
      return;
    }
    return res.end(JSON.stringify({ rates, counts }));
  }
  counts.requests++;
  counts.open++;
  res.once('close', () => counts.open--);
  const fault = isObject(req.url) ? pick(req) : null;
  if (fault) counts[fault]++;
  if (values.log) appendFileSync(values.log, `${JSON.stringify({ method: req.method, url: req.url, fault, transExtra: req.headers['x-trans-id-extra'] })}\n`);

  if (fault === 'error') {
    req.resume();
    res.writeHead(random() < 0.5 ? 500 : 503, { 'Content-Type': 'text/plain', Connection: 'close' });
    return res.end('injected fault\n');
  }
  const go = () => forward(req, res, fault);
  if (fault === 'stall') return setTimeout(go, Number(values['stall-ms']));
  if (fault === 'delay') return setTimeout(go, Number(values['delay-ms']));
  go();
});

function forward(req, res, fault) {
  const headers = { ...req.headers, host: upstream.host };
  const out = http.request({ host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers, agent }, (up) => {
    const h = { ...up.headers };
    if (h['x-storage-url']) h['x-storage-url'] = h['x-storage-url'].replace(`//${upstream.host}`, `//127.0.0.1:${server.address().port}`);
    res.writeHead(up.statusCode, h);
    let body = up;
    if (fault === 'flip' && req.method === 'GET') body = up.pipe(flipper());
    if (fault === 'truncate') {
      let sent = 0;
      const limit = Math.floor(Number(up.headers['content-length'] ?? 0) / 2);
      body = up.pipe(
        new Transform({
          transform(chunk, _e, done) {
            sent += chunk.length;
            if (sent > limit) {
              res.destroy();
              up.destroy();
              return done();
            }
            done(null, chunk);
          },
        }),
      );
    }
    body.pipe(res);
    body.on('error', () => res.destroy());
  });
  out.on('error', () => res.destroy());
  let source = req;
  if (fault === 'flip' && req.method === 'PUT') source = req.pipe(flipper());
  if (fault === 'reset') {
    let seen = 0;
    const cut = Math.floor(random() * 65536);
    source = req.pipe(
      new Transform({
        transform(chunk, _e, done) {
          seen += chunk.length;
          if (seen > cut) {
            req.socket.destroy();
            out.destroy();
            return done();
          }
          done(null, chunk);
        },
      }),
    );
    if (!req.headers['content-length'] && !req.headers['transfer-encoding']) setTimeout(() => req.socket.destroy(), 5);
  }
  source.pipe(out);
}

server.listen(Number(values.port), '127.0.0.1', () => {
  process.stdout.write(`fault-proxy listening on port ${server.address().port}\n`);
});
