/**
 * The listening server: plain HTTP or HTTPS, with every stage of a connection bounded in time so that clients that
 * connect and then say nothing cannot hold descriptors (docs/security-network.md).
 */
import http, { type IncomingMessage, type RequestListener, type ServerResponse } from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { Timeouts } from '../config/config.js';
import { answerClientErrors } from './client-errors.js';
import type { ClientAddresses } from './client-address.js';
import { acceptProxyProtocol } from './proxy-protocol.js';
import { watchSends } from './send-idle.js';

/**
 * TLS 1.2 only with forward secrecy and authenticated encryption (Node's defaults also offer static-RSA and CBC
 * suites). The TLS 1.3 suites are Node's own; they must be named, or Node would cap the server at TLS 1.2.
 */
export const TLS12_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
];
const TLS13_SUITES = tls.DEFAULT_CIPHERS.split(':').filter((c) => c.startsWith('TLS_'));

export interface ServerOptions {
  tls?: { cert: Buffer; key: Buffer };
  timeouts: Timeouts;
  log: Logger;
  /** Trusted proxies; those that send PROXY v2 headers have them read before HTTP or TLS (proxy-protocol.ts). */
  clientAddresses?: ClientAddresses;
}

export function createServer(listener: RequestListener, opts: ServerOptions): http.Server {
  const t = opts.timeouts;
  const common: http.ServerOptions = {
    headersTimeout: t.headers * 1000,
    // Long uploads: no limit on a whole request; a silent body is bounded by the body-idle watch instead.
    requestTimeout: 0,
    keepAliveTimeout: t.idle * 1000,
    // Node checks the headers deadline on this interval (30 s by default, which would triple a 10 s timeout).
    connectionsCheckingInterval: Math.min(Math.max(t.headers * 250, 250), 5000),
  };
  const server = opts.tls
    ? https.createServer(
        {
          ...common,
          ...opts.tls,
          handshakeTimeout: t.handshake * 1000,
          minVersion: 'TLSv1.2',
          ciphers: [...TLS13_SUITES, ...TLS12_CIPHERS].join(':'),
          honorCipherOrder: true,
        },
        listener,
      )
    : http.createServer(common, listener);
  answerClientErrors(server);
  const proxies = opts.clientAddresses;
  if (proxies?.trust?.proxyProtocol) acceptProxyProtocol(server, { trusted: (a) => proxies.trusted(a), timeoutMs: t.headers * 1000, log: opts.log });
  watchBodies(server, t.bodyIdle * 1000, opts.log);
  watchSends(server, t.sendIdle * 1000, opts.log);
  return server;
}

/**
 * Requests whose body stopped arriving while Berth was ready to read it are cut off after `idleMs`. Silence counts
 * only while the request is flowing and its buffer has room: never while a consumer paused it (storage pushing
 * back), nor once the body is complete (the client waits for a commit's answer). The watch polls the socket's byte
 * count rather than listening for 'data', which would switch the request into flowing mode before its handler reads.
 */
export function watchBodies(server: http.Server, idleMs: number, log: Logger): void {
  const watched = new Map<IncomingMessage, { res: ServerResponse; bytes: number; since: number }>();
  let timer: NodeJS.Timeout | undefined;
  const tick = () => {
    const now = Date.now();
    for (const [req, w] of watched) {
      if (req.complete || req.destroyed || w.res.writableFinished) {
        watched.delete(req);
        continue;
      }
      const bytes = req.socket?.bytesRead ?? 0;
      // Node stops reading the socket once the request's buffer is full; a pipe's pause() says the same earlier.
      // (An async iterator keeps the stream "paused" all along, so isPaused() alone would never count silence.)
      const explicitlyPaused = req.readableFlowing === false && req.listenerCount('readable') === 0;
      const waiting = explicitlyPaused || req.socket?.isPaused() || req.readableLength >= req.readableHighWaterMark;
      if (bytes !== w.bytes || waiting) {
        w.bytes = bytes;
        w.since = now;
      } else if (now - w.since >= idleMs) {
        watched.delete(req);
        log.warn({ req: w.res.getHeader('X-Request-Id'), method: req.method, url: req.url?.split('?')[0], seconds: idleMs / 1000 }, 'request body stalled; connection closed');
        // The handler sees its body fail and the response close: the core's AbortSignal fires and partial writes go.
        req.destroy(new Error('request body idle timeout'));
      }
    }
    if (watched.size === 0) {
      clearInterval(timer);
      timer = undefined;
    }
  };
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const length = req.headers['content-length'];
    const hasBody = req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
    if (!hasBody || req.complete) return;
    watched.set(req, { res, bytes: req.socket?.bytesRead ?? 0, since: Date.now() });
    timer ??= setInterval(tick, Math.min(Math.max(idleMs / 10, 100), 1000)).unref();
  });
}
