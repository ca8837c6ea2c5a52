"""What a pod shows when a pull fails: containerd 1.6 (ctr, hosts.toml
with pullproxy first and the registry as server) reports, when every host
fails, the first host's error: pullproxy's. Its answer names the cause
and the hint, as pullproxy logs would: in the reason phrase of a HEAD
(containerd resolves tags with HEAD and prints the status line) and in
the OCI body of a GET (printed as "Server message"). When only pullproxy
fails, the pull succeeds from the registry and the pod shows nothing.
docs/operator-guide.md, What pods show, has the texts."""

from types import SimpleNamespace

import pytest

pytest.register_assert_rewrite("acr")
from acr import SERVICE, registry_section  # noqa: E402
from conftest import closed_port, metrics  # noqa: E402
from fakeacr import FakeACR  # noqa: E402
from test_pull import write_hosts_dir  # noqa: E402

pytest_plugins = ["acr"]

FORBIDDEN = "forbidden_network [registry: client with IP"


@pytest.fixture
def own_fake(tmp_path, acr_images):
    f = FakeACR().start(tmp_path / "fake", acr_images[0], service=SERVICE, anonymous=True)
    yield f
    f.stop(check=False)


def hosts_with_ca(root, fake, pp):
    """hosts.toml whose server (the fallback) containerd can reach: the
    fake's CA trusted, so the registry's own answer is what it gets."""
    d = root / fake.registry
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(
        'server = "%s"\nca = "%s"\n\n[host."http://127.0.0.1:%d"]\n'
        '  capabilities = ["pull", "resolve"]\n' % (fake.registry_url, fake.ca, pp.port))
    return root


def ctr_pull(containerd, hosts, ref):
    return containerd.ctr("images", "pull", "--plain-http", "--hosts-dir", str(hosts),
                          "--snapshotter", "native", ref, check=False)


@pytest.mark.parametrize("endpoint,status,shown", [
    # Resolve: a HEAD on the tag; the cause is in the status line.
    ("any", 403, "failed with status code [manifests v1]: 502 Bad Gateway: "
                 "upstream registry %(reg)s: " + FORBIDDEN),
    # A layer: a GET; the cause is in the body's message.
    ("blobs", 403, "502 Bad Gateway - Server message: denied: upstream registry %(reg)s: " +
                   FORBIDDEN),
    ("blobs", 503, "502 Bad Gateway - Server message: unavailable: upstream registry "
                   "%(reg)s: upstream_unavailable [registry: service unavailable]: "),
])
def test_pull_error_names_the_cause_when_the_registry_fails_too(
        tmp_path, own_fake, acr_images, pullproxy_factory, containerd, endpoint, status, shown):
    conf = tmp_path / "pp.conf"
    conf.write_text("[server]\nconnect_timeout_ms = 2000\n" +
                    registry_section(own_fake, retries=0))
    pp = pullproxy_factory(registries=[], args=["--config", str(conf)])
    hosts = hosts_with_ca(tmp_path / "hosts", own_fake, pp)
    own_fake.add_fault(endpoint=endpoint, status=status)
    cp = ctr_pull(containerd, hosts, "%s/%s" % (own_fake.registry, acr_images[1]["other"].ref))
    assert cp.returncode != 0
    assert shown % {"reg": own_fake.registry} in cp.stderr, cp.stderr
    assert "127.0.0.1:%d" % pp.port in cp.stderr
    # containerd asked the registry too (the fallback), which failed the
    # same way: more failed answers than pullproxy received.
    failed = [r for r in own_fake.requests() if r.get("status") == status]
    by_pp = metrics(pp).get('pullproxy_upstream_responses_total{registry="%s",status="%d"}'
                            % (own_fake.registry, status), 0)
    assert len(failed) > by_pp >= 1, (failed, by_pp)
    # The hint comes last.
    assert ("allow the AKS load balancer's public IP" if status == 403 else
            "az acr check-health") in cp.stderr, cp.stderr


def test_registry_stopped_names_connection_refused(tmp_path, own_fake, acr_images,
                                                   pullproxy_factory, containerd):
    conf = tmp_path / "pp.conf"
    conf.write_text("[server]\nconnect_timeout_ms = 2000\n" +
                    registry_section(own_fake, retries=0))
    pp = pullproxy_factory(registries=[], args=["--config", str(conf)])
    hosts = hosts_with_ca(tmp_path / "hosts", own_fake, pp)
    own_fake.stop()
    cp = ctr_pull(containerd, hosts, "%s/%s" % (own_fake.registry, acr_images[1]["other"].ref))
    assert cp.returncode != 0
    assert "502 Bad Gateway: upstream registry %s: connection_refused (" % own_fake.registry \
        in cp.stderr, cp.stderr
    assert "check the registry URL's host and port" in cp.stderr, cp.stderr


def test_pullproxy_failing_alone_shows_nothing(tmp_path, registry, images, pullproxy_factory,
                                               containerd):
    """pullproxy cannot reach the registry, containerd can: the pull
    works (from the registry) and only pullproxy's log tells."""
    port, sock = closed_port()
    with sock:
        pp = pullproxy_factory(registries=[(registry.host, "http://127.0.0.1:%d" % port)])
        hosts = write_hosts_dir(tmp_path / "hosts", registry, pp)
        cp = ctr_pull(containerd, hosts, "%s/%s" % (registry.host, images["small"].ref))
        assert cp.returncode == 0, cp.stderr
        assert [l["cause"] for l in pp.logs("upstream failure")][:1] == ["connection_refused"]
