"""Fleet mode for real: several pullproxy processes on one machine, each
with its own cache, its own containerd listener on 127.0.0.1 and its own
peer address 127.0.0.N (one static `peers` list), in front of the real
docker-registry, whose access log counts what reached it."""

import http.client
import http.server
import json
import os
import random
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import (MiB, PULLPROXY_BIN, PullProxy, _big_blob,  # noqa: E402
                      build_image, http_request, push_image, run,
                      sha256_digest, wait_for)
from upstream_proxy import UpstreamProxy  # noqa: E402

TOKEN = "fleet-test-token-0123456789"


def free_peer_port(hosts):
    """A port free on every one of hosts."""
    for _ in range(50):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        ok = True
        for h in hosts:
            t = socket.socket()
            try:
                t.bind((h, port))
            except OSError:
                ok = False
            finally:
                t.close()
        if ok:
            return port
    raise AssertionError("no port free on %s" % hosts)


class Fleet:
    """n nodes 127.0.0.(base+i), peers listed statically (extra: members
    that are not pullproxies of this fleet, such as a fake peer)."""

    def __init__(self, tmp_path, registry_url, registry_host, n, base=20,
                 fanout=4, extra=(), log_level="debug", port=None):
        self.tmp = tmp_path
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.hosts = ["127.0.0.%d" % (base + i) for i in range(n)]
        self.port = port or free_peer_port(self.hosts)
        self.token_file = tmp_path / "peer-token"
        self.token_file.write_text(TOKEN + "\n")
        self.token_file.chmod(0o600)
        self.registry = (registry_host, registry_url)
        self.fanout = fanout
        self.extra = list(extra)
        self.log_level = log_level
        self.nodes = [None] * n

    def members(self, hosts=None):
        return ["%s:%d" % (h, self.port) for h in (hosts or self.hosts)] + \
            self.extra

    def node(self, i, members=None, start=True):
        host = self.hosts[i]
        cfg = self.tmp / ("node%d.conf" % i)
        cfg.write_text(
            "[fleet]\n"
            "peers = %s\n"
            "peer_listen = %s:%d\n"
            "peer_token_file = %s\n"
            "fanout = %d\n"
            "resolve_s = 1\n" % (", ".join(members or self.members()), host,
                                 self.port, self.token_file, self.fanout))
        pp = PullProxy(self.tmp / ("node%d" % i), [self.registry],
                       ["--config", str(cfg)], log_level=self.log_level)
        pp.peer_host = host
        pp.peer_id = "%s:%d" % (host, self.port)
        self.nodes[i] = pp
        if start:
            pp.start()
        return pp

    def start(self):
        for i in range(len(self.hosts)):
            self.node(i)
        # Every node sees every member before the test asks anything.
        for pp in self.nodes:
            wait_for(lambda pp=pp: self.sees(pp, len(self.members())), 20,
                     "fleet members on %s" % pp.peer_id)
        return self

    @staticmethod
    def sees(pp, n):
        return any(l.get("members") == n for l in pp.logs("fleet members"))

    def stop(self):
        problems = []
        for pp in self.nodes:
            if pp is None or pp.proc is None or pp.proc.poll() is not None:
                continue
            rc = pp.stop(timeout=15)
            if rc != 0:
                problems.append("%s exited %s: %s" % (pp.peer_id, rc,
                                                      pp.stderr()[-2000:]))
        assert not problems, "\n".join(problems)


@pytest.fixture
def fleet_factory(tmp_path, registry):
    made = []

    def factory(n, **kw):
        f = Fleet(tmp_path / ("fleet%d" % len(made)), registry.url,
                  registry.host, n, **kw)
        made.append(f)
        return f
    yield factory
    for f in made:
        f.stop()


def image(tmp_path, registry, repo, nlayers=3, size=200 * 1024, seed=7):
    rnd = random.Random(seed)
    img = build_image(tmp_path / repo.replace("/", "_"), repo, "v1", [
        {"layer%d.bin" % i: rnd.randbytes(size)} for i in range(nlayers)])
    push_image(img, registry)
    return img


