"""`pullproxy check`: every step against real services (docker-registry,
the fake ACR with managed identity), then one fault per step: the step
that fails, its cause and hint, the steps after it not run, and the exit
status (0 only when a pull would work)."""

import json

import pytest

pytest.register_assert_rewrite("acr")
from acr import CLIENT_ID, TENANT, registry_section  # noqa: E402
from conftest import (LOCALHOST, PULLPROXY_BIN, build_index, closed_port,  # noqa: E402
                      run)

pytest_plugins = ["acr"]

STEPS = ["name", "dns", "tcp", "tls", "v2", "identity", "manifest", "platform", "blob"]
MI = dict(auth="managed-identity", client_id=CLIENT_ID, tenant=TENANT)


def check(conf, *args, json_out=True):
    argv = [PULLPROXY_BIN, "check", "--config", str(conf)]
    argv += ["--json"] if json_out else []
    cp = run(argv + list(args), check=False, timeout=120)
    if not json_out:
        return cp, None
    assert cp.stdout, cp.stderr
    return cp, json.loads(cp.stdout)


def results(out):
    return [(s["step"], s["result"]) for s in out["steps"]]


def failed_at(out, step, cause):
    """The steps up to step passed (tls may be skipped), step failed with
    cause and a hint, nothing after it ran."""
    names = [s["step"] for s in out["steps"]]
    assert names == STEPS[:STEPS.index(step) + 1], names
    last = out["steps"][-1]
    assert last["result"] == "fail" and last["cause"] == cause, last
    assert isinstance(last.get("hint"), str) and len(last["hint"]) > 20, last
    assert all(s["result"] in ("pass", "skip") for s in out["steps"][:-1])
    assert out["ok"] is False
    return last


def write_conf(tmp_path, text, name="check.conf"):
    conf = tmp_path / name
    conf.write_text("[server]\nconnect_timeout_ms = 2000\nstall_timeout_s = 5\n" + text)
    return conf


def test_docker_registry_passes(tmp_path, registry, images):
    img = images["small"]
    conf = write_conf(tmp_path, "[registry %s]\nurl = %s\n" % (registry.host, registry.url))
    cp, out = check(conf, "%s/%s" % (registry.host, img.ref))
    assert cp.returncode == 0, cp.stdout
    assert results(out) == [(s, "skip" if s == "tls" else "pass") for s in STEPS]
    manifest = next(s for s in out["steps"] if s["step"] == "manifest")
    assert img.digest in manifest["detail"]
    # The text report says the same in words.
    cp, _ = check(conf, "%s/%s" % (registry.host, img.ref), json_out=False)
    assert cp.returncode == 0
    assert "ok    platform" in cp.stdout
    assert "a pull of this image should work" in cp.stdout


def test_docker_registry_index(tmp_path, registry, images):
    """An image index: the node's manifest is fetched, then a blob of it."""
    img = images["multi"]
    conf = write_conf(tmp_path, "[server]\nplatform = linux/arm64\n"
                      "[registry %s]\nurl = %s\n" % (registry.host, registry.url))
    cp, out = check(conf, "%s/%s" % (registry.host, img.ref))
    assert cp.returncode == 0, cp.stdout
    assert results(out) == [(s, "skip" if s == "tls" else "pass") for s in STEPS]
    steps = {s["step"]: s for s in out["steps"]}
    arm = img.children[1]
    assert "sha256:" in steps["platform"]["detail"]
    assert arm.layers[0] in steps["blob"]["detail"], steps["blob"]
    assert "206" in steps["blob"]["detail"]


