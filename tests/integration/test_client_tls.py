"""TLS towards clients and client certificates ([server] tls_cert_file,
tls_key_file, client_ca_file): a certificate from the CA is a client
credential like the token (enough to listen off loopback); the probes
stay open to clients that present none; containerd presents one from
hosts.toml."""

import http.client
import socket
import ssl
import subprocess
import time

import pytest

from conftest import LOCALHOST, PULLPROXY_BIN, free_port, run

HEADER_TIMEOUT_S = 2


def openssl(*args, cwd):
    run(["openssl", *args], cwd=cwd, timeout=30)


def issue(d, name, ca, ext):
    """A P-256 key and a certificate for it signed by ca."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name, cwd=d)
    (d / (name + ".ext")).write_text(ext + "\n")
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
            "-CAcreateserial", "-days", "2", "-out", name + ".pem",
            "-extfile", name + ".ext", cwd=d)
    return d / (name + ".pem"), d / (name + ".key")


def new_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", name + ".key", "-out", name + ".pem", "-days", "2",
            "-subj", "/CN=" + name, cwd=d)
    return d / (name + ".pem")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    c = {"ca": new_ca(d, "ca"), "other_ca": new_ca(d, "other-ca")}
    c["server"] = issue(d, "server", "ca", "subjectAltName=IP:127.0.0.1\n"
                        "extendedKeyUsage=serverAuth")
    c["client"] = issue(d, "client", "ca", "extendedKeyUsage=clientAuth")
    c["stranger"] = issue(d, "stranger", "other-ca", "extendedKeyUsage=clientAuth")
    return c


def tls_config(tmp_path, certs, client_ca=True, extra=""):
    cfg = tmp_path / "tls.conf"
    cfg.write_text("[server]\ntls_cert_file = %s\ntls_key_file = %s\n%s"
                   "header_timeout_s = %d\n%s" % (
                       certs["server"][0], certs["server"][1],
                       "client_ca_file = %s\n" % certs["ca"] if client_ca else "",
                       HEADER_TIMEOUT_S, extra))
    return cfg


def https(pp, certs, path, client=None):
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    if client:
        ctx.load_cert_chain(*map(str, certs[client]))
    conn = http.client.HTTPSConnection(LOCALHOST, pp.port, context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture
def mtls(pullproxy_factory, tmp_path, certs):
    return pullproxy_factory(args=["--config", str(tls_config(tmp_path, certs))])


def test_client_certificate_required(mtls, certs, registry, images):
    img = images["small"]
    manifest = "/v2/%s/manifests/%s" % (img.repo, img.tag)
    assert https(mtls, certs, manifest, "client") == (200, img.manifest)
    assert https(mtls, certs, "/v2/", "client")[0] == 200
    assert https(mtls, certs, "/metrics", "client")[0] == 200
    mark = registry.mark()
    for path in ("/v2/", manifest, "/metrics"):
        status, body = https(mtls, certs, path)
        assert status == 401 and b"UNAUTHORIZED" in body, (path, status)
    assert registry.requests_since(mark) == []
    # kubelet's probes present no certificate.
    assert https(mtls, certs, "/healthz")[0] == 200
    assert https(mtls, certs, "/readyz")[0] == 200


def test_certificate_from_another_ca_refused(mtls, certs, registry):
    mark = registry.mark()
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        https(mtls, certs, "/v2/", "stranger")
    assert registry.requests_since(mark) == []
    assert https(mtls, certs, "/v2/", "client")[0] == 200


def test_plain_http_gets_nothing(mtls, registry):
    mark = registry.mark()
    s = socket.create_connection((LOCALHOST, mtls.port), timeout=5)
    try:
        s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        data = s.recv(4096)
    except (ConnectionResetError, socket.timeout):
        data = b""
    finally:
        s.close()
    assert not data.startswith(b"HTTP/")
    assert registry.requests_since(mark) == []


def test_silent_tls_client_cut_off(mtls):
    """The handshake is timed like a head: a client that connects and says
    nothing does not hold the connection."""
    s = socket.create_connection((LOCALHOST, mtls.port), timeout=HEADER_TIMEOUT_S + 6)
    t0 = time.monotonic()
    try:
        assert s.recv(100) == b""
    except ConnectionResetError:
        pass
    finally:
        s.close()
    assert time.monotonic() - t0 <= HEADER_TIMEOUT_S + 4


def test_tls_without_client_certificates(pullproxy_factory, tmp_path, certs):
    pp = pullproxy_factory(args=["--config", str(tls_config(tmp_path, certs, client_ca=False))])
    assert https(pp, certs, "/v2/")[0] == 200


def serve(*args):
    return subprocess.run([PULLPROXY_BIN, "serve", *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=10)


def test_off_loopback_with_client_ca_passes_the_check(tmp_path, certs):
    cp = serve("--config", str(tls_config(tmp_path, certs)), "--listen",
               "192.0.2.1:%d" % free_port(), "--cache-dir", str(tmp_path / "c"),
               "--registry", "r.example=http://127.0.0.1:9", "--log", str(tmp_path / "log"))
    assert cp.returncode == 1, cp.stderr
    assert '"cannot listen"' in (tmp_path / "log").read_text()


@pytest.mark.parametrize("case,status,needle", [
    ("key-only", 2, "[server] tls_cert_file: missing"),
    ("ca-without-tls", 2, "[server] client_ca_file: only used with TLS"),
    ("no-cert-file", 1, "[server] tls_cert_file: "),
    ("wrong-key", 1, "[server] tls_key_file: "),
    ("no-ca-file", 1, "[server] client_ca_file: "),
])
def test_tls_config_errors(tmp_path, certs, case, status, needle):
    srv, key = certs["server"]
    body = {
        "key-only": "tls_key_file = %s\n" % key,
        "ca-without-tls": "client_ca_file = %s\nclient_token_file = /x\n" % certs["ca"],
        "no-cert-file": "tls_cert_file = %s\ntls_key_file = %s\n" % (tmp_path / "absent", key),
        "wrong-key": "tls_cert_file = %s\ntls_key_file = %s\n" % (srv, certs["client"][1]),
        "no-ca-file": "tls_cert_file = %s\ntls_key_file = %s\nclient_ca_file = %s\n" % (
            srv, key, tmp_path / "absent"),
    }[case]
    cfg = tmp_path / "bad.conf"
    cfg.write_text("[server]\n" + body)
    cp = serve("--config", str(cfg), "--listen", "127.0.0.1:%d" % free_port(),
               "--cache-dir", str(tmp_path / "c"), "--registry",
               "r.example=http://127.0.0.1:9", "--log", str(tmp_path / "log"))
    assert cp.returncode == status, cp.stderr
    lines = cp.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pullproxy: " + needle), cp.stderr


def test_containerd_presents_its_certificate(tmp_path, registry, images, mtls, certs,
                                             containerd):
    img = images["small"]
    ref = "%s/%s" % (registry.host, img.ref)
    d = tmp_path / "hosts" / registry.host
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(
        'server = "http://127.0.0.1:9"\n\n'
        '[host."https://127.0.0.1:%d"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        '  ca = "%s"\n'
        '  client = [["%s", "%s"]]\n' % (mtls.port, certs["ca"], *certs["client"]))
    cp = containerd.ctr("images", "pull", "--hosts-dir", str(d.parent),
                        "--snapshotter", "native", ref, check=False)
    assert cp.returncode == 0, "ctr pull failed:\n%s\n%s" % (cp.stdout, cp.stderr)
    assert img.digest in containerd.ctr("images", "ls").stdout
    assert not [r for r in mtls.requests() if r["status"] == 401]
