/**
 * Who is calling, which namespace they work in, and whether they may do what they ask.
 *
 * - No users configured: an open registry; everyone reads and writes the default namespace.
 * - Users configured: Basic credentials or a Bearer token from GET /auth/token are required. A user works in their
 *   own namespace only (one namespace per credential). Anonymous clients may read the public namespace, if one is
 *   configured and no read-only user exists.
 * - With `anonymousPull` (zuul-registry's rule, see config/startup.ts), anonymous clients read the default namespace,
 *   and a token request asking only to pull gets a read token without its credentials being looked at: the docker
 *   engine sends its Docker Hub login to a mirror, and zuul-registry ignores it.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { grants, type AccessEntry, type TokenClaims, type TokenIssuer } from '../auth/tokens.js';
import { LoginRefused, type Identity, type Users } from '../auth/users.js';
import { validName } from '../registry/paths.js';
import { clientAddressOf } from './client-address.js';
import { sendError } from './errors.js';
import type { Route } from './routes.js';

export type Principal =
  | { kind: 'open' }
  | { kind: 'anonymous' }
  | { kind: 'user'; identity: Identity }
  | { kind: 'token'; claims: TokenClaims };

type Action = 'pull' | 'push' | 'delete';
const WRITE_ACTIONS: Action[] = ['pull', 'push', 'delete'];

export interface AccessOptions {
  users: Users;
  tokens: TokenIssuer | null;
  defaultNamespace: string;
  publicNamespace?: string;
  /** Anonymous clients pull from the default namespace; pull-only token requests skip the credential check. */
  anonymousPull?: boolean;
  /** The `namespaces:` section's names; with the default one, the public one and users' ones, all a token may name. */
  namespaces?: string[];
  publicUrl?: string;
  log: Logger;
}

/**
 * A refused request: 401 with a challenge so clients fetch a token, 403 when credentials cannot help, 429 when the
 * client's address has failed to log in too often (`retryAfter` seconds).
 */
export class AuthFailure extends Error {
  constructor(
    readonly status: 401 | 403 | 429,
    message: string,
    readonly scope?: string,
    readonly insufficientScope = false,
    readonly retryAfter?: number,
  ) {
    super(message);
  }
}

export class Access {
  /** A token for any other namespace is refused, even well signed: nothing here could have issued it. */
  private readonly knownNamespaces: Set<string>;

  constructor(private readonly o: AccessOptions) {
    this.knownNamespaces = new Set([o.defaultNamespace, ...o.users.namespaces, ...(o.namespaces ?? []), ...(o.publicNamespace ? [o.publicNamespace] : [])]);
  }

  get open(): boolean {
    return !this.o.users.enabled;
  }

  get users(): Users {
    return this.o.users;
  }

  get tokens(): TokenIssuer | null {
    return this.o.tokens;
  }

  /** zuul-registry's rule (config/startup.ts): pull-only token requests are answered without a credential check. */
  get anonymousPull(): boolean {
    return Boolean(this.o.anonymousPull);
  }

  /** The namespace anonymous clients may read, if any. */
  get anonymousNamespace(): string | undefined {
    if (this.o.anonymousPull) return this.o.defaultNamespace;
    return this.o.users.hasReadOnlyUser ? undefined : this.o.publicNamespace;
  }

  /** `requestId` goes into the failed-login log line. */
  async authenticate(req: IncomingMessage, requestId?: string): Promise<Principal> {
    if (this.open) return { kind: 'open' };
    const header = req.headers.authorization;
    if (header === undefined) return { kind: 'anonymous' };
    const basic = parseBasic(header);
    if (basic) return { kind: 'user', identity: await this.login(req, basic.user, basic.password, requestId) };
    const bearer = /^Bearer ([A-Za-z0-9._~+/=-]{1,8192})$/.exec(header);
    if (bearer && this.o.tokens) {
      const claims = await this.o.tokens.verify(bearer[1]);
      if (!claims || !this.knownNamespaces.has(claims.ns)) {
        this.o.log.warn('invalid bearer token');
        throw new AuthFailure(401, 'invalid or expired token');
      }
      return { kind: 'token', claims };
    }
    throw new AuthFailure(401, 'unsupported Authorization header');
  }

  /**
   * One password check: Basic credentials, or the token endpoint's password grant. Failures are limited per client
   * address (429), and a check still waiting for a bcrypt worker is dropped when its client disconnects.
   */
  async login(req: IncomingMessage, user: string, password: string, requestId?: string): Promise<Identity> {
    const gone = new AbortController();
    const abort = () => gone.abort(new AuthFailure(401, 'client went away'));
    req.socket.once('close', abort);
    let identity: Identity | null;
    try {
      identity = await this.o.users.check(user, password, { address: clientAddressOf(req), requestId, signal: gone.signal });
    } catch (err) {
      if (err instanceof LoginRefused) throw new AuthFailure(429, err.message, undefined, false, err.retryAfter);
      throw err;
    } finally {
      req.socket.off('close', abort);
    }
    if (!identity) throw new AuthFailure(401, 'invalid username or password');
    return identity;
  }

