#!/usr/bin/env bash
# A real Keystone v3 from Debian's packages (keystone 22, sqlite, fernet tokens, uwsgi) in front of a second Swift
# proxy, for tests of Berth's Keystone logins: Keystone on 127.0.0.1:5050, and a Swift proxy on 127.0.0.1:8081 with
# authtoken + keystoneauth that shares the servers (rings, account/container/object servers, memcached) of the
# single-node Swift from tools/swift-aio.sh (started first if it is not up; its 8080 proxy is left alone).
# Keystone holds a project "registry", a user "reg" (member there) and an application credential "registry-ci"
# that reg created itself. See ../shared/facts/keystone.md for how each piece was found to work.
#
#   tools/keystone-aio.sh start     install (first time), configure, start; idempotent; prints the clouds.yaml path
#   tools/keystone-aio.sh stop      stop Keystone and the 8081 proxy (Swift on 8080 keeps running)
#   tools/keystone-aio.sh status    exit 0 when an application-credential login works and its token reaches Swift
#   tools/keystone-aio.sh env       print export lines for a shell: eval "$(tools/keystone-aio.sh env)"
#
# Environment: BERTH_KEYSTONE_DIR (default /tmp/berth-keystone), BERTH_SWIFT_DIR (as tools/swift-aio.sh).
# The clouds.yaml it writes has the clouds ks-password (auth_type password), ks-appcred (v3applicationcredential
# by id) and ks-appcred-name (by name and user). Passwords and secrets are random, kept in files under the state
# directory (mode 600) and never printed.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/swift-proxy-filters.sh"
BASE=${BERTH_KEYSTONE_DIR:-/tmp/berth-keystone}
SWIFT_BASE=${BERTH_SWIFT_DIR:-/tmp/berth-swift}
KS_PORT=5050
PROXY_PORT=8081
KS_URL=http://127.0.0.1:$KS_PORT
PROXY_URL=http://127.0.0.1:$PROXY_PORT
ETC=$BASE/etc
RUN=$BASE/run
LOG=$BASE/log
PY=/usr/bin/python3
PACKAGES=(keystone python3-keystonemiddleware uwsgi-core uwsgi-plugin-python3 curl)
T0=$(date +%s.%N)

say() { echo "keystone-aio: $*" >&2; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# The logs of the step under way (set by each step), whose last lines a failure shows. None of them holds a
# password or secret; lines known to be noise (keystonemiddleware listing the proxy's own options) are left out.
STEP_LOGS=()
fail() {
  say "$*"
  local f
  for f in "${STEP_LOGS[@]}"; do
    [ -s "$f" ] || continue
    echo "--- $f (last lines)" >&2
    grep -v -e 'is not known to keystonemiddleware' "$f" | tail -n 20 >&2 || true
  done
  exit 1
}

# A pid that is running (a zombie, which an init that does not reap leaves behind, is not).
alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}

keystone_up() { curl -fsS -o /dev/null --max-time 3 "$KS_URL/v3" 2>/dev/null; }
proxy_up() { curl -fsS -o /dev/null --max-time 3 "$PROXY_URL/healthcheck" 2>/dev/null; }

ensure_packages() {
  if command -v keystone-manage >/dev/null && [ -f /usr/lib/uwsgi/plugins/python3_plugin.so ] &&
    [ -f /usr/lib/uwsgi/plugins/http_plugin.so ] && "$PY" -c 'import keystonemiddleware' 2>/dev/null; then
    return 0
  fi
  [ "$(id -u)" = 0 ] || { say "Keystone is not installed; as root: apt-get install --no-install-recommends ${PACKAGES[*]}"; exit 1; }
  say "installing Keystone from Debian's packages"
  # The keystone package's postinst starts its own Keystone (:5000) unless policy-rc.d forbids it.
  local own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
  fi
  local t=$SECONDS ok=1
  STEP_LOGS=("$BASE.apt.log")
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}") \
    >"$BASE.apt.log" 2>&1 || ok=
  [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
  [ -n "$ok" ] || fail "apt-get failed, see $BASE.apt.log"
  say "installed in $((SECONDS - t)) s"
}

