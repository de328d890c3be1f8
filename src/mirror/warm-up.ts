/**
 * A mirror's first blob, sped up: before the port opens, the process streams WARM_UP_BYTES to itself over loopback
 * (node:http server to node:http client, the path a fill's bytes take), so V8 has compiled that path and the heap
 * has grown before a client's first cold pull.
 *
 * Why: in a freshly started process the first layer a fill streamed ran at a third of its later speed for its first
 * ~300 ms (5.8, 13.5, 30.0 MiB received after 100, 200, 300 ms, against 22.4, 57.6, 88.7 once the process had pulled
 * an image), and a plain node:http GET in a fresh process showed the same ramp (10 MiB in its first 100 ms; curl: 2
 * GB/s from the start). With this warm-up a fresh process's first fill received 64-77 MiB after 300 ms, and its
 * skopeo pull took 3.43 s against 3.56 (medians of five trials each, alternating, 512 MiB on Swift; docs/mirrors.md).
 * The cost: 0.25-0.4 s of CPU before a mirroring process listens. BERTH_MIRROR_WARM_UP=0 skips it.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export const WARM_UP_BYTES = 64 << 20;
const PIECE = 64 << 10;

/** Streams `bytes` through a loopback node:http server and client; resolves to the bytes received (never throws). */
export async function warmUpStreams(bytes = WARM_UP_BYTES): Promise<number> {
  const piece = Buffer.alloc(PIECE, 0x5a);
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-length': String(bytes) });
    let sent = 0;
    const more = () => {
      while (sent < bytes) {
        const n = Math.min(PIECE, bytes - sent);
        sent += n;
        if (!res.write(n === PIECE ? piece : piece.subarray(0, n))) return void res.once('drain', more);
      }
      res.end();
    };
    more();
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', resolve);
    });
    const { port } = server.address() as AddressInfo;
    return await new Promise<number>((resolve) => {
      let received = 0;
      const req = http.get({ host: '127.0.0.1', port, agent: false }, async (res) => {
        try {
          for await (const chunk of res as AsyncIterable<Buffer>) received += chunk.length;
        } catch {
          // A warm-up that fails only warmed less.
        }
        resolve(received);
      });
      req.once('error', () => resolve(received));
    });
  } catch {
    return 0;
  } finally {
    server.closeAllConnections();
    server.close();
  }
}
