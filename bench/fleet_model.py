#!/usr/bin/python3
"""A fluid, event-driven model of one layer spreading through a fleet.

N nodes want the same blob of S bytes at t = 0 (a DaemonSet rollout, a
scale-out). One node, the blob's owner by rendezvous hashing, fetches it
from the registry once; every other node asks the owner, which serves at
most K peers at once and points the rest (a redirect) at peers that hold
the blob. Transfers are fluid flows: a sender's NIC is shared evenly by
its flows, a receiver has one flow in; an event is a flow ending (or the
owner's registry fetch ending), after which free senders take waiters,
first come first served, finished holders before nodes still fetching.

Strategies (docs/fleet.md):
  whole         a node serves only the whole blob, verified: the owner
                once its registry fetch ended, the others once theirs did
  owner-stream  the owner also streams to its first K while it fetches
                (as it already streams to its local waiters); other
                nodes serve only the whole, verified blob
  stream        every node serves while still receiving (a pipelined
                tree): no flow is faster than its sender's own inflow

Baseline: no fleet, every node from the registry; the registry's egress
is its aggregate cap (ACR's SKU page used to list Premium's download
bandwidth as 100 MBps), each stream at most the per-stream rate.

Figures are a model's, not measurements: no TCP slow start, no disk, no
latency (a redirect and a first byte cost about a millisecond in a
zone); they say what the arithmetic allows. Python 3 standard library.
"""
import argparse
import math

GB = 1e9
GiB = float(1 << 30)


class Node:
    __slots__ = ("have", "rate_in", "sender", "out", "done", "start",
                 "egress", "depth")

    def __init__(self):
        self.have = 0.0        # bytes received
        self.rate_in = 0.0     # bytes/s, now
        self.sender = None     # node index, -1: the registry
        self.out = []          # receivers of the flows out, now
        self.done = None       # time the whole blob was here
        self.start = None      # time its flow in began
        self.egress = 0.0      # bytes sent to peers
        self.depth = 0         # hops from the registry


