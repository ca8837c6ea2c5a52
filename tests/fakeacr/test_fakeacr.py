"""Tests for the fake ACR itself: if these fail, integration tests that
use it would test the fake rather than pullproxy.

Run: /usr/bin/python3 -m pytest -q tests/fakeacr (FAKEACR_BIN to pick a
build). Standard library and pytest only.
"""

import base64
import hashlib
import http.client
import json
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fakeacr import FakeACR, write_image  # noqa: E402

REPO = "library/hello"
CLIENT = "6f2b3c4d-0000-4000-8000-00000000c1d1"
TENANT = "a1b2c3d4-0000-4000-8000-0000000000aa"
SERVICE = "myacr.azurecr.io"
LAYER = bytes(range(256)) * 64          # 16 KiB, every byte value
AUTH_MSG = ("authentication required, visit https://aka.ms/acr/"
            "authorization for more information.")
IMDS_PATH = ("/metadata/identity/oauth2/token?api-version=2018-02-01"
             "&resource=https://containerregistry.azure.net")


# ------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def image(tmp_path_factory):
    content = tmp_path_factory.mktemp("content")
    img = write_image(content, REPO, "v1", [LAYER])
    write_image(content, REPO, "v2", [b"second"])
    write_image(content, REPO, "v3", [b"third"])
    img["content"] = content
    return img


@pytest.fixture(scope="module")
def acr(tmp_path_factory, image):
    fake = FakeACR().start(tmp_path_factory.mktemp("fakeacr"),
                           image["content"], service=SERVICE,
                           client_ids=[CLIENT], tenant=TENANT,
                           users=["admin:s3cret"])
    yield fake
    fake.stop()                 # SIGTERM must give exit status 0


@pytest.fixture(autouse=True)
def clean(acr):
    acr.clear_faults()
    acr.clear_requests()
    acr.config(access_ttl=300)


# -------------------------------------------------------------- helpers

class Reply:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def call(acr, url, method="GET", headers=None, body=None, timeout=10):
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port,
                                           context=acr.ssl_context(),
                                           timeout=timeout)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port,
                                          timeout=timeout)
    path = u.path + ("?" + u.query if u.query else "")
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def form(acr, path, **fields):
    return call(acr, acr.registry_url + path, "POST",
                {"Content-Type": "application/x-www-form-urlencoded"},
                urllib.parse.urlencode(fields))


def claims(jwt):
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def imds_token(acr, client_id=CLIENT):
    r = call(acr, acr.imds_url + IMDS_PATH + f"&client_id={client_id}",
             headers={"Metadata": "true"})
    assert r.status == 200, r.body
    return r.json()


def refresh_token(acr):
    r = form(acr, "/oauth2/exchange", grant_type="access_token",
             service=SERVICE, tenant=TENANT,
             access_token=imds_token(acr)["access_token"])
    assert r.status == 200, r.body
    return r.json()["refresh_token"]


def access_token(acr, repo=REPO):
    r = form(acr, "/oauth2/token", grant_type="refresh_token",
             service=SERVICE, scope=f"repository:{repo}:pull",
             refresh_token=refresh_token(acr))
    assert r.status == 200, r.body
    return r.json()["access_token"]


def bearer(acr, repo=REPO):
    return {"Authorization": "Bearer " + access_token(acr, repo)}


def blob_location(acr, digest):
    r = call(acr, f"{acr.registry_url}/v2/{REPO}/blobs/{digest}",
             headers=bearer(acr))
    assert r.status == 307, r.body
    return r.headers["Location"]


# ---------------------------------------------------------------- tests

def test_challenge_without_token(acr):
    realm = f'realm="{acr.registry_url}/oauth2/token"'
    r = call(acr, acr.registry_url + "/v2/")
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == \
        f'Bearer {realm},service="{SERVICE}"'
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"

    r = call(acr, f"{acr.registry_url}/v2/{REPO}/manifests/v1")
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == (
        f'Bearer {realm},service="{SERVICE}",scope="repository:{REPO}:pull"')
    assert r.json() == {"errors": [{
        "code": "UNAUTHORIZED", "message": AUTH_MSG,
        "detail": [{"Type": "repository", "Name": REPO, "Action": "pull"}]}]}

    # Basic is for /oauth2/token only, as on ACR.
    basic = base64.b64encode(b"admin:s3cret").decode()
    r = call(acr, f"{acr.registry_url}/v2/{REPO}/manifests/v1",
             headers={"Authorization": "Basic " + basic})
    assert r.status == 401


