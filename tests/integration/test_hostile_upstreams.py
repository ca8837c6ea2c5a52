"""Hostile upstreams: a registry that cuts bodies, lies about their
length, sends the wrong bytes or an oversized manifest, redirects in a
loop, to plain http or into the node, or never answers. Each a fault of
the fake ACR (tests/fakeacr) or a socket of the test's own.

Whatever pullproxy does about a fault (fail, retry, resume), these hold:
a client gets the whole right body or a cut connection (or an error
status before any body), never a complete wrong one; the cache never
keeps a wrong or partial blob (`pullproxy cache verify` is clean); the
failure is logged with its cause; every request ends in bounded time.
"""

import http.client
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytest.register_assert_rewrite("acr")
from acr import ns_path  # noqa: E402
from redirect_netns import Sentinel  # noqa: E402
from conftest import (LOCALHOST, MT_OCI_MANIFEST, MiB, OCILayout,  # noqa: E402
                      PULLPROXY_BIN, SANITIZED, build_image, canonical_json,
                      run, sha256_digest, wait_for)

pytest_plugins = ["acr"]

SERVER = "[server]\nstall_timeout_s = 1\nconnect_timeout_ms = 700\n"
# curl judges a stall on its speed over about 5 s, so a stall of 1 s is
# noticed after 5 to 7; retries and Range resumes (3) may follow.
BOUND_S = 45
BIG = 6 * MiB + 12345           # several cache chunks and a short last one
HUGE_MANIFEST = 48 * MiB        # far past OCI_MANIFEST_MAX (4 MiB)


@pytest.fixture(scope="module")
def hostile(acr_images):
    """Content of our own in the fake's directory: an image with a big
    layer (hostile/blobs) and an image whose manifest is 48 MiB
    (hostile/huge:v1)."""
    content = acr_images[0]
    rnd = random.Random(8)
    img = build_image(content / "hostile/blobs", "hostile/blobs", "v1", [
        {"big.bin": rnd.randbytes(BIG)},
        {"small.txt": b"a small layer\n" * 100}])
    layout = OCILayout(content / "hostile/huge")
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": img.config_digest,
                   "size": len(img.blobs[img.config_digest])},
        "layers": [],
        "annotations": {"padding": "x" * HUGE_MANIFEST}})
    layout.tag(layout.add_blob(manifest, MT_OCI_MANIFEST), "v1")
    big = max(img.layers, key=lambda d: len(img.blobs[d]))
    return {"img": img, "big": big, "huge": manifest}


@pytest.fixture
def pp(acr_proxy, fake):
    """pullproxy for the fake ACR with short timeouts; anonymous pulls."""
    fake.config(anonymous=True)
    p = acr_proxy(start=False)
    p.conf.write_text(SERVER + p.conf.read_text())
    return p.start()


@pytest.fixture
def patient_pp(acr_proxy, fake):
    """pp with a stall timeout that a busy fake's first byte fits in: the
    fake reads and hashes a 48 MiB manifest before it answers."""
    fake.config(anonymous=True)
    p = acr_proxy(start=False)
    p.conf.write_text(SERVER.replace("stall_timeout_s = 1", "stall_timeout_s = 20")
                      + p.conf.read_text())
    return p.start()


class Got:
    """One GET through pullproxy. complete: the body ended where its
    Content-Length said; False when the connection was cut."""

    def __init__(self, pp, fake, path, headers=None, timeout=60):
        t0 = time.monotonic()
        self.status, self.body, self.complete, self.headers = None, b"", False, {}
        conn = http.client.HTTPConnection(LOCALHOST, pp.port, timeout=timeout)
        try:
            conn.request("GET", ns_path(fake, path), headers=headers or {})
            resp = conn.getresponse()
            self.status, self.headers = resp.status, resp.headers
            try:
                self.body = resp.read()
                self.complete = True
            except http.client.IncompleteRead as e:
                self.body = e.partial
            except ConnectionError:
                pass
        except (http.client.RemoteDisconnected, ConnectionError):
            pass
        finally:
            conn.close()
        self.seconds = time.monotonic() - t0

    def whole_or_cut(self, want):
        """The invariant: the right bytes, or no complete body at all."""
        if self.status == 200 and self.complete:
            assert self.body == want, "a complete body with the wrong bytes"
            return True
        assert self.status is None or self.status == 200 or self.status >= 500, \
            (self.status, self.body[:200])
        return False


