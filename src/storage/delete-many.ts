/** `deleteMany` for backends without a bulk request: single deletes, a few at a time, failures collected. */
import { forEachLimited } from '../util/concurrency.js';
import type { DeleteFailure, DeleteTarget } from './driver.js';

/** Deletes in flight at once: enough to hide a round trip, few enough not to crowd out live requests. */
export const DELETE_PARALLELISM = 8;

export const targetPath = (t: DeleteTarget): string => (typeof t === 'string' ? t : t.path);

export async function deleteEach(targets: readonly DeleteTarget[], del: (path: string) => Promise<void>, limit = DELETE_PARALLELISM): Promise<DeleteFailure[]> {
  const failures: DeleteFailure[] = [];
  await forEachLimited(targets, limit, async (t) => {
    const path = targetPath(t);
    try {
      await del(path);
    } catch (err) {
      failures.push({ path, error: err instanceof Error ? err : new Error(String(err)) });
    }
  });
  return failures;
}
