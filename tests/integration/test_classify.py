"""Every upstream failure classified: a fault injected (the fake ACR's
rules, a closed port, an unresolvable name, a full listen queue, an
unknown CA, a name that is a typo), then the cause and hint in the log
line and the status the client got. Repeated failures are counted, not
dropped."""

import http.client
import platform
import socket
import time

import pytest

pytest.register_assert_rewrite("acr")
from acr import CLIENT_ID, TENANT, get, ns_path  # noqa: E402
from conftest import (LOCALHOST, MT_OCI_INDEX, PULLPROXY_BIN, build_index,  # noqa: E402
                      closed_port, http_request, metrics, run, sha256_digest,
                      wait_for)

pytest_plugins = ["acr"]

SERVER = "[server]\nstall_timeout_s = 1\nconnect_timeout_ms = 700\n"
MANIFEST = "/v2/id/small/manifests/v1"


def proxy(acr_proxy, fake, **reg):
    """pullproxy for the fake ACR with short timeouts; anonymous pulls."""
    fake.config(anonymous=True)
    pp = acr_proxy(start=False, **reg)
    pp.conf.write_text(SERVER + pp.conf.read_text())
    return pp.start()


def failure(pp, msg="upstream failure"):
    lines = wait_for(lambda: pp.logs(msg), 5, msg)
    assert len(lines) == 1, lines
    return lines[0]


def assert_cause(pp, line, cause, phase=None, counted=True):
    """The line's cause and hint, and (counted: an upstream failure) the
    failure counted in /metrics."""
    assert line.get("cause") == cause, line
    assert isinstance(line.get("hint"), str) and len(line["hint"]) > 20, line
    if phase is not None:
        assert line.get("phase") == phase, line
    key = 'pullproxy_upstream_failures_total{registry="%s",cause="%s"}' % (
        line.get("registry"), cause)
    assert (metrics(pp).get(key, 0) >= 1) == counted, key


@pytest.mark.parametrize("rule,cause,phase,client", [
    (dict(status=401), "auth_unauthorized", "request", 502),
    (dict(status=403), "forbidden_network", "request", 502),
    (dict(status=500), "upstream_unavailable", "request", 502),
    (dict(status=503), "upstream_unavailable", "request", 502),
    # curl averages the speed over about 5 s: the stall must outlast that.
    (dict(stall_s=10), "io_timeout", "body", 504),
    (dict(reset_after_bytes=0), "connection_reset", "request", 502),
])
def test_registry_faults(fake, acr_proxy, rule, cause, phase, client):
    pp = proxy(acr_proxy, fake)
    fake.add_fault(endpoint="manifests", **rule)
    r = get(pp, fake, MANIFEST)
    assert r.status == client, (r.status, r.body)
    line = failure(pp)
    assert_cause(pp, line, cause, phase)
    assert line["client_status"] == client
    assert line["registry"] == fake.registry and line["repository"] == "id/small"
    if "status" in rule:
        assert line["status"] == rule["status"]


def test_throttled(fake, acr_proxy):
    pp = proxy(acr_proxy, fake)
    fake.add_fault(endpoint="manifests", status=429, count=1)
    r = get(pp, fake, MANIFEST)
    assert r.status in (200, 503), r.status
    if r.status == 503:
        line = failure(pp)
        assert_cause(pp, line, "throttled")
        assert "SKU" in line["hint"]
    else:   # the rate limiter waited the 429 out and asked again
        assert [l for l in pp.logs("upstream failure") if l.get("cause")] == []


def test_not_found_is_logged_as_an_answer(fake, acr_proxy):
    pp = proxy(acr_proxy, fake)
    r = get(pp, fake, "/v2/id/small/manifests/nosuchtag")
    assert r.status == 404 and r.error_code() == "MANIFEST_UNKNOWN"
    line = failure(pp, "upstream not found")
    assert line["level"] == "info"
    assert_cause(pp, line, "not_found")
    assert "tag" in line["hint"] and line.get("code") == "MANIFEST_UNKNOWN"
    assert not pp.logs("upstream failure")


def test_forbidden_carries_acr_code(fake, acr_proxy):
    pp = proxy(acr_proxy, fake)
    fake.add_fault(endpoint="manifests", status=403)
    assert get(pp, fake, MANIFEST).status == 502
    line = failure(pp)
    assert_cause(pp, line, "forbidden_network")
    assert line.get("code") == "DENIED"
    assert "network-rule" in line["hint"]


