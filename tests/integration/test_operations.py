"""Operating a node: metrics that tell hits from registry traffic, the
circuit gauge on an idle node, latency histograms and the build; SIGHUP
reloading the registries while transfers go on; the cache administered
while the server runs."""

import hashlib
import json
import os
import signal
import stat
import threading
import time

import pytest

pytest.register_assert_rewrite("acr")
from acr import fake_requests, get  # noqa: E402
from conftest import PULLPROXY_BIN, free_port, metrics, run, wait_for  # noqa: E402

pytest_plugins = ["acr"]


def proxy(acr_proxy, fake, **reg):
    """pullproxy for the fake ACR, anonymous pulls."""
    fake.config(anonymous=True)
    return acr_proxy(**reg)


def test_hit_bytes_apart_from_registry_bytes(fake, acr_images, acr_proxy):
    """One miss and two hits of a layer: the bytes served on hits are
    counted apart from all served, the registry's bytes once; each request
    says hit or miss in its metric and its log line."""
    small = acr_images[1]["small"]
    layer = small.layers[1]
    size = len(small.blobs[layer])
    assert size > 100 * 1024
    pp = proxy(acr_proxy, fake)
    path = "/v2/id/small/blobs/" + layer
    for _ in range(3):
        r = get(pp, fake, path)
        assert r.status == 200 and len(r.body) == size
    assert len(fake_requests(fake, "blobs")) == 1
    reg = fake.registry
    m = metrics(pp)
    assert m['pullproxy_cache_hit_bytes_total{kind="blob"}'] == 2 * size
    assert m['pullproxy_cache_served_bytes_total{kind="blob"}'] == 3 * size
    # The layer came once from the registry (and nothing else did).
    assert size <= m['pullproxy_upstream_bytes_total{registry="%s"}' % reg] < 2 * size
    assert m['pullproxy_requests_total{kind="blob",status="200",result="hit"}'] == 2
    assert m['pullproxy_requests_total{kind="blob",status="200",result="miss"}'] == 1
    assert m['pullproxy_request_duration_seconds_count{kind="blob"}'] == 3
    assert m['pullproxy_request_duration_seconds_bucket{kind="blob",le="+Inf"}'] == 3
    assert m['pullproxy_upstream_duration_seconds_count{registry="%s"}' % reg] == 1
    lines = [l for l in pp.requests_when(lambda ls: len(
        [l for l in ls if l["route"] == path]) >= 3, 5) if l["route"] == path]
    assert [l["cache"] for l in lines] == ["miss", "hit", "hit"]

    # A tag: miss, then hit; the base route is not the cache's.
    tag = "/v2/id/small/manifests/v1"
    assert get(pp, fake, tag).status == 200
    assert get(pp, fake, tag).status == 200
    assert pp.get("/v2/").status == 200
    m = metrics(pp)
    assert m['pullproxy_requests_total{kind="manifest",status="200",result="miss"}'] == 1
    assert m['pullproxy_requests_total{kind="manifest",status="200",result="hit"}'] == 1
    assert m['pullproxy_cache_hit_bytes_total{kind="manifest"}'] == len(small.manifest)
    assert m['pullproxy_requests_total{kind="base",status="200",result="none"}'] == 1
    base = [l for l in pp.requests() if l["route"] == "/v2/"]
    assert len(base) == 1 and base[0]["cache"] is None
    # pullproxy logs tallies them.
    summary = json.loads(run([PULLPROXY_BIN, "logs", "--json", str(pp.log_path)]).stdout)
    assert summary["requests"]["cache"] == {"hit": 3, "miss": 2}, summary["requests"]
    assert "by cache: " in run([PULLPROXY_BIN, "logs", str(pp.log_path)]).stdout


def test_stale_answers_are_counted_as_stale(fake, acr_proxy):
    """A known tag served from the cache because the registry failed is
    result="stale" (what PullproxyServingStale reads), in the metric and
    the request's log line."""
    fake.config(anonymous=True)
    pp = acr_proxy(start=False, retries=0)
    pp.conf.write_text("[server]\ntag_ttl_s = 0\n" + pp.conf.read_text())
    pp.start()
    tag = "/v2/id/small/manifests/v1"
    assert get(pp, fake, tag).status == 200
    fake.add_fault(endpoint="manifests", status=503)
    r = get(pp, fake, tag)
    assert r.status == 200 and "110" in (r.header("Warning") or ""), r.body
    m = metrics(pp)
    assert m['pullproxy_requests_total{kind="manifest",status="200",result="stale"}'] == 1
    assert m['pullproxy_requests_total{kind="manifest",status="200",result="miss"}'] == 1
    lines = [l for l in pp.requests_when(lambda ls: len(
        [l for l in ls if l["route"] == tag]) >= 2, 5) if l["route"] == tag]
    assert [l["cache"] for l in lines] == ["miss", "stale"]


