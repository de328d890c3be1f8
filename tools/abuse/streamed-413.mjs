// A refusal before the body was read: a chunked PATCH that keeps streaming into an upload the server refuses
// (at full scale past max-blob-size, which needs a server whose limit is small enough to reach: --max-blob-mib;
// otherwise into an upload that does not exist, refused as soon as the request arrives), then the next request on the
// same connection. Held when every such connection is either answered again or closed by the server within 5 s,
// never left waiting for the idle timeout.
import net from 'node:net';
import tls from 'node:tls';
import { authFor } from './slow-readers.mjs';

const REPO = 'abuse/streamed-413';
const WAIT_MS = 5000;

export async function run(ctx) {
  const n = ctx.scale === 'full' ? 20 : 3;
  const url = ctx.tlsUrl ?? ctx.url;
  const { hostname, port } = new URL(url);
  const authorization = await authFor(ctx, REPO, 'pull,push');
  const auth = authorization ? `Authorization: ${authorization}\r\n` : '';
  const outcomes = { closed: 0, answered: 0, hung: 0 };
  const statuses = {};
  let slowest = 0;
  await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      // A real upload to stream into when a limit is given; else one that does not exist (404 before the body).
      let location = `/v2/${REPO}/blobs/uploads/no-such-upload-${i}`;
      if (ctx.maxBlobMib) {
        const start = await ctx.request(url, { method: 'POST', path: `/v2/${REPO}/blobs/uploads/`, headers: authorization ? { Authorization: authorization } : {} });
        if (start.status !== 202) throw new Error(`POST upload: ${start.status}`);
        location = start.headers.location;
      }
      const s = url.startsWith('https:') ? tls.connect({ host: hostname, port: Number(port), rejectUnauthorized: false }) : net.connect(Number(port), hostname);
      s.on('error', () => {});
      let got = '';
      let closed = false;
      s.on('data', (d) => (got += d.toString('latin1')));
      const ended = new Promise((resolve) => s.on('close', () => resolve((closed = true))));
      s.write(`PATCH ${location} HTTP/1.1\r\nHost: ${hostname}\r\n${auth}Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n`);
      const piece = Buffer.alloc(64 << 10, 7);
      const total = (ctx.maxBlobMib ?? 1) * 2 ** 20 + piece.length;
      for (let sent = 0; sent < total && !closed && !/^HTTP\/1\.1 \d+/.test(got); sent += piece.length) {
        if (!s.write(`${piece.length.toString(16)}\r\n`) || !s.write(piece) || !s.write('\r\n')) await new Promise((r) => setTimeout(r, 5));
      }
      const waitFor = async (test) => {
        const deadline = Date.now() + WAIT_MS;
        while (!test() && !closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      };
      await waitFor(() => /^HTTP\/1\.1 \d+/.test(got));
      const status = /^HTTP\/1\.1 (\d+)/.exec(got)?.[1] ?? 'none';
      statuses[status] = (statuses[status] ?? 0) + 1;
      // The client finishes its body and sends the next request on the same connection.
      const asked = Date.now();
      if (!closed) s.write(`0\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: ${hostname}\r\n${auth}\r\n`);
      await waitFor(() => (got.match(/HTTP\/1\.1 \d+/g) ?? []).length >= 2);
      if ((got.match(/HTTP\/1\.1 \d+/g) ?? []).length >= 2) outcomes.answered++;
      else if (closed) outcomes.closed++;
      else outcomes.hung++;
      slowest = Math.max(slowest, Date.now() - asked);
      s.destroy();
      await ended;
    }),
  );
  return {
    attack: `${n} chunked PATCH bodies refused mid-stream (${ctx.maxBlobMib ? `over a ${ctx.maxBlobMib} MiB max-blob-size` : 'unknown upload'}), then a request on the same connection`,
    held: outcomes.hung === 0 && statuses.none === undefined,
    detail: `refusals ${JSON.stringify(statuses)}; next request: ${outcomes.closed} connections closed by the server, ${outcomes.answered} answered, ${outcomes.hung} hung (waited ${WAIT_MS} ms); slowest ${slowest} ms`,
  };
}
