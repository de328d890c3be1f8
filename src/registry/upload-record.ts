/**
 * The UploadRecord: what an upload holds, read and written whole as one object, after the data it describes.
 *
 * A record rewritten on every PATCH must not grow with every chunk (5,000 one-byte PATCHes made it 179 KB, so the
 * writes added up with the square of the count). Every PAGE_CHUNKS chunk entries are sealed into a page object,
 * written once before the record that names it; the record keeps the open tail and one reference per page. Pages
 * are named with a nonce, so a record names exactly the pages written for it even when writers race.
 */
import { randomBytes } from 'node:crypto';
import { AlreadyExists, PathNotFound, type StorageDriver } from '../storage/driver.js';
import { RegistryError, uploadUnknown } from './errors.js';
import { CHUNK_OBJECT_RE, PAGE_OBJECT_RE, paths, validDigest, validUploadId } from './paths.js';
import { parseSha256State, type Sha256State } from './sha256state.js';

export const RECORD_VERSION = 1;
/** A record with pages: processes that know only version 1 refuse it instead of misreading it. */
export const PAGED_RECORD_VERSION = 2;
/** Chunk entries the record holds before they are sealed into a page. */
export const PAGE_CHUNKS = 128;

export interface ChunkEntry {
  /** Object name beside the record: "<n>.<nonce>". */
  object: string;
  size: number;
  /** md5 hex, recorded where the storage reports one (Swift's ETag) to check it against; absent elsewhere. */
  md5?: string;
}

export interface PageRef {
  /** Object name beside the record: "p<n>.<nonce>"; it holds PAGE_CHUNKS chunk entries (JSON). */
  object: string;
  /** Bytes of the chunks it lists. */
  size: number;
}

export interface UploadRecord {
  v: typeof RECORD_VERSION | typeof PAGED_RECORD_VERSION;
  repository: string;
  /** ISO time the upload started, and of its last change (prune expires on `updated`). */
  started: string;
  updated: string;
  /** Sealed pages, in order, before `chunks`. */
  pages?: PageRef[];
  /** The chunks after the pages. */
  chunks: ChunkEntry[];
  /** SHA-256 state after the last chunk. */
  sha256: Sha256State;
  /** Set once a commit to this digest has begun moving chunks; the upload then only finishes that commit. */
  committing?: string;
}

/**
 * The seal beside a record: written once, create-only, by the commit (with the record it commits: the retry of that
 * commit finishes from it, whatever a PATCH that began before it wrote to the record since) or by a cancel.
 */
export interface Seal {
  sealed: string;
  /** The commit's digest; absent for a cancel. */
  digest?: string;
  /** The record the commit joins; absent for a cancel. */
  record?: UploadRecord;
}

export const recordSize = (r: UploadRecord) =>
  (r.pages ?? []).reduce((sum, p) => sum + p.size, 0) + r.chunks.reduce((sum, c) => sum + c.size, 0);
export const chunkCount = (r: UploadRecord) => (r.pages?.length ?? 0) * PAGE_CHUNKS + r.chunks.length;

export class UploadRecords {
  constructor(private readonly driver: StorageDriver) {}

  async read(ns: string, repo: string, id: string): Promise<UploadRecord> {
    if (!validUploadId(id)) throw uploadUnknown(id);
    let raw: Buffer;
    try {
      raw = await this.driver.read(paths.uploadRecord(ns, id));
    } catch (err) {
      if (err instanceof PathNotFound) throw uploadUnknown(id);
      throw err;
    }
    const record = parseRecord(raw);
    if (record.repository !== repo) throw uploadUnknown(id);
    return record;
  }

  /** The record, or null where there is none. */
  async find(ns: string, repo: string, id: string): Promise<UploadRecord | null> {
    try {
      return await this.read(ns, repo, id);
    } catch (err) {
      if (err instanceof RegistryError && err.code === 'BLOB_UPLOAD_UNKNOWN') return null;
      throw err;
    }
  }

  /** The seal, by a direct read (a listing may lag); null while the upload is open. */
  async seal(ns: string, id: string): Promise<Seal | null> {
    let raw: Buffer;
    try {
      raw = await this.driver.read(paths.uploadSeal(ns, id));
    } catch (err) {
      if (err instanceof PathNotFound) return null;
      throw err;
    }
    return parseSeal(raw);
  }

