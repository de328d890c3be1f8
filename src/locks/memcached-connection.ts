/**
 * One memcached server over its text protocol: one TCP connection, replies read in the order the requests were
 * sent (memcached answers a connection's requests in order). Only what the lock service needs: add, gets, cas.
 *
 * Never hangs a caller: every request has a deadline. A timeout, a refused or reset connection, or a reply that
 * does not parse destroys the connection (later replies could no longer be matched to their requests) and fails
 * every request in flight; the server is then "down" for a backoff (250 ms doubling to 5 s) during which requests
 * fail at once, so a dead server costs a request nothing and a hung one costs one deadline per backoff.
 */
import net from 'node:net';

export class MemcachedUnavailable extends Error {
  constructor(
    readonly server: string,
    message: string,
  ) {
    super(`memcached ${server}: ${message}`);
    this.name = 'MemcachedUnavailable';
  }
}

export interface MemcachedServerAddress {
  host: string;
  port: number;
}

/** A stored item as `gets` returns it: its value and the cas unique that a later `cas` must name. */
export interface CasItem {
  value: Buffer;
  cas: string;
}

const BACKOFF_FIRST_MS = 250;
const BACKOFF_MAX_MS = 5000;
/** The lock service stores short tokens: a longer value or line is not a reply to any request of ours. */
const MAX_VALUE_BYTES = 1024;
const MAX_LINE_BYTES = 2048;
const STORAGE_REPLIES = new Set(['STORED', 'NOT_STORED', 'EXISTS', 'NOT_FOUND']);
const VALUE_LINE = /^VALUE (\S+) ([0-9]+) ([0-9]+) ([0-9]+)$/;
const KEY = /^[\x21-\x7e]{1,250}$/;

interface Pending {
  expect: 'line' | 'item';
  key: string;
  resolve(reply: string | CasItem | null): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

export class MemcachedConnection {
  /** "host:port" as configured (IPv6 in brackets): the server's name in logs, metrics and hashing. */
  readonly name: string;
  /** Whether the last request answered: undefined before the first. */
  up: boolean | undefined;
  private socket: net.Socket | undefined;
  private buffer: Buffer = Buffer.alloc(0);
  private readonly pending: Pending[] = [];
  private failures = 0;
  private downUntil = 0;
  private closed = false;

  constructor(
    private readonly address: MemcachedServerAddress,
    private readonly timeoutMs: number,
    /** Told when the server starts or stops answering (not on every request). */
    private readonly onState: (server: MemcachedConnection) => void = () => {},
  ) {
    this.name = address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
  }

  /** The reply line of `add` or `cas`: STORED, NOT_STORED, EXISTS or NOT_FOUND. */
  async store(command: 'add' | 'cas', key: string, exptime: number, data: Buffer, cas?: string): Promise<string> {
    const head = `${command} ${key} 0 ${exptime} ${data.length}${command === 'cas' ? ` ${cas}` : ''}\r\n`;
    return (await this.request('line', key, Buffer.concat([Buffer.from(head), data, Buffer.from('\r\n')]))) as string;
  }

  /** The item with its cas unique, or null when the key holds none. */
  async gets(key: string): Promise<CasItem | null> {
    return (await this.request('item', key, Buffer.from(`gets ${key}\r\n`))) as CasItem | null;
  }

  close(): void {
    this.closed = true;
    this.drop(new MemcachedUnavailable(this.name, 'closed'));
  }

