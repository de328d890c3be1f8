/**
 * HTML built only through the `html` tagged template: every interpolated value is escaped unless it is itself
 * an `Html` made by this template, so a tag, an annotation or a repository name can never become markup.
 */

export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (c) => ENTITIES[c]);
}

type Value = Html | string | number | boolean | null | undefined | Value[];

function render(v: Value): string {
  if (v === null || v === undefined || v === false || v === true) return '';
  if (v instanceof Html) return v.text;
  if (Array.isArray(v)) return v.map(render).join('');
  return escapeHtml(String(v));
}

export function html(strings: TemplateStringsArray, ...values: Value[]): Html {
  let out = strings[0];
  for (let i = 0; i < values.length; i++) out += render(values[i]) + strings[i + 1];
  return new Html(out);
}

/** A URL path under the page's prefix, each segment percent-encoded (repository names keep their slashes). */
export function href(...segments: string[]): string {
  // ':' stays as it is (digests read better, and it is allowed in a path segment).
  return '/ui/' + segments.map((s) => s.split('/').map((p) => encodeURIComponent(p).replace(/%3A/g, ':')).join('/')).join('/');
}

/** Bytes as people read them (binary units, one decimal), with the exact count kept for a title attribute. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = -1;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(1)} ${units[u]}`;
}

/** A time as UTC, to the second: "2026-12-05 07:01:02 UTC". */
export function formatTime(d: Date): string {
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

/** The page shell: a same-origin stylesheet (the CSP allows no inline style) and no script at all. */
export function layout(title: string, body: Html, opts: { who?: string; signOut?: boolean } = {}): string {
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title} · Berth</title>
<link rel="stylesheet" href="/ui/style.css">
<link rel="icon" href="/ui/icon.svg">
</head>
<body>
<header><a class="brand" href="/ui/">Berth</a>${opts.who ? html`<span class="who">${opts.who}</span>` : ''}${opts.signOut ? html`<a href="/ui/signout">Sign out</a>` : ''}</header>
<main>
${body}
</main>
</body>
</html>
`.text;
}

/** The tab's icon, same-origin (the CSP allows no data: URL): a dark blue square. */
export const ICON = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#1f3a5f"/></svg>';

export const STYLE = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{display:flex;gap:1.2em;align-items:baseline;padding:.7em 1.5em;background:#1f3a5f;color:#fff}
header a{color:#fff}
.brand{font-weight:600;font-size:1.15em;text-decoration:none;margin-right:auto}
main{padding:1em 1.5em;max-width:80em}
h1{font-size:1.35em;margin:.3em 0 .6em}
h2{font-size:1.1em;margin:1.4em 0 .5em}
a{color:#1a5fb4}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{border:1px solid #d8dde3;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}
td.num{text-align:right;white-space:nowrap}
code,.digest{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.92em;word-break:break-all}
.cmd{display:block;user-select:all;background:#fff;border:1px solid #d8dde3;padding:.4em .6em;margin:.2em 0 .6em;white-space:pre-wrap}
.muted{color:#5c6670}
.error{color:#a51d2d;font-weight:600}
form{background:#fff;border:1px solid #d8dde3;padding:1em;max-width:22em}
label{display:block;margin:.5em 0 .2em}
input[type=text],input[type=password]{width:100%;box-sizing:border-box;padding:.35em}
button{margin-top:.9em;padding:.4em 1.2em}
nav.crumbs{margin-bottom:.4em}
`;
