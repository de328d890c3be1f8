/**
 * The read-only web page under /ui: a namespace's repositories, a repository's tags, an image's layers, config and
 * referrers. docs/web.md describes it for operators.
 *
 * Who sees what is decided by the API's own rules: the caller becomes the same Principal the API would make
 * (open, anonymous, or a user whose password went through Access.login, with its limiter), and each page asks
 * Access.authorize about the API request it mirrors (the catalog, a tags list, a manifest GET). The namespace is
 * the principal's: no URL names one, so no other tenant's image can be asked for.
 *
 * The session cookie (session.ts) is read here only, on GET and HEAD: the API reads no cookie, so it is no second
 * way in, and the one request that changes anything (the sign-in POST) carries none that matters and is checked
 * for a same-origin Origin besides SameSite.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { RegistryError } from '../registry/errors.js';
import { validDigest, validName, validTag } from '../registry/paths.js';
import type { Registry } from '../registry/registry.js';
import { type Access, AuthFailure, type Principal } from '../http/auth.js';
import { type Exchange, recordPrincipal } from '../http/exchange.js';
import type { Route } from '../http/routes.js';
import { type Html, ICON, STYLE, layout } from './html.js';
import { ImageReader, TAGS_PER_PAGE } from './images.js';
import { Sessions, sessionCookie, setCookie } from './session.js';
import { type PullTarget, errorPage, imagePage, repositoriesPage, signInPage, tagsPage } from './views.js';

export interface WebOptions {
  /** registry.secret: signs session cookies. Without it only an open registry or anonymous pulls can be browsed. */
  secret?: string;
  /** The deployment's token audience (config/startup.ts tokenAudience), so sessions of another one are refused. */
  audience: string;
  /** registry.public-url: its host goes into pull commands and its origin is accepted on sign-in. */
  publicUrl?: string;
  /** Whether Berth itself serves TLS (the cookie is then Secure, as it is with an https public URL). */
  tls: boolean;
  /** Seconds after which prune expires a namespace's tags (its override, else registry.expiration). */
  expirationOf(ns: string): number | undefined;
}

export const WEB_PREFIX = /^\/ui(\/|$)/;

const CSP = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const MAX_FORM_BYTES = 4096;

type Page = { kind: 'repositories' } | { kind: 'tags'; repo: string } | { kind: 'image'; repo: string; reference: string };

