"""Crash consistency: kill -9 at random moments while clients pull
several blobs cold at once, twenty rounds on one cache directory. After
every restart the cache opens (never set aside as damaged), `pullproxy
cache verify` finds nothing corrupt, and pulls succeed with the right
digests. The budget is smaller than the blobs together, so eviction runs
too and some kills land in it.

Blobs of a few MiB go through upstream_proxy.py, paced to 8 MiB/s per
response, so that a kill finds downloads half done (the restarts' logs
must show partial blobs dropped); now and then the next start is killed
too, while it repairs the cache. About 16 s on release and on ASan.
PP_CRASH_SEED repeats a run."""

import json
import os
import random
import re
import signal
import subprocess
import time

import pytest

from conftest import MiB, PullProxy, blob_chunks, push_blob_stream, run
from test_cache import Reader, blob_path
from upstream_proxy import UpstreamProxy

ROUNDS = 20
BLOBS = 6
SIZE = 3 * MiB + 300 * 1024         # three whole chunks and a short one
RATE = 8 * MiB                      # per response: ~0.4 s a blob
BUDGET = "16M"                      # less than the 6 blobs (~20 MiB)
REPO = "pp/crash"


@pytest.fixture(scope="module")
def blobs(registry):
    return [push_blob_stream(registry, REPO, blob_chunks(9000 + i, SIZE))[0]
            for i in range(BLOBS)]


@pytest.fixture
def slow_upstream(registry):
    p = UpstreamProxy(registry.port, rate=RATE)
    yield p
    p.close()


def verify(pp):
    cp = run([pp.argv[0], "cache", "--cache-dir", str(pp.cache_dir), "verify"],
             check=False, timeout=120)
    return cp.returncode, cp.stdout + cp.stderr


def pull(pp, digest):
    r = Reader(pp.port, blob_path(REPO, digest))
    r.join()
    return r


def partials_dropped(pp):
    """What the open found of downloads a kill cut short."""
    n = 0
    for l in pp.log_lines():
        m = re.search(r"dropped (\d+) partial", l.get("msg", ""))
        n += int(m.group(1)) if m else 0
    return n


def whole(r):
    """The reader got a complete body (its Content-Length's worth)."""
    return r.error is None and r.status == 200 and r.nbytes == r.length


def test_kill_9_during_cold_pulls(tmp_path, registry, blobs, slow_upstream):
    seed = int(os.environ.get("PP_CRASH_SEED", time.time_ns() % 1000000))
    rnd = random.Random(seed)
    note = "PP_CRASH_SEED=%d" % seed
    workdir = tmp_path / "pp"
    args = ["--cache-max-size", BUDGET]
    regs = [(registry.host, slow_upstream.url)]
    dropped = cut = early = 0
    t0 = time.monotonic()
    for rnd_no in range(ROUNDS):
        pp = PullProxy(workdir, regs, args=args, log_level="info")
        pp.log_path.unlink(missing_ok=True)
        pp.start()
        try:
            where = "%s, round %d" % (note, rnd_no)
            # The cache opened as it was: never moved aside as damaged.
            assert not (pp.cache_dir / "data.mdb.corrupt").exists(), where
            dropped += partials_dropped(pp)
            rc, out = verify(pp)
            assert rc == 0 and " 0 corrupt" in out, (where, out)
            # A pull succeeds, cached or not.
            d = rnd.choice(blobs)
            r = pull(pp, d)
            assert whole(r) and r.digest() == d, (where, r.status, r.error)
            # Every blob at once, and a kill somewhere in the middle.
            readers = [Reader(pp.port, blob_path(REPO, x)) for x in blobs]
            time.sleep(rnd.uniform(0.0, 0.7))
            pp.proc.send_signal(signal.SIGKILL)
            pp.proc.wait(10)
        finally:
            if pp.proc.poll() is None:
                pp.proc.kill()
                pp.proc.wait(10)
        for r in readers:
            r.join()
            # Whatever was cut, nothing complete is wrong.
            if whole(r):
                assert r.digest() in blobs, (where, r.digest())
            else:
                cut += 1
        # Sometimes the next start dies too, while it drops the partial
        # blobs and stale readers of the last one.
        if rnd.random() < 0.25:
            pp = PullProxy(workdir, regs, args=args, log_level="info")
            pp.proc = subprocess.Popen(pp.argv, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            time.sleep(rnd.uniform(0.0, 0.1))
            pp.proc.kill()
            pp.proc.wait(10)
            early += 1
    # The last restart: everything pulls right, the cache is clean, and
    # a graceful stop still works on it.
    pp = PullProxy(workdir, regs, args=args, log_level="info")
    pp.log_path.unlink(missing_ok=True)
    pp.start()
    try:
        dropped += partials_dropped(pp)
        for d in blobs:
            r = pull(pp, d)
            assert whole(r) and r.digest() == d, (note, r.status, r.error)
        rc, out = verify(pp)
        assert rc == 0 and " 0 corrupt" in out, (note, out)
        stats = json.loads(run([pp.argv[0], "cache", "--cache-dir",
                                str(pp.cache_dir), "stats", "--json"]).stdout)
        assert stats["blob_bytes"] <= 16 * MiB, (note, stats)
    finally:
        assert pp.stop() == 0, note
    # The kills did land in downloads: restarts found partial blobs, and
    # clients were cut.
    assert dropped > 0 and cut > 0, (note, dropped, cut)
    print("%s: %d rounds in %.1f s, %d partial blobs dropped at restarts, "
          "%d clients cut, %d starts killed" % (
              note, ROUNDS, time.monotonic() - t0, dropped, cut, early))