def blob_path(digest):
    return "/v2/hostile/blobs/blobs/" + digest


def cache_cmd(pp, *args, check=True):
    return run([PULLPROXY_BIN, "cache", "--cache-dir", str(pp.cache_dir), *args],
               check=check, timeout=120)


def cached_blobs(pp):
    out = cache_cmd(pp, "ls", "--json").stdout
    return {json.loads(l)["digest"] for l in out.splitlines() if l.strip()}


def assert_cache_clean(pp):
    """verify re-hashes every stored blob: nothing wrong or partial kept."""
    v = cache_cmd(pp, "verify")
    assert " 0 corrupt" in v.stdout, v.stdout


def failures(pp):
    return [l for l in pp.logs("upstream failure")]


def wait_failure(pp, **want):
    """The first "upstream failure" line with these fields."""
    def match():
        return [l for l in failures(pp)
                if all(l.get(k) == v for k, v in want.items())]
    return wait_for(match, 10, "an upstream failure with %s" % want)[0]


def fetched_again(pp, fake, hostile, digest):
    """With the fault gone, the blob comes whole and right (and stays)."""
    fake.clear_faults()
    g = Got(pp, fake, blob_path(digest))
    assert g.status == 200 and g.complete and sha256_digest(g.body) == digest
    wait_for(lambda: digest in cached_blobs(pp), 10, "the blob to be cached")
    assert_cache_clean(pp)


def pull_big(pp, fake, hostile, causes, may_complete=True):
    """GET the big blob with a storage fault posted: in bounded time,
    whole and right or cut; when cut, logged with one of causes and not
    kept. Then the cache verifies clean and, the fault gone, the blob
    comes whole and stays."""
    big = hostile["big"]
    g = Got(pp, fake, blob_path(big))
    assert g.seconds < BOUND_S
    whole = g.whole_or_cut(hostile["img"].blobs[big])
    assert may_complete or not whole
    if not whole:
        line = wait_failure(pp, reference=big)
        assert line["cause"] in causes, line
        assert big not in cached_blobs(pp)
    assert_cache_clean(pp)
    fetched_again(pp, fake, hostile, big)
    return g


# ------------------------------------------------------ bodies cut short

