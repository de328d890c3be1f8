#!/usr/bin/env bash
# A Debian root file system with this machine's Node 20, as a tar, for building Berth's image where no registry
# serves base images (the test suite; Debian's own nodejs is 18). Prints the tar's path. Built once per machine with
# debootstrap against the apt source this machine uses, and cached under $BERTH_ROOTFS_CACHE (default
# /var/cache/berth-test) by a key of this script, the suite, the mirror and the Node binary.
#
#   tools/container-rootfs.sh        # -> /var/cache/berth-test/rootfs-<key>.tar
#
# Needs root and debootstrap. Users with internet images build FROM node:20-bookworm-slim instead.
set -euo pipefail
cd "$(dirname "$0")/.."

suite=bookworm
cache=${BERTH_ROOTFS_CACHE:-/var/cache/berth-test}
node_bin=$(readlink -f "$(command -v node)")

# The Debian mirror apt uses here: the first deb822 URIs line or one-line deb entry for debian (not -security), or
# $BERTH_DEBIAN_MIRROR. With neither, stop: the project names no package host of its own choosing.
mirror=${BERTH_DEBIAN_MIRROR:-$(
  { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'; } |
    grep -v -- '-security' | grep -m1 '/debian/\?$' || true
)}
if [ -z "$mirror" ]; then
  echo "container-rootfs: the apt configuration (/etc/apt/sources.list, /etc/apt/sources.list.d/) names no Debian mirror; set BERTH_DEBIAN_MIRROR to one" >&2
  exit 1
fi

key=$( { cat "$0"; echo "$suite $mirror"; "$node_bin" --version; stat -c %s "$node_bin"; } | sha256sum | cut -c1-16)
tar_file="$cache/rootfs-$key.tar"
if [ -s "$tar_file" ]; then echo "$tar_file"; exit 0; fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "container-rootfs: debootstrap $suite from $mirror (about 1.5 min, once per machine)" >&2
debootstrap --variant=minbase "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log" >&2; exit 1; }
# Node: the machine's own binary (its libraries, libstdc++ and libc, are in minbase).
install -m 0755 "$node_bin" "$work/root/usr/local/bin/node"
chroot "$work/root" /usr/local/bin/node --version >/dev/null
# Leaner image: no apt lists or caches, no docs.
rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/"*.bin "$work/root/var/cache/apt/archives/"*.deb \
  "$work/root/usr/share/doc" "$work/root/usr/share/man" "$work/root/usr/share/locale"
tar -C "$work/root" --numeric-owner -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$tar_file"
echo "$tar_file"
