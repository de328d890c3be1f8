/**
 * The web page's session: a short-lived JWT in an HttpOnly, SameSite=Strict cookie scoped to /ui.
 *
 * It is signed with a key derived from the server's secret for this use only and carries an issuer of its own,
 * so it is no Bearer token: the API (which reads no cookie anyway) refuses it if it is sent as one. Like a refresh
 * token it is bound to the user's credential entry as configured now (Users.entryOf): a changed password, access
 * or namespace, or a removed user, ends it at once. It names only the user; the namespace and what they may read
 * are decided on every request by the API's own Access rules.
 */
import { createHmac } from 'node:crypto';
import { BoundTokens } from '../auth/bound-token.js';

export const COOKIE_NAME = 'berth_ui';
export const COOKIE_PATH = '/ui';
/** Half an hour: long enough to look around, short enough that a forgotten browser tab does not stay signed in. */
export const SESSION_SECONDS = 1800;
const ISSUER = 'berth-web';

export class Sessions {
  private readonly tokens: BoundTokens;

  constructor(
    secret: string,
    audience: string,
    readonly seconds = SESSION_SECONDS,
  ) {
    const key = createHmac('sha256', secret).update('berth web session').digest();
    const bindingKey = createHmac('sha256', secret).update('berth web session binding').digest();
    this.tokens = new BoundTokens(key, bindingKey, ISSUER, audience);
  }

  /** A session for `user`, whose credential entry is now `entry`. */
  issue(user: string, entry: string, now = Date.now()): Promise<string> {
    return this.tokens.issue(user, entry, this.seconds, now);
  }

  /** The user a session names, or null: not ours, expired, or the user's entry changed since it was issued. */
  verify(token: string, entryOf: (user: string) => string | undefined): Promise<string | null> {
    return this.tokens.verify(token, entryOf);
  }
}

/** The session cookie's value from a Cookie header, if it is there and has the shape of a JWT. */
export function sessionCookie(header: string | undefined): string | undefined {
  if (!header || header.length > 16384) return undefined;
  for (const part of header.split(';')) {
    const at = part.indexOf('=');
    if (at > 0 && part.slice(0, at).trim() === COOKIE_NAME) {
      const value = part.slice(at + 1).trim();
      return /^[A-Za-z0-9_-]{1,2048}\.[A-Za-z0-9_-]{1,4096}\.[A-Za-z0-9_-]{1,512}$/.test(value) ? value : undefined;
    }
  }
  return undefined;
}

/** Set-Cookie for a session (`value`), or one that removes it (undefined). */
export function setCookie(value: string | undefined, secure: boolean, seconds = SESSION_SECONDS): string {
  const attributes = [`Path=${COOKIE_PATH}`, 'HttpOnly', 'SameSite=Strict', `Max-Age=${value === undefined ? 0 : seconds}`];
  if (secure) attributes.push('Secure');
  return `${COOKIE_NAME}=${value ?? ''}; ${attributes.join('; ')}`;
}
