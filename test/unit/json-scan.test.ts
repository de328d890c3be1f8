import { describe, expect, it } from 'vitest';
import { JsonDepthScan, jsonDepth } from '../../src/registry/json-scan.js';

const depth = (text: string, limit?: number) => jsonDepth(Buffer.from(text), limit);

describe('jsonDepth', () => {
  it('counts the deepest nesting of arrays and objects together', () => {
    expect(depth('{}')).toBe(1);
    expect(depth('{"a":[{"b":[1,2]},{}],"c":{}}')).toBe(4);
    expect(depth('"just a string"')).toBe(0);
    expect(depth('[[]],[[[ ]]]')).toBe(3);
  });

  it('brackets inside strings do not count', () => {
    expect(depth('{"a":"[[[[{{{{"}')).toBe(1);
    expect(depth('["]]]]", "}}}"]')).toBe(1);
    // A closing bracket inside a string does not end anything either.
    expect(depth('[[["]]]"]]]')).toBe(3);
  });

  it('an escaped quote does not end the string; an escaped backslash before a quote does', () => {
    expect(depth('["\\"[[[[" ]')).toBe(1);
    expect(depth('["\\\\", [[ ]]]')).toBe(3);
    expect(depth('["\\\\\\"[[[", [ ]]')).toBe(2);
    expect(depth('{"k\\"[":"v\\u005b["}')).toBe(1);
  });

  it('multi-byte UTF-8 in strings and keys is passed over', () => {
    expect(depth('{"clé":["ünïcødé ✓ 🚀", {"日本":"[["}]}')).toBe(3);
  });

  it('exactly at the limit passes with its depth; one more stops the scan at limit + 1', () => {
    const nested = (n: number) => '['.repeat(n) + ']'.repeat(n);
    expect(depth(nested(64), 64)).toBe(64);
    expect(depth(nested(65), 64)).toBe(65);
    // Stops early: a body of two million '[' reports only the first depth past the limit.
    expect(jsonDepth(Buffer.alloc(2 * 1024 * 1024, '['), 64)).toBe(65);
    expect(depth('{"a":' + nested(63) + '}', 64)).toBe(64);
  });

  it('an unterminated string hides the brackets after it (JSON.parse refuses the document anyway)', () => {
    expect(depth('["abc, [[[[')).toBe(1);
  });
});

describe('JsonDepthScan fed piece by piece', () => {
  const inPieces = (text: string, size: number, limit = Infinity) => {
    const scan = new JsonDepthScan(limit);
    const bytes = Buffer.from(text);
    let ok = true;
    for (let i = 0; i < bytes.length; i += size) ok = scan.feed(bytes.subarray(i, i + size)) && ok;
    return { depth: scan.deepest, ok };
  };
  const samples = ['{"a":[{"b":[1,2]},{}],"c":{}}', '["\\\\\\"[[[", [ ]]', '{"k\\"[":"v\\u005b["}', '["\\\\", [[ ]]]', '{"clé":["ünïcødé ✓ 🚀", {"日本":"[["}]}'];

  it('gives the depth of the whole body at every piece size, escapes split across pieces included', () => {
    for (const text of samples) {
      for (const size of [1, 2, 3, 5, 7]) expect(inPieces(text, size).depth, `${text} in pieces of ${size}`).toBe(depth(text));
    }
  });

  it('answers false from the piece that passes the limit on, and stays false', () => {
    const scan = new JsonDepthScan(3);
    expect(scan.feed(Buffer.from('[[['))).toBe(true);
    expect(scan.feed(Buffer.from(']]]'))).toBe(true);
    expect(scan.feed(Buffer.from('[[[['))).toBe(false);
    expect(scan.feed(Buffer.from(']]]]'))).toBe(false);
    expect(inPieces('"\\', 1, 3).ok).toBe(true);
  });
});
