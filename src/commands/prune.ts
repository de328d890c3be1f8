/**
 * `berth prune [--dry-run] [--namespace NS]...`: one pass for cron. Exit 0 when every deletion succeeded, 1 when
 * some failed or a namespace was locked by another prune (the rest still ran), 2 for bad usage.
 */
import { parseArgs } from 'node:util';
import { configuredNamespaces } from './namespaces.js';
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import { validNamespace } from '../registry/paths.js';
import { Pruner, type PruneReport, type Tally } from '../registry/prune.js';
import { openStorage } from '../storage/factory.js';
import { formatMirrorReport, pruneMirror } from '../mirror/prune.js';

export const PRUNE_USAGE = 'usage: berth [-c FILE] [-d] prune [--dry-run] [--namespace NS]...';

/** The namespaces the configuration knows: the default one, each user's, and those with settings. */
export async function runPrune(config: Config, args: string[], log: Logger): Promise<number> {
  let values: { 'dry-run'?: boolean; namespace?: string[] };
  try {
    ({ values } = parseArgs({ args, options: { 'dry-run': { type: 'boolean' }, namespace: { type: 'string', multiple: true } }, strict: true }));
  } catch (err) {
    process.stderr.write(`berth: ${(err as Error).message}\n${PRUNE_USAGE}\n`);
    return 2;
  }
  const namespaces = values.namespace ?? configuredNamespaces(config);
  const bad = namespaces.find((n) => !validNamespace(n));
  if (bad !== undefined) {
    process.stderr.write(`berth: invalid namespace ${JSON.stringify(bad)}\n${PRUNE_USAGE}\n`);
    return 2;
  }
  const dryRun = values['dry-run'] ?? false;
  const driver = await openStorage(config.storage);
  const pruner = new Pruner(driver);
  let status = 0;
  try {
    for (const ns of namespaces) {
      const started = Date.now();
      const requestsBefore = driver.requestCount?.();
      const report = await pruner.prune(ns, {
        expiration: config.namespaces[ns]?.expiration ?? config.expiration,
        uploadExpiry: config.uploadExpiry,
        dryRun,
        log,
        progress: (line) => process.stderr.write(`${line}\n`),
      });
      const requests = requestsBefore === undefined ? undefined : driver.requestCount!() - requestsBefore;
      process.stdout.write(formatReport(report, dryRun, Date.now() - started, requests));
      if (report.refused || report.failures > 0) status = 1;
      log.info({ ...report, dryRun, requests }, 'prune finished');
    }
    // The pull-through cache belongs to no namespace: pruned on a run over all of them (mirror/prune.ts).
    if (values.namespace === undefined) {
      for (const m of config.mirrors) {
        const started = Date.now();
        const report = await pruneMirror(driver, m, { dryRun, log });
        process.stdout.write(formatMirrorReport(report, dryRun, Date.now() - started));
        if (report.refused || report.failures > 0) status = 1;
        log.info({ ...report, dryRun }, 'mirror cache prune finished');
      }
    }
  } finally {
    await driver.close();
  }
  return status;
}

/** The report as a table; `requests`: storage requests the run made, where the driver counts them (Swift). */
export function formatReport(r: PruneReport, dryRun: boolean, ms: number, requests?: number): string {
  if (r.refused) return `namespace ${r.namespace}: skipped: ${r.refused}\n`;
  const head = `namespace ${r.namespace}${dryRun ? ' (dry run: nothing deleted; "deleted" is what would go)' : ''}, ${(ms / 1000).toFixed(1)} s\n`;
  const row = (name: string, t: Tally, fmt = String) =>
    `  ${name.padEnd(10)}${fmt(t.examined).padStart(14)}${fmt(t.kept).padStart(14)}${fmt(t.deleted).padStart(14)}\n`;
  return (
    head +
    `  ${''.padEnd(10)}${'examined'.padStart(14)}${'kept'.padStart(14)}${'deleted'.padStart(14)}\n` +
    row('uploads', r.uploads) +
    (r.linked.examined > 0 ? row('linked', r.linked) : '') +
    row('manifests', r.manifests) +
    row('tags', r.tags) +
    row('blobs', r.blobs) +
    row('bytes', r.bytes) +
    `  objects deleted: ${r.objects}` +
    (requests === undefined ? '' : `, storage requests: ${requests}${r.objects > 0 ? ` (${(requests / r.objects).toFixed(2)} per deleted object)` : ''}`) +
    '\n' +
    (r.usage ? `  ${'stored'.padEnd(10)}${r.usage.bytes} bytes in ${r.usage.blobs} blobs, ${r.usage.manifests} manifests, ${r.usage.tags} tags\n` : '') +
    (r.failures > 0 ? `  ${r.failures} deletions failed (see the log)\n` : '')
  );
}
