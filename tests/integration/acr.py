"""Fixtures for the upstream identity tests (test_identity.py), loaded
there with pytest_plugins = ["acr"].

  acr_images   images built with conftest's helpers, written as OCI layouts
               into the fake ACR's content directory (one per repository)
  acr          the fake ACR (tests/fakeacr) over TLS with a test CA, for
               the session; the identities and credentials below exist there
  fake         the same, with faults, request log and lifetimes reset
  acr_proxy    starts pullproxy with a config file for the fake's registry
               (auth = ..., secret files written here); its log and stderr
               are recorded in LOGS for the secrets scan
  SECRETS      every credential and token value the tests hand out or
               fetch: none may ever appear in a pullproxy log
"""

import base64
import json
import random
import secrets
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import MiB, build_image, http_request

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakeacr"))
from fakeacr import FakeACR  # noqa: E402

SERVICE = "fakeacr.azurecr.io"
CLIENT_ID = "6f2b3c4d-0000-4000-8000-00000000c1d1"
TENANT = "a1b2c3d4-0000-4000-8000-0000000000aa"
USER = "puller"
PASSWORD = "pw-" + secrets.token_hex(12)
# Every JWT the fake issues starts with its header {"alg":"HS256","typ":"JWT"}.
JWT_PREFIX = base64.urlsafe_b64encode(
    b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")

SECRETS = {PASSWORD}
LOGS = []           # pullproxy log and stderr files started through acr_proxy
BIG_LAYER = 16 * MiB


def pytest_collection_modifyitems(session, config, items):
    """The secrets scan reads the logs of every pullproxy the session ran:
    it goes last, whatever order the files were collected in."""
    last = [i for i in items if i.name == "test_no_secret_in_any_log"]
    for item in last:
        items.remove(item)
        items.append(item)


@pytest.fixture(scope="session")
def acr_images(tmp_path_factory):
    """content dir and images: id/small (two layers), id/other (another
    scope), id/big (a 16 MiB layer, then a small one)."""
    content = tmp_path_factory.mktemp("acr-content")
    rnd = random.Random(4)
    images = {
        "small": build_image(content / "id/small", "id/small", "v1", [
            {"hello": b"#!/bin/sh\necho hello from the fake ACR\n"},
            {"data/random.bin": rnd.randbytes(200 * 1024)}]),
        "other": build_image(content / "id/other", "id/other", "v1", [
            {"other": b"another repository\n"}]),
        "big": build_image(content / "id/big", "id/big", "v1", [
            {"big.bin": rnd.randbytes(BIG_LAYER)},
            {"after-big": b"the layer after the big one\n"}]),
    }
    return content, images


@pytest.fixture(scope="session")
def acr(tmp_path_factory, acr_images):
    fake = FakeACR().start(tmp_path_factory.mktemp("fakeacr"), acr_images[0],
                           service=SERVICE, tenant=TENANT,
                           client_ids=[CLIENT_ID],
                           users=["%s:%s" % (USER, PASSWORD)])
    yield fake
    fake.stop()


@pytest.fixture
def fake(acr):
    acr.clear_faults()
    acr.config(access_ttl=300, refresh_ttl=10800, imds_ttl=86400,
               anonymous=False)
    acr.clear_requests()
    yield acr
    acr.clear_faults()


def fake_requests(acr, endpoint=None, listener=None):
    return [r for r in acr.requests(listener)
            if endpoint is None or r.get("endpoint") == endpoint]


def fetch_refresh_token(acr):
    """An ACR refresh token, the way a user would get one: IMDS, then
    /oauth2/exchange. Recorded as a secret."""
    q = urllib.parse.urlencode({"api-version": "2018-02-01",
                                "resource": "https://containerregistry.azure.net",
                                "client_id": CLIENT_ID})
    req = urllib.request.Request(acr.imds_url + "/metadata/identity/oauth2/token?" + q,
                                 headers={"Metadata": "true"})
    with urllib.request.urlopen(req, timeout=10) as r:
        entra = json.loads(r.read())["access_token"]
    form = urllib.parse.urlencode({"grant_type": "access_token", "service": SERVICE,
                                   "tenant": TENANT, "access_token": entra}).encode()
    with urllib.request.urlopen(acr.registry_url + "/oauth2/exchange", data=form,
                                context=acr.ssl_context(), timeout=10) as r:
        refresh = json.loads(r.read())["refresh_token"]
    SECRETS.update({entra, refresh})
    return refresh


def registry_section(acr, auth=None, **keys):
    lines = ["[registry %s]" % acr.registry, "url = %s" % acr.registry_url,
             "ca_file = %s" % acr.ca]
    if auth is not None:
        lines.append("auth = %s" % auth)
    lines += ["%s = %s" % kv for kv in keys.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def acr_proxy(pullproxy_factory, tmp_path, fake):
    """factory(auth=None, start=True, **keys): pullproxy for the fake's
    registry with that [registry] section. Keys ending in _file that are
    given as ("name", text) tuples are written to tmp_path first."""
    count = [0]

    def factory(auth=None, start=True, **keys):
        count[0] += 1
        for k, v in list(keys.items()):
            if isinstance(v, tuple):
                path = tmp_path / ("%s-%d" % (v[0], count[0]))
                path.write_text(v[1])
                keys[k] = str(path)
        conf = tmp_path / ("pullproxy-%d.conf" % count[0])
        conf.write_text(registry_section(fake, auth, **keys))
        pp = pullproxy_factory(registries=[], args=["--config", str(conf)],
                               start=False)
        LOGS.extend([pp.log_path, pp.stderr_path, pp.workdir / "stdout.log"])
        if start:
            pp.start()
        pp.conf = conf
        return pp

    return factory


def ns_path(acr, path):
    return "%s?ns=%s" % (path, acr.registry)


def get(pp, acr, path, timeout=30):
    return http_request(pp.port, "GET", ns_path(acr, path),
                        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
                        timeout=timeout)
