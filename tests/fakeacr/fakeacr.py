"""Drive the fake Azure Container Registry (tests/fakeacr) from Python.

    from fakeacr import FakeACR, write_image

    write_image(content, "library/hello", "v1", [b"layer bytes"])
    acr = FakeACR().start(tmpdir, content, client_ids=["my-client"])
    ...                       # acr.registry_url, acr.ca, acr.ssl_context()
    acr.add_fault(endpoint="manifests", status=429,
                  headers={"Retry-After": "2"}, count=1)
    acr.requests()            # what the fake was asked, in order
    acr.stop()                # SIGTERM; raises unless the exit status is 0

Standard library only. The binary is $FAKEACR_BIN, else the one in the
default build directory.
"""

import hashlib
import json
import os
from pathlib import Path
import select
import signal
import socket
import ssl
import subprocess
import time
import urllib.request

FAKEACR_BIN = os.environ.get("FAKEACR_BIN", str(
    Path(__file__).resolve().parents[2] / "build" / "tests" / "fakeacr" / "fakeacr"))
LOCALHOST = "127.0.0.1"

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def make_certs(directory):
    """A CA and a server certificate for 127.0.0.1 and localhost, made
    with the openssl command. Returns (ca, cert, key) paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca, ca_key = d / "ca.pem", d / "ca.key"
    cert, key, csr, ext = (d / "server.pem", d / "server.key",
                           d / "server.csr", d / "server.ext")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-nodes"]

    def run(*args):
        subprocess.run(["openssl", *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=fakeacr test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "basicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n"
                   "subjectKeyIdentifier=hash\n"
                   "authorityKeyIdentifier=keyid,issuer\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca),
        "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", "2", "-extfile", str(ext))
    return str(ca), str(cert), str(key)


def _put_blob(repo_dir, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = repo_dir / "blobs" / "sha256" / digest[7:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def _tag(repo_dir, tag, descriptor):
    """Points tag at descriptor in index.json, as skopeo does."""
    index_path = repo_dir / "index.json"
    index = (json.loads(index_path.read_text()) if index_path.exists()
             else {"schemaVersion": 2, "manifests": []})
    index["manifests"] = [m for m in index["manifests"]
                          if m.get("annotations", {}).get(REF_NAME) != tag]
    index["manifests"].append(dict(descriptor, annotations={REF_NAME: tag}))
    index_path.write_text(json.dumps(index))
    (repo_dir / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')


def write_image(content_dir, repo, tag, layers, config=None,
                platform=("linux", "amd64")):
    """Writes a single-platform OCI image into content_dir/<repo>, an OCI
    image layout, and tags it. Returns a dict of manifest, config and
    layer digests and the raw manifest bytes."""
    repo_dir = Path(content_dir) / repo
    if config is None:
        config = {"architecture": platform[1], "os": platform[0],
                  "rootfs": {"type": "layers", "diff_ids": []}}
    config_bytes = json.dumps(config).encode()
    config_digest = _put_blob(repo_dir, config_bytes)
    layer_descs = [{"mediaType": MT_OCI_LAYER, "digest": _put_blob(repo_dir, l),
                    "size": len(l)} for l in layers]
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest,
                   "size": len(config_bytes)},
        "layers": layer_descs}).encode()
    digest = _put_blob(repo_dir, manifest)
    _tag(repo_dir, tag, {"mediaType": MT_OCI_MANIFEST, "digest": digest,
                         "size": len(manifest)})
    return {"manifest": digest, "manifest_bytes": manifest,
            "config": config_digest,
            "layers": [d["digest"] for d in layer_descs]}


class FakeACR:
    """One fakeacr process on four loopback ports."""

    def __init__(self):
        self.proc = None
        self.tls = True
        self.ca = None

    def start(self, tmpdir, content_dir, service="fakeacr.azurecr.io",
              tls=True, access_ttl=None, refresh_ttl=None, tenant=None,
              client_ids=(), users=(), anonymous=False, extra_args=(),
              timeout=15):
        tmp = Path(tmpdir)
        tmp.mkdir(parents=True, exist_ok=True)
        self.service, self.tls, self.tenant = service, tls, tenant
        opts = ["--content", str(content_dir), "--service", service]
        if tls:
            self.ca, cert, key = make_certs(tmp / "certs")
            opts += ["--cert", cert, "--key", key]
        if access_ttl is not None:
            opts += ["--access-ttl", str(access_ttl)]
        if refresh_ttl is not None:
            opts += ["--refresh-ttl", str(refresh_ttl)]
        if tenant is not None:
            opts += ["--tenant", tenant]
        for c in client_ids:
            opts += ["--client-id", c]
        for u in users:
            opts += ["--user", u]
        if anonymous:
            opts.append("--anonymous")
        opts += list(extra_args)
        self.stderr_path = tmp / "fakeacr.stderr"
        # A port free_port() found can be taken before the fake binds it
        # (an outgoing connection's ephemeral port): pick again.
        for attempt in range(3):
            self.ports = {k: free_port()
                          for k in ("registry", "storage", "imds", "control")}
            args = [FAKEACR_BIN,
                    "--listen", f"{LOCALHOST}:{self.ports['registry']}",
                    "--blob-listen", f"{LOCALHOST}:{self.ports['storage']}",
                    "--imds-listen", f"{LOCALHOST}:{self.ports['imds']}",
                    "--control-listen", f"{LOCALHOST}:{self.ports['control']}",
                    *opts]
            with open(self.stderr_path, "wb") as err:
                self.proc = subprocess.Popen(args, stdout=subprocess.PIPE,
                                             stderr=err)
            try:
                self._wait_ready(timeout)
                return self
            except RuntimeError:
                if attempt == 2 or "cannot listen" not in \
                        self.stderr_path.read_text():
                    raise

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready = select.select([self.proc.stdout], [], [], max(left, 0))[0]
            chunk = self.proc.stdout.read1(256) if ready else b""
            if not chunk:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("fakeacr did not start: " +
                                   self.stderr_path.read_text()[-2000:])
            line += chunk
        if line.strip() != b"fakeacr ready":
            raise RuntimeError(f"fakeacr said {line!r}")

    # ---------------------------------------------------------- addresses

    @property
    def scheme(self):
        return "https" if self.tls else "http"

    @property
    def registry(self):
        """host:port, what an image reference or hosts.toml names."""
        return f"{LOCALHOST}:{self.ports['registry']}"

    @property
    def registry_url(self):
        return f"{self.scheme}://{self.registry}"

    @property
    def storage_url(self):
        return f"{self.scheme}://{LOCALHOST}:{self.ports['storage']}"

    @property
    def imds_url(self):
        return f"http://{LOCALHOST}:{self.ports['imds']}"

    @property
    def control_url(self):
        return f"http://{LOCALHOST}:{self.ports['control']}"

    def ssl_context(self):
        return ssl.create_default_context(cafile=self.ca) if self.tls else None

    # ------------------------------------------------------------ control

    def _control(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.control_url + path, data=data,
                                     method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def add_fault(self, **rule):
        """Adds a rule (see README in this directory); returns its id."""
        return self._control("POST", "/faults", rule)["id"]

    def delete_fault(self, rule_id):
        self._control("DELETE", f"/faults/{rule_id}")

    def clear_faults(self):
        self._control("DELETE", "/faults")

    def faults(self):
        return self._control("GET", "/faults")

    def requests(self, listener=None, clear=False):
        """The request log; clear: emptied in the same step, so that a
        caller draining it in turns misses nothing."""
        log = self._control("GET", "/requests?clear=1" if clear else "/requests")
        return [r for r in log if listener is None or r["listener"] == listener]

    def clear_requests(self):
        self._control("DELETE", "/requests")

    def stats(self):
        return self._control("GET", "/stats")

    def revoke_refresh_tokens(self):
        """Every refresh token issued so far is refused from now on (a
        role removed and granted back); returns the new generation."""
        return self._control("POST", "/revoke")["generation"]

    def config(self, **changes):
        """Changes access_ttl, refresh_ttl, imds_ttl, sas_ttl (seconds) or
        anonymous at run time; returns the configuration."""
        if changes:
            return self._control("POST", "/config", changes)
        return self._control("GET", "/config")

    # ---------------------------------------------------------- lifetime

    def stop(self, timeout=15, check=True):
        """SIGTERM and wait; raises if check and the exit status is not 0."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        proc.stdout.close()
        if check and rc != 0:
            raise RuntimeError(f"fakeacr exited with {rc}: " +
                               self.stderr_path.read_text()[-2000:])
        return rc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop(check=exc[0] is None)
