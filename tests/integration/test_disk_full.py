"""Disk full: the cache directory on a 64 MiB filesystem the test mounts
(a tmpfs; skipped where mounting is not permitted), a budget of 1 GiB,
far more than the disk, and blobs that together, and one alone, do not
fit. Pulls keep being served, each whole and right: blobs are cached
while the disk has room, eviction makes room for newer ones, what cannot
fit is passed through. No crash, no client cut, the cache verifies
clean, and a graceful stop still works."""

import json
import os
import subprocess

import pytest

from conftest import MiB, blob_chunks, push_blob_stream, run
from test_cache import Reader, blob_path
from upstream_proxy import UpstreamProxy

DISK = 64 * MiB
REPO = "pp/diskfull"
# Six that fit a few at a time, one that fits alone, one that never does.
SIZES = [12 * MiB + 4321] * 6 + [40 * MiB, 80 * MiB + 7]


@pytest.fixture(scope="module")
def blobs(registry):
    return [push_blob_stream(registry, REPO, blob_chunks(7000 + i, size))[0]
            for i, size in enumerate(SIZES)]


@pytest.fixture
def small_disk(tmp_path):
    d = tmp_path / "disk"
    d.mkdir()
    cp = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % DISK,
                         "pptest", str(d)], stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
    if cp.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + cp.stdout.strip())
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture
def upstream(registry):
    p = UpstreamProxy(registry.port)
    yield p
    p.close()


def pull(pp, digests, at_once):
    """The blobs, at_once at a time; each must come whole and right."""
    for i in range(0, len(digests), at_once):
        group = [(d, Reader(pp.port, blob_path(REPO, d)))
                 for d in digests[i:i + at_once]]
        for d, r in group:
            r.join()
            assert r.error is None and r.status == 200, (d, r.status, r.error)
            assert r.nbytes == r.length and r.digest() == d, d


def cache_cmd(pp, *args):
    return run([pp.argv[0], "cache", "--cache-dir", str(pp.cache_dir), *args],
               check=False)


def on_disk(factory, registry, upstream, disk):
    """pullproxy with its cache on disk and a budget of 1 GiB."""
    pp = factory(registries=[(registry.host, upstream.url)],
                 args=["--cache-max-size", "1G"], start=False)
    cache = disk / "cache"
    pp.argv[pp.argv.index(str(pp.cache_dir))] = str(cache)
    pp.cache_dir = cache
    return pp.start()


def fill(disk):
    """Another writer takes every free byte."""
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * MiB)
                f.flush()
        except OSError:
            pass


def test_cache_on_a_full_disk(small_disk, registry, blobs, upstream,
                              pullproxy_factory):
    pp = on_disk(pullproxy_factory, registry, upstream, small_disk)
    # Twice in turns of two, then all at once: reservations together.
    for cycle, at_once in enumerate((2, 2, len(blobs))):
        pull(pp, blobs[cycle:] + blobs[:cycle], at_once)
        assert pp.proc.poll() is None, "pullproxy died"
    assert [l for l in pp.log_lines() if "the disk holds less" in l.get("msg", "")]
    assert any(l.get("msg", "").startswith("cache: evicted") for l in pp.log_lines())
    bypassed = {l["digest"] for l in pp.logs("cache bypassed")}
    assert blobs[-1] in bypassed        # bigger than the disk: passed through
    # Nothing failed on the way to a client (a cache write included).
    assert not pp.logs("upstream failure"), pp.logs("upstream failure")
    stats = json.loads(cache_cmd(pp, "stats", "--json").stdout)
    assert 0 < stats["blob_bytes"] <= DISK and stats["file_size"] <= DISK, stats
    v = cache_cmd(pp, "verify")
    assert v.returncode == 0 and " 0 corrupt" in v.stdout, v.stdout + v.stderr
    # data.mdb stays within what the disk gave at open, less a sixteenth
    # and 4 MiB: the rest is left to others, even when a burst of writes
    # meets readers whose snapshots keep evicted pages from reuse.
    mdb = os.stat(pp.cache_dir / "data.mdb").st_size
    assert mdb <= DISK - DISK // 16 - 4 * MiB, mdb
    st = os.statvfs(small_disk)
    assert st.f_bavail * st.f_frsize > 4 * MiB, "the disk was left full"
    # Someone else takes every free byte: the cache lives within data.mdb
    # as it is, evicting into its own free pages.
    fill(small_disk)
    pull(pp, blobs[3:] + blobs[:3], 2)
    assert pp.proc.poll() is None, "pullproxy died"
    assert not pp.logs("upstream failure"), pp.logs("upstream failure")
    v = cache_cmd(pp, "verify")
    assert v.returncode == 0 and " 0 corrupt" in v.stdout, v.stdout + v.stderr
    assert pp.stop() == 0
    # It starts again on the full disk, and serves.
    pp.start()
    pull(pp, blobs[:4], 2)
    assert pp.stop() == 0
    (small_disk / "filler").unlink()


def test_disk_filled_by_someone_else_mid_download(small_disk, registry, blobs,
                                                 upstream, pullproxy_factory):
    """Another process takes every free byte while a blob is half
    written. That download may be cut (no page to put the rest in, none
    to free one with); nothing else is: later pulls pass through, the
    cache verifies clean, pullproxy lives and stops cleanly."""
    pp = on_disk(pullproxy_factory, registry, upstream, small_disk)
    pull(pp, blobs[:1], 1)
    upstream.hold.clear()       # bodies stop before their last byte
    held = Reader(pp.port, blob_path(REPO, blobs[1]), stop_after=10 * MiB)
    assert held.got_first.wait(60)
    fill(small_disk)
    upstream.hold.set()
    held.join()
    if held.error is None and held.nbytes == held.length:
        assert held.digest() == blobs[1]
    pull(pp, blobs[2:5], 3)
    assert pp.proc.poll() is None, "pullproxy died"
    v = cache_cmd(pp, "verify")
    assert v.returncode == 0 and " 0 corrupt" in v.stdout, v.stdout + v.stderr
    (small_disk / "filler").unlink()
    pull(pp, blobs[:3], 3)
    assert pp.stop() == 0