def test_imds(acr):
    r = call(acr, acr.imds_url + IMDS_PATH)
    assert r.status == 400
    assert r.json()["error"] == "invalid_request"

    r = call(acr, acr.imds_url + IMDS_PATH + "&client_id=someone-else",
             headers={"Metadata": "true"})
    assert r.status == 400
    assert r.json() == {"error": "invalid_request",
                        "error_description": "Identity not found"}

    before = int(time.time())
    tok = imds_token(acr)
    assert all(isinstance(v, str) for v in tok.values())
    assert set(tok) == {"access_token", "client_id", "expires_in",
                        "expires_on", "ext_expires_in", "not_before",
                        "resource", "token_type"}
    assert tok["client_id"] == CLIENT and tok["token_type"] == "Bearer"
    assert tok["resource"] == "https://containerregistry.azure.net"
    assert int(tok["expires_on"]) >= before + int(tok["expires_in"])
    c = claims(tok["access_token"])
    assert c["tid"] == TENANT and c["appid"] == CLIENT

    # Only one identity is configured: client_id may be left out.
    r = call(acr, acr.imds_url + IMDS_PATH, headers={"Metadata": "true"})
    assert r.status == 200 and r.json()["client_id"] == CLIENT


def test_exchange_and_token_flow(acr):
    rt = refresh_token(acr)
    rc = claims(rt)
    assert rc["aud"] == SERVICE and rc["grant_type"] == "refresh_token"
    assert rc["exp"] - rc["iat"] == 10800

    r = form(acr, "/oauth2/token", grant_type="refresh_token",
             service=SERVICE, scope=f"repository:{REPO}:pull",
             refresh_token=rt)
    assert r.status == 200
    body = r.json()
    assert list(body) == ["access_token"]       # no expires_in, as ACR
    c = claims(body["access_token"])
    assert c["exp"] - c["iat"] == 300
    assert abs(c["iat"] - time.time()) < 5
    assert c["aud"] == SERVICE
    assert c["access"] == [{"type": "repository", "name": REPO,
                            "actions": ["pull"]}]

    # Wrong tenant, a forged IMDS token, a refresh token for the exchange.
    at = imds_token(acr)["access_token"]
    r = form(acr, "/oauth2/exchange", grant_type="access_token",
             service=SERVICE, tenant="another-tenant", access_token=at)
    assert r.status == 401 and r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    forged = at[:-4] + ("AAAA" if not at.endswith("AAAA") else "BBBB")
    r = form(acr, "/oauth2/exchange", grant_type="access_token",
             service=SERVICE, access_token=forged)
    assert r.status == 401
    r = form(acr, "/oauth2/exchange", grant_type="access_token",
             service=SERVICE, access_token=rt)
    assert r.status == 401
    r = form(acr, "/oauth2/token", grant_type="refresh_token",
             service=SERVICE, scope=f"repository:{REPO}:pull",
             refresh_token="not.a.token")
    assert r.status == 401


def test_password_grants(acr):
    scope = urllib.parse.quote(f"repository:{REPO}:pull")
    url = f"{acr.registry_url}/oauth2/token?service={SERVICE}&scope={scope}"
    basic = base64.b64encode(b"admin:s3cret").decode()
    r = call(acr, url, headers={"Authorization": "Basic " + basic})
    assert r.status == 200
    assert claims(r.json()["access_token"])["sub"] == "admin"
    wrong = base64.b64encode(b"admin:nope").decode()
    assert call(acr, url, headers={"Authorization": "Basic " + wrong}).status == 401
    assert call(acr, url).status == 401

    r = form(acr, "/oauth2/token", grant_type="password", service=SERVICE,
             scope=f"repository:{REPO}:pull",
             username="00000000-0000-0000-0000-000000000000",
             password=refresh_token(acr))
    assert r.status == 200
    assert claims(r.json()["access_token"])["sub"] == CLIENT


def test_pull_manifest(acr, image):
    auth = bearer(acr)
    url = f"{acr.registry_url}/v2/{REPO}/manifests/v1"
    r = call(acr, url, headers=auth)
    assert r.status == 200
    assert r.body == image["manifest_bytes"]
    assert r.headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
    assert r.headers["Docker-Content-Digest"] == image["manifest"]
    assert int(r.headers["Content-Length"]) == len(image["manifest_bytes"])

    r = call(acr, url, "HEAD", headers=auth)
    assert r.status == 200 and r.body == b""
    assert r.headers["Docker-Content-Digest"] == image["manifest"]
    assert int(r.headers["Content-Length"]) == len(image["manifest_bytes"])

    r = call(acr, f"{acr.registry_url}/v2/{REPO}/manifests/{image['manifest']}",
             headers=auth)
    assert r.status == 200 and r.body == image["manifest_bytes"]

    r = call(acr, f"{acr.registry_url}/v2/{REPO}/manifests/nope", headers=auth)
    assert r.status == 404
    assert r.json() == {"errors": [{
        "code": "MANIFEST_UNKNOWN",
        "message": 'manifest tagged by "nope" is not found',
        "detail": {"Tag": "nope"}}]}

    r = call(acr, f"{acr.registry_url}/v2/missing/manifests/v1",
             headers=bearer(acr, "missing"))
    assert r.status == 404
    assert r.json()["errors"][0]["code"] == "NAME_UNKNOWN"

    # A token for another repository does not open this one.
    r = call(acr, url, headers=bearer(acr, "other"))
    assert r.status == 401


