"""Graceful degradation when the registry misbehaves: bounded retries with
backoff, the circuit per registry, a layer download resumed with a Range,
the single-platform check on image configs, the incident metrics, and
containerd pulls with the registry stopped, refusing (403) or throttling
(429): a cached image still pulls, an uncached one fails fast with the
cause logged."""

import hashlib
import http.client
import time
from types import SimpleNamespace

import pytest

pytest.register_assert_rewrite("acr")
from acr import SERVICE, fake_requests, get, ns_path, registry_section  # noqa: E402
from conftest import (PULLPROXY_BIN, MiB, http_request, metrics, run,  # noqa: E402
                      wait_for)
from fakeacr import FakeACR, write_image  # noqa: E402
from test_pull import write_hosts_dir  # noqa: E402

pytest_plugins = ["acr"]

MANIFEST = "/v2/id/small/manifests/v1"


def proxy(acr_proxy, fake, server="", **reg):
    """pullproxy for the fake ACR, anonymous pulls, [server] lines first."""
    fake.config(anonymous=True)
    pp = acr_proxy(start=False, **reg)
    pp.conf.write_text("[server]\nstall_timeout_s = 5\n" + server +
                       pp.conf.read_text())
    return pp.start()


def series(pp, name, **labels):
    key = name + "{" + ",".join('%s="%s"' % kv for kv in labels.items()) + "}"
    return metrics(pp).get(key, 0)


# ------------------------------------------------------------------ retries

def test_transient_failures_are_retried_with_backoff(fake, acr_proxy):
    pp = proxy(acr_proxy, fake, circuit_failures=0)
    fake.add_fault(endpoint="manifests", status=503, count=2)
    r = get(pp, fake, MANIFEST)
    assert r.status == 200, r.body
    assert len(fake_requests(fake, "manifests")) == 3
    retries = pp.logs("upstream retry")
    assert [(l["cause"], l["status"], l["attempt"]) for l in retries] == [
        ("upstream_unavailable", 503, 1), ("upstream_unavailable", 503, 2)], retries
    # Jittered around 200 ms, then 400 ms.
    assert 100 <= retries[0]["delay_ms"] < 300 and 200 <= retries[1]["delay_ms"] < 600
    assert not pp.logs("upstream failure")
    assert series(pp, "pullproxy_upstream_retries_total", registry=fake.registry) == 2


def test_reset_before_the_answer_is_retried(fake, acr_proxy):
    """curl itself sends again once on a reused connection that died; a
    reset on a fresh one is ours to retry."""
    pp = proxy(acr_proxy, fake, circuit_failures=0)
    fake.add_fault(endpoint="manifests", reset_after_bytes=0, count=2)
    assert get(pp, fake, MANIFEST).status == 200
    assert len(fake_requests(fake, "manifests")) == 3
    assert {l["cause"] for l in pp.logs("upstream retry")} == {"connection_reset"}
    assert not pp.logs("upstream failure")


def test_retries_are_bounded(fake, acr_proxy):
    pp = proxy(acr_proxy, fake, circuit_failures=0, retries=2)
    fake.add_fault(endpoint="manifests", status=503)
    r = get(pp, fake, MANIFEST)
    assert r.status == 502 and r.error_code() == "UNAVAILABLE"
    assert len(fake_requests(fake, "manifests")) == 3
    line = wait_for(lambda: pp.logs("upstream failure"), 5, "failure line")[0]
    assert line["attempt"] == 3 and line["cause"] == "upstream_unavailable"


@pytest.mark.parametrize("status", [403, 404])
def test_answers_are_not_retried(fake, acr_proxy, status):
    pp = proxy(acr_proxy, fake)
    fake.add_fault(endpoint="manifests", status=status)
    assert get(pp, fake, MANIFEST).status == (502 if status == 403 else 404)
    assert len(fake_requests(fake, "manifests")) == 1
    assert not pp.logs("upstream retry")


# ------------------------------------------------------------------ circuit

