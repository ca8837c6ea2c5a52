"""The cache: hits, one upstream fetch per blob, streaming while it lands,
digests checked, tags with a TTL, Range, eviction, crash recovery, and
pulls that keep working with the registry gone."""

import hashlib
import http.client
import json
import os
import signal
import threading
import time

import pytest

from conftest import (LOCALHOST, MiB, PullProxy, Registry, blob_chunks, build_image,
                      push_blob_stream, push_image, run, sha256_digest, wait_for)
from test_pull import write_hosts_dir
from upstream_proxy import UpstreamProxy

CHUNK = MiB     # CACHE_CHUNK


@pytest.fixture
def upstream(registry):
    p = UpstreamProxy(registry.port)
    yield p
    p.close()


def via(upstream, registry, factory, args=None):
    """pullproxy serving registry's name from the proxy in front of it."""
    return factory(registries=[(registry.host, upstream.url)], args=args)


def cache_cmd(pp, *args, check=True):
    return run([pp.argv[0], "cache", "--cache-dir", str(pp.cache_dir), *args],
               check=check, timeout=120)


class Reader:
    """A client reading one blob on its own connection, in a thread, that
    can stop after some bytes until told to go on."""

    def __init__(self, port, path, stop_after=None, headers=None):
        self.port, self.path, self.headers = port, path, headers or {}
        self.stop_after = stop_after
        self.got_first = threading.Event()
        self.go_on = threading.Event()
        self.done = threading.Event()
        self.status = None
        self.length = None
        self.body_hash = hashlib.sha256()
        self.nbytes = 0
        self.error = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            conn = http.client.HTTPConnection(LOCALHOST, self.port, timeout=120)
            conn.request("GET", self.path, headers=self.headers)
            resp = conn.getresponse()
            self.status = resp.status
            self.length = int(resp.getheader("Content-Length", "-1"))
            while True:
                piece = resp.read(256 * 1024)
                if not piece:
                    break
                self.body_hash.update(piece)
                self.nbytes += len(piece)
                if not self.got_first.is_set() and \
                        (self.stop_after is None or self.nbytes >= self.stop_after):
                    self.got_first.set()
                    if self.stop_after is not None:
                        self.go_on.wait(120)
            conn.close()
        except Exception as e:      # the test inspects it
            self.error = e
        finally:
            self.got_first.set()
            self.done.set()

    def digest(self):
        return "sha256:" + self.body_hash.hexdigest()

    def join(self):
        self.go_on.set()
        self.thread.join(150)
        assert not self.thread.is_alive(), "client still reading after 150 s"


def blob_path(repo, digest):
    return "/v2/%s/blobs/%s" % (repo, digest)


def test_blob_miss_then_hits(registry, images, pullproxy_factory, upstream):
    pp = via(upstream, registry, pullproxy_factory)
    img = images["small"]
    for digest, data in img.blobs.items():
        for _ in range(3):
            r = pp.get(blob_path(img.repo, digest))
            assert r.status == 200 and r.body == data
            assert r.header("Docker-Content-Digest") == digest
        assert upstream.count("GET", digest) == 1, "blob fetched upstream more than once"
    cached = {l["digest"] for l in pp.logs("blob cached")}
    assert cached == set(img.blobs)


def test_blob_whose_last_chunk_is_a_few_bytes(registry, pullproxy_factory):
    """One read from upstream can end a full chunk and hold the whole of
    a short last one: the fetch used to spin forever there, freezing the
    event loop (every client, /healthz included)."""
    pp = pullproxy_factory()
    for size in (CHUNK + 1, 3 * CHUNK + 17):
        digest, _ = push_blob_stream(registry, "pp/tail", blob_chunks(size, size))
        r = pp.get(blob_path("pp/tail", digest), timeout=20)
        assert r.status == 200 and sha256_digest(r.body) == digest, size
        assert pp.get("/healthz", timeout=5).status == 200


def test_concurrent_clients_share_one_fetch_and_stream_before_it_ends(
        registry, mid_blob, pullproxy_factory, upstream):
    pp = via(upstream, registry, pullproxy_factory)
    upstream.hold.clear()       # the upstream body stops before its last byte
    path = blob_path(mid_blob.repo, mid_blob.digest)
    readers = [Reader(pp.port, path, stop_after=CHUNK) for _ in range(8)]
    # Every client got its first megabyte while the download is unfinished:
    # bytes stream to clients as they land, nobody waits for the end.
    for r in readers:
        assert r.got_first.wait(60) and r.error is None, r.error
    assert not pp.logs("blob cached")
    # A client that stalls does not hold up the others or the download.
    slow = readers[0]
    upstream.hold.set()
    for r in readers[1:]:
        r.join()
        assert r.status == 200 and r.digest() == mid_blob.digest, r.error
    assert slow.thread.is_alive() and slow.nbytes < mid_blob.size
    slow.join()
    assert slow.digest() == mid_blob.digest
    assert upstream.count("GET", mid_blob.digest) == 1