def test_tags_list(acr):
    auth = bearer(acr)
    r = call(acr, f"{acr.registry_url}/v2/{REPO}/tags/list", headers=auth)
    assert r.json() == {"name": REPO, "tags": ["v1", "v2", "v3"]}
    r = call(acr, f"{acr.registry_url}/v2/{REPO}/tags/list?n=2", headers=auth)
    assert r.json()["tags"] == ["v1", "v2"]
    assert r.headers["Link"] == f'</v2/{REPO}/tags/list?last=v2&n=2>; rel="next"'
    r = call(acr, f"{acr.registry_url}/v2/{REPO}/tags/list?n=2&last=v2",
             headers=auth)
    assert r.json()["tags"] == ["v3"] and "Link" not in r.headers


def test_blob_redirect_and_storage(acr, image):
    layer = image["layers"][0]
    loc = blob_location(acr, layer)
    u = urllib.parse.urlsplit(loc)
    assert u.scheme == "https" and u.port == acr.ports["storage"]
    assert u.path.endswith("/" + layer)
    q = urllib.parse.parse_qs(u.query)
    assert {"sv", "se", "sig"} <= set(q)

    r = call(acr, loc)
    assert r.status == 200
    assert hashlib.sha256(r.body).hexdigest() == layer[7:]

    # A client that carries the registry token across the 307 fails.
    r = call(acr, loc, headers=bearer(acr))
    assert r.status in (400, 403)
    assert b"<Code>InvalidAuthenticationInfo</Code>" in r.body

    bad = loc.replace("sig=", "sig=AAAA")
    r = call(acr, bad)
    assert r.status == 403 and b"<Code>AuthenticationFailed</Code>" in r.body

    r = call(acr, f"{acr.registry_url}/v2/{REPO}/blobs/sha256:{'0' * 64}",
             headers=bearer(acr))
    assert r.status == 404
    assert r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_storage_sas_expiry(acr, image):
    acr.config(sas_ttl=1)
    try:
        loc = blob_location(acr, image["layers"][0])
    finally:
        acr.config(sas_ttl=1200)
    time.sleep(2.1)
    r = call(acr, loc)
    assert r.status == 403 and b"AuthenticationFailed" in r.body


def test_storage_range(acr, image):
    loc = blob_location(acr, image["layers"][0])
    r = call(acr, loc, headers={"Range": "bytes=5-9"})
    assert r.status == 206
    assert r.headers["Content-Range"] == f"bytes 5-9/{len(LAYER)}"
    assert r.body == LAYER[5:10]
    r = call(acr, loc, headers={"Range": "bytes=16000-"})
    assert r.status == 206 and r.body == LAYER[16000:]
    r = call(acr, loc, headers={"Range": "bytes=-10"})
    assert r.status == 206 and r.body == LAYER[-10:]
    r = call(acr, loc, headers={"Range": f"bytes={len(LAYER)}-"})
    assert r.status == 416
    assert r.headers["Content-Range"] == f"bytes */{len(LAYER)}"


def test_fault_429_once(acr):
    auth = bearer(acr)
    rule = acr.add_fault(endpoint="manifests", repo=REPO, status=429,
                         headers={"Retry-After": "2"}, count=1)
    url = f"{acr.registry_url}/v2/{REPO}/manifests/v1"
    r = call(acr, url, headers=auth)
    assert r.status == 429
    assert r.headers["Retry-After"] == "2"
    assert r.json() == {"errors": [{
        "code": "TOOMANYREQUESTS",
        "message": "Too many requests. Please visit https://aka.ms/acr/skus "
                   "for more information."}]}
    assert call(acr, url, headers=auth).status == 200
    assert acr.faults() == []                    # count used up
    log = acr.requests("registry")
    assert [(e["endpoint"], e["status"]) for e in log][-2:] == \
        [("manifests", 429), ("manifests", 200)]
    assert log[-2]["fault"] == rule and "fault" not in log[-1]


