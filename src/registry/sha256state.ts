/**
 * SHA-256 whose state after any number of bytes can be saved in an UploadRecord and resumed by another process.
 *
 * The portable state is the eight chaining words, the byte count, and the bytes of the unfinished 64-byte block.
 * Two engines produce and accept it: a small N-API addon over OpenSSL's SHA256_CTX (native/sha256.c, ~1.7 GB/s)
 * and @noble/hashes as the fallback when the addon could not be built (~0.2 GB/s). Both give identical states.
 */
import { sha256 as nobleSha256 } from '@noble/hashes/sha2.js';
import { addon, HashKind, PooledHash } from './native-hash.js';

export interface Sha256State {
  v: 1;
  /** The chaining value: eight big-endian 32-bit words as 64 hex digits. */
  h: string;
  /** Bytes hashed so far. */
  bytes: number;
  /** The bytes of the unfinished block (bytes % 64 of them), base64. */
  tail: string;
}

export interface ResumableSha256 {
  update(data: Uint8Array): void;
  state(): Sha256State;
  digestHex(): string;
}

const IV = '6a09e667bb67ae853c6ef372a54ff53a510e527f9b05688c1f83d9ab5be0cd19';
const BLOCK = 64;

export function initialSha256State(): Sha256State {
  return { v: 1, h: IV, bytes: 0, tail: '' };
}

/** Validate a state read from storage; throws on anything malformed. */
export function parseSha256State(value: unknown): Sha256State {
  const s = value as Partial<Sha256State> | null;
  if (!s || typeof s !== 'object' || s.v !== 1) throw new Error('sha256 state: unknown version');
  if (typeof s.h !== 'string' || !/^[0-9a-f]{64}$/.test(s.h)) throw new Error('sha256 state: bad chaining value');
  if (typeof s.bytes !== 'number' || !Number.isSafeInteger(s.bytes) || s.bytes < 0) throw new Error('sha256 state: bad byte count');
  if (typeof s.tail !== 'string' || Buffer.from(s.tail, 'base64').length !== s.bytes % BLOCK) throw new Error('sha256 state: bad tail');
  return { v: 1, h: s.h, bytes: s.bytes, tail: s.tail };
}

// ---- native engine ------------------------------------------------------------------------------------------

export const nativeSha256Available = addon !== null;
const LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

class NativeSha256 implements ResumableSha256 {
  readonly ctx: Buffer;
  constructor(from: Sha256State) {
    const ctx = addon!.init();
    const tail = Buffer.from(from.tail, 'base64');
    for (let i = 0; i < 8; i++) writeU32(ctx, i * 4, parseInt(from.h.slice(i * 8, i * 8 + 8), 16));
    const bits = BigInt(from.bytes) * 8n;
    writeU32(ctx, 32, Number(bits & 0xffffffffn));
    writeU32(ctx, 36, Number(bits >> 32n));
    ctx.fill(0, 40, 104);
    tail.copy(ctx, 40); // OpenSSL keeps the partial block as raw bytes
    writeU32(ctx, 104, tail.length);
    this.ctx = ctx;
  }
  update(data: Uint8Array) {
    addon!.update(this.ctx, data);
  }
  state(): Sha256State {
    const c = this.ctx;
    let h = '';
    for (let i = 0; i < 8; i++) h += readU32(c, i * 4).toString(16).padStart(8, '0');
    const bits = (BigInt(readU32(c, 36)) << 32n) | BigInt(readU32(c, 32));
    const num = readU32(c, 104);
    return { v: 1, h, bytes: Number(bits / 8n), tail: c.subarray(40, 40 + num).toString('base64') };
  }
  digestHex() {
    return addon!.final(this.ctx).toString('hex');
  }
}

const writeU32 = (b: Buffer, off: number, v: number) => (LE ? b.writeUInt32LE(v >>> 0, off) : b.writeUInt32BE(v >>> 0, off));
const readU32 = (b: Buffer, off: number) => (LE ? b.readUInt32LE(off) : b.readUInt32BE(off));

// ---- noble engine -------------------------------------------------------------------------------------------

/** The fields of @noble/hashes' SHA-256 that hold its state (stable across 1.x and 2.x). */
interface NobleInternals {
  get(): number[];
  set(...words: number[]): void;
  buffer: Uint8Array;
  pos: number;
  length: number;
  update(data: Uint8Array): unknown;
  clone(): NobleInternals & { digest(): Uint8Array };
}

class NobleSha256 implements ResumableSha256 {
  private readonly hash: NobleInternals;
  constructor(from: Sha256State) {
    this.hash = nobleSha256.create() as unknown as NobleInternals;
    const words: number[] = [];
    for (let i = 0; i < 8; i++) words.push(parseInt(from.h.slice(i * 8, i * 8 + 8), 16) | 0);
    this.hash.set(...words);
    const tail = Buffer.from(from.tail, 'base64');
    this.hash.buffer.set(tail);
    this.hash.pos = tail.length;
    this.hash.length = from.bytes;
  }
  update(data: Uint8Array) {
    this.hash.update(data);
  }
  state(): Sha256State {
    const h = this.hash.get().map((w) => (w >>> 0).toString(16).padStart(8, '0')).join('');
    const tail = Buffer.from(this.hash.buffer.subarray(0, this.hash.pos)).toString('base64');
    return { v: 1, h, bytes: this.hash.length, tail };
  }
  digestHex() {
    return Buffer.from(this.hash.clone().digest()).toString('hex');
  }
}

/** A resumable SHA-256 on the fastest engine available, starting fresh or from a saved state. */
export function createSha256(from: Sha256State = initialSha256State()): ResumableSha256 {
  return addon ? new NativeSha256(from) : new NobleSha256(from);
}

/** SHA-256 whose updates run on the thread pool (see native-hash.ts); reading the result waits for them. */
export interface BackgroundSha256 {
  /** Takes `data` by reference: it must not change afterwards. Returns a promise only when the caller should wait. */
  update(data: Uint8Array): Promise<void> | undefined;
  state(): Promise<Sha256State>;
  digestHex(): Promise<string>;
}

export function createBackgroundSha256(from: Sha256State = initialSha256State()): BackgroundSha256 {
  if (!addon) {
    const hash = new NobleSha256(from);
    return { update: (data) => void hash.update(data), state: async () => hash.state(), digestHex: async () => hash.digestHex() };
  }
  const hash = new NativeSha256(from);
  const pooled = new PooledHash(HashKind.Sha256, hash.ctx);
  return {
    update: (data) => pooled.update(data),
    state: () => pooled.settled().then(() => hash.state()),
    digestHex: () => pooled.settled().then(() => hash.digestHex()),
  };
}

/** The fallback engine, exposed so tests can check both engines agree. */
export function createNobleSha256(from: Sha256State = initialSha256State()): ResumableSha256 {
  return new NobleSha256(from);
}
