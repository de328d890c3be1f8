#!/usr/bin/env bash
# A single-node OpenStack Swift from Debian's packages, for tests and benchmarks: tempauth (test:tester/testing),
# one replica, one device, on 127.0.0.1:8080. Swift's SLO defaults (rate limiting of small segments) are kept, so
# the driver is tested against what a production cluster does.
#
#   tools/swift-aio.sh start     configure (first time) and start; idempotent; prints the clouds.yaml path
#   tools/swift-aio.sh stop      stop every server it started
#   tools/swift-aio.sh status    exit 0 when the proxy answers a tempauth login
#   tools/swift-aio.sh env       print export lines for a shell: eval "$(tools/swift-aio.sh env)"
#
# Environment: BERTH_SWIFT_DIR (default /tmp/berth-swift), BERTH_SWIFT_PORT (default 8080).
# The clouds.yaml it writes names the cloud "berth-test" (auth_type v1password).
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/swift-proxy-filters.sh"

BASE=${BERTH_SWIFT_DIR:-/tmp/berth-swift}
PORT=${BERTH_SWIFT_PORT:-8080}
ETC=$BASE/etc
RUN=$BASE/run
LOG=$BASE/log
SRV=$BASE/srv
PY=/usr/bin/python3
SERVERS=(object container account proxy)

say() { echo "swift-aio: $*" >&2; }

healthy() {
  curl -fsS -o /dev/null --max-time 3 -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' \
    "http://127.0.0.1:$PORT/auth/v1.0" 2>/dev/null
}

ensure_packages() {
  command -v swift-proxy-server >/dev/null && command -v memcached >/dev/null && return 0
  [ "$(id -u)" = 0 ] || { say "Swift is not installed; as root: apt-get install swift swift-proxy swift-object swift-container swift-account python3-swift memcached"; exit 1; }
  say "installing Swift from Debian's packages"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    swift swift-proxy swift-object swift-container swift-account python3-swift memcached curl) >"$BASE.apt.log" 2>&1 \
    || { say "apt-get failed, see $BASE.apt.log"; exit 1; }
}

# Swift 2.30 reads the hash prefix/suffix from /etc/swift/swift.conf whatever swift_dir says.
ensure_swift_conf() {
  if [ -f /etc/swift/swift.conf ] && grep -q '^swift_hash_path_suffix *= *[^ ]' /etc/swift/swift.conf; then return 0; fi
  mkdir -p /etc/swift
  cat >/etc/swift/swift.conf <<'EOF'
[swift-hash]
swift_hash_path_suffix = berth-test-suffix
swift_hash_path_prefix = berth-test-prefix
[storage-policy:0]
name = Policy-0
default = yes
EOF
}

configure() {
  mkdir -p "$ETC" "$RUN" "$LOG" "$SRV/d1"
  local common="[DEFAULT]
bind_ip = 127.0.0.1
devices = $SRV
mount_check = false
swift_dir = $ETC
user = $(id -un)
log_name = %s
log_facility = LOG_LOCAL0
log_level = WARNING
"
  printf '%s' "$common" | sed 's/%s/object/' >"$ETC/object-server.conf"
  cat >>"$ETC/object-server.conf" <<EOF
bind_port = 6200
workers = 2
[pipeline:main]
pipeline = object-server
[app:object-server]
use = egg:swift#object
[object-replicator]
[object-updater]
[object-auditor]
EOF
  printf '%s' "$common" | sed 's/%s/container/' >"$ETC/container-server.conf"
  cat >>"$ETC/container-server.conf" <<EOF
bind_port = 6201
workers = 1
[pipeline:main]
pipeline = container-server
[app:container-server]
use = egg:swift#container
[container-replicator]
[container-updater]
[container-auditor]
[container-sync]
EOF
  printf '%s' "$common" | sed 's/%s/account/' >"$ETC/account-server.conf"
  cat >>"$ETC/account-server.conf" <<EOF
bind_port = 6202
workers = 1
[pipeline:main]
pipeline = account-server
[app:account-server]
use = egg:swift#account
[account-replicator]
[account-auditor]
[account-reaper]
EOF
  cat >"$ETC/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $PORT
swift_dir = $ETC
user = $(id -un)
workers = 2
log_name = proxy
log_level = WARNING
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl tempauth copy slo dlo proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true
[filter:tempauth]
use = egg:swift#tempauth
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin
user_test2_tester2 = testing2 .admin
user_test_reader = reading
token_life = 86400
$(swift_common_filters)
EOF
  local kind port
  for kind in object container account; do
    case $kind in object) port=6200 ;; container) port=6201 ;; account) port=6202 ;; esac
    if [ ! -f "$ETC/$kind.ring.gz" ]; then
      (cd "$ETC" && swift-ring-builder $kind.builder create 10 1 1 >/dev/null &&
        swift-ring-builder $kind.builder add r1z1-127.0.0.1:$port/d1 1 >/dev/null &&
        swift-ring-builder $kind.builder rebalance >/dev/null) || { say "ring $kind failed"; exit 1; }
    fi
  done
  cat >"$BASE/clouds.yaml" <<EOF
