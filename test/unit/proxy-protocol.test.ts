/** PROXY protocol v2: the parser on good and malformed headers, and the server reading it from trusted peers only. */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import type http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_TIMEOUTS } from '../../src/config/config.js';
import { ClientAddresses, recordClientAddress } from '../../src/http/client-address.js';
import { MAX_HEADER_BYTES, formatIPv6, parseProxyV2, proxiedConnections } from '../../src/http/proxy-protocol.js';
import { createServer } from '../../src/http/server.js';

const SIG = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');

/** A v2 header: command byte, family/transport byte, then the address block and TLVs as given. */
function header(command: number, family: number, body: Buffer): Buffer {
  const fixed = Buffer.alloc(4);
  fixed[0] = command;
  fixed[1] = family;
  fixed.writeUInt16BE(body.length, 2);
  return Buffer.concat([SIG, fixed, body]);
}

function inet(src: string, dst: string, sport: number, dport: number, tlvs = Buffer.alloc(0)): Buffer {
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(sport, 0);
  ports.writeUInt16BE(dport, 2);
  const ip = (a: string) => Buffer.from(a.split('.').map(Number));
  return header(0x21, 0x11, Buffer.concat([ip(src), ip(dst), ports, tlvs]));
}

function inet6(src: Buffer, sport: number): Buffer {
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(sport, 0);
  ports.writeUInt16BE(443, 2);
  return header(0x21, 0x21, Buffer.concat([src, Buffer.alloc(16), ports]));
}

