"""The redirect rule seen from a registry that is not on this node.

Every test registry runs on 127.0.0.1, and a redirect from a loopback
registry to loopback is allowed (a lab registry may keep its storage
there). To see the refusal, this script runs inside a network namespace of
its own (test_hostile_upstreams.py starts it with `unshare --net`), where
it gives lo the address 192.0.2.10 (TEST-NET-1: not loopback, and nothing
outside the namespace can reach it) and runs pullproxy with a registry
there that redirects blob GETs:

  /v2/to-remote/...     to storage on 192.0.2.10 (allowed: serves the blob)
  /v2/to-loopback/...   to http://127.0.0.1:SENTINEL
  /v2/to-localhost/...  to http://localhost:SENTINEL
  /v2/to-any/...        to http://0.0.0.0:SENTINEL (connect() reaches it)
  /v2/to-v6/...         to http://[::1]:SENTINEL6
  /v2/to-imds/...       to http://169.254.169.254/metadata/...
  /v2/to-pooled/...     to the loopback registry "local", whose connection
                        pullproxy already holds (the request check, since
                        no socket is opened for it)
  /v2/via-storage/...   to storage on 192.0.2.10, which redirects to
                        127.0.0.1:SENTINEL (two hops)

The same registry also answers with a Bearer challenge whose realm is
on the node (pullproxy asks it anonymously, as anonymous pulls do):

  /v2/realm-loopback/...   realm http://127.0.0.1:SENTINEL/token
  /v2/realm-localhost/...  realm http://localhost:SENTINEL/token
  /v2/realm-imds/...       realm http://169.254.169.254/metadata/...

Prints one JSON object: the status each request got, connections each
sentinel saw, requests the loopback registry saw, pullproxy's log lines.
Standard library only; PULLPROXY_BIN names the binary.
"""

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ADDR = "192.0.2.10"
BLOB = b"blob served from storage off the node\n" * 100
LOCAL_BLOB = b"blob of the loopback registry\n" * 100
CASES = ("to-remote", "to-loopback", "to-localhost", "to-any", "to-v6",
         "to-imds", "to-pooled", "via-storage")
REALM_CASES = ("realm-loopback", "realm-localhost", "realm-imds")


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_of(case):
    """The blob each case asks for: another one each, or the cache would
    answer the later ones."""
    return sha256(BLOB) if case == "to-remote" else sha256(case.encode())


class Sentinel:
    """Counts connections and answers nothing: closes them, or with keep
    holds them open (a server that never answers)."""

    def __init__(self, family=socket.AF_INET, host="127.0.0.1", keep=False):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.keep, self.kept, self.connections = keep, [], 0
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.keep:
                self.kept.append(c)
            else:
                c.close()

    def close(self):
        self.sock.close()
        for c in self.kept:
            c.close()


def server(host, routes, seen=None):
    """An HTTP/1.1 server (keep-alive) answering GET and HEAD by the
    first path component after /v2/ (or the whole path) from routes:
    a (status, headers, body) triple."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, head):
            if seen is not None:
                seen.append(self.path)
            parts = self.path.split("/")
            key = parts[2] if len(parts) > 2 and parts[1] == "v2" else self.path
            status, headers, body = routes.get(key, (404, {}, b""))
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def do_GET(self):
            self.answer(False)

        def do_HEAD(self):
            self.answer(True)

    srv = ThreadingHTTPServer((host, 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1]


def get(port, path, timeout=20):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body
    finally:
        conn.close()


def main():
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", ADDR + "/32", "dev", "lo"], check=True)
    s4 = Sentinel(socket.AF_INET, "127.0.0.1")
    s6 = Sentinel(socket.AF_INET6, "::1")
    local_seen = []
    _, local = server("127.0.0.1", {"pooled": (200, {}, LOCAL_BLOB)},
                      local_seen)
    redirect = lambda url: (307, {"Location": url}, b"")  # noqa: E731
    challenge = lambda realm: (401, {  # noqa: E731
        "WWW-Authenticate": 'Bearer realm="%s",service="x"' % realm}, b"")
    _, storage = server(ADDR, {
        "/blob": (200, {"Content-Type": "application/octet-stream"}, BLOB),
        "/onward": redirect("http://127.0.0.1:%d/x" % s4.port)})
    _, reg = server(ADDR, {
        "to-remote": redirect("http://%s:%d/blob" % (ADDR, storage)),
        "to-loopback": redirect("http://127.0.0.1:%d/x" % s4.port),
        "to-localhost": redirect("http://localhost:%d/x" % s4.port),
        "to-any": redirect("http://0.0.0.0:%d/x" % s4.port),
        "to-v6": redirect("http://[::1]:%d/x" % s6.port),
        "to-imds": redirect("http://169.254.169.254/metadata/identity/"
                            "oauth2/token?api-version=2018-02-01"),
        "to-pooled": redirect("http://127.0.0.1:%d/v2/pooled/blobs/%s" %
                              (local, digest_of("to-pooled"))),
        "via-storage": redirect("http://%s:%d/onward" % (ADDR, storage)),
        "realm-loopback": challenge("http://127.0.0.1:%d/token" % s4.port),
        "realm-localhost": challenge("http://localhost:%d/token" % s4.port),
        "realm-imds": challenge("http://169.254.169.254/metadata/identity/"
                                "oauth2/token")})

    work = tempfile.mkdtemp(prefix="ppnetns-")
    conf = os.path.join(work, "pp.conf")
    with open(conf, "w") as f:
        f.write("[server]\nstall_timeout_s = 2\nconnect_timeout_ms = 1000\n")
    log = os.path.join(work, "pp.log")
    with socket.socket() as s:      # alone in the namespace: stays free
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pp = subprocess.Popen([
        os.environ["PULLPROXY_BIN"], "serve", "--listen", "127.0.0.1:%d" % port,
        "--cache-dir", os.path.join(work, "cache"), "--config", conf,
        "--log", log, "--log-level", "debug",
        "--registry", "local.example=http://127.0.0.1:%d" % local] + [
        # One registry name per case: failures in a row would open the
        # registry's circuit and refuse the next cases before the rule.
        a for c in CASES + REALM_CASES for a in
        ("--registry", "%s.example=http://%s:%d" % (c, ADDR, reg))],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(work, "stderr"), "wb"))
    out = {"statuses": {}, "seconds": {}, "realm_statuses": {}}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.05)
        # The loopback registry's connection, kept in pullproxy's pool.
        status, body = get(port, "/v2/pooled/blobs/%s" % sha256(LOCAL_BLOB))
        out["pooled_first"] = [status, body == LOCAL_BLOB]
        for repo in CASES:
            t0 = time.monotonic()
            try:
                status, body = get(port, "/v2/%s/blobs/%s?ns=%s.example" % (
                    repo, digest_of(repo), repo))
                out["statuses"][repo] = status
                if repo == "to-remote":
                    out["remote_body_ok"] = body == BLOB
            except OSError as e:
                out["statuses"][repo] = str(e)
            out["seconds"][repo] = time.monotonic() - t0
        for repo in REALM_CASES:
            try:
                status, _ = get(port, "/v2/%s/manifests/v1?ns=%s.example" % (
                    repo, repo))
                out["realm_statuses"][repo] = status
            except OSError as e:
                out["realm_statuses"][repo] = str(e)
    finally:
        pp.terminate()
        out["exit"] = pp.wait(15)
    out["sentinel4"] = s4.connections
    out["sentinel6"] = s6.connections
    out["local_seen"] = local_seen
    with open(log) as f:
        out["log"] = [json.loads(l) for l in f if l.startswith("{")]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