def pull(pp, img, ns):
    """What containerd does for an image: the tag, then every blob."""
    q = "?ns=" + ns
    r = pp.get("/v2/%s/manifests/%s%s" % (img.repo, img.tag, q), headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=60)
    assert r.status == 200, (pp.peer_id, r.status, r.body[:300])
    assert sha256_digest(r.body) == img.digest
    for d in [img.config_digest] + img.layers:
        r = pp.get("/v2/%s/blobs/%s%s" % (img.repo, d, q), timeout=120)
        assert r.status == 200, (pp.peer_id, d, r.status, r.body[:300])
        assert sha256_digest(r.body) == d, (pp.peer_id, d)
    return True


def blob_gets(reqs, repo):
    """GETs per blob digest of repo."""
    per = {}
    for rq in reqs:
        path = urllib.parse.urlsplit(rq.uri).path
        if path.startswith("/v2/%s/blobs/" % repo) and rq.method == "GET":
            d = path.rsplit("/", 1)[1]
            per[d] = per.get(d, 0) + 1
    return per


def registry_gets(registry, mark, img):
    """GETs per blob digest, and requests for the tag, since mark, once
    every blob of img has been asked for (or 10 s have passed)."""
    want = {img.config_digest, *img.layers}
    reqs = registry.requests_since(
        mark, lambda reqs: want <= set(blob_gets(reqs, img.repo)))
    tag = [rq for rq in reqs if urllib.parse.urlsplit(rq.uri).path ==
           "/v2/%s/manifests/%s" % (img.repo, img.tag)]
    return blob_gets(reqs, img.repo), len(tag)


def told(fleet, digests):
    """What the nodes logged of these digests: for a failure's message."""
    return {pp.peer_id: [l for l in pp.log_lines()
                         if any(d in json.dumps(l) for d in digests)][:20]
            for pp in fleet.nodes}


def cache_verify(pp):
    cp = subprocess.run([PULLPROXY_BIN, "cache", "verify", "--cache-dir",
                         str(pp.cache_dir)], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, timeout=120)
    return cp


def test_cold_burst_one_registry_get_per_blob(tmp_path, registry,
                                              fleet_factory):
    img = image(tmp_path, registry, "fleet/burst")
    fleet = fleet_factory(4).start()
    mark = registry.mark()
    with ThreadPoolExecutor(len(fleet.nodes)) as ex:
        done = list(ex.map(lambda pp: pull(pp, img, registry.host),
                           fleet.nodes))
    assert done == [True] * 4
    per, tag = registry_gets(registry, mark, img)
    # One GET per blob, and one request for the tag, for the whole fleet.
    want = {d: 1 for d in [img.config_digest] + img.layers}
    assert per == want, (per, told(fleet, [d for d in want if d not in per]))
    assert tag == 1, registry.requests_since(mark)
    # Peers were asked: the nodes answered more than their own clients'
    # 4 x 5 requests (the others' on their peer listeners).
    answered = sum(len(pp.requests()) for pp in fleet.nodes)
    assert answered > 4 * (2 + len(img.layers)), answered
    for pp in fleet.nodes:
        cp = cache_verify(pp)
        assert cp.returncode == 0, (pp.peer_id, cp.stdout, cp.stderr)


def test_peer_request_without_token_is_refused(tmp_path, registry,
                                               fleet_factory):
    img = image(tmp_path, registry, "fleet/token", nlayers=1)
    fleet = fleet_factory(2, base=30).start()
    pp = fleet.nodes[0]
    path = "/v2/%s/blobs/%s?ns=%s" % (img.repo, img.layers[0], registry.host)
    conn_host, port = pp.peer_host, fleet.port
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = http_request(port, "GET", path, headers=headers, host=conn_host)
        assert r.status == 401, (headers, r.status)
    r = http_request(port, "GET", path, headers={
        "Authorization": "Bearer " + TOKEN}, host=conn_host)
    assert r.status == 200 and sha256_digest(r.body) == img.layers[0]
    # Only the configured registries: another ns is never contacted.
    r = http_request(port, "GET", "/v2/%s/blobs/%s?ns=elsewhere.example" % (
        img.repo, img.layers[0]), headers={"Authorization": "Bearer " + TOKEN},
        host=conn_host)
    assert r.status == 404, r.status
    # Only pulls: nothing else is reachable from peers but the probes.
    r = http_request(port, "GET", "/metrics", headers={
        "Authorization": "Bearer " + TOKEN}, host=conn_host)
    assert r.status == 404, r.status


