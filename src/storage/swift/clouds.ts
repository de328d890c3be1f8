/**
 * clouds.yaml, read the way openstacksdk reads it: the first file found among OS_CLIENT_CONFIG_FILE,
 * ./clouds.yaml, ~/.config/openstack/clouds.yaml and /etc/openstack/clouds.yaml (or an explicit path), then the
 * named cloud in it.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { loadYaml } from '../../config/yaml.js';

export type CloudAuth =
  | { type: 'v1password'; authUrl: string; username: string; password: string }
  | {
      type: 'password';
      authUrl: string;
      username?: string;
      userId?: string;
      password: string;
      userDomainName?: string;
      userDomainId?: string;
      projectName?: string;
      projectId?: string;
      projectDomainName?: string;
      projectDomainId?: string;
      regionName?: string;
      interface: string;
    }
  | {
      type: 'v3applicationcredential';
      authUrl: string;
      id?: string;
      name?: string;
      secret: string;
      username?: string;
      userId?: string;
      userDomainName?: string;
      userDomainId?: string;
      regionName?: string;
      interface: string;
    };

export class CloudConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CloudConfigError';
  }
}

export function cloudsFileCandidates(env = process.env): string[] {
  return [
    env.OS_CLIENT_CONFIG_FILE,
    resolve('clouds.yaml'),
    join(homedir(), '.config/openstack/clouds.yaml'),
    '/etc/openstack/clouds.yaml',
  ].filter((f): f is string => !!f);
}

/** Load cloud `name`; `file` overrides the search. Errors name the file and the key, never a secret. */
export function loadCloud(name: string, file?: string): CloudAuth {
  const files = file ? [file] : cloudsFileCandidates();
  let text: string | undefined;
  let used = '';
  for (const f of files) {
    try {
      text = readFileSync(f, 'utf8');
      used = f;
      break;
    } catch {
      // try the next one, as openstacksdk does
    }
  }
  if (text === undefined) throw new CloudConfigError(`no clouds.yaml found (looked in ${files.join(', ')})`);
  let doc: { clouds?: Record<string, unknown> } | undefined;
  try {
    doc = loadYaml(text, used) as typeof doc;
  } catch (err) {
    throw new CloudConfigError(`${used}: not valid YAML: ${(err as Error).message}`);
  }
  const cloud = doc?.clouds?.[name] as Record<string, unknown> | undefined;
  if (!cloud || typeof cloud !== 'object') throw new CloudConfigError(`${used}: no cloud named ${JSON.stringify(name)}`);
  const auth = (cloud.auth ?? {}) as Record<string, unknown>;
  const str = (k: string): string | undefined => {
    const v = auth[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string' && typeof v !== 'number') throw new CloudConfigError(`${used}: clouds.${name}.auth.${k} must be a string`);
    return String(v);
  };
  const need = (k: string): string => {
    const v = str(k);
    if (!v) throw new CloudConfigError(`${used}: clouds.${name}.auth.${k} is required`);
    return v;
  };
  const authType = String(cloud.auth_type ?? 'password');
  const regionName = cloud.region_name === undefined ? undefined : String(cloud.region_name);
  const iface = String(cloud.interface ?? 'public').replace(/URL$/, '');
  switch (authType) {
    case 'v1password':
      return { type: 'v1password', authUrl: need('auth_url'), username: need('username'), password: need('password') };
    case 'password':
    case 'v3password':
      return {
        type: 'password',
        authUrl: need('auth_url'),
        username: str('username'),
        userId: str('user_id'),
        password: need('password'),
        userDomainName: str('user_domain_name') ?? (str('user_domain_id') ? undefined : str('domain_name')),
        userDomainId: str('user_domain_id'),
        projectName: str('project_name') ?? str('tenant_name'),
        projectId: str('project_id') ?? str('tenant_id'),
        projectDomainName: str('project_domain_name'),
        projectDomainId: str('project_domain_id'),
        regionName,
        interface: iface,
      };
    case 'v3applicationcredential':
      return {
        type: 'v3applicationcredential',
        authUrl: need('auth_url'),
        id: str('application_credential_id'),
        name: str('application_credential_name'),
        secret: need('application_credential_secret'),
        username: str('username'),
        userId: str('user_id'),
        userDomainName: str('user_domain_name'),
        userDomainId: str('user_domain_id'),
        regionName,
        interface: iface,
      };
    default:
      throw new CloudConfigError(`${used}: clouds.${name}.auth_type ${JSON.stringify(authType)} is not supported (v1password, password, v3applicationcredential)`);
  }
}
