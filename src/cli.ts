#!/usr/bin/env -S node --single-threaded-gc
/**
 * berth [-c FILE] [-d] [serve|prune|fsck|usage]   (no command: serve, as zuul-registry's image runs it)
 *
 * Exit codes: 0 done, 1 the command failed, 2 bad usage or configuration.
 */
import cluster from 'node:cluster';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { pino, type Logger } from 'pino';
import { DEFAULTS } from './config/defaults.js';
import { ConfigError, loadConfig, type Config } from './config/config.js';
import { anonymousPull, checkForServe, locateConfig, tokenAudience } from './config/startup.js';
import { runPrune } from './commands/prune.js';
import { runFsck } from './commands/fsck.js';
import { runUsage } from './commands/usage.js';
import { TokenIssuer } from './auth/tokens.js';
import { Users } from './auth/users.js';
import { Access } from './http/auth.js';
import { createApp } from './http/app.js';
import { createServer } from './http/server.js';
import { keepFreedHeap } from './registry/native-hash.js';
import { ClientAddresses } from './http/client-address.js';
import { DEFAULT_NAMESPACE } from './registry/paths.js';
import { Registry } from './registry/registry.js';
import { StorageOpenError, openStorage } from './storage/factory.js';
import { InstrumentedDriver } from './observability/instrumented-driver.js';
import { Metrics } from './observability/metrics.js';
import { MemcachedLocks } from './locks/memcached.js';
import type { QuotaConfig } from './registry/quota.js';
import { configuredNamespaces } from './commands/namespaces.js';
import type { LockService } from './locks/lock-service.js';
import type { StorageDriver } from './storage/driver.js';
import { runPrimary } from './cluster/primary.js';
import { joinCluster, leaveCluster, type WorkerShare } from './cluster/worker.js';
import { Mirror } from './mirror/mirror.js';
import { mirrorMetrics } from './mirror/metrics.js';
import { warmUpStreams } from './mirror/warm-up.js';
import { mirrorHook } from './http/mirror.js';

const USAGE = `usage: berth [-c FILE] [-d] [command]

commands:
  serve     run the registry (the default)
  prune [--dry-run] [--namespace NS]...
            delete expired uploads and manifests, then unreferenced blobs (for cron)
  fsck [--namespace NS]... [--repair] [--parallel N]
            re-hash every blob, check Swift segments and manifests' blobs; --repair quarantines corrupt blobs
  usage [--namespace NS]... [--json] [--fresh]
            bytes, blobs, manifests and tags per namespace and repository, as the last prune
            recorded them (--fresh: walk the store now, and record that)

options:
  -c, --config FILE   configuration file (default: $BERTH_CONFIG, else /conf/registry.yaml
                      if it exists, else etc/registry.yaml)
  -d, --debug         debug logging
  -h, --help          this help`;

