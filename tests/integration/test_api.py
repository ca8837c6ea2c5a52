"""The pull API as pullproxy serves it, request by request, against a real
registry; plus routing by ns, upstream failures, flags and SIGTERM."""

import hashlib
import http.client
import signal
import subprocess
import time
import urllib.parse

import pytest

from conftest import (ACCEPT_ALL, LOCALHOST, MT_OCI_INDEX, MT_OCI_MANIFEST, MiB,
                      PULLPROXY_BIN, closed_port, http_request, port_open,
                      sha256_digest, wait_for)

ABSENT_DIGEST = "sha256:" + "0" * 64


def layer(img, i=-1):
    d = img.layers[i]
    return d, img.blobs[d]


# ------------------------------------------------------------------- base

def test_base(pullproxy):
    r = pullproxy.get("/v2/")
    assert r.status == 200
    assert r.json() == {}
    assert r.header("Content-Type").startswith("application/json")


# ---------------------------------------------------------------- manifests

@pytest.mark.parametrize("by", ["tag", "digest"])
def test_manifest_get_and_head(pullproxy, images, by):
    img = images["small"]
    ref = img.tag if by == "tag" else img.digest
    path = "/v2/%s/manifests/%s" % (img.repo, ref)

    g = pullproxy.get(path, headers={"Accept": ACCEPT_ALL})
    assert g.status == 200
    assert g.body == img.manifest
    assert g.header("Docker-Content-Digest") == img.digest
    assert g.header("Content-Type") == MT_OCI_MANIFEST
    assert int(g.header("Content-Length")) == len(img.manifest)

    h = pullproxy.head(path, headers={"Accept": ACCEPT_ALL})
    assert h.status == 200
    assert h.body == b""
    assert h.header("Docker-Content-Digest") == img.digest
    assert int(h.header("Content-Length")) == len(g.body)
    assert h.header("Content-Type") == MT_OCI_MANIFEST


def test_manifest_without_accept(pullproxy, images):
    """A client that sends no Accept (curl) still gets the OCI manifest."""
    img = images["small"]
    r = pullproxy.get("/v2/%s/manifests/%s" % (img.repo, img.tag))
    assert r.status == 200
    assert r.body == img.manifest
    assert r.header("Content-Type") == MT_OCI_MANIFEST


@pytest.mark.parametrize("accept", [ACCEPT_ALL, None])
def test_index_media_type_preserved(pullproxy, images, accept):
    img = images["multi"]
    headers = {"Accept": accept} if accept else {}
    for method in ("GET", "HEAD"):
        r = pullproxy.request(method, "/v2/%s/manifests/%s" % (img.repo, img.tag), headers)
        assert r.status == 200, (method, r)
        assert r.header("Content-Type") == MT_OCI_INDEX
        assert r.header("Docker-Content-Digest") == img.digest
        assert int(r.header("Content-Length")) == len(img.manifest)
        if method == "GET":
            assert r.body == img.manifest
    # and the platform manifests it points at, by digest
    for child in img.children:
        r = pullproxy.get("/v2/%s/manifests/%s" % (img.repo, child.digest), headers)
        assert r.status == 200
        assert r.body == child.manifest
        assert r.header("Content-Type") == MT_OCI_MANIFEST


def test_manifest_unknown_tag(pullproxy, images, registry):
    r = pullproxy.get("/v2/pp/small/manifests/nosuchtag")
    assert r.status == 404
    assert r.error_code() == "MANIFEST_UNKNOWN"
    r = pullproxy.get("/v2/pp/small/manifests/" + ABSENT_DIGEST)
    assert r.status == 404
    assert r.error_code() == "MANIFEST_UNKNOWN"


@pytest.mark.parametrize("path", ["/v2/pp/nosuchrepo/manifests/v1",
                                  "/v2/pp/nosuchrepo/blobs/" + ABSENT_DIGEST,
                                  "/v2/pp/nosuchrepo/tags/list"])
def test_upstream_404_code_passed_through(pullproxy, images, registry, path):
    """A 404 carries the registry's own OCI code (distribution says
    MANIFEST_UNKNOWN, BLOB_UNKNOWN and NAME_UNKNOWN here)."""
    direct = http_request(registry.port, "GET", path)
    assert direct.status == 404
    r = pullproxy.get(path)
    assert r.status == 404
    assert r.error_code() == direct.error_code()
    assert not pullproxy.logs("upstream failure")


