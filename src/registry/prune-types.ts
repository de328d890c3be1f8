/** Prune's options and report (prune.ts re-exports them). */
import type { NamespaceUsage } from './usage.js';

export interface PruneLog {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface PruneOptions {
  /** Seconds after which tags and manifests expire; undefined: nothing expires by age. */
  expiration?: number;
  /** Seconds of inactivity after which an upload is abandoned; also the grace period of unreferenced blobs. */
  uploadExpiry: number;
  dryRun?: boolean;
  /** The clock prune judges ages by (tests move it forward instead of waiting). */
  now?: Date;
  log: PruneLog;
  /** Called every few seconds on long runs. */
  progress?: (line: string) => void;
  /** A lock older than this belongs to a prune that died; it is taken over. */
  staleLockSeconds?: number;
  /** Pause before reading the lock back, where the driver says creates are not atomic (storage/exclusive.ts). */
  lockSettleMs?: number;
}

export interface Tally {
  examined: number;
  kept: number;
  deleted: number;
}

export interface PruneReport {
  namespace: string;
  /** Another prune holds the namespace; nothing was done. */
  refused?: string;
  uploads: Tally;
  /** Upload directories that hold a linked blob's segments (commit: link). */
  linked: Tally;
  manifests: Tally;
  tags: Tally;
  blobs: Tally;
  bytes: Tally;
  /** Deletions that failed (the run went on). */
  failures: number;
  /** Stored objects deleted (every kind: records, links, blob data, markers). */
  objects: number;
  /** What the namespace stores after the run (not on a dry run); also stored at usage/last.json (usage.ts). */
  usage?: NamespaceUsage;
}
