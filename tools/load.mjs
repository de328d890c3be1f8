// A small loopback load generator for one request repeated over keep-alive connections, one request in flight per
// connection (as wrk does). It writes a prepared request and parses only the status line, the end of the headers
// and Content-Length, so the server, not the client, takes most of the CPU; node:http as a client costs about as
// much as the server it measures. (wrk itself cannot time HEAD: it waits for the body a HEAD answer announces.)
// usage: node tools/load.mjs URL [--method GET] [--seconds 5] [--connections 32]
import net from 'node:net';
import { parseArgs } from 'node:util';

/** Requests per second and errors (non-2xx answers, socket errors) over `seconds`. */
export async function load(url, { method = 'GET', seconds = 5, connections = 32 } = {}) {
  const u = new URL(url);
  const request = Buffer.from(`${method} ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nAccept: */*\r\n\r\n`);
  const head = method === 'HEAD';
  const end = Date.now() + seconds * 1000;
  let done = 0;
  let errors = 0;
  const started = Date.now();
  const connection = () =>
    new Promise((resolve) => {
      const socket = net.connect(Number(u.port || 80), u.hostname);
      socket.setNoDelay(true);
      let pending = Buffer.alloc(0);
      let bodyLeft = -1; // -1: reading headers
      const send = () => (Date.now() < end ? socket.write(request) : socket.end());
      socket.on('connect', send);
      socket.on('data', (data) => {
        pending = pending.length ? Buffer.concat([pending, data]) : data;
        for (;;) {
          if (bodyLeft < 0) {
            const at = pending.indexOf('\r\n\r\n');
            if (at < 0) return;
            const headers = pending.subarray(0, at).toString('latin1');
            const status = Number(headers.slice(9, 12));
            if (status < 200 || status > 299) errors++;
            const length = /\r\ncontent-length: *(\d+)/i.exec(headers);
            bodyLeft = head || !length ? 0 : Number(length[1]);
            pending = pending.subarray(at + 4);
          }
          if (pending.length < bodyLeft) return;
          pending = pending.subarray(bodyLeft);
          bodyLeft = -1;
          done++;
          send();
        }
      });
      socket.on('error', () => {
        errors++;
        resolve();
      });
      socket.on('close', resolve);
    });
  await Promise.all(Array.from({ length: connections }, connection));
  return { rps: done / ((Date.now() - started) / 1000), errors };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { method: { type: 'string', default: 'GET' }, seconds: { type: 'string', default: '5' }, connections: { type: 'string', default: '32' } },
  });
  const r = await load(positionals[0], { method: values.method, seconds: Number(values.seconds), connections: Number(values.connections) });
  console.log(`${values.method} ${positionals[0]}: ${r.rps.toFixed(0)} requests/s, ${r.errors} errors`);
}
