#!/bin/bash
# Soak: pullproxy under mixed warm and cold pulls with faults injected by
# the fake ACR, for SOAK_SECONDS (default 600). Not part of CI. Samples
# pullproxy's RssAnon and open fds, attributes every client error to an
# injected fault or calls it unexplained. See bench/README.md.
#   bench/soak.sh                   10 minutes
#   SOAK_SECONDS=60 bench/soak.sh   a shorter run
# Prints the report and writes it to bench/results/soak.txt. Exit status
# 0 when the run completed with no unexplained error and no wrong bytes,
# 1 otherwise. PULLPROXY_BIN=PATH soaks that binary instead of building
# build/pullproxy (release) and its fakeacr. Temporary files go to a
# directory under TMPDIR (/tmp), removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
seconds=${SOAK_SECONDS:-600}

case ${1:-} in
-h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
"") ;;
*) echo "soak.sh: no arguments (SOAK_SECONDS sets the length)" >&2; exit 2 ;;
esac

if [ -z "${PULLPROXY_BIN:-}" ]; then
	[ -f build/build.ninja ] || meson setup build --buildtype=release >/dev/null
	ninja -C build pullproxy tests/fakeacr/fakeacr >/dev/null
	PULLPROXY_BIN=$root/build/pullproxy
fi
export FAKEACR_BIN=${FAKEACR_BIN:-$(dirname "$PULLPROXY_BIN")/tests/fakeacr/fakeacr}
[ -x "$FAKEACR_BIN" ] || { echo "soak.sh: no fakeacr at $FAKEACR_BIN" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/pullproxy-soak.XXXXXX")
pid=""
cleanup() {
	trap - EXIT INT TERM HUP
	# soak.py stops pullproxy and the fake on SIGTERM (timeout -k: the rest).
	{ [ -n "$pid" ] && kill -TERM -- "-$pid" 2>/dev/null && wait "$pid"; } || true
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Its own process group (timeout leads one): nothing outlives the run.
timeout -k 20 $((seconds + 240)) /usr/bin/python3 bench/soak.py --root "$root" \
	--work "$work" --pullproxy "$PULLPROXY_BIN" --seconds "$seconds" \
	--out bench/results/soak.txt &
pid=$!
rc=0
wait "$pid" || rc=$?
[ "$rc" -eq 0 ] || exit 1
grep -q ", 0 unexplained" bench/results/soak.txt &&
	grep -q "^wrong bytes *0 " bench/results/soak.txt
