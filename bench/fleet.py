#!/usr/bin/python3
"""Fleet benchmark: N pullproxy processes on one machine, each with its own
cache, containerd listener (127.0.0.1) and peer address (127.0.0.N), in
front of one docker-registry, all pulling the same cold image at once,
without and with fleet mode; then one layer wanted by every node with the
fan-out K limited. Python 3 standard library; run by bench/fleet.sh.

Figures per run: registry GETs and bytes (its access log), time from the
start until the last node has the whole image, and per-node peer egress
(the bytes a node's log says it answered, less what this script's own
client got from it), max and mean. Extrapolation to 500 and 5,000 nodes is
bench/fleet_model.py's; this measures the small-N end on one loopback,
where the links are not the limit (the model's are): see the report.
"""
import argparse
import hashlib
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

MiB = 1 << 20
TOKEN = "bench-fleet-token-0123456789abcdef"
FLEET_NAME = "fleet.bench.invalid"
REGISTRY_IP = "127.0.0.2"
ACCESS_RE = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<m>[A-Z]+) (?P<u>\S+) '
                       r'[^"]*" (?P<s>\d{3}) (?P<b>\S+)')


def log(msg):
    print("fleet: " + msg, file=sys.stderr, flush=True)


def port_for(case, what, i=0):
    """Ports below the ephemeral range (32768 up), fixed per case: the run
    has its network namespace to itself, and a port picked free from the
    ephemeral range can be taken by a connection's source port before the
    server binds it."""
    return 10000 + 1000 * case + {"registry": 0, "peer": 1, "node": 100}[
        what] + i


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise SystemExit("timed out waiting for " + what)


def request(host, port, method, path, headers=None, body=None, timeout=120):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.headers, r.read()
    finally:
        c.close()


