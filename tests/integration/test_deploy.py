"""Deployment: `pullproxy containerd-config` against a real containerd."""

import os
import re
from pathlib import Path

import pytest

from conftest import LOCALHOST, PULLPROXY_BIN, Containerd, build_image, push_image, run

CRI = '[plugins."io.containerd.grpc.v1.cri".registry]\n'
MARK = "# written by pullproxy containerd-config;"


# ----------------------------------------------------------------- helpers

def snapshot(root):
    """Every name under root with its type, mode and contents: two equal
    snapshots mean the directory is exactly as it was."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            out[rel] = (oct(st.st_mode), None if p.is_dir() else p.read_bytes())
    return out


def containerd_config(tmp_path, hosts_dir, name="containerd.toml"):
    """A containerd config as AKS writes it: the CRI registry's
    config_path naming hosts_dir."""
    p = tmp_path / name
    p.write_text('version = 2\n'
                 '[plugins."io.containerd.grpc.v1.cri"]\n'
                 '  sandbox_image = "mcr.microsoft.com/oss/kubernetes/pause:3.6"\n'
                 '  ' + CRI +
                 '    config_path = "%s"\n' % hosts_dir)
    return p


def pullproxy_conf(path, port, registries):
    """pullproxy's config file: listen, then one section per registry."""
    text = "[server]\nlisten = %s:%d\n" % (LOCALHOST, port)
    for name, url in registries:
        text += "\n[registry %s]\nurl = %s\n" % (name, url)
    path.write_text(text)
    return path


def containerd_config_cmd(*args):
    return run([PULLPROXY_BIN, "containerd-config", *map(str, args)], check=False)


def one_line_error(cp, *names):
    """Exit status 2 or 1 with one line on stderr naming each of names."""
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1, cp.stderr
    for n in names:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def node(tmp_path):
    """A node's containerd: started by the test with a CRI config_path
    naming a hosts directory that already holds another registry's file
    and a CA, as a real node might."""
    hosts = tmp_path / "certs.d"
    (hosts / "docker.io").mkdir(parents=True)
    (hosts / "docker.io" / "hosts.toml").write_text(
        'server = "https://registry-1.docker.io"\n')
    (hosts / "docker.io" / "ca.crt").write_text("not a real certificate\n")
    ctd = Containerd(tmp_path / "containerd",
                     extra_config=CRI + '  config_path = "%s"\n' % hosts)
    try:
        ctd.start()
        yield ctd, hosts
    finally:
        ctd.stop()


def config_path_of(ctd):
    """config_path as the running containerd's own config file says."""
    m = re.search(r'config_path = "([^"]+)"', ctd.config.read_text())
    assert m, ctd.config.read_text()
    return Path(m.group(1))


def ctr_pull(ctd, hosts, ref):
    cp = ctd.ctr("images", "pull", "--hosts-dir", str(hosts), "--snapshotter", "native",
                 ref, check=False)
    assert cp.returncode == 0, "ctr pull %s failed:\n%s\n%s" % (ref, cp.stdout, cp.stderr)
    listing = ctd.ctr("images", "ls").stdout
    line = next((l for l in listing.splitlines() if l.startswith(ref + " ")), None)
    assert line is not None, listing
    return line.split()


# ------------------------------------------------------ containerd, for real

