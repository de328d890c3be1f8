// For `tools/abuse.mjs --all-at-once`: while every attack runs, ask /readyz every 500 ms (each answer due within
// 5 s) and sample the server's RSS every 250 ms. The result is one more `attack -> held|broken` line.
import { readFile } from 'node:fs/promises';

export const rssMb = async (pid) => Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;

export async function watchServer(ctx, rssLimitMb) {
  const pid = await ctx.pidOf(ctx.url);
  const idle = await rssMb(pid);
  let peak = idle;
  let asked = 0;
  let failed = 0;
  let slowest = 0;
  const firstFailures = [];
  const started = Date.now();
  const rss = setInterval(() => rssMb(pid).then((r) => (peak = Math.max(peak, r)), () => {}), 250);
  let polling = true;
  const poller = (async () => {
    while (polling) {
      const t = Date.now();
      asked++;
      const answer = await ctx.request(ctx.url, { path: '/readyz', timeoutMs: 5000 }).catch((err) => ({ status: err.message }));
      slowest = Math.max(slowest, Date.now() - t);
      if (answer.status !== 200) {
        failed++;
        if (firstFailures.length < 3) firstFailures.push(`${((t - started) / 1000).toFixed(1)} s: ${answer.status}`);
      }
      await new Promise((r) => setTimeout(r, Math.max(0, 500 - (Date.now() - t))));
    }
  })();
  return {
    async stop(names) {
      polling = false;
      await poller;
      clearInterval(rss);
      const after = await rssMb(pid);
      return {
        attack: `all at once (${names.join(', ')}): /readyz and RSS`,
        held: failed === 0 && peak < rssLimitMb,
        detail:
          `/readyz ${asked - failed}/${asked} answered 200 over ${((Date.now() - started) / 1000).toFixed(0)} s (slowest ${slowest} ms)` +
          `${firstFailures.length ? `, failures at ${firstFailures.join('; ')}` : ''}; RSS idle ${Math.round(idle)} MB -> peak ${Math.round(peak)} MB (limit ${rssLimitMb} MB) -> ${Math.round(after)} MB at the end`,
      };
    },
  };
}
