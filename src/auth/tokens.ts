/**
 * Bearer tokens as Docker clients expect them (the distribution token spec): a JWT signed with the configured
 * secret (HS256 only; `none` and every other algorithm are refused), carrying the tenant's namespace and the
 * actions granted per repository.
 */
import { SignJWT, jwtVerify } from 'jose';

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
export const TOKEN_LIFETIME_SECONDS = 300;

export class TokenIssuer {
  private readonly key: Uint8Array;

  constructor(
    secret: string,
    readonly service: string,
  ) {
    this.key = new TextEncoder().encode(secret);
  }

  async issue(claims: TokenClaims, now = Date.now()): Promise<{ token: string; expiresIn: number; issuedAt: string }> {
    const iat = Math.floor(now / 1000);
    const token = await new SignJWT({ ns: claims.ns, access: claims.access })
      .setProtectedHeader({ alg: ALGORITHM, typ: 'JWT' })
      .setIssuer(ISSUER)
      .setSubject(claims.sub)
      .setAudience(this.service)
      .setIssuedAt(iat)
      .setNotBefore(iat - 5)
      .setExpirationTime(iat + TOKEN_LIFETIME_SECONDS)
      .setJti(crypto.randomUUID())
      .sign(this.key);
    return { token, expiresIn: TOKEN_LIFETIME_SECONDS, issuedAt: new Date(iat * 1000).toISOString() };
  }

  /** The token's claims, or null if it is malformed, tampered with, expired, for another service, or not HS256. */
  async verify(token: string): Promise<TokenClaims | null> {
    try {
      const { payload } = await jwtVerify(token, this.key, { algorithms: [ALGORITHM], issuer: ISSUER, audience: this.service, requiredClaims: ['exp', 'sub'] });
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