  namespaceOf(p: Principal): string {
    switch (p.kind) {
      case 'open':
        return this.o.defaultNamespace;
      case 'user':
        return p.identity.namespace;
      case 'token':
        return p.claims.ns;
      case 'anonymous':
        return this.anonymousNamespace ?? this.o.defaultNamespace;
    }
  }

  /** May `p` do `action` on repository `name` (in its namespace)? */
  can(p: Principal, action: Action, name: string): boolean {
    switch (p.kind) {
      case 'open':
        return true;
      case 'user':
        return p.identity.access === 'write' || action === 'pull';
      case 'token':
        return grants(p.claims, 'repository', name, action);
      case 'anonymous':
        return action === 'pull' && this.anonymousNamespace !== undefined;
    }
  }

  /** Throw AuthFailure unless `p` may make this request. */
  authorize(p: Principal, route: Route, method: string): void {
    if (p.kind === 'open') return;
    if (route.kind === 'base') {
      // `docker login` and friends probe /v2/: credentials must be checked, so anonymous gets the challenge.
      if (p.kind === 'anonymous') throw new AuthFailure(401, 'authentication required');
      return;
    }
    if (route.kind === 'catalog') {
      // Credentials always: anonymous readers pull by name; listing every repository helps only an enumerator.
      // The token endpoint grants anonymous clients no catalog scope either (grant below).
      const ok = p.kind === 'token' ? grants(p.claims, 'registry', 'catalog', '*') : p.kind === 'user';
      if (!ok) throw this.refuse(p, 'registry:catalog:*');
      return;
    }
    const action = requiredAction(route, method);
    if (!this.can(p, action, route.name)) {
      throw this.refuse(p, `repository:${route.name}:${action === 'pull' ? 'pull' : `pull,${action}`}`);
    }
  }

  private refuse(p: Principal, scope: string): AuthFailure {
    if (p.kind === 'user') return new AuthFailure(403, 'requested access to the resource is denied');
    return new AuthFailure(401, 'authentication required', scope, p.kind === 'token');
  }

  /** What a token request may be granted: the asked-for scopes, cut down to what the principal may do. */
  grant(p: Principal, scopes: string[]): AccessEntry[] {
    const result: AccessEntry[] = [];
    for (const scope of scopes) {
      const m = /^repository:([^:]+):([a-z*,]+)$/.exec(scope);
      if (m && validName(m[1])) {
        const asked = m[2].split(',').flatMap((a) => (a === '*' ? WRITE_ACTIONS : [a]));
        const actions = [...new Set(asked)].filter((a): a is Action => (WRITE_ACTIONS as string[]).includes(a) && this.can(p, a as Action, m[1]));
        if (actions.length) result.push({ type: 'repository', name: m[1], actions });
      } else if (scope === 'registry:catalog:*' && p.kind !== 'anonymous') {
        result.push({ type: 'registry', name: 'catalog', actions: ['*'] });
      }
    }
    return result;
  }

  /** Send a refusal with the OCI body and, for 401, the Bearer challenge. */
  sendFailure(req: IncomingMessage, res: ServerResponse, failure: AuthFailure, head: boolean): void {
    if (failure.status === 401) {
      const service = this.o.tokens?.service ?? 'berth';
      let challenge = `Bearer realm="${this.realm(req)}",service="${service}"`;
      if (failure.scope) challenge += `,scope="${failure.scope}"`;
      if (failure.insufficientScope) challenge += ',error="insufficient_scope"';
      res.setHeader('WWW-Authenticate', challenge);
    }
    if (failure.retryAfter !== undefined) res.setHeader('Retry-After', String(failure.retryAfter));
    const code = failure.status === 401 ? 'UNAUTHORIZED' : failure.status === 429 ? 'TOOMANYREQUESTS' : 'DENIED';
    sendError(res, { status: failure.status, code, message: failure.message }, head);
  }

  private realm(req: IncomingMessage): string {
    if (this.o.publicUrl) return `${this.o.publicUrl}/auth/token`;
    // Without a configured public URL, send clients back to the host they used (sanitized: it is client input).
    const host = /^[A-Za-z0-9.\-:[\]]{1,255}$/.test(req.headers.host ?? '') ? req.headers.host : 'localhost';
    const protocol = (req.socket as TLSSocket).encrypted ? 'https' : 'http';
    return `${protocol}://${host}/auth/token`;
  }
}

function requiredAction(route: Exclude<Route, { kind: 'base' } | { kind: 'catalog' }>, method: string): Action {
  switch (route.kind) {
    case 'uploads':
    case 'upload':
      return 'push';
    case 'blob':
    case 'manifest':
      if (method === 'DELETE') return 'delete';
      return method === 'PUT' ? 'push' : 'pull';
    default:
      return 'pull';
  }
}

function parseBasic(header: string): { user: string; password: string } | null {
  const m = /^Basic ([A-Za-z0-9+/=]{1,4096})$/i.exec(header);
  if (!m) return null;
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) throw new AuthFailure(401, 'malformed Basic credentials');
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}
