#!/usr/bin/env python3
"""Totals for tests/run.sh, one per test case, from what `meson test` left
in each build directory, and ends with "N passed, N failed".

    summary.py [--failed-builds N] [--libfuzzer FILE] BUILDDIR[:SETUP]...

For each meson test of a run (meson-logs/testlog[-SETUP].json):
  - a TAP test (cmocka) counts its cases, as meson's JUnit lists them;
  - a pytest test counts the cases of its own --junitxml, if written by
    this run;
  - any other test (replays, layers.py) counts as one case.
A test meson saw fail (crash, timeout, exit status) with no failed case to
show for it counts one more failure. A run whose tests had the sanitizers
write to log_path counts one result more: failed if any report is there.
--libfuzzer FILE: lines "TARGET EXIT-STATUS", one case each.
--failed-builds N: N failures more.
"""
import glob
import json
import os
import sys
import xml.etree.ElementTree as ET

BAD = {"FAIL", "ERROR", "TIMEOUT", "UNEXPECTEDPASS", "INTERRUPT"}


def junit_cases(root):
    """(name, result) for every <testcase> under root."""
    for case in root.iter("testcase"):
        name = "%s::%s" % (case.get("classname", ""), case.get("name", ""))
        if case.find("failure") is not None or case.find("error") is not None:
            yield name, "failed"
        elif case.find("skipped") is not None:
            yield name, "skipped"
        else:
            yield name, "passed"


def pytest_xml(test):
    """The --junitxml file of a pytest test, None if it has none or this
    run did not write it (a file left by an earlier run is not this one's)."""
    for arg in test.get("command") or []:
        if arg.startswith("--junitxml="):
            path = arg.split("=", 1)[1]
            if os.path.exists(path) and os.path.getmtime(path) >= test["starttime"]:
                return path
    return None


def sanitizer_prefixes(tests):
    """The log_path prefixes the run's tests gave ASan and UBSan."""
    out = set()
    for t in tests:
        for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
            for opt in (t.get("env") or {}).get(var, "").split(":"):
                if opt.startswith("log_path="):
                    out.add(opt.split("=", 1)[1])
    return sorted(out)


def run_cases(builddir, setup):
    """(name, result, detail) for every case of one `meson test` run."""
    base = os.path.join(builddir, "meson-logs", "testlog" + ("-" + setup if setup else ""))
    try:
        with open(base + ".json") as fh:
            tests = [json.loads(line) for line in fh if line.strip()]
        junit = ET.parse(base + ".junit.xml").getroot()
    except (OSError, ValueError, ET.ParseError) as e:
        yield "%s: no results" % builddir, "failed", str(e)
        return
    if not tests:
        yield "%s: no tests ran" % builddir, "failed", None
    # Tests with several results (TAP) have a suite "PROJECT.NAME" of their own.
    suites = {s.get("name", "").split(".", 1)[-1]: s for s in junit.iter("testsuite")}
    for t in tests:
        cases = []
        if t["name"] in suites:
            cases = list(junit_cases(suites[t["name"]]))
        else:
            xml = pytest_xml(t)
            if xml:
                try:
                    cases = list(junit_cases(ET.parse(xml).getroot()))
                except ET.ParseError as e:
                    yield "%s (%s)" % (t["name"], xml), "failed", str(e)
        detail = "%s: %s, exit status %s; see %s.txt" % (
            t["name"], t["result"], t["returncode"], base)
        if not cases:
            result = {"OK": "passed", "EXPECTEDFAIL": "passed", "SKIP": "skipped"}
            yield t["name"], result.get(t["result"], "failed"), detail
            continue
        for name, result in cases:
            yield name, result, None
        # A crash after its last case, a timeout, pytest's own error.
        if t["result"] in BAD and not any(r == "failed" for _, r in cases):
            yield t["name"], "failed", detail
    prefixes = sanitizer_prefixes(tests)
    if prefixes:
        reports = sorted(f for p in prefixes for f in glob.glob(glob.escape(p) + ".*"))
        text = ""
        for r in reports:
            with open(r, errors="replace") as fh:
                text += "%s:\n%s\n" % (r, fh.read()[:4000])
        yield "sanitizer reports", "failed" if reports else "passed", text or None


def libfuzzer_cases(path):
    with open(path) as fh:
        for line in fh:
            if line.strip():
                target, status = line.split()
                yield ("libfuzzer::" + target, "passed" if status == "0" else "failed",
                       "%s exited %s: see build-tests/fuzz/%s" % (target, status, target))


def main(argv):
    failed_builds, libfuzzer, runs = 0, None, []
    args = iter(argv)
    for a in args:
        if a == "--failed-builds":
            failed_builds = int(next(args))
        elif a == "--libfuzzer":
            libfuzzer = next(args)
        else:
            runs.append(a)
    counts = {"passed": 0, "failed": failed_builds, "skipped": 0}
    sources = []
    for r in runs:
        builddir, _, setup = r.partition(":")
        sources.append((os.path.basename(builddir), run_cases(builddir, setup)))
    if libfuzzer:
        sources.append(("libfuzzer", libfuzzer_cases(libfuzzer)))
    for tag, cases in sources:
        for name, result, detail in cases:
            counts[result] += 1
            if result == "failed":
                print("FAILED [%s] %s" % (tag, name))
                if detail:
                    print("    " + detail.rstrip().replace("\n", "\n    "))
    if failed_builds:
        print("FAILED %d build(s)" % failed_builds)
    if counts["skipped"]:
        print("%d skipped" % counts["skipped"])
    print("%d passed, %d failed" % (counts["passed"], counts["failed"]))
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
