#!/bin/sh
# The whole suite, as CI runs it: installs what the tests need, builds
# pullproxy twice (release, and ASan+UBSan) and runs `meson test` on both
# at once (suites unit, fuzz and integration; the second with the asan
# setup: most of the suite waits on timers and sockets, so the two halves
# side by side take little more than the slower one), then
# each libFuzzer target for a bounded time on a clang build, and ends with
# "N passed, N failed", counted per test case (tests/summary.py).
set -u
cd "$(dirname "$0")/.."
out=build-tests

scripts/install-deps.sh --test || { echo "0 passed, 1 failed"; exit 1; }

build() {	# build DIR [meson options]
	dir=$1; shift
	# A directory left half set up by an interrupted run is redone.
	[ -f "$dir/build.ninja" ] || { rm -rf "$dir"; meson setup "$dir" "$@" >/dev/null; } ||
		return 1
	ninja -C "$dir" >"$out/$(basename "$dir").build.log" 2>&1 || {
		cat "$out/$(basename "$dir").build.log"; return 1; }
}

# meson test on a build that built; results, measurements and sanitizer
# reports of an earlier run in that directory are dropped first.
check() {	# check DIR [SETUP]: in the background, output to a log
	dir=$1 setup=${2:-}
	rm -rf "$dir"/meson-logs/testlog* "$dir"/meson-logs/pytest \
		"$dir"/meson-logs/sanitizer-* "$dir"/meson-logs/measurements.txt
	# Each half's pytest files apart from the other's, under a short
	# path: containerd's and the tests' unix sockets live there.
	tmp=$(mktemp -d /tmp/pp-tests.XXXXXX) tmps="$tmps $tmp"
	PYTEST_ADDOPTS="--basetemp=$tmp/t" \
		meson test -C "$dir" --no-rebuild --print-errorlogs \
		${setup:+--setup="$setup"} >"$out/$(basename "$dir").test.log" 2>&1 &
	pids="$pids $!" logs="$logs $out/$(basename "$dir").test.log"
	runs="$runs $dir${setup:+:$setup}"
}

rm -rf "$out"
mkdir -p "$out"
failed_builds=0 runs="" pids="" logs="" tmps=""
echo "== release and ASan+UBSan builds"
if build build --buildtype=release; then rel=1
else rel=0 failed_builds=$((failed_builds + 1)); fi
if build build-asan --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false
then asan=1
else asan=0 failed_builds=$((failed_builds + 1)); fi
echo "== meson test on both builds"
[ $rel = 1 ] && check build
[ $asan = 1 ] && check build-asan asan
for p in $pids; do wait "$p"; done
for l in $logs; do echo "== $l"; cat "$l"; done
for t in $tmps; do rm -rf "$t" 2>/dev/null; done

# libFuzzer (clang): each target for a bounded time from its corpus. A
# crash fails it; its input is in build-tests/fuzz/TARGET/crashes/, to be
# fixed and kept in tests/fuzz/regressions/TARGET/.
if command -v clang >/dev/null 2>&1; then
	echo "== fuzzing, ${PP_FUZZ_SECONDS:-10} s per target"
	: >"$out/libfuzzer.txt"
	if (export CC=clang; build build-fuzz --buildtype=debugoptimized -Dfuzz=true \
		-Db_sanitize=address,undefined -Db_lundef=false); then
		for f in build-fuzz/tests/fuzz/fuzz_*; do
			[ -f "$f" ] && [ -x "$f" ] || continue
			n=${f##*/fuzz_} w="$out/fuzz/${f##*/fuzz_}"
			mkdir -p "$w/corpus" "$w/crashes"
			cp tests/fuzz/corpus/"$n"/* tests/fuzz/regressions/"$n"/* "$w/corpus/" 2>/dev/null
			UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 "$f" \
				-max_total_time="${PP_FUZZ_SECONDS:-10}" -timeout=10 \
				-rss_limit_mb=2048 -artifact_prefix="$w/crashes/" "$w/corpus" \
				>"$w/log" 2>&1
			echo "$n $?" >>"$out/libfuzzer.txt"
		done
	else
		failed_builds=$((failed_builds + 1))
	fi
fi

for m in build/meson-logs/measurements.txt build-asan/meson-logs/measurements.txt; do
	[ -s "$m" ] && { echo "== measurements (${m%%/*})"; cat "$m"; }
done
fuzzed=""
[ -f "$out/libfuzzer.txt" ] && fuzzed="--libfuzzer $out/libfuzzer.txt"
# shellcheck disable=SC2086 # one word per run
/usr/bin/python3 tests/summary.py --failed-builds "$failed_builds" $fuzzed $runs
