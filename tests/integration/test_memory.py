"""Backpressure: a 1 GiB blob to a slow client must not pile up in memory."""

import hashlib
import http.client
import os
import threading
import time

import pytest

from conftest import LOCALHOST, MiB, SANITIZED

RSS_LIMIT_KIB = 32 * 1024
RATE = 48 * MiB          # client read rate, bytes/s: upstream is far faster
PAUSES = (0.25, 0.5, 0.75)   # stop reading for PAUSE_S at these fractions
PAUSE_S = 2.0
DEADLINE_S = 85          # the whole transfer, generously (reads time out at 30 s)


def rss_anon_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/%d/status" % pid)


class Sampler(threading.Thread):
    """RssAnon of pid every 50 ms; keeps the peak."""

    def __init__(self, pid, interval=0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            try:
                kib = rss_anon_kib(self.pid)
            except (OSError, ValueError):
                return
            self.peak = max(self.peak, kib)
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(timeout=5)


@pytest.mark.skipif(SANITIZED, reason="ASan's shadow memory and quarantine inflate RSS")
def test_slow_client_bounded_memory(pullproxy, big_blob):
    pid = pullproxy.pid
    baseline = rss_anon_kib(pid)
    sampler = Sampler(pid)
    sampler.start()
    path = "/v2/%s/blobs/%s" % (big_blob.repo, big_blob.digest)
    conn = http.client.HTTPConnection(LOCALHOST, pullproxy.port, timeout=30)
    h = hashlib.sha256()
    got = 0
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200
        assert int(resp.getheader("Content-Length")) == big_blob.size
        t0 = time.monotonic()
        paused = 0.0
        pauses = [int(big_blob.size * f) for f in PAUSES]
        while True:
            data = resp.read(256 * 1024)
            if not data:
                break
            h.update(data)
            got += len(data)
            if pauses and got >= pauses[0]:
                pauses.pop(0)
                time.sleep(PAUSE_S)
                paused += PAUSE_S
            # Pace to RATE, not counting the pauses.
            ahead = got / RATE - (time.monotonic() - t0 - paused)
            if ahead > 0:
                time.sleep(ahead)
            assert time.monotonic() - t0 < DEADLINE_S, \
                "transfer too slow: %d of %d bytes after %ds" % (got, big_blob.size, DEADLINE_S)
    finally:
        conn.close()
        sampler.stop()
    assert got == big_blob.size
    assert "sha256:" + h.hexdigest() == big_blob.digest
    assert sampler.samples > 100
    peak = sampler.peak
    measure = os.environ.get("PP_MEASURE_FILE")
    if measure:
        with open(measure, "a") as f:
            f.write("rssanon_peak_kib=%d (1 GiB blob, slow client)\n" % peak)
    assert peak < RSS_LIMIT_KIB, "RssAnon peaked at %d KiB (baseline %d KiB)" % (peak, baseline)
    served = [r for r in pullproxy.requests() if r["route"] == path]
    assert [(r["status"], r["bytes"]) for r in served] == [(200, big_blob.size)]