  /**
   * Create the seal. Whoever sealed first wins: on a seal already there, the one stored is returned instead (on Swift
   * two creates landing at the same moment may both succeed; docs/security-storage.md).
   */
  async createSeal(ns: string, id: string, seal: Seal): Promise<Seal> {
    try {
      await this.driver.put(paths.uploadSeal(ns, id), Buffer.from(JSON.stringify(seal)), { contentType: 'application/json', ifAbsent: true });
      return seal;
    } catch (err) {
      if (!(err instanceof AlreadyExists)) throw err;
      const stored = await this.seal(ns, id);
      if (!stored) throw err;
      return stored;
    }
  }

  /** Seal a full run of chunk entries into a page first, so that the record written stays small. */
  async write(ns: string, id: string, record: UploadRecord): Promise<void> {
    while (record.chunks.length >= PAGE_CHUNKS) {
      const entries = record.chunks.slice(0, PAGE_CHUNKS);
      const page: PageRef = {
        object: `p${record.pages?.length ?? 0}.${randomBytes(4).toString('hex')}`,
        size: entries.reduce((sum, c) => sum + c.size, 0),
      };
      await this.driver.put(paths.uploadPage(ns, id, page.object), Buffer.from(JSON.stringify(entries)), { contentType: 'application/json' });
      record.pages = [...(record.pages ?? []), page];
      record.chunks = record.chunks.slice(PAGE_CHUNKS);
      record.v = PAGED_RECORD_VERSION;
    }
    await this.driver.put(paths.uploadRecord(ns, id), Buffer.from(JSON.stringify(record)), { contentType: 'application/json' });
  }

  /** Every chunk of the upload, in order: the pages' entries, then the record's own. */
  async chunks(ns: string, id: string, record: UploadRecord): Promise<ChunkEntry[]> {
    const all: ChunkEntry[] = [];
    for (const page of record.pages ?? []) {
      const entries = parseEntries(JSON.parse((await this.driver.read(paths.uploadPage(ns, id, page.object))).toString('utf8')));
      if (entries.length !== PAGE_CHUNKS || entries.reduce((sum, c) => sum + c.size, 0) !== page.size) {
        throw new Error(`upload page ${page.object} does not match its record`);
      }
      all.push(...entries);
    }
    return all.concat(record.chunks);
  }
}

export function parseRecord(raw: Buffer): UploadRecord {
  let r: unknown;
  try {
    r = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new Error('upload record is not JSON');
  }
  const rec = r as UploadRecord;
  if (!rec || (rec.v !== RECORD_VERSION && rec.v !== PAGED_RECORD_VERSION) || typeof rec.repository !== 'string') {
    throw new Error('upload record has an unknown format');
  }
  rec.chunks = parseEntries(rec.chunks);
  if (rec.pages !== undefined) {
    if (!Array.isArray(rec.pages)) throw new Error('upload record has malformed pages');
    for (const p of rec.pages) {
      if (!p || typeof p.object !== 'string' || !PAGE_OBJECT_RE.test(p.object) || !Number.isSafeInteger(p.size) || p.size < 0) {
        throw new Error('upload record has a malformed page');
      }
    }
  }
  rec.sha256 = parseSha256State(rec.sha256);
  return rec;
}

export function parseSeal(raw: Buffer): Seal {
  let s: Seal;
  try {
    s = JSON.parse(raw.toString('utf8')) as Seal;
  } catch {
    throw new Error('upload seal is not JSON');
  }
  if (!s || typeof s.sealed !== 'string' || (s.digest !== undefined && (typeof s.digest !== 'string' || !validDigest(s.digest)))) {
    throw new Error('upload seal has an unknown format');
  }
  if (s.digest !== undefined) {
    s.record = parseRecord(Buffer.from(JSON.stringify(s.record ?? null)));
    s.record.committing = s.digest;
  }
  return s;
}

function parseEntries(value: unknown): ChunkEntry[] {
  if (!Array.isArray(value)) throw new Error('upload record has an unknown format');
  for (const c of value as ChunkEntry[]) {
    const md5Ok = c?.md5 === undefined || /^[0-9a-f]{32}$/.test(c.md5);
    if (!c || typeof c.object !== 'string' || !CHUNK_OBJECT_RE.test(c.object) || !Number.isSafeInteger(c.size) || c.size < 0 || !md5Ok) {
      throw new Error('upload record has a malformed chunk');
    }
  }
  return value as ChunkEntry[];
}