# Random passwords, made once and kept with the state (mode 600); an existing file is reused.
ensure_secrets() {
  [ -s "$BASE/secrets.env" ] && return 0
  (umask 077 && "$PY" -c 'import secrets
print("ADMIN_PASSWORD=" + secrets.token_urlsafe(24))
print("REG_PASSWORD=" + secrets.token_urlsafe(24))' >"$BASE/secrets.env")
}

configure() {
  mkdir -p "$ETC" "$RUN" "$LOG"
  chmod 700 "$BASE"
  ensure_secrets
  local admin_password
  admin_password=$(sed -n 's/^ADMIN_PASSWORD=//p' "$BASE/secrets.env")
  cat >"$ETC/keystone.conf" <<EOF
[DEFAULT]
log_dir = $LOG
log_file = keystone.log
use_stderr = false
[database]
connection = sqlite:///$BASE/keystone.db
[token]
provider = fernet
expiration = 3600
[fernet_tokens]
key_repository = $BASE/fernet-keys
[fernet_receipts]
key_repository = $BASE/fernet-keys
[credential]
key_repository = $BASE/credential-keys
[cache]
# In-process cache (one uwsgi worker): token validation and policy lookups cost a second each without it.
enabled = true
backend = dogpile.cache.memory
[identity]
# Cheap bcrypt: every login hashes a password or secret, and this Keystone guards only test data. 72 is bcrypt's
# own limit (a longer maximum only logs a warning at every login).
password_hash_rounds = 4
max_password_length = 72
EOF
  # uwsgi's http router with keep-alive: --http-socket alone closes every connection without saying so, which
  # breaks keep-alive clients. One process, one thread: Keystone's sqlite objects are per thread.
  cat >"$ETC/keystone-uwsgi.ini" <<EOF
[uwsgi]
plugins = python3,http
http = 127.0.0.1:$KS_PORT
http-keepalive = 1
wsgi-file = /usr/bin/keystone-wsgi-public
need-app = true
master = true
processes = 1
threads = 1
die-on-term = true
disable-logging = true
buffer-size = 65535
env = OS_KEYSTONE_CONFIG_FILES=$ETC/keystone.conf
EOF
  local swift_etc=$SWIFT_BASE/etc
  (umask 077 && cat >"$ETC/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $PROXY_PORT
swift_dir = $swift_etc
user = $(id -un)
workers = 1
log_name = proxy-keystone
log_level = WARNING
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl authtoken keystoneauth copy slo dlo proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
www_authenticate_uri = $KS_URL
auth_url = $KS_URL
auth_type = password
username = admin
password = $admin_password
project_name = admin
user_domain_id = default
project_domain_id = default
delay_auth_decision = true
cache = swift.cache
include_service_catalog = false
service_token_roles_required = true
[filter:keystoneauth]
use = egg:swift#keystoneauth
operator_roles = admin, member
$(swift_common_filters)
EOF
  )
}

manage() { env -u PYTHONPATH -u PYTHONHOME "$PY" /usr/bin/keystone-manage --config-file "$ETC/keystone.conf" "$@" >>"$LOG/keystone-manage.log" 2>&1; }

# A fresh database, key repositories and admin, once; the marker is written only when all of it is done.
initialize() {
  [ -f "$BASE/initialized" ] && return 0
  say "initializing Keystone (sqlite, fernet keys, bootstrap)"
  STEP_LOGS=("$LOG/keystone-manage.log" "$LOG/keystone.log")
  if keystone_up || proxy_up; then
    fail "a server answers on $KS_URL or $PROXY_URL but $BASE holds no Keystone state (deleted while it ran?): stop it first"
  fi
  rm -rf "$BASE/keystone.db" "$BASE/keystone.db-wal" "$BASE/keystone.db-shm" "$BASE/fernet-keys" "$BASE/credential-keys" "$BASE/app.env"
  mkdir -p "$BASE/fernet-keys" "$BASE/credential-keys"
  manage db_sync || fail "keystone-manage db_sync failed"
  # Keystone 22 on sqlite keeps a reader open after a write; without WAL the next write waits 5 s and fails.
  "$PY" -c 'import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); m = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]; sys.exit(m != "wal")' \
    "$BASE/keystone.db" || fail "could not switch the Keystone database to WAL"
  manage fernet_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)" || fail "keystone-manage fernet_setup failed"
  manage credential_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)" || fail "keystone-manage credential_setup failed"
  # The password goes by the environment, not the command line (ps would show it).
  OS_BOOTSTRAP_PASSWORD=$(sed -n 's/^ADMIN_PASSWORD=//p' "$BASE/secrets.env") manage bootstrap \
    --bootstrap-username admin --bootstrap-project-name admin --bootstrap-role-name admin \
    --bootstrap-region-id RegionOne \
    --bootstrap-admin-url "$KS_URL/v3/" --bootstrap-internal-url "$KS_URL/v3/" --bootstrap-public-url "$KS_URL/v3/" ||
    fail "keystone-manage bootstrap failed"
  touch "$BASE/initialized"
}

