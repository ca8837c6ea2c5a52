"""Upstream identity against the fake ACR over TLS: every provider
(anonymous, basic, acr-refresh-token, managed-identity), the bearer flow
with one token fetch per scope however many ask, tokens that expire
mid-pull, failures that are logged once and answered fast, and no secret
in any log."""

import http.client
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

# acr.py is also this module's plugin (pytest_plugins below): let pytest
# rewrite its asserts although it is imported here first.
pytest.register_assert_rewrite("acr")
from acr import (BIG_LAYER, CLIENT_ID, JWT_PREFIX, LOGS, PASSWORD,  # noqa: E402
                 SECRETS, TENANT, USER, fake_requests, fetch_refresh_token, get,
                 ns_path)
from conftest import LOCALHOST, closed_port, wait_for  # noqa: E402
from test_pull import write_hosts_dir  # noqa: E402

pytest_plugins = ["acr"]

MI = dict(auth="managed-identity", client_id=CLIENT_ID, tenant=TENANT)


def mi_settings(fake, **extra):
    return dict(MI, imds_url=fake.imds_url) | extra


def assert_storage_clean(fake):
    """Blob storage saw no Authorization header, and served everything."""
    storage = fake_requests(fake, listener="storage")
    assert storage, "no blob went through storage"
    for r in storage:
        assert r["authorization_scheme"] == "none", r
        assert r["status"] in (200, 206), r


def assert_no_secret(text, where):
    assert JWT_PREFIX not in text, "a token in %s" % where
    for s in SECRETS:
        assert s not in text, "a secret in %s" % where


# ------------------------------------------------------------- providers

def test_managed_identity(fake, acr_images, acr_proxy):
    img = acr_images[1]["small"]
    pp = acr_proxy(**mi_settings(fake))
    r = get(pp, fake, "/v2/id/small/manifests/v1")
    assert r.status == 200 and r.body == img.manifest
    for digest, data in img.blobs.items():
        r = get(pp, fake, "/v2/id/small/blobs/" + digest)
        assert r.status == 200 and r.body == data, digest
    r = get(pp, fake, "/v2/id/small/tags/list")
    assert r.status == 200 and r.json()["tags"] == ["v1"]

    # IMDS with the header it requires and the identity configured; one
    # exchange; one token for the repository, sent on every later request.
    imds = fake_requests(fake, "imds")
    assert len(imds) == 1 and imds[0]["status"] == 200
    assert "client_id=" + CLIENT_ID in imds[0]["query"]
    assert "resource=https%3A%2F%2Fcontainerregistry.azure.net" in imds[0]["query"]
    assert [r["status"] for r in fake_requests(fake, "exchange")] == [200]
    assert [r["status"] for r in fake_requests(fake, "token")] == [200]
    data = [r for r in fake.requests("registry")
            if r["endpoint"] in ("manifests", "blobs", "tags")]
    assert data[0]["status"] == 401 and data[0]["authorization_scheme"] == "none"
    assert all(r["authorization_scheme"] == "Bearer" and r["status"] in (200, 307)
               for r in data[1:]), data
    assert_storage_clean(fake)

    tokens = pp.logs("auth token")
    assert [(l["phase"], l["refresh"]) for l in tokens] == [
        ("exchange", False), ("token", False)], tokens
    assert tokens[1]["scope"] == "repository:id/small:pull"
    assert tokens[1]["lifetime_s"] > 250
    assert not pp.logs("auth failure") and not pp.logs("upstream failure")


