#!/usr/bin/env node
// Stage the build context of Berth's image (etc/container/Containerfile) in DIR: a tree copied onto the image's / in
// one COPY (each build step copies the whole file system on docker's vfs driver): /opt/berth with package.json, the
// built dist/, the native addon if it was built and the production dependencies' closure copied from node_modules
// (offline: no registry needed, and the image gets exactly the versions the tests ran with); /usr/local/bin/berth;
// the empty mount points /conf, /tls and /storage.
//
//   node tools/container-context.mjs DIR        (after npm run build)
import { chmodSync, cpSync, existsSync, mkdirSync, readFileSync, realpathSync, symlinkSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = process.argv[2];
if (!out) {
  process.stderr.write('usage: node tools/container-context.mjs DIR\n');
  process.exit(2);
}
if (!existsSync(join(root, 'dist', 'cli.js'))) {
  process.stderr.write('container-context: dist/cli.js is missing: run npm run build first\n');
  process.exit(1);
}
const tree = join(out, 'root');
const app = join(tree, 'opt', 'berth');
mkdirSync(app, { recursive: true });
for (const d of ['conf', 'tls', 'storage', 'usr/local/bin']) mkdirSync(join(tree, d), { recursive: true });
symlinkSync('/opt/berth/dist/cli.js', join(tree, 'usr', 'local', 'bin', 'berth'));
cpSync(join(root, 'package.json'), join(app, 'package.json'));
cpSync(join(root, 'dist'), join(app, 'dist'), { recursive: true });
chmodSync(join(app, 'dist', 'cli.js'), 0o755);
cpSync(join(root, 'etc', 'container', 'Containerfile'), join(out, 'Containerfile'));
const addon = join(root, 'native', 'build', 'Release', 'berth_sha256.node');
if (existsSync(addon)) cpSync(addon, join(app, 'native', 'build', 'Release', 'berth_sha256.node'));

// Node's lookup: a dependency of the package in `from` is the nearest node_modules/<name> above it.
const modules = realpathSync(join(root, 'node_modules'));
const seen = new Set();
function resolve(name, from) {
  for (let d = from; d.startsWith(modules + '/'); d = dirname(d)) {
    if (existsSync(join(d, 'node_modules', name, 'package.json'))) return join(d, 'node_modules', name);
  }
  return existsSync(join(modules, name, 'package.json')) ? join(modules, name) : undefined;
}
function visit(pkgDir) {
  const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
  const deps = { ...pkg.dependencies, ...pkg.optionalDependencies };
  for (const name of Object.keys(deps)) {
    const dir = resolve(name, pkgDir);
    if (!dir) {
      if (name in (pkg.optionalDependencies ?? {})) continue;
      throw new Error(`container-context: ${name} (needed by ${pkg.name}) is not installed`);
    }
    if (seen.has(dir)) continue;
    seen.add(dir);
    visit(dir);
  }
}
visit(root);
for (const dir of seen) cpSync(dir, join(app, 'node_modules', relative(modules, dir)), { recursive: true, dereference: true });
process.stdout.write(`${out}\n`);