describe('parseProxyV2', () => {
  it('reads an IPv4 source address and port, and the header length', () => {
    const h = inet('203.0.113.7', '10.0.0.1', 51234, 443);
    expect(parseProxyV2(Buffer.concat([h, Buffer.from('GET / HTTP/1.1\r\n')]))).toEqual({
      state: 'done',
      header: { command: 'proxy', source: { address: '203.0.113.7', port: 51234 } },
      length: 28,
    });
  });

  it('reads an IPv6 source address, written as RFC 5952 text', () => {
    const src = Buffer.from('20010db8000000000000000000000001', 'hex');
    const r = parseProxyV2(inet6(src, 8080));
    expect(r).toEqual({ state: 'done', header: { command: 'proxy', source: { address: '2001:db8::1', port: 8080 } }, length: 52 });
  });

  it('skips TLVs: the header ends where its length says', () => {
    // PP2_TYPE_AUTHORITY (0x02) "registry.example", then PP2_TYPE_UNIQUE_ID (0x05).
    const tlvs = Buffer.concat([Buffer.from([0x02, 0x00, 16]), Buffer.from('registry.example'), Buffer.from([0x05, 0x00, 2, 0xab, 0xcd])]);
    const h = inet('198.51.100.2', '10.0.0.1', 1, 2, tlvs);
    const r = parseProxyV2(Buffer.concat([h, Buffer.from('\x16\x03\x01')]));
    expect(r).toMatchObject({ state: 'done', header: { source: { address: '198.51.100.2' } }, length: h.length });
  });

  it('LOCAL (a health check) carries no client: the peer is the client, whatever the address block holds', () => {
    const local = header(0x20, 0x11, Buffer.alloc(12, 7));
    expect(parseProxyV2(local)).toEqual({ state: 'done', header: { command: 'local' }, length: 28 });
    expect(parseProxyV2(header(0x20, 0x00, Buffer.alloc(0)))).toEqual({ state: 'done', header: { command: 'local' }, length: 16 });
  });

  it('UNSPEC and UNIX families carry no IP address: the peer is the client', () => {
    expect(parseProxyV2(header(0x21, 0x00, Buffer.alloc(0)))).toEqual({ state: 'done', header: { command: 'proxy' }, length: 16 });
    expect(parseProxyV2(header(0x21, 0x31, Buffer.alloc(216)))).toEqual({ state: 'done', header: { command: 'proxy' }, length: 232 });
  });

  it('every truncation of a valid header asks for more bytes, never succeeds or refuses', () => {
    const h = inet('203.0.113.7', '10.0.0.1', 51234, 443, Buffer.from([0x05, 0x00, 1, 0x01]));
    for (let n = 0; n < h.length; n++) expect(parseProxyV2(h.subarray(0, n)), `${n} bytes`).toEqual({ state: 'incomplete' });
  });

  it('a wrong signature is refused at its first wrong byte: HTTP, TLS, PROXY v1', () => {
    for (const text of ['GET / HTTP/1.1\r\n', '\x16\x03\x01\x02\x00', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n', '\r\n\r\n\x00\r\nX']) {
      expect(parseProxyV2(Buffer.from(text, 'latin1')), JSON.stringify(text)).toMatchObject({ state: 'invalid' });
    }
    expect(parseProxyV2(Buffer.from([0x0d]))).toEqual({ state: 'incomplete' });
  });

  it('refuses another version, an unknown command or family, and a datagram transport', () => {
    const body = inet('1.2.3.4', '5.6.7.8', 1, 2).subarray(16);
    expect(parseProxyV2(header(0x11, 0x11, body))).toMatchObject({ state: 'invalid', reason: expect.stringMatching(/version 1/) });
    expect(parseProxyV2(header(0x22, 0x11, body))).toMatchObject({ state: 'invalid', reason: expect.stringMatching(/command/) });
    expect(parseProxyV2(header(0x21, 0x41, body))).toMatchObject({ state: 'invalid', reason: expect.stringMatching(/family/) });
    expect(parseProxyV2(header(0x21, 0x12, body))).toMatchObject({ state: 'invalid', reason: expect.stringMatching(/transport/) });
  });

  it('refuses an address block shorter than its family needs', () => {
    expect(parseProxyV2(header(0x21, 0x11, Buffer.alloc(11)))).toMatchObject({ state: 'invalid', reason: expect.stringMatching(/too short/) });
    expect(parseProxyV2(header(0x21, 0x21, Buffer.alloc(35)))).toMatchObject({ state: 'invalid', reason: expect.stringMatching(/too short/) });
  });

  it('refuses a declared length over the bound before its bytes arrive', () => {
    const fixed = Buffer.concat([SIG, Buffer.from([0x21, 0x11, 0xff, 0xff])]);
    expect(parseProxyV2(fixed)).toMatchObject({ state: 'invalid', reason: expect.stringMatching(/at most/) });
    expect(parseProxyV2(header(0x21, 0x11, Buffer.alloc(MAX_HEADER_BYTES - 16)))).toMatchObject({ state: 'done' });
    expect(parseProxyV2(header(0x21, 0x11, Buffer.alloc(MAX_HEADER_BYTES - 15)))).toMatchObject({ state: 'invalid' });
  });
});

describe('formatIPv6', () => {
  const f = (hex: string) => formatIPv6(Buffer.from(hex, 'hex'));
  it('compresses the longest zero run, writes IPv4-mapped addresses dotted', () => {
    expect(f('00000000000000000000000000000001')).toBe('::1');
    expect(f('00000000000000000000000000000000')).toBe('::');
    expect(f('20010db8000000010000000000000000')).toBe('2001:db8:0:1::');
    expect(f('20010db8000100000001000000000001')).toBe('2001:db8:1:0:1::1');
    expect(f('fe800000000000000000000000000000')).toBe('fe80::');
    expect(f('00000000000000000000ffffc0000207')).toBe('::ffff:192.0.2.7');
    expect(net.isIPv6(f('20010db8000000010000000000000000'))).toBe(true);
  });
});

describe('a server that takes PROXY headers from trusted peers', () => {
  let dir: string;
  let cert: { cert: Buffer; key: Buffer };
  const servers: http.Server[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-proxy-'));
    await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1', '-keyout', `${dir}/k`, '-out', `${dir}/c`]);
    cert = { cert: await readFile(`${dir}/c`), key: await readFile(`${dir}/k`) };
  });
  afterAll(async () => {
    for (const s of servers) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
    await rm(dir, { recursive: true, force: true });
  });

  /** A server answering each request with the client address it resolved. */
  async function serve(addresses: string[], opts: { tls?: boolean; headers?: number } = {}): Promise<number> {
    const clientAddresses = new ClientAddresses({ addresses, proxyProtocol: true, forwardedFor: false });
    const log = pino({ level: 'silent' });
    const timeouts = { ...DEFAULT_TIMEOUTS, headers: opts.headers ?? DEFAULT_TIMEOUTS.headers };
    const server = createServer((req, res) => res.end(`client=${recordClientAddress(req, clientAddresses)}`), { timeouts, log, clientAddresses, tls: opts.tls ? cert : undefined });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return (server.address() as AddressInfo).port;
  }

  /** Write `parts` on a fresh connection (one write each), then collect what comes back until it closes. */
  function exchange(port: number, parts: (Buffer | string)[]): Promise<string> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1');
      let out = '';
      socket.on('data', (d) => (out += d));
      socket.on('error', reject);
      socket.on('close', () => resolve(out));
      socket.on('connect', async () => {
        for (const p of parts) {
          socket.write(p);
          await new Promise((r) => setTimeout(r, 20));
        }
      });
    });
  }

  const GET = 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n';
  const KEEP = 'GET / HTTP/1.1\r\nHost: x\r\n\r\n';
  const PROXIED = inet('203.0.113.7', '127.0.0.1', 40000, 5000);

  it('takes the client address from the header, with the request in the same write or split across several', async () => {
    const port = await serve(['127.0.0.1']);
    expect(await exchange(port, [Buffer.concat([PROXIED, Buffer.from(GET)])])).toMatch(/client=203\.0\.113\.7$/);
    expect(await exchange(port, [PROXIED.subarray(0, 5), PROXIED.subarray(5, 20), PROXIED.subarray(20), GET])).toMatch(/client=203\.0\.113\.7$/);
  });

  it('keeps the address for every request of a keep-alive connection', async () => {
    const port = await serve(['127.0.0.0/8']);
    const out = await exchange(port, [Buffer.concat([PROXIED, Buffer.from(KEEP)]), KEEP, GET]);
    expect(out.match(/client=203\.0\.113\.7/g)).toHaveLength(3);
  });

  it('LOCAL (a health check) is served as the peer', async () => {
    const port = await serve(['127.0.0.1']);
    expect(await exchange(port, [Buffer.concat([header(0x20, 0x00, Buffer.alloc(0)), Buffer.from(GET)])])).toMatch(/client=127\.0\.0\.1$/);
  });

  it('closes a trusted peer\u2019s connection without a header, or with a malformed one, answering nothing', async () => {
    const port = await serve(['127.0.0.1']);
    expect(await exchange(port, [GET])).toBe('');
    expect(await exchange(port, [Buffer.concat([header(0x21, 0x12, PROXIED.subarray(16)), Buffer.from(GET)])])).toBe('');
    expect(await exchange(port, [Buffer.concat([SIG, Buffer.from([0x21, 0x11, 0xff, 0xff])])])).toBe('');
    expect(await exchange(port, ['PROXY TCP4 203.0.113.7 127.0.0.1 1 2\r\n', GET])).toBe('');
  });

  it('closes a trusted peer that sends half a header and stops, after the headers timeout', async () => {
    const port = await serve(['127.0.0.1'], { headers: 1 });
    expect(await exchange(port, [PROXIED.subarray(0, 20)])).toBe('');
  });

  it('reads nothing from an untrusted peer: a PROXY header is a malformed request (400), a request is its own', async () => {
    const port = await serve(['10.0.0.0/8']);
    expect(await exchange(port, [Buffer.concat([PROXIED, Buffer.from(GET)])])).toMatch(/^HTTP\/1\.1 400 /);
    expect(await exchange(port, [GET])).toMatch(/client=127\.0\.0\.1$/);
  });

  it('reads the header before the TLS handshake', async () => {
    const port = await serve(['127.0.0.1'], { tls: true });
    const body = await new Promise<string>((resolve, reject) => {
      const raw = net.connect(port, '127.0.0.1', () => {
        raw.write(PROXIED);
        const s = tls.connect({ socket: raw, rejectUnauthorized: false }, () => s.write(GET));
        let out = '';
        s.on('data', (d) => (out += d));
        s.on('error', reject);
        s.on('close', () => resolve(out));
      });
    });
    expect(body).toMatch(/client=203\.0\.113\.7$/);
  });

  it('forgets each connection\u2019s address when it closes', async () => {
    for (let i = 0; i < 50 && proxiedConnections() > 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(proxiedConnections()).toBe(0);
  });
});