async function main(argv: string[]): Promise<number> {
  // Global options come before the command; what follows the command is the command's own.
  const at = argv.findIndex((a, i) => !a.startsWith('-') && !(i > 0 && ['-c', '--config'].includes(argv[i - 1])));
  const [command = 'serve', ...rest] = at < 0 ? [] : argv.slice(at);
  let parsed;
  try {
    parsed = parseArgs({
      args: at < 0 ? argv : argv.slice(0, at),
      options: { config: { type: 'string', short: 'c' }, debug: { type: 'boolean', short: 'd' }, help: { type: 'boolean', short: 'h' } },
    });
  } catch (err) {
    process.stderr.write(`berth: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const { values } = parsed;
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  // The server logs to stdout; one-shot commands keep stdout for their report and log to stderr.
  const log = pino({ level: values.debug ? 'debug' : 'info', base: { pid: process.pid } }, pino.destination(command === 'serve' ? 1 : 2));
  if (!['serve', 'prune', 'fsck', 'usage'].includes(command) || (command === 'serve' && rest.length > 0)) {
    process.stderr.write(`berth: unknown command or arguments: ${[command, ...rest].join(' ')}\n${USAGE}\n`);
    return 2;
  }
  let config: Config;
  try {
    const { file, from } = locateConfig(values.config);
    config = loadConfig(file);
    log.info({ config: file, from }, 'configuration loaded');
    if (command === 'serve') {
      const warnings = checkForServe(config);
      // Said once per host: by the primary, not again by each worker.
      if (!cluster.isWorker) for (const { msg, ...fields } of warnings) log.warn(fields, msg);
    }
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`berth: configuration error: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  try {
    if (command === 'serve') return await serve(config, log);
    if (command === 'prune') return await runPrune(config, rest, log);
    if (command === 'fsck') return await runFsck(config, rest, log);
    if (command === 'usage') return await runUsage(config, rest, log);
  } catch (err) {
    if (err instanceof StorageOpenError) {
      process.stderr.write(`berth: ${err.message}\n`);
      return err.configuration ? 2 : 1;
    }
    throw err;
  }
  return 2;
}

/** How long a draining server waits for requests in flight before it closes their connections. */
const DRAIN_MS = 10_000;

async function serve(config: Config, log: Logger): Promise<number> {
  const freedMemory = keepFreedHeap() ? 'kept' : 'glibc defaults';
  // workers: N > 1: this process only forks and supervises; each worker runs the rest of this function.
  if (config.workers > 1 && cluster.isPrimary) return runPrimary({ workers: config.workers, log, drainMs: DRAIN_MS + 10_000 });
  let tls: { cert: Buffer; key: Buffer } | undefined;
  if (config.tlsCert && config.tlsKey) {
    try {
      tls = { cert: readFileSync(config.tlsCert), key: readFileSync(config.tlsKey) };
    } catch (err) {
      process.stderr.write(`berth: cannot read TLS certificate or key: ${(err as Error).message}\n`);
      return 2;
    }
  }
  const metrics = new Metrics();
  const shared = cluster.isWorker ? await joinCluster(metrics) : undefined;
  const access = buildAccess(config, log, shared);
  const driver = new InstrumentedDriver(await openStorage(config.storage), metrics);
  const memcached = config.locks ? await MemcachedLocks.connect(config.locks.memcached, { log, metrics }) : undefined;
  const registry = new Registry(driver, {
    locks: lockService(driver, shared, memcached),
    blobRedirectSeconds: config.storage.driver === 'swift' && config.storage.tempUrlKey ? (config.storage.tempUrlExpiry ?? DEFAULTS.swift.tempUrlExpiry) : undefined,
    limits: config.limits,
    uploadExpiry: config.uploadExpiry,
    commit: config.storage.driver === 'swift' ? config.storage.commit : undefined,
    quotas: quotaConfig(config),
  });
  metrics.watchUsage(configuredNamespaces(config), registry.driver, registry.quotas);
  const clientAddresses = new ClientAddresses(config.trustedProxies);
  const web = { secret: config.secret, audience: tokenAudience(config), publicUrl: config.publicUrl, tls: Boolean(tls), expirationOf: (ns: string) => config.namespaces[ns]?.expiration ?? config.expiration };
  // The pull-through cache exists only when upstreams are configured; the log names them, never their logins.
  const tempUrlSeconds = config.storage.driver === 'swift' && config.storage.tempUrlKey ? (config.storage.tempUrlExpiry ?? DEFAULTS.swift.tempUrlExpiry) : undefined;
  const mirror = config.mirrors.length > 0 ? new Mirror(config.mirrors, driver, mirrorMetrics(metrics), log, tempUrlSeconds) : undefined;
  if (mirror) log.info({ mirrors: config.mirrors.map((m) => ({ registry: m.registry, url: m.url, login: m.username !== undefined })) }, 'pull-through cache enabled');
  if (mirror && process.env.BERTH_MIRROR_WARM_UP !== '0') {
    const started = Date.now();
    log.info({ bytes: await warmUpStreams(), ms: Date.now() - started }, 'mirror: stream path warmed up');
  }
  const app = createApp(registry, { log, access, metrics, clientAddresses, web, mirror: mirror && mirrorHook(mirror) });
  const server = createServer(app, { tls, timeouts: config.timeouts, log, clientAddresses });
  // Signals are taken before the port opens: a SIGTERM right after start-up still shuts down cleanly.
  const stopped = new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      // A second signal while draining changes nothing (the default action would kill uploads in flight).
      if (stopping) return void log.info({ signal }, 'already shutting down');
      stopping = true;
      log.info({ signal }, 'shutting down');
      // Connections busy now go idle as their requests end: each is closed then, not after the idle timeout.
      const idleSweep = setInterval(() => server.closeIdleConnections(), 100);
      server.close(() => {
        clearInterval(idleSweep);
        resolve();
      });
      server.closeIdleConnections();
      setTimeout(() => server.closeAllConnections(), DRAIN_MS).unref();
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.address, () => resolve());
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  log.info({ address: config.address, port, worker: shared?.slot, storage: config.storage.driver, commit: config.storage.driver === 'swift' ? (config.storage.commit ?? 'move') : 'move', tls: Boolean(tls), timeouts: config.timeouts, gc: gcMode(), freedMemory }, 'berth listening');
  // Test harnesses read the port from this line when the config asks for port 0 (with workers, the primary writes it).
  if (!shared) process.stdout.write(`berth listening on port ${port}\n`);

  await stopped;
  await mirror?.close();
  await registry.close();
  await memcached?.close();
  return 0;
}

/** Quotas by namespace and the default, or none when no namespace has one. */
function quotaConfig(config: Config): QuotaConfig | undefined {
  const byNamespace = Object.fromEntries(Object.entries(config.namespaces).filter(([, n]) => n.quota !== undefined).map(([name, n]) => [name, n.quota]));
  if (config.quota === undefined && Object.keys(byNamespace).length === 0) return undefined;
  const ms = config.quotaInterval * 1000;
  return { byNamespace, fallback: config.quota, timing: { refreshMs: ms, flushMs: ms } };
}

/**
 * The one place where the upload lock service is chosen (docs/security-storage.md). The memcached service of
 * `locks:` goes first: it serializes across hosts. Else, with workers, the
 * primary's; but not on a backend with a lock of its own (the filesystem's lock files), which already holds across
 * workers and also across processes on other hosts sharing the root, where the primary's would not.
 */
function lockService(driver: StorageDriver, shared: WorkerShare | undefined, memcached: LockService | undefined): LockService | undefined {
  if (memcached) return memcached;
  if (shared && !driver.tryLock) return shared.locks;
  return undefined;
}

/**
 * How V8 collects garbage here. Large transfers allocate a MiB buffer per read, and each 64 MiB of them starts a full
 * collection; with the default concurrent helpers those cost about a quarter of Berth's CPU (README, Performance).
 * The shipped launchers pass --single-threaded-gc; this is logged so an operator can see which one runs.
 */
function gcMode(): 'single-threaded' | 'concurrent' {
  return process.execArgv.includes('--single-threaded-gc') ? 'single-threaded' : 'concurrent';
}

function buildAccess(config: Config, log: Logger, shared?: WorkerShare): Access {
  const users = new Users(config.users, DEFAULT_NAMESPACE, config.htpasswd, log, shared && { shared: { limiter: shared.limiter, results: shared.loginCache } });
  if (!users.enabled) log.warn('no users configured: anyone may push and pull');
  const service = config.publicUrl ? new URL(config.publicUrl).host : 'berth';
  const publicNamespace = Object.entries(config.namespaces).find(([, n]) => n.public)?.[0];
  return new Access({
    users,
    tokens: config.secret ? new TokenIssuer(config.secret, service, { audience: tokenAudience(config), refreshSeconds: config.refreshTokenExpiry }) : null,
    defaultNamespace: DEFAULT_NAMESPACE,
    publicNamespace,
    anonymousPull: anonymousPull(config).allowed,
    namespaces: Object.keys(config.namespaces),
    publicUrl: config.publicUrl,
    log,
  });
}

main(process.argv.slice(2))
  .then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      process.stderr.write(`berth: ${(err as Error).message}\n`);
      process.exitCode = 1;
    },
  )
  // A worker's IPC channel would keep it alive once done (drained, or failed to start): the primary waits for it.
  .finally(leaveCluster);