class FakePeer:
    """A member of the peers list that is no pullproxy: it answers peer
    requests with the registry's bytes, one of them flipped in blobs."""

    def __init__(self, host, port, registry_port):
        self.seen = []      # (path, Authorization, Pullproxy-Peer)
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.seen.append((self.path, self.headers.get("Authorization"),
                                  self.headers.get("Pullproxy-Peer")))
                path = urllib.parse.urlsplit(self.path).path
                r = http_request(registry_port, "GET", path, headers={
                    "Accept": self.headers.get("Accept", "*/*")})
                body = r.body
                if "/blobs/" in path and r.status == 200:
                    body = bytes([body[0] ^ 0xff]) + body[1:]
                self.send_response(r.status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", r.header("Content-Type") or
                                 "application/octet-stream")
                self.end_headers()
                self.wfile.write(body)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True
        self.server = Server((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def owners(pp, registry, keys):
    """The owner of each key as `pullproxy fleet` says with pp's [fleet]."""
    cfg = [a for a in pp.argv if a.endswith(".conf")][0]
    conf = pp.workdir / "fleetcmd.conf"
    conf.write_text(open(cfg).read() + "[registry %s]\nurl = %s\n" % (
        registry.host, registry.url))
    out = run([PULLPROXY_BIN, "fleet", "--config", str(conf), "--for", "3"]
              + list(keys), timeout=30).stdout
    got = {}
    for line in out.splitlines():
        obj = json.loads(line)
        got.update(obj.get("owners", {}))
    assert set(got) == set(keys), out
    return {k: pp.peer_id if v == "self" else v for k, v in got.items()}


def get_blob(pp, img, digest, ns):
    """(status, digest of the bytes) of one blob GET; a cut body: (0, None)."""
    try:
        r = pp.get("/v2/%s/blobs/%s?ns=%s" % (img.repo, digest, ns),
                   timeout=60)
    except (OSError, http.client.HTTPException):
        return 0, None
    return r.status, sha256_digest(r.body)


def test_peer_sending_wrong_bytes_is_detected_and_not_cached(
        tmp_path, registry, fleet_factory):
    img = image(tmp_path, registry, "fleet/liar", nlayers=8, size=64 * 1024,
                seed=11)
    fake_id = "127.0.0.41:%d"
    fleet = fleet_factory(1, base=40)
    fake_id = fake_id % fleet.port
    fleet.extra = [fake_id]
    fake = FakePeer("127.0.0.41", fleet.port, registry.port)
    try:
        fleet.start()
        pp = fleet.nodes[0]
        own = owners(pp, registry, img.layers)
        lied = [d for d in img.layers if own[d] == fake_id]
        assert lied, own        # 8 layers, 2 members: some are the fake's
        d = lied[0]
        mark = registry.mark()
        status, got = get_blob(pp, img, d, registry.host)
        # The fake was asked as a peer: the peer token, this node's
        # identity, never the registry's credentials.
        asked = [s for s in fake.seen if d in s[0]]
        assert asked and asked[0][1] == "Bearer " + TOKEN, fake.seen
        assert asked[0][2] == pp.peer_id
        # The wrong bytes reached the client as an error, never as the blob.
        assert got != d and status != 200 or got is None, (status, got)
        assert pp.logs("digest mismatch") or any(
            l.get("cause") == "digest_mismatch" for l in pp.log_lines())
        # Nothing was cached: the next GET is fetched again, from the
        # registry this time (the liar's circuit is open), and is right.
        status, got = get_blob(pp, img, d, registry.host)
        assert (status, got) == (200, d)
        assert len([s for s in fake.seen if d in s[0]]) == 1, fake.seen
        def gets(reqs):
            return [r for r in reqs if r.method == "GET" and d in r.uri and
                    r.user_agent.startswith("pullproxy/")]
        assert len(gets(registry.requests_since(mark, gets))) == 1, \
            registry.requests_since(mark)
        cp = cache_verify(pp)
        assert cp.returncode == 0, (cp.stdout, cp.stderr)
    finally:
        fake.close()


def intervals(pp, digest, status=200):
    """(start, end) in ms of pp's answers of status for digest."""
    out = []
    for l in pp.requests():
        if digest in l["route"] and l.get("status") == status and \
                l.get("method") == "GET":
            t = time.mktime(time.strptime(l["time"][:19], "%Y-%m-%dT%H:%M:%S"))
            end = t * 1000 + int(l["time"][20:23])
            out.append((end - l["ms"], end))
    return out


def most_at_once(spans, slack_ms=2):
    """The most intervals overlapping at one instant (touching ones, within
    the log's millisecond rounding, do not)."""
    best = 0
    for s, _ in spans:
        best = max(best, sum(1 for a, b in spans if a <= s < b - slack_ms))
    return best


def test_fanout_owner_serves_at_most_k_peers_and_redirects_to_holders(
        tmp_path, registry, fleet_factory):
    blob = _big_blob(registry, "fleet/fan", 8 * MiB, seed=5)
    slow = UpstreamProxy(registry.port, rate=8 * MiB)   # about a second
    fleet = fleet_factory(6, base=50, fanout=1)
    fleet.registry = (registry.host, slow.url)
    stalled = None
    try:
        fleet.start()
        own = owners(fleet.nodes[0], registry, [blob.digest])[blob.digest]
        owner = [pp for pp in fleet.nodes if pp.peer_id == own][0]
        first, idle, *rest = [pp for pp in fleet.nodes if pp.peer_id != own]
        # A cold burst from two nodes, K = 1: the owner serves one while it
        # fetches, the other is told to come back (503 Pullproxy-Busy), and
        # both get the blob, fetched from the registry once.
        with ThreadPoolExecutor(2) as ex:
            got = list(ex.map(lambda pp: get_blob(pp, blob, blob.digest,
                                                  registry.host),
                              [first, rest[0]]))
        assert got == [(200, blob.digest)] * 2
        assert slow.count("GET", blob.digest) == 1
        assert intervals(owner, blob.digest, 503), owner.requests()
        # A peer that reads nothing holds the owner's only slot ...
        stalled = socket.create_connection((owner.peer_host, fleet.port))
        stalled.sendall(("GET /v2/%s/blobs/%s?ns=%s HTTP/1.1\r\nHost: x\r\n"
                         "Authorization: Bearer %s\r\nPullproxy-Peer: %s\r\n"
                         "\r\n" % (blob.repo, blob.digest, registry.host, TOKEN,
                                   idle.peer_id)).encode())
        assert stalled.recv(12) == b"HTTP/1.1 200"
        # ... so the others are sent (307) to the holders, the two nodes
        # that got the whole blob from it, which serve them.
        with ThreadPoolExecutor(len(rest) - 1) as ex:
            got = list(ex.map(lambda pp: get_blob(pp, blob, blob.digest,
                                                  registry.host), rest[1:]))
        assert got == [(200, blob.digest)] * (len(rest) - 1)
        assert slow.count("GET", blob.digest) == 1
        assert len(intervals(owner, blob.digest, 307)) >= len(rest) - 1
        holders = [first, rest[0]]
        assert sum(len(intervals(pp, blob.digest)) - 1 for pp in holders) \
            >= len(rest) - 1
        # The owner never sent the blob to more than K = 1 peer at once.
        stalled.close()
        stalled = None
        wait_for(lambda: len(intervals(owner, blob.digest)) == 3, 10,
                 "the stalled peer's request to end")
        assert most_at_once(intervals(owner, blob.digest)) == 1
        for pp in fleet.nodes:
            cp = cache_verify(pp)
            assert cp.returncode == 0, (pp.peer_id, cp.stdout, cp.stderr)
    finally:
        if stalled is not None:
            stalled.close()
        slow.close()


def test_containerd_pulls_through_one_node_while_blob_owners_are_others(
        tmp_path, registry, fleet_factory, containerd):
    img = image(tmp_path, registry, "fleet/ctr", nlayers=6, size=64 * 1024,
                seed=21)
    fleet = fleet_factory(3, base=60).start()
    node = fleet.nodes[0]
    own = owners(node, registry, [img.config_digest] + img.layers)
    elsewhere = [d for d, o in own.items() if o != node.peer_id]
    assert elsewhere, own       # 7 blobs, 3 members
    d = tmp_path / "hosts" / registry.host
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(
        'server = "%s"\n\n[host."http://127.0.0.1:%d"]\n'
        '  capabilities = ["pull", "resolve"]\n' % (registry.url, node.port))
    mark = registry.mark()
    ref = "%s/%s" % (registry.host, img.ref)
    cp = containerd.ctr("images", "pull", "--plain-http", "--hosts-dir",
                        str(tmp_path / "hosts"), "--snapshotter", "native",
                        ref, check=False)
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    assert img.digest in containerd.ctr("images", "ls").stdout
    seen = registry.requests_since(mark, lambda reqs: set(img.blobs) <= {
        d for d in img.blobs for r in reqs if r.method == "GET" and d in r.uri})
    # containerd never fell back to the registry, and the blobs owned by
    # the other nodes reached the registry from them, once each: the
    # node pulled through asked their owners, which fetched them.
    assert all(r.user_agent.startswith("pullproxy/") for r in seen), seen
    for dg in img.blobs:
        gets = [r for r in seen if r.method == "GET" and dg in r.uri]
        assert len(gets) == 1, (dg, gets)
    for dg in elsewhere:
        owner = [pp for pp in fleet.nodes if pp.peer_id == own[dg]][0]
        def served(lines, dg=dg):
            return [l for l in lines if dg in l["route"] and l["status"] == 200]
        assert served(owner.requests_when(served)), (dg, owner.peer_id)


def test_owner_killed_mid_transfer_every_node_completes(
        tmp_path, registry, fleet_factory):
    blob = _big_blob(registry, "fleet/kill", 24 * MiB, seed=9)
    slow = UpstreamProxy(registry.port, rate=6 * MiB)   # about 4 s
    fleet = fleet_factory(4, base=70)
    fleet.registry = (registry.host, slow.url)
    try:
        fleet.start()
        own = owners(fleet.nodes[0], registry, [blob.digest])[blob.digest]
        owner = [pp for pp in fleet.nodes if pp.peer_id == own][0]
        askers = [pp for pp in fleet.nodes if pp is not owner]
        with ThreadPoolExecutor(len(askers)) as ex:
            futures = [ex.submit(get_blob, pp, blob, blob.digest,
                                 registry.host) for pp in askers]
            # The owner streams what it fetches to the askers: kill it
            # once its download is under way.
            wait_for(lambda: slow.count("GET", blob.digest) >= 1, 20,
                     "the owner's registry fetch")
            time.sleep(1)
            owner.proc.kill()
            owner.proc.wait(10)
            got = [f.result(timeout=120) for f in futures]
        assert got == [(200, blob.digest)] * len(askers)
        for pp in askers:
            cp = cache_verify(pp)
            assert cp.returncode == 0, (pp.peer_id, cp.stdout, cp.stderr)
            assert pp.proc.poll() is None
        # Cut off, they resumed or went on (the next peer, the registry).
        assert any(pp.logs("mirror failed") or [
            l for l in pp.log_lines() if l.get("served") == "resumed"]
            for pp in askers)
    finally:
        slow.close()


def test_membership_change_moves_only_its_share_of_keys(
        tmp_path, registry, fleet_factory):
    img = image(tmp_path, registry, "fleet/members", nlayers=24,
                size=8 * 1024, seed=31)
    keys = [img.config_digest] + img.layers
    fleet = fleet_factory(4, base=80)
    old = fleet.hosts[:3]
    for i in range(3):
        fleet.node(i, members=fleet.members(old))
    for pp in fleet.nodes[:3]:
        wait_for(lambda pp=pp: fleet.sees(pp, 3), 20, "3 members")
    before = owners(fleet.nodes[0], registry, keys)
    with ThreadPoolExecutor(3) as ex:
        assert list(ex.map(lambda pp: pull(pp, img, registry.host),
                           fleet.nodes[:3])) == [True] * 3
    # Node 2 leaves, node 3 joins: the static list, and a restart.
    new = [fleet.hosts[0], fleet.hosts[1], fleet.hosts[3]]
    for pp in fleet.nodes[:3]:
        assert pp.stop() == 0
    for i in (0, 1, 3):
        fleet.node(i, members=fleet.members(new))
    for i in (0, 1, 3):
        wait_for(lambda pp=fleet.nodes[i]: fleet.sees(pp, 3), 20, "3 members")
    after = owners(fleet.nodes[3], registry, keys)
    gone, joined = fleet.nodes[2].peer_id, fleet.nodes[3].peer_id
    # Keys of nodes that stayed stay with them, or go to the new node;
    # the removed node's keys go to the others.
    for k in keys:
        if before[k] != gone:
            assert after[k] in (before[k], joined), (k, before[k], after[k])
        else:
            assert after[k] != gone
    share = {k for k in keys if after[k] == joined}
    assert share, after     # 25 keys, 3 members
    assert len(share) < len(keys)
    # End to end: the new node, cold, pulls the image; only its own share
    # reaches the registry (the rest is cached at the owners that stayed).
    mark = registry.mark()
    assert pull(fleet.nodes[3], img, registry.host)

    def fetched(reqs):
        return {r.uri.split("/blobs/")[1].split("?")[0]
                for r in reqs if r.method == "GET" and "/blobs/" in r.uri}
    got = fetched(registry.requests_since(mark, lambda r: fetched(r) >= share))
    assert got == share, (sorted(got), sorted(share))


def test_peer_request_is_never_forwarded_to_another_peer(
        tmp_path, registry, fleet_factory):
    img = image(tmp_path, registry, "fleet/hop", nlayers=16, size=16 * 1024,
                seed=41)
    fleet = fleet_factory(3, base=90).start()
    a = fleet.nodes[0]
    own = owners(a, registry, img.layers)
    # A layer that neither a nor the node asking a owns.
    d = [d for d in img.layers if own[d] not in (a.peer_id,
                                                 fleet.nodes[1].peer_id)]
    assert d, own
    d = d[0]
    owner = [pp for pp in fleet.nodes if pp.peer_id == own[d]][0]
    mark = registry.mark()
    # Asked as a peer (node 1 would), a answers from the registry itself:
    # it does not ask the owner.
    r = http_request(fleet.port, "GET", "/v2/%s/blobs/%s?ns=%s" % (
        img.repo, d, registry.host), headers={
        "Authorization": "Bearer " + TOKEN,
        "Pullproxy-Peer": fleet.nodes[1].peer_id}, host=a.peer_host)
    assert r.status == 200 and sha256_digest(r.body) == d
    assert not [l for l in owner.requests() if d in l["route"]]
    def got(reqs):
        return [q for q in reqs if q.method == "GET" and d in q.uri]
    assert got(registry.requests_since(mark, got))
    # Another layer a does not own, asked by a's own client, goes to its
    # owner. (Peer ids carry a random port: owners change from run to run.)
    x = [x for x in img.layers if own[x] != a.peer_id and x != d]
    assert x, own           # 16 layers, 3 members
    x = x[0]
    assert get_blob(a, img, x, registry.host) == (200, x)
    owner = [pp for pp in fleet.nodes if pp.peer_id == own[x]][0]
    def asked(lines):
        return [l for l in lines if x in l["route"]]
    assert asked(owner.requests_when(asked)), (x, owner.peer_id)