def test_ctr_pull_with_managed_identity(tmp_path, fake, acr_images, acr_proxy,
                                        containerd):
    img = acr_images[1]["small"]
    pp = acr_proxy(**mi_settings(fake))
    hosts = write_hosts_dir(tmp_path / "hosts",
                            SimpleNamespace(host=fake.registry, url=fake.registry_url), pp)
    ref = "%s/%s" % (fake.registry, img.ref)
    cp = containerd.ctr("images", "pull", "--plain-http", "--hosts-dir", str(hosts),
                        "--snapshotter", "native", ref, check=False)
    assert cp.returncode == 0, "ctr pull failed:\n%s\n%s" % (cp.stdout, cp.stderr)
    listing = containerd.ctr("images", "ls").stdout
    line = next((l for l in listing.splitlines() if l.startswith(ref + " ")), None)
    assert line is not None and img.digest in line.split(), listing

    # containerd could not have gone to the fake itself (it does not
    # trust the test CA): everything came through pullproxy.
    reqs = pp.requests()
    for digest, blob in img.blobs.items():
        assert any(r["route"] == "/v2/%s/blobs/%s" % (img.repo, digest) and
                   r["status"] == 200 and r["bytes"] == len(blob) for r in reqs), digest
    assert len(fake_requests(fake, "imds")) == 1
    assert len(fake_requests(fake, "exchange")) == 1
    assert len(fake_requests(fake, "token")) == 1
    assert_storage_clean(fake)
    assert not pp.logs("auth failure") and not pp.logs("upstream failure")


def test_anonymous_follows_a_bearer_challenge(fake, acr_images, acr_proxy):
    """auth = anonymous (the default) asks the realm for a token without
    credentials, as docker does, when the registry challenges."""
    img = acr_images[1]["small"]
    fake.config(anonymous=True)
    fake.add_fault(endpoint="manifests", status=401, count=1)
    pp = acr_proxy()
    r = get(pp, fake, "/v2/id/small/manifests/v1")
    assert r.status == 200 and r.body == img.manifest
    token = fake_requests(fake, "token")
    assert len(token) == 1 and token[0]["method"] == "GET"
    assert token[0]["authorization_scheme"] == "none" and token[0]["status"] == 200
    assert "scope=repository%3Aid%2Fsmall%3Apull" in token[0]["query"]
    manifests = fake_requests(fake, "manifests")
    assert [(r["authorization_scheme"], r["status"]) for r in manifests] == [
        ("none", 401), ("Bearer", 200)]
    assert [l["provider"] for l in pp.logs("auth token")] == ["anonymous"]

    # A registry that does not allow anonymous pull: refused at the realm.
    fake.config(anonymous=False)
    t0 = time.monotonic()
    r = get(pp, fake, "/v2/id/other/manifests/v1")
    assert r.status == 502 and time.monotonic() - t0 < 5
    fail = pp.logs("auth failure")
    assert len(fail) == 1 and fail[0]["phase"] == "token"
    assert fail[0]["status"] == 401 and fail[0]["code"] == "UNAUTHORIZED"


def test_basic(fake, acr_images, acr_proxy):
    img = acr_images[1]["small"]
    pp = acr_proxy(auth="basic", username_file=("user", USER + "\n"),
                   password_file=("password", PASSWORD + "\n"))
    # A storage host name that differs from the registry's: the token must
    # not follow the 307 (the fake's storage refuses any Authorization).
    fake.add_fault(endpoint="blobs", redirect_host="localhost")
    r = get(pp, fake, "/v2/id/small/manifests/v1")
    assert r.status == 200 and r.body == img.manifest
    d = img.layers[0]
    r = get(pp, fake, "/v2/id/small/blobs/" + d)
    assert r.status == 200 and r.body == img.blobs[d]
    token = fake_requests(fake, "token")
    assert [(t["method"], t["authorization_scheme"], t["status"]) for t in token] == [
        ("GET", "Basic", 200)]
    assert_storage_clean(fake)

    # Secrets never on the command line.
    cmdline = Path("/proc/%d/cmdline" % pp.pid).read_bytes().decode()
    assert PASSWORD not in cmdline and USER not in cmdline

    # The password file is read on every fetch: a rotation is picked up
    # (here a wrong one, for the next scope), then put right again.
    pwfile = Path(pp.conf.read_text().split("password_file = ")[1].split("\n")[0])
    pwfile.write_text("wrong-" + PASSWORD)
    SECRETS.add("wrong-" + PASSWORD)
    r = get(pp, fake, "/v2/id/other/manifests/v1")
    assert r.status == 502
    fail = pp.logs("auth failure")
    assert [(l["phase"], l["status"], l["scope"]) for l in fail] == [
        ("token", 401, "repository:id/other:pull")]
    pwfile.write_text(PASSWORD)
    r = get(pp, fake, "/v2/id/other/manifests/v1")
    assert r.status == 200


