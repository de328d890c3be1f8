/** What the access log, metrics and error paths know of one request, and the access log line itself. */
import type { IncomingMessage as Request, ServerResponse as Response } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.js';
import type { Principal } from './auth.js';
import { clientAddressOf } from './client-address.js';

export interface Exchange {
  id: string;
  /** The route kind for metrics ("other" until one is known). */
  route: string;
  /** Who made the request, once authenticated: a user's or token subject's name (never a credential). */
  user?: string;
  /** The namespace the request worked in, once authenticated. */
  ns?: string;
}

export const exchanges = new WeakMap<Response, Exchange>();
export const requestIdOf = (res: Response) => exchanges.get(res)?.id;

export function setRoute(res: Response, name: string): void {
  const exchange = exchanges.get(res);
  if (exchange) exchange.route = name;
}

/** Record who is asking, for the access log. */
export function recordPrincipal(exchange: Exchange, principal: Principal, ns: string): void {
  exchange.ns = ns;
  if (principal.kind === 'user') exchange.user = principal.identity.name;
  else if (principal.kind === 'token' && principal.claims.sub) exchange.user = principal.claims.sub;
}

/** One access log line (and the request's metrics) when the response has been sent. */
export function logWhenFinished(req: Request, res: Response, exchange: Exchange, path: string, log: Logger, metrics?: Metrics): void {
  const started = process.hrtime.bigint();
  // Captured now: by 'finish' the response may already be detached from its socket.
  const socket = req.socket;
  res.on('finish', () => {
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const { id, user, ns } = exchange;
    log.info({ req: id, client: clientAddressOf(req), method: req.method, path, status: res.statusCode, ms: Math.round(seconds * 1e4) / 10, user, ns }, 'request');
    if (metrics) {
      metrics.requests.inc({ route: exchange.route, method: req.method, status: res.statusCode });
      metrics.requestSeconds.observe({ route: exchange.route, method: req.method }, seconds);
      countSocketBytes(metrics, socket);
    }
  });
}

/** What each connection had already counted: bytes are added per connection, so none is missed or counted twice. */
const counted = new WeakMap<Socket, { read: number; written: number }>();
function countSocketBytes(metrics: Metrics, socket: Socket): void {
  const before = counted.get(socket) ?? { read: 0, written: 0 };
  metrics.bytesIn.inc(socket.bytesRead - before.read);
  metrics.bytesOut.inc(socket.bytesWritten - before.written);
  counted.set(socket, { read: socket.bytesRead, written: socket.bytesWritten });
}
