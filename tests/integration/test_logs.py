"""`pullproxy logs`: the incident summary of a real log. Failures are
provoked (a registry on a closed port), a few requests succeed, then the
summary must count the causes, repeats included, and carry the hint."""

import json
import time

from conftest import LOCALHOST, PULLPROXY_BIN, closed_port, run

DEAD = "myacr.azurecr.io"


def logs(*args, check=True, **kw):
    return run([PULLPROXY_BIN, "logs"] + list(args), check=check, **kw)


def incident(pullproxy_factory, registry):
    """A stopped pullproxy whose log has 3 + 1 refused connections and
    some requests served."""
    port, sock = closed_port()
    try:
        pp = pullproxy_factory(registries=[
            (registry.host, registry.url),
            (DEAD, "http://%s:%d" % (LOCALHOST, port))])
        for _ in range(3):
            assert pp.get("/v2/team/api/manifests/v1?ns=%s" % DEAD).status == 502
        assert pp.get("/v2/team/web/manifests/v1?ns=%s" % DEAD).status == 502
        for _ in range(2):
            assert pp.get("/v2/").status == 200
        assert pp.get("/v2/no/such/manifests/v1").status == 404
    finally:
        sock.close()
    # Stopping flushes the "repeated" line of the open window.
    assert pp.stop() == 0
    return pp


def test_summary(pullproxy_factory, registry):
    pp = incident(pullproxy_factory, registry)
    assert any(l.get("msg") == "upstream failure repeated" for l in pp.log_lines())

    out = json.loads(logs("--json", str(pp.log_path)).stdout)
    causes = {c["cause"]: c for c in out["causes"]}
    refused = causes["connection_refused"]
    assert refused["count"] == 4
    assert "port" in refused["hint"]
    # The registry listens on another port: the hint names none.
    assert "443" not in refused["hint"]
    assert refused["repositories"][0] == {"repository": "team/api", "count": 3}
    assert refused["repositories"][1] == {"repository": "team/web", "count": 1}
    assert refused["first"] <= refused["last"]
    assert causes["not_found"]["count"] == 1
    assert refused["registries"] == [{"registry": DEAD, "count": 4}]
    # One tally: every failure's answer, repeats included, agrees with
    # what the request lines say was served.
    assert out["client_status"]["502"] == 4
    assert out["requests"]["ok"] >= 2
    assert out["requests"]["status"]["502"] == 4
    assert out["not_json"] == 0
    # Each refused request was sent twice more first (retries = 2).
    assert out["retries"] == {"connection_refused": 8}

    text = logs(str(pp.log_path)).stdout
    assert "connection_refused: 4, " in text
    assert "hint: the connection was refused" in text
    assert "repositories: team/api 3, team/web 1" in text
    assert "  registries: %s 4\n" % DEAD in text
    assert "clients got: 502 4, 404 1\n" in text
    assert "served: " in text
    assert "sent again after a transient failure: connection_refused 8" in text

    # stdin, by default and as "-".
    with open(pp.log_path) as f:
        assert logs(stdin=f).stdout == text
    with open(pp.log_path) as f:
        assert logs("-", stdin=f).stdout == text


def test_since_and_garbage(pullproxy_factory, registry, tmp_path):
    pp = incident(pullproxy_factory, registry)
    mixed = tmp_path / "mixed.log"
    mixed.write_text("garbage\n" + pp.log_text() + "{\"cut\n\x00\x01 binary\n")
    out = json.loads(logs("--json", str(mixed)).stdout)
    assert out["not_json"] == 3
    assert {c["cause"]: c["count"] for c in out["causes"]}["connection_refused"] == 4
    assert "3 lines were not JSON" in logs(str(mixed)).stdout

    time.sleep(2)
    out = json.loads(logs("--json", "--since", "1s", str(mixed)).stdout)
    assert out["causes"] == [] and out["lines"] == 0
    assert out["before_since"] > 0
    assert "no failures" in logs("--since", "1s", str(mixed)).stdout
    assert json.loads(logs("--json", "--since", "1h", str(mixed)).stdout)["lines"] > 0


def test_bad_usage(tmp_path):
    for args in (["--since", "5"], ["--since", "xm"], ["--bogus"], ["a", "b"]):
        r = logs(*args, check=False)
        assert r.returncode == 2, args
        assert r.stderr.startswith("pullproxy logs: ")
        assert len(r.stderr.splitlines()) == 1
    r = logs(str(tmp_path / "missing.log"), check=False)
    assert r.returncode == 1
    assert r.stderr.startswith("pullproxy logs: ")
    assert len(r.stderr.splitlines()) == 1


def test_node_log_formats(pullproxy_factory, registry, tmp_path):
    """The same log as kubectl logs --timestamps prints it and as the CRI
    log file under /var/log/pods holds it (long lines cut into P parts):
    the same summary as pullproxy's own lines."""
    pp = incident(pullproxy_factory, registry)
    lines = pp.log_text().splitlines()
    ts = "2026-12-03T06:49:01.123456789Z"
    kubectl = tmp_path / "kubectl.log"
    kubectl.write_text("".join("%s %s\n" % (ts, l) for l in lines))
    cri = tmp_path / "0.log"
    with cri.open("w") as f:
        for l in lines:
            parts = [l[i:i + 64] for i in range(0, len(l), 64)]
            for p in parts[:-1]:
                f.write("%s stderr P %s\n" % (ts, p))
            f.write("%s stderr F %s\n" % (ts, parts[-1]))
    assert any(len(l) > 64 for l in lines)

    want = logs("--json", str(pp.log_path)).stdout
    assert json.loads(want)["causes"] and json.loads(want)["not_json"] == 0
    assert logs("--json", str(kubectl)).stdout == want
    assert logs("--json", str(cri)).stdout == want
    text = logs(str(pp.log_path)).stdout
    assert "no failures" not in text
    assert logs(str(kubectl)).stdout == text
    assert logs(str(cri)).stdout == text


def test_unknown_option_wording():
    """One wording for an unknown option in every subcommand that parses
    its own (serve and check take config's flags: see config.c)."""
    for cmd in ("logs", "containerd-config", "cache"):
        for args in (["--bogus"], ["--bogus", "x"]):
            r = run([PULLPROXY_BIN, cmd] + args, check=False)
            assert r.returncode == 2, (cmd, args)
            assert r.stderr == "pullproxy %s: --bogus: unknown option (try --help)\n" % cmd, \
                (cmd, r.stderr)
    r = logs("--since", check=False)
    assert r.stderr == "pullproxy logs: --since: needs a value (try --help)\n", r.stderr
