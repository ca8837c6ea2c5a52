"""Registry chaining: `mirrors = URL, ...` in a [registry] section. The
mirror here is a second pullproxy in front of the same docker-registry
(the shared tier of a big cluster); the node's pullproxy asks it first,
falls back to the registry when it fails or lacks the content, and stops
asking a mirror whose circuit opened."""

import hashlib

from conftest import LOCALHOST, PULLPROXY_BIN, closed_port, run, wait_for
from test_pull import write_hosts_dir

ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


def node_proxy(pullproxy_factory, tmp_path, registry, mirrors, extra=""):
    conf = tmp_path / ("node-%d.conf" % len(list(tmp_path.glob("node-*.conf"))))
    conf.write_text("[registry %s]\nurl = %s\nmirrors = %s\n%s" % (
        registry.host, registry.url, ", ".join(mirrors), extra))
    return pullproxy_factory(registries=[], args=["--config", str(conf)])


def get(pp, registry, path):
    return pp.request("GET", "%s?ns=%s" % (path, registry.host), headers=ACCEPT)


def test_pulls_go_through_the_mirror(tmp_path, registry, images, pullproxy_factory):
    img = images["small"]
    mirror = pullproxy_factory(registries=[(registry.host, registry.url)])
    node = node_proxy(pullproxy_factory, tmp_path, registry,
                      ["http://%s:%d" % (LOCALHOST, mirror.port)])
    mark = registry.mark()
    r = get(node, registry, "/v2/%s/manifests/%s" % (img.repo, img.tag))
    assert r.status == 200 and r.body == img.manifest
    for digest, blob in img.blobs.items():
        r = get(node, registry, "/v2/%s/blobs/%s" % (img.repo, digest))
        assert r.status == 200 and "sha256:" + hashlib.sha256(r.body).hexdigest() == digest
    # The mirror served every one, with the registry named in ns.
    want = {"/v2/%s/manifests/%s" % (img.repo, img.tag)} | {
        "/v2/%s/blobs/%s" % (img.repo, digest) for digest in img.blobs}

    def routes(lines):
        return {l["route"] for l in lines if l["status"] == 200}
    lines = mirror.requests_when(lambda lines: want <= routes(lines))
    assert want <= routes(lines), (sorted(want), sorted(routes(lines)))
    assert all(l["registry"] == registry.host for l in lines)
    # The registry saw each blob once: from the mirror, not the node.
    blob_gets = [q for q in registry.requests_since(mark)
                 if q.method == "GET" and "/blobs/" in q.uri]
    assert len(blob_gets) == len(img.blobs), blob_gets
    assert not node.logs("mirror failed")


def test_a_dead_mirror_is_skipped_once_its_circuit_opens(tmp_path, registry, images,
                                                         pullproxy_factory):
    img = images["small"]
    port, sock = closed_port()
    dead = "http://%s:%d" % (LOCALHOST, port)
    try:
        node = node_proxy(pullproxy_factory, tmp_path, registry, [dead],
                          "circuit_failures = 2\ncircuit_open_s = 60\n")
        for digest in list(img.blobs)[:2] + [img.digest]:
            kind = "manifests" if digest == img.digest else "blobs"
            r = get(node, registry, "/v2/%s/%s/%s" % (img.repo, kind, digest))
            assert r.status == 200
    finally:
        sock.close()
    failed = node.logs("mirror failed")
    assert len(failed) == 2, failed
    assert failed[0]["mirror"] == dead and failed[0]["cause"] == "connection_refused"
    opened = wait_for(lambda: node.logs("circuit open"), 5, "circuit open")
    assert opened[0]["registry"] == dead and opened[0]["failures"] == 2
    # The registry's own circuit is untouched; the mirror's is in /metrics.
    metrics = node.get("/metrics").body.decode()
    assert 'pullproxy_circuit_state{registry="%s"} 1' % dead in metrics
    assert 'pullproxy_circuit_state{registry="%s"} 0' % registry.host in metrics


def test_a_mirror_without_the_content_is_not_a_broken_one(tmp_path, registry, images,
                                                          pullproxy_factory):
    """A mirror that answers 404 (here a pullproxy that does not serve this
    registry) sends each request on to the registry without opening its
    circuit: it answered."""
    img = images["small"]
    other = pullproxy_factory(registries=[("other.example", registry.url)])
    mirror = "http://%s:%d" % (LOCALHOST, other.port)
    node = node_proxy(pullproxy_factory, tmp_path, registry, [mirror],
                      "circuit_failures = 2\n")
    for digest in img.blobs:
        assert get(node, registry, "/v2/%s/blobs/%s" % (img.repo, digest)).status == 200
    failed = node.logs("mirror failed")
    assert len(failed) == len(img.blobs) and failed[0]["status"] == 404
    assert failed[0]["cause"] == "not_found"
    assert not node.logs("circuit open")


