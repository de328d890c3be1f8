/**
 * The native addon (native/sha256.c): hashing on the libuv thread pool, and glibc's trim and mmap thresholds.
 *
 * A PooledHash takes each received piece by reference and hashes queued pieces on a pool thread, one job per hash
 * at a time, in order: the request thread neither hashes nor copies, and an upload's SHA-256 and md5 run on two
 * pool threads beside the socket and storage work. Without the addon (no compiler at install), callers fall back
 * to hashing on the calling thread.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

export interface NativeAddon {
  init(kind?: HashKind): Buffer;
  update(ctx: Buffer, data: Uint8Array): void;
  /** The digest of a SHA-256 or md5 context, leaving the context as it was. */
  final(ctx: Buffer): Buffer;
  contextSize: number;
  updateAsync(kind: HashKind, ctx: Buffer, pieces: Uint8Array[], done: (err: string | null) => void): void;
  /** glibc's M_TRIM_THRESHOLD and M_MMAP_THRESHOLD; false where the C library has none. Absent from older builds. */
  keepFreed?(trimThreshold: number, mmapThreshold: number): boolean;
}

/** Which context updateAsync is given. */
export const HashKind = { Sha256: 0, Md5: 1 } as const;
export type HashKind = (typeof HashKind)[keyof typeof HashKind];

function loadAddon(): NativeAddon | null {
  if (process.env.BERTH_SHA256 === 'noble') return null;
  try {
    const require = createRequire(import.meta.url);
    const file = fileURLToPath(new URL('../../native/build/Release/berth_sha256.node', import.meta.url));
    const addon = require(file) as NativeAddon;
    // SHA256_CTX = h[8], Nl, Nh (u32), data[16] (u32), num, md_len (u32) = 112 bytes, host byte order.
    return addon.contextSize === 112 && typeof addon.updateAsync === 'function' ? addon : null;
  } catch {
    return null;
  }
}

export const addon = loadAddon();

/**
 * Freed memory glibc keeps for reuse instead of handing it back to the kernel. By default it gave back the memory of
 * socket reads and blob pieces after each garbage collection (trim threshold 128 KiB), and the next pieces faulted in
 * fresh zeroed pages: tens of thousands per 512 MiB blob. Fixing the trim threshold also stops glibc raising the mmap
 * threshold, so that is set too (a reader's 512 KiB spool reads would each be a fresh mmap). Figures (a cold GET
 * through the cache 1.95x less CPU, a pull 1.72x) and the sizes tried: docs/performance.md. The cost: up to
 * KEEP_FREED_HEAP of freed memory stays in the process (per malloc arena).
 */
export const KEEP_FREED_HEAP = 32 << 20;
/** Allocations up to this size come from the heap, not a fresh mmap of their own. */
export const HEAP_ALLOCATIONS_UP_TO = 4 << 20;

/**
 * Sets glibc's trim and mmap thresholds, unless the operator's GLIBC_TUNABLES sets either, or BERTH_KEEP_FREED_HEAP=0
 * (glibc's defaults: tools/bench-heap.mjs compares the two); whether they were set.
 */
export function keepFreedHeap(): boolean {
  const operatorSet = /trim_threshold|mmap_threshold/.test(process.env.GLIBC_TUNABLES ?? '');
  if (operatorSet || process.env.BERTH_KEEP_FREED_HEAP === '0') return false;
  return addon?.keepFreed?.(KEEP_FREED_HEAP, HEAP_ALLOCATIONS_UP_TO) ?? false;
}

/** Bytes gathered into one pool job: a job costs tens of microseconds to hand over, a 64 KiB piece as little to hash. */
const MIN_JOB = 1 << 20;
/** Bytes queued before update() asks the caller to wait: hashing runs far faster than a network, so rarely. */
const MAX_QUEUED = 16 << 20;

export class PooledHash {
  private queue: Uint8Array[] = [];
  private queued = 0;
  private running = false;
  /** Callers told to wait (backlog), and callers of settled(). */
  private writers: (() => void)[] = [];
  private idle: (() => void)[] = [];

  /**
   * `ctx` must not be read or written while a job runs: read it only after `settled()`. A caller whose pieces must
   * not stay referenced long (a download: each piece held is memory a paused reader keeps) gives smaller bounds.
   */
  constructor(
    private readonly kind: HashKind,
    readonly ctx: Buffer,
    private readonly minJob = MIN_JOB,
    private readonly maxQueued = MAX_QUEUED,
  ) {}

  /** Queue `piece` (not copied: it must not change afterwards); returns a promise only when the caller should wait. */
  update(piece: Uint8Array): Promise<void> | undefined {
    if (piece.length === 0) return undefined;
    this.queue.push(piece);
    this.queued += piece.length;
    if (!this.running && this.queued >= this.minJob) this.run();
    return this.queued > this.maxQueued ? new Promise((resolve) => this.writers.push(resolve)) : undefined;
  }

  /** Resolves once every queued piece is hashed. */
  settled(): Promise<void> {
    if (!this.running && this.queue.length > 0) this.run();
    if (!this.running) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }

  private run(): void {
    const pieces = this.queue;
    this.queue = [];
    this.running = true;
    addon!.updateAsync(this.kind, this.ctx, pieces, () => {
      // The job only fails if the pool is torn down at exit; nothing waits for it then.
      this.queued -= pieces.reduce((sum, p) => sum + p.length, 0);
      this.running = false;
      if (this.queued >= this.minJob || (this.queued > 0 && this.idle.length > 0)) this.run();
      if (this.queued <= this.maxQueued / 2) wakeAll(this.writers);
      if (!this.running) wakeAll(this.idle);
    });
  }
}

function wakeAll(list: (() => void)[]): void {
  for (const wake of list.splice(0)) wake();
}

export interface Md5Job {
  /** Takes `data` by reference; returns a promise only when the caller should wait for the hash to catch up. */
  update(data: Uint8Array): Promise<void> | undefined;
  digest(): Promise<string>;
}

/** md5 on the thread pool when the addon is there, else on the calling thread. */
export function md5Job(): Md5Job {
  if (!addon) return inlineMd5();
  const hash = new PooledHash(HashKind.Md5, addon.init(HashKind.Md5));
  return {
    update: (data) => hash.update(data),
    digest: async () => {
      await hash.settled();
      return addon!.final(hash.ctx).toString('hex');
    },
  };
}

/** md5 on the calling thread: for small bodies, where a pool round trip costs more than the hash. */
export function inlineMd5(): Md5Job {
  const h = createHash('md5');
  return {
    update(data) {
      h.update(data);
      return undefined;
    },
    digest: async () => h.digest('hex'),
  };
}