def test_basic_challenge_gets_the_credentials(fake, acr_proxy):
    """A registry that answers with a Basic challenge gets the configured
    credentials on the retry itself (the fake wants Bearer there, so it
    refuses them: that second 401 goes to the client)."""
    fake.add_fault(endpoint="manifests", status=401, count=1,
                   headers={"WWW-Authenticate": 'Basic realm="fakeacr"'})
    pp = acr_proxy(auth="basic", username_file=("user", USER),
                   password_file=("password", PASSWORD))
    r = get(pp, fake, "/v2/id/small/manifests/v1")
    assert r.status == 502
    manifests = fake_requests(fake, "manifests")
    assert [(m["authorization_scheme"], m["status"]) for m in manifests] == [
        ("none", 401), ("Basic", 401)]
    assert not fake_requests(fake, "token")


def test_acr_refresh_token(fake, acr_images, acr_proxy):
    img = acr_images[1]["small"]
    refresh = fetch_refresh_token(fake)
    fake.clear_requests()
    pp = acr_proxy(auth="acr-refresh-token",
                   refresh_token_file=("refresh-token", refresh + "\n"))
    r = get(pp, fake, "/v2/id/small/manifests/v1")
    assert r.status == 200 and r.body == img.manifest
    token = fake_requests(fake, "token")
    assert [(t["method"], t["authorization_scheme"], t["status"]) for t in token] == [
        ("POST", "none", 200)]
    assert not fake_requests(fake, "imds") and not fake_requests(fake, "exchange")
    assert [l["provider"] for l in pp.logs("auth token")] == ["acr-refresh-token"]


def test_missing_secret_file_stops_the_start(tmp_path, fake, acr_proxy):
    pp = acr_proxy(auth="basic", start=False, username_file=("user", USER),
                   password_file=str(tmp_path / "absent"))
    with pytest.raises(AssertionError, match="exited 1 at start"):
        pp.start()
    assert "cannot read %s" % (tmp_path / "absent") in pp.stderr()


# ---------------------------------------------------------------- lifetimes

def test_token_expires_mid_download_and_before_the_next(tmp_path, fake, acr_images,
                                                         acr_proxy, containerd):
    """Access tokens of 2 s; every blob stalls 3 s half way in storage, and
    containerd fetches one blob at a time: the big layer outlives its
    token, and every blob after the first needs a new one."""
    img = acr_images[1]["big"]
    fake.config(access_ttl=2)
    fake.add_fault(endpoint="storage", repo=img.repo, stall_s=3)
    pp = acr_proxy(**mi_settings(fake))
    hosts = write_hosts_dir(tmp_path / "hosts",
                            SimpleNamespace(host=fake.registry, url=fake.registry_url), pp)
    ref = "%s/%s" % (fake.registry, img.ref)
    cp = containerd.ctr("images", "pull", "--plain-http", "--hosts-dir", str(hosts),
                        "--snapshotter", "native", "--max-concurrent-downloads", "1",
                        ref, check=False, timeout=180)
    assert cp.returncode == 0, "ctr pull failed:\n%s\n%s" % (cp.stdout, cp.stderr)
    assert img.digest in containerd.ctr("images", "ls").stdout

    big = img.layers[0]
    served = [r for r in pp.requests() if r["route"] == "/v2/%s/blobs/%s" % (img.repo, big)]
    assert served and served[0]["status"] == 200
    assert served[0]["bytes"] == len(img.blobs[big]) > BIG_LAYER
    assert served[0]["ms"] > 2500, "the big layer did not outlive its token"
    tokens = [l for l in pp.logs("auth token") if l["phase"] == "token"]
    assert len(tokens) >= 3, tokens
    assert tokens[0]["refresh"] is False and all(t["refresh"] for t in tokens[1:])
    assert all(t["lifetime_s"] <= 2 for t in tokens)
    # The exchange's refresh token (3 h) served every one of them.
    assert len(fake_requests(fake, "exchange")) == 1
    assert_storage_clean(fake)
    assert not pp.logs("auth failure") and not pp.logs("upstream failure")


