"""The cache under pressure. Many clients that never read: the reader
table (4,096 slots shared by pullproxy and `pullproxy cache`) is never
exhausted, downloads beside them stay whole, and admin commands work while
they are there and after they left. Large manifests: they are evicted as
blobs are, so they never starve the blobs of the budget."""

import json
import resource
import select
import socket
import time

from conftest import (ACCEPT_ALL, LOCALHOST, MT_OCI_CONFIG, MT_OCI_LAYER_GZIP,
                      MT_OCI_MANIFEST, MiB, blob_chunks, canonical_json,
                      http_request, push_blob_stream, run, sha256_digest,
                      wait_for)

STALLED = 1500


def cache_stats(pp):
    return run([pp.argv[0], "cache", "--cache-dir", str(pp.cache_dir), "stats",
                "--json"], check=False, timeout=60)


def stalled_client(port, path):
    """A connection that asks for path and never reads: a tiny receive
    buffer so the kernel takes little, and pullproxy keeps what it queued
    (its pins) for as long as the client stays."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(30)
    s.connect((LOCALHOST, port))
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (path, LOCALHOST, port))
              .encode())
    return s


def wait_answered(socks, timeout):
    """Until every socket has bytes to read (pullproxy started its answer,
    so it pinned what it queued), or timeout."""
    poller = select.poll()
    left = {s.fileno(): s for s in socks}
    for fd in left:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        for fd, _ in poller.poll(1000):
            poller.unregister(fd)
            left.pop(fd)
    return len(left)


def test_stalled_clients_do_not_exhaust_the_readers(registry, pullproxy_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = STALLED + 1024       # pullproxy inherits it: both ends live here
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    size = 16 * MiB             # far more than pullproxy queues per client
    digest, _ = push_blob_stream(registry, "pp/stalled", blob_chunks(900, size))
    path = "/v2/pp/stalled/blobs/%s" % digest
    pp = pullproxy_factory()
    r = pp.get(path, timeout=60)
    assert r.status == 200 and sha256_digest(r.body) == digest

    socks = []
    try:
        for _ in range(STALLED):
            socks.append(stalled_client(pp.port, path))
        assert wait_answered(socks, 120) == 0, "pullproxy did not answer every client"
        # Beside them: other downloads of the blob are whole, and admin
        # commands get a read transaction.
        for _ in range(3):
            r = pp.get(path, timeout=60)
            assert r.status == 200 and len(r.body) == size
            assert sha256_digest(r.body) == digest
        cp = cache_stats(pp)
        assert cp.returncode == 0, cp.stderr
        assert not pp.logs("cache read failed"), pp.logs("cache read failed")[:3]
    finally:
        for s in socks:
            s.close()
    # After they left, at once (the old failure lasted until restart).
    wait_for(lambda: cache_stats(pp).returncode == 0, 30,
             "pullproxy cache stats to work once the clients left")
    cp = run([pp.argv[0], "cache", "--cache-dir", str(pp.cache_dir), "verify"],
             check=False, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    r = pp.get(path, timeout=60)
    assert r.status == 200 and sha256_digest(r.body) == digest


def test_large_manifests_do_not_starve_blobs(registry, pullproxy_factory):
    """Twenty 1 MiB manifests on a 16 MiB budget used to leave no room for
    any blob, for good: every later layer "cache bypassed"."""
    repo = "pp/fat"
    config = canonical_json({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []}})
    cfg_digest, _ = push_blob_stream(registry, repo, [config])
    layers = [push_blob_stream(registry, repo, blob_chunks(950 + i, 3 * MiB))[0]
              for i in range(3)]
    manifests = []
    for i in range(20):
        body = canonical_json({
            "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": cfg_digest,
                       "size": len(config)},
            "layers": [{"mediaType": MT_OCI_LAYER_GZIP, "digest": layers[0],
                        "size": 3 * MiB}],
            "annotations": {"pad": "%d" % i + "x" * MiB}})
        r = http_request(registry.port, "PUT", "/v2/%s/manifests/t%d" % (repo, i),
                         headers={"Content-Type": MT_OCI_MANIFEST}, body=body)
        assert r.status == 201, (r.status, r.body[:200])
        manifests.append(body)

    pp = pullproxy_factory(args=["--cache-max-size", "16M"])
    for i, body in enumerate(manifests):
        r = pp.get("/v2/%s/manifests/t%d" % (repo, i), headers={"Accept": ACCEPT_ALL})
        assert r.status == 200 and r.body == body
    for d in layers:
        r = pp.get("/v2/%s/blobs/%s" % (repo, d), timeout=60)
        assert r.status == 200 and sha256_digest(r.body) == d
    assert not pp.logs("cache bypassed"), pp.logs("cache bypassed")[:3]
    cached = {l["digest"] for l in pp.logs("blob cached")}
    assert cached == set(layers)
    stats = json.loads(run([pp.argv[0], "cache", "--cache-dir", str(pp.cache_dir),
                            "stats", "--json"]).stdout)
    assert stats["blobs"] == 3, stats
    assert stats["blob_bytes"] + stats["manifest_bytes"] <= 16 * MiB, stats
    # The first tag's manifest went (and its tag with it): asked again, it
    # is fetched again and served whole.
    mark = registry.mark()
    r = pp.get("/v2/%s/manifests/t0" % repo, headers={"Accept": ACCEPT_ALL})
    assert r.status == 200 and r.body == manifests[0]
    assert any(q.method == "GET" and q.uri.endswith("/manifests/t0")
               for q in registry.requests_since(mark))