# Start a server in its own session (so stop can signal its whole group); fd 9 (the start lock) is not inherited.
spawn() {
  local name=$1
  shift
  if [ -f "$RUN/$name.pid" ] && alive "$(cat "$RUN/$name.pid")"; then return 0; fi
  setsid env -u PYTHONPATH -u PYTHONHOME "$@" </dev/null >>"$LOG/$name.log" 2>&1 9>&- &
  echo $! >"$RUN/$name.pid"
}

# Wait until `check` passes; fail at once if the server `name` has exited (e.g. its port was taken).
wait_for() {
  local what=$1 check=$2 secs=$3 name=$4 i
  for i in $(seq 1 $((secs * 5))); do
    $check && return 0
    alive "$(cat "$RUN/$name.pid")" || fail "$what exited before answering"
    sleep 0.2
  done
  fail "$what did not answer within $secs s"
}

# Users, project, roles, the object-store endpoints and the application credential, made idempotently over
# Keystone's API; then clouds.yaml. `check` logs in with the application credential and the password and HEADs the
# project's Swift account through 8081. Nothing secret is printed; errors give the request and Keystone's message.
helper() {
  KS_BASE=$BASE KS_URL=$KS_URL PROXY_URL=$PROXY_URL env -u PYTHONPATH -u PYTHONHOME "$PY" - "$@" 9>&- <<'PYEOF'
import json, os, secrets, sys, time, urllib.error, urllib.request

BASE, KS, PROXY = os.environ["KS_BASE"], os.environ["KS_URL"], os.environ["PROXY_URL"]
PROJECT, USER, APPCRED, REGION = "registry", "reg", "registry-ci", "RegionOne"


class Failed(Exception):
    pass


def read_env(name):
    out = {}
    try:
        with open(os.path.join(BASE, name)) as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("=")
                if k:
                    out[k] = v
    except FileNotFoundError:
        pass
    return out


def write_private(name, text):
    path = os.path.join(BASE, name)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def call(method, url, body=None, token=None, expect=(200, 201, 204)):
    """One request; 5xx is tried again (sqlite may still be busy right after a write). Returns (status, headers, json)."""
    if url.startswith("/"):
        url = KS + "/v3" + url
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(4):
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("X-Auth-Token", token)
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                status, headers, raw = res.status, res.headers, res.read()
        except urllib.error.HTTPError as e:
            status, headers, raw = e.code, e.headers, e.read()
        if status >= 500 and attempt < 3:
            time.sleep(0.5 * (attempt + 1))
            continue
        break
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = None
    if expect and status not in expect:
        path = url.split("?")[0]
        msg = (doc or {}).get("error", {}).get("message", "") if isinstance(doc, dict) else ""
        raise Failed(f"{method} {path} answered {status} {msg}".rstrip())
    return status, headers, doc


def auth(identity, scope=None):
    body = {"auth": {"identity": identity}}
    if scope:
        body["auth"]["scope"] = scope
    status, headers, doc = call("POST", "/auth/tokens", body, expect=None)
    if status != 201:
        return status, None, None
    return status, headers["X-Subject-Token"], doc["token"]


def password_identity(name, password):
    return {"methods": ["password"], "password": {"user": {"name": name, "domain": {"id": "default"}, "password": password}}}


def project_scope(name):
    return {"project": {"name": name, "domain": {"id": "default"}}}


def appcred_identity(app):
    return {"methods": ["application_credential"], "application_credential": {"id": app["APPCRED_ID"], "secret": app["APPCRED_SECRET"]}}


def first(path, key, token):
    items = call("GET", path, token=token)[2][key]
    return items[0] if items else None


def setup():
    sec = read_env("secrets.env")
    status, admin, _ = auth(password_identity("admin", sec["ADMIN_PASSWORD"]), project_scope("admin"))
    if not admin:
        raise Failed(f"admin login answered {status}")

    service = first("/services?type=object-store", "services", admin)
    if not service:
        service = call("POST", "/services", {"service": {"type": "object-store", "name": "swift", "enabled": True}}, admin)[2]["service"]
    url = PROXY + "/v1/AUTH_%(project_id)s"
    endpoints = call("GET", f"/endpoints?service_id={service['id']}", token=admin)[2]["endpoints"]
    for iface in ("public", "internal", "admin"):
        have = [e for e in endpoints if e["interface"] == iface and e.get("region_id") == REGION]
        if not have:
            call("POST", "/endpoints", {"endpoint": {"service_id": service["id"], "interface": iface, "url": url, "region_id": REGION, "enabled": True}}, admin)
        elif have[0]["url"] != url:
            call("PATCH", f"/endpoints/{have[0]['id']}", {"endpoint": {"url": url}}, admin)

    project = first(f"/projects?name={PROJECT}&domain_id=default", "projects", admin)
    project = project or call("POST", "/projects", {"project": {"name": PROJECT, "domain_id": "default", "description": "Berth tests"}}, admin)[2]["project"]
    user = first(f"/users?name={USER}&domain_id=default", "users", admin)
    user = user or call("POST", "/users", {"user": {"name": USER, "domain_id": "default", "password": sec["REG_PASSWORD"], "default_project_id": project["id"], "enabled": True}}, admin)[2]["user"]
    member = first("/roles?name=member", "roles", admin)
    if not member:
        raise Failed("Keystone has no role 'member' (bootstrap creates it)")
    call("PUT", f"/projects/{project['id']}/users/{user['id']}/roles/{member['id']}", token=admin)

    status, reg, _ = auth(password_identity(USER, sec["REG_PASSWORD"]), project_scope(PROJECT))
    if status == 401:  # a kept database with a new secrets file: set the password again
        call("PATCH", f"/users/{user['id']}", {"user": {"password": sec["REG_PASSWORD"]}}, admin)
        status, reg, _ = auth(password_identity(USER, sec["REG_PASSWORD"]), project_scope(PROJECT))
    if not reg:
        raise Failed(f"login of user {USER} answered {status}")

    # The application credential: kept while it still works; else made anew, by the user itself (policy: owner).
    app = read_env("app.env")
    if not (app.get("APPCRED_ID") and app.get("APPCRED_SECRET") and auth(appcred_identity(app))[1]):
        for old in call("GET", f"/users/{user['id']}/application_credentials?name={APPCRED}", token=reg)[2]["application_credentials"]:
            call("DELETE", f"/users/{user['id']}/application_credentials/{old['id']}", token=reg)
        cred = call("POST", f"/users/{user['id']}/application_credentials",
                    {"application_credential": {"name": APPCRED, "description": "Berth tests (tools/keystone-aio.sh)"}}, reg)[2]["application_credential"]
        app = {"APPCRED_ID": cred["id"], "APPCRED_SECRET": cred["secret"]}
        write_private("app.env", f"APPCRED_ID={app['APPCRED_ID']}\nAPPCRED_SECRET={app['APPCRED_SECRET']}\n")

    q = json.dumps  # a JSON string is a YAML double-quoted scalar
    common = f"    region_name: {REGION}\n    interface: public\n    identity_api_version: 3\n"
    write_private("clouds.yaml", f"""# Written by tools/keystone-aio.sh: Keystone {KS}, Swift (keystoneauth) {PROXY}.
clouds:
  ks-password:
    auth_type: password
    auth:
      auth_url: {KS}
      username: {USER}
      password: {q(sec['REG_PASSWORD'])}
      project_name: {PROJECT}
      user_domain_name: Default
      project_domain_name: Default
{common}  ks-appcred:
    auth_type: v3applicationcredential
    auth:
      auth_url: {KS}
      application_credential_id: {q(app['APPCRED_ID'])}
      application_credential_secret: {q(app['APPCRED_SECRET'])}
{common}  ks-appcred-name:
    auth_type: v3applicationcredential
    auth:
      auth_url: {KS}
      application_credential_name: {APPCRED}
      application_credential_secret: {q(app['APPCRED_SECRET'])}
      username: {USER}
      user_domain_name: Default
{common}""")


def check():
    sec, app = read_env("secrets.env"), read_env("app.env")
    if not app.get("APPCRED_ID") or not os.path.exists(os.path.join(BASE, "clouds.yaml")):
        raise Failed("not set up")
    logins = [("application credential", appcred_identity(app), None)]
    if sys.argv[2:] == ["full"]:
        logins.append(("password", password_identity(USER, sec["REG_PASSWORD"]), project_scope(PROJECT)))
    for what, identity, scope in logins:
        status, token, body = auth(identity, scope)
        if not token:
            raise Failed(f"{what} login answered {status}")
        urls = [e["url"] for s in body.get("catalog", []) if s["type"] == "object-store"
                for e in s["endpoints"] if e["interface"] == "public" and e.get("region_id") == REGION]
        if not urls:
            raise Failed(f"{what} token has no public object-store endpoint in {REGION}")
        status = call("HEAD", urls[0], token=token, expect=None)[0]
        if status not in (200, 204):
            raise Failed(f"HEAD of the project's account through {PROXY} with the {what} token answered {status}")


try:
    {"setup": setup, "check": check}[sys.argv[1]]()
except Exception as e:  # the messages name requests and statuses, never a secret
    print(f"keystone-aio: {'failed' if isinstance(e, Failed) else type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
PYEOF
}

healthy() { keystone_up && proxy_up && helper check 2>/dev/null; }

start() {
  mkdir -p "$(dirname "$BASE")"
  # One start at a time (a test file and a shell may both start it).
  exec 9>"$BASE.lock"
  flock -w 600 9 || fail "another start holds $BASE.lock"
  if [ -d "$BASE" ] && healthy; then say "already running ($KS_URL, Swift $PROXY_URL; $(elapsed) s)"; echo "$BASE/clouds.yaml"; return 0; fi
  mkdir -p "$BASE"
  ensure_packages
  if ! "$HERE/swift-aio.sh" status 9>&-; then
    "$HERE/swift-aio.sh" start 9>&- >/dev/null || fail "Swift (tools/swift-aio.sh start) did not start"
  fi
  configure
  initialize
  STEP_LOGS=("$LOG/keystone-uwsgi.log" "$LOG/keystone.log")
  if ! keystone_up; then
    spawn keystone-uwsgi uwsgi --ini "$ETC/keystone-uwsgi.ini"
    wait_for "Keystone ($KS_URL)" keystone_up 90 keystone-uwsgi
  fi
  say "Keystone answers ($(elapsed) s); checking users, project, endpoints, application credential"
  helper setup || fail "setting up Keystone's users and endpoints failed"
  STEP_LOGS=("$LOG/proxy-keystone.log" "$LOG/keystone.log")
  if ! proxy_up; then
    spawn proxy-keystone "$PY" /usr/bin/swift-proxy-server "$ETC/proxy-server.conf"
    wait_for "the Swift proxy ($PROXY_URL)" proxy_up 60 proxy-keystone
  fi
  helper check full || fail "a token from Keystone does not reach Swift through $PROXY_URL"
  say "up in $(elapsed) s: Keystone $KS_URL, Swift (keystoneauth) $PROXY_URL (clouds.yaml: $BASE/clouds.yaml)"
  echo "$BASE/clouds.yaml"
}

stop() {
  local s pid i
  for s in proxy-keystone keystone-uwsgi; do
    [ -f "$RUN/$s.pid" ] || continue
    pid=$(cat "$RUN/$s.pid")
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    # Wait, so that a start right after this finds the ports free.
    for i in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    rm -f "$RUN/$s.pid"
  done
  say "stopped (Keystone's state stays in $BASE; Swift on 8080 keeps running)"
}

# What a shell needs to use this Keystone: the clouds.yaml (Berth and openstacksdk read it) and a cloud in it.
print_env() {
  [ -f "$BASE/clouds.yaml" ] || { say "no clouds.yaml in $BASE yet; run $0 start"; exit 1; }
  printf 'export OS_CLIENT_CONFIG_FILE=%q\n' "$BASE/clouds.yaml"
  printf 'export OS_CLOUD=%q\n' ks-appcred
  printf 'export OS_AUTH_URL=%q\n' "$KS_URL"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) { [ -d "$BASE" ] && healthy; } || exit 1 ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
