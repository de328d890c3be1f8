/** The one table mapping registry error codes to HTTP statuses, and the OCI error envelope. */
import type { ServerResponse as Response } from 'node:http';
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
