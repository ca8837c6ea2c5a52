#!/bin/sh
# Installs what the benchmark drives, on top of pullproxy's own build and run
# dependencies (scripts/install-deps.sh): nginx (the static-file and
# proxy_cache peers; the front with BENCH_FRONT=nginx), wrk (the manifest
# load), docker-registry (upstream and proxy-mode peer), curl, openssl and
# python3 (the clients and the driver). Idempotent: installs only what is
# missing, and leaves the packaged services stopped and disabled (the
# benchmark starts its own instances on loopback ports).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
"$here/../scripts/install-deps.sh"
pkgs="nginx wrk docker-registry curl openssl python3 procps coreutils"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
for svc in nginx docker-registry; do
	systemctl disable --now "$svc" >/dev/null 2>&1 ||
		invoke-rc.d "$svc" stop >/dev/null 2>&1 || true
done