def test_digest_mismatch(fake, acr_images, acr_proxy):
    img = acr_images[1]["small"]
    pp = proxy(acr_proxy, fake)
    fake.add_fault(endpoint="storage", corrupt=True)
    # The body was under way: the client is cut off, never given bad bytes.
    with pytest.raises(http.client.HTTPException):
        get(pp, fake, "/v2/id/small/blobs/" + img.layers[1])
    assert_cause(pp, failure(pp), "digest_mismatch", "digest")


def test_redirect_to_a_name_that_does_not_resolve(fake, acr_images, acr_proxy):
    img = acr_images[1]["small"]
    pp = proxy(acr_proxy, fake)
    fake.add_fault(endpoint="blobs", redirect_host="no-such-host.invalid")
    r = get(pp, fake, "/v2/id/small/blobs/" + img.layers[1], timeout=20)
    assert r.status == 502
    line = failure(pp)
    assert_cause(pp, line, "redirect_failed", "redirect")
    assert "blob.core.windows.net" in line["hint"]
    # The hop that failed, without its SAS query.
    assert line["url"].startswith("https://no-such-host.invalid") and "?" not in line["url"]


def test_storage_refuses_the_signature(fake, acr_images, acr_proxy):
    img = acr_images[1]["small"]
    pp = proxy(acr_proxy, fake)
    fake.add_fault(endpoint="storage", status=403)
    r = get(pp, fake, "/v2/id/small/blobs/" + img.layers[1])
    assert r.status == 502
    line = failure(pp)
    assert_cause(pp, line, "redirect_failed", "redirect")
    assert line["status"] == 403 and "no-such" not in line["url"]


def test_tls_error_without_the_ca(fake, acr_proxy):
    pp = acr_proxy(start=False)
    pp.conf.write_text(pp.conf.read_text().replace("ca_file = %s\n" % fake.ca, ""))
    pp.start()
    assert get(pp, fake, MANIFEST).status == 502
    line = failure(pp)
    assert_cause(pp, line, "tls_error", "tls")
    assert "ca_file" in line["hint"]


def test_identity_unavailable(fake, acr_proxy):
    port, sock = closed_port()
    try:
        pp = acr_proxy(auth="managed-identity", client_id=CLIENT_ID, tenant=TENANT,
                       imds_url="http://%s:%d" % (LOCALHOST, port))
        assert get(pp, fake, MANIFEST).status == 502
        line = failure(pp, "auth failure")
    finally:
        sock.close()
    assert line["phase"] == "imds"
    assert_cause(pp, line, "auth_identity_unavailable")


def test_token_refused(fake, acr_proxy):
    fake.add_fault(endpoint="token", status=401)
    pp = acr_proxy(auth="managed-identity", client_id=CLIENT_ID, tenant=TENANT,
                   imds_url=fake.imds_url)
    assert get(pp, fake, MANIFEST).status == 502
    line = failure(pp, "auth failure")
    assert line["phase"] == "token"
    assert_cause(pp, line, "auth_unauthorized")
    assert "AcrPull" in line["hint"]


# ------------------------------------------------------- the network path

@pytest.fixture
def server_conf(tmp_path):
    conf = tmp_path / "server.conf"
    conf.write_text(SERVER)
    return conf


def test_connection_refused(pullproxy_factory, server_conf):
    port, sock = closed_port()
    try:
        pp = pullproxy_factory(registries=[("myacr.azurecr.io", "http://%s:%d" % (LOCALHOST, port))],
                               args=["--config", str(server_conf)])
        r = pp.get(MANIFEST)
        line = failure(pp)
    finally:
        sock.close()
    assert r.status == 502
    assert_cause(pp, line, "connection_refused", "connect")


def test_dns_failure(pullproxy_factory, server_conf):
    pp = pullproxy_factory(registries=[("myacr.azurecr.io", "http://no-such-host.invalid")],
                           args=["--config", str(server_conf)])
    r = pp.get(MANIFEST, timeout=20)
    assert r.status == 502
    line = failure(pp)
    assert_cause(pp, line, "dns_failure", "dns")
    assert "privatelink.azurecr.io" in line["hint"]


def test_connect_timeout(pullproxy_factory, server_conf):
    """A listener whose accept queue is full: the kernel drops the SYN."""
    ls = socket.socket()
    ls.bind((LOCALHOST, 0))
    ls.listen(0)
    port = ls.getsockname()[1]
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect((LOCALHOST, port))
        except BlockingIOError:
            pass
        fillers.append(c)
    time.sleep(0.2)
    try:
        pp = pullproxy_factory(registries=[("myacr.azurecr.io", "http://%s:%d" % (LOCALHOST, port))],
                               args=["--config", str(server_conf)])
        t0 = time.monotonic()
        r = pp.get(MANIFEST)
        assert time.monotonic() - t0 < 5
        line = failure(pp)
    finally:
        for c in fillers:
            c.close()
        ls.close()
    assert r.status == 504
    assert_cause(pp, line, "connect_timeout", "connect")


