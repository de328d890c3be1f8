/**
 * A byte scan of a JSON document's bracket depth, run before JSON.parse. V8 parses nesting iteratively, so a 4 MiB
 * body of two million `[` costs seconds of CPU and hundreds of megabytes building nested arrays before it is
 * refused; this pass costs one read of the bytes and stops at the first bracket past the limit. It can be fed a
 * body piece by piece as it arrives, so a request is refused at its first piece that goes too deep.
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

export class JsonDepthScan {
  private depth = 0;
  private inString = false;
  /** The previous piece ended inside a string on a backslash: this piece's first byte is escaped. */
  private escaped = false;
  /** The deepest nesting seen so far (once over the limit, the first depth past it: the scan stops there). */
  deepest = 0;

  constructor(private readonly limit = Infinity) {}

  /** Scan the next piece of the body; false once the nesting has gone past the limit. */
  feed(piece: Uint8Array): boolean {
    if (this.deepest > this.limit) return false;
    let { depth, inString } = this;
    let i = 0;
    if (this.escaped && piece.length > 0) {
      this.escaped = false;
      i = 1;
    }
    for (; i < piece.length; i++) {
      const b = piece[i];
      if (inString) {
        if (b === BACKSLASH) {
          if (i + 1 === piece.length) this.escaped = true;
          i++;
        } else if (b === QUOTE) inString = false;
      } else if (b === QUOTE) {
        inString = true;
      } else if (b === OPEN_ARRAY || b === OPEN_OBJECT) {
        depth++;
        if (depth > this.deepest) {
          this.deepest = depth;
          if (depth > this.limit) break;
        }
      } else if (b === CLOSE_ARRAY || b === CLOSE_OBJECT) {
        depth--;
      }
    }
    this.depth = depth;
    this.inString = inString;
    return this.deepest <= this.limit;
  }
}

/** The deepest nesting in `body`, or the first depth over `limit` (the scan stops there). */
export function jsonDepth(body: Uint8Array, limit = Infinity): number {
  const scan = new JsonDepthScan(limit);
  scan.feed(body);
  return scan.deepest;
}
