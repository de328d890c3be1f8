// Shared by the storage abuse scripts: a minimal registry client (Basic -> Bearer token when ctx.user is set) and,
// for standalone runs, a fresh filesystem-backed `berth serve` from dist/cli.js.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

/** A client for repository `repo`; request(method, path, body?, headers?) takes paths relative to /v2/<repo>. */
export async function api(ctx, repo) {
  const base = ctx.url.replace(/\/+$/, '');
  let authorization;
  if (ctx.user) {
    const basic = `Basic ${Buffer.from(`${ctx.user}:${ctx.password ?? ''}`).toString('base64')}`;
    const probe = await fetch(`${base}/v2/`);
    const challenge = probe.headers.get('www-authenticate') ?? '';
    const realm = /realm="([^"]+)"/.exec(challenge)?.[1];
    if (challenge.startsWith('Bearer') && realm) {
      const service = /service="([^"]+)"/.exec(challenge)?.[1] ?? '';
      const url = `${realm}?service=${encodeURIComponent(service)}&scope=${encodeURIComponent(`repository:${repo}:pull,push`)}`;
      const res = await fetch(url, { headers: { authorization: basic } });
      if (!res.ok) throw new Error(`token request answered ${res.status}`);
      authorization = `Bearer ${(await res.json()).token}`;
    } else {
      authorization = basic;
    }
  }
  return {
    async request(method, path, body, headers = {}) {
      const url = path.startsWith('/v2/') ? `${base}${path}` : path.startsWith('http') ? path : `${base}/v2/${repo}${path}`;
      const res = await fetch(url, { method, body, headers: { ...(authorization ? { authorization } : {}), ...headers } });
      const text = await res.text();
      return { status: res.status, headers: Object.fromEntries(res.headers), body: text };
    },
  };
}

/** Parse --url/--scale; without --url, start `berth serve` on a fresh filesystem store and return it as `local`. */
export async function startLocal(extraYaml = '') {
  const { values } = parseArgs({ options: { url: { type: 'string' }, scale: { type: 'string', default: 'small' } } });
  if (values.url) return { values, local: null };
  const dir = mkdtempSync(join(tmpdir(), 'berth-abuse-'));
  const config = join(dir, 'registry.yaml');
  writeFileSync(config, `registry:\n  address: 127.0.0.1\n  port: 0\n  storage:\n    driver: filesystem\n    root: ${dir}/data\n${extraYaml}`);
  const child = spawn(process.execPath, ['dist/cli.js', '-c', config, 'serve'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening on port (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`serve exited ${code}`)));
  });
  const local = {
    url: `http://127.0.0.1:${port}`,
    root: join(dir, 'data'),
    async stop() {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return { values, local };
}