export function webPages(registry: Registry, access: Access, opts: WebOptions, log: Logger): (req: IncomingMessage, res: ServerResponse, exchange: Exchange, path: string) => void {
  const sessions = opts.secret ? new Sessions(opts.secret, opts.audience) : undefined;
  const images = new ImageReader(registry);
  const secureCookie = opts.tls || Boolean(opts.publicUrl?.startsWith('https:'));
  const publicOrigin = opts.publicUrl ? new URL(opts.publicUrl).origin : undefined;

  /** The caller as the API would see them: the session names a user whose entry is unchanged, or nobody. */
  async function principal(req: IncomingMessage): Promise<Principal> {
    if (access.open) return { kind: 'open' };
    const token = sessionCookie(req.headers.cookie);
    const user = token && sessions ? await sessions.verify(token, (name) => access.users.entryOf(name)) : null;
    const identity = user === null ? undefined : access.users.identityOf(user);
    return identity ? { kind: 'user', identity } : { kind: 'anonymous' };
  }

  function pullTarget(req: IncomingMessage): PullTarget {
    if (opts.publicUrl) {
      const u = new URL(opts.publicUrl);
      return { host: u.host, insecure: u.protocol === 'http:' };
    }
    return { host: requestHost(req) ?? 'localhost', insecure: !opts.tls };
  }

  /** A same-origin POST: the browser's Origin is this page's (public URL or the Host it asked for). */
  function sameOrigin(req: IncomingMessage): boolean {
    const origin = req.headers.origin;
    const site = req.headers['sec-fetch-site'];
    if (site !== undefined && site !== 'same-origin') return false;
    if (typeof origin !== 'string' || origin === 'null') return false;
    if (publicOrigin !== undefined && origin === publicOrigin) return true;
    let host: string;
    try {
      host = new URL(origin).host;
    } catch {
      return false;
    }
    return host === requestHost(req);
  }

  async function signIn(req: IncomingMessage, res: ServerResponse, exchange: Exchange): Promise<void> {
    if (!sameOrigin(req)) return send(res, 403, 'Refused', signInPage({ error: 'Sign-in must come from this page (cross-origin request refused).', anonymous: false }));
    if (access.open) return redirect(res, '/ui/');
    if (!sessions) return send(res, 503, 'Sign in', signInPage({ error: 'Signing in needs registry.secret to be configured.', anonymous: false }));
    const form = await readForm(req);
    if (!form) return send(res, 400, 'Sign in', signInPage({ error: 'Malformed sign-in form.', anonymous: access.anonymousNamespace !== undefined }));
    const user = form.get('username') ?? '';
    const anonymous = access.anonymousNamespace !== undefined;
    try {
      // The token endpoint's password check: the same limiter, cache and constant-work comparison.
      const identity = await access.login(req, user, form.get('password') ?? '', exchange.id);
      const entry = access.users.entryOf(identity.name);
      if (entry === undefined) throw new AuthFailure(401, 'invalid username or password');
      recordPrincipal(exchange, { kind: 'user', identity }, identity.namespace);
      res.setHeader('Set-Cookie', setCookie(await sessions.issue(identity.name, entry), secureCookie));
      return redirect(res, '/ui/');
    } catch (err) {
      if (!(err instanceof AuthFailure)) throw err;
      if (err.status === 429) {
        if (err.retryAfter !== undefined) res.setHeader('Retry-After', String(err.retryAfter));
        return send(res, 429, 'Sign in', signInPage({ error: `Too many failed sign-ins from your address; try again in ${err.retryAfter ?? 60} s.`, user, anonymous }));
      }
      return send(res, 401, 'Sign in', signInPage({ error: 'Invalid user name or password.', user, anonymous }));
    }
  }

  async function show(req: IncomingMessage, res: ServerResponse, exchange: Exchange, page: Page, query: URLSearchParams): Promise<void> {
    const p = await principal(req);
    const ns = access.namespaceOf(p);
    recordPrincipal(exchange, p, ns);
    const chrome = { who: p.kind === 'user' ? `${p.identity.name} · ${ns}` : p.kind === 'anonymous' ? `anonymous · ${ns}` : ns, signOut: p.kind === 'user' };
    try {
      // The API request each page mirrors, decided by the API's own function.
      access.authorize(p, apiRoute(page), 'GET');
    } catch (err) {
      if (!(err instanceof AuthFailure)) throw err;
      if (p.kind !== 'user') return redirect(res, '/ui/signin');
      return send(res, 403, 'Not allowed', errorPage('Not allowed', 'Your credentials do not allow reading this.'), chrome);
    }
    if (page.kind === 'repositories') return send(res, 200, ns, repositoriesPage(ns, await images.repositories(ns)), chrome);
    if (page.kind === 'tags') {
      const stored = images.prefetch(ns, page.repo);
      const all = await images.tags(ns, page.repo);
      if (all.length === 0 && !(await registry.manifests.repositoryExists(ns, page.repo))) return notFound(res, chrome);
      const pages = Math.max(1, Math.ceil(all.length / TAGS_PER_PAGE));
      const n = /^[1-9][0-9]{0,5}$/.test(query.get('page') ?? '') ? Math.min(Number(query.get('page')), pages) : 1;
      const rows = await images.summarize(ns, page.repo, all.slice((n - 1) * TAGS_PER_PAGE, n * TAGS_PER_PAGE), stored);
      const body = tagsPage({ ns, repo: page.repo, rows, page: n, pages, total: all.length, expiration: opts.expirationOf(ns), now: new Date() });
      return send(res, 200, page.repo, body, chrome);
    }
    const image = await images.image(ns, page.repo, page.reference);
    return send(res, 200, `${page.repo} ${page.reference}`, imagePage({ ns, repo: page.repo, reference: page.reference, image, pull: pullTarget(req) }), chrome);
  }

  return (req, res, exchange, path) => {
    exchange.route = 'web';
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) res.setHeader(k, v);
    const method = req.method ?? '';
    const query = new URLSearchParams((req.url ?? '').split('?')[1] ?? '');
    const rest = path.replace(/^\/ui\/?/, '');
    const done = (err: unknown) => {
      if (err instanceof RegistryError && ['MANIFEST_UNKNOWN', 'NAME_UNKNOWN', 'NAME_INVALID'].includes(err.code)) return notFound(res);
      log.error({ req: exchange.id, err }, 'web page failed');
      if (!res.headersSent) send(res, 500, 'Error', errorPage('Something went wrong', `The page could not be made; the server log has request ${exchange.id}.`));
      else res.destroy();
    };
    if (rest === 'signin' && method === 'POST') return void signIn(req, res, exchange).catch(done);
    if (method !== 'GET' && method !== 'HEAD') {
      res.setHeader('Allow', rest === 'signin' ? 'GET, HEAD, POST' : 'GET, HEAD');
      return send(res, 405, 'Method not allowed', errorPage('Method not allowed', 'This page is read-only.'));
    }
    if (Object.hasOwn(STATIC, rest)) return sendStatic(res, STATIC[rest], method === 'HEAD');
    if (rest === 'signin') return send(res, 200, 'Sign in', signInPage({ anonymous: access.anonymousNamespace !== undefined }));
    if (rest === 'signout') {
      res.setHeader('Set-Cookie', setCookie(undefined, secureCookie));
      return redirect(res, '/ui/signin');
    }
    // The sign-in page's "open by name" form: anonymous visitors cannot list repositories (the API's catalog needs
    // credentials), but may open one they know, as they may pull it.
    if (rest === 'repo' && validName(query.get('name') ?? '')) return redirect(res, `/ui/repo/${query.get('name')}`);
    const page = parsePage(rest);
    if (!page) return notFound(res);
    show(req, res, exchange, page, query).catch(done);
  };
}

