#!/bin/bash
# pullproxy against nginx (static file, proxy_cache) and docker-registry
# (proxy mode), side by side on 127.0.0.1, in one run. See bench/README.md.
#   bench/run.sh                        every scenario
#   bench/run.sh warm cold ...          a subset: warm cold manifests memory churn burst pacing
# Prints the report and writes it to bench/results/latest.txt. Exit status 0
# when the run completed (whatever the targets say), 1 when it could not.
# Bounded: bench.py stops starting work after BENCH_BUDGET_S (570 s) and the
# whole run is killed after BENCH_HARD_TIMEOUT_S (660 s). Temporary files go
# to a directory under TMPDIR (/tmp) that is removed at the end, as are the
# clients' files under /dev/shm. PULLPROXY_BIN=PATH benchmarks that binary
# instead of building build/pullproxy. More knobs in bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

for a in "$@"; do
	case $a in
	warm|cold|manifests|memory|churn|burst|pacing) ;;
	-h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "run.sh: unknown scenario '$a' (warm cold manifests memory churn burst pacing)" >&2; exit 2 ;;
	esac
done

bench/install-deps.sh

# Build; if the tree does not build (someone mid-edit), benchmark the binary
# that is there and say so in the report.
build_status=fresh
if [ ! -f build/build.ninja ]; then
	meson setup build --buildtype=release >/dev/null 2>&1 || true
fi
blog=/tmp/pullproxy-bench-build.$$.log
tries=0
[ -n "${PULLPROXY_BIN:-}" ] && build_status="not built (PULLPROXY_BIN)"
until [ -n "${PULLPROXY_BIN:-}" ] || ninja -C build pullproxy >"$blog" 2>&1; do
	tries=$((tries + 1))
	if [ -x build/pullproxy ]; then
		build_status="STALE: ninja failed, existing build/pullproxy from $(date -r build/pullproxy '+%Y-%m-%d %H:%M')"
		echo "run.sh: build failed (tail below); benchmarking the existing build/pullproxy" >&2
		tail -5 "$blog" >&2
		break
	fi
	if [ $tries -ge 4 ]; then
		tail -20 "$blog" >&2
		rm -f "$blog"
		echo "run.sh: build failed and there is no build/pullproxy" >&2
		exit 1
	fi
	echo "run.sh: build failed and there is no build/pullproxy (tree mid-edit?); retrying in 20 s" >&2
	sleep 20
done
rm -f "$blog"

work=$(mktemp -d "${TMPDIR:-/tmp}/pullproxy-bench.XXXXXX")
pid=""
cleanup() {
	trap - EXIT INT TERM HUP
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		# timeout(1) leads its own process group: bench.py and every server.
		kill -TERM -- "-$pid" 2>/dev/null || true
		i=0
		while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do
			sleep 0.2; i=$((i + 1))
		done
		kill -KILL -- "-$pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

timeout -k 20 "${BENCH_HARD_TIMEOUT_S:-660}" /usr/bin/python3 bench/bench.py \
	--root "$root" --work "$work" --build-status "$build_status" "$@" &
pid=$!
rc=0
wait "$pid" || rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
	echo "run.sh: hard timeout (${BENCH_HARD_TIMEOUT_S:-660} s) reached; the report so far is in bench/results/latest.txt (latest.txt.partial if it was killed)" >&2
fi
exit "$rc"