# -------------------------------------------------------------------- blobs

def test_blob_get_and_head(pullproxy, images):
    img = images["small"]
    for digest, data in img.blobs.items():
        path = "/v2/%s/blobs/%s" % (img.repo, digest)
        r = pullproxy.get(path)
        assert r.status == 200, digest
        assert len(r.body) == len(data)
        assert sha256_digest(r.body) == digest
        h = pullproxy.head(path)
        assert h.status == 200
        assert h.body == b""
        assert int(h.header("Content-Length")) == len(data)
    reqs = [r for r in pullproxy.requests() if r["method"] == "GET" and "/blobs/" in r["route"]]
    assert sorted(r["bytes"] for r in reqs) == sorted(len(d) for d in img.blobs.values())


def check_ranges(pp, path, data):
    size = len(data)
    r = pp.get(path, headers={"Range": "bytes=10-99"})
    assert r.status == 206
    assert r.header("Content-Range") == "bytes 10-99/%d" % size
    assert r.body == data[10:100]
    assert int(r.header("Content-Length")) == 90

    r = pp.get(path, headers={"Range": "bytes=%d-" % (size - 5)})
    assert r.status == 206
    assert r.header("Content-Range") == "bytes %d-%d/%d" % (size - 5, size - 1, size)
    assert r.body == data[-5:]

    r = pp.get(path, headers={"Range": "bytes=-7"})
    assert r.status == 206
    assert r.header("Content-Range") == "bytes %d-%d/%d" % (size - 7, size - 1, size)
    assert r.body == data[-7:]


def check_unsatisfiable(pp, path, size):
    for unsatisfiable in ("bytes=%d-" % size, "bytes=%d-%d" % (size + 10, size + 20)):
        r = pp.get(path, headers={"Range": unsatisfiable})
        assert r.status == 416, (unsatisfiable, r)
        assert r.header("Content-Range") == "bytes */%d" % size


@pytest.mark.parametrize("first", ["satisfiable", "unsatisfiable"])
def test_blob_range(pullproxy, images, first):
    """Ranges on a blob pullproxy has not seen yet (the first request goes
    upstream) and again once it has (a cache may answer)."""
    img = images["small"]
    digest, data = layer(img)
    path = "/v2/%s/blobs/%s" % (img.repo, digest)
    if first == "unsatisfiable":
        check_unsatisfiable(pullproxy, path, len(data))
    check_ranges(pullproxy, path, data)
    check_unsatisfiable(pullproxy, path, len(data))
    check_ranges(pullproxy, path, data)
    r = pullproxy.get(path)
    assert r.status == 200 and r.body == data
    assert not pullproxy.logs("upstream failure")


def test_blob_unknown(pullproxy, images):
    r = pullproxy.get("/v2/pp/small/blobs/" + ABSENT_DIGEST)
    assert r.status == 404
    assert r.error_code() == "BLOB_UNKNOWN"
    h = pullproxy.head("/v2/pp/small/blobs/" + ABSENT_DIGEST)
    assert h.status == 404


def test_tags_list(pullproxy, images, registry):
    r = pullproxy.get("/v2/pp/small/tags/list")
    assert r.status == 200
    assert r.header("Content-Type").startswith("application/json")
    direct = http_request(registry.port, "GET", "/v2/pp/small/tags/list")
    assert r.json() == direct.json()
    assert sorted(r.json()["tags"]) == ["v1", "v2"]
    # Pagination parameters go through (distribution 2.8 ignores them).
    mark = registry.mark()
    r = pullproxy.get("/v2/pp/small/tags/list?n=1&last=v1")
    assert r.status == 200
    assert r.json() == http_request(registry.port, "GET",
                                    "/v2/pp/small/tags/list?n=1&last=v1").json()
    seen = [q.uri for q in registry.requests_since(mark) if q.user_agent.startswith("pullproxy/")]
    assert len(seen) == 1
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(seen[0]).query) == \
        {"n": ["1"], "last": ["v1"]}


@pytest.mark.parametrize("query", [
    "n=1%26ns%3Devil",      # decoded, it would add a parameter upstream
    "n=1%20x",              # decoded, curl would refuse the URL
    "n=-1",
    "n=1&n=2",
    "last=a%26b",           # not a tag
    "last=v1%23frag",
    "n=",
])
def test_tags_query_never_reaches_the_registry_as_written(pullproxy, images,
                                                          registry, query):
    """tags/list paging is a number and a tag, re-written from those values:
    anything else is refused before the registry sees it."""
    mark = registry.mark()
    r = pullproxy.get("/v2/pp/small/tags/list?" + query)
    assert r.status == 400
    assert r.error_code() == "PAGINATION_NUMBER_INVALID"
    assert [q for q in registry.requests_since(mark)
            if q.user_agent.startswith("pullproxy/")] == []


