"""Clients that do not play by the rules, against the real binary: heads
too large, heads that never end, more connections than descriptors,
ambiguous framing, paths and Host values aimed elsewhere. pullproxy must
answer what it can, cut off what it must, keep serving everyone else and
never contact anything it was not configured for."""

import http.client
import os
import re
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import LOCALHOST, http_request, wait_for

HEADER_TIMEOUT_S = 2


def raw(port, data, timeout=10):
    """Send data on a fresh connection, read until the server closes it or
    timeout passes. Returns (bytes read, closed by the server)."""
    s = socket.create_connection((LOCALHOST, port), timeout=timeout)
    out = b""
    try:
        # Sent from a thread: a server that answers early and stops
        # reading must not leave us blocked in send.
        sender = threading.Thread(target=_send_all, args=(s, data), daemon=True)
        sender.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return out, False
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk
        return out, False
    finally:
        s.close()


def _send_all(s, data):
    try:
        s.sendall(data)
    except OSError:
        pass


def responses(data):
    """The status codes of the responses in data, in order."""
    return [int(m.group(1)) for m in re.finditer(rb"HTTP/1\.[01] (\d{3}) ", data)]


def oci_code(data):
    body = data.split(b"\r\n\r\n", 1)[1]
    m = re.search(rb'"code":"([A-Z_]+)"', body)
    return m.group(1).decode() if m else None


def still_serves(pp):
    r = pp.get("/v2/", timeout=10)
    assert r.status == 200


@pytest.fixture
def guarded(pullproxy_factory, tmp_path):
    """pullproxy with a short header timeout, in front of the registry."""
    cfg = tmp_path / "guard.conf"
    cfg.write_text("[server]\nheader_timeout_s = %d\n" % HEADER_TIMEOUT_S)
    return pullproxy_factory(args=["--config", str(cfg)])


# ------------------------------------------------------------ oversized

