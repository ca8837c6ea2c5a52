#!/bin/sh
# Installs what pullproxy needs from Debian 12's archive.
#   install-deps.sh          build and run (demo: a local registry and skopeo)
#   install-deps.sh --test   also what the test suite drives (containerd, ctr, pytest, sanitizers,
#                            clang and libFuzzer for the fuzz stage)
#   install-deps.sh --bench  also what bench/ drives (nginx peers, wrk)
# Idempotent: apt-get skips what is already there.
set -eu
build="meson ninja-build pkg-config gcc libevent-dev libcurl4-openssl-dev libssl-dev
       liblmdb-dev libjansson-dev libinih-dev ca-certificates curl"
demo="docker-registry skopeo umoci"
test="libcmocka-dev python3 python3-pytest python3-yaml containerd runc openssl lmdb-utils
      nodejs clang libclang-rt-14-dev llvm"
pkgs="$build $demo"
bench="nginx wrk openssl python3 procps coreutils"
[ "${1:-}" = "--test" ] && pkgs="$pkgs $test"
[ "${1:-}" = "--bench" ] && pkgs="$pkgs $bench"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
# The Kubernetes manifests' offline schema check (tests/kubernetes) uses
# kubernetes-models and its prometheus-operator models (PodMonitor,
# PrometheusRule) from npm; without them that check is skipped, not failed.
npm_deps() {
	[ "${1:-}" = "--test" ] || return 0
	dir=$(dirname "$0")/../tests/kubernetes
	[ -d "$dir/node_modules/@kubernetes-models/prometheus-operator" ] && return 0
	command -v npm >/dev/null 2>&1 || { apt-get update -qq &&
		apt-get install -y -qq --no-install-recommends npm >/dev/null; } || true
	npm ci --prefix "$dir" --no-audit --no-fund >/dev/null 2>&1 ||
		echo "install-deps.sh: npm ci in tests/kubernetes failed: the manifests' schema check will be skipped" >&2
}
# promtool checks and unit-tests the alert rules (deploy/kubernetes/
# monitoring). Debian ships it only inside the prometheus package, whose
# server would start on install: only promtool (one static binary) is
# taken out of the package, into tests/kubernetes/bin.
promtool_dep() {
	[ "${1:-}" = "--test" ] || return 0
	bin=$(dirname "$0")/../tests/kubernetes/bin
	[ -x "$bin/promtool" ] && return 0
	tmp=$(mktemp -d)
	chmod 755 "$tmp"
	if (cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 ||
	    { apt-get update -qq && apt-get download prometheus >/dev/null 2>&1; }; } &&
	    dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool); then
		mkdir -p "$bin" && install -m 0755 "$tmp/usr/bin/promtool" "$bin/promtool"
	else
		echo "install-deps.sh: no promtool: the alert rules are parsed, not run through promtool" >&2
	fi
	rm -rf "$tmp"
}
[ -z "$missing" ] && { npm_deps "${1:-}"; promtool_dep "${1:-}"; exit 0; }
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# docker-registry, containerd and nginx ship services we start ourselves,
# on our own ports.
apt-get install -y -qq --no-install-recommends $missing >/dev/null
for svc in docker-registry containerd nginx; do
	systemctl disable --now "$svc" >/dev/null 2>&1 ||
		invoke-rc.d "$svc" stop >/dev/null 2>&1 || true
done
npm_deps "${1:-}"
promtool_dep "${1:-}"
