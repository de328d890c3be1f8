/** `berth serve` refuses to start on storage it cannot use, saying why, with the exit code cron and systemd see. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnServe } from '../helpers/server.js';
import { TEST_CLOUD, ensureSwift } from '../helpers/swift.js';
import { writeFile } from 'node:fs/promises';

let dir: string;
let clouds: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'berth-startup-'));
  clouds = await ensureSwift();
});
afterAll(() => rm(dir, { recursive: true, force: true }));

const swiftConfig = (cloud: string, file: string) =>
  `registry:\n  address: 127.0.0.1\n  port: 0\n  storage:\n    driver: swift\n    cloud: ${cloud}\n    container: berth-startup\n    clouds-file: ${file}\n`;

describe('start-up with unusable storage', () => {
  it('an unknown cloud is a configuration error: exit 2', async () => {
    await expect(spawnServe(swiftConfig('no-such-cloud', clouds), dir)).rejects.toThrow(/exited with 2: .*no cloud named "no-such-cloud"/s);
  });

  it('refused credentials: exit 1, and the password is not in the message', async () => {
    const bad = join(dir, 'clouds.yaml');
    await writeFile(bad, `clouds:\n  ${TEST_CLOUD}:\n    auth_type: v1password\n    auth: {auth_url: 'http://127.0.0.1:8080/auth/v1.0', username: 'test:tester', password: 'sekrit-wrong'}\n`);
    const err = await spawnServe(swiftConfig(TEST_CLOUD, bad), dir).then(
      () => new Error('it started'),
      (e: unknown) => e as Error,
    );
    expect(err.message).toMatch(/exited with 1: .*refused user test:tester/s);
    expect(err.message).not.toContain('sekrit-wrong');
  });
});