def test_digest_mismatch_is_never_cached(registry, mid_blob, pullproxy_factory, upstream):
    pp = via(upstream, registry, pullproxy_factory)
    upstream.corrupt.add(mid_blob.digest)
    r = Reader(pp.port, blob_path(mid_blob.repo, mid_blob.digest))
    r.join()
    # The client never gets the whole (wrong) body: it is cut short.
    assert r.nbytes < mid_blob.size or r.error is not None
    fails = [l for l in pp.logs("upstream failure") if l.get("error") == "digest mismatch"]
    assert fails and fails[0]["reference"] == mid_blob.digest
    assert not pp.logs("blob cached")

    upstream.corrupt.clear()
    r = Reader(pp.port, blob_path(mid_blob.repo, mid_blob.digest))
    r.join()
    assert r.status == 200 and r.digest() == mid_blob.digest
    assert upstream.count("GET", mid_blob.digest) == 2


def test_ranges_from_cache_and_while_fetching(registry, images, pullproxy_factory, upstream):
    pp = via(upstream, registry, pullproxy_factory)
    img = images["small"]
    digest = img.layers[1]
    data = img.blobs[digest]
    size = len(data)
    # On a miss the range is served from the download in progress.
    r = pp.get(blob_path(img.repo, digest), headers={"Range": "bytes=10-99"})
    assert r.status == 206 and r.body == data[10:100]
    assert r.header("Content-Range") == "bytes 10-99/%d" % size
    wait_for(lambda: pp.logs("blob cached"), 30, "the blob to be cached")
    for rng, want in (("bytes=100-", data[100:]), ("bytes=-10", data[-10:]),
                      ("bytes=%d-%d" % (size - 5, size + 100), data[-5:])):
        r = pp.get(blob_path(img.repo, digest), headers={"Range": rng})
        assert r.status == 206 and r.body == want, rng
    r = pp.get(blob_path(img.repo, digest), headers={"Range": "bytes=%d-" % size})
    assert r.status == 416 and r.header("Content-Range") == "bytes */%d" % size
    # Several ranges at once: the whole blob is a valid answer (RFC 9110).
    r = pp.get(blob_path(img.repo, digest), headers={"Range": "bytes=0-1,5-6"})
    assert r.status == 200 and r.body == data
    r = pp.head(blob_path(img.repo, digest))
    assert r.status == 200 and int(r.header("Content-Length")) == size
    assert upstream.count("GET", digest) == 1


