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