def test_fault_rate_limit(acr):
    auth = bearer(acr)
    url = f"{acr.registry_url}/v2/{REPO}/manifests/v1"
    acr.add_fault(endpoint="manifests", repo=REPO, status=429, rate_limit=5,
                  burst=3, headers={"Retry-After": "1"})
    statuses = [call(acr, url, headers=auth).status for _ in range(6)]
    # The burst goes through, the rest of the same instant is throttled.
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:], statuses
    time.sleep(0.5)                              # 2.5 tokens back
    assert call(acr, url, headers=auth).status == 200
    rule = acr.faults()[0]
    # That call took a token: at most burst - 1 are left, however long
    # the calls took on a busy machine (the refill is capped at burst).
    assert rule["rate_limit"] == 5 and rule["tokens"] <= 2
    acr.clear_faults()
    with pytest.raises(urllib.error.HTTPError):
        acr.add_fault(endpoint="manifests", rate_limit=0, status=429)
    # A throttle on the registry's reads, whatever the endpoint.
    acr.add_fault(listener="registry", status=429, rate_limit=1, burst=1)
    assert call(acr, url, headers=auth).status == 200
    assert call(acr, f"{acr.registry_url}/v2/{REPO}/tags/list",
                headers=auth).status == 429
    assert call(acr, f"{acr.imds_url}/metadata/identity/oauth2/token?"
                "api-version=2018-02-01&resource=x",
                headers={"Metadata": "true"}).status != 429
    acr.clear_faults()


def test_fault_other_repo_and_storage_body(acr, image):
    acr.add_fault(endpoint="manifests", repo="other", status=500)
    acr.add_fault(endpoint="storage", status=503)
    auth = bearer(acr)
    assert call(acr, f"{acr.registry_url}/v2/{REPO}/manifests/v1",
                headers=auth).status == 200
    r = call(acr, blob_location(acr, image["layers"][0]))
    assert r.status == 503
    assert b"<Code>ServerBusy</Code>" in r.body
    assert r.headers["x-ms-error-code"] == "ServerBusy"
    with pytest.raises(Exception):
        acr.add_fault(endpoint="manifest", status=500)      # typo refused


def test_request_log(acr, image):
    t0 = time.monotonic()
    auth = bearer(acr)
    call(acr, f"{acr.registry_url}/v2/{REPO}/manifests/v1?ns=myacr.azurecr.io",
         "HEAD", headers=auth)
    call(acr, blob_location(acr, image["layers"][0]))
    t1 = time.monotonic()
    log = acr.requests()
    assert [e["listener"] for e in log] == \
        ["imds", "registry", "registry", "registry", "imds", "registry",
         "registry", "registry", "storage"]
    head = log[3]
    assert head["method"] == "HEAD" and head["status"] == 200
    assert head["path"] == f"/v2/{REPO}/manifests/v1"
    assert head["query"] == "ns=myacr.azurecr.io"
    assert head["authorization_scheme"] == "Bearer"
    assert log[0]["authorization_scheme"] == "none"
    assert log[-1]["authorization_scheme"] == "none"
    assert log[-1]["status"] == 200 and log[-2]["status"] == 307
    assert all(t0 <= e["time"] <= t1 for e in log)
    stats = acr.stats()
    assert stats["total"] == len(log)
    assert stats["endpoints"]["storage"] == 1
    acr.clear_requests()
    assert acr.requests() == []


def test_fault_shapes(acr, image):
    layer = image["layers"][0]

    acr.add_fault(endpoint="storage", corrupt=True, count=1)
    r = call(acr, blob_location(acr, layer))
    assert r.status == 200 and len(r.body) == len(LAYER) and r.body != LAYER

    acr.add_fault(endpoint="blobs", redirect_host="nonexistent.invalid", count=1)
    assert urllib.parse.urlsplit(blob_location(acr, layer)).hostname == \
        "nonexistent.invalid"

    acr.add_fault(endpoint="storage", delay_ms=500, count=1)
    t = time.monotonic()
    assert call(acr, blob_location(acr, layer)).status == 200
    assert time.monotonic() - t >= 0.5

    # Half the body, a stall, then the rest.
    acr.add_fault(endpoint="storage", stall_s=1, count=1)
    t = time.monotonic()
    r = call(acr, blob_location(acr, layer))
    assert r.body == LAYER and time.monotonic() - t >= 1

    # Headers and 1000 bytes, then an RST.
    acr.add_fault(endpoint="storage", reset_after_bytes=1000, count=1)
    u = urllib.parse.urlsplit(blob_location(acr, layer))
    conn = http.client.HTTPSConnection(u.hostname, u.port,
                                       context=acr.ssl_context(), timeout=10)
    conn.request("GET", u.path + "?" + u.query)
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(LAYER)
    with pytest.raises((http.client.IncompleteRead, ConnectionError, ssl.SSLError)):
        resp.read()
    conn.close()

    # Nothing at all: the client sees the connection reset.
    acr.add_fault(endpoint="manifests", reset_after_bytes=0, count=1)
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected,
                        ssl.SSLError)):
        call(acr, f"{acr.registry_url}/v2/{REPO}/manifests/v1",
             headers=bearer(acr))
    assert call(acr, blob_location(acr, layer)).body == LAYER


