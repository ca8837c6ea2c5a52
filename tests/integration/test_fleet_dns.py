"""Fleet membership from DNS, for real: `pullproxy fleet` on two "nodes"
resolving a name whose A records change, served by a DNS server in a
namespace of the test's own (fleet_netns.py says how)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import PULLPROXY_BIN  # noqa: E402

SCRIPT = Path(__file__).with_name("fleet_netns.py")


def ids(line):
    return sorted(m["id"] for m in line["members"])


def selves(line):
    return [m["id"] for m in line["members"] if m["self"]]


def test_members_follow_dns_answers_and_nodes_agree_on_owners(tmp_path):
    if shutil.which("ip") is None:
        pytest.skip("no ip(8) to bring up lo in the namespace")
    try:
        cp = subprocess.run(["unshare", "--mount", "--net", sys.executable,
                             str(SCRIPT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, timeout=120, cwd=tmp_path,
                            env=dict(os.environ, PULLPROXY_BIN=PULLPROXY_BIN))
    except FileNotFoundError:
        pytest.skip("no unshare(1)")
    if cp.returncode != 0 and ("unshare failed" in cp.stderr or
                               "Operation not permitted" in cp.stderr):
        pytest.skip("cannot make namespaces: " + cp.stderr.strip()[-200:])
    assert cp.returncode == 0, cp.stderr[-3000:]
    out = json.loads(cp.stdout)
    assert out["exits"] == [0, 0], out["stderr"]

    # Phase 1: three A records, three members; each node is one of them.
    one = out["phases"]["1"]
    assert None not in one, out["lines"]
    assert ids(one[0]) == ["127.0.0.11:7001", "127.0.0.12:7001",
                           "127.0.0.13:7001"]
    assert selves(one[0]) == ["127.0.0.11:7001"]
    assert selves(one[1]) == ["127.0.0.12:7001"]
    # Both nodes name the same owner for every key ("self" is the node).
    owners = []
    for line, me in zip(one, ["127.0.0.11:7001", "127.0.0.12:7001"]):
        owners.append({k: me if v == "self" else v
                       for k, v in line["owners"].items()})
    assert owners[0] == owners[1]
    assert set(owners[0].values()) <= set(ids(one[0]))
    assert None not in owners[0].values()

    # Phase 2: the answer changed; the next resolution sees it. Node .11
    # left the answer, so it is no longer "self" among the members.
    two = out["phases"]["2"]
    assert None not in two, out["lines"]
    assert selves(two[0]) == []
    assert selves(two[1]) == ["127.0.0.12:7001"]

    # Phase 3: no records. The members outlive the failure for stale_s
    # (3 s), then there is no fleet and no owner at all, never "mine".
    three = out["phases"]["3"]
    assert None not in three, out["lines"]
    for line in three:
        assert line["members"] == []
        assert all(v is None for v in line["owners"].values())
    assert out["empty_after_s"] >= 2
    # The lines before the empty one still held phase 2's members: the
    # failure did not empty the fleet at once.
    for lines in out["lines"]:
        assert ids(lines[-1]) == []
        assert ids(lines[-2]) != []
    # Resolved again and again, by the DNS server, not a cache or a file.
    assert out["queries"] >= 6
    # A failing name is logged once as a warning.
    for err in out["stderr"]:
        assert "fleet source failed" in err