def simulate(n, size, k, nic, reg_stream, strategy, flow_cap=0.0):
    """One layer to n nodes. Returns a dict of figures."""
    nodes = [Node() for _ in range(n)]
    owner = nodes[0]
    owner.sender, owner.start, owner.depth = -1, 0.0, 1
    waiting = list(range(1, n))
    waiting.reverse()          # pop() takes the first come
    order = [0]                # nodes by the start of their flow in
    t = 0.0
    remaining = n

    def can_serve(i):
        nd = nodes[i]
        if len(nd.out) >= k:
            return False
        if nd.done is not None:
            return True
        if strategy == "stream":
            return nd.start is not None
        return strategy == "owner-stream" and i == 0

    def assign():
        # Holders first (they send at full rate), then nodes still
        # receiving, earliest first; again while a pass added senders
        # (a node that just began receiving may serve in "stream").
        added = True
        while added and waiting:
            added = False
            cands = [i for i in order if can_serve(i)]
            cands.sort(key=lambda i: (nodes[i].done is None,
                                      nodes[i].start))
            for i in cands:
                while waiting and len(nodes[i].out) < k:
                    j = waiting.pop()
                    r = nodes[j]
                    r.sender, r.start = i, t
                    r.depth = nodes[i].depth + 1
                    nodes[i].out.append(j)
                    order.append(j)
                    added = True
                if not waiting:
                    break

    def rates():
        # Senders before their receivers: order is by flow start.
        owner.rate_in = reg_stream if owner.done is None else 0.0
        for i in order[1:]:
            r = nodes[i]
            if r.done is not None:
                r.rate_in = 0.0
                continue
            s = nodes[r.sender]
            rate = nic / len(s.out)
            if flow_cap:
                rate = min(rate, flow_cap)
            if s.done is None:
                rate = min(rate, s.rate_in)
            r.rate_in = min(rate, nic)

    assign()
    rates()
    while remaining:
        dt = math.inf
        for i in order:
            nd = nodes[i]
            if nd.done is None and nd.rate_in > 0:
                dt = min(dt, (size - nd.have) / nd.rate_in)
        assert dt < math.inf, "stalled"
        t += dt
        for i in order:
            nd = nodes[i]
            if nd.done is not None or nd.rate_in == 0:
                continue
            got = nd.rate_in * dt
            nd.have += got
            if nd.sender >= 0:
                nodes[nd.sender].egress += got
            if nd.have >= size * (1 - 1e-12):
                nd.have, nd.done = size, t
                remaining -= 1
                if nd.sender >= 0:
                    nodes[nd.sender].out.remove(i)
        assign()
        rates()

    times = sorted(nd.done for nd in nodes)
    egress = [nd.egress for nd in nodes]
    return {
        "rounds": max(nd.depth for nd in nodes),
        "p50_s": times[len(times) // 2],
        "all_s": times[-1],
        "egress_max": max(egress),
        "egress_mean": sum(egress) / n,
        "registry_bytes": size,
    }


def no_fleet(n, size, reg_stream, reg_total):
    """Every node from the registry: its total egress shared by all."""
    rate = min(reg_stream, reg_total / n)
    return {"all_s": size / rate, "registry_bytes": n * size}


def fmt_bytes(b):
    return "%.1f GiB" % (b / GiB) if b < 1024 * GiB else \
        "%.2f TiB" % (b / GiB / 1024)


def fmt_s(s):
    if s < 120:
        return "%.1f s" % s
    if s < 7200:
        return "%.1f min" % (s / 60)
    return "%.1f h" % (s / 3600)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nic-gbit", type=float, default=10.0,
                    help="each node's NIC, each way (default 10 Gbit/s)")
    ap.add_argument("--registry-stream-mbs", type=float, default=125.0,
                    help="one stream from the registry, MB/s (default 125)")
    ap.add_argument("--registry-total-mbs", type=float, default=100.0,
                    help="the registry's egress for everyone, MB/s "
                    "(default 100: ACR Premium as its SKU page listed it)")
    ap.add_argument("--flow-cap-gbit", type=float, default=0.0,
                    help="most one peer-to-peer stream reaches, Gbit/s "
                    "(default 0: the NIC's share)")
    ap.add_argument("--nodes", default="16,500,5000")
    ap.add_argument("--sizes-gib", default="1,5")
    ap.add_argument("--fanout", default="2,4,8")
    ap.add_argument("--strategies", default="whole,owner-stream,stream")
    a = ap.parse_args()

    nic = a.nic_gbit * 1e9 / 8
    reg_stream = a.registry_stream_mbs * 1e6
    reg_total = a.registry_total_mbs * 1e6
    flow_cap = a.flow_cap_gbit * 1e9 / 8
    print("NIC %g Gbit/s per node each way; registry %g MB/s per stream, "
          "%g MB/s in all" % (a.nic_gbit, a.registry_stream_mbs,
                              a.registry_total_mbs) +
          ("; a peer stream at most %g Gbit/s" % a.flow_cap_gbit
           if flow_cap else ""))
    print()
    hdr = "%-6s %-6s %-13s %2s %6s %9s %9s %11s %11s" % (
        "N", "S", "strategy", "K", "rounds", "p50", "all", "egress max",
        "egress mean")
    print(hdr)
    print("-" * len(hdr))
    for n in [int(x) for x in a.nodes.split(",")]:
        for s_gib in [float(x) for x in a.sizes_gib.split(",")]:
            size = s_gib * GiB
            base = no_fleet(n, size, reg_stream, reg_total)
            print("%-6d %-6s %-13s %2s %6s %9s %9s %11s %11s" % (
                n, "%g GiB" % s_gib, "no fleet", "-", "-", "-",
                fmt_s(base["all_s"]), "-", "-") +
                "   registry sends " + fmt_bytes(base["registry_bytes"]))
            for strategy in a.strategies.split(","):
                for k in [int(x) for x in a.fanout.split(",")]:
                    r = simulate(n, size, k, nic, reg_stream, strategy,
                                 flow_cap)
                    print("%-6d %-6s %-13s %2d %6d %9s %9s %11s %11s" % (
                        n, "%g GiB" % s_gib, strategy, k, r["rounds"],
                        fmt_s(r["p50_s"]), fmt_s(r["all_s"]),
                        fmt_bytes(r["egress_max"]),
                        fmt_bytes(r["egress_mean"])))
            print()

    # Kraken's published test: a 3 GB image (2 layers) to 2,600 hosts,
    # every agent limited to 300 MB/s: p50 10 s, p99 18 s, p99.9 22 s.
    print("Kraken's published test in this model: 3 GB to 2,600 nodes, "
          "300 MB/s per node")
    print("(Kraken: p50 10 s, p99 18 s, p99.9 22 s, with 5 origins "
          "seeding; here one owner, its registry stream at 300 MB/s)")
    for strategy in a.strategies.split(","):
        for k in [int(x) for x in a.fanout.split(",")]:
            r = simulate(2600, 3 * GB, k, 300e6, 300e6, strategy)
            print("  %-13s K=%d: rounds %2d, p50 %s, all %s, egress max %s" % (
                strategy, k, r["rounds"], fmt_s(r["p50_s"]),
                fmt_s(r["all_s"]), fmt_bytes(r["egress_max"])))


if __name__ == "__main__":
    main()