def test_identity_not_needed(tmp_path, registry, images):
    """auth = managed-identity with IMDS unreachable, against a registry
    that asks for no credentials: the identity step must not say a token
    was obtained; the pull works anonymously."""
    port, sock = closed_port()
    try:
        conf = write_conf(tmp_path, "[registry %s]\nurl = %s\nauth = managed-identity\n"
                          "client_id = %s\nimds_url = http://%s:%d\nimds_retry_s = 0\n"
                          % (registry.host, registry.url, CLIENT_ID, LOCALHOST, port))
        cp, out = check(conf, "%s/%s" % (registry.host, images["small"].ref))
        text, _ = check(conf, "%s/%s" % (registry.host, images["small"].ref),
                        json_out=False)
    finally:
        sock.close()
    ident = next(s for s in out["steps"] if s["step"] == "identity")
    assert ident["result"] == "skip", ident
    assert "no token was needed" in ident["detail"], ident
    assert "token obtained" not in cp.stdout and "token obtained" not in text.stdout
    assert cp.returncode == 0, cp.stdout
    assert [s for s, r in results(out) if r == "fail"] == []


def test_managed_identity_against_the_fake_acr(tmp_path, fake, acr_images):
    conf = write_conf(tmp_path, registry_section(fake, imds_url=fake.imds_url, **MI))
    cp, out = check(conf, "%s/id/small:v1" % fake.registry)
    assert cp.returncode == 0, cp.stdout
    assert results(out) == [(s, "pass") for s in STEPS]
    # The real identity path: IMDS, exchange, token; the config blob
    # through the redirect to storage.
    endpoints = [r["endpoint"] for r in fake.requests()]
    for e in ("imds", "exchange", "token", "storage"):
        assert e in endpoints, endpoints
    ident = next(s for s in out["steps"] if s["step"] == "identity")
    assert ident["detail"] == "managed-identity: token obtained"
    # Without an image: the registry and the identity only.
    cp, out = check(conf, "--registry", fake.registry)
    assert cp.returncode == 0, cp.stdout
    assert [s["step"] for s in out["steps"]] == STEPS[:6]


def test_connection_refused(tmp_path):
    port, sock = closed_port()
    try:
        conf = write_conf(tmp_path, "[registry myacr.azurecr.io]\nurl = http://%s:%d\n"
                          % (LOCALHOST, port))
        cp, out = check(conf, "myacr.azurecr.io/team/api:v1")
    finally:
        sock.close()
    assert cp.returncode == 1
    failed_at(out, "tcp", "connection_refused")


def test_dns_failure(tmp_path):
    conf = write_conf(tmp_path, "[registry myacr.azurecr.io]\nurl = https://no-such-host.invalid\n")
    cp, out = check(conf)
    assert cp.returncode == 1
    assert "privatelink" in failed_at(out, "dns", "dns_failure")["hint"]


def test_name_typo(tmp_path):
    conf = write_conf(tmp_path, "[registry myacr.azureacr.io]\nurl = https://myacr.azureacr.io\n")
    cp, out = check(conf, "myacr.azureacr.io/app:v1")
    assert cp.returncode == 1
    failed_at(out, "name", "name_typo")
    # An image naming a registry that is not configured.
    cp, _ = check(conf, "myacr.azurcr.io/app:v1", json_out=False)
    assert cp.returncode == 1 and "not configured" in cp.stderr
    assert "typo" in cp.stderr


def test_tls_without_the_ca(tmp_path, fake):
    conf = write_conf(tmp_path, registry_section(fake).replace(
        "ca_file = %s\n" % fake.ca, ""))
    cp, out = check(conf, "%s/id/small:v1" % fake.registry)
    assert cp.returncode == 1
    assert "ca_file" in failed_at(out, "tls", "tls_error")["hint"]


def test_identity_unavailable(tmp_path, fake):
    port, sock = closed_port()
    try:
        conf = write_conf(tmp_path, registry_section(
            fake, imds_url="http://%s:%d" % (LOCALHOST, port), imds_retry_s=0, **MI))
        cp, out = check(conf, "%s/id/small:v1" % fake.registry)
    finally:
        sock.close()
    assert cp.returncode == 1
    last = failed_at(out, "identity", "auth_identity_unavailable")
    assert "imds" in last["detail"]