def test_tag_ttl_and_revalidation(registry, images, pullproxy_factory, upstream):
    pp = via(upstream, registry, pullproxy_factory, args=["--tag-ttl", "2"])
    img = images["small"]
    tag_path = "/v2/%s/manifests/%s" % (img.repo, img.tag)
    for _ in range(5):
        r = pp.get(tag_path)
        assert r.status == 200 and r.body == img.manifest
        assert r.header("Docker-Content-Digest") == img.digest
    h = pp.head(tag_path)
    assert h.status == 200 and h.header("Docker-Content-Digest") == img.digest
    assert int(h.header("Content-Length")) == len(img.manifest)
    assert upstream.count("GET", "/manifests/" + img.tag) == 1
    assert upstream.count("HEAD", "/manifests/" + img.tag) == 0
    # By digest: immutable, straight from the cache.
    r = pp.get("/v2/%s/manifests/%s" % (img.repo, img.digest))
    assert r.status == 200 and r.body == img.manifest
    assert upstream.count("GET", "/manifests/" + img.digest) == 0

    time.sleep(2.2)             # past the TTL
    results = []
    threads = [threading.Thread(target=lambda: results.append(pp.get(tag_path)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status for r in results] == [200] * 6
    assert all(r.body == img.manifest for r in results)
    # One revalidation (a HEAD) for all six; the stored manifest is reused.
    assert upstream.count("HEAD", "/manifests/" + img.tag) == 1
    assert upstream.count("GET", "/manifests/" + img.tag) == 1


def push_blobs(registry, repo, n, size, seed):
    return [push_blob_stream(registry, repo, blob_chunks(seed + i, size))[0]
            for i in range(n)]


def test_eviction_keeps_the_budget_and_spares_blobs_in_use(
        registry, pullproxy_factory, upstream):
    size = 5 * MiB
    digests = push_blobs(registry, "pp/evict", 5, size, seed=500)
    pp = via(upstream, registry, pullproxy_factory, args=["--cache-max-size", "16M"])
    # A client holds the first blob open while the others push it out of
    # the budget: it must still get every byte.
    held = Reader(pp.port, blob_path("pp/evict", digests[0]), stop_after=CHUNK)
    assert held.got_first.wait(60)
    wait_for(lambda: any(l.get("digest") == digests[0] for l in pp.logs("blob cached")),
             30, "the first blob to be cached")
    for d in digests[1:]:
        r = pp.get(blob_path("pp/evict", d))
        assert r.status == 200 and sha256_digest(r.body) == d
    held.join()
    assert held.status == 200 and held.digest() == digests[0]

    stats = json.loads(cache_cmd(pp, "stats", "--json").stdout)
    assert stats["blob_bytes"] <= 16 * MiB, stats
    # The budget in force (the server's flag), not the admin's default.
    assert stats["budget"] == 16 * MiB, stats
    # The least recently used unheld blob went; the newest stayed.
    r = pp.get(blob_path("pp/evict", digests[-1]))
    assert r.status == 200 and upstream.count("GET", digests[-1]) == 1
    r = pp.get(blob_path("pp/evict", digests[1]))
    assert r.status == 200 and sha256_digest(r.body) == digests[1]
    assert upstream.count("GET", digests[1]) == 2


def test_kill_9_during_downloads_then_restart(registry, mid_blob, images, tmp_path,
                                               upstream):
    img = images["small"]
    pp = PullProxy(tmp_path / "pp", [(registry.host, upstream.url)])
    pp.start()
    try:
        upstream.hold.clear()
        readers = [Reader(pp.port, blob_path(mid_blob.repo, mid_blob.digest),
                          stop_after=4 * CHUNK)]
        readers += [Reader(pp.port, blob_path(img.repo, d)) for d in img.layers]
        assert readers[0].got_first.wait(60)
        pp.proc.send_signal(signal.SIGKILL)
        pp.proc.wait(10)
    finally:
        upstream.hold.set()
        for r in readers:
            r.join()
    # Restarted on the same cache: it opens, the partial blob is gone,
    # nothing is corrupt, and the pull succeeds.
    pp2 = PullProxy(tmp_path / "pp", [(registry.host, upstream.url)])
    pp2.start()
    try:
        listed = cache_cmd(pp2, "ls", "--json").stdout
        assert mid_blob.digest not in listed
        v = cache_cmd(pp2, "verify")
        assert " 0 corrupt" in v.stdout, v.stdout
        r = Reader(pp2.port, blob_path(mid_blob.repo, mid_blob.digest))
        r.join()
        assert r.status == 200 and r.digest() == mid_blob.digest
    finally:
        assert pp2.stop() == 0


def test_containerd_pulls_from_cache_with_registry_down(tmp_path, pullproxy_factory,
                                                        containerd):
    reg = Registry(tmp_path / "registry")
    reg.start()
    try:
        img = push_image(build_image(tmp_path / "img", "pp/offline", "v1", [
            {"hello": b"cached while the registry was up\n"}]), reg)
        pp = pullproxy_factory(registries=[(reg.host, reg.url)],
                               args=["--tag-ttl", "0"])
        hosts = write_hosts_dir(tmp_path / "hosts", reg, pp)
        ref = "%s/%s" % (reg.host, img.ref)
        pull = ("images", "pull", "--plain-http", "--hosts-dir", str(hosts),
                "--snapshotter", "native", ref)
        containerd.ctr(*pull)
    finally:
        reg.stop()
    # Forget the image in containerd, then pull again with no registry.
    containerd.ctr("images", "rm", "--sync", ref)
    cp = containerd.ctr(*pull, check=False)
    assert cp.returncode == 0, cp.stderr
    assert img.digest in containerd.ctr("images", "ls").stdout
    # The tag was served stale, the failure logged once.
    stale = [l for l in pp.logs("upstream failure") if l.get("client_status") == 200]
    assert stale and stale[0]["reference"] == img.tag


def test_blob_larger_than_the_budget_is_passed_through(registry, mid_blob,
                                                       pullproxy_factory, upstream):
    pp = via(upstream, registry, pullproxy_factory, args=["--cache-max-size", "16M"])
    for _ in range(2):
        r = Reader(pp.port, blob_path(mid_blob.repo, mid_blob.digest))
        r.join()
        assert r.status == 200 and r.digest() == mid_blob.digest, r.error
    bypassed = pp.logs("cache bypassed")
    assert len(bypassed) == 2 and bypassed[0]["digest"] == mid_blob.digest
    assert "budget" in bypassed[0]["reason"]
    assert not pp.logs("blob cached")
    assert json.loads(cache_cmd(pp, "stats", "--json").stdout)["blobs"] == 0


def test_known_tag_served_stale_when_registry_fails(registry, images, pullproxy_factory,
                                                    upstream):
    img = images["small"]
    pp = via(upstream, registry, pullproxy_factory, args=["--tag-ttl", "0"])
    path = "/v2/%s/manifests/%s" % (img.repo, img.tag)
    r = pp.get(path)
    assert r.status == 200 and r.header("Warning") is None
    upstream.fail_status = 503      # the registry now fails every request
    r = pp.get(path)
    assert r.status == 200 and r.body == img.manifest
    assert r.header("Docker-Content-Digest") == img.digest
    assert "Response is Stale" in (r.header("Warning") or "")
    # One revalidation, sent again twice after its 503s (retries = 2).
    assert upstream.count("HEAD", "/manifests/" + img.tag) == 3
    stale = [l for l in pp.logs("upstream failure") if l.get("client_status") == 200]
    assert stale and stale[0]["reference"] == img.tag and stale[0]["status"] == 503
    assert stale[0]["served"] == "stale" and stale[0]["attempt"] == 3
