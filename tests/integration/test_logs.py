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
    assert refused["repositories"][0] == {"repository": "team/api", "count": 3}
    assert refused["repositories"][1] == {"repository": "team/web", "count": 1}
    assert refused["first"] <= refused["last"]
    assert causes["not_found"]["count"] == 1
    assert out["client_status"]["502"] == 2
    assert out["requests"]["ok"] >= 2
    assert out["requests"]["status"]["502"] == 4
    assert out["not_json"] == 0
    # Each refused request was sent twice more first (retries = 2).
    assert out["retries"] == {"connection_refused": 8}

    text = logs(str(pp.log_path)).stdout
    assert "connection_refused: 4, " in text
    assert "hint: the connection was refused" in text
    assert "repositories: team/api 3, team/web 1" in text
    assert "clients got (repeats not itemised): 502 2, 404 1" in text
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
