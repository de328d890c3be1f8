/**
 * PROXY protocol v2 (HAProxy's `send-proxy-v2`): a binary header a balancer writes on each connection before the
 * client's first byte, naming the client's address. Only trusted peers may send it, and they must: a connection from
 * a trusted peer without a valid header is closed (it would otherwise be served as the balancer's own). From any
 * other peer nothing is read here, and a PROXY header is just a malformed request (docs/security-network.md).
 *
 * The header is read before the server's own connection handling (HTTP parser or TLS handshake) sees the socket;
 * the bytes after it are put back on the socket for them.
 */
import type { Server } from 'node:net';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';

const SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
/** Signature, version and command, family and transport, length. */
const FIXED = 16;
/**
 * The format allows 64 KiB of addresses and TLVs; a balancer sends an address block and a few small TLVs (SNI,
 * unique id, TLS details). A longer header is refused rather than buffered.
 */
export const MAX_HEADER_BYTES = 4096;

export type ProxyHeader =
  /** LOCAL (a balancer's health check) or an address family without IP addresses: the peer is the client. */
  | { command: 'local' | 'proxy'; source?: undefined }
  | { command: 'proxy'; source: { address: string; port: number } };

export type ParseResult =
  | { state: 'incomplete' }
  | { state: 'invalid'; reason: string }
  | { state: 'done'; header: ProxyHeader; length: number };

/** Parse a PROXY v2 header at the start of `buf`; 'incomplete' asks for more bytes. */
export function parseProxyV2(buf: Buffer): ParseResult {
  const prefix = Math.min(buf.length, SIGNATURE.length);
  if (!buf.subarray(0, prefix).equals(SIGNATURE.subarray(0, prefix))) return { state: 'invalid', reason: 'no PROXY v2 signature' };
  if (buf.length < FIXED) return { state: 'incomplete' };
  const version = buf[12] >> 4;
  const command = buf[12] & 0x0f;
  if (version !== 2) return { state: 'invalid', reason: `PROXY protocol version ${version}` };
  if (command > 1) return { state: 'invalid', reason: `unknown PROXY command ${command}` };
  const family = buf[13] >> 4;
  const transport = buf[13] & 0x0f;
  const length = FIXED + buf.readUInt16BE(14);
  if (length > MAX_HEADER_BYTES) return { state: 'invalid', reason: `PROXY header of ${length} bytes (at most ${MAX_HEADER_BYTES})` };
  if (buf.length < length) return { state: 'incomplete' };
  if (command === 0) return { state: 'done', header: { command: 'local' }, length };
  // UNSPEC and UNIX carry no IP address: the spec says to use the connection's own endpoints.
  if (family === 0 || family === 3) return { state: 'done', header: { command: 'proxy' }, length };
  if (family > 3) return { state: 'invalid', reason: `unknown address family ${family}` };
  if (transport !== 1) return { state: 'invalid', reason: `transport ${transport} is not a stream` };
  const body = buf.subarray(FIXED, length);
  const size = family === 1 ? 4 : 16;
  // Source and destination addresses, then source and destination ports; TLVs after them are skipped.
  if (body.length < 2 * size + 4) return { state: 'invalid', reason: `address block of ${body.length} bytes is too short` };
  const address = family === 1 ? [...body.subarray(0, 4)].join('.') : formatIPv6(body.subarray(0, 16));
  return { state: 'done', header: { command: 'proxy', source: { address, port: body.readUInt16BE(2 * size) } }, length };
}

/** An IPv6 address as text (RFC 5952: the longest run of zero groups as `::`, IPv4-mapped ones as ::ffff:a.b.c.d). */
export function formatIPv6(bytes: Buffer): string {
  if (bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) return `::ffff:${[...bytes.subarray(12)].join('.')}`;
  const groups = Array.from({ length: 8 }, (_, i) => bytes.readUInt16BE(2 * i));
  let best = { at: -1, len: 0 };
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > best.len) best = { at: i, len: j - i };
    i = j === i ? i + 1 : j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best.len < 2) return hex.join(':');
  return `${hex.slice(0, best.at).join(':')}::${hex.slice(best.at + best.len).join(':')}`;
}

/** Client addresses from PROXY headers, by connection (its endpoints, which a TLS socket over it reports too). */
const sources = new Map<string, string>();
const endpoints = (s: Socket) => `${s.localAddress} ${s.localPort} ${s.remoteAddress} ${s.remotePort}`;

/** The client address a PROXY header gave for this connection (plain or TLS), if any. */
export function proxiedAddress(socket: Socket): string | undefined {
  return sources.size === 0 ? undefined : sources.get(endpoints(socket));
}

/** Connections whose PROXY header was read and which are still open (for tests: nothing may stay behind). */
export const proxiedConnections = () => sources.size;

export interface ProxyProtocolOptions {
  /** Is this peer a trusted proxy (which must send the header)? */
  trusted(address: string | undefined): boolean;
  /** Time the header may take to arrive. */
  timeoutMs: number;
  log: Logger;
}

/**
 * Make `server` read a PROXY v2 header from trusted peers before its own connection handling. Node's HTTP and TLS
 * servers handle a connection in 'connection' listeners; they are taken off and called once the header is read.
 */
export function acceptProxyProtocol(server: Server, opts: ProxyProtocolOptions): void {
  const handlers = server.listeners('connection') as ((socket: Socket) => void)[];
  server.removeAllListeners('connection');
  const handOver = (socket: Socket) => {
    for (const h of handlers) h.call(server, socket);
  };
  server.on('connection', (socket: Socket) => {
    if (!opts.trusted(socket.remoteAddress)) return handOver(socket);
    readHeader(socket, opts, handOver);
  });
}

function readHeader(socket: Socket, opts: ProxyProtocolOptions, handOver: (socket: Socket) => void): void {
  const peer = socket.remoteAddress;
  let buf: Buffer = Buffer.alloc(0);
  const done = () => {
    clearTimeout(timer);
    socket.off('readable', onReadable);
    socket.off('end', onEnd);
    socket.off('error', onError);
  };
  const refuse = (reason: string) => {
    done();
    opts.log.warn({ peer, reason }, 'connection from a trusted proxy without a valid PROXY header; closed');
    socket.destroy();
  };
  const onReadable = () => {
    for (let chunk: Buffer | null; (chunk = socket.read() as Buffer | null) !== null; ) {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      const r = parseProxyV2(buf);
      if (r.state === 'incomplete') continue;
      if (r.state === 'invalid') return refuse(r.reason);
      done();
      if (r.header.source) {
        const key = endpoints(socket);
        sources.set(key, r.header.source.address);
        socket.once('close', () => sources.delete(key));
      }
      // What followed the header in the same read (often the whole request) goes back in front of the rest.
      if (buf.length > r.length) socket.unshift(buf.subarray(r.length));
      return handOver(socket);
    }
  };
  const onEnd = () => refuse('connection ended before the header');
  const onError = () => {
    done();
    socket.destroy();
  };
  const timer = setTimeout(() => refuse(`no header within ${opts.timeoutMs / 1000} s`), opts.timeoutMs);
  socket.on('readable', onReadable);
  socket.on('end', onEnd);
  socket.on('error', onError);
}
