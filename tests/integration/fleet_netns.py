"""Fleet membership from a real DNS server, seen through `pullproxy fleet`.

Runs inside namespaces of its own (test_fleet_dns.py starts it with
`unshare --mount --net`): lo comes up, a small DNS server answers on
127.0.0.1:53, and this namespace's /etc/resolv.conf (bind-mounted) names
it, so getaddrinfo in pullproxy's resolver thread asks it exactly as it
asks CoreDNS in a cluster. The name peers.fleet.test answers with the A
records the script sets, as a headless Service answers with its ready
pods, and the script changes them while two `pullproxy fleet` processes
(two "nodes", 127.0.0.11 and 127.0.0.12) watch:

  phase 1  .11 .12 .13       both nodes see three members, themselves
                             among them, and agree on every owner
  phase 2  .12 .13 .14       a node joined and one left
  phase 3  1,000 records     more than a datagram holds: glibc asks
                             again over TCP
  phase 4  no records        the members stay for stale_s, then none

Prints one JSON object: each node's lines, the queries the server saw,
and the exit statuses. Standard library only; PULLPROXY_BIN names the
binary.
"""

import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

NAME = "peers.fleet.test"
PORT = 7001
KEYS = ["sha256:%064x" % i for i in range(8)] + \
    ["registry.example/library/alpine:3.20"]


class DNS:
    """A and AAAA records for NAME from self.addrs (IPv4 and IPv6
    strings); no records for anything else (NOERROR, empty), as an empty
    headless Service answers. UDP and TCP on one port: an answer that
    does not fit 512 bytes goes out truncated over UDP (TC set), whole
    over TCP, as a real server does."""

    def __init__(self, port=53):
        self.addrs = []
        self.queries = 0
        self.tcp_queries = 0
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(16)
        self.stop = False
        for target in (self.serve, self.serve_tcp):
            threading.Thread(target=target, daemon=True).start()

    def serve(self):
        while not self.stop:
            r, _, _ = select.select([self.sock], [], [], 0.2)
            if not r:
                continue
            q, peer = self.sock.recvfrom(512)
            try:
                self.sock.sendto(self.answer(q, 512), peer)
            except (ValueError, IndexError, struct.error):
                continue

    def serve_tcp(self):
        while not self.stop:
            r, _, _ = select.select([self.tcp], [], [], 0.2)
            if not r:
                continue
            conn, _ = self.tcp.accept()
            threading.Thread(target=self.serve_conn, args=(conn,),
                             daemon=True).start()

    def serve_conn(self, conn):
        """Queries one after the other until the client closes: glibc
        sends A and AAAA on one connection."""
        with conn:
            conn.settimeout(5)
            try:
                while True:
                    head = conn.recv(2, socket.MSG_WAITALL)
                    if len(head) < 2:
                        return
                    q = conn.recv(struct.unpack("!H", head)[0],
                                  socket.MSG_WAITALL)
                    a = self.answer(q, 65535, tcp=True)
                    conn.sendall(struct.pack("!H", len(a)) + a)
            except (OSError, ValueError, IndexError, struct.error):
                return

    def answer(self, q, limit, tcp=False):
        qid, = struct.unpack("!H", q[:2])
        labels, i = [], 12
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode())
            i += 1 + q[i]
        qtype, = struct.unpack("!H", q[i + 1:i + 3])
        question = q[12:i + 5]
        name = ".".join(labels).lower()
        with self.lock:
            if name == NAME:
                self.queries += 1
                self.tcp_queries += tcp
            addrs = list(self.addrs) if name == NAME else []
        family = {1: socket.AF_INET, 28: socket.AF_INET6}.get(qtype)
        rdata = [socket.inet_pton(family, a) for a in addrs
                 if family is not None and
                 (":" in a) == (family == socket.AF_INET6)]
        body = b"".join(struct.pack("!HHHIH", 0xC00C, qtype, 1, 0, len(r)) +
                        r for r in rdata)
        flags, count = 0x8180, len(rdata)
        if 12 + len(question) + len(body) > limit:
            flags, count, body = flags | 0x0200, 0, b""
        return struct.pack("!HHHHHH", qid, flags, 1, count, 0, 0) + \
            question + body

    def set(self, addrs):
        with self.lock:
            self.addrs = list(addrs)


def bind_mount(text, target, tmp):
    path = os.path.join(tmp, os.path.basename(target))
    with open(path, "w") as f:
        f.write(text)
    subprocess.run(["mount", "--bind", path, target], check=True)


class Node:
    """`pullproxy fleet --for` as one node: its lines as they come."""

    def __init__(self, tmp, addr):
        conf = os.path.join(tmp, "node-%s.conf" % addr)
        with open(conf, "w") as f:
            f.write("[registry registry.example]\n"
                    "url = https://registry.example\n"
                    "[fleet]\n"
                    "peers_dns = %s\n"
                    "peer_listen = %s:%d\n"
                    "peer_token_file = %s/token\n"
                    "resolve_s = 1\n"
                    "stale_s = 5\n" % (NAME, addr, PORT, tmp))
        self.addr = addr
        self.lines = []
        self.proc = subprocess.Popen(
            [os.environ["PULLPROXY_BIN"], "fleet", "--config", conf,
             "--for", "60"] + KEYS,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self):
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def wait_for(self, members, deadline):
        """The first line with exactly these member addresses."""
        want = sorted("%s:%d" % (a, PORT) for a in members)
        while time.monotonic() < deadline:
            for line in self.lines:
                if sorted(m["id"] for m in line["members"]) == want:
                    return line
            time.sleep(0.05)
        return None

    def finish(self):
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.reader.join(5)
        return self.proc.returncode, err


def main():
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    tmp = tempfile.mkdtemp(prefix="pp-fleet-")
    with open(os.path.join(tmp, "token"), "w") as f:
        f.write("cluster-token\n")
    bind_mount("nameserver 127.0.0.1\noptions timeout:1 attempts:2\n",
               "/etc/resolv.conf", tmp)
    bind_mount("127.0.0.1 localhost\n", "/etc/hosts", tmp)
    dns = DNS()
    dns.set(["127.0.0.11", "127.0.0.12", "127.0.0.13"])
    nodes = [Node(tmp, "127.0.0.11"), Node(tmp, "127.0.0.12")]
    out = {"phases": {}}
    deadline = time.monotonic() + 90
    out["phases"]["1"] = [n.wait_for(["127.0.0.11", "127.0.0.12",
                                      "127.0.0.13"], deadline)
                          for n in nodes]
    dns.set(["127.0.0.12", "127.0.0.13", "127.0.0.14"])
    out["phases"]["2"] = [n.wait_for(["127.0.0.12", "127.0.0.13",
                                      "127.0.0.14"], deadline)
                          for n in nodes]
    many = ["127.0.%d.%d" % (1 + i // 250, 1 + i % 250) for i in range(1000)]
    dns.set(many)
    out["phases"]["3"] = [n.wait_for(many, deadline) for n in nodes]
    dns.set([])
    empty_at = time.monotonic()
    out["phases"]["4"] = [n.wait_for([], deadline) for n in nodes]
    out["empty_after_s"] = time.monotonic() - empty_at
    out["exits"] = []
    out["stderr"] = []
    for n in nodes:
        rc, err = n.finish()
        out["exits"].append(rc)
        out["stderr"].append(err[-2000:])
    out["lines"] = [n.lines for n in nodes]
    out["queries"] = dns.queries
    out["tcp_queries"] = dns.tcp_queries
    dns.stop = True
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
