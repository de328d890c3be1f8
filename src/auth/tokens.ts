/**
 * Bearer tokens as Docker clients expect them (the distribution token spec): a JWT signed with the configured
 * secret (HS256 only; `none` and every other algorithm are refused), carrying the tenant's namespace and the
 * actions granted per repository.
 *
 * Refresh tokens (the spec's offline tokens, which docker keeps in config.json as a long-lived credential) are
 * JWTs of another issuer, bound to the user's credential entry as it was when they were issued: a keyed hash of
 * the password entry, access and namespace, so that a password change, a removal or a change of access ends them.
 */
import { createHmac } from 'node:crypto';
import { SignJWT, jwtVerify } from 'jose';
import { BoundTokens } from './bound-token.js';

export type Action = 'pull' | 'push' | 'delete' | '*';

export interface AccessEntry {
  type: 'repository' | 'registry';
  name: string;
  actions: string[];
}

export interface TokenClaims {
  /** User name; "" for anonymous. */
  sub: string;
  ns: string;
  access: AccessEntry[];
}

const ALGORITHM = 'HS256';
const ISSUER = 'berth';
const REFRESH_ISSUER = 'berth-refresh';
export const TOKEN_LIFETIME_SECONDS = 300;
export const REFRESH_LIFETIME_SECONDS = 86_400;

export interface TokenOptions {
  /** The `aud` claim, unique to the deployment (config/startup.ts tokenAudience); default: the service name. */
  audience?: string;
  /** Seconds a refresh token stays valid. */
  refreshSeconds?: number;
}

export class TokenIssuer {
  private readonly key: Uint8Array;
  private readonly refresh: BoundTokens;
  readonly refreshSeconds: number;
  readonly audience: string;

  constructor(
    secret: string,
    readonly service: string,
    opts: TokenOptions = {},
  ) {
    this.key = new TextEncoder().encode(secret);
    this.refreshSeconds = opts.refreshSeconds ?? REFRESH_LIFETIME_SECONDS;
    this.audience = opts.audience ?? service;
    const bindingKey = createHmac('sha256', secret).update('berth refresh-token binding').digest();
    this.refresh = new BoundTokens(this.key, bindingKey, REFRESH_ISSUER, this.audience);
  }

  /** A refresh token for `sub`, bound to `entry` (Users.current's description of their credential). */
  issueRefresh(sub: string, entry: string, now = Date.now()): Promise<string> {
    return this.refresh.issue(sub, entry, this.refreshSeconds, now, true);
  }

  /** The user a refresh token names, or null if it is not one of ours, expired, or `entryOf` no longer matches. */
  verifyRefresh(token: string, entryOf: (sub: string) => string | undefined): Promise<string | null> {
    return this.refresh.verify(token, entryOf);
  }

  async issue(claims: TokenClaims, now = Date.now()): Promise<{ token: string; expiresIn: number; issuedAt: string }> {
    const iat = Math.floor(now / 1000);
    const token = await new SignJWT({ ns: claims.ns, access: claims.access })
      .setProtectedHeader({ alg: ALGORITHM, typ: 'JWT' })
      .setIssuer(ISSUER)
      .setSubject(claims.sub)
      .setAudience(this.audience)
      .setIssuedAt(iat)
      .setNotBefore(iat - 5)
      .setExpirationTime(iat + TOKEN_LIFETIME_SECONDS)
      .setJti(crypto.randomUUID())
      .sign(this.key);
    return { token, expiresIn: TOKEN_LIFETIME_SECONDS, issuedAt: new Date(iat * 1000).toISOString() };
  }

  /** The token's claims, or null if it is malformed, tampered with, expired, for another audience, or not HS256. */
  async verify(token: string): Promise<TokenClaims | null> {
    try {
      const { payload } = await jwtVerify(token, this.key, { algorithms: [ALGORITHM], issuer: ISSUER, audience: this.audience, requiredClaims: ['exp', 'sub'] });
      if (typeof payload.ns !== 'string' || !Array.isArray(payload.access)) return null;
      return { sub: payload.sub!, ns: payload.ns, access: payload.access as AccessEntry[] };
    } catch {
      return null;
    }
  }
}

/** Does `claims` grant `action` on repository `name` (or on the catalog)? */
export function grants(claims: TokenClaims, type: AccessEntry['type'], name: string, action: string): boolean {
  return claims.access.some(
    (a) => a.type === type && a.name === name && Array.isArray(a.actions) && (a.actions.includes(action) || a.actions.includes('*')),
  );
}
