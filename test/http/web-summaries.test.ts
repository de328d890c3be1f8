/**
 * The tags page's stored summaries (src/web/summaries.ts) on every backend: written by the pushing process, they let
 * a process that has just started render a page in a listing and one read (Swift, whose listing gives each tag's
 * md5) or a listing, one read and a read per tag; what it shows is what reading every manifest shows; missing or
 * damaged summaries cost reads, never a wrong row.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paths } from '../../src/registry/paths.js';
import { Registry } from '../../src/registry/registry.js';
import type { StorageDriver } from '../../src/storage/driver.js';
import { ImageReader, type TagRow } from '../../src/web/images.js';
import { pushImage, type TestServer } from '../helpers/server.js';
import { IN_PROCESS_BACKENDS, startServerOn } from '../helpers/swift.js';

const NS = '_local';
const REPO = 'web/app';
/** The config every pushImage image has. */
const CONFIG_SIZE = JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }).length;

/** The driver, counting each call by method name (a listing is one call however many pages it has). */
function counting(driver: StorageDriver): { driver: StorageDriver; calls: string[] } {
  const calls: string[] = [];
  const wrapped = new Proxy(driver, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        calls.push(String(prop));
        return v.apply(target, args);
      };
    },
  });
  return { driver: wrapped, calls };
}

/** A fresh process's render of the repository's tags page: its rows and the storage calls it made. */
async function freshRender(driver: StorageDriver) {
  const c = counting(driver);
  const reader = new ImageReader(new Registry(c.driver));
  const rows = await reader.summarize(NS, REPO, await reader.tags(NS, REPO));
  const calls = [...c.calls];
  await reader.settled();
  return { rows, calls, reader };
}

/** What the tags page shows of each row (views.ts: tagRow). */
const shown = (rows: TagRow[]) =>
  rows
    .map(({ tag, pushed, manifest: m }) => ({
      tag,
      pushed,
      manifest: m && { digest: m.digest, mediaType: m.mediaType, artifactType: m.artifactType, size: m.size, platforms: m.platforms?.map((p) => [p.label, p.size]) },
    }))
    .sort((a, b) => (a.tag < b.tag ? -1 : 1));

describe.each(IN_PROCESS_BACKENDS)('stored summaries on %s', (backend) => {
  let server: TestServer;
  let driver: StorageDriver;
  const digests: Record<string, string> = {};

  beforeAll(async () => {
    server = await startServerOn(backend);
    driver = server.registry.driver;
    const pusher = new ImageReader(server.registry);
    let one: Buffer | undefined;
    for (const tag of ['one', 'two', 'three']) {
      const pushed = await pushImage(server.url, REPO, tag, [randomBytes(300 + tag.length)]);
      digests[tag] = pushed.digest;
      one ??= pushed.body;
    }
    // An index of two platforms (one of them an image tagged above), the platforms' sizes summed once each.
    const arm = await pushImage(server.url, REPO, 'arm-tmp', [randomBytes(500)]);
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: [
          { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: digests.one, size: one!.length, platform: { os: 'linux', architecture: 'amd64' } },
          { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: arm.digest, size: arm.body.length, platform: { os: 'linux', architecture: 'arm64' } },
        ],
      }),
    );
    const res = await fetch(`${server.url}/v2/${REPO}/manifests/multi`, { method: 'PUT', headers: { 'Content-Type': 'application/vnd.oci.image.index.v1+json' }, body: index });
    expect(res.status).toBe(201);
    await pusher.settled();
  }, 120_000);
  afterAll(() => server?.close());

  it('a process that has just started renders the page from the listing and the stored summaries', async () => {
    const { rows, calls } = await freshRender(driver);
    expect(rows.map((r) => r.tag).sort()).toEqual(['arm-tmp', 'multi', 'one', 'three', 'two']);
    expect(rows.find((r) => r.tag === 'two')!.manifest!.digest).toBe(digests.two);
    const multi = rows.find((r) => r.tag === 'multi')!.manifest!;
    expect(multi.platforms!.map((p) => p.label)).toEqual(['linux/amd64', 'linux/arm64']);
    // pushImage's images share their config: the index counts it once.
    expect(multi.platforms![0].size).toBe(rows.find((r) => r.tag === 'one')!.manifest!.size);
    expect(multi.size).toBe(multi.platforms![0].size! + multi.platforms![1].size! - CONFIG_SIZE);
    // Swift's listing gives each tag's md5, so no tag is read; elsewhere each tag is (and no manifest is).
    const tagReads = driver.reportsMd5 ? 0 : rows.length;
    expect(calls.sort()).toEqual(['list', ...Array(1 + tagReads).fill('read')]);
  });

  it('without stored summaries the page reads every manifest, shows the same, and writes them back', async () => {
    const withSummaries = shown((await freshRender(driver)).rows);
    await driver.delete(paths.webSummary(NS, REPO));
    const bare = await freshRender(driver);
    expect(shown(bare.rows)).toEqual(withSummaries);
    // The summaries (absent), the tags (5), their manifests (5) and the index's platforms (2).
    expect(bare.calls.filter((c) => c === 'read').length).toBe(1 + 5 + 5 + 2);
    const again = await freshRender(driver);
    expect(shown(again.rows)).toEqual(withSummaries);
    expect(again.calls.filter((c) => c === 'read').length).toBe(driver.reportsMd5 ? 1 : 6);
  });

  it('damaged summaries are not trusted: the rows are read from the manifests', async () => {
    const expected = shown((await freshRender(driver)).rows);
    const stored = JSON.parse((await driver.read(paths.webSummary(NS, REPO))).toString()) as Record<string, { size: unknown }>;
    stored[digests.two].size = 'large';
    await driver.put(paths.webSummary(NS, REPO), Buffer.from(JSON.stringify(stored)));
    const damaged = await freshRender(driver);
    expect(shown(damaged.rows)).toEqual(expected);
    await driver.put(paths.webSummary(NS, REPO), Buffer.from('{not json'));
    expect(shown((await freshRender(driver)).rows)).toEqual(expected);
  });
});