def test_fault_fin_chunked_and_log_drain(acr, image):
    layer = image["layers"][0]
    u = urllib.parse.urlsplit(blob_location(acr, layer))

    # Headers and 1000 bytes, then a FIN: a body shorter than announced.
    acr.add_fault(endpoint="storage", close_after_bytes=1000, count=1)
    conn = http.client.HTTPSConnection(u.hostname, u.port,
                                       context=acr.ssl_context(), timeout=10)
    conn.request("GET", u.path + "?" + u.query)
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(LAYER)
    with pytest.raises((http.client.IncompleteRead, ConnectionError, ssl.SSLError)) as e:
        resp.read()
    if isinstance(e.value, http.client.IncompleteRead):
        assert len(e.value.partial) == 1000
    conn.close()

    # Chunked, no Content-Length; whole and right.
    acr.add_fault(endpoint="storage", chunked=True, count=1)
    conn = http.client.HTTPSConnection(u.hostname, u.port,
                                       context=acr.ssl_context(), timeout=10)
    conn.request("GET", u.path + "?" + u.query)
    resp = conn.getresponse()
    assert resp.headers["Content-Length"] is None
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert resp.read() == LAYER
    conn.close()

    # Taken and cleared in one step.
    n = len(acr.requests())
    assert n >= 3
    assert len(acr.requests(clear=True)) == n
    assert acr.requests() == []


def test_access_token_expiry(acr):
    # exp is in whole seconds from a truncated iat: a TTL of n lives
    # between n - 1 and n seconds, so leave a slow (sanitizer) build room.
    acr.config(access_ttl=4)
    auth = bearer(acr)
    url = f"{acr.registry_url}/v2/{REPO}/manifests/v1"
    assert call(acr, url, headers=auth).status == 200
    time.sleep(4.1)
    assert call(acr, url, headers=auth).status == 401


def test_anonymous_plain_http(tmp_path, image):
    with FakeACR().start(tmp_path, image["content"], service=SERVICE,
                         tls=False, anonymous=True) as fake:
        r = call(fake, f"{fake.registry_url}/v2/{REPO}/manifests/v1")
        assert r.status == 200 and r.body == image["manifest_bytes"]
        r = call(fake, f"{fake.registry_url}/v2/{REPO}/blobs/{image['layers'][0]}")
        assert r.status == 307 and r.headers["Location"].startswith("http://")
        assert call(fake, r.headers["Location"]).body == LAYER
        scope = urllib.parse.quote(f"repository:{REPO}:pull,push")
        r = call(fake, f"{fake.registry_url}/oauth2/token?service={SERVICE}"
                 f"&scope={scope}")
        assert r.status == 200
        assert claims(r.json()["access_token"])["access"][0]["actions"] == ["pull"]
        # Any client_id is an identity when none were configured.
        r = call(fake, fake.imds_url + IMDS_PATH + "&client_id=x",
                 headers={"Metadata": "true"})
        assert r.status == 200


def test_sigterm_with_held_requests(tmp_path, image):
    """Exit status 0 (and, under ASan, no leak) with replies still held."""
    fake = FakeACR().start(tmp_path, image["content"], service=SERVICE,
                           tls=False, anonymous=True)
    fake.add_fault(endpoint="manifests", delay_ms=60000)
    fake.add_fault(endpoint="storage", stall_s=60)
    s1 = socket.create_connection((fake.registry.split(":")[0],
                                   fake.ports["registry"]))
    s1.sendall(f"GET /v2/{REPO}/manifests/v1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    r = call(fake, f"{fake.registry_url}/v2/{REPO}/blobs/{image['layers'][0]}")
    u = urllib.parse.urlsplit(r.headers["Location"])
    s2 = socket.create_connection((u.hostname, u.port))
    s2.sendall(f"GET {u.path}?{u.query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    s2.recv(100)                # the headers and half the body came
    s2.close()                  # and the client is gone while stalled
    time.sleep(0.2)
    assert fake.stop() == 0
    s1.close()