def test_refresh_token_renewed_before_it_expires(fake, acr_proxy):
    """A refresh token of 4 s is renewed after 2 (its margin: half its
    life), through IMDS and the exchange again, before the next scope."""
    fake.config(refresh_ttl=4)
    pp = acr_proxy(**mi_settings(fake))
    assert get(pp, fake, "/v2/id/small/manifests/v1").status == 200
    time.sleep(2.5)
    assert get(pp, fake, "/v2/id/other/manifests/v1").status == 200
    assert len(fake_requests(fake, "imds")) == 2
    assert [r["status"] for r in fake_requests(fake, "exchange")] == [200, 200]
    ex = [l for l in pp.logs("auth token") if l["phase"] == "exchange"]
    assert [l["refresh"] for l in ex] == [False, True]
    assert all(l["lifetime_s"] <= 4 for l in ex)
    assert not pp.logs("auth failure")


def test_refused_refresh_token_goes_back_through_imds_once(fake, acr_proxy):
    """The registry refuses the cached refresh token before its expiry
    (the role removed and granted back): the pull in flight gets a new one
    through IMDS and the exchange, once, and succeeds."""
    pp = acr_proxy(**mi_settings(fake))
    assert get(pp, fake, "/v2/id/small/manifests/v1").status == 200
    fake.revoke_refresh_tokens()
    fake.clear_requests()
    r = get(pp, fake, "/v2/id/other/manifests/v1")
    assert r.status == 200, r.body
    assert [r["status"] for r in fake_requests(fake, "token")] == [401, 200]
    assert [r["status"] for r in fake_requests(fake, "imds")] == [200]
    assert [r["status"] for r in fake_requests(fake, "exchange")] == [200]
    refused = pp.logs("auth refresh refused")
    assert len(refused) == 1 and refused[0]["scope"] == "repository:id/other:pull"
    assert refused[0]["status"] == 401 and refused[0]["code"] == "UNAUTHORIZED"
    assert not pp.logs("auth failure") and not pp.logs("upstream failure")
    # The new refresh token serves the next scope without IMDS.
    assert get(pp, fake, "/v2/id/big/manifests/v1").status == 200
    assert len(fake_requests(fake, "imds")) == 1


def test_refused_refresh_token_goes_back_once_only(fake, acr_proxy):
    """A registry that refuses every refresh token costs one more trip
    through IMDS and the exchange per fetch, not a loop."""
    pp = acr_proxy(**mi_settings(fake))
    fake.add_fault(endpoint="token", status=401)
    r = get(pp, fake, "/v2/id/small/manifests/v1")
    assert r.status == 502
    assert len(fake_requests(fake, "token")) == 2
    assert len(fake_requests(fake, "imds")) == 2
    assert [r["status"] for r in fake_requests(fake, "exchange")] == [200, 200]
    assert len(pp.logs("auth refresh refused")) == 1
    fail = wait_for(lambda: pp.logs("auth failure"), 5, "auth failure")
    assert len(fail) == 1 and fail[0]["phase"] == "token", fail
    assert fail[0]["cause"] == "auth_unauthorized"


