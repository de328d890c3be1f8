/** The real single-node Swift from tools/swift-aio.sh, started on demand, and drivers on fresh containers. */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { loadCloud } from '../../src/storage/swift/clouds.js';
import { SwiftDriver, type SwiftOptions } from '../../src/storage/swift/driver.js';
import { login } from '../../src/storage/swift/auth.js';
import { MemoryDriver } from '../../src/storage/memory.js';
import type { CommitMode } from '../../src/registry/upload-commit.js';
import { startServer, type TestServer } from './server.js';

const run = promisify(execFile);
let started: Promise<string> | undefined;

/** Start Swift (idempotent) and return the path of its clouds.yaml. */
export function ensureSwift(): Promise<string> {
  started ??= run('tools/swift-aio.sh', ['start'], { timeout: 600_000 }).then(({ stdout }) => stdout.trim().split('\n').pop()!);
  return started;
}

export const TEST_CLOUD = 'berth-test';

export function freshContainer(): string {
  return `berth-test-${randomBytes(5).toString('hex')}`;
}

export async function swiftDriver(container = freshContainer(), opts: Partial<SwiftOptions> = {}): Promise<SwiftDriver> {
  const clouds = await ensureSwift();
  return SwiftDriver.connect({ auth: loadCloud(TEST_CLOUD, clouds), container, ...opts });
}

/** Raw access for assertions the driver interface does not expose (SLO manifests, container removal). */
export async function swiftRaw(path: string, init: RequestInit = {}): Promise<Response> {
  const session = await login(loadCloud(TEST_CLOUD, await ensureSwift()));
  return fetch(`${session.storageUrl}/${path}`, { ...init, headers: { ...(init.headers as Record<string, string>), 'X-Auth-Token': session.token } });
}

/** Delete a test container and everything in it. */
export async function dropContainer(container: string): Promise<void> {
  for (;;) {
    const res = await swiftRaw(`${container}?format=json&limit=1000`);
    if (res.status === 404) return;
    const names = ((await res.json()) as { name: string }[]).map((o) => o.name);
    if (names.length === 0) break;
    for (const n of names) await (await swiftRaw(`${container}/${n.split('/').map(encodeURIComponent).join('/')}`, { method: 'DELETE' })).arrayBuffer();
  }
  await (await swiftRaw(container, { method: 'DELETE' })).arrayBuffer();
}

/** `npm run test:fast` (BERTH_TEST_TIER=fast): no Swift, no clients; the core on memory and the filesystem. */
const FAST = process.env.BERTH_TEST_TIER === 'fast';

export type Backend = 'filesystem' | 'swift';
export type InProcessBackend = Backend | 'memory';
/** The backends of suites that run `berth serve` (a configuration file names the storage). */
export const BACKENDS: Backend[] = FAST ? ['filesystem'] : ['filesystem', 'swift'];
/** The backends of suites that run the app in this process: the in-memory driver too. */
export const IN_PROCESS_BACKENDS: InProcessBackend[] = ['memory', ...BACKENDS];

/**
 * The commit mode of Swift servers the suites start (`BERTH_TEST_COMMIT=link npm test` runs every Swift suite in
 * link mode; suites about one mode's layout pin it themselves).
 */
export const SWIFT_COMMIT: 'move' | 'link' = process.env.BERTH_TEST_COMMIT === 'link' ? 'link' : 'move';

/** A test server on a backend: a fresh in-memory store or filesystem root, or a fresh Swift container dropped at close. */
export async function startServerOn(backend: InProcessBackend): Promise<TestServer> {
  if (backend === 'memory') return startServer(new MemoryDriver());
  if (backend === 'filesystem') return startServer();
  const container = freshContainer();
  const server = await startServer(await swiftDriver(container), undefined, { commit: SWIFT_COMMIT });
  return {
    ...server,
    async close() {
      await server.close();
      await dropContainer(container);
    },
  };
}

/**
 * The `storage:` block of a config file for a backend (indented for `registry:`), and its cleanup. `commit` on Swift
 * defaults to SWIFT_COMMIT; on the filesystem it is written only when given.
 */
export async function storageYaml(backend: Backend, dir: string, commit?: CommitMode): Promise<{ yaml: string; cleanup(): Promise<void> }> {
  const mode = commit ? `    commit: ${commit}\n` : '';
  if (backend === 'filesystem') {
    return { yaml: `  storage:\n    driver: filesystem\n    root: ${dir}/data\n${mode}`, cleanup: async () => {} };
  }
  const clouds = await ensureSwift();
  const container = freshContainer();
  return {
    yaml: `  storage:\n    driver: swift\n    cloud: ${TEST_CLOUD}\n    container: ${container}\n    clouds-file: ${clouds}\n    commit: ${commit ?? SWIFT_COMMIT}\n`,
    cleanup: () => dropContainer(container),
  };
}