def test_build_info_names_the_version(fake, acr_proxy):
    pp = proxy(acr_proxy, fake)
    version = run([PULLPROXY_BIN, "--version"]).stdout.split()[1]
    assert metrics(pp)['pullproxy_build_info{version="%s"}' % version] == 1


def test_circuit_gauge_follows_time_on_an_idle_node(fake, acr_proxy):
    """Open is a window: once it has passed, the gauge says half-open (the
    next request is a probe) though no request came to move the state."""
    pp = proxy(acr_proxy, fake, circuit_failures=1, circuit_open_s=1, retries=0)
    fake.add_fault(endpoint="manifests", status=503)
    assert get(pp, fake, "/v2/id/other/manifests/v1").status == 502
    wait_for(lambda: pp.logs("circuit open"), 5, "circuit open")
    opened = time.monotonic()
    sent = len(fake_requests(fake))
    time.sleep(1.5)
    assert time.monotonic() - opened >= 1.5
    key = 'pullproxy_circuit_state{registry="%s"}' % fake.registry
    assert metrics(pp)[key] == 2
    assert len(fake_requests(fake)) == sent    # time alone moved it


# ------------------------------------------------------------------ reload

def reload(pp, msg):
    """SIGHUP, then the line that says what became of it."""
    seen = len(pp.logs("config reloaded")) + len(pp.logs("reload refused"))
    os.kill(pp.pid, signal.SIGHUP)
    lines = wait_for(lambda: (pp.logs("config reloaded") + pp.logs("reload refused"))[seen:]
                     if len(pp.logs("config reloaded")) + len(pp.logs("reload refused")) > seen
                     else None, 10, "the reload's outcome")
    assert pp.proc.poll() is None, pp.stderr()
    assert [l["msg"] for l in lines] == [msg], lines
    return lines[0]


def test_sighup_reloads_registries_without_dropping_transfers(fake, acr_images, acr_proxy):
    big = acr_images[1]["big"]
    layer = big.layers[0]
    pp = proxy(acr_proxy, fake, rate=10, burst=20)
    section = pp.conf.read_text()
    # A layer download stalls half way: it is in flight during the reload.
    fake.add_fault(endpoint="storage", stall_s=6, count=1)
    got = {}
    t = threading.Thread(target=lambda: got.update(r=get(pp, fake, "/v2/id/big/blobs/" + layer,
                                                         timeout=60)))
    t.start()
    wait_for(lambda: fake_requests(fake, "storage"), 10, "the download to start")

    pp.conf.write_text(section.replace("rate = 10", "rate = 5").replace("burst = 20", "burst = 4"))
    line = reload(pp, "config reloaded")
    assert line["changes"] == {"changed": {fake.registry: ["rate", "burst"]}}, line
    assert line["inflight"] >= 1
    t.join(60)
    assert got["r"].status == 200 and hashlib.sha256(got["r"].body).hexdigest() == layer[7:]
    # The old registries went once the transfer ended; new requests use
    # the new ones (its bucket holds at most the new burst).
    wait_for(lambda: [l for l in pp.log_lines() if l.get("msg") == "previous config released"],
             10, "the old config to be released")
    assert get(pp, fake, "/v2/id/small/manifests/v1").status == 200
    assert metrics(pp)['pullproxy_ratelimit_tokens{registry="%s"}' % fake.registry] <= 4

    # A bad file: refused with its line, the running config kept.
    pp.conf.write_text(section + "bogus_key = 1\n")
    line = reload(pp, "reload refused")
    assert str(pp.conf) in line["error"] and "bogus_key" in line["error"], line
    assert line["kept"] == "the running config"
    assert get(pp, fake, "/v2/id/other/manifests/v1").status == 200

    # A listener is bound at start: a restart, not a reload.
    pp.conf.write_text("[server]\nmetrics_listen = 127.0.0.1:%d\n" % free_port() + section)
    line = reload(pp, "reload refused")
    assert line["error"] == "[server] metrics_listen changed: that needs a restart", line
    assert get(pp, fake, "/v2/id/small/manifests/v1").status == 200


