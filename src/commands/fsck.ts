/**
 * `berth fsck [--namespace NS]... [--repair] [--parallel N]`: check a store, report each problem with its path.
 * Without --namespace, each upstream's pull-through cache too (--repair removes its broken items: fetched again).
 * Exit 0 when nothing is wrong, 1 when something is (even if repaired: someone should look), 2 for bad usage.
 */
import { DEFAULTS } from '../config/defaults.js';
import { parseArgs } from 'node:util';
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import { checkCache, formatCacheReport } from '../mirror/fsck.js';
import { Fsck, type FsckProblem } from '../registry/fsck.js';
import { validNamespace } from '../registry/paths.js';
import { openStorage } from '../storage/factory.js';
import { configuredNamespaces } from './namespaces.js';

export const FSCK_USAGE = 'usage: berth [-c FILE] [-d] fsck [--namespace NS]... [--repair] [--parallel N]';

export async function runFsck(config: Config, args: string[], log: Logger): Promise<number> {
  let values: { namespace?: string[]; repair?: boolean; parallel?: string };
  try {
    ({ values } = parseArgs({
      args,
      options: { namespace: { type: 'string', multiple: true }, repair: { type: 'boolean' }, parallel: { type: 'string' } },
      strict: true,
    }));
  } catch (err) {
    process.stderr.write(`berth: ${(err as Error).message}\n${FSCK_USAGE}\n`);
    return 2;
  }
  const namespaces = values.namespace ?? configuredNamespaces(config);
  const parallel = values.parallel === undefined ? DEFAULTS.fsckParallel : Number(values.parallel);
  if (namespaces.some((n) => !validNamespace(n)) || !Number.isInteger(parallel) || parallel < 1 || parallel > 64) {
    process.stderr.write(`berth: invalid --namespace or --parallel\n${FSCK_USAGE}\n`);
    return 2;
  }
  const driver = await openStorage(config.storage);
  const fsck = new Fsck(driver);
  let problems = 0;
  const print = (found: FsckProblem[], where: object): number => {
    for (const p of found) {
      process.stdout.write(`${p.kind.toUpperCase()} ${p.path}: ${p.detail}\n`);
      log.warn({ ...where, ...p }, 'fsck problem');
    }
    return found.length;
  };
  try {
    for (const ns of namespaces) {
      const started = Date.now();
      const r = await fsck.check(ns, { repair: values.repair, parallel, progress: (line) => process.stderr.write(`${line}\n`) });
      problems += print(r.problems, { namespace: ns });
      process.stdout.write(
        `namespace ${ns}: ${r.blobs} blobs (${(r.bytes / 2 ** 20).toFixed(1)} MiB) and ${r.manifests} manifests checked in ` +
          `${((Date.now() - started) / 1000).toFixed(1)} s; ${r.problems.length} problems` +
          (values.repair ? `, ${r.quarantined} blobs quarantined` : '') +
          '\n',
      );
    }
    // The pull-through cache belongs to no namespace: checked on a run over all of them (mirror/fsck.ts).
    for (const m of values.namespace === undefined ? config.mirrors : []) {
      const started = Date.now();
      const r = await checkCache(driver, m, { repair: values.repair, parallel });
      problems += print(r.problems, { registry: m.registry });
      process.stdout.write(formatCacheReport(r, values.repair === true, Date.now() - started));
    }
  } finally {
    await driver.close();
  }
  return problems > 0 ? 1 : 0;
}