def test_tags_query_reencoded(pullproxy, images, registry):
    """Escaped but valid values are sent as their decoded value."""
    mark = registry.mark()
    r = pullproxy.get("/v2/pp/small/tags/list?last=v%31&n=%32&ns=" +
                      urllib.parse.quote(registry.host, safe=""))
    assert r.status == 200
    seen = [q.uri for q in registry.requests_since(mark)
            if q.user_agent.startswith("pullproxy/")]
    assert len(seen) == 1
    assert urllib.parse.urlsplit(seen[0]).query == "n=2&last=v1"


# ------------------------------------------------------------ bad requests

BAD_REQUESTS = [
    # (path, status, OCI code)
    ("/v2/UPPER/manifests/x", 400, "NAME_INVALID"),
    ("/v2/a/../b/manifests/x", 400, "NAME_INVALID"),
    ("/v2/a/./b/manifests/x", 400, "NAME_INVALID"),
    ("/v2/a/%2e%2e/b/manifests/x", 400, "NAME_INVALID"),
    ("/v2/%2e%2e/manifests/x", 400, "NAME_INVALID"),
    ("/v2/pp/%2E%2E/%2E%2E/v2/pp/small/manifests/v1", 400, "NAME_INVALID"),
    ("/v2/pp%2Fsmall/manifests/v1", 400, "NAME_INVALID"),
    ("/v2//pp/small/manifests/v1", 400, "NAME_INVALID"),
    ("/v2/pp/small/blobs/sha256:xyz", 400, "DIGEST_INVALID"),
    ("/v2/pp/small/blobs/notadigest", 400, "DIGEST_INVALID"),
    ("/v2/pp/small/blobs/sha256:" + "A" * 64, 400, "DIGEST_INVALID"),
    ("/v2/pp/small/manifests/sha256:abc", 400, "DIGEST_INVALID"),
    ("/v2/pp/small/manifests/-v1", 400, "MANIFEST_INVALID"),
    ("/v2/pp/small/manifests/" + "a" * 129, 400, "MANIFEST_INVALID"),
    ("/v2/pp/small/manifests/v1%20x", 400, "MANIFEST_INVALID"),
    ("/", 404, "NOT_FOUND"),
    ("/v3/", 404, "NOT_FOUND"),
    ("/v2/_catalog", 404, "NOT_FOUND"),
    ("/v2/pp/small/foo", 404, "NOT_FOUND"),
]


@pytest.mark.parametrize("path,status,code", BAD_REQUESTS)
def test_bad_request_never_reaches_registry(pullproxy, images, registry, path, status, code):
    mark = registry.mark()
    r = pullproxy.get(path)
    assert (r.status, r.error_code()) == (status, code)
    assert r.header("Content-Type").startswith("application/json")
    assert registry.requests_since(mark) == []


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/v2/", "/v2/pp/small/manifests/v1",
                                  "/v2/pp/small/blobs/" + ABSENT_DIGEST,
                                  "/v2/pp/small/tags/list"])
def test_other_methods_405(pullproxy, images, registry, method, path):
    mark = registry.mark()
    r = pullproxy.request(method, path, headers={"Content-Length": "0"})
    assert r.status == 405
    assert r.error_code() == "UNSUPPORTED"
    allow = {m.strip() for m in r.header("Allow").split(",")}
    assert allow == {"GET", "HEAD"}
    assert registry.requests_since(mark) == []


# ------------------------------------------------------------------- ns

def test_ns_routes_to_configured_registry(pullproxy, images, registry):
    img = images["small"]
    q = urllib.parse.urlencode({"ns": registry.host})
    r = pullproxy.get("/v2/%s/manifests/%s?%s" % (img.repo, img.tag, q))
    assert r.status == 200
    assert r.body == img.manifest


@pytest.mark.parametrize("ns", ["sentinel", "169.254.169.254", "169.254.169.254:80",
                                "localhost", "evil.example.com"])