class Registry:
    def __init__(self, work, case):
        self.dir = os.path.join(work, "registry")
        os.makedirs(os.path.join(self.dir, "storage"))
        # Its own address: its egress is a class of its own (links()).
        self.port = port_for(case, "registry")
        self.host = "%s:%d" % (REGISTRY_IP, self.port)
        self.access = os.path.join(self.dir, "access.log")
        cfg = os.path.join(self.dir, "config.yml")
        with open(cfg, "w") as f:
            f.write("version: 0.1\nlog:\n  level: error\nstorage:\n"
                    "  filesystem:\n    rootdirectory: %s\nhttp:\n"
                    "  addr: %s\n" % (os.path.join(self.dir, "storage"),
                                      self.host))
        self.proc = subprocess.Popen(["docker-registry", "serve", cfg],
                                     stdout=open(self.access, "wb"),
                                     stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL)
        wait_for(lambda: self._up(), 30, "docker-registry")

    def _up(self):
        try:
            return request(REGISTRY_IP, self.port, "GET", "/v2/")[0] == 200
        except OSError:
            return False

    def push_blob(self, repo, data):
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        st, h, _ = request(REGISTRY_IP, self.port, "POST",
                           "/v2/%s/blobs/uploads/" % repo)
        assert st == 202, st
        loc = urllib.parse.urlsplit(h["Location"])
        q = loc.query + ("&" if loc.query else "") + "digest=" + d
        st, _, _ = request(REGISTRY_IP, self.port, "PUT", loc.path + "?" + q,
                           headers={"Content-Type": "application/octet-stream",
                                    "Content-Length": str(len(data))},
                           body=data)
        assert st == 201, st
        return d

    def push_image(self, repo, tag, layers):
        """layers: bytes each (random, so incompressible and unique)."""
        cfg = json.dumps({"architecture": "amd64", "os": "linux",
                          "rootfs": {"type": "layers", "diff_ids": []}}
                         ).encode()
        desc = lambda mt, data, d: {"mediaType": mt, "size": len(data),  # noqa
                                    "digest": d}
        cd = self.push_blob(repo, cfg)
        lds = [self.push_blob(repo, l) for l in layers]
        man = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": desc("application/vnd.oci.image.config.v1+json", cfg,
                           cd),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar", l, d)
                       for l, d in zip(layers, lds)]}).encode()
        st, _, _ = request(REGISTRY_IP, self.port, "PUT",
                           "/v2/%s/manifests/%s" % (repo, tag), headers={
                               "Content-Type":
                               "application/vnd.oci.image.manifest.v1+json"},
                           body=man)
        assert st == 201, st
        return [cd] + lds

    def mark(self):
        with open(self.access, "rb") as f:
            return len(f.read().splitlines())

    def since(self, mark):
        """(GETs, bytes) of blobs and manifests since mark."""
        with open(self.access, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()[mark:]
        gets = size = 0
        for l in lines:
            m = ACCESS_RE.match(l)
            if m and m["m"] == "GET" and ("/blobs/" in m["u"] or
                                          "/manifests/" in m["u"]):
                gets += 1
                size += int(m["b"]) if m["b"].isdigit() else 0
        return gets, size

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


class Node:
    def __init__(self, binary, work, i, registry, fleet, members, peer_port,
                 token_file, fanout, case):
        self.dir = os.path.join(work, "node%d" % i)
        os.makedirs(self.dir)
        self.port = port_for(case, "node", i)
        self.peer_host = "127.0.0.%d" % (100 + i)
        self.log = os.path.join(self.dir, "pullproxy.log")
        argv = [binary, "serve", "--listen", "127.0.0.1:%d" % self.port,
                "--cache-dir", os.path.join(self.dir, "cache"),
                "--log", self.log, "--log-level", "debug",
                "--registry", "%s=http://%s" % (registry.host, registry.host)]
        if fleet:
            cfg = os.path.join(self.dir, "node.conf")
            # One line of the config holds 200 characters, about ten
            # static peers: the members are a name's A records instead,
            # as a headless Service's (fleet.sh gives this process a
            # private /etc/hosts where FLEET_NAME has them all).
            with open(cfg, "w") as f:
                f.write("[fleet]\npeers_dns = %s\npeers_port = %d\n"
                        "peer_listen = %s:%d\npeer_token_file = %s\n"
                        "fanout = %d\n" % (FLEET_NAME, peer_port,
                                            self.peer_host, peer_port,
                                            token_file, fanout))
            argv += ["--config", cfg]
        os.makedirs(os.path.join(self.dir, "cache"))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir,
                                                              "stderr"), "wb"))
        self.client_bytes = 0

    def lines(self):
        try:
            with open(self.log, "rb") as f:
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for l in text[:text.rfind("\n") + 1].splitlines():
            try:
                out.append(json.loads(l))
            except ValueError:
                pass
        return out

    def ready(self, members):
        ls = self.lines()
        if not any(l.get("msg") == "listening" for l in ls):
            return False
        return members == 0 or any(l.get("msg") == "fleet members" and
                                   l.get("members") == members for l in ls)

    def answered(self):
        """Body bytes of the blob GETs this node answered."""
        return sum(l.get("bytes", 0) for l in self.lines()
                   if l.get("msg") == "request" and "/blobs/" in
                   l.get("path", "") and l.get("method") == "GET" and
                   l.get("status") in (200, 206))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def pull(node, registry, repo, tag, digests):
    """As containerd: the tag, then the blobs, three at a time."""
    q = "?ns=" + registry.host
    st, _, body = request("127.0.0.1", node.port, "GET",
                          "/v2/%s/manifests/%s%s" % (repo, tag, q), headers={
                              "Accept":
                              "application/vnd.oci.image.manifest.v1+json"})
    assert st == 200, (node.port, st, body[:200])

    def blob(d):
        st, _, data = request("127.0.0.1", node.port, "GET",
                              "/v2/%s/blobs/%s%s" % (repo, d, q),
                              timeout=300)
        assert st == 200, (node.port, d, st, data[:200])
        assert "sha256:" + hashlib.sha256(data).hexdigest() == d
        return len(data)
    with ThreadPoolExecutor(3) as ex:
        node.client_bytes += sum(ex.map(blob, digests))
    return time.monotonic()