clouds:
  berth-test:
    auth_type: v1password
    auth:
      auth_url: http://127.0.0.1:$PORT/auth/v1.0
      username: test:tester
      password: testing
EOF
}

start() {
  local i
  if healthy; then say "already running on 127.0.0.1:$PORT"; echo "$BASE/clouds.yaml"; return 0; fi
  ensure_packages
  ensure_swift_conf
  local before
  before=$({ cat "$ETC/proxy-server.conf" 2>/dev/null || true; } | md5sum)
  configure
  # A proxy running with an older configuration (the reason it is unhealthy, perhaps) starts again with this one.
  if [ "$before" != "$(md5sum <"$ETC/proxy-server.conf")" ] && [ -f "$RUN/proxy.pid" ]; then
    kill -- "-$(cat "$RUN/proxy.pid")" 2>/dev/null || kill "$(cat "$RUN/proxy.pid")" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$(cat "$RUN/proxy.pid")" 2>/dev/null || break; sleep 0.1; done
  fi
  if ! (exec 3<>/dev/tcp/127.0.0.1/11211) 2>/dev/null; then
    memcached -d -l 127.0.0.1 -p 11211 -m 64 -u "$(id -un)" -P "$RUN/memcached.pid"
    for i in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/11211) 2>/dev/null && break; sleep 0.1; done
  fi
  local s
  for s in "${SERVERS[@]}"; do
    if [ -f "$RUN/$s.pid" ] && kill -0 "$(cat "$RUN/$s.pid")" 2>/dev/null; then continue; fi
    setsid "$PY" "/usr/bin/swift-$s-server" "$ETC/$s-server.conf" </dev/null >>"$LOG/$s.log" 2>&1 &
    echo $! >"$RUN/$s.pid"
  done
  for i in $(seq 1 100); do
    if healthy; then say "up on 127.0.0.1:$PORT (clouds.yaml: $BASE/clouds.yaml)"; echo "$BASE/clouds.yaml"; return 0; fi
    sleep 0.2
  done
  say "Swift did not answer within 20 s; logs in $LOG"
  tail -n 20 "$LOG"/*.log >&2 || true
  exit 1
}

stop() {
  local s pid i
  for s in "${SERVERS[@]}" memcached; do
    [ -f "$RUN/$s.pid" ] || continue
    pid=$(cat "$RUN/$s.pid")
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    # Wait, so that a start right after this finds the ports free.
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$RUN/$s.pid"
  done
  say "stopped"
}

# What a shell needs to reach this Swift: the clouds.yaml (Berth and openstacksdk read it), the tempauth URL, and
# the storage URL when Swift is up to say it. Credentials stay in clouds.yaml.
print_env() {
  [ -f "$BASE/clouds.yaml" ] || { say "no clouds.yaml in $BASE yet; run $0 start"; exit 1; }
  printf 'export OS_CLIENT_CONFIG_FILE=%q\n' "$BASE/clouds.yaml"
  printf 'export OS_CLOUD=%q\n' berth-test
  printf 'export ST_AUTH=%q\n' "http://127.0.0.1:$PORT/auth/v1.0"
  local url
  url=$(curl -fsS -o /dev/null -D - --max-time 3 -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' \
    "http://127.0.0.1:$PORT/auth/v1.0" 2>/dev/null | tr -d '\r' | sed -n 's/^x-storage-url: *//Ip') || true
  if [ -n "$url" ]; then printf 'export OS_STORAGE_URL=%q\n' "$url"; else say "Swift is not answering; OS_STORAGE_URL left out"; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) healthy ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