def test_imds_retries_then_gives_up(fake, acr_proxy):
    # One 500, then a token: the retry after a second's back-off.
    fake.add_fault(endpoint="imds", status=500, count=1)
    pp = acr_proxy(**mi_settings(fake))
    assert get(pp, fake, "/v2/id/small/manifests/v1").status == 200
    assert [r["status"] for r in fake_requests(fake, "imds")] == [500, 200]
    ex = [l for l in pp.logs("auth token") if l["phase"] == "exchange"]
    assert len(ex) == 1 and ex[0]["imds_attempts"] == 2 and ex[0]["ms"] >= 900

    # IMDS updating (410) for longer than imds_retry_s allows.
    fake.clear_requests()
    fake.add_fault(endpoint="imds", status=410)
    pp = acr_proxy(**mi_settings(fake, imds_retry_s=2))
    t0 = time.monotonic()
    r = get(pp, fake, "/v2/id/small/manifests/v1")
    assert r.status == 502 and time.monotonic() - t0 < 5
    assert [r["status"] for r in fake_requests(fake, "imds")] == [410, 410]
    fail = pp.logs("auth failure")
    assert len(fail) == 1
    assert (fail[0]["phase"], fail[0]["status"], fail[0]["imds_attempts"]) == ("imds", 410, 2)


# ---------------------------------------------------------- single flight

