"""Security defaults: loopback unless told otherwise; off loopback only
with a client token, which every request but the health probes must
carry (Bearer, or Basic with the token as password), compared whole and
never logged. containerd sends it from hosts.toml."""

import base64
import os
import subprocess
from pathlib import Path

import pytest

from conftest import LOCALHOST, PULLPROXY_BIN, free_port, http_request, port_open

TOKEN = "9f2c4e7a1b8d3f60a5c2e9b7d4f1a8c3e6b0d2f5a7c9e1b3"


def token_file(tmp_path, text=TOKEN + "\n", mode=0o600):
    path = tmp_path / "client-token"
    path.write_text(text)
    path.chmod(mode)
    return path


def config(tmp_path, token, extra=""):
    cfg = tmp_path / "token.conf"
    cfg.write_text("[server]\nclient_token_file = %s\n%s" % (token, extra))
    return cfg


def serve(*args, timeout=10):
    return subprocess.run([PULLPROXY_BIN, "serve", *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)


def one_line_error(cp, status, *needles):
    assert cp.returncode == status, (cp.returncode, cp.stderr)
    lines = cp.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pullproxy: "), cp.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def basic(user, password):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


@pytest.mark.parametrize("listen", ["0.0.0.0", "[::]", "192.0.2.1"])
def test_off_loopback_needs_a_token(tmp_path, listen):
    port = free_port()
    cp = serve("--listen", "%s:%d" % (listen, port), "--cache-dir", str(tmp_path / "c"),
               "--registry", "r.example=http://127.0.0.1:9")
    one_line_error(cp, 2, "[server] listen: ", "not a loopback address",
                   "client_token_file")
    assert not port_open(port)


def test_off_loopback_with_a_token_passes_the_check(tmp_path):
    """192.0.2.1 (TEST-NET-1) is on no interface here: with a token the
    config is accepted and only the bind fails, so nothing listens on the
    network during the test."""
    cp = serve("--config", str(config(tmp_path, token_file(tmp_path))),
               "--listen", "192.0.2.1:%d" % free_port(), "--cache-dir", str(tmp_path / "c"),
               "--registry", "r.example=http://127.0.0.1:9", "--log", str(tmp_path / "log"))
    assert cp.returncode == 1, cp.stderr
    assert "not a loopback" not in cp.stderr
    assert '"cannot listen"' in (tmp_path / "log").read_text()


@pytest.mark.parametrize("text,needle", [
    (None, "No such file"),
    ("", "is empty"),
    ("q7x\n", "16 characters or more"),
    ("two words-but-long-enough\n", "without spaces"),
], ids=["missing", "empty", "short", "spaces"])
def test_bad_token_file(tmp_path, text, needle):
    path = tmp_path / "absent" if text is None else token_file(tmp_path, text)
    cp = serve("--config", str(config(tmp_path, path)), "--listen",
               "127.0.0.1:%d" % free_port(), "--cache-dir", str(tmp_path / "c"),
               "--registry", "r.example=http://127.0.0.1:9", "--log", str(tmp_path / "log"))
    line = one_line_error(cp, 1, "[server] client_token_file: ", needle)
    if text:
        assert text.strip() not in line


@pytest.fixture
def tokened(pullproxy_factory, tmp_path):
    return pullproxy_factory(args=["--config", str(config(tmp_path, token_file(tmp_path)))])


def test_requests_need_the_token(tokened, registry, images):
    img = images["small"]
    manifest = "/v2/%s/manifests/%s" % (img.repo, img.tag)
    mark = registry.mark()
    for path in ("/v2/", manifest, "/v2/%s/blobs/%s" % (img.repo, img.layers[0]),
                 "/v2/%s/tags/list" % img.repo, "/metrics"):
        for auth in (None, "Bearer wrong-token-0123456789abcdef", "Bearer " + TOKEN[:-1],
                     "Bearer " + TOKEN + "0", basic(TOKEN, "x"), "Basic " + TOKEN,
                     TOKEN):
            r = tokened.get(path, headers={"Authorization": auth} if auth else {})
            assert r.status == 401, (path, auth, r.status)
            assert r.error_code() == "UNAUTHORIZED"
            assert r.header("WWW-Authenticate") == 'Basic realm="pullproxy"'
            assert TOKEN not in r.body.decode()
    assert registry.requests_since(mark) == []

    for auth in ("Bearer " + TOKEN, "bearer " + TOKEN, basic("pullproxy", TOKEN),
                 basic("", TOKEN)):
        r = tokened.get(manifest, headers={"Authorization": auth})
        assert r.status == 200 and r.body == img.manifest, auth
    r = tokened.get("/metrics", headers={"Authorization": "Bearer " + TOKEN})
    assert r.status == 200 and b"pullproxy_requests_total" in r.body
    # kubelet's probes carry nothing.
    assert tokened.get("/healthz").status == 200
    assert tokened.get("/readyz").status == 200


def test_token_never_logged(tokened, images, tmp_path):
    img = images["small"]
    tokened.get("/v2/%s/manifests/%s" % (img.repo, img.tag),
                headers={"Authorization": "Bearer " + TOKEN})
    tokened.get("/v2/", headers={"Authorization": "Bearer " + TOKEN + "x"})
    tokened.get("/v2/", headers={"Authorization": basic("u", TOKEN)})
    assert tokened.logs("request"), "debug request lines expected"
    tokened.stop()
    for text in (tokened.log_text(), tokened.stderr()):
        assert TOKEN not in text
        assert TOKEN[:16] not in text
        assert base64.b64encode(("u:" + TOKEN).encode()).decode() not in text


def test_world_readable_token_file_warned(pullproxy_factory, tmp_path):
    path = token_file(tmp_path, mode=0o644)
    pp = pullproxy_factory(args=["--config", str(config(tmp_path, path))])
    warned = pp.logs("client token file readable by every user")
    assert warned and warned[0]["file"] == str(path)


def test_containerd_sends_the_token(tmp_path, registry, images, pullproxy_factory,
                                    containerd):
    """hosts.toml carries the header; without it containerd gets 401 from
    the mirror (no fallback here, so the pull fails)."""
    pp = pullproxy_factory(args=["--config", str(config(tmp_path, token_file(tmp_path)))])
    img = images["small"]
    ref = "%s/%s" % (registry.host, img.ref)

    def pull(header):
        d = tmp_path / ("hosts-%d" % len(header)) / registry.host
        d.mkdir(parents=True)
        (d / "hosts.toml").write_text(
            'server = "http://127.0.0.1:9"\n\n'
            '[host."http://127.0.0.1:%d"]\n'
            '  capabilities = ["pull", "resolve"]\n%s' % (pp.port, header))
        return containerd.ctr("images", "pull", "--plain-http", "--hosts-dir",
                              str(d.parent), "--snapshotter", "native", ref, check=False)

    cp = pull("")
    assert cp.returncode != 0
    assert any(r["status"] == 401 for r in pp.requests())
    cp = pull('  [host."http://127.0.0.1:%d".header]\n'
              '    Authorization = ["Bearer %s"]\n' % (pp.port, TOKEN))
    assert cp.returncode == 0, "ctr pull failed:\n%s\n%s" % (cp.stdout, cp.stderr)
    assert img.digest in containerd.ctr("images", "ls").stdout
