/**
 * Requests Node refuses before the app sees them. Headers over Node's limit get the OCI error envelope instead of
 * Node's bare 431; every other parse error gets what Node itself would send (a 'clientError' listener replaces
 * Node's handling, so it has to).
 */
import { STATUS_CODES, type Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';

const bare = (status: number) => `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\n\r\n`;

const headersTooLargeBody = JSON.stringify({ errors: [{ code: 'SIZE_INVALID', message: 'request headers are larger than the registry accepts' }] });
const headersTooLarge =
  `HTTP/1.1 431 ${STATUS_CODES[431]}\r\n` +
  'Content-Type: application/json\r\n' +
  `Content-Length: ${Buffer.byteLength(headersTooLargeBody)}\r\n` +
  'Docker-Distribution-API-Version: registry/2.0\r\n' +
  'Connection: close\r\n\r\n' +
  headersTooLargeBody;

function responseFor(code: string | undefined): string {
  switch (code) {
    case 'HPE_HEADER_OVERFLOW':
      return headersTooLarge;
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return bare(413);
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return bare(408);
    default:
      return bare(400);
  }
}

/** Time an answered connection gets to take our last bytes before it is dropped anyway. */
const LINGER_MS = 2000;

type ClientSocket = Duplex & { _httpMessage?: { headersSent: boolean } | null; parser?: unknown; _secureEstablished?: boolean };

export function answerClientErrors(server: Server): void {
  // HTTPS hands TLS failures (a handshake timeout among them) to this listener too.
  server.on('clientError', (err: NodeJS.ErrnoException, socket: ClientSocket) => {
    // Only a connection that speaks HTTP can take an answer: one still in its TLS handshake cannot, and end() would
    // wait forever for a flush that never comes, keeping the descriptor. As Node does, nothing is sent either once a
    // response on this connection has started (pipelining): the peer would read our bytes inside it.
    const httpReady = Boolean(socket.parser) && !(socket instanceof TLSSocket && !(socket as ClientSocket)._secureEstablished);
    if (!httpReady || !socket.writable || socket._httpMessage?.headersSent) return void socket.destroy();
    socket.end(responseFor(err.code), () => socket.destroy());
    // A peer that does not read leaves end() unfinished: the descriptor is bounded all the same.
    setTimeout(() => socket.destroy(), LINGER_MS).unref();
  });
}
