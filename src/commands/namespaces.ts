/** The namespaces prune and fsck visit when none are named: every one the configuration knows. */
import type { Config } from '../config/config.js';
import { DEFAULT_NAMESPACE } from '../registry/paths.js';

export function configuredNamespaces(config: Config): string[] {
  const all = new Set<string>([DEFAULT_NAMESPACE, ...Object.keys(config.namespaces)]);
  for (const u of config.users) if (u.namespace) all.add(u.namespace);
  return [...all].sort();
}
