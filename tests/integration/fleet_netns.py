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
  phase 3  no records        the members stay for stale_s, then none

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
    """A records for NAME from self.addrs; no records for anything else
    (NOERROR, empty), as an empty headless Service answers."""

    def __init__(self):
        self.addrs = []
        self.queries = 0
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 53))
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop:
            r, _, _ = select.select([self.sock], [], [], 0.2)
            if not r:
                continue
            q, peer = self.sock.recvfrom(512)
            try:
                self.sock.sendto(self.answer(q), peer)
            except (ValueError, IndexError, struct.error):
                continue

    def answer(self, q):
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
            addrs = list(self.addrs) if name == NAME and qtype == 1 else []
        head = struct.pack("!HHHHHH", qid, 0x8180, 1, len(addrs), 0, 0)
        body = b"".join(struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) +
                        socket.inet_aton(a) for a in addrs)
        return head + question + body

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
                    "stale_s = 3\n" % (NAME, addr, PORT, tmp))
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
    deadline = time.monotonic() + 40
    out["phases"]["1"] = [n.wait_for(["127.0.0.11", "127.0.0.12",
                                      "127.0.0.13"], deadline)
                          for n in nodes]
    dns.set(["127.0.0.12", "127.0.0.13", "127.0.0.14"])
    out["phases"]["2"] = [n.wait_for(["127.0.0.12", "127.0.0.13",
                                      "127.0.0.14"], deadline)
                          for n in nodes]
    dns.set([])
    empty_at = time.monotonic()
    out["phases"]["3"] = [n.wait_for([], deadline) for n in nodes]
    out["empty_after_s"] = time.monotonic() - empty_at
    out["exits"] = []
    out["stderr"] = []
    for n in nodes:
        rc, err = n.finish()
        out["exits"].append(rc)
        out["stderr"].append(err[-2000:])
    out["lines"] = [n.lines for n in nodes]
    out["queries"] = dns.queries
    dns.stop = True
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