@pytest.mark.parametrize("size", [9 * 1024, 24 * 1024])
def test_long_request_target_414(guarded, registry, size):
    mark = registry.mark()
    path = "/v2/pp/small/manifests/v1?pad=" + "a" * size
    out, closed = raw(guarded.port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    assert responses(out) == [414] and oci_code(out) == "UNSUPPORTED"
    assert b"Connection: close" in out and closed
    assert registry.requests_since(mark) == []
    still_serves(guarded)


@pytest.mark.parametrize("headers", [
    [("X-Big", "b" * 20 * 1024)],
    [("X-F%d" % i, "v") for i in range(150)],
], ids=["one-20k-field", "150-fields"])
def test_large_header_section_431(guarded, registry, headers):
    mark = registry.mark()
    head = "".join("%s: %s\r\n" % kv for kv in headers)
    out, closed = raw(guarded.port, ("GET /v2/pp/small/manifests/v1 HTTP/1.1\r\n"
                                     "Host: x\r\n%s\r\n" % head).encode())
    assert responses(out) == [431] and oci_code(out) == "UNSUPPORTED"
    assert closed
    assert registry.requests_since(mark) == []
    still_serves(guarded)


@pytest.mark.parametrize("where", ["target", "header"])
def test_head_over_32k_refused_by_evhttp(guarded, where):
    """Past 32 KiB of head, evhttp (libevent 2.1) answers 400 itself before
    pullproxy sees a request, and closes: it has no hook to answer 414 or
    431. Memory stays bounded either way; the server goes on."""
    pad = "a" * (1024 * 1024)
    if where == "target":
        data = "GET /v2/x/manifests/%s HTTP/1.1\r\nHost: x\r\n\r\n" % pad
    else:
        data = "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n" % pad
    out, closed = raw(guarded.port, data.encode())
    assert responses(out) in ([400], [])   # a reset may beat the answer
    assert closed
    still_serves(guarded)


# ------------------------------------------------------------- slowloris

def test_slowloris_cut_off(guarded):
    """A byte a second never ends a head: the connection is closed once the
    head is header_timeout_s late, while another client is served."""
    s = socket.create_connection((LOCALHOST, guarded.port), timeout=1)
    head = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 60
    t0 = time.monotonic()
    cut = None
    try:
        for ch in head:
            try:
                s.send(bytes([ch]))
            except OSError:
                cut = time.monotonic() - t0
                break
            try:
                if s.recv(100) == b"":
                    cut = time.monotonic() - t0
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                cut = time.monotonic() - t0
                break
            still_serves(guarded)
    finally:
        s.close()
    assert cut is not None, "a trickling head was never cut off"
    assert HEADER_TIMEOUT_S - 0.5 <= cut <= HEADER_TIMEOUT_S + 4, cut
    wait_for(lambda: guarded.logs("slow clients cut off"), 5, "the cut to be logged")


def test_idle_keepalive_and_slow_upstream_not_cut(pullproxy_factory, tmp_path):
    """The deadline covers a head only: a kept-alive connection idle between
    requests, and a request whose answer takes longer than the deadline,
    are left alone."""
    class Slow(BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(HEADER_TIMEOUT_S + 2)
            body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    slow = ThreadingHTTPServer((LOCALHOST, 0), Slow)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    try:
        cfg = tmp_path / "guard.conf"
        cfg.write_text("[server]\nheader_timeout_s = %d\n" % HEADER_TIMEOUT_S)
        pp = pullproxy_factory(registries=[("slow.example", "http://%s:%d" % (
            LOCALHOST, slow.server_address[1]))], args=["--config", str(cfg)])
        conn = http.client.HTTPConnection(LOCALHOST, pp.port, timeout=30)
        try:
            conn.request("GET", "/v2/")
            r = conn.getresponse()
            assert r.status == 200 and r.read() == b"{}"
            time.sleep(HEADER_TIMEOUT_S + 1.5)
            conn.request("GET", "/v2/pp/x/manifests/v1")
            r = conn.getresponse()
            assert r.status == 404 and b"MANIFEST_UNKNOWN" in r.read()
            conn.request("GET", "/v2/")
            assert conn.getresponse().status == 200
        finally:
            conn.close()
        assert pp.logs("slow clients cut off") == []
    finally:
        slow.shutdown()
        slow.server_close()


def test_client_that_sends_without_reading(guarded, mid_blob):
    """While an answer is written, evhttp still reads (to see a close) and
    would buffer whatever the client sends: capped, so memory stays flat."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(2)
    s.connect((LOCALHOST, guarded.port))
    try:
        s.sendall(b"GET /v2/%s/blobs/%s HTTP/1.1\r\nHost: x\r\n\r\n" % (
            mid_blob.repo.encode(), mid_blob.digest.encode()))
        time.sleep(0.5)
        before = rss_kib(guarded.pid)
        junk, sent = b"x" * 65536, 0
        deadline = time.monotonic() + 10
        while sent < 256 * 1024 * 1024 and time.monotonic() < deadline:
            try:
                sent += s.send(junk)
            except (socket.timeout, OSError):
                break
        assert sent < 64 * 1024 * 1024, "pullproxy took %d MiB unread" % (sent >> 20)
        assert rss_kib(guarded.pid) - before < 32 * 1024
    finally:
        s.close()
    still_serves(guarded)


# ----------------------------------------------------- descriptors run out

def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(next(l for l in f if l.startswith("VmRSS")).split()[1])


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_descriptors_exhausted(pullproxy_factory):
    """With 256 descriptors and 400 idle connections, accept fails: the
    listener pauses (logged once), the loop does not spin, a connection
    already open is still served, and new ones are once descriptors free."""
    pp = pullproxy_factory(start=False)
    pp.argv = ["prlimit", "--nofile=256:256", "--"] + pp.argv
    pp.start()
    kept = http.client.HTTPConnection(LOCALHOST, pp.port, timeout=10)
    kept.request("GET", "/v2/")
    assert kept.getresponse().read() == b"{}"
    idle = []
    try:
        for _ in range(400):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((LOCALHOST, pp.port))
            idle.append(s)
        wait_for(lambda: pp.logs("accept paused"), 20, "accept to pause")
        cpu0, t0 = cpu_seconds(pp.pid), time.monotonic()
        time.sleep(3)
        busy = (cpu_seconds(pp.pid) - cpu0) / (time.monotonic() - t0)
        assert busy < 0.3, "pullproxy spins at %.0f%% CPU while out of fds" % (busy * 100)
        assert pp.proc.poll() is None
        kept.request("GET", "/v2/")
        assert kept.getresponse().read() == b"{}"
    finally:
        for s in idle:
            s.close()
        kept.close()

    def served():
        try:
            return http_request(pp.port, "GET", "/v2/", timeout=2).status == 200
        except OSError:
            return False
    wait_for(served, 20, "a new connection to be served")
    wait_for(lambda: pp.logs("accept resumed"), 15, "accept resumed to be logged")
    assert len(pp.logs("accept paused")) == 1
    assert len(pp.logs("accept resumed")) == 1


# ------------------------------------------------------------ smuggling

SMUGGLED = b"GET /v2/pp/small/manifests/v1 HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("fields,by", [
    (b"Content-Length: 0\r\nContent-Length: %d\r\n" % len(SMUGGLED), "pullproxy"),
    (b"Content-Length: %d\r\nContent-Length: %d\r\n" % ((len(SMUGGLED),) * 2), "pullproxy"),
    (b"Content-Length: +%d\r\n" % len(SMUGGLED), "pullproxy"),
    (b"Content-Length : 0\r\n", "pullproxy"),
    (b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", "evhttp"),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n", "evhttp"),
    (b"Transfer-Encoding: gzip, chunked\r\n", "evhttp"),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", "evhttp"),
], ids=["cl-cl", "cl-cl-equal", "cl-plus", "cl-space", "cl-te", "te-cl",
        "te-gzip", "te-te"])
@pytest.mark.parametrize("method", [b"GET", b"POST"])
def test_ambiguous_framing_400(guarded, registry, images, fields, by, method):
    """Framing another HTTP hop could read differently gets 400 and the
    connection closed: nothing behind it is ever taken as a request."""
    mark = registry.mark()
    data = (method + b" /v2/ HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n" +
            b"0\r\n\r\n" * (b"chunked" in fields) + SMUGGLED)
    out, closed = raw(guarded.port, data, timeout=5)
    assert responses(out) == [400], out[:300]
    assert closed
    if by == "pullproxy":
        assert oci_code(out) == "UNSUPPORTED"
    assert registry.requests_since(mark) == []
    still_serves(guarded)


# -------------------------------------------------- names, ns and targets

@pytest.mark.parametrize("path", [
    "/v2/pp%2fsmall/manifests/v1",
    "/v2/pp%252Fsmall/manifests/v1",
    "/v2/pp/..%2Fsmall/manifests/v1",
    "/v2/pp/%2e/small/manifests/v1",
    "/v2/pp/small/..;/manifests/v1",
    "/v2/pp\\small/manifests/v1",
    "/v2/pp/small%00/manifests/v1",
    "/v2/pp/small/manifests/..%2Fv1",
    "/v2/pp/small/blobs/sha256:%2e%2e",
    "/v2/pp/small/tags/..%2Flist",
])
def test_encoded_names_never_forwarded(guarded, registry, images, path):
    """Sent as is (no client normalises them): 400 or 404 with an OCI code,
    and the registry never sees a request."""
    mark = registry.mark()
    out, _ = raw(guarded.port, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                 % path.encode(), timeout=5)
    status = responses(out)
    assert status in ([400], [404]), out[:300]
    assert oci_code(out) in ("NAME_INVALID", "DIGEST_INVALID", "MANIFEST_INVALID",
                             "NOT_FOUND")
    assert registry.requests_since(mark) == []


def test_absolute_target_and_host_ignored(guarded, registry, images, sentinel):
    """An absolute-form target or a Host naming another server routes
    nowhere new: only ns picks a registry, and only a configured one."""
    aim = "%s:%d" % (LOCALHOST, sentinel.port)
    for data in (
            b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET http://%s/v2/pp/small/manifests/v1 HTTP/1.1\r\nHost: x\r\n\r\n" % aim.encode(),
            b"GET /v2/pp/small/manifests/v1 HTTP/1.1\r\nHost: %s\r\n\r\n" % aim.encode(),
            b"GET /v2/pp/small/manifests/v1 HTTP/1.1\r\nHost: 169.254.169.254\r\n"
            b"X-Forwarded-Host: 169.254.169.254\r\n\r\n",
            b"CONNECT 169.254.169.254:80 HTTP/1.1\r\nHost: 169.254.169.254:80\r\n\r\n"):
        out, _ = raw(guarded.port, data, timeout=5)
        assert responses(out)[:1] in ([200], [400], [404], [405], [501]), out[:200]
    assert sentinel.connections == 0


@pytest.mark.parametrize("ns", [
    "SENTINEL@%s" % "169.254.169.254",
    "169.254.169.254%00REGISTRY",
    "REGISTRY%2F..%2F..%2Flatest",
    "REGISTRY/x",
    "SENTINEL%23",
    "REGISTRY:0x50",
    "[::ffff:169.254.169.254]:80",
    "2852039166",
])
def test_ns_malformed_or_disguised_refused(guarded, registry, images, sentinel, ns):
    """ns values that try to smuggle another host past the check: refused
    (404 NAME_UNKNOWN), nothing contacted."""
    ns = ns.replace("SENTINEL", "%s:%d" % (LOCALHOST, sentinel.port)).replace(
        "REGISTRY", registry.host)
    mark = registry.mark()
    r = guarded.get("/v2/pp/small/manifests/v1?ns=" + ns)
    assert r.status == 404 and r.error_code() == "NAME_UNKNOWN"
    assert sentinel.connections == 0
    assert registry.requests_since(mark) == []
    assert guarded.logs("ns refused")


def test_idle_connection_closed_after_idle_timeout(pullproxy_factory, tmp_path):
    """A kept-alive connection with nothing to do is closed after
    idle_timeout_s, not held for evhttp's own default."""
    cfg = tmp_path / "idle.conf"
    cfg.write_text("[server]\nidle_timeout_s = 2\n")
    pp = pullproxy_factory(args=["--config", str(cfg)])
    s = socket.create_connection((LOCALHOST, pp.port), timeout=10)
    try:
        s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"{}" not in got:
            chunk = s.recv(4096)
            assert chunk, "closed before answering"
            got += chunk
        t0 = time.monotonic()
        s.settimeout(15)
        assert s.recv(4096) == b"", "the server sent more"
        waited = time.monotonic() - t0
    finally:
        s.close()
    assert 1.5 <= waited < 15, waited


def test_head_error_logs_no_body_bytes(pullproxy):
    """A HEAD answered with an error sends no body, and its request line
    says so."""
    r = pullproxy.head("/v2/pp/x/blobs/sha256:short")
    assert r.status == 400
    line = wait_for(lambda: [l for l in pullproxy.logs("request")
                             if l.get("method") == "HEAD"], 5, "the line")[0]
    assert line["status"] == 400 and line["bytes"] == 0, line
