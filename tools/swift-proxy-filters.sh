# Sourced by tools/swift-aio.sh and tools/keystone-aio.sh: the [filter:*] sections both Swift proxies share
# (each adds its own auth filter: tempauth, or authtoken + keystoneauth).
swift_common_filters() {
  cat <<'EOF2'
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:11211
# Swift's defaults (2 connections per worker, 1-s pool timeout, a server skipped after 10 errors a minute) turn a
# busy test machine into tempauth 503s for everyone: more connections, longer waits, no skipping on loopback.
memcache_max_connections = 16
pool_timeout = 5
io_timeout = 5
connect_timeout = 2
error_suppression_limit = 1000000
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:tempurl]
use = egg:swift#tempurl
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
EOF2
}
