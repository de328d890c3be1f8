/**
 * /auth/token, as Docker's token spec describes it: GET with Basic credentials, and POST with the OAuth2 form
 * (`grant_type=password` or `grant_type=refresh_token`), which containerd tries first and docker uses once it holds
 * a refresh token. Both answer `{token, access_token, expires_in, issued_at}`, plus `refresh_token` when the client
 * asks for an offline token (GET `offline_token=true`, POST `access_type=offline`) and its password was checked.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import express from 'express';
import type { Logger } from 'pino';
import { type Access, AuthFailure, type Principal } from './auth.js';
import { sendError, toErrorBody } from './errors.js';
import { requestIdOf } from './exchange.js';

type Grant = { kind: 'header' } | { kind: 'password'; username: string; password: string } | { kind: 'refresh'; token: string };

interface TokenRequest {
  grant: Grant;
  scopes: string[];
  service?: string;
  offline: boolean;
}

/** Mount GET and POST /auth/token on `app`. */
export function tokenRoutes(app: express.Express, access: Access, log: Logger): void {
  const answer = (req: IncomingMessage, res: ServerResponse, parse: () => TokenRequest | string) => {
    let parsed: TokenRequest | string;
    try {
      parsed = parse();
    } catch (err) {
      if (!(err instanceof Repeated)) throw err;
      parsed = err.message;
    }
    if (typeof parsed === 'string') return sendError(res, { status: 400, code: 'UNSUPPORTED', message: parsed });
    respond(access, req, res, parsed, requestIdOf(res)).catch((err) => {
      log.error({ req: requestIdOf(res), err }, 'token request failed');
      sendError(res, toErrorBody(err));
    });
  };
  app.get('/auth/token', (req, res) =>
    answer(req, res, () => {
      const query = req.query as Record<string, unknown>;
      return { grant: { kind: 'header' }, scopes: scopesOf(query.scope), service: single(query, 'service'), offline: single(query, 'offline_token') === 'true' };
    }),
  );
  // A small form: scopes for a few repositories, never megabytes.
  const form = express.urlencoded({ extended: false, limit: '16kb', parameterLimit: 64 });
  app.post('/auth/token', form, (req, res) => answer(req, res, () => fromForm(req.is('application/x-www-form-urlencoded') ? (req.body as Record<string, unknown>) : undefined)));
  app.use('/auth/token', (err: { status?: number; type?: string }, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
    const tooLarge = err.status === 413;
    sendError(res, { status: tooLarge ? 413 : 400, code: tooLarge ? 'SIZE_INVALID' : 'UNSUPPORTED', message: tooLarge ? 'token request form too large' : 'malformed token request form' });
  });
}

function fromForm(body: Record<string, unknown> | undefined): TokenRequest | string {
  if (!body) return 'POST /auth/token takes an application/x-www-form-urlencoded form';
  const field = (name: string) => single(body, name);
  const common = { scopes: scopesOf(body.scope), service: field('service'), offline: field('access_type') === 'offline' };
  const grantType = field('grant_type');
  if (grantType === 'password') {
    const username = field('username');
    const password = field('password');
    if (!username || password === undefined) return 'grant_type=password needs username and password';
    return { ...common, grant: { kind: 'password', username, password } };
  }
  if (grantType === 'refresh_token') {
    const token = field('refresh_token');
    if (!token) return 'grant_type=refresh_token needs refresh_token';
    return { ...common, grant: { kind: 'refresh', token } };
  }
  return 'grant_type must be password or refresh_token';
}

async function respond(access: Access, req: IncomingMessage, res: ServerResponse, r: TokenRequest, requestId?: string): Promise<void> {
  const tokens = access.tokens;
  if (!tokens || access.open) return sendError(res, { status: 404, code: 'UNSUPPORTED', message: 'this registry does not use token authentication' });
  if (r.service !== undefined && r.service !== tokens.service) {
    return sendError(res, { status: 400, code: 'UNSUPPORTED', message: 'unknown service', detail: { service: tokens.service } });
  }
  let p: Principal;
  try {
    // zuul-registry's rule: the credentials are not even looked at (no password check to pay for, no failed login).
    const pullOnly = r.scopes.length > 0 && r.scopes.every((s) => /^repository:[^:]+:pull$/.test(s));
    p = access.anonymousPull && pullOnly ? { kind: 'anonymous' } : await principalOf(access, req, r.grant, requestId);
  } catch (err) {
    if (!(err instanceof AuthFailure)) throw err;
    if (err.status === 429) return access.sendFailure(req, res, err, false);
    return refuse(res, err.message, r.scopes);
  }
  if (p.kind === 'token') return sendError(res, { status: 400, code: 'UNSUPPORTED', message: 'use Basic credentials to get a token' });
  if (p.kind === 'anonymous' && access.anonymousNamespace === undefined) return refuse(res, 'authentication required', r.scopes);
  const issued = await tokens.issue({ sub: p.kind === 'user' ? p.identity.name : '', ns: access.namespaceOf(p), access: access.grant(p, r.scopes) });
  const body: Record<string, unknown> = { token: issued.token, access_token: issued.token, expires_in: issued.expiresIn, issued_at: issued.issuedAt };
  // Only after a password check: a refresh token must not outlive or extend what it was made from.
  if (r.offline && p.kind === 'user' && r.grant.kind !== 'refresh') {
    const entry = access.users.entryOf(p.identity.name);
    if (entry !== undefined) body.refresh_token = await tokens.issueRefresh(p.identity.name, entry);
  }
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('Content-Type', 'application/json');
  res.end(JSON.stringify(body));
}

async function principalOf(access: Access, req: IncomingMessage, grant: Grant, requestId?: string): Promise<Principal> {
  switch (grant.kind) {
    case 'header':
      return access.authenticate(req, requestId);
    case 'password':
      return { kind: 'user', identity: await access.login(req, grant.username, grant.password, requestId) };
    case 'refresh': {
      // Each refresh re-checks the user as configured now: removed, another password or another access ends it.
      const sub = await access.tokens!.verifyRefresh(grant.token, (name) => access.users.entryOf(name));
      const identity = sub === null ? undefined : access.users.identityOf(sub);
      if (!identity) throw new AuthFailure(401, 'refresh token is invalid, expired, or no longer matches the user; log in again');
      return { kind: 'user', identity };
    }
  }
}

/**
 * 401 with a `detail`: docker decodes an error whose message is the code's standard text and has no detail as a
 * bare error code, which its push does not recognise as an authentication failure and retries for 50 s.
 */
function refuse(res: ServerResponse, message: string, scopes: string[]): void {
  res.setHeader('WWW-Authenticate', 'Basic realm="berth"');
  sendError(res, { status: 401, code: 'UNAUTHORIZED', message, detail: { scope: scopes.join(' ') } });
}

/** A parameter given more than once where one value is meant: which one wins is refused, not guessed. */
class Repeated extends Error {}

/** The one value of a parameter that is not a list (all but scope): a repeat is refused (400). */
function single(params: Record<string, unknown>, name: string): string | undefined {
  const v = params[name];
  if (Array.isArray(v)) throw new Repeated(`parameter ${name} given more than once`);
  return typeof v === 'string' ? v : undefined;
}

/** Scopes from repeated parameters, each possibly several separated by spaces (both forms are in use). */
function scopesOf(raw: unknown): string[] {
  return (Array.isArray(raw) ? raw : raw === undefined ? [] : [raw]).filter((s): s is string => typeof s === 'string').flatMap((s) => s.split(' ')).filter(Boolean);
}
