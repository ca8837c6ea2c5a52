"""HTTPS upstreams: the system CA store plus a per-registry CA file, and
ACR's 307 from a blob GET to blob storage, against the fake ACR."""

import sys
from pathlib import Path

import pytest

from conftest import sha256_digest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakeacr"))
from fakeacr import FakeACR, write_image     # noqa: E402


@pytest.fixture
def acr(tmp_path):
    content = tmp_path / "content"
    img = write_image(content, "team/app", "v1", [b"layer one " * 1000])
    fake = FakeACR().start(tmp_path / "acr", content, anonymous=True)
    fake.image = img
    yield fake
    fake.stop()


def config_file(tmp_path, acr, ca_file):
    conf = tmp_path / "pullproxy.conf"
    conf.write_text("[registry %s]\nurl = %s\n%s" % (
        acr.registry, acr.registry_url,
        "ca_file = %s\n" % ca_file if ca_file else ""))
    return conf


def test_https_with_ca_file_and_redirect_to_storage(tmp_path, acr, pullproxy_factory):
    pp = pullproxy_factory(registries=[], args=["--config", str(config_file(
        tmp_path, acr, acr.ca))])
    img = acr.image
    r = pp.get("/v2/team/app/manifests/v1")
    assert r.status == 200 and r.body == img["manifest_bytes"]
    layer = img["layers"][0]
    r = pp.get("/v2/team/app/blobs/%s" % layer)
    assert r.status == 200 and sha256_digest(r.body) == layer
    # The blob came from the storage listener, reached through the 307.
    storage = [q for q in acr.requests() if q["listener"] == "storage"]
    assert any(layer in q["path"] for q in storage), acr.requests()
    assert all(q["authorization_scheme"] == "none" for q in storage)
    assert not pp.logs("upstream failure")


def test_https_without_the_ca_is_refused(tmp_path, acr, pullproxy_factory):
    pp = pullproxy_factory(registries=[], args=["--config", str(config_file(
        tmp_path, acr, None))])
    r = pp.get("/v2/team/app/manifests/v1")
    assert r.status == 502 and r.error_code() == "UNAVAILABLE"
    fail = pp.logs("upstream failure")
    assert fail and "certificate" in fail[0]["error"].lower(), fail
