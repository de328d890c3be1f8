/** Walking a storage listing: its entries come in path order, so the objects under one key are contiguous. */
import type { ObjectInfo } from '../storage/driver.js';

/** Consecutive listing entries that share a key (listings are in path order, so groups are contiguous). */
export async function* groups<K>(entries: AsyncIterable<ObjectInfo>, keyOf: (o: ObjectInfo) => K | null): AsyncIterable<{ key: K; objects: ObjectInfo[] }> {
  let current: { key: K; objects: ObjectInfo[] } | null = null;
  for await (const o of entries) {
    const key = keyOf(o);
    if (key === null) continue;
    if (current && current.key !== key) {
      yield current;
      current = null;
    }
    current ??= { key, objects: [] };
    current.objects.push(o);
  }
  if (current) yield current;
}
