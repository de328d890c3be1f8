/**
 * JWTs bound to a user's credential entry as configured when they were issued (Users.entryOf): a changed password,
 * access or namespace, or a removed user, ends them at once. Refresh tokens and the web page's sessions are both
 * such tokens, each with its own key, binding key and issuer, so neither is ever taken for the other.
 */
import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import { SignJWT, jwtVerify } from 'jose';

const ALGORITHM = 'HS256';

export class BoundTokens {
  constructor(
    private readonly key: Uint8Array,
    /** A key of its own: a binding in a token's readable payload must not help guess the password it hashes. */
    private readonly bindingKey: Buffer,
    private readonly issuer: string,
    private readonly audience: string,
  ) {}

  /** A token for `sub`, whose credential entry is now `entry`, valid `seconds`; `withId` adds a unique jti. */
  issue(sub: string, entry: string, seconds: number, now = Date.now(), withId = false): Promise<string> {
    const iat = Math.floor(now / 1000);
    const jwt = new SignJWT({ bind: this.binding(entry) })
      .setProtectedHeader({ alg: ALGORITHM, typ: 'JWT' })
      .setIssuer(this.issuer)
      .setSubject(sub)
      .setAudience(this.audience)
      .setIssuedAt(iat)
      .setExpirationTime(iat + seconds);
    return (withId ? jwt.setJti(randomUUID()) : jwt).sign(this.key);
  }

  /** The subject a token names, or null: not one of these, expired, or the subject's entry changed since. */
  async verify(token: string, entryOf: (sub: string) => string | undefined): Promise<string | null> {
    try {
      const { payload } = await jwtVerify(token, this.key, { algorithms: [ALGORITHM], issuer: this.issuer, audience: this.audience, requiredClaims: ['exp', 'sub'] });
      const entry = entryOf(payload.sub!);
      if (entry === undefined || typeof payload.bind !== 'string') return null;
      const expected = Buffer.from(this.binding(entry));
      const given = Buffer.from(payload.bind);
      return given.length === expected.length && timingSafeEqual(given, expected) ? payload.sub! : null;
    } catch {
      return null;
    }
  }

  private binding(entry: string): string {
    return createHmac('sha256', this.bindingKey).update(entry).digest('base64url');
  }
}
