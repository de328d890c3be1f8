/**
 * zuul-registry's `load_config`: every `%(ZUUL_REGISTRY_<NAME>)` in a string value is replaced by that environment
 * variable; a placeholder whose variable is unset stays as written (deployments template the file once and pass
 * the secret and passwords through the environment). Berth records where one stayed, so that start-up can refuse
 * to sign tokens or check passwords with the literal text.
 */

export interface Unresolved {
  /** The value's path, as configuration errors name it (`registry.users[0].pass`). */
  key: string;
  variable: string;
}

const PLACEHOLDER = /%\((ZUUL_REGISTRY_[A-Za-z0-9_]+)\)/g;

/** A copy of `doc` with placeholders replaced from `env`, and the placeholders left unresolved. */
export function substituteEnv(doc: unknown, env: NodeJS.ProcessEnv): { doc: unknown; unresolved: Unresolved[] } {
  const unresolved: Unresolved[] = [];
  const walk = (value: unknown, key: string): unknown => {
    if (typeof value === 'string') {
      return value.replace(PLACEHOLDER, (text, variable: string) => {
        const replacement = env[variable];
        if (replacement === undefined) {
          unresolved.push({ key, variable });
          return text;
        }
        return replacement;
      });
    }
    if (Array.isArray(value)) return value.map((v, i) => walk(v, `${key}[${i}]`));
    if (value && typeof value === 'object') {
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, walk(v, key ? `${key}.${k}` : k)]));
    }
    return value;
  };
  return { doc: walk(doc, ''), unresolved };
}