def test_token_refused(tmp_path, fake):
    fake.add_fault(endpoint="token", status=401)
    conf = write_conf(tmp_path, registry_section(fake, imds_url=fake.imds_url, **MI))
    cp, out = check(conf, "%s/id/small:v1" % fake.registry)
    assert cp.returncode == 1
    assert "AcrPull" in failed_at(out, "identity", "auth_unauthorized")["hint"]


def test_firewall_on_the_data_endpoint(tmp_path, fake):
    fake.config(anonymous=True)
    fake.add_fault(endpoint="manifests", status=403)
    conf = write_conf(tmp_path, registry_section(fake))
    cp, out = check(conf, "%s/id/small:v1" % fake.registry)
    assert cp.returncode == 1
    last = failed_at(out, "manifest", "forbidden_network")
    assert "403" in last["detail"] and "DENIED" in last["detail"]


@pytest.fixture
def acr_index(fake, acr_images):
    """An image index in the fake ACR's content (read on every request)."""
    content = acr_images[0]
    if not (content / "id" / "checkmulti").exists():
        build_index(content / "id" / "checkmulti", "id/checkmulti", "v1", [
            ("amd64", [{"arch": b"amd64\n"}]),
            ("arm64", [{"arch": b"arm64\n"}, {"more": b"x" * 4096}])])
    return "%s/id/checkmulti:v1" % fake.registry


def test_index_blob_through_storage(tmp_path, fake, acr_index):
    """For an index the node's manifest is fetched and a blob of it, through
    the redirect: a firewalled storage endpoint fails the check."""
    conf = write_conf(tmp_path, "[server]\nplatform = linux/arm64\n" +
                      registry_section(fake, imds_url=fake.imds_url, **MI))
    cp, out = check(conf, acr_index)
    assert cp.returncode == 0, cp.stdout
    assert results(out) == [(s, "pass") for s in STEPS]
    storage = [r for r in fake.requests() if r["endpoint"] == "storage"]
    assert any(r.get("range") == "bytes=0-0" for r in storage), storage

    fake.add_fault(endpoint="storage", status=403)
    cp, out = check(conf, acr_index)
    assert cp.returncode == 1, cp.stdout
    last = out["steps"][-1]
    assert last["step"] == "blob" and last["result"] == "fail", out["steps"]
    assert "403" in last["detail"]
    cp, _ = check(conf, acr_index, json_out=False)
    assert "a pull of this image should work" not in cp.stdout
    assert "pulls from this registry will fail" in cp.stdout


def test_help_without_config(tmp_path):
    for arg in ("--help", "-h"):
        cp = run([PULLPROXY_BIN, "check", arg], check=False, cwd=str(tmp_path))
        assert cp.returncode == 0, cp.stderr
        assert cp.stdout.startswith("usage: pullproxy check ") and cp.stderr == ""


def test_unknown_tag(tmp_path, registry, images):
    conf = write_conf(tmp_path, "[registry %s]\nurl = %s\n" % (registry.host, registry.url))
    cp, out = check(conf, "%s/%s:nosuchtag" % (registry.host, images["small"].repo))
    assert cp.returncode == 1
    failed_at(out, "manifest", "not_found")


def test_platform_mismatch(tmp_path, registry, images):
    conf = write_conf(tmp_path, "[registry %s]\nurl = %s\n" % (registry.host, registry.url))
    conf.write_text("[server]\nplatform = linux/s390x\n" + conf.read_text())
    cp, out = check(conf, "%s/%s" % (registry.host, images["small"].ref))
    assert cp.returncode == 1
    last = failed_at(out, "platform", "platform_mismatch")
    assert "node linux/s390x" in last["detail"]


def test_bad_config_and_arguments(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[registry r.azurecr.io]\nurl = https://r.azurecr.io\nrate = fast\n")
    cp, _ = check(conf, json_out=False)
    assert cp.returncode == 2 and "bad.conf:3" in cp.stderr, cp.stderr
    good = write_conf(tmp_path, "[registry r.azurecr.io]\nurl = https://r.azurecr.io\n")
    cp, _ = check(good, "not a//reference", json_out=False)
    assert cp.returncode == 2 and "not an image reference" in cp.stderr
