import { describe, expect, it } from 'vitest';
import { ByteBoundedLru } from '../../src/registry/manifests.js';

describe('ByteBoundedLru', () => {
  it('forgets the least recently used entries once their bytes pass the limit', () => {
    const lru = new ByteBoundedLru(10);
    lru.set('a', Buffer.alloc(4));
    lru.set('b', Buffer.alloc(4));
    expect(lru.get('a')?.length).toBe(4); // a is now the most recent
    lru.set('c', Buffer.alloc(4)); // 12 bytes: b goes
    expect(lru.get('b')).toBeUndefined();
    expect(lru.get('a')).toBeDefined();
    expect(lru.get('c')).toBeDefined();
    expect(lru.size).toBe(2);
  });

  it('replacing a key counts its bytes once; a value larger than the limit is not kept', () => {
    const lru = new ByteBoundedLru(10);
    lru.set('a', Buffer.alloc(6));
    lru.set('a', Buffer.alloc(6));
    lru.set('b', Buffer.alloc(4));
    expect(lru.size).toBe(2);
    lru.set('huge', Buffer.alloc(11));
    expect(lru.get('huge')).toBeUndefined();
    expect(lru.size).toBe(2);
  });
});