const SECURITY_HEADERS: Record<string, string> = {
  'Content-Security-Policy': CSP,
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Resource-Policy': 'same-origin',
  'Cache-Control': 'no-store',
};

/** "", "repo/NAME", "repo/NAME/-/manifest/REF" (a name's components never are "-", so the marker is unambiguous). */
export function parsePage(rest: string): Page | null {
  if (rest === '') return { kind: 'repositories' };
  let segments: string[];
  try {
    segments = rest.split('/').map(decodeURIComponent);
  } catch {
    return null;
  }
  if (segments[0] !== 'repo' || segments.some((s) => s.includes('/'))) return null;
  const marker = segments.indexOf('-');
  const name = segments.slice(1, marker < 0 ? undefined : marker).join('/');
  if (!validName(name)) return null;
  if (marker < 0) return { kind: 'tags', repo: name };
  const [what, reference, ...extra] = segments.slice(marker + 1);
  if (what !== 'manifest' || extra.length > 0 || reference === undefined || !(validTag(reference) || validDigest(reference))) return null;
  return { kind: 'image', repo: name, reference };
}

function apiRoute(page: Page): Route {
  if (page.kind === 'repositories') return { kind: 'catalog' };
  if (page.kind === 'tags') return { kind: 'tags', name: page.repo };
  return { kind: 'manifest', name: page.repo, reference: page.reference };
}

function requestHost(req: IncomingMessage): string | undefined {
  const host = req.headers.host;
  return host !== undefined && /^[A-Za-z0-9.\-:[\]]{1,255}$/.test(host) ? host : undefined;
}

/** The sign-in form, or null when it is not a small urlencoded form. */
async function readForm(req: IncomingMessage): Promise<URLSearchParams | null> {
  if (!/^application\/x-www-form-urlencoded(;|$)/i.test(req.headers['content-type'] ?? '')) return null;
  if (Number(req.headers['content-length'] ?? 0) > MAX_FORM_BYTES) return null;
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_FORM_BYTES) return null;
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res: ServerResponse, status: number, title: string, body: Html, chrome: { who?: string; signOut?: boolean } = {}): void {
  const text = Buffer.from(layout(title, body, chrome));
  // With no-referrer, browsers send "Origin: null" on the form's POST, which the Origin check must refuse; the
  // page holding the form has no link elsewhere, so same-origin gives nothing away.
  if (text.includes(FORM_MARK)) res.setHeader('Referrer-Policy', 'same-origin');
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Content-Length', text.length);
  res.end(res.req?.method === 'HEAD' ? undefined : text);
}

function notFound(res: ServerResponse, chrome: { who?: string; signOut?: boolean } = {}): void {
  send(res, 404, 'Not found', errorPage('Not found', 'There is no such repository, tag or manifest here.'), chrome);
}

function redirect(res: ServerResponse, location: string): void {
  res.statusCode = 303;
  res.setHeader('Location', location);
  res.setHeader('Content-Length', 0);
  res.end();
}

const FORM_MARK = '<form method="post" action="/ui/signin">';
const STATIC: Record<string, { type: string; bytes: Buffer }> = {
  'style.css': { type: 'text/css; charset=utf-8', bytes: Buffer.from(STYLE) },
  'icon.svg': { type: 'image/svg+xml', bytes: Buffer.from(ICON) },
};

function sendStatic(res: ServerResponse, file: { type: string; bytes: Buffer }, head: boolean): void {
  res.statusCode = 200;
  res.setHeader('Content-Type', file.type);
  res.setHeader('Cache-Control', 'max-age=3600');
  res.setHeader('Content-Length', file.bytes.length);
  res.end(head ? undefined : file.bytes);
}
