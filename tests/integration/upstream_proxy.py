"""A forwarding HTTP server between pullproxy and the registry, for tests
that need an upstream slower or worse than the real one: it limits the
rate of bodies, can corrupt one blob's bytes, and counts what it was asked.
"""

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PASS_HEADERS = ("Content-Type", "Content-Length", "Docker-Content-Digest",
                "Content-Range", "Location", "Www-Authenticate",
                "Docker-Distribution-Api-Version", "Link")


class UpstreamProxy:
    def __init__(self, target_port, rate=None):
        self.target_port = target_port
        self.rate = rate            # body bytes per second per response, or None
        self.corrupt = set()        # digests whose bodies get one byte flipped
        self.fail_status = None     # set: every request gets this status
        self.hold = threading.Event()   # cleared: bodies wait before their last byte
        self.hold.set()
        self.seen = []              # (method, path) in arrival order
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.forward(head=True)

            def do_GET(self):
                self.forward(head=False)

            def forward(self, head):
                with proxy.lock:
                    proxy.seen.append((self.command, self.path))
                if proxy.fail_status is not None:
                    self.send_response(proxy.fail_status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() in ("accept", "range", "authorization")}
                conn.request(self.command, self.path, headers=headers)
                resp = conn.getresponse()
                self.send_response(resp.status)
                for k in PASS_HEADERS:
                    v = resp.getheader(k)
                    if v is not None:
                        self.send_header(k, v)
                self.end_headers()
                if head:
                    conn.close()
                    return
                length = int(resp.getheader("Content-Length", "0"))
                flip = length // 2 if any(d in self.path for d in proxy.corrupt) else -1
                sent, t0 = 0, time.monotonic()
                try:
                    while sent < length:
                        piece = resp.read(min(64 * 1024, length - sent))
                        if not piece:
                            break
                        if sent <= flip < sent + len(piece):
                            i = flip - sent
                            piece = piece[:i] + bytes([piece[i] ^ 0xFF]) + piece[i + 1:]
                        if sent + len(piece) == length:
                            proxy.hold.wait(60)
                        self.wfile.write(piece)
                        sent += len(piece)
                        if proxy.rate:
                            ahead = sent / proxy.rate - (time.monotonic() - t0)
                            if ahead > 0:
                                time.sleep(ahead)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                finally:
                    conn.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, method, fragment):
        with self.lock:
            return sum(1 for m, p in self.seen if m == method and fragment in p)

    def close(self):
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()
