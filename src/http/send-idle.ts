/**
 * Responses whose client stopped taking bytes are cut off after `send-idle` seconds. A client that reads the
 * headers of a large blob and then never reads holds a descriptor, the storage read behind it and whatever the
 * pipeline buffered (docs/security-network.md): without this, for as long as it likes.
 *
 * Silence counts only while bytes wait for the client: never while Berth itself has nothing to send (storage is
 * slow, a commit is running). The watch polls how many bytes the socket has finished writing (what the kernel
 * accepted) instead of wrapping every write.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';

interface Watched {
  socket: Socket;
  sent: number;
  since: number;
}

/** Bytes the socket has handed on for good: `bytesWritten` counts queued bytes too, `writableLength` those queued. */
const accepted = (socket: Socket) => (socket.bytesWritten ?? 0) - socket.writableLength;

export function watchSends(server: Server, idleMs: number, log: Logger): void {
  const watched = new Map<ServerResponse, Watched>();
  let timer: NodeJS.Timeout | undefined;
  const tick = () => {
    const now = Date.now();
    for (const [res, w] of watched) {
      if (res.writableFinished || w.socket.destroyed) {
        watched.delete(res);
        continue;
      }
      const sent = accepted(w.socket);
      // Nothing waiting for the client (writableLength 0): Berth is the slow side, not the client.
      if (sent !== w.sent || w.socket.writableLength === 0) {
        w.sent = sent;
        w.since = now;
      } else if (now - w.since >= idleMs) {
        watched.delete(res);
        log.info({ req: res.getHeader('X-Request-Id'), method: res.req?.method, url: res.req?.url?.split('?')[0], waiting: w.socket.writableLength, seconds: idleMs / 1000 }, 'client took no bytes of the response; connection closed');
        // The response closes: the handler's pipeline fails and destroys the storage read behind it.
        w.socket.destroy();
      }
    }
    if (watched.size === 0) {
      clearInterval(timer);
      timer = undefined;
    }
  };
  server.on('request', (_req: IncomingMessage, res: ServerResponse) => {
    const socket = res.socket;
    if (!socket) return;
    watched.set(res, { socket, sent: accepted(socket), since: Date.now() });
    res.once('close', () => watched.delete(res));
    timer ??= setInterval(tick, Math.min(Math.max(idleMs / 10, 100), 1000)).unref();
  });
}
