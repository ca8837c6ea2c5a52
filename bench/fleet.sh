#!/bin/bash
# Fleet benchmark: N pullproxy processes (16, then 32) pulling the same cold
# image at once from one docker-registry, without and with fleet mode, and
# one layer wanted by every node with the fan-out K limited.
#   bench/fleet.sh [--layer-mib M] [--layers L] [--big-mib B] [--link-mbit B]
#   FLEET_NODES="16 32" (the default) sets the fleet sizes
# Writes bench/results/fleet.txt. Bounded: killed after 170 s. Everything
# listens on 127.0.0.x; the work directory (under TMPDIR) is removed at
# the end. PULLPROXY_BIN=PATH benchmarks that binary instead of a release
# build in build-bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PULLPROXY_BIN:-}" ]; then
	[ -f build-bench/build.ninja ] ||
		meson setup build-bench --buildtype=release >/dev/null
	ninja -C build-bench pullproxy >/dev/null
	PULLPROXY_BIN=$PWD/build-bench/pullproxy
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/pullproxy-fleet.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p bench/results
# Each run has mount and network namespaces of its own: the members are a
# name in a private /etc/hosts, and the links are tc classes on a private
# lo (bench/fleet.py says why). FLEET_NODES: the fleet sizes, one run each.
export PULLPROXY_BIN work
timeout -k 10 170 bash -c '
for n in ${FLEET_NODES:-16 32}; do
	unshare --mount --net /usr/bin/python3 bench/fleet.py \
		--binary "$PULLPROXY_BIN" --work "$work/$n" --nodes "$n" \
		--out "$work/fleet-$n.txt" "$@" || exit 1
done' fleet "$@"
for n in ${FLEET_NODES:-16 32}; do
	cat "$work/fleet-$n.txt"
	echo
done >bench/results/fleet.txt
