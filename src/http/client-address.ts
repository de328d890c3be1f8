/**
 * The client's address, resolved once per request and used by everything that needs it (the failed-login limit, the
 * access log). Behind a balancer every connection comes from the balancer: `registry.trusted-proxies` names the
 * peers whose word on the client is taken, and how they give it (docs/security-network.md):
 *
 * - PROXY protocol v2: the header on the connection (proxy-protocol.ts) replaces the peer's address;
 * - X-Forwarded-For: while the address so far is a trusted proxy, the next one to the left in the header replaces it
 *   (the right-most address that is not a trusted proxy). Anything a client wrote itself lies further left and is
 *   never reached, since a trusted proxy appends the address it saw.
 *
 * From any other peer both are ignored: its address is the client's.
 */
import type { IncomingMessage } from 'node:http';
import { BlockList, isIP } from 'node:net';
import type { TrustedProxies } from '../config/config.js';
import { proxiedAddress } from './proxy-protocol.js';

/** More hops than any real chain of proxies; the walk stops there (the header is client input). */
const MAX_HOPS = 16;

export class ClientAddresses {
  private readonly list = new BlockList();

  constructor(readonly trust?: TrustedProxies) {
    for (const entry of trust?.addresses ?? []) {
      const [address, prefix] = entry.split('/');
      const family = isIP(address) === 6 ? 'ipv6' : 'ipv4';
      if (prefix === undefined) this.list.addAddress(address, family);
      else this.list.addSubnet(address, Number(prefix), family);
    }
  }

  /** Is this address a trusted proxy? */
  trusted(address: string | undefined): boolean {
    if (!this.trust || !address) return false;
    const a = plain(address);
    return this.list.check(a, isIP(a) === 6 ? 'ipv6' : 'ipv4');
  }

  /** The client address of a request: the peer, or what the trusted proxies in front of it say. */
  resolve(req: IncomingMessage): string | undefined {
    const socket = req.socket;
    const peer = socket.remoteAddress === undefined ? undefined : plain(socket.remoteAddress);
    let address = this.trust?.proxyProtocol ? (proxiedAddress(socket) ?? peer) : peer;
    if (!this.trust?.forwardedFor) return address;
    const header = req.headers['x-forwarded-for'];
    if (typeof header !== 'string') return address;
    const hops = header.split(',');
    for (let i = hops.length - 1; i >= 0 && i >= hops.length - MAX_HOPS && this.trusted(address); i--) {
      const hop = hopAddress(hops[i]);
      // A malformed entry was written by a trusted proxy's client: the proxy's own address is the best known.
      if (hop === undefined) break;
      address = hop;
    }
    return address;
  }
}

const recorded = new WeakMap<IncomingMessage, string | undefined>();

/** Resolve the request's client address (once, as the request arrives) for clientAddressOf. */
export function recordClientAddress(req: IncomingMessage, addresses: ClientAddresses): string | undefined {
  const address = addresses.resolve(req);
  recorded.set(req, address);
  return address;
}

/** The request's client address as recorded; unrecorded (an app without a listener's resolve), the peer's. */
export function clientAddressOf(req: IncomingMessage): string | undefined {
  if (recorded.has(req)) return recorded.get(req);
  const a = req.socket?.remoteAddress;
  return a === undefined ? undefined : plain(a);
}

/** IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4 peers) as IPv4. */
function plain(address: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return m ? m[1] : address;
}

/** One X-Forwarded-For entry as an address: bare, or with a port (`1.2.3.4:80`, `[2001:db8::1]:80`). */
function hopAddress(entry: string): string | undefined {
  const e = entry.trim();
  if (isIP(e)) return plain(e);
  const m = /^\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?$/.exec(e) ?? /^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$/.exec(e);
  return m && isIP(m[1]) ? plain(m[1]) : undefined;
}
