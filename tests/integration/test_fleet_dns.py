"""Fleet membership from DNS, for real: `pullproxy fleet` on two "nodes"
resolving a name whose A records change, served by a DNS server in a
namespace of the test's own (fleet_netns.py says how); and the same name
asked of one server (peers_dns_server), as a hostNetwork pod asks
kube-dns."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import PULLPROXY_BIN  # noqa: E402
from fleet_netns import DNS, NAME  # noqa: E402

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
                            text=True, timeout=180, cwd=tmp_path,
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

    # Phase 3: 1,000 records do not fit a datagram; the resolver asked
    # again over TCP and got them all.
    three = out["phases"]["3"]
    assert None not in three, out["lines"]
    assert all(len(line["members"]) == 1000 for line in three)
    assert out["tcp_queries"] >= 1

    # Phase 4: no records. The members outlive the failure for stale_s
    # (5 s), then there is no fleet and no owner at all, never "mine".
    four = out["phases"]["4"]
    assert None not in four, out["lines"]
    for line in four:
        assert line["members"] == []
        assert all(v is None for v in line["owners"].values())
    assert out["empty_after_s"] >= 2
    # The lines before the empty one still held phase 3's members: the
    # failure did not empty the fleet at once.
    for lines in out["lines"]:
        assert ids(lines[-1]) == []
        assert ids(lines[-2]) != []
    # Resolved again and again, by the DNS server, not a cache or a file.
    assert out["queries"] >= 6
    # A failing name is logged once as a warning.
    for err in out["stderr"]:
        assert "fleet source failed" in err


def write_conf(tmp_path, fleet):
    conf = tmp_path / "pullproxy.conf"
    conf.write_text("[registry registry.example]\n"
                    "url = https://registry.example\n"
                    "[fleet]\n" + fleet)
    return conf


def test_members_from_one_server_over_udp_and_tcp(tmp_path):
    """peers_dns_server: the node's resolv.conf is not asked (it does not
    know NAME); the server's 1,200 A and AAAA records, too many for a
    datagram, arrive over TCP."""
    dns = DNS(port=0)
    v4 = ["127.0.%d.%d" % (1 + i // 250, 1 + i % 250) for i in range(1000)]
    v6 = ["fd00::%x" % (i + 1) for i in range(200)]
    dns.set(v4 + v6)
    conf = write_conf(tmp_path,
                      "peers_dns = %s\n"
                      "peers_dns_server = 127.0.0.1:%d\n"
                      "peers_port = 5001\n"
                      "peer_listen = 127.0.1.7:5001\n"
                      "peer_token_file = %s/token\n" % (NAME, dns.port,
                                                         tmp_path))
    try:
        cp = subprocess.run([PULLPROXY_BIN, "fleet", "--config", str(conf),
                             "sha256:" + "ab" * 32],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, timeout=60)
    finally:
        dns.stop = True
    assert cp.returncode == 0, cp.stderr
    line = json.loads(cp.stdout.splitlines()[0])
    got = sorted(m["id"] for m in line["members"])
    assert got == sorted(["%s:5001" % a for a in v4] +
                         ["[%s]:5001" % a for a in v6])
    assert [m["id"] for m in line["members"] if m["self"]] == \
        ["127.0.1.7:5001"]
    owner = line["owners"]["sha256:" + "ab" * 32]
    assert owner == "self" or owner in got
    assert dns.tcp_queries >= 1


def test_fleet_command_refuses_what_it_cannot_use(tmp_path):
    conf = write_conf(tmp_path, "")
    cp = subprocess.run([PULLPROXY_BIN, "fleet", "--config", str(conf)],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, timeout=30)
    assert cp.returncode == 1
    assert "no [fleet] peers or peers_dns" in cp.stderr
    conf = write_conf(tmp_path, "peers = 127.0.0.1:5001\n"
                      "peer_listen = 127.0.0.1:5001\n"
                      "peer_token_file = t\n")
    cp = subprocess.run([PULLPROXY_BIN, "fleet", "--config", str(conf),
                         "not-a-key"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, timeout=30)
    assert cp.returncode == 2
    assert "not-a-key: expected a digest" in cp.stderr
    # A static member and a tag key: this node is the only member, so it
    # owns the tag.
    cp = subprocess.run([PULLPROXY_BIN, "fleet", "--config", str(conf),
                         "registry.example/library/alpine:3.20"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    line = json.loads(cp.stdout)
    assert line == {"members": [{"id": "127.0.0.1:5001", "self": True}],
                    "owners": {"registry.example/library/alpine:3.20":
                               "self"}}