def test_ns_refused(pullproxy_factory, images, registry, sentinel, ns):
    pp = pullproxy_factory()
    if ns == "sentinel":
        ns = "%s:%d" % (LOCALHOST, sentinel.port)
    mark = registry.mark()
    for path in ("/v2/pp/small/manifests/v1", "/v2/pp/small/blobs/" + layer(images["small"])[0],
                 "/v2/pp/small/tags/list"):
        for query in (urllib.parse.urlencode({"ns": ns}), "ns=" + ns):
            r = pp.get(path + "?" + query)
            assert r.status == 404, (path, query)
            assert r.error_code() == "NAME_UNKNOWN"
    assert sentinel.connections == 0
    assert registry.requests_since(mark) == []
    refused = pp.logs("ns refused")
    assert refused and all(l["level"] == "warn" and l["ns"] == ns for l in refused), refused


def test_ns_second_registry(pullproxy_factory, images, registry, sentinel):
    """Two registries: ns picks one; the other is never contacted."""
    other = "%s:%d" % (LOCALHOST, sentinel.port)
    pp = pullproxy_factory(registries=[(registry.host, registry.url),
                                       ("other.example", "http://" + other)])
    img = images["small"]
    for q in ("", "?ns=" + urllib.parse.quote(registry.host)):
        r = pp.get("/v2/%s/manifests/%s%s" % (img.repo, img.tag, q))
        assert r.status == 200
    assert sentinel.connections == 0


# -------------------------------------------------------- upstream failures

def test_upstream_down(pullproxy_factory, images):
    port, holder = closed_port()
    try:
        url = "http://%s:%d" % (LOCALHOST, port)
        pp = pullproxy_factory(registries=[("down.example", url)])
        digest = layer(images["small"])[0]
        cases = [("pp/small", "v1", "/v2/pp/small/manifests/v1"),
                 ("pp/small", digest, "/v2/pp/small/blobs/" + digest)]
        for repo, ref, path in cases:
            r = pp.get(path)
            assert r.status == 502, path
            assert r.error_code() == "UNAVAILABLE"
        # The blob's failure repeats the manifest's (same registry, cause
        # and repository): counted, and the count logged at exit.
        fails = pp.logs("upstream failure")
        assert len(fails) == 1, fails
        (repo, ref, path), f = cases[0], fails[0]
        assert f["level"] == "warn"
        assert f["registry"] == "down.example"
        assert f["repository"] == repo
        assert f["reference"] == ref
        assert f["url"] == url + path
        assert f["client_status"] == 502
        assert f["cause"] == "connection_refused" and f["phase"] == "connect"
        assert isinstance(f.get("error"), str) and f["error"], f
        assert isinstance(f.get("ms"), int)
        assert pp.stop() == 0
        rep = pp.logs("upstream failure repeated")
        assert [(r["repository"], r["count"]) for r in rep] == [("pp/small", 1)], rep
    finally:
        holder.close()


# -------------------------------------------------------------------- flags

def run_pp(*args, timeout=10):
    return subprocess.run([PULLPROXY_BIN, *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout)


def test_version():
    cp = run_pp("--version")
    assert cp.returncode == 0
    assert cp.stdout.split("\n")[0].split(" ")[:2] == ["pullproxy", "0.1.0"]


def test_help():
    cp = run_pp("--help")
    assert cp.returncode == 0
    assert "serve" in cp.stdout and "--registry" in cp.stdout
    cp = run_pp("serve", "--help")
    assert cp.returncode == 0
    assert "--registry" in cp.stdout


def assert_usage_error(cp, *needles):
    assert cp.returncode == 2, (cp.returncode, cp.stderr)
    lines = cp.stderr.splitlines()
    assert len(lines) == 1, cp.stderr
    assert lines[0].startswith("pullproxy: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("args,needle", [
    (["--listen", "nonsense", "--registry", "r.example=http://127.0.0.1:9"], "--listen"),
    (["--listen", "127.0.0.1:99999", "--registry", "r.example=http://127.0.0.1:9"], "--listen"),
    (["--registry", "noequals"], "--registry"),
    (["--registry", "r.example=ftp://x"], "--registry"),
    (["--registry", "r.example=http://127.0.0.1:9", "--bogus", "x"], "--bogus"),
    (["--registry", "r.example=http://127.0.0.1:9", "--bogus"], "--bogus"),
    (["--registry", "r.example=http://127.0.0.1:9", "--log-level", "loud"], "--log-level"),
    (["--registry", "r.example=http://127.0.0.1:9", "--listen"], "--listen"),
], ids=["listen-nonsense", "listen-bad-port", "registry-noequals", "registry-ftp",
        "unknown-flag-value", "unknown-flag", "bad-log-level", "listen-no-value"])