def test_name_typo(pullproxy_factory, server_conf):
    port, sock = closed_port()
    try:
        pp = pullproxy_factory(registries=[("myacr.azureacr.io", "http://%s:%d" % (LOCALHOST, port))],
                               args=["--config", str(server_conf)])
        start = failure(pp, "registry name looks wrong")
        assert start["registry"] == "myacr.azureacr.io"
        assert_cause(pp, start, "name_typo", counted=False)
        assert pp.get(MANIFEST).status == 502
        assert_cause(pp, failure(pp), "name_typo")
        # A requested ns that is a typo, refused before any lookup.
        r = pp.get(MANIFEST + "?ns=other.azurcr.io")
        assert r.status == 404
        refused = failure(pp, "ns refused")
        assert_cause(pp, refused, "name_typo", counted=False)
        assert "azureacr.io" in refused["hint"]
    finally:
        sock.close()
    # A good name is not reported.
    ok = pullproxy_factory(registries=[("myacr.azurecr.io", "http://%s:1" % LOCALHOST)])
    assert not ok.logs("registry name looks wrong")
    assert not [l for l in ok.logs("ns refused") if "cause" in l]


# ------------------------------------------------------------- repetition

def test_repeated_failures_are_counted(fake, acr_proxy):
    # Without the circuit, which would answer the sixth without asking.
    pp = proxy(acr_proxy, fake, circuit_failures=0)
    fake.add_fault(endpoint="manifests", status=503)
    for _ in range(5):
        assert get(pp, fake, MANIFEST).status == 502
    # Another repository is another failure.
    assert get(pp, fake, "/v2/id/other/manifests/v1").status == 502
    lines = [l for l in pp.logs("upstream failure")]
    assert [l["repository"] for l in lines] == ["id/small", "id/other"], lines
    assert not pp.logs("upstream failure repeated")
    assert pp.stop() == 0
    rep = pp.logs("upstream failure repeated")
    assert len(rep) == 1, rep
    assert (rep[0]["repository"], rep[0]["cause"], rep[0]["count"]) == (
        "id/small", "upstream_unavailable", 4)
    assert rep[0]["first_id"] == lines[0]["id"] and rep[0]["last_id"] > rep[0]["first_id"]


# --------------------------------------------------------------- platform

def test_platform_mismatch(fake, acr_images, acr_proxy):
    """An index without the node's platform is served, and logged once
    with the platforms it has; [server] platform overrides uname's."""
    content = acr_images[0]
    build_index(content / "id/armonly", "id/armonly", "v1",
                [("arm64", [{"arch": b"arm64 only\n"}])])
    both = build_index(content / "id/both", "id/both", "v1",
                       [("amd64", [{"arch": b"amd64\n"}]), ("arm64", [{"arch": b"arm64\n"}])])
    node = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    pp = proxy(acr_proxy, fake)
    index = {"Accept": MT_OCI_INDEX}
    for _ in range(2):
        r = http_request(pp.port, "GET", ns_path(fake, "/v2/id/armonly/manifests/v1"),
                         headers=index)
        assert r.status == 200 and r.header("Content-Type") == MT_OCI_INDEX
    line = failure(pp, "platform mismatch")
    assert_cause(pp, line, "platform_mismatch", "platform")
    assert line["platforms"] == "linux/arm64" and line["node_platform"] == "linux/" + node
    assert line["repository"] == "id/armonly"
    assert line["digest"] == sha256_digest(r.body)
    if node in ("amd64", "arm64"):
        r = http_request(pp.port, "GET", ns_path(fake, "/v2/id/both/manifests/v1"),
                         headers=index)
        assert r.status == 200 and r.body == both.manifest
        assert len(pp.logs("platform mismatch")) == 1

    pp = acr_proxy(start=False)
    pp.conf.write_text("[server]\nplatform = linux/s390x\n" + pp.conf.read_text())
    pp.start()
    r = http_request(pp.port, "GET", ns_path(fake, "/v2/id/both/manifests/v1"), headers=index)
    assert r.status == 200
    line = failure(pp, "platform mismatch")
    assert line["node_platform"] == "linux/s390x"
    assert line["platforms"] == "linux/amd64, linux/arm64"


def test_platform_setting_is_checked(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[server]\nplatform = amd64\n")
    cp = run([PULLPROXY_BIN, "serve", "--config", str(conf), "--registry",
              "r.azurecr.io=http://127.0.0.1:1"], check=False, timeout=10)
    assert cp.returncode == 2 and "platform" in cp.stderr, cp.stderr
