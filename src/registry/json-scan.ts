/**
 * A byte scan of a JSON document's bracket depth, run before JSON.parse. V8 parses nesting iteratively, so a 4 MiB
 * body of two million `[` costs seconds of CPU and hundreds of megabytes building nested arrays before it is
 * refused; this pass costs one read of the bytes and stops at the first bracket past the limit.
 *
 * It does not validate JSON (JSON.parse does, afterwards): it only counts `[` and `{` minus `]` and `}` outside
 * strings. Inside a string a backslash escapes the next byte, so `"\""` and `"[\\"` are read as JSON reads them.
 * Bytes of multi-byte UTF-8 characters are all >= 0x80 and can never be mistaken for a quote or a bracket.
 */

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;
const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;

/** The deepest nesting in `body`, or the first depth over `limit` (the scan stops there). */
export function jsonDepth(body: Uint8Array, limit = Infinity): number {
  let depth = 0;
  let deepest = 0;
  let inString = false;
  for (let i = 0; i < body.length; i++) {
    const b = body[i];
    if (inString) {
      if (b === BACKSLASH) i++;
      else if (b === QUOTE) inString = false;
    } else if (b === QUOTE) {
      inString = true;
    } else if (b === OPEN_ARRAY || b === OPEN_OBJECT) {
      depth++;
      if (depth > deepest) {
        deepest = depth;
        if (deepest > limit) return deepest;
      }
    } else if (b === CLOSE_ARRAY || b === CLOSE_OBJECT) {
      depth--;
    }
  }
  return deepest;
}
