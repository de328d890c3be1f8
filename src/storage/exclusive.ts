/**
 * Create an object only if none is there, and know whether this caller's create is the one that stands: what a lock
 * needs. Where the backend's create-only put is atomic (`atomicCreate`), its answer says so. Where it is not (Swift:
 * two If-None-Match creates racing each other may both succeed, the later replacing the earlier), each creator waits
 * for racing creates to land and reads back: the creator whose bytes are there holds it.
 */
import { AlreadyExists, type StorageDriver } from './driver.js';

/** Long enough for a racing create on Swift to have landed (its object servers answer within milliseconds). */
const SETTLE_MS = 1000;

/** True when `body` (unique to this caller: put a random token in it) was created at `path` and stands. */
export async function createExclusive(driver: StorageDriver, path: string, body: Buffer, opts: { settleMs?: number; contentType?: string } = {}): Promise<boolean> {
  const ours = () => driver.read(path).then((b) => b.equals(body), () => false);
  try {
    await driver.put(path, body, { ifAbsent: true, contentType: opts.contentType });
  } catch (err) {
    if (!(err instanceof AlreadyExists)) throw err;
    // A create whose answer was lost and that the driver retried finds our own bytes: that is success.
    return ours();
  }
  if (driver.atomicCreate) return true;
  await new Promise((r) => setTimeout(r, opts.settleMs ?? SETTLE_MS));
  return ours();
}