def test_circuit_opens_fails_fast_and_probes(fake, acr_images, acr_proxy):
    small = acr_images[1]["small"]
    pp = proxy(acr_proxy, fake, circuit_failures=3, circuit_open_s=1, retries=0)
    by_digest = "/v2/id/small/manifests/" + small.digest
    assert get(pp, fake, by_digest).status == 200     # now cached
    assert series(pp, "pullproxy_circuit_state", registry=fake.registry) == 0

    fake.add_fault(endpoint="manifests", status=503)
    for _ in range(3):
        assert get(pp, fake, "/v2/id/other/manifests/v1").status == 502
    opened = wait_for(lambda: pp.logs("circuit open"), 5, "circuit open")
    assert opened[0]["cause"] == "upstream_unavailable" and opened[0]["failures"] == 3
    assert opened[0]["open_s"] == 1 and "hint" in opened[0]
    # Open (1) while its 1 s window lasts; a slow machine may scrape after
    # it, when the gauge says half-open (2): never closed.
    assert series(pp, "pullproxy_circuit_state", registry=fake.registry) in (1, 2)
    assert series(pp, "pullproxy_circuit_opened_total", registry=fake.registry) == 1

    # Open: refused without a request upstream, with the cause; the
    # cache still answers.
    sent = len(fake_requests(fake, "manifests"))
    r = get(pp, fake, "/v2/id/big/manifests/v1")
    assert r.status == 503 and b"circuit open" in r.body, r.body
    assert len(fake_requests(fake, "manifests")) == sent
    line = wait_for(lambda: [l for l in pp.logs("upstream failure")
                             if l["repository"] == "id/big"], 5, "refused line")[0]
    assert line["circuit"] == "open" and line["cause"] == "upstream_unavailable"
    assert line["client_status"] == 503
    assert get(pp, fake, by_digest).status == 200

    # Half-open: one probe, which fails: open again for twice as long.
    time.sleep(1.2)
    assert get(pp, fake, "/v2/id/big/manifests/v1").status == 502
    assert len(fake_requests(fake, "manifests")) == sent + 1
    again = wait_for(lambda: pp.logs("circuit open")[1:], 5, "reopened")
    assert again[0]["open_s"] == 2
    assert get(pp, fake, "/v2/id/big/manifests/v1").status == 503

    # The registry is back: the next probe closes the circuit.
    fake.clear_faults()
    time.sleep(2.2)
    assert get(pp, fake, "/v2/id/big/manifests/v1").status == 200
    assert get(pp, fake, "/v2/id/other/manifests/v1").status == 200
    closed = pp.logs("circuit closed")
    assert len(closed) == 1 and closed[0]["registry"] == fake.registry
    assert series(pp, "pullproxy_circuit_state", registry=fake.registry) == 0


def test_refusals_do_not_open_the_circuit(fake, acr_proxy):
    pp = proxy(acr_proxy, fake, circuit_failures=2, retries=0)
    fake.add_fault(endpoint="manifests", status=403, count=4)
    for _ in range(4):
        assert get(pp, fake, MANIFEST).status == 502
    assert get(pp, fake, MANIFEST).status == 200
    assert not pp.logs("circuit open")


# ------------------------------------------------------------------- resume

