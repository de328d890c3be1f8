// Helpers for tools that talk to the test Swift directly (tools/swift-aio.sh: tempauth test:tester/testing).
const AUTH = process.env.BERTH_SWIFT_AUTH ?? 'http://127.0.0.1:8080/auth/v1.0';

export async function swiftSession(authUrl = AUTH) {
  const res = await fetch(authUrl, { headers: { 'X-Auth-User': 'test:tester', 'X-Auth-Key': 'testing' } });
  return { token: res.headers.get('x-auth-token'), url: res.headers.get('x-storage-url') };
}

/** Delete a container and everything in it (plain deletes: SLO segments are listed and deleted too). */
export async function dropContainer(container, session) {
  const s = session ?? (await swiftSession());
  const headers = { 'X-Auth-Token': s.token };
  for (;;) {
    const res = await fetch(`${s.url}/${container}?format=json&limit=1000`, { headers });
    if (res.status === 404 || res.status === 204) break;
    const names = (await res.json()).map((o) => o.name);
    if (names.length === 0) break;
    for (const n of names) await (await fetch(`${s.url}/${container}/${n.split('/').map(encodeURIComponent).join('/')}`, { method: 'DELETE', headers })).arrayBuffer();
  }
  await (await fetch(`${s.url}/${container}`, { method: 'DELETE', headers })).arrayBuffer();
}

/**
 * What this Swift sustains alone, in objects per second: `n` empty-object PUTs (64 in flight), then their deletion
 * in bulk requests (100 names each, 16 in flight; any batch size or concurrency measured alike here). A prune
 * cannot delete faster than `deletes`: it is the floor its time is judged against.
 */
export async function swiftRates(session, n = 2000) {
  const headers = { 'X-Auth-Token': session.token };
  const container = `rates-${Date.now()}-${Math.random().toString(16).slice(2, 8)}`;
  const pool = async (count, inFlight, f) => {
    let i = 0;
    await Promise.all(Array.from({ length: inFlight }, async () => {
      while (i < count) await f(i++);
    }));
  };
  await (await fetch(`${session.url}/${container}`, { method: 'PUT', headers })).arrayBuffer();
  let started = Date.now();
  await pool(n, 64, async (i) => void (await (await fetch(`${session.url}/${container}/o/${i}`, { method: 'PUT', headers, body: '' })).arrayBuffer()));
  const puts = n / ((Date.now() - started) / 1000);
  const account = session.url.slice(0, session.url.lastIndexOf('/') + 1) + session.url.split('/').pop();
  started = Date.now();
  await pool(Math.ceil(n / 100), 16, async (b) => {
    const names = Array.from({ length: Math.min(100, n - b * 100) }, (_, k) => `/${container}/o/${b * 100 + k}`);
    const res = await fetch(`${account}?bulk-delete`, { method: 'POST', headers: { ...headers, 'Content-Type': 'text/plain', Accept: 'application/json' }, body: names.join('\n') });
    const doc = await res.json();
    if (doc['Number Deleted'] !== names.length) throw new Error(`bulk delete: ${JSON.stringify(doc).slice(0, 200)}`);
  });
  const deletes = n / ((Date.now() - started) / 1000);
  await (await fetch(`${session.url}/${container}`, { method: 'DELETE', headers })).arrayBuffer();
  return { puts: Math.round(puts), deletes: Math.round(deletes) };
}
