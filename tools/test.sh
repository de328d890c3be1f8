#!/usr/bin/env bash
# The project's one test command (`npm test`): brings up what the tests need, runs every suite, and ends with
# "N passed, M failed". Real parts only: Swift from Debian's packages (tools/swift-aio.sh), Keystone
# (tools/keystone-aio.sh, started by its suite), skopeo for e2e tests.
set -uo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v skopeo >/dev/null || need_apt+=(skopeo)
command -v podman >/dev/null || need_apt+=(podman)
command -v buildah >/dev/null || need_apt+=(buildah)
command -v containerd >/dev/null || need_apt+=(containerd)
command -v curl >/dev/null || need_apt+=(curl)
# The browser test/e2e/web.test.ts drives (through playwright-core, which downloads no browser of its own)
command -v chromium >/dev/null || need_apt+=(chromium)
# A private Docker engine (test/helpers/docker.ts), its busybox base image, and the root file system of Berth's
# image (tools/container-rootfs.sh)
command -v dockerd >/dev/null || need_apt+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || need_apt+=(busybox-static)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v openssl >/dev/null || need_apt+=(openssl)
# The peer registry tools/bench compares against (test/e2e/bench.test.ts runs it once, tiny)
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
# HAProxy in front of several processes (test/e2e/balancer.test.ts); memcached for the lock service (Swift's too)
[ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
command -v memcached >/dev/null || need_apt+=(memcached)
command -v swift-proxy-server >/dev/null || need_apt+=(swift swift-proxy swift-object swift-container swift-account python3-swift memcached)
# Keystone for test/e2e/keystone.test.ts: the same list as tools/keystone-aio.sh (which installs them too if missing)
command -v keystone-manage >/dev/null || need_apt+=(keystone python3-keystonemiddleware uwsgi-core uwsgi-plugin-python3)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "test: installing ${need_apt[*]}" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}") >/tmp/berth-apt.log 2>&1 \
      || { echo "test: apt-get install failed, see /tmp/berth-apt.log" >&2; tail -20 /tmp/berth-apt.log >&2; }
  else
    echo "test: missing ${need_apt[*]} (run as root to install)" >&2
  fi
fi

npm run build >/dev/null || { echo "test: build failed" >&2; echo "0 passed, 1 failed"; exit 1; }

# The Swift suites start it themselves too (idempotent); starting it here keeps that out of test timings.
tools/swift-aio.sh start >/dev/null || echo "test: Swift did not start; the Swift suites will fail" >&2

report=$(mktemp /tmp/berth-vitest.XXXXXX.json)
npx vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@"
status=$?
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const failed = r.numFailedTests + (r.numFailedTestSuites && !r.numFailedTests ? r.numFailedTestSuites : 0);
  console.log(`${r.numPassedTests} passed, ${failed} failed`);
' "$report" 2>/dev/null || { echo "0 passed, 1 failed"; status=1; }
rm -f "$report"
exit $status
