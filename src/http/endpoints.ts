/** Health, readiness, metrics and the token endpoint: outside /v2, without registry auth. */
import express from 'express';
import type { Logger } from 'pino';
import type { Registry } from '../registry/registry.js';
import type { Metrics } from '../observability/metrics.js';
import type { Access } from './auth.js';
import { sendError, toErrorBody } from './errors.js';
import { requestIdOf, setRoute as route } from './exchange.js';
import { tokenRoutes } from './token-endpoint.js';

export function otherEndpoints(registry: Registry, access: Access, opts: { log: Logger; metrics?: Metrics }): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  const metrics = opts.metrics;
  app.get('/healthz', (_req, res) => {
    route(res, 'healthz');
    res.json({ status: 'ok' });
  });
  app.get('/readyz', (_req, res) => {
    route(res, 'readyz');
    // Ready means storage can store (its root or container is there and takes our credentials), not just answers.
    const driver = registry.driver;
    driver.ready().then(
      () => res.json({ status: 'ready', storage: driver.name }),
      (err: Error) => {
        opts.log.warn({ req: requestIdOf(res), err: err.message }, 'storage not ready');
        res.status(503).json({ status: 'unavailable', storage: driver.name });
      },
    );
  });
  if (metrics) {
    app.get('/metrics', (_req, res) => {
      route(res, 'metrics');
      metrics.render().then(
        (text) => {
          res.setHeader('Content-Type', metrics.contentType);
          res.end(text);
        },
        (err: Error) => {
          opts.log.error({ req: requestIdOf(res), err }, 'metrics collection failed');
          sendError(res, toErrorBody(err));
        },
      );
    });
  }
  tokenRoutes(app, access, opts.log);
  // Every other path: clients parse the API's error envelope, not Express's HTML page. The code is the one an
  // unknown path under /v2 gets.
  app.use((req, res) => {
    res.setHeader('Docker-Distribution-API-Version', 'registry/2.0');
    sendError(res, { status: 404, code: 'NAME_UNKNOWN', message: 'no such endpoint' }, req.method === 'HEAD');
  });
  return app;
}