def test_ctr_pull_through_the_chain(tmp_path, registry, images, pullproxy_factory,
                                    containerd):
    img = images["small"]
    mirror = pullproxy_factory(registries=[(registry.host, registry.url)])
    node = node_proxy(pullproxy_factory, tmp_path, registry,
                      ["http://%s:%d" % (LOCALHOST, mirror.port)])
    hosts = write_hosts_dir(tmp_path / "hosts", registry, node)
    ref = "%s/%s" % (registry.host, img.ref)
    cp = containerd.ctr("images", "pull", "--plain-http", "--hosts-dir", str(hosts),
                        "--snapshotter", "native", ref, check=False)
    assert cp.returncode == 0, cp.stderr
    assert img.digest in containerd.ctr("images", "ls").stdout
    def served(lines):
        return {l["route"].rsplit("/", 1)[1] for l in lines
                if "/blobs/" in l["route"] and l["status"] == 200}
    assert set(img.blobs) <= served(mirror.requests_when(
        lambda lines: set(img.blobs) <= served(lines)))


def test_mirrors_setting_is_checked(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[registry r.azurecr.io]\nurl = https://r.azurecr.io\n"
                    "mirrors = ftp://cache.local\n")
    cp = run([PULLPROXY_BIN, "serve", "--config", str(conf)], check=False, timeout=10)
    assert cp.returncode == 2 and "bad.conf:3" in cp.stderr and "http" in cp.stderr, cp.stderr
    conf.write_text("[registry r.azurecr.io]\nurl = https://r.azurecr.io\n"
                    "mirrors = " + ", ".join("http://m%d.local" % i for i in range(5)) + "\n")
    cp = run([PULLPROXY_BIN, "serve", "--config", str(conf)], check=False, timeout=10)
    assert cp.returncode == 2 and "at most 4" in cp.stderr, cp.stderr


def test_the_registry_pace_does_not_hold_back_the_mirror(tmp_path, registry, images,
                                                         pullproxy_factory):
    """rate paces what goes to the registry; a mirror is asked at once."""
    img = images["small"]
    mirror = pullproxy_factory(registries=[(registry.host, registry.url)])
    node = node_proxy(pullproxy_factory, tmp_path, registry,
                      ["http://%s:%d" % (LOCALHOST, mirror.port)],
                      "rate = 0.1\nburst = 1\nmax_wait_s = 1\n")
    paths = ["/v2/%s/blobs/%s" % (img.repo, d) for d in img.blobs]
    paths.append("/v2/%s/manifests/%s" % (img.repo, img.tag))
    for path in paths:
        assert get(node, registry, path).status == 200, path
    assert not node.logs("upstream failure")


def test_a_mirror_that_wants_a_token_gets_the_mirror_token(tmp_path, registry, images,
                                                           pullproxy_factory):
    """A shared pullproxy off loopback requires a client token; the nodes
    send it from mirror_token_file (never the registry's credentials)."""
    img = images["small"]
    token = tmp_path / "mirror-token"
    token.write_text("s3cret-mirror-token-%s\n" % tmp_path.name)
    token.chmod(0o600)
    server = tmp_path / "mirror.conf"
    server.write_text("[server]\nclient_token_file = %s\n" % token)
    mirror = pullproxy_factory(registries=[(registry.host, registry.url)],
                               args=["--config", str(server)])
    url = "http://%s:%d" % (LOCALHOST, mirror.port)
    blob = "/v2/%s/blobs/%s" % (img.repo, next(iter(img.blobs)))

    without = node_proxy(pullproxy_factory, tmp_path, registry, [url])
    assert get(without, registry, blob).status == 200      # from the registry
    failed = without.logs("mirror failed")
    assert len(failed) == 1 and failed[0]["status"] == 401, failed

    node = node_proxy(pullproxy_factory, tmp_path, registry, [url],
                      "mirror_token_file = %s\n" % token)
    assert get(node, registry, blob).status == 200
    assert not node.logs("mirror failed")
    def served(lines):
        return [l for l in lines if l["route"] == blob and l["status"] == 200]
    assert served(mirror.requests_when(served))
    for pp in (node, without):
        assert token.read_text().strip() not in pp.log_text()


def test_mirror_token_needs_mirrors(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[registry r.azurecr.io]\nurl = https://r.azurecr.io\n"
                    "mirror_token_file = /nonexistent\n")
    cp = run([PULLPROXY_BIN, "serve", "--config", str(conf)], check=False, timeout=10)
    assert cp.returncode == 2 and "mirror_token_file" in cp.stderr, cp.stderr
