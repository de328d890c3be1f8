/** The pages' HTML. Every value goes through `html`, which escapes it; links are built by `href`. */
import type { Descriptor } from '../registry/manifest-doc.js';
import { Html, formatBytes, formatTime, href, html } from './html.js';
import { type ImageDetail, type ManifestSummary, type RepositoryRow, type TagRow, expiresAt } from './images.js';

/** Where clients pull from: the public URL's host (or the one the browser used), and whether it is plain HTTP. */
export interface PullTarget {
  host: string;
  insecure: boolean;
}

export function signInPage(opts: { error?: string; user?: string; anonymous: boolean }): Html {
  return html`<h1>Sign in</h1>
<p class="muted">Use the user name and password you give <code>docker login</code>.</p>
${opts.error ? html`<p class="error" role="alert">${opts.error}</p>` : ''}
<form method="post" action="/ui/signin">
<label for="username">User name</label><input type="text" id="username" name="username" autocomplete="username" required value="${opts.user ?? ''}">
<label for="password">Password</label><input type="password" id="password" name="password" autocomplete="current-password">
<button type="submit">Sign in</button>
</form>
${
  opts.anonymous
    ? html`<h2>Browse without signing in</h2>
<p class="muted">Anonymous pulls are allowed here: open a repository by its name (listing them needs credentials, as the API's catalog does).</p>
<form method="get" action="/ui/repo">
<label for="name">Repository</label><input type="text" id="name" name="name" required>
<button type="submit">Open</button>
</form>`
    : ''
}`;
}

export function repositoriesPage(ns: string, rows: RepositoryRow[]): Html {
  return html`<h1>Repositories in namespace <code>${ns}</code></h1>
${
  rows.length === 0
    ? html`<p class="muted">Nothing has been pushed to this namespace yet.</p>`
    : html`<table id="repositories">
<thead><tr><th>Repository</th><th>Tags</th><th>Manifests</th><th>Last pushed</th></tr></thead>
<tbody>
${rows.map(
  (r) => html`<tr data-repository="${r.name}"><td><a href="${href('repo', r.name)}">${r.name}</a></td><td class="num">${r.tags}</td><td class="num">${r.manifests}</td><td>${r.pushed ? formatTime(r.pushed) : ''}</td></tr>
`,
)}</tbody>
</table>`
}`;
}

export function tagsPage(opts: { ns: string; repo: string; rows: TagRow[]; page: number; pages: number; total: number; expiration?: number; now: Date }): Html {
  const { repo, rows, page, pages } = opts;
  return html`<nav class="crumbs"><a href="/ui/">${opts.ns}</a> /</nav>
<h1>${repo}</h1>
<p class="muted">${opts.total} tags. ${expirationNote(opts.expiration)}</p>
<table id="tags">
<thead><tr><th>Tag</th><th>Digest</th><th>Platforms</th><th>Size</th><th>Pushed</th><th>Expires</th></tr></thead>
<tbody>
${rows.map((r) => tagRow(repo, r, opts.expiration, opts.now))}</tbody>
</table>
${pages > 1 ? pager(repo, page, pages) : ''}`;
}

function tagRow(repo: string, r: TagRow, expiration: number | undefined, now: Date): Html {
  const m = r.manifest;
  const expires = expiresAt(r.pushed, expiration);
  return html`<tr data-tag="${r.tag}" data-digest="${m?.digest}" data-size="${m?.size}">
<td><a href="${href('repo', repo, '-', 'manifest', r.tag)}">${r.tag}</a></td>
<td class="digest" title="${m?.mediaType}">${m ? short(m.digest) : html`<span class="muted">unreadable</span>`}</td>
<td>${m?.platforms ? platformList(m) : artifact(m?.artifactType) ? html`<span class="muted">${m!.artifactType}</span>` : ''}</td>
<td class="num">${m?.size === undefined ? '' : html`<span title="${m.size} bytes">${formatBytes(m.size)}</span>`}</td>
<td>${formatTime(r.pushed)}</td>
<td>${expires === undefined ? html`<span class="muted">never</span>` : expires <= now ? 'at the next prune' : formatTime(expires)}</td>
</tr>
`;
}

function platformList(m: ManifestSummary): Html {
  return html`${m.platforms!.map((p, i) => html`${i > 0 ? ', ' : ''}<span class="platform" title="${p.size === undefined ? '' : `${p.size} bytes`}">${p.label}${p.size === undefined ? '' : html` <span class="muted">${formatBytes(p.size)}</span>`}</span>`)}`;
}

function pager(repo: string, page: number, pages: number): Html {
  const link = (p: number, text: string) => html`<a href="${href('repo', repo)}?page=${p}">${text}</a>`;
  return html`<p>${page > 1 ? link(page - 1, '← newer') : ''} page ${page} of ${pages} ${page < pages ? link(page + 1, 'older →') : ''}</p>`;
}

function expirationNote(expiration: number | undefined): string {
  if (expiration === undefined) return 'Prune does not expire tags in this namespace.';
  return `Prune deletes a tag ${duration(expiration)} after it was last pushed, and then what no remaining tag needs.`;
}

function duration(seconds: number): string {
  if (seconds % 86400 === 0) return `${seconds / 86400} day${seconds === 86400 ? '' : 's'}`;
  if (seconds % 3600 === 0) return `${seconds / 3600} hour${seconds === 3600 ? '' : 's'}`;
  return `${seconds} seconds`;
}

export function imagePage(opts: { ns: string; repo: string; reference: string; image: ImageDetail; pull: PullTarget }): Html {
  const { repo, reference, image } = opts;
  const index = image.platforms !== undefined;
  return html`<nav class="crumbs"><a href="/ui/">${opts.ns}</a> / <a href="${href('repo', repo)}">${repo}</a> /</nav>
<h1>${repo}${reference.includes(':') ? '@' : ':'}${reference}</h1>
<table id="manifest">
<tr><th>Digest</th><td class="digest" id="manifest-digest">${image.digest}</td></tr>
<tr><th>Media type</th><td><code>${image.mediaType}</code></td></tr>
${artifact(image.artifactType) ? html`<tr><th>Artifact type</th><td><code>${image.artifactType}</code></td></tr>` : ''}
<tr><th>Size</th><td id="image-size" data-size="${image.size}">${image.size === undefined ? 'unknown' : html`${formatBytes(image.size)} <span class="muted">(${image.size} bytes${index ? ', the distinct blobs of every platform' : ', config and layers'})</span>`}</td></tr>
${image.subject ? html`<tr><th>Subject</th><td class="digest"><a href="${href('repo', repo, '-', 'manifest', image.subject)}">${image.subject}</a></td></tr>` : ''}
${Object.entries(image.annotations ?? {}).map(([k, v]) => html`<tr class="annotation"><th>${k}</th><td>${v}</td></tr>`)}
</table>
<h2>Pull</h2>
${pullCommands(opts.pull, repo, reference, image.digest, index)}
${index ? platformsTable(repo, image) : layersTables(image)}
<h2>Referrers</h2>
${
  image.referrers.length === 0
    ? html`<p class="muted">No signatures, SBOMs or other artifacts refer to this manifest.</p>`
    : html`<table id="referrers"><thead><tr><th>Artifact type</th><th>Digest</th><th>Size</th><th>Annotations</th></tr></thead><tbody>
${image.referrers.map(
  (r) => html`<tr data-digest="${r.digest}"><td><code>${r.artifactType ?? r.mediaType}</code></td><td class="digest"><a href="${href('repo', repo, '-', 'manifest', r.digest)}">${short(r.digest)}</a></td><td class="num">${formatBytes(r.size)}</td><td>${Object.entries(r.annotations ?? {}).map(([k, v]) => html`<div><code>${k}</code>: ${v}</div>`)}</td></tr>
`,
)}</tbody></table>`
}`;
}

function platformsTable(repo: string, image: ImageDetail): Html {
  return html`<h2>Platforms</h2>
<table id="platforms"><thead><tr><th>Platform</th><th>Manifest</th><th>Size</th></tr></thead><tbody>
${image.platforms!.map(
  (p) => html`<tr data-digest="${p.descriptor.digest}" data-size="${p.size}"><td>${p.label}</td><td class="digest"><a href="${href('repo', repo, '-', 'manifest', p.descriptor.digest)}">${p.descriptor.digest}</a></td><td class="num">${p.size === undefined ? '' : formatBytes(p.size)}</td></tr>
`,
)}</tbody></table>`;
}

function layersTables(image: ImageDetail): Html {
  const c = image.config;
  return html`<h2>Config</h2>
${
  c
    ? html`<table id="config"><tr><th>Digest</th><td class="digest" data-digest="${c.digest}">${c.digest}</td></tr><tr><th>Media type</th><td><code>${c.mediaType}</code></td></tr><tr><th>Size</th><td>${c.size} bytes</td></tr>
${Object.entries(image.configSummary ?? {}).map(([k, v]) => html`<tr><th>${k}</th><td><code>${v}</code></td></tr>`)}</table>`
    : ''
}
<h2>Layers</h2>
<table id="layers"><thead><tr><th>#</th><th>Digest</th><th>Media type</th><th>Size</th></tr></thead><tbody>
${(image.layers ?? []).map((l: Descriptor, i) => html`<tr data-digest="${l.digest}" data-size="${l.size}"><td class="num">${i + 1}</td><td class="digest">${l.digest}</td><td><code>${l.mediaType}</code></td><td class="num" title="${l.size} bytes">${formatBytes(l.size)}</td></tr>
`)}</tbody></table>`;
}

/** Commands to copy (selected whole on a click by CSS: the CSP allows no script, so there is no copy button). */
function pullCommands(t: PullTarget, repo: string, reference: string, digest: string, index: boolean): Html {
  const byTag = reference.includes(':') ? `@${reference}` : `:${reference}`;
  const image = `${t.host}/${repo}${byTag}`;
  const file = `${repo.split('/').pop()}-${reference.includes(':') ? reference.slice(reference.indexOf(':') + 1, reference.indexOf(':') + 13) : reference}.tar`;
  const lines = [
    `docker pull ${image}`,
    `podman pull ${t.insecure ? '--tls-verify=false ' : ''}${image}`,
    `skopeo copy ${index ? '--all ' : ''}${t.insecure ? '--src-tls-verify=false ' : ''}docker://${image} oci-archive:${file}`,
  ];
  if (byTag.startsWith(':')) lines.push(`docker pull ${t.host}/${repo}@${digest}`);
  return html`<div id="pull">${lines.map((l) => html`<code class="cmd">${l}</code>`)}</div>
${t.insecure ? html`<p class="muted">This registry is served over plain HTTP: docker needs it listed under <code>insecure-registries</code>.</p>` : ''}`;
}

/** An artifact's type; the core gives an ordinary image its config's type, which says nothing here. */
function artifact(type: string | undefined): string | undefined {
  return type === 'application/vnd.oci.image.config.v1+json' ? undefined : type;
}

function short(digest: string): string {
  return digest.slice(0, digest.indexOf(':') + 13);
}

export function errorPage(title: string, message: string): Html {
  return html`<h1>${title}</h1><p>${message}</p><p><a href="/ui/">Back to the repositories</a></p>`;
}
