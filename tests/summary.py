#!/usr/bin/env python3
"""Totals for tests/run.sh: every JUnit file (cmocka and pytest), plus one
result for the sanitizer logs (any report fails it) and one per failed
build. Prints failures by name and ends with "N passed, N failed"."""
import os
import sys
import xml.etree.ElementTree as ET


def cases(path):
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        name = "%s::%s" % (case.get("classname", ""), case.get("name", ""))
        if case.find("failure") is not None or case.find("error") is not None:
            yield name, "failed"
        elif case.find("skipped") is not None:
            yield name, "skipped"
        else:
            yield name, "passed"


def main():
    xmldir, sandir, failed_builds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    counts = {"passed": 0, "failed": failed_builds, "skipped": 0}
    for f in sorted(os.listdir(xmldir)):
        tag = f.split("-", 1)[0]
        try:
            for name, result in cases(os.path.join(xmldir, f)):
                counts[result] += 1
                if result == "failed":
                    print("FAILED [%s] %s" % (tag, name))
        except ET.ParseError as e:
            counts["failed"] += 1
            print("FAILED unreadable results %s: %s" % (f, e))
    reports = [r for r in os.listdir(sandir)] if os.path.isdir(sandir) else []
    if reports:
        counts["failed"] += 1
        print("FAILED sanitizer reports:")
        for r in reports:
            with open(os.path.join(sandir, r), errors="replace") as fh:
                print(fh.read()[:4000])
    else:
        counts["passed"] += 1
    if failed_builds:
        print("FAILED %d build(s)" % failed_builds)
    if counts["skipped"]:
        print("%d skipped" % counts["skipped"])
    print("%d passed, %d failed" % (counts["passed"], counts["failed"]))
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
