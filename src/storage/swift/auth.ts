/**
 * Logging in to Swift: tempauth v1 (`GET /auth/v1.0`) or Keystone v3 (`POST /v3/auth/tokens`, object-store
 * endpoint from the catalog). The result is a token, the storage URL and when the token expires. Nothing here
 * logs or puts a secret into an error message.
 */
import type { Agent } from 'node:http';
import fetch from 'node-fetch';
import type { CloudAuth } from './clouds.js';

export interface Session {
  token: string;
  storageUrl: string;
  /** Epoch ms after which the token must not be used. */
  expiresAt: number;
}

export class AuthError extends Error {
  constructor(
    message: string,
    /** True when trying again later may help (network, 5xx); false for refused credentials. */
    readonly retryable: boolean,
  ) {
    super(message);
    this.name = 'AuthError';
  }
}

/** Without an expiry from the server, assume tokens last an hour (tempauth's and Keystone's default). */
const DEFAULT_TOKEN_LIFE_MS = 3600_000;

export async function login(auth: CloudAuth, agent?: (url: URL) => Agent): Promise<Session> {
  try {
    return auth.type === 'v1password' ? await loginV1(auth, agent) : await loginV3(auth, agent);
  } catch (err) {
    if (err instanceof AuthError) throw err;
    throw new AuthError(`cannot reach the auth service at ${auth.authUrl}: ${(err as Error).message}`, true);
  }
}

async function loginV1(auth: Extract<CloudAuth, { type: 'v1password' }>, agent?: (url: URL) => Agent): Promise<Session> {
  const res = await fetch(auth.authUrl, {
    headers: { 'X-Auth-User': auth.username, 'X-Auth-Key': auth.password },
    agent,
    signal: AbortSignal.timeout(30_000),
  });
  await res.arrayBuffer();
  if (res.status === 401 || res.status === 403) throw new AuthError(`Swift tempauth refused user ${auth.username} (${res.status})`, false);
  if (!res.ok) throw new AuthError(`Swift tempauth answered ${res.status}`, res.status >= 500);
  const token = res.headers.get('x-auth-token') ?? res.headers.get('x-storage-token');
  const storageUrl = res.headers.get('x-storage-url');
  if (!token || !storageUrl) throw new AuthError('Swift tempauth answered without X-Auth-Token or X-Storage-Url', false);
  const left = Number(res.headers.get('x-auth-token-expires'));
  return { token, storageUrl, expiresAt: Date.now() + (Number.isFinite(left) && left > 0 ? left * 1000 : DEFAULT_TOKEN_LIFE_MS) };
}

type V3Auth = Exclude<CloudAuth, { type: 'v1password' }>;

/** Keystone's identity URL with `/v3`, whether or not clouds.yaml wrote it (version discovery, simplified). */
export function v3Url(authUrl: string): string {
  const base = authUrl.replace(/\/+$/, '');
  return /\/v3$/.test(base) ? base : `${base}/v3`;
}

function domain(name?: string, id?: string): { name?: string; id?: string } | undefined {
  if (id) return { id };
  if (name) return { name };
  return undefined;
}

export function v3Request(auth: V3Auth): unknown {
  const user = (name?: string, id?: string, dName?: string, dId?: string) =>
    id ? { id } : name ? { name, domain: domain(dName, dId) ?? { id: 'default' } } : undefined;
  if (auth.type === 'v3applicationcredential') {
    // Application credentials carry their own scope; Keystone refuses one in the request.
    const credential = auth.id
      ? { id: auth.id, secret: auth.secret }
      : { name: auth.name, secret: auth.secret, user: user(auth.username, auth.userId, auth.userDomainName, auth.userDomainId) };
    return { auth: { identity: { methods: ['application_credential'], application_credential: credential } } };
  }
  const scope = auth.projectId
    ? { project: { id: auth.projectId } }
    : auth.projectName
      ? { project: { name: auth.projectName, domain: domain(auth.projectDomainName, auth.projectDomainId) ?? { id: 'default' } } }
      : undefined;
  return {
    auth: {
      identity: {
        methods: ['password'],
        password: { user: { ...user(auth.username, auth.userId, auth.userDomainName, auth.userDomainId), password: auth.password } },
      },
      ...(scope ? { scope } : {}),
    },
  };
}

interface CatalogEntry {
  type: string;
  endpoints: { interface: string; region?: string; region_id?: string; url: string }[];
}

export function objectStoreEndpoint(catalog: CatalogEntry[] | undefined, iface: string, region?: string): string | undefined {
  const service = catalog?.find((s) => s.type === 'object-store');
  const endpoint = service?.endpoints.find(
    (e) => e.interface === iface && (region === undefined || e.region_id === region || e.region === region),
  );
  return endpoint?.url;
}

async function loginV3(auth: V3Auth, agent?: (url: URL) => Agent): Promise<Session> {
  const url = `${v3Url(auth.authUrl)}/auth/tokens`;
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify(v3Request(auth)),
    agent,
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  if (res.status === 401 || res.status === 403) throw new AuthError(`Keystone refused the credentials (${res.status})`, false);
  if (res.status !== 201 && res.status !== 200) throw new AuthError(`Keystone answered ${res.status} at ${url}`, res.status >= 500);
  const token = res.headers.get('x-subject-token');
  if (!token) throw new AuthError('Keystone answered without X-Subject-Token', false);
  let body: { token?: { expires_at?: string; catalog?: CatalogEntry[] } };
  try {
    body = JSON.parse(text);
  } catch {
    throw new AuthError('Keystone answered with a body that is not JSON', false);
  }
  const storageUrl = objectStoreEndpoint(body.token?.catalog, auth.interface, auth.regionName);
  if (!storageUrl) {
    throw new AuthError(
      `no object-store endpoint with interface ${auth.interface}${auth.regionName ? ` in region ${auth.regionName}` : ''} in the Keystone catalog`,
      false,
    );
  }
  const expires = Date.parse(body.token?.expires_at ?? '');
  return { token, storageUrl: storageUrl.replace(/\/+$/, ''), expiresAt: Number.isFinite(expires) ? expires : Date.now() + DEFAULT_TOKEN_LIFE_MS };
}