def test_bad_flags(tmp_path, args, needle):
    cp = run_pp("serve", "--cache-dir", str(tmp_path), *args)
    assert_usage_error(cp, needle)


def test_no_registry(tmp_path):
    cp = run_pp("serve", "--cache-dir", str(tmp_path), "--listen", "127.0.0.1:%d" % 9)
    assert cp.returncode == 2
    assert len(cp.stderr.splitlines()) == 1 and cp.stderr.startswith("pullproxy: ")


def test_unknown_command():
    cp = run_pp("frobnicate")
    assert cp.returncode == 2
    assert len(cp.stderr.splitlines()) == 1 and cp.stderr.startswith("pullproxy: ")


@pytest.mark.parametrize("body,line", [
    ("[server]\nlisten = 127.0.0.1:5000\nbogus_key = 1\n", 3),
    # inih reports a section's error on its first key
    ("# comment\n[nosuchsection]\nurl = http://x\n", 3),
    ("[server]\nlog_level = loud\n", 2),
    ("[registry r.example]\nurl = ftp://x\n", 2),
], ids=["unknown-key", "unknown-section", "bad-log-level", "bad-url"])
def test_bad_config_file(tmp_path, body, line):
    cfg = tmp_path / "bad.conf"
    cfg.write_text(body)
    cp = run_pp("serve", "--config", str(cfg), "--registry", "r2.example=http://127.0.0.1:9")
    assert_usage_error(cp, "%s:%d" % (cfg, line))


def test_config_file(pullproxy_factory, tmp_path, images, registry):
    """Registries from the config file, the listen address from a flag."""
    cfg = tmp_path / "pp.conf"
    cfg.write_text("[server]\nlog_level = debug\nshutdown_timeout_s = 5\n\n"
                   "[registry %s]\nurl = %s\n" % (registry.host, registry.url))
    pp = pullproxy_factory(registries=[], args=["--config", str(cfg)])
    img = images["small"]
    r = pp.get("/v2/%s/manifests/%s" % (img.repo, img.tag))
    assert r.status == 200 and r.body == img.manifest
    listening = pp.logs("listening")[0]
    assert listening["registries"] == [registry.host]
    assert listening["listen"] == "%s:%d" % (LOCALHOST, pp.port)


# ------------------------------------------------------------------ SIGTERM

def test_sigterm_finishes_transfer(pullproxy_factory, mid_blob):
    pp = pullproxy_factory()
    path = "/v2/%s/blobs/%s" % (mid_blob.repo, mid_blob.digest)
    conn = http.client.HTTPConnection(LOCALHOST, pp.port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200
        assert int(resp.getheader("Content-Length")) == mid_blob.size
        h = hashlib.sha256()
        got = 0

        def read(n):
            nonlocal got
            data = resp.read(n)
            assert data, "body ended early at %d of %d" % (got, mid_blob.size)
            h.update(data)
            got += len(data)

        # A slow client: 2 MiB, 64 KiB at a time.
        while got < 2 * MiB:
            read(64 * 1024)
            time.sleep(0.01)

        pp.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: pp.logs("shutting down"), 10, "pullproxy to log shutting down")
        # New connections are refused from now on...
        wait_for(lambda: not port_open(pp.port), 10, "the listening socket to close")
        with pytest.raises(ConnectionRefusedError):
            http_request(pp.port, "GET", "/v2/", timeout=5)
        # ...while the transfer under way goes on.
        assert pp.proc.poll() is None, "pullproxy exited with a transfer in flight"
        while got < 6 * MiB:
            read(64 * 1024)
            time.sleep(0.005)
        assert pp.proc.poll() is None, "pullproxy exited with a transfer in flight"
        while got < mid_blob.size:
            read(min(MiB, mid_blob.size - got))
        assert resp.read() == b""
    finally:
        conn.close()
    assert got == mid_blob.size
    assert "sha256:" + h.hexdigest() == mid_blob.digest
    pp.proc.wait(timeout=20)
    assert pp.proc.returncode == 0
    served = [r for r in pp.requests() if r["route"] == path]
    assert [(r["status"], r["bytes"]) for r in served] == [(200, mid_blob.size)]
