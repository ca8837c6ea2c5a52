#!/bin/sh
# The whole suite, as CI runs it: installs what the tests need, builds
# pullproxy twice (release, and ASan+UBSan), runs the cmocka unit tests and
# the integration tests (the real binary against a real registry, containerd
# and skopeo) on both builds, and ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
root=$(pwd)
out="$root/build-tests"

scripts/install-deps.sh --test || { echo "0 passed, 1 failed"; exit 1; }

build() {	# build DIR [meson options]
	dir=$1; shift
	# A directory left half set up by an interrupted run is redone.
	[ -f "$dir/build.ninja" ] || { rm -rf "$dir"; meson setup "$dir" "$@" >/dev/null; } ||
		return 1
	ninja -C "$dir" >"$out/$(basename "$dir").build.log" 2>&1 || {
		cat "$out/$(basename "$dir").build.log"; return 1; }
}

rm -rf "$out"
mkdir -p "$out/xml" "$out/asan"
: >"$out/measurements.txt"
failed_builds=0
build build --buildtype=release || failed_builds=$((failed_builds + 1))
build build-asan --buildtype=debug -Db_sanitize=address,undefined \
	-Db_lundef=false || failed_builds=$((failed_builds + 1))

# cmocka writes one JUnit file per group; pytest one per run.
run_suite() {	# run_suite BUILDDIR TAG
	bdir=$1 tag=$2
	for t in "$bdir"/tests/test_*; do
		[ -f "$t" ] && [ -x "$t" ] || continue
		xml="$out/xml/$tag-$(basename "$t").xml"
		CMOCKA_MESSAGE_OUTPUT=xml CMOCKA_XML_FILE="$xml" \
		PP_SOURCE_DIR="$root" "$t" >"$out/$tag-$(basename "$t").log" 2>&1
		rc=$?
		# A crash leaves no XML: count it rather than lose it.
		[ -s "$xml" ] || printf '<testsuite><testcase classname="%s" name="exit status %s"><failure/></testcase></testsuite>\n' \
			"$(basename "$t")" "$rc" >"$xml"
	done
	# Each fuzz target's seed corpus and kept crash inputs, replayed.
	for t in "$bdir"/tests/fuzz/replay_*; do
		[ -f "$t" ] && [ -x "$t" ] || continue
		n=${t##*/replay_}
		"$t" "tests/fuzz/corpus/$n" "tests/fuzz/regressions/$n" \
			>"$out/$tag-replay_$n.log" 2>&1 && r="" || r="<failure/>"
		printf '<testsuite><testcase classname="replay" name="%s">%s</testcase></testsuite>\n' \
			"$n" "$r" >"$out/xml/$tag-replay_$n.xml"
	done
	PULLPROXY_BIN="$root/$bdir/pullproxy" \
	FAKEACR_BIN="$root/$bdir/tests/fakeacr/fakeacr" PP_MEASURE_FILE="$out/measurements.txt" \
		/usr/bin/python3 -m pytest -q -p no:cacheprovider \
		--junitxml="$out/xml/$tag-integration.xml" \
		-o junit_suite_name="$tag" tests/integration tests/fakeacr
}

echo "== release build"
run_suite build release
echo "== ASan+UBSan build"
ASAN_OPTIONS="log_path=$out/asan/asan:detect_leaks=1:abort_on_error=0" \
UBSAN_OPTIONS="log_path=$out/asan/ubsan:print_stacktrace=1:halt_on_error=1" \
PP_SANITIZED=1 run_suite build-asan asan

# libFuzzer (clang): each target for a bounded time from its corpus. A
# crash fails it; its input is in build-tests/fuzz/TARGET/crashes/, to be
# fixed and kept in tests/fuzz/regressions/TARGET/.
if command -v clang >/dev/null 2>&1; then
	echo "== fuzzing, ${PP_FUZZ_SECONDS:-10} s per target"
	(export CC=clang; build build-fuzz --buildtype=debugoptimized -Dfuzz=true \
		-Db_sanitize=address,undefined -Db_lundef=false) ||
		failed_builds=$((failed_builds + 1))
	for f in build-fuzz/tests/fuzz/fuzz_*; do
		[ -f "$f" ] && [ -x "$f" ] || continue
		n=${f##*/fuzz_} w="$out/fuzz/${f##*/fuzz_}"
		mkdir -p "$w/corpus" "$w/crashes"
		cp tests/fuzz/corpus/"$n"/* tests/fuzz/regressions/"$n"/* "$w/corpus/" 2>/dev/null
		UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 "$f" \
			-max_total_time="${PP_FUZZ_SECONDS:-10}" -timeout=10 \
			-rss_limit_mb=2048 -artifact_prefix="$w/crashes/" "$w/corpus" \
			>"$w/log" 2>&1 && r="" || r="<failure message=\"see build-tests/fuzz/$n\"/>"
		printf '<testsuite><testcase classname="fuzz" name="%s">%s</testcase></testsuite>\n' \
			"$n" "$r" >"$out/xml/fuzz-$n.xml"
	done
fi

[ -s "$out/measurements.txt" ] && { echo "== measurements"; cat "$out/measurements.txt"; }
/usr/bin/python3 tests/summary.py "$out/xml" "$out/asan" "$failed_builds"