def test_200_concurrent_requests_one_token_fetch(fake, acr_proxy):
    # The pace is not what this is about: 400 sends (each answered 401,
    # then sent with the token) at the default 10/s took 38 s.
    pp = acr_proxy(**mi_settings(fake, rate=1000, burst=500))
    n = 200
    start = threading.Barrier(n)
    statuses = [None] * n

    def one(i):
        try:
            start.wait(30)
            conn = http.client.HTTPConnection(LOCALHOST, pp.port, timeout=60)
            conn.request("GET", ns_path(fake, "/v2/id/small/tags/list"))
            resp = conn.getresponse()
            resp.read()
            statuses[i] = resp.status
            conn.close()
        except Exception as e:      # reported below
            statuses[i] = repr(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert statuses == [200] * n, [s for s in statuses if s != 200][:5]
    tags = fake_requests(fake, "tags")
    assert sum(1 for r in tags if r["status"] == 200) == n
    assert len(fake_requests(fake, "imds")) == 1
    assert len(fake_requests(fake, "exchange")) == 1
    assert len(fake_requests(fake, "token")) == 1, "one token fetch for one scope"
    assert len([l for l in pp.logs("auth token") if l["phase"] == "token"]) == 1


# ----------------------------------------------------------------- failures

def test_failures_are_logged_once_and_answered_fast(fake, acr_proxy):
    """IMDS down, IMDS 400 (an identity the node does not have), exchange
    401 (another tenant), token 401: each a distinct "auth failure" line,
    and the client gets a 502 at once, with no secret in its body."""
    port, sock = closed_port()
    cases = {
        "imds down": mi_settings(fake, imds_url="http://%s:%d" % (LOCALHOST, port)),
        "imds 400": mi_settings(fake, client_id="00000000-dead-4000-8000-000000000000"),
        "exchange 401": mi_settings(fake, tenant="00000000-0000-4000-8000-0000000000ff"),
        "token 401": mi_settings(fake),
    }
    seen = {}
    try:
        for name, settings in cases.items():
            fake.clear_faults()
            if name == "token 401":
                fake.add_fault(endpoint="token", status=401)
            pp = acr_proxy(**settings)
            t0 = time.monotonic()
            r = get(pp, fake, "/v2/id/small/manifests/v1")
            elapsed = time.monotonic() - t0
            assert r.status == 502, (name, r.status, r.body)
            assert elapsed < 3, (name, elapsed)
            assert_no_secret(r.body.decode(), "the 502 body")
            fail = wait_for(lambda: pp.logs("auth failure"), 5, "auth failure")
            assert len(fail) == 1, (name, fail)
            seen[name] = fail[0]
            assert fail[0]["level"] == "error"
            assert fail[0]["registry"] == fake.registry
            assert fail[0]["provider"] == "managed-identity"
    finally:
        sock.close()

    f = seen["imds down"]
    assert (f["phase"], f["status"]) == ("imds", 0) and "onnect" in f["error"], f
    assert f["url"] == "http://%s:%d/metadata/identity/oauth2/token" % (LOCALHOST, port)
    f = seen["imds 400"]
    assert (f["phase"], f["status"], f["code"]) == ("imds", 400, "invalid_request"), f
    assert f["message"] == "Identity not found"
    f = seen["exchange 401"]
    assert (f["phase"], f["status"], f["code"]) == ("exchange", 401, "UNAUTHORIZED"), f
    assert "tenant" in f["message"]
    f = seen["token 401"]
    assert (f["phase"], f["status"], f["code"]) == ("token", 401, "UNAUTHORIZED"), f
    assert f["scope"] == "repository:id/small:pull"
    keys = {(f["phase"], f["status"], f.get("code")) for f in seen.values()}
    assert len(keys) == len(cases), "the four failures must read differently"


def test_acr_credentials_never_go_to_another_host(fake, acr_proxy):
    """A challenge whose realm is not the registry's host gets no ACR
    credential, not even an IMDS call: a "challenge" failure."""
    realm = "https://localhost:%d/oauth2/token" % fake.ports["registry"]
    fake.add_fault(endpoint="manifests", status=401, headers={
        "WWW-Authenticate": 'Bearer realm="%s",service="x"' % realm})
    pp = acr_proxy(**mi_settings(fake))
    r = get(pp, fake, "/v2/id/small/manifests/v1")
    assert r.status == 502
    fail = pp.logs("auth failure")
    assert len(fail) == 1 and fail[0]["phase"] == "challenge", fail
    assert fail[0]["error"] == "the realm is not on the registry's host"
    assert not any(fake_requests(fake, e) for e in ("imds", "exchange", "token"))


@pytest.mark.parametrize("endpoint", ["exchange", "token"])
def test_credential_posts_do_not_follow_redirects(fake, acr_proxy, sentinel,
                                                  endpoint):
    """The exchange carries the Entra token, the token POST the refresh
    token, both in the body: a 307 elsewhere is not followed (curl would
    POST the same body there)."""
    fake.add_fault(endpoint=endpoint, status=307, headers={
        "Location": "https://127.0.0.1:%d/oauth2/%s" % (sentinel.port, endpoint)})
    pp = acr_proxy(**mi_settings(fake))
    r = get(pp, fake, "/v2/id/small/manifests/v1")
    assert r.status == 502
    assert sentinel.connections == 0
    assert [r["status"] for r in fake_requests(fake, endpoint)] == [307]
    fail = wait_for(lambda: pp.logs("auth failure"), 5, "auth failure")
    assert len(fail) == 1 and fail[0]["phase"] == endpoint, fail
    assert fail[0]["status"] == 307 and "redirected" in fail[0]["error"]
    assert fail[0]["cause"] == "redirect_failed" and "token endpoint" in fail[0]["hint"]


def test_basic_credentials_never_go_to_another_host(fake, acr_proxy, sentinel):
    """A Bearer realm on another host, here a loopback listener, gets no
    Basic credentials: the realm must be on the registry's host."""
    realm = "http://localhost:%d/token" % sentinel.port
    fake.add_fault(endpoint="manifests", status=401, headers={
        "WWW-Authenticate": 'Bearer realm="%s",service="x"' % realm})
    pp = acr_proxy(auth="basic", username_file=("user", USER + "\n"),
                   password_file=("password", PASSWORD + "\n"))
    assert get(pp, fake, "/v2/id/small/manifests/v1").status == 502
    assert sentinel.connections == 0
    fail = pp.logs("auth failure")
    assert len(fail) == 1 and fail[0]["phase"] == "challenge", fail
    assert fail[0]["error"] == "the realm is not on the registry's host"


# ------------------------------------------------------------------ secrets

def test_no_secret_in_any_log(tmp_path_factory):
    """Runs last (see acr.py): every pullproxy log, stdout and stderr of
    the session, whichever test started it, holds no password, refresh
    token or JWT the fake handed out."""
    base = tmp_path_factory.getbasetemp()
    files = set(p for p in LOGS if p.exists())
    for pattern in ("**/pullproxy.log", "**/stderr.log", "**/stdout.log"):
        files.update(base.glob(pattern))
    assert any("auth token" in p.read_text(errors="replace") for p in files), \
        "no log of a run that fetched tokens: nothing was scanned"
    for path in sorted(files):
        assert_no_secret(path.read_text(errors="replace"), path)