def run_case(args, work, case, name, fleet, fanout, layer_mib, nlayers,
             seed):
    base = os.path.join(work, name)
    os.makedirs(base)
    registry = Registry(base, case)
    try:
        rnd = random.Random(seed)
        layers = [rnd.randbytes(layer_mib * MiB) for _ in range(nlayers)]
        repo = "bench/%s" % name
        digests = registry.push_image(repo, "v1", layers)
        del layers
        hosts = ["127.0.0.%d" % (100 + i) for i in range(args.nodes)]
        peer_port = port_for(case, "peer")
        token = os.path.join(base, "peer-token")
        with open(token, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(token, 0o600)
        members = ["%s:%d" % (h, peer_port) for h in hosts]
        nodes = [Node(args.binary, base, i, registry, fleet, members,
                      peer_port, token, fanout, case)
                 for i in range(args.nodes)]
        try:
            want = args.nodes if fleet else 0
            for n in nodes:
                try:
                    wait_for(lambda n=n: n.ready(want), 60, "node %d" %
                             n.port)
                except SystemExit:
                    with open(os.path.join(n.dir, "stderr"), "rb") as f:
                        err = f.read()[-1000:].decode(errors="replace")
                    raise SystemExit("node %s:%d not ready (exit %s): %s %s"
                                     % (n.peer_host, n.port, n.proc.poll(),
                                        err, n.lines()[-3:]))
            mark = registry.mark()
            t0 = time.monotonic()
            with ThreadPoolExecutor(len(nodes)) as ex:
                ends = list(ex.map(lambda n: pull(n, registry, repo, "v1",
                                                  digests), nodes))
            wall = max(ends) - t0
            gets, size = registry.since(mark)
            egress = [max(0, n.answered() - n.client_bytes) for n in nodes]
            busy = sum(1 for n in nodes for l in n.lines()
                       if l.get("msg") == "request" and l.get("status") == 503)
            redirects = sum(1 for n in nodes for l in n.lines()
                            if l.get("msg") == "request" and
                            l.get("status") == 307)
        finally:
            for n in nodes:
                n.stop()
    finally:
        registry.stop()
    image = (nlayers * layer_mib * MiB)
    return {"name": name, "fleet": fleet, "fanout": fanout,
            "nodes": args.nodes, "image_mib": image / MiB,
            "blobs": len(digests), "registry_gets": gets,
            "registry_mib": size / MiB, "wall_s": wall,
            "egress_max_mib": max(egress) / MiB,
            "egress_mean_mib": sum(egress) / len(egress) / MiB,
            "egress_max_copies": max(egress) / image,
            "busy": busy, "redirects": redirects}


def report(rows, args, elapsed):
    out = []
    w = out.append
    w("pullproxy fleet benchmark (bench/fleet.sh), %s" %
      time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    w("%d pullproxy processes on one %d-cpu machine, one docker-registry, "
      "loopback; every node pulls the same cold image at once (the tag, "
      "then its blobs three at a time, sha256-checked)." % (
          args.nodes, os.cpu_count()))
    if args.link_mbit > 0:
        w("Links (tc htb on lo, by source address): each node's peer "
          "traffic %d Mbit/s, the registry's egress %d Mbit/s for "
          "everyone." % (args.link_mbit, args.registry_mbit))
    else:
        w("Links: loopback, unlimited (--link-mbit 0).")
    w("")
    w("| run | K | image | registry GETs | registry MiB | time to last "
      "node | peer egress max | mean | 503 busy / 307 (all nodes) |")
    w("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        w("| %s | %s | %d x %.0f MiB | %d | %.0f | %.2f s | %.0f MiB (%.1f "
          "copies) | %.0f MiB | %d / %d |" % (
              r["name"], r["fanout"] if r["fleet"] else "-", r["blobs"] - 1,
              r["image_mib"] / (r["blobs"] - 1), r["registry_gets"],
              r["registry_mib"], r["wall_s"], r["egress_max_mib"],
              r["egress_max_copies"], r["egress_mean_mib"], r["busy"],
              r["redirects"]))
    by = {r["name"]: r for r in rows}
    w("")
    if "no-fleet" in by and "fleet" in by:
        a, b = by["no-fleet"], by["fleet"]
        w("Ratios, fleet against no fleet: registry GETs %.1fx fewer, "
          "registry bytes %.1fx fewer, time to the last node %.2fx." % (
              a["registry_gets"] / max(1, b["registry_gets"]),
              a["registry_mib"] / max(1e-9, b["registry_mib"]),
              b["wall_s"] / a["wall_s"]))
    layer = [r for r in rows if r["name"].startswith("layer-")]
    if layer:
        w("One layer to every node, the busiest node sent: %s (of %d "
          "nodes; the mean is (N-1)/N of a copy)." % (", ".join(
              "%.1f copies with K=%d" % (r["egress_max_copies"], r["fanout"])
              for r in layer), args.nodes))
    w("")
    if args.link_mbit > 0:
        mbs = args.registry_mbit / 8.0
        cp = subprocess.run(
            [sys.executable, os.path.join(os.path.dirname(__file__),
                                          "fleet_model.py"),
             "--nic-gbit", str(args.link_mbit / 1000.0),
             "--registry-stream-mbs", str(mbs), "--registry-total-mbs",
             str(mbs), "--nodes", str(args.nodes), "--sizes-gib",
             str(args.big_mib / 1024.0), "--fanout", "2,4,16",
             "--strategies", "whole,owner-stream"],
            stdout=subprocess.PIPE, text=True, timeout=60)
        w("The model (bench/fleet_model.py) for the one-layer runs, the "
          "same links (what is built is owner-stream: the owner streams to "
          "its first K while it fetches, holders serve whole blobs):")
        w("")
        w("```")
        w("\n".join(l for l in cp.stdout.splitlines()
                    if l.strip() and "Kraken" not in l and "K=" not in l))
        w("```")
        w("")
    w("What the links do not show: this is one 2-cpu machine, so the "
      "processes also share the cpus, and the registry, the nodes and the "
      "clients all run here; the model has no cpu, no disk, no TCP slow "
      "start. Registry load (GETs, bytes) and how peer egress is spread "
      "are what the design decides and do not depend on either.")
    w("Run took %.0f s." % elapsed)
    return "\n".join(out) + "\n"


def private_hosts(args):
    """FLEET_NAME's A records: every node's peer address, in an /etc/hosts
    of this mount namespace's own (fleet.sh runs this under unshare)."""
    path = os.path.join(args.work, "hosts")
    with open(path, "w") as f:
        f.write("127.0.0.1 localhost\n")
        for i in range(args.nodes):
            f.write("127.0.0.%d %s\n" % (100 + i, FLEET_NAME))
    subprocess.run(["mount", "--bind", path, "/etc/hosts"], check=True)
    addrs = {a[4][0] for a in socket.getaddrinfo(FLEET_NAME, 1,
                                                 socket.AF_INET)}
    if len(addrs) != args.nodes:
        raise SystemExit("%s resolves to %d addresses, not %d" % (
            FLEET_NAME, len(addrs), args.nodes))


def links(args):
    """Each node's NIC and the registry's egress as HTB classes on lo, by
    source address (fleet.sh gives this process a network namespace of
    its own: lo is ours). The containerd-side listeners and the clients
    (127.0.0.1) are not limited."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if args.link_mbit <= 0:
        return
    tc = lambda *a: subprocess.run(["tc"] + list(a), check=True,  # noqa
                                   stderr=subprocess.DEVNULL)
    tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb",
       "default", "9999", "r2q", "1000")
    tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:9999",
       "htb", "rate", "40gbit")
    limits = [(REGISTRY_IP, args.registry_mbit)] + [
        ("127.0.0.%d" % (100 + i), args.link_mbit) for i in range(args.nodes)]
    for n, (ip, mbit) in enumerate(limits, start=10):
        tc("class", "add", "dev", "lo", "parent", "1:", "classid",
           "1:%d" % n, "htb", "rate", "%dmbit" % mbit, "ceil",
           "%dmbit" % mbit)
        tc("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip",
           "prio", "1", "u32", "match", "ip", "src", ip + "/32", "flowid",
           "1:%d" % n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--layer-mib", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--big-mib", type=int, default=32)
    ap.add_argument("--link-mbit", type=int, default=400,
                    help="each node's NIC, each way (0: loopback's)")
    ap.add_argument("--registry-mbit", type=int, default=800,
                    help="the registry's egress for everyone")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    private_hosts(args)
    links(args)
    t0 = time.monotonic()
    rows = []
    cases = [("no-fleet", False, 4, args.layer_mib, args.layers, 1),
             ("fleet", True, 4, args.layer_mib, args.layers, 2),
             ("layer-k2", True, 2, args.big_mib, 1, 3),
             ("layer-k4", True, 4, args.big_mib, 1, 5),
             ("layer-k16", True, 16, args.big_mib, 1, 4)]
    for case, (name, fleet, k, mib, n, seed) in enumerate(cases):
        log("%s: %d nodes, %d x %d MiB, K=%d" % (name, args.nodes, n, mib, k))
        rows.append(run_case(args, args.work, case, name, fleet, k, mib, n,
                             seed))
        log(json.dumps(rows[-1]))
    text = report(rows, args, time.monotonic() - t0)
    with open(args.out, "w") as f:
        f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
