"""Real clients pulling through pullproxy: containerd's ctr and skopeo."""

from pathlib import Path

from conftest import skopeo


def write_hosts_dir(root, registry, pullproxy):
    """containerd's hosts.toml: pullproxy first, the registry as fallback."""
    d = Path(root) / registry.host
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(
        'server = "%s"\n'
        '\n'
        '[host."http://127.0.0.1:%d"]\n'
        '  capabilities = ["pull", "resolve"]\n' % (registry.url, pullproxy.port))
    return root


def test_ctr_pull_through_pullproxy(tmp_path, registry, images, pullproxy, containerd):
    img = images["small"]
    hosts = write_hosts_dir(tmp_path / "hosts", registry, pullproxy)
    mark = registry.mark()
    ref = "%s/%s" % (registry.host, img.ref)

    cp = containerd.ctr("images", "pull", "--plain-http", "--hosts-dir", str(hosts),
                        "--snapshotter", "native", ref, check=False)
    assert cp.returncode == 0, "ctr pull failed:\n%s\n%s" % (cp.stdout, cp.stderr)

    # containerd has the image we pushed.
    listing = containerd.ctr("images", "ls").stdout
    line = next((l for l in listing.splitlines() if l.startswith(ref + " ")), None)
    assert line is not None, listing
    assert img.digest in line.split(), listing

    # pullproxy served the manifest and every blob, whole, with 200.
    reqs = pullproxy.requests()
    for r in reqs:
        assert r.get("registry") in (registry.host, None), r
    manifest_routes = {"/v2/%s/manifests/%s" % (img.repo, ref_)
                       for ref_ in (img.tag, img.digest)}
    served = [r for r in reqs if r["route"] in manifest_routes and r["method"] == "GET"
              and r["status"] == 200 and r["bytes"] == len(img.manifest)]
    assert served, "no 200 GET of the manifest in pullproxy's log: %s" % reqs
    for digest, blob in img.blobs.items():
        route = "/v2/%s/blobs/%s" % (img.repo, digest)
        ok = [r for r in reqs if r["route"] == route and r["method"] == "GET"
              and r["status"] == 200 and r["bytes"] == len(blob)]
        assert ok, "blob %s (%d bytes) not served whole by pullproxy: %s" % (
            digest, len(blob), [r for r in reqs if r["route"] == route])
    # containerd told pullproxy which registry it meant.
    assert all("ns=" in r["path"] for r in reqs if r["route"].startswith("/v2/%s/" % img.repo))
    assert not pullproxy.logs("upstream failure")

    # The registry was asked by pullproxy, never by containerd directly
    # (containerd falls back to the server only when the mirror fails).
    seen = registry.requests_since(mark)
    assert any(r.user_agent.startswith("pullproxy/") for r in seen), seen
    direct = [r for r in seen if not r.user_agent.startswith("pullproxy/")]
    assert not direct, "containerd fell back to the registry: %s" % direct


def test_skopeo_copy_through_pullproxy(tmp_path, registry, images, pullproxy):
    img = images["small"]
    out = tmp_path / "out"
    mark = registry.mark()
    skopeo("copy", "--quiet", "--src-tls-verify=false",
           "docker://127.0.0.1:%d/%s" % (pullproxy.port, img.ref),
           "oci:%s:%s" % (out, img.tag))

    blobs = out / "blobs" / "sha256"
    got = {"sha256:" + p.name: p.read_bytes() for p in blobs.iterdir()}
    # Every blob we pushed (manifest, config, layers), byte for byte.
    assert got.get(img.digest) == img.manifest
    for digest, data in img.blobs.items():
        assert digest in got, "skopeo did not store %s" % digest
        assert got[digest] == data, "blob %s differs" % digest
    assert set(got) == set(img.blobs) | {img.digest}

    reqs = pullproxy.requests()
    for digest, data in img.blobs.items():
        route = "/v2/%s/blobs/%s" % (img.repo, digest)
        assert any(r["route"] == route and r["status"] == 200 and r["bytes"] == len(data)
                   for r in reqs), (digest, reqs)
    seen = registry.requests_since(mark)
    assert seen and all(r.user_agent.startswith("pullproxy/") for r in seen), seen