def test_containerd_pulls_through_pullproxy_then_falls_back(
        tmp_path, registry, images, pullproxy_factory, node):
    ctd, hosts = node
    assert config_path_of(ctd) == hosts
    before = snapshot(hosts)
    pp = pullproxy_factory()
    conf = pullproxy_conf(tmp_path / "pullproxy.conf", pp.port, [(registry.host, registry.url)])

    cp = containerd_config_cmd("--config", conf, "--hosts-dir", hosts,
                               "--containerd-config", ctd.config)
    assert cp.returncode == 0, cp.stderr
    assert str(ctd.config) in cp.stdout and "config_path" in cp.stdout, cp.stdout
    written = hosts / registry.host / "hosts.toml"
    text = written.read_text()
    assert text.startswith(MARK), text
    assert 'server = "%s"\n' % registry.url in text
    assert '[host."http://%s:%d"]\n  capabilities = ["pull", "resolve"]' % (
        LOCALHOST, pp.port) in text
    # Idempotent: a second run changes nothing, not even the inode.
    ino = written.stat().st_ino
    cp = containerd_config_cmd("--config", conf, "--hosts-dir", hosts,
                               "--containerd-config", ctd.config)
    assert cp.returncode == 0 and "unchanged %s" % written in cp.stdout, cp
    assert written.stat().st_ino == ino
    # The other registry's files are as they were.
    after = snapshot(hosts)
    assert {k: v for k, v in after.items() if k.startswith("docker.io")} == \
        {k: v for k, v in before.items() if k.startswith("docker.io")}

    # 1. A pull goes through pullproxy: its log has every piece of it,
    # and the registry saw only pullproxy.
    img = images["small"]
    ref = "%s/%s" % (registry.host, img.ref)
    mark = registry.mark()
    assert img.digest in ctr_pull(ctd, hosts, ref)
    reqs = pp.requests()
    for digest, blob in img.blobs.items():
        route = "/v2/%s/blobs/%s" % (img.repo, digest)
        ok = [r for r in reqs if r["route"] == route and r["status"] == 200
              and r["bytes"] == len(blob) and "ns=" in r["path"]
              and r["registry"] == registry.host]
        assert ok, "blob %s not served by pullproxy: %s" % (digest, reqs)
    assert any(r["route"] == "/v2/%s/manifests/%s" % (img.repo, img.tag)
               for r in reqs), reqs
    seen = registry.requests_since(mark)
    assert seen and all(r.user_agent.startswith("pullproxy/") for r in seen), seen

    # 2. pullproxy stopped: a second image still pulls, from the registry
    # (the hosts.toml server), and containerd is what asked for it.
    other = push_image(build_image(tmp_path / "fallback", "pp/fallback", "v1", [
        {"fallback.txt": b"pulled while pullproxy was down\n"}]), registry)
    assert pp.stop() == 0
    served_before = len(pp.requests())
    mark = registry.mark()
    assert other.digest in ctr_pull(ctd, hosts, "%s/%s" % (registry.host, other.ref))
    seen = registry.requests_since(mark)
    direct = [r for r in seen if r.user_agent.startswith("containerd/")]
    for digest in other.blobs:
        assert any(r.uri.startswith("/v2/%s/blobs/%s" % (other.repo, digest))
                   and r.status == 200 for r in direct), seen
    assert not [r for r in seen if r.user_agent.startswith("pullproxy/")]
    assert len(pp.requests()) == served_before

    # 3. --remove: the directory is exactly as it was before.
    cp = containerd_config_cmd("--remove", "--hosts-dir", hosts)
    assert cp.returncode == 0, cp.stderr
    assert "remove %s" % written in cp.stdout
    assert snapshot(hosts) == before
    # Nothing left to take back.
    cp = containerd_config_cmd("--remove", "--hosts-dir", hosts)
    assert cp.returncode == 0 and cp.stdout == "", cp


def test_refuses_without_config_path(tmp_path, registry):
    hosts = tmp_path / "certs.d"
    hosts.mkdir()
    conf = pullproxy_conf(tmp_path / "pullproxy.conf", 5000, [(registry.host, registry.url)])

    # containerd 1.6's own default: no config_path, so no hosts.toml is read.
    ctd_conf = tmp_path / "config.toml"
    ctd_conf.write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
                        '  [plugins."io.containerd.grpc.v1.cri".registry.mirrors]\n')
    cp = containerd_config_cmd("--config", conf, "--hosts-dir", hosts,
                               "--containerd-config", ctd_conf)
    assert cp.returncode == 2
    line = one_line_error(cp, ctd_conf, "config_path")
    assert "no config_path" in line
    assert list(hosts.iterdir()) == []

    # config_path set, but to another directory: named with its line.
    containerd_config(tmp_path, tmp_path / "elsewhere", name="config.toml")
    cp = containerd_config_cmd("--config", conf, "--hosts-dir", hosts,
                               "--containerd-config", ctd_conf)
    assert cp.returncode == 2
    one_line_error(cp, "%s:5:" % ctd_conf, tmp_path / "elsewhere", hosts)
    assert list(hosts.iterdir()) == []

    # No containerd config at all.
    cp = containerd_config_cmd("--config", conf, "--hosts-dir", hosts,
                               "--containerd-config", tmp_path / "missing.toml")
    assert cp.returncode == 2
    one_line_error(cp, tmp_path / "missing.toml")
    assert list(hosts.iterdir()) == []


def test_foreign_hosts_toml_left_alone(tmp_path, registry):
    hosts = tmp_path / "certs.d"
    (hosts / registry.host).mkdir(parents=True)
    foreign = hosts / registry.host / "hosts.toml"
    foreign.write_text('server = "%s"\n[host."https://someone-elses-mirror"]\n' % registry.url)
    ctd_conf = containerd_config(tmp_path, hosts)
    # Two registries: the one without a foreign file must not be written
    # either (all or nothing).
    conf = pullproxy_conf(tmp_path / "pullproxy.conf", 5000,
                          [("second.example", "https://second.example"),
                           (registry.host, registry.url)])
    before = snapshot(hosts)

    cp = containerd_config_cmd("--config", conf, "--hosts-dir", hosts,
                               "--containerd-config", ctd_conf)
    assert cp.returncode == 1
    one_line_error(cp, foreign, "not written by pullproxy")
    assert snapshot(hosts) == before

    # --remove does not take what it did not write.
    cp = containerd_config_cmd("--remove", "--hosts-dir", hosts)
    assert cp.returncode == 0
    assert snapshot(hosts) == before

    # --force sets it aside until --remove puts it back.
    cp = containerd_config_cmd("--config", conf, "--hosts-dir", hosts,
                               "--containerd-config", ctd_conf, "--force")
    assert cp.returncode == 0, cp.stderr
    assert foreign.read_text().startswith(MARK)
    assert (hosts / "second.example" / "hosts.toml").read_text().startswith(MARK)
    cp = containerd_config_cmd("--remove", "--hosts-dir", hosts)
    assert cp.returncode == 0, cp.stderr
    assert snapshot(hosts) == before