def test_interrupted_layer_download_resumes(fake, acr_images, acr_proxy):
    big = acr_images[1]["big"]
    layer = big.layers[0]
    pp = proxy(acr_proxy, fake)
    fake.add_fault(endpoint="storage", reset_after_bytes=5 * MiB, count=1)
    r = http_request(pp.port, "GET", ns_path(fake, "/v2/id/big/blobs/" + layer),
                     timeout=60)
    assert r.status == 200 and len(r.body) == len(big.blobs[layer])
    assert "sha256:" + hashlib.sha256(r.body).hexdigest() == layer
    storage = [q for q in fake_requests(fake, listener="storage")
               if q["path"].endswith(layer)]
    assert len(storage) == 2, storage
    assert storage[0].get("range") in (None, "")
    start = int(storage[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 5 * MiB, storage[1]
    line = wait_for(lambda: pp.logs("upstream failure"), 5, "resume line")[0]
    assert line["served"] == "resumed" and line["cause"] == "connection_reset"
    assert "client_status" not in line
    assert series(pp, "pullproxy_upstream_retries_total", registry=fake.registry) == 1
    # Cached whole: served again without the registry.
    fake.clear_requests()
    r = http_request(pp.port, "GET", ns_path(fake, "/v2/id/big/blobs/" + layer),
                     timeout=60)
    assert r.status == 200 and len(r.body) == len(big.blobs[layer])
    assert not fake_requests(fake, listener="storage")


def test_resumes_are_bounded(fake, acr_images, acr_proxy):
    big = acr_images[1]["big"]
    layer = big.layers[0]
    pp = proxy(acr_proxy, fake)
    fake.add_fault(endpoint="storage", reset_after_bytes=1 * MiB)
    # The status line went out before the first cut: the body is cut
    # short, never completed with wrong bytes.
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        http_request(pp.port, "GET", ns_path(fake, "/v2/id/big/blobs/" + layer),
                     timeout=60)
    wait_for(lambda: [l for l in pp.logs("upstream failure") if "served" not in l],
             10, "the last failure")
    assert len([q for q in fake_requests(fake, listener="storage")
                if q["path"].endswith(layer)]) == 4     # 1 + 3 resumes
    assert pp.stop() == 0
    # Resumes folded apart from the failure the client saw.
    lines = pp.logs("upstream failure")
    assert [l.get("served") for l in lines] == ["resumed", None], lines
    rep = pp.logs("upstream failure repeated")
    assert [(l["count"], l.get("served")) for l in rep] == [(2, "resumed")], rep
    cp = run([PULLPROXY_BIN, "cache", "--cache-dir", str(pp.cache_dir), "ls"])
    assert layer not in cp.stdout


# ----------------------------------------------------------------- platform

def test_single_platform_image_config_is_checked(fake, acr_images, acr_proxy):
    content = acr_images[0]
    arm = write_image(content, "id/armcfg", "v1", [b"arm layer\n"],
                      platform=("linux", "arm64"))
    amd = write_image(content, "id/amdcfg", "v1", [b"amd layer\n"],
                      platform=("linux", "amd64"))
    pp = proxy(acr_proxy, fake, server="platform = linux/amd64\n")
    for img, repo in ((arm, "id/armcfg"), (amd, "id/amdcfg")):
        assert get(pp, fake, "/v2/%s/manifests/v1" % repo).status == 200
        r = http_request(pp.port, "GET", ns_path(fake, "/v2/%s/blobs/%s" % (
            repo, img["config"])))
        assert r.status == 200      # served all the same
    lines = wait_for(lambda: pp.logs("platform mismatch"), 5, "mismatch")
    time.sleep(0.2)
    lines = pp.logs("platform mismatch")
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["digest"] == arm["config"] and line["repository"] == "id/armcfg"
    assert line["platforms"] == "linux/arm64" and line["node_platform"] == "linux/amd64"
    assert line["cause"] == "platform_mismatch" and "nodeSelector" in line["hint"]
    assert series(pp, "pullproxy_upstream_failures_total", registry=fake.registry,
                  cause="platform_mismatch") == 1


# ------------------------------------------------------------------ metrics

def test_metrics_cover_the_incident_families(fake, acr_images, acr_proxy):
    pp = proxy(acr_proxy, fake)
    small = acr_images[1]["small"]
    for _ in range(2):
        assert get(pp, fake, MANIFEST).status == 200
        r = http_request(pp.port, "GET", ns_path(fake, "/v2/id/small/blobs/" +
                                                  small.layers[0]))
        assert r.status == 200
    m = metrics(pp)
    assert m['pullproxy_cache_hits_total{kind="blob"}'] == 1
    assert m["pullproxy_cache_blobs"] == 1
    assert m["pullproxy_cache_bytes"] >= len(small.blobs[small.layers[0]])
    assert m["pullproxy_cache_budget_bytes"] > 0
    assert m["pullproxy_cache_evictions_total"] == 0
    assert 'pullproxy_coalesced_total{kind="blob"}' in m
    assert m['pullproxy_circuit_state{registry="%s"}' % fake.registry] == 0


# ----------------------------------------------------- containerd, end to end

@pytest.fixture
def own_fake(tmp_path, acr_images):
    """A fake ACR of this test's own, which the test may stop."""
    f = FakeACR().start(tmp_path / "fake", acr_images[0], service=SERVICE,
                        anonymous=True)
    yield f
    f.stop(check=False)


@pytest.mark.parametrize("fault,cause", [
    ("stopped", "connection_refused"),
    ("403", "forbidden_network"),
    ("429", "throttled"),
])
def test_ctr_pull_while_the_registry_fails(tmp_path, own_fake, acr_images,
                                           pullproxy_factory, containerd,
                                           fault, cause):
    images = acr_images[1]
    conf = tmp_path / "pp.conf"
    # Tags always revalidated: the cached image needs the stale path too.
    conf.write_text("[server]\ntag_ttl_s = 0\nconnect_timeout_ms = 2000\n" +
                    registry_section(own_fake, max_wait_s=2))
    pp = pullproxy_factory(registries=[], args=["--config", str(conf)])
    hosts = write_hosts_dir(tmp_path / "hosts", SimpleNamespace(
        host=own_fake.registry, url=own_fake.registry_url), pp)

    def pull(img):
        t0 = time.monotonic()
        cp = containerd.ctr("images", "pull", "--plain-http", "--hosts-dir",
                            str(hosts), "--snapshotter", "native",
                            "%s/%s" % (own_fake.registry, img.ref), check=False)
        return cp, time.monotonic() - t0

    cached, uncached = images["small"], images["other"]
    cp, _ = pull(cached)
    assert cp.returncode == 0, cp.stderr
    containerd.ctr("images", "rm", "--sync", "%s/%s" % (own_fake.registry, cached.ref))

    if fault == "stopped":
        own_fake.stop()
    else:
        own_fake.add_fault(endpoint="any", status=int(fault))

    cp, _ = pull(cached)
    assert cp.returncode == 0, "cached image did not pull:\n" + cp.stderr
    stale = [l for l in pp.logs("upstream failure") if l.get("served") == "stale"]
    assert stale and stale[0]["repository"] == cached.repo

    cp, took = pull(uncached)
    assert cp.returncode != 0
    # Fast: no wait for a timeout (connect 2 s, max wait 2 s, no stall).
    assert took < 30, took
    lines = [l for l in pp.logs("upstream failure")
             if l["repository"] == uncached.repo and l.get("cause")]
    assert lines and lines[0]["cause"] == cause, lines
    assert lines[0]["client_status"] in (502, 503)
