/**
 * Requests Node refuses before the app sees them. Headers over Node's limit get the OCI error envelope instead of
 * Node's bare 431; every other parse error gets what Node itself would send (a 'clientError' listener replaces
 * Node's handling, so it has to).
 */
import { STATUS_CODES, type Server } from 'node:http';
import type { Duplex } from 'node:stream';

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

export function answerClientErrors(server: Server): void {
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    // As Node does: answer only if no response on this connection has started (pipelining), else the peer would
    // read our bytes in the middle of another response.
    const inFlight = (socket as Duplex & { _httpMessage?: { headersSent: boolean } | null })._httpMessage;
    if (!socket.writable || inFlight?.headersSent) return void socket.destroy();
    socket.end(responseFor(err.code), () => socket.destroy());
  });
}