def test_sighup_adds_and_removes_registries(fake, acr_proxy):
    pp = proxy(acr_proxy, fake)
    section = pp.conf.read_text()
    other = section.replace("[registry %s]" % fake.registry, "[registry second.example]")
    pp.conf.write_text(section + other)
    line = reload(pp, "config reloaded")
    assert line["changes"] == {"added": ["second.example"]}, line
    r = pp.get("/v2/id/small/manifests/v1?ns=second.example",
               headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status == 200, r.body
    pp.conf.write_text(other)
    line = reload(pp, "config reloaded")
    assert line["changes"] == {"removed": [fake.registry]}, line
    r = get(pp, fake, "/v2/id/small/manifests/v1")
    assert r.status == 404 and b"not configured" in r.body, r.body


# ----------------------------------------------------------- cache admin

def cache_cmd(pp, *args, check=True):
    return run([PULLPROXY_BIN, "cache", "--cache-dir", str(pp.cache_dir), *args],
               check=check, timeout=60)


def test_cache_admin_while_the_server_runs(fake, acr_images, acr_proxy):
    """ls names the images a blob belongs to; evict and purge go through
    the running server's admin socket instead of being refused."""
    small = acr_images[1]["small"]
    pp = proxy(acr_proxy, fake)
    assert get(pp, fake, "/v2/id/small/manifests/v1").status == 200
    for d in [small.config_digest] + small.layers:
        assert get(pp, fake, "/v2/id/small/blobs/" + d).status == 200
    sock = pp.cache_dir / "admin.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600

    ref = "%s/id/small:v1" % fake.registry
    listed = [json.loads(l) for l in cache_cmd(pp, "ls", "--json").stdout.splitlines()]
    assert {b["digest"] for b in listed} == {small.config_digest, *small.layers}
    assert all(b["images"] == [ref] for b in listed), listed
    text = cache_cmd(pp, "ls").stdout.splitlines()
    assert all(l.endswith(" " + ref) for l in text), text

    layer = small.layers[0]
    cp = cache_cmd(pp, "evict", layer)
    assert cp.stdout == "evicted %s\n" % layer, cp.stdout + cp.stderr
    assert layer not in cache_cmd(pp, "ls").stdout
    line = wait_for(lambda: pp.logs("cache evict"), 5, "the evict line")[0]
    assert line["digest"] == layer and line["result"] == "evicted"
    cp = cache_cmd(pp, "evict", layer, check=False)
    assert cp.returncode == 1 and "not in the cache" in cp.stderr, cp.stderr
    # Served again, from the registry.
    before = len(fake_requests(fake, "blobs"))
    assert get(pp, fake, "/v2/id/small/blobs/" + layer).status == 200
    assert len(fake_requests(fake, "blobs")) == before + 1

    cp = cache_cmd(pp, "purge")
    assert cp.returncode == 0 and cp.stdout.startswith("purged: evicted "), cp.stdout
    assert json.loads(cache_cmd(pp, "stats", "--json").stdout)["blobs"] == 0
    assert pp.logs("cache purge")
    assert get(pp, fake, "/v2/id/small/manifests/v1").status == 200
    cp = cache_cmd(pp, "evict", "--to", "0", "--json")
    assert json.loads(cp.stdout)["blobs"] == 0, cp.stdout
    # Not an admin path: refused, and the server carries on.
    cp = cache_cmd(pp, "evict", "nonsense&to=0", check=False)
    assert cp.returncode == 1 and "not in the cache" in cp.stderr, cp.stderr


# ------------------------------------------------------------- prefetch

def test_prefetch_pulls_one_platform_into_the_cache(pullproxy, registry, images):
    multi = images["multi"]
    arm = [c for c in multi.children if '"arm64"' in c.blobs[c.config_digest].decode()][0]
    image = "%s/pp/multi:v1" % registry.host
    cp = run([PULLPROXY_BIN, "prefetch", "--listen", "127.0.0.1:%d" % pullproxy.port,
              "--platform", "linux/arm64", image], check=False)
    assert cp.returncode == 0, cp.stderr
    assert "%s: 2 blobs" % image in cp.stderr and arm.digest in cp.stderr, cp.stderr
    # Cached, and named by the tag that led to them through the index.
    listed = {b["digest"]: b["images"] for b in map(json.loads, run(
        [PULLPROXY_BIN, "cache", "--cache-dir", str(pullproxy.cache_dir), "ls", "--json"]
    ).stdout.splitlines())}
    assert listed == {d: [image] for d in [arm.config_digest] + arm.layers}, listed
    # A pull now is all hits.
    for d in arm.layers:
        r = pullproxy.get("/v2/pp/multi/blobs/%s?ns=%s" % (d, registry.host))
        assert r.status == 200
    m = metrics(pullproxy)
    assert m['pullproxy_requests_total{kind="blob",status="200",result="hit"}'] == len(arm.layers)

    cp = run([PULLPROXY_BIN, "prefetch", "--listen", "127.0.0.1:%d" % pullproxy.port,
              "--platform", "linux/s390x", image], check=False)
    assert cp.returncode == 1 and "no manifest for linux/s390x" in cp.stderr, cp.stderr
    assert "linux/amd64" in cp.stderr and "linux/arm64" in cp.stderr
    cp = run([PULLPROXY_BIN, "prefetch", "--listen", "127.0.0.1:%d" % pullproxy.port,
              "%s/pp/multi:nope" % registry.host, image], check=False)
    assert cp.returncode == 1 and ": 404: MANIFEST_UNKNOWN" in cp.stderr, cp.stderr
    cp = run([PULLPROXY_BIN, "prefetch", "nonsense"], check=False)
    assert cp.returncode == 1 and "expected registry/repository" in cp.stderr, cp.stderr