  private request(expect: 'line' | 'item', key: string, bytes: Buffer): Promise<string | CasItem | null> {
    if (!KEY.test(key)) return Promise.reject(new Error(`not a memcached key: ${JSON.stringify(key)}`));
    if (this.closed) return Promise.reject(new MemcachedUnavailable(this.name, 'closed'));
    const wait = this.downUntil - Date.now();
    if (wait > 0) return Promise.reject(new MemcachedUnavailable(this.name, `down, next attempt in ${wait} ms`));
    const socket = this.socket ?? this.connect();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new MemcachedUnavailable(this.name, `no reply within ${this.timeoutMs} ms`)), this.timeoutMs);
      this.pending.push({ expect, key, resolve, reject, timer });
      socket.write(bytes);
    });
  }

  private connect(): net.Socket {
    const socket = net.createConnection({ host: this.address.host, port: this.address.port });
    socket.setNoDelay(true);
    // An idle connection never keeps the process alive (a request's deadline timer does while it waits).
    socket.unref();
    socket.on('data', (d: Buffer) => {
      if (socket !== this.socket) return;
      this.buffer = this.buffer.length ? Buffer.concat([this.buffer, d]) : d;
      this.parse();
    });
    socket.on('error', (err) => {
      if (socket === this.socket) this.fail(new MemcachedUnavailable(this.name, err.message));
    });
    socket.on('close', () => {
      if (socket !== this.socket) return;
      // Closed while idle (a memcached restart): connect again at the next request, without a backoff.
      if (this.pending.length === 0) this.drop(new MemcachedUnavailable(this.name, 'connection closed'));
      else this.fail(new MemcachedUnavailable(this.name, 'connection closed'));
    });
    this.socket = socket;
    this.buffer = Buffer.alloc(0);
    return socket;
  }

  /** Read every complete reply at the head of the buffer. */
  private parse(): void {
    while (this.buffer.length > 0) {
      const head = this.pending[0];
      if (!head) return this.fail(new MemcachedUnavailable(this.name, 'a reply to no request'));
      const eol = this.buffer.indexOf('\r\n');
      if (eol < 0) {
        if (this.buffer.length > MAX_LINE_BYTES) this.fail(new MemcachedUnavailable(this.name, 'a reply line too long'));
        return;
      }
      const line = this.buffer.subarray(0, eol).toString('latin1');
      let reply: string | CasItem | null;
      let used: number;
      if (head.expect === 'line') {
        if (!STORAGE_REPLIES.has(line)) return this.fail(new MemcachedUnavailable(this.name, `unexpected reply ${JSON.stringify(line.slice(0, 80))}`));
        reply = line;
        used = eol + 2;
      } else if (line === 'END') {
        reply = null;
        used = eol + 2;
      } else {
        const m = VALUE_LINE.exec(line);
        const size = m ? Number(m[3]) : -1;
        if (!m || m[1] !== head.key || size > MAX_VALUE_BYTES || m[4].length > 20) {
          return this.fail(new MemcachedUnavailable(this.name, `unexpected reply ${JSON.stringify(line.slice(0, 80))}`));
        }
        const end = eol + 2 + size;
        if (this.buffer.length < end + 7) return; // the value, "\r\n" and "END\r\n" are still to come
        if (this.buffer.toString('latin1', end, end + 7) !== '\r\nEND\r\n') return this.fail(new MemcachedUnavailable(this.name, 'a value not followed by END'));
        reply = { value: Buffer.from(this.buffer.subarray(eol + 2, end)), cas: m[4] };
        used = end + 7;
      }
      this.buffer = this.buffer.subarray(used);
      this.pending.shift();
      clearTimeout(head.timer);
      this.answered();
      head.resolve(reply);
    }
  }

  private answered(): void {
    this.failures = 0;
    if (this.up !== true) {
      this.up = true;
      this.onState(this);
    }
  }

  /** The connection can no longer be trusted: drop it and back off. */
  private fail(err: Error): void {
    this.failures++;
    this.downUntil = Date.now() + Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** (this.failures - 1));
    this.drop(err);
    if (this.up !== false && !this.closed) {
      this.up = false;
      this.onState(this);
    }
  }

  private drop(err: Error): void {
    const socket = this.socket;
    this.socket = undefined;
    this.buffer = Buffer.alloc(0);
    socket?.destroy();
    for (const p of this.pending.splice(0)) {
      clearTimeout(p.timer);
      p.reject(err);
    }
  }
}
