/**
 * `berth usage [--namespace NS]... [--json] [--fresh]`: what each namespace stores, as the last prune recorded it,
 * or (--fresh) from a walk now, which is then stored as the namespace's figure. Exit 0; 1 when a namespace has no
 * figure yet (run prune, or --fresh); 2 for bad usage.
 */
import { parseArgs } from 'node:util';
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import { validNamespace } from '../registry/paths.js';
import { computeUsage, readUsage, writeUsage, type NamespaceUsage, type RepositoryUsage } from '../registry/usage.js';
import { openStorage } from '../storage/factory.js';
import { configuredNamespaces } from './namespaces.js';

export const USAGE_USAGE = 'usage: berth [-c FILE] [-d] usage [--namespace NS]... [--json] [--fresh]';

export async function runUsage(config: Config, args: string[], log: Logger): Promise<number> {
  let values: { namespace?: string[]; json?: boolean; fresh?: boolean };
  try {
    ({ values } = parseArgs({ args, options: { namespace: { type: 'string', multiple: true }, json: { type: 'boolean' }, fresh: { type: 'boolean' } }, strict: true }));
  } catch (err) {
    process.stderr.write(`berth: ${(err as Error).message}\n${USAGE_USAGE}\n`);
    return 2;
  }
  const namespaces = values.namespace ?? configuredNamespaces(config);
  const bad = namespaces.find((n) => !validNamespace(n));
  if (bad !== undefined) {
    process.stderr.write(`berth: invalid namespace ${JSON.stringify(bad)}\n${USAGE_USAGE}\n`);
    return 2;
  }
  const driver = await openStorage(config.storage);
  const found: (NamespaceUsage | { namespace: string; missing: true })[] = [];
  try {
    for (const ns of namespaces) {
      let usage = values.fresh ? null : await readUsage(driver, ns);
      if (values.fresh) {
        usage = await computeUsage(driver, ns, (line) => process.stderr.write(`${line}\n`));
        await writeUsage(driver, usage);
        log.info({ namespace: ns, bytes: usage.bytes, blobs: usage.blobs, manifests: usage.manifests }, 'usage computed');
      }
      found.push(usage ?? { namespace: ns, missing: true });
    }
  } finally {
    await driver.close();
  }
  const quota = (ns: string) => config.namespaces[ns]?.quota ?? config.quota;
  if (values.json) {
    process.stdout.write(JSON.stringify(found.map((u) => ({ ...u, quota: quota(u.namespace) ?? null })), null, 2) + '\n');
  } else {
    for (const u of found) process.stdout.write('missing' in u ? `namespace ${u.namespace}: no usage recorded yet (run berth prune, or berth usage --fresh)\n` : format(u, quota(u.namespace)));
  }
  return found.some((u) => 'missing' in u) ? 1 : 0;
}

const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
const day = (iso?: string) => iso?.slice(0, 19).replace('T', ' ') ?? '-';

/** A namespace line, then one row per repository (shares overlap: a blob two repositories use is in both). */
export function format(u: NamespaceUsage, quota?: number): string {
  const limit = quota === undefined ? '' : `, quota ${mib(quota)} (${((100 * u.bytes) / quota).toFixed(0)}%)`;
  const row = (name: string, r: RepositoryUsage) =>
    `  ${name.padEnd(32)}${mib(r.bytes).padStart(14)}${String(r.blobs).padStart(8)}${String(r.manifests).padStart(11)}${String(r.tags).padStart(6)}  ${day(r.oldestPush)}  ${day(r.newestPush)}\n`;
  return (
    `namespace ${u.namespace}: ${mib(u.bytes)} (${u.bytes} bytes) in ${u.blobs} blobs${limit}; as of ${day(u.asOf)} UTC (${u.source})\n` +
    `  ${'repository'.padEnd(32)}${'bytes'.padStart(14)}${'blobs'.padStart(8)}${'manifests'.padStart(11)}${'tags'.padStart(6)}  ${'oldest push'.padEnd(19)}  newest push\n` +
    Object.entries(u.repositories).map(([name, r]) => row(name, r)).join('') +
    row('(namespace)', u)
  );
}
