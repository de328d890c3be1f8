/** The one table mapping registry error codes to HTTP statuses, and the OCI error envelope. */
import type { IncomingMessage, ServerResponse as Response } from 'node:http';
import type { Socket } from 'node:net';
import { ChecksumMismatch, DriverError, SizeMismatch, StorageUnavailable } from '../storage/driver.js';
import { RegistryError, type OciCode } from '../registry/errors.js';
import { DigestMismatch } from '../registry/verify.js';

const STATUS: Record<OciCode, number> = {
  BLOB_UNKNOWN: 404,
  BLOB_UPLOAD_INVALID: 400,
  BLOB_UPLOAD_UNKNOWN: 404,
  DIGEST_INVALID: 400,
  MANIFEST_BLOB_UNKNOWN: 400,
  MANIFEST_INVALID: 400,
  MANIFEST_UNKNOWN: 404,
  NAME_INVALID: 400,
  NAME_UNKNOWN: 404,
  SIZE_INVALID: 400,
  RANGE_INVALID: 416,
  PAGINATION_NUMBER_INVALID: 400,
  UNAUTHORIZED: 401,
  DENIED: 403,
  UNSUPPORTED: 405,
  TOOMANYREQUESTS: 429,
  PAYLOAD_TOO_LARGE: 413,
  UNAVAILABLE: 503,
  UNKNOWN: 500,
};

/** Codes that are Berth's names for a status rather than OCI codes; the wire shows the OCI code. */
const WIRE_CODE: Partial<Record<OciCode, string>> = { PAYLOAD_TOO_LARGE: 'SIZE_INVALID' };

export interface ErrorBody {
  status: number;
  code: string;
  message: string;
  detail?: unknown;
}

/** Translate anything thrown below the HTTP layer; internals never reach the client. */
export function toErrorBody(err: unknown, status?: number): ErrorBody {
  if (err instanceof RegistryError) {
    return { status: status ?? STATUS[err.code], code: WIRE_CODE[err.code] ?? err.code, message: err.message, detail: err.detail };
  }
  if (err instanceof StorageUnavailable) {
    // The cause (which container, which refusal) goes to the log with the request id, not to the client.
    return { status: 503, code: 'UNAVAILABLE', message: 'storage is unavailable; retry later' };
  }
  if (err instanceof DriverError && err.retryable) {
    return { status: 503, code: 'UNAVAILABLE', message: 'storage is temporarily unavailable; retry' };
  }
  if (err instanceof ChecksumMismatch || err instanceof SizeMismatch) {
    // Storage kept other bytes than were sent: the operation failed and changed nothing the client can see.
    return { status: 503, code: 'UNAVAILABLE', message: 'storage did not store the data intact; retry' };
  }
  if (err instanceof DigestMismatch) {
    // Damaged at rest: a storage fault that a retry will not mend (fsck --repair, then a push, does).
    return { status: 500, code: 'UNKNOWN', message: 'stored content does not match its digest' };
  }
  return { status: 500, code: 'UNKNOWN', message: 'internal error' };
}

export function sendError(res: Response, body: ErrorBody, head = false): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  closeIfBodyUnread(res);
  res.statusCode = body.status;
  // Headers set for the success response (a blob's length, digest, range) must not describe the error body: a
  // stale Content-Length leaves the client waiting for bytes that never come.
  for (const h of ['Content-Length', 'Docker-Content-Digest', 'ETag', 'Accept-Ranges', 'Content-Type']) res.removeHeader(h);
  if (body.status !== 416) res.removeHeader('Content-Range');
  if (body.status === 416 && body.detail && typeof body.detail === 'object' && 'uuid' in body.detail && 'size' in body.detail) {
    const size = (body.detail as { size: number }).size;
    res.setHeader('Range', `0-${Math.max(size - 1, 0)}`);
  }
  if (head) {
    res.end();
    return;
  }
  const error: Record<string, unknown> = { code: body.code, message: body.message };
  if (body.detail !== undefined) error.detail = body.detail;
  const text = JSON.stringify({ errors: [error] });
  res.setHeader('Content-Type', 'application/json');
  res.setHeader('Content-Length', Buffer.byteLength(text));
  res.end(text);
}

/** What a refused request may still send after the answer, read and dropped so its client can take the answer. */
const DRAIN_BYTES = 256 << 10;
const DRAIN_MS = 2000;

/**
 * The one rule for an answer sent before the request's body was read (a 413 mid-stream, a 401 or 404 on a PATCH):
 * the rest of that body stands in front of the connection's next request, and Node reads it only if nothing had
 * started on it (then to the end, however long); otherwise the connection waits for a read that never comes. So the
 * answer says `Connection: close`; after it the server stops sending, reads and drops what the client still sends
 * for up to DRAIN_BYTES or DRAIN_MS (closing at once would reset the connection and could lose the answer before
 * the client reads it), then closes.
 */
export function closeIfBodyUnread(res: Response): void {
  const req = res.req as IncomingMessage | undefined;
  const socket = res.socket;
  if (!req || !socket || req.complete || !hasBody(req)) return;
  res.setHeader('Connection', 'close');
  // Node ends a `Connection: close` response's socket with destroySoon(), which destroys it as soon as our bytes are
  // out: with unread bytes in the kernel that sends a reset. This one lingers instead.
  socket.destroySoon = () => linger(req, socket);
}

function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

function linger(req: IncomingMessage, socket: Socket): void {
  const until = socket.bytesRead + DRAIN_BYTES;
  const close = () => socket.destroy();
  const timer = setTimeout(close, DRAIN_MS).unref();
  socket.once('close', () => clearTimeout(timer));
  socket.once('end', close);
  socket.end();
  if (req.destroyed) return void close();
  req.on('data', () => {
    if (socket.bytesRead >= until) close();
  });
  req.on('end', close);
  req.on('error', close);
  req.resume();
}
