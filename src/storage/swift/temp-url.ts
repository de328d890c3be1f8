/** Swift temp URLs: a GET of one object that a client may make without a token, until an expiry. */
import { createHmac } from 'node:crypto';
import type { Session } from './auth.js';
import { encodeKey } from './client.js';

/** Signed with HMAC-SHA256 over method, expiry and the decoded object path, as Swift's tempurl middleware checks. */
export function tempUrl(session: Session, container: string, key: string, secret: string, seconds: number, now = Date.now()): string {
  const base = new URL(session.storageUrl);
  const expires = Math.floor(now / 1000) + seconds;
  const path = `${decodeURIComponent(base.pathname)}/${container}/${key}`;
  const sig = createHmac('sha256', secret).update(`GET\n${expires}\n${path}`).digest('hex');
  return `${session.storageUrl}/${encodeURIComponent(container)}/${encodeKey(key)}?temp_url_sig=${sig}&temp_url_expires=${expires}`;
}