@pytest.mark.parametrize("count", [1, None])
def test_reset_in_the_middle_of_a_blob(pp, fake, hostile, count):
    """An RST after 2.5 MiB of the storage body, once or on every
    attempt (a Range resume still moves 2.5 MiB further each time)."""
    rule = dict(endpoint="storage", reset_after_bytes=5 * MiB // 2)
    if count:
        rule["count"] = count
    fake.add_fault(**rule)
    pull_big(pp, fake, hostile, ["connection_reset"])


def test_reset_in_the_middle_of_a_manifest(pp, fake, hostile):
    img = hostile["img"]
    fake.add_fault(endpoint="manifests", reset_after_bytes=40)
    g = Got(pp, fake, "/v2/hostile/blobs/manifests/v1",
            headers={"Accept": MT_OCI_MANIFEST})
    assert g.seconds < BOUND_S
    # Manifests are checked whole before any byte goes out: an error.
    assert g.status == 502 and g.complete, (g.status, g.body)
    line = wait_failure(pp, reference="v1")
    assert line["cause"] == "connection_reset", line
    assert json.loads(cache_cmd(pp, "stats", "--json").stdout)["manifests"] == 0
    fake.clear_faults()
    g = Got(pp, fake, "/v2/hostile/blobs/manifests/v1",
            headers={"Accept": MT_OCI_MANIFEST})
    assert g.status == 200 and g.body == img.manifest


def test_blob_body_shorter_than_its_content_length(pp, fake, hostile):
    """All the bytes there are, then a FIN, under a Content-Length 1000
    bytes longer: no attempt can complete it."""
    size = len(hostile["img"].blobs[hostile["big"]])
    fake.add_fault(endpoint="storage", close_after_bytes=size,
                   headers={"Content-Length": str(size + 1000)})
    g = pull_big(pp, fake, hostile, ["connection_reset", "upstream_unavailable"],
                 may_complete=False)
    assert len(g.body) <= size


def test_blob_body_cut_by_a_fin(pp, fake, hostile):
    """Half the blob then a FIN, once: a resume may complete it."""
    fake.add_fault(endpoint="storage", close_after_bytes=3 * MiB, count=1)
    pull_big(pp, fake, hostile, ["connection_reset"])


def test_blob_body_longer_than_its_content_length(pp, fake, hostile):
    """A Content-Length 1000 bytes short: what it announces is the wrong
    bytes for the digest, whatever comes after."""
    size = len(hostile["img"].blobs[hostile["big"]])
    # Connection: close, or the 1000 bytes left over would be read as the
    # next answer on that connection (test_excess_bytes_...).
    fake.add_fault(endpoint="storage", headers={
        "Content-Length": str(size - 1000), "Connection": "close"})
    pull_big(pp, fake, hostile, ["digest_mismatch"], may_complete=False)


def test_manifest_longer_than_its_content_length(pp, fake, hostile):
    """By tag nothing but Docker-Content-Digest vouches for the bytes: a
    manifest cut to a lying Content-Length is refused, not stored."""
    img = hostile["img"]
    fake.add_fault(endpoint="manifests", count=1, headers={
        "Content-Length": str(len(img.manifest) - 10), "Connection": "close"})
    g = Got(pp, fake, "/v2/hostile/blobs/manifests/v1",
            headers={"Accept": MT_OCI_MANIFEST})
    assert g.status == 502 and g.complete, (g.status, g.body)
    assert json.loads(g.body)["errors"][0]["code"] == "DIGEST_INVALID"
    line = wait_failure(pp, reference="v1")
    assert line["cause"] == "digest_mismatch", line
    assert json.loads(cache_cmd(pp, "stats", "--json").stdout)["manifests"] == 0
    g = Got(pp, fake, "/v2/hostile/blobs/manifests/v1",
            headers={"Accept": MT_OCI_MANIFEST})
    assert g.status == 200 and g.body == img.manifest


def test_excess_bytes_do_not_fail_the_next_request(pp, fake, hostile):
    """A registry that sent more than its Content-Length on a kept-alive
    connection: that request fails (digest), the next one must not (curl
    7.88 keeps the connection with the excess unread; the next request
    reads it as its answer and is sent again on a fresh connection)."""
    img = hostile["img"]
    fake.add_fault(endpoint="manifests", count=1,
                   headers={"Content-Length": str(len(img.manifest) - 10)})
    g = Got(pp, fake, "/v2/hostile/blobs/manifests/v1",
            headers={"Accept": MT_OCI_MANIFEST})
    assert g.status == 502
    g = Got(pp, fake, "/v2/hostile/blobs/manifests/v1",
            headers={"Accept": MT_OCI_MANIFEST})
    assert g.status == 200 and g.body == img.manifest


# -------------------------------------------------------- wrong bytes

def test_wrong_bytes_for_a_blob(pp, fake, hostile):
    """One byte flipped in the middle: the client is cut before the end,
    nothing is kept, and the next pull gets the right blob."""
    fake.add_fault(endpoint="storage", corrupt=True)
    g = pull_big(pp, fake, hostile, ["digest_mismatch"], may_complete=False)
    assert g.status == 200 and not g.complete
    assert wait_failure(pp, reference=hostile["big"])["phase"] == "digest"


def request_line(pp, digest):
    """The debug "request" line of the last GET of digest."""
    lines = [l for l in pp.logs("request") if l.get("path", "").startswith(
        blob_path(digest))]
    assert lines, "no request line for %s" % digest
    return lines[-1]


def test_blob_announced_empty_is_not_a_complete_answer(pp, fake, hostile):
    """Content-Length: 0 on a blob that is not empty: no bytes, so nothing
    to wait for, but the digest still has to match before the client is
    told it has the whole blob."""
    small = min(hostile["img"].layers, key=lambda d: len(hostile["img"].blobs[d]))
    fake.add_fault(endpoint="storage", headers={"Content-Length": "0"})
    g = Got(pp, fake, blob_path(small))
    assert g.seconds < BOUND_S
    assert not (g.status == 200 and g.complete), (g.status, g.body[:100])
    assert wait_failure(pp, reference=small)["cause"] == "digest_mismatch"
    assert small not in cached_blobs(pp)
    fetched_again(pp, fake, hostile, small)


def test_wrong_bytes_without_content_length_are_cut(pp, fake, hostile):
    """No Content-Length: the cache cannot reserve room, so the blob is
    passed through (as one over the budget is, by the same path); it is
    still hashed, and the client cut at the end."""
    fake.add_fault(endpoint="storage", chunked=True, corrupt=True)
    g = pull_big(pp, fake, hostile, ["digest_mismatch"], may_complete=False)
    assert g.status == 200 and not g.complete
    assert wait_failure(pp, reference=hostile["big"])["phase"] == "digest"
    line = wait_for(lambda: [l for l in pp.logs("request") if l.get("cut")],
                    10, "a request line that says it was cut")[0]
    assert line["bytes"] < len(hostile["img"].blobs[hostile["big"]]), line


@pytest.mark.parametrize("by", ["digest", "tag"])
def test_wrong_bytes_for_a_manifest(pp, fake, hostile, by):
    img = hostile["img"]
    ref = img.digest if by == "digest" else "v1"
    fake.add_fault(endpoint="manifests", corrupt=True)
    g = Got(pp, fake, "/v2/hostile/blobs/manifests/" + ref,
            headers={"Accept": MT_OCI_MANIFEST})
    assert g.status == 502 and g.complete, (g.status, g.body)
    assert json.loads(g.body)["errors"][0]["code"] == "DIGEST_INVALID"
    assert wait_failure(pp, reference=ref)["cause"] == "digest_mismatch"
    assert json.loads(cache_cmd(pp, "stats", "--json").stdout)["manifests"] == 0
    fake.clear_faults()
    g = Got(pp, fake, "/v2/hostile/blobs/manifests/" + ref,
            headers={"Accept": MT_OCI_MANIFEST})
    assert g.status == 200 and g.body == img.manifest


# ---------------------------------------------------- oversized manifest

def peak_growth_kib(pid, action):
    """How far the process's peak RSS rose above its RSS while action ran
    (VmHWM reset through clear_refs first)."""
    status = Path("/proc/%d/status" % pid)

    def field(name):
        for line in status.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    Path("/proc/%d/clear_refs" % pid).write_text("5")
    before = field("VmRSS")
    action()
    return field("VmHWM") - before


@pytest.mark.parametrize("chunked", [False, True])
def test_manifest_over_4_mib(patient_pp, fake, hostile, chunked):
    """Refused with its cause, never stored, and never buffered past the
    limit: announced (Content-Length) or not (chunked), 48 MiB raise
    pullproxy's peak memory by a few MiB at most."""
    pp = patient_pp
    if chunked:
        fake.add_fault(endpoint="manifests", repo="hostile/huge", chunked=True)
    got = []
    grew = peak_growth_kib(pp.pid, lambda: got.append(Got(
        pp, fake, "/v2/hostile/huge/manifests/v1",
        headers={"Accept": MT_OCI_MANIFEST})))
    g = got[0]
    assert g.status == 502 and g.complete, (g.status, g.body)
    err = json.loads(g.body)["errors"][0]
    assert err["code"] == "MANIFEST_INVALID" and "4 MiB" in err["message"], err
    line = wait_failure(pp, reference="v1", repository="hostile/huge")
    assert line["error"] == "manifest over 4 MiB" and line["phase"] == "body", line
    assert json.loads(cache_cmd(pp, "stats", "--json").stdout)["manifests"] == 0
    # The limit (4 MiB) and a copy of it, not the 48 MiB (ASan's
    # allocator and quarantine inflate it, not to the body's size).
    assert grew < (32 if SANITIZED else 16) * 1024, "peak RSS grew by %d KiB" % grew


# ------------------------------------------------------------ redirects

def redirect_rule(fake, path_or_url, endpoint="blobs"):
    url = path_or_url if "://" in path_or_url else fake.registry_url + path_or_url
    return fake.add_fault(endpoint=endpoint, status=307, headers={"Location": url})


@pytest.mark.parametrize("kind", ["blob", "manifest"])
def test_redirect_loop(pp, fake, hostile, kind):
    """A registry that redirects to itself: bounded (curl follows 5),
    classified redirect_failed, 502."""
    img = hostile["img"]
    if kind == "blob":
        path, endpoint = blob_path(hostile["big"]), "blobs"
    else:
        path, endpoint = "/v2/hostile/blobs/manifests/v1", "manifests"
    redirect_rule(fake, path + "?ns=" + fake.registry, endpoint)
    g = Got(pp, fake, path, headers={"Accept": MT_OCI_MANIFEST})
    assert g.status == 502 and g.seconds < BOUND_S, (g.status, g.body)
    line = wait_failure(pp, repository="hostile/blobs")
    assert line["cause"] == "redirect_failed", line
    asked = [r for r in fake.requests("registry") if r.get("endpoint") == endpoint]
    # One request and five redirects per attempt.
    attempts = line.get("attempt", 1)
    assert len(asked) <= 6 * attempts, len(asked)
    assert img.manifest  # the image is there: only the loop failed


def test_redirect_from_https_to_plain_http_is_refused(pp, fake, hostile, sentinel):
    redirect_rule(fake, "http://%s:%d/blob" % (LOCALHOST, sentinel.port))
    g = Got(pp, fake, blob_path(hostile["big"]))
    assert g.status == 502
    line = wait_failure(pp, reference=hostile["big"])
    assert (line["cause"], line["phase"]) == ("redirect_failed", "redirect"), line
    assert line["error"] == "redirect from https to plain http refused", line
    time.sleep(0.2)
    assert sentinel.connections == 0, "the plain-http target was contacted"


@pytest.mark.parametrize("target", ["169.254.169.254", "168.63.129.16"])
def test_redirect_from_loopback_to_link_local_is_refused(pp, fake, hostile, target):
    """The registry (127.0.0.1) is not link-local: IMDS and Azure's
    wireserver are out of its reach. Refused before any connect (no wait
    for a connect timeout to an address that may not route here)."""
    redirect_rule(fake, "https://%s/metadata/identity/oauth2/token"
                  "?api-version=2018-02-01&resource=x" % target)
    g = Got(pp, fake, blob_path(hostile["big"]))
    assert g.status == 502 and g.seconds < 2, (g.status, g.seconds)
    line = wait_failure(pp, reference=hostile["big"])
    assert line["cause"] == "redirect_failed", line
    assert line["error"] == ("redirect to link-local address %s refused: the "
                             "registry is not there" % target), line
    assert "?" not in line["url"]


def test_redirect_within_loopback_is_followed(pp, fake, hostile):
    """The fake's own 307 goes from its registry (127.0.0.1) to its
    storage (127.0.0.1, another port): a lab registry keeps working."""
    g = Got(pp, fake, blob_path(hostile["big"]))
    assert g.status == 200 and g.body == hostile["img"].blobs[hostile["big"]]


def test_redirect_from_off_the_node_into_it_is_refused(tmp_path):
    """A registry that is not on this node (192.0.2.10 in a network
    namespace of the test's own: see redirect_netns.py) redirecting to
    127.0.0.1, localhost, 0.0.0.0, [::1], IMDS, a loopback registry whose
    connection pullproxy already holds, or via storage to 127.0.0.1, or
    naming a token realm there: each refused, and nothing there is
    contacted. A redirect to another address off the node is followed."""
    script = Path(__file__).with_name("redirect_netns.py")
    if shutil.which("ip") is None:
        pytest.skip("no ip(8) to give the namespace an address")
    try:
        cp = subprocess.run(["unshare", "--net", "/usr/bin/python3", str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, timeout=120, cwd=tmp_path,
                            env=dict(os.environ, PULLPROXY_BIN=PULLPROXY_BIN))
    except FileNotFoundError:
        pytest.skip("no unshare(1)")
    if cp.returncode != 0 and ("unshare failed" in cp.stderr or
                               "Operation not permitted" in cp.stderr):
        pytest.skip("cannot make a network namespace: " + cp.stderr.strip()[-200:])
    assert cp.returncode == 0, cp.stderr[-3000:]
    out = json.loads(cp.stdout)
    assert out["exit"] == 0
    assert out["pooled_first"] == [200, True]
    assert out["statuses"].pop("to-remote") == 200 and out["remote_body_ok"]
    assert out["statuses"] == {c: 502 for c in out["statuses"]}, out["statuses"]
    assert all(s < 5 for s in out["seconds"].values()), out["seconds"]
    assert out["sentinel4"] == 0 and out["sentinel6"] == 0
    # The loopback registry saw only its own client's request.
    assert len(out["local_seen"]) == 1, out["local_seen"]
    lines = [l for l in out["log"] if l.get("msg") == "upstream failure" and
             not l["repository"].startswith("realm-")]
    assert len(lines) == 7, lines
    for l in lines:
        assert l["cause"] == "redirect_failed" and "refused" in l["error"], l
    # A token realm is the registry's word too: not fetched on the node.
    assert out["realm_statuses"] == {c: 502 for c in out["realm_statuses"]} and \
        len(out["realm_statuses"]) == 3, out["realm_statuses"]
    auth = [l for l in out["log"] if l.get("msg") == "auth failure"]
    assert sorted(l["registry"] for l in auth) == [
        "realm-imds.example", "realm-localhost.example", "realm-loopback.example"], auth
    for l in auth:
        assert l["phase"] == "token" and "refused: the registry is not there" in \
            l["error"] and l["cause"] == "redirect_failed", l


# ---------------------------------------------------- never answering

@pytest.fixture
def silent():
    """Takes connections and never says a word."""
    s = Sentinel(keep=True)
    yield s
    s.close()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_server_that_never_answers(pullproxy_factory, tmp_path, silent, scheme):
    """A registry that takes the connection and says nothing: plain
    (bounded by the stall timeout) or during the TLS handshake (bounded
    by the connect timeout). The client gets 504 in bounded time."""
    conf = tmp_path / "server.conf"
    conf.write_text(SERVER)
    pp = pullproxy_factory(
        registries=[("myacr.azurecr.io", "%s://%s:%d" % (scheme, LOCALHOST, silent.port))],
        args=["--config", str(conf)])
    t0 = time.monotonic()
    r = pp.get("/v2/app/manifests/v1", timeout=60)
    took = time.monotonic() - t0
    assert r.status == 504, (r.status, r.body)
    assert took < BOUND_S, took
    line = wait_for(lambda: pp.logs("upstream failure"), 10, "the failure")[0]
    assert line["cause"] in ("io_timeout", "connect_timeout"), line
    assert silent.connections, "the registry was never even connected to"


def test_blob_that_stalls_half_way(pp, fake, hostile):
    """Headers and half the blob, then silence for a minute: the client
    is cut in bounded time, nothing is kept."""
    fake.add_fault(endpoint="storage", stall_s=60)
    pull_big(pp, fake, hostile, ["io_timeout"], may_complete=False)
