/** The client address of a request: X-Forwarded-For from trusted proxies only, and `registry.trusted-proxies`. */
import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/config.js';
import { checkForServe } from '../../src/config/startup.js';
import { ClientAddresses, clientAddressOf, recordClientAddress } from '../../src/http/client-address.js';

const request = (peer: string, xff?: string) => ({ socket: { remoteAddress: peer }, headers: xff === undefined ? {} : { 'x-forwarded-for': xff } }) as unknown as IncomingMessage;
const forwarding = (...addresses: string[]) => new ClientAddresses({ addresses, proxyProtocol: false, forwardedFor: true });

describe('X-Forwarded-For', () => {
  it('is ignored from a peer that is not a trusted proxy', () => {
    expect(forwarding('10.0.0.1').resolve(request('192.0.2.9', '198.51.100.1'))).toBe('192.0.2.9');
  });

  it('from a trusted proxy gives the right-most address: what the proxy appended, not what its client wrote', () => {
    const a = forwarding('10.0.0.1');
    expect(a.resolve(request('10.0.0.1', '198.51.100.1'))).toBe('198.51.100.1');
    // The client wrote "10.0.0.1, 1.1.1.1" itself; the proxy appended the address it saw.
    expect(a.resolve(request('10.0.0.1', '10.0.0.1, 1.1.1.1, 198.51.100.1'))).toBe('198.51.100.1');
  });

  it('walks left past every trusted proxy of a chain, and no further', () => {
    const a = forwarding('10.0.0.0/8');
    expect(a.resolve(request('10.0.0.1', '203.0.113.5, 198.51.100.1, 10.2.0.1, 10.3.0.1'))).toBe('198.51.100.1');
    expect(a.resolve(request('10.0.0.1', '10.2.0.1'))).toBe('10.2.0.1');
  });

  it('stops at a malformed entry with the last address it had, and reads ports and brackets', () => {
    const a = forwarding('10.0.0.0/8');
    expect(a.resolve(request('10.0.0.1', '198.51.100.1, unknown, 10.2.0.1'))).toBe('10.2.0.1');
    expect(a.resolve(request('10.0.0.1', '198.51.100.1:4711'))).toBe('198.51.100.1');
    expect(a.resolve(request('10.0.0.1', '[2001:db8::7]:4711'))).toBe('2001:db8::7');
    expect(a.resolve(request('10.0.0.1', ''))).toBe('10.0.0.1');
  });

  it('matches IPv4-mapped peers and IPv6 ranges', () => {
    expect(forwarding('10.0.0.0/8').resolve(request('::ffff:10.0.0.1', '198.51.100.1'))).toBe('198.51.100.1');
    expect(forwarding('fd00::/8').resolve(request('fd12::1', '2001:db8::7'))).toBe('2001:db8::7');
    expect(forwarding('fd00::/8').resolve(request('fe80::1', '2001:db8::7'))).toBe('fe80::1');
  });

  it('is not read when the trusted proxies are configured for the PROXY protocol only', () => {
    const a = new ClientAddresses({ addresses: ['10.0.0.1'], proxyProtocol: true, forwardedFor: false });
    expect(a.resolve(request('10.0.0.1', '198.51.100.1'))).toBe('10.0.0.1');
  });

  it('is resolved once per request and read back by everything after', () => {
    const req = request('10.0.0.1', '198.51.100.1');
    expect(clientAddressOf(req)).toBe('10.0.0.1');
    recordClientAddress(req, forwarding('10.0.0.1'));
    expect(clientAddressOf(req)).toBe('198.51.100.1');
    expect(clientAddressOf(request('::ffff:192.0.2.1'))).toBe('192.0.2.1');
  });
});

describe('registry.trusted-proxies', () => {
  const parse = (tp: unknown) => parseConfig({ registry: { storage: { driver: 'filesystem', root: '/tmp/x' }, 'trusted-proxies': tp } });

  it('takes addresses and ranges and how they pass the client', () => {
    expect(parse({ addresses: ['10.0.0.5', '10.1.0.0/16', 'fd00::/8', '::1'], 'proxy-protocol': true }).trustedProxies).toEqual({
      addresses: ['10.0.0.5', '10.1.0.0/16', 'fd00::/8', '::1'],
      proxyProtocol: true,
      forwardedFor: false,
    });
    expect(parse(undefined).trustedProxies).toBeUndefined();
  });

  it('names the failing key', () => {
    expect(() => parse(['10.0.0.1'])).toThrow(/^registry\.trusted-proxies: must be a mapping/);
    expect(() => parse({ addresses: [] , 'x-forwarded-for': true })).toThrow(/^registry\.trusted-proxies\.addresses: must be a non-empty list/);
    expect(() => parse({ addresses: ['10.0.0.1', 'balancer.example'], 'x-forwarded-for': true })).toThrow(/^registry\.trusted-proxies\.addresses\[1\]: "balancer\.example" is not an IP/);
    expect(() => parse({ addresses: ['10.0.0.0/33'], 'x-forwarded-for': true })).toThrow(/addresses\[0\]/);
    expect(() => parse({ addresses: ['fd00::/129'], 'x-forwarded-for': true })).toThrow(/addresses\[0\]/);
    expect(() => parse({ addresses: ['10.0.0.0/8/8'], 'x-forwarded-for': true })).toThrow(/addresses\[0\]/);
    expect(() => parse({ addresses: ['10.0.0.1'], 'proxy-protocol': 'yes' })).toThrow(/^registry\.trusted-proxies\.proxy-protocol: must be true or false/);
    expect(() => parse({ addresses: ['10.0.0.1'], forwarded: true })).toThrow(/^registry\.trusted-proxies\.forwarded: unknown key/);
  });

  it('warns at start-up when processes behind a balancer would each sign tokens for their own audience', () => {
    const config = (publicUrl?: string) =>
      parseConfig({ registry: { storage: { driver: 'filesystem', root: '/tmp/x' }, secret: 'a-long-enough-secret-0123456789abcdef', 'public-url': publicUrl, 'trusted-proxies': { addresses: ['10.0.0.1'], 'proxy-protocol': true } } });
    expect(checkForServe(config())).toContainEqual({ msg: expect.stringContaining('trusted-proxies without public-url') });
    expect(checkForServe(config('https://registry.example.com'))).toEqual([]);
  });

  it('refuses trusted proxies with neither way of passing the client', () => {
    expect(() => parse({ addresses: ['10.0.0.1'] })).toThrow(/^registry\.trusted-proxies: say how they pass the client address/);
  });
});
