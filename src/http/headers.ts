/** Parsing of the request headers the API depends on. Everything from the network is checked here first. */
import { RegistryError } from '../registry/errors.js';

const MAX_SIZE = Number.MAX_SAFE_INTEGER;

function nonNegative(text: string): number | null {
  if (!/^[0-9]{1,16}$/.test(text)) return null;
  const n = Number(text);
  return n <= MAX_SIZE ? n : null;
}

/** Content-Length as a number; undefined when absent; SIZE_INVALID when malformed. */
export function contentLength(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = nonNegative(value.trim());
  if (n === null) throw new RegistryError('SIZE_INVALID', 'invalid Content-Length');
  return n;
}

/**
 * A chunk's Content-Range: "<start>-<end>" (inclusive), as Docker sends it; "bytes " or "bytes=" prefixes and a
 * "/<total>" suffix are tolerated. Returns the offset and length the chunk claims.
 */
export function chunkRange(value: string | undefined): { offset: number; length: number } | undefined {
  if (value === undefined) return undefined;
  const m = /^(?:bytes[ =])?([0-9]+)-([0-9]+)(?:\/(?:[0-9]+|\*))?$/.exec(value.trim());
  const start = m ? nonNegative(m[1]) : null;
  const end = m ? nonNegative(m[2]) : null;
  if (start === null || end === null || end < start) {
    throw new RegistryError('RANGE_INVALID', 'invalid Content-Range', { contentRange: value });
  }
  return { offset: start, length: end - start + 1 };
}

/**
 * A blob GET's Range: one "bytes=a-b", "bytes=a-" or "bytes=-n" range, clipped to the size. Returns undefined to
 * serve the whole blob (no header, or a form we do not serve partially, as RFC 9110 allows), or "unsatisfiable"
 * (past the end, or inverted as in "bytes=500-0").
 */
export function byteRange(value: string | undefined, size: number): { start: number; end: number } | 'unsatisfiable' | undefined {
  if (value === undefined) return undefined;
  const m = /^bytes=([0-9]*)-([0-9]*)$/.exec(value.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  if (m[1] === '') {
    const suffix = nonNegative(m[2]);
    if (suffix === null || suffix === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(size - suffix, 0), end: size - 1 };
  }
  const start = nonNegative(m[1]);
  const end = m[2] === '' ? size - 1 : nonNegative(m[2]);
  // Numbers too large to be offsets make the header unreadable, so it is ignored; an inverted range is read fine
  // and names no byte at all, which registry clients expect to hear as 416.
  if (start === null || end === null) return start !== null && start >= size ? 'unsatisfiable' : undefined;
  if (end < start || start >= size) return 'unsatisfiable';
  return { start, end: Math.min(end, size - 1) };
}

/** The Range header value for an upload of `size` bytes: the inclusive range received so far. */
export function uploadRange(size: number): string {
  return `0-${Math.max(size - 1, 0)}`;
}
