"""Integration harness: the real pullproxy binary against a real registry.

Everything runs on 127.0.0.1 with ports picked at run time, in temporary
directories, and every process started here is stopped at teardown.

  registry            docker-registry (distribution 2.8) on a temp filesystem,
                      its access log kept so tests can see what it was asked
  images              OCI images built here in pure Python, pushed with skopeo
  big_blob/mid_blob   large blobs streamed into the registry with its API
  pullproxy_factory   starts pullproxy; teardown SIGTERMs it and checks exit 0
  containerd          containerd 1.6 with its own root, state and socket
"""

import gzip
import hashlib
import http.client
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PULLPROXY_BIN = os.environ.get("PULLPROXY_BIN", str(ROOT / "build" / "pullproxy"))
SANITIZED = os.environ.get("PP_SANITIZED") == "1"
LOCALHOST = "127.0.0.1"

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT_ALL = ", ".join([
    MT_OCI_INDEX, MT_OCI_MANIFEST,
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])

FIXED_MTIME = 1700000000  # layers are byte-for-byte reproducible
MiB = 1024 * 1024
GiB = 1024 * MiB


# --------------------------------------------------------------- utilities

def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def closed_port():
    """A port that refuses connections (bound, never listening, so that
    nothing else can take it while the test runs). Returns (port, socket):
    keep the socket open as long as the port must stay refused."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((LOCALHOST, 0))
    return s.getsockname()[1], s


def metrics(pp):
    """pullproxy's /metrics as {series: value}."""
    r = pp.get("/metrics")
    assert r.status == 200
    assert r.header("Content-Type").startswith("text/plain; version=0.0.4")
    out = {}
    for line in r.body.decode().splitlines():
        if line.startswith("#") or not line:
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def wait_for(predicate, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


def settled(read, done, timeout=10, interval=0.05):
    """read() once done(read()) holds, or as it is after timeout s, so
    that the assertion after it fails showing what was there."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def port_open(port, host=LOCALHOST):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def stop_process(proc, sig=signal.SIGTERM, timeout=10):
    """Signal, wait up to timeout, then SIGKILL. Returns the exit status."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def run(cmd, timeout=120, check=True, **kw):
    """subprocess.run with a timeout, text output captured."""
    cp = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, timeout=timeout, **kw)
    if check and cp.returncode != 0:
        raise AssertionError("%s exited %d\nstdout:\n%s\nstderr:\n%s" % (
            " ".join(map(str, cmd)), cp.returncode, cp.stdout, cp.stderr))
    return cp


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name):
        return self.headers.get(name)

    def json(self):
        return json.loads(self.body)

    def error_code(self):
        """The first OCI error code of the body, which must be OCI JSON."""
        doc = json.loads(self.body)
        assert isinstance(doc.get("errors"), list) and doc["errors"], doc
        return doc["errors"][0]["code"]


def http_request(port, method, path, headers=None, body=None, timeout=30,
                 host=LOCALHOST):
    """One request on a fresh connection; the whole body is read."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.headers, data)
    finally:
        conn.close()


def sha256_digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- registry

BARRIER = "pp-test-barrier="
ACCESS_RE = re.compile(
    r'^(?P<addr>\S+) \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" '
    r'(?P<status>\d{3}) \S+ "[^"]*" "(?P<ua>[^"]*)"')


@dataclass
class RegistryRequest:
    method: str
    uri: str
    status: int
    user_agent: str


class Registry:
    """docker-registry serve, filesystem storage, no auth, on 127.0.0.1.
    Its access log (stdout, combined format) is kept: tests use it to see
    what reached the registry and from which client."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.host = "%s:%d" % (LOCALHOST, self.port)
        self.url = "http://" + self.host
        self.access_log = self.workdir / "access.log"
        self.error_log = self.workdir / "registry.log"
        self.proc = None
        self._barriers = 0

    def start(self):
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "config.yml"
        cfg.write_text(
            "version: 0.1\n"
            "log:\n"
            "  level: error\n"
            "storage:\n"
            "  filesystem:\n"
            "    rootdirectory: %s\n"
            "  delete:\n"
            "    enabled: true\n"
            "  maintenance:\n"
            "    uploadpurging:\n"
            "      enabled: false\n"
            "http:\n"
            "  addr: %s\n" % (storage, self.host))
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(cfg)],
            stdout=open(self.access_log, "wb"), stderr=open(self.error_log, "wb"),
            stdin=subprocess.DEVNULL, start_new_session=True)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("docker-registry exited %s: %s" % (
                    self.proc.returncode, self.error_log.read_text(errors="replace")))
            try:
                return http_request(self.port, "GET", "/v2/", timeout=2).status == 200
            except OSError:
                return False
        wait_for(ready, 30, "docker-registry on %s" % self.host)

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, timeout=10)

    def _logged(self):
        out = []
        try:
            text = self.access_log.read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            m = ACCESS_RE.match(line)
            if m:
                out.append(RegistryRequest(m["method"], m["uri"], int(m["status"]), m["ua"]))
        return out

    def requests(self):
        """What the registry logged, after a barrier: distribution writes
        a request's line only once it has answered it, so a client can be
        done before the line is there. A request of our own, sent after,
        once seen in the log, means the lines of the ones answered before
        it are there too (a new round trip outlasts the gap)."""
        self._barriers += 1
        token = BARRIER + "%d.%d" % (os.getpid(), self._barriers)
        try:
            http_request(self.port, "GET", "/v2/?" + token, timeout=10)
        except OSError:
            return self._logged()       # stopped: nothing more will come

        def logged_with_barrier():
            logged = self._logged()
            return logged if any(r.uri.endswith(token) for r in logged) else None
        out = wait_for(logged_with_barrier, 10, "the registry's access log")
        return [r for r in out if BARRIER not in r.uri]

    def mark(self):
        """A position in the access log, for requests_since()."""
        return len(self.requests())

    def requests_since(self, mark, done=None, timeout=10):
        """The requests since mark; with done, once done(requests) holds,
        or as they are after timeout s (with the barrier alone, a full
        run once still missed a line the test counted)."""
        if done is None:
            return self.requests()[mark:]
        return settled(lambda: self.requests()[mark:], done, timeout, 0.2)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry"))
    try:
        reg.start()
        yield reg
    finally:
        reg.stop()


# ---------------------------------------------------------- image builder

def make_layer(files):
    """A reproducible gzip'd tar of {path: bytes}; returns (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = set()
        for path in sorted(files):
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type = tarfile.DIRTYPE
                    ti.mode = 0o755
                    ti.mtime = FIXED_MTIME
                    tar.addfile(ti)
            data = files[path]
            ti = tarfile.TarInfo(path)
            ti.size = len(data)
            ti.mode = 0o644
            ti.mtime = FIXED_MTIME
            tar.addfile(ti, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    blob = gzip.compress(tar_bytes, compresslevel=6, mtime=0)
    return blob, sha256_digest(tar_bytes)


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Image:
    repo: str
    tag: str
    manifest: bytes            # what the tag points at (manifest or index)
    media_type: str
    blobs: dict = field(default_factory=dict)       # digest -> bytes, every blob
    layers: list = field(default_factory=list)      # layer digests, in order
    config_digest: str = ""
    children: list = field(default_factory=list)    # for an index: Images
    layout: Path = None

    @property
    def digest(self):
        return sha256_digest(self.manifest)

    @property
    def ref(self):
        return "%s:%s" % (self.repo, self.tag)


class OCILayout:
    """An OCI image layout directory: oci-layout, index.json, blobs/sha256."""

    def __init__(self, path):
        self.path = Path(path)
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.refs = []

    def add_blob(self, data, media_type):
        digest = sha256_digest(data)
        (self.path / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def tag(self, descriptor, tag):
        d = dict(descriptor)
        d["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.refs.append(d)
        (self.path / "index.json").write_bytes(canonical_json(
            {"schemaVersion": 2, "manifests": self.refs}))


def build_manifest(layout, repo, tag, layer_files, arch="amd64", os_name="linux"):
    """An image manifest with one layer per entry of layer_files."""
    img = Image(repo=repo, tag=tag, manifest=b"", media_type=MT_OCI_MANIFEST,
                layout=layout.path)
    layer_descs, diff_ids = [], []
    for files in layer_files:
        blob, diff_id = make_layer(files)
        layer_descs.append(layout.add_blob(blob, MT_OCI_LAYER_GZIP))
        diff_ids.append(diff_id)
        img.blobs[sha256_digest(blob)] = blob
        img.layers.append(sha256_digest(blob))
    config = canonical_json({
        "architecture": arch, "os": os_name,
        "created": "2023-11-14T22:13:20Z",
        "config": {"Cmd": ["/hello"], "Env": ["PATH=/"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "pullproxy tests"}
                    for _ in diff_ids],
    })
    config_desc = layout.add_blob(config, MT_OCI_CONFIG)
    img.blobs[config_desc["digest"]] = config
    img.config_digest = config_desc["digest"]
    img.manifest = canonical_json({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
        "config": config_desc, "layers": layer_descs})
    return img


def build_image(workdir, repo, tag, layer_files):
    layout = OCILayout(workdir)
    img = build_manifest(layout, repo, tag, layer_files)
    layout.tag(layout.add_blob(img.manifest, MT_OCI_MANIFEST), tag)
    return img


def build_index(workdir, repo, tag, platforms):
    """A multi-platform image: an index over one manifest per platform.
    platforms: [(arch, layer_files)]."""
    layout = OCILayout(workdir)
    children, descs = [], []
    for arch, layer_files in platforms:
        child = build_manifest(layout, repo, tag, layer_files, arch=arch)
        d = layout.add_blob(child.manifest, MT_OCI_MANIFEST)
        d["platform"] = {"architecture": arch, "os": "linux"}
        descs.append(d)
        children.append(child)
    index = canonical_json({"schemaVersion": 2, "mediaType": MT_OCI_INDEX,
                            "manifests": descs})
    layout.tag(layout.add_blob(index, MT_OCI_INDEX), tag)
    img = Image(repo=repo, tag=tag, manifest=index, media_type=MT_OCI_INDEX,
                children=children, layout=layout.path)
    for c in children:
        img.blobs.update(c.blobs)
    return img


def skopeo(*args, timeout=120):
    return run(["skopeo", "--insecure-policy", *args], timeout=timeout)


def push_image(img, registry):
    """skopeo copy from the layout to the registry; the registry must then
    serve exactly the manifest bytes built here."""
    extra = ["--all"] if img.children else ["--format", "oci"]
    skopeo("copy", "--quiet", "--dest-tls-verify=false", *extra,
           "oci:%s:%s" % (img.layout, img.tag),
           "docker://%s/%s" % (registry.host, img.ref))
    r = http_request(registry.port, "GET", "/v2/%s/manifests/%s" % (img.repo, img.tag),
                     headers={"Accept": ACCEPT_ALL})
    assert r.status == 200, r
    assert r.body == img.manifest, "skopeo rewrote the manifest of %s" % img.ref
    return img


@pytest.fixture(scope="session")
def images(registry, tmp_path_factory):
    """Images pushed once for the session:
      small  two-layer amd64 image (pp/small:v1), the same as pp/small:v2
      multi  an index over amd64 and arm64 manifests (pp/multi:v1)"""
    root = tmp_path_factory.mktemp("images")
    rnd = random.Random(1234)
    small = build_image(root / "small", "pp/small", "v1", [
        {"hello": b"#!/bin/sh\necho hello from pullproxy\n",
         "etc/os-release": b"ID=pullproxy-test\n"},
        {"data/random.bin": rnd.randbytes(300 * 1024),
         "data/text.txt": b"pullproxy " * 5000},
    ])
    push_image(small, registry)
    # A second tag on the same manifest, for tags/list.
    skopeo("copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
           "docker://%s/pp/small:v1" % registry.host,
           "docker://%s/pp/small:v2" % registry.host)
    multi = build_index(root / "multi", "pp/multi", "v1", [
        ("amd64", [{"arch": b"amd64\n"}]),
        ("arm64", [{"arch": b"arm64\n"}]),
    ])
    push_image(multi, registry)
    return {"small": small, "multi": multi}


# ---------------------------------------------------------- big blobs

def blob_chunks(seed, size, block=MiB):
    """size deterministic bytes, in block-sized pieces: one pseudo-random
    block repeated, each copy stamped with its index so no two are equal."""
    base = random.Random(seed).randbytes(block)
    sent, i = 0, 0
    while sent < size:
        piece = (i.to_bytes(8, "big") + base[8:])[:min(block, size - sent)]
        yield piece
        sent += len(piece)
        i += 1


def _location_path(location):
    u = urllib.parse.urlsplit(location)
    return u.path + ("?" + u.query if u.query else "")


def push_blob_stream(registry, repo, chunks, patch_size=64 * MiB, timeout=300):
    """Upload a blob through the registry API, streamed: POST, PATCHes of
    patch_size from the chunks iterator (hashed on the way), then PUT with
    the digest. Never holds more than one chunk. Returns (digest, size)."""
    conn = http.client.HTTPConnection(LOCALHOST, registry.port, timeout=timeout)
    try:
        conn.request("POST", "/v2/%s/blobs/uploads/" % repo,
                     headers={"Content-Length": "0"})
        r = conn.getresponse()
        r.read()
        assert r.status == 202, "POST upload: %d" % r.status
        location = _location_path(r.getheader("Location"))
        h = hashlib.sha256()
        offset = 0
        it = iter(chunks)
        pending = next(it, None)

        def group():
            # The next patch_size bytes (at least one chunk), hashed as sent.
            nonlocal pending
            n = 0
            while pending is not None and (n == 0 or n + len(pending) <= patch_size):
                piece = pending
                n += len(piece)
                h.update(piece)
                yield piece
                pending = next(it, None)

        while pending is not None:
            conn.request("PATCH", location, body=group(), encode_chunked=True,
                         headers={"Content-Type": "application/octet-stream"})
            r = conn.getresponse()
            r.read()
            assert r.status == 202, "PATCH upload at %d: %d" % (offset, r.status)
            rng = r.getheader("Range", "")
            offset = int(rng.rsplit("-", 1)[1]) + 1 if "-" in rng else offset
            location = _location_path(r.getheader("Location"))
        digest = "sha256:" + h.hexdigest()
        sep = "&" if "?" in location else "?"
        conn.request("PUT", location + sep + "digest=" + urllib.parse.quote(digest),
                     headers={"Content-Length": "0"})
        r = conn.getresponse()
        r.read()
        assert r.status == 201, "PUT upload: %d" % r.status
        return digest, offset
    finally:
        conn.close()


@dataclass
class BigBlob:
    repo: str
    digest: str
    size: int
    seed: int

    def chunks(self):
        return blob_chunks(self.seed, self.size)


def _big_blob(registry, repo, size, seed):
    digest, stored = push_blob_stream(registry, repo, blob_chunks(seed, size))
    assert stored == size, (stored, size)
    r = http_request(registry.port, "HEAD", "/v2/%s/blobs/%s" % (repo, digest))
    assert r.status == 200 and int(r.header("Content-Length")) == size
    return BigBlob(repo, digest, size, seed)


@pytest.fixture(scope="session")
def big_blob(registry):
    """1 GiB blob in pp/big."""
    return _big_blob(registry, "pp/big", GiB, seed=42)


@pytest.fixture(scope="session")
def mid_blob(registry):
    """64 MiB blob in pp/mid: far more than pullproxy and the kernel buffer."""
    return _big_blob(registry, "pp/mid", 64 * MiB, seed=7)


# ---------------------------------------------------------------- pullproxy

class PullProxy:
    """One pullproxy process on 127.0.0.1, logging JSON at debug level."""

    def __init__(self, workdir, registries, args=None, log_level="debug", port=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.port_picked = port is None
        self.log_path = self.workdir / "pullproxy.log"
        self.stderr_path = self.workdir / "stderr.log"
        self.cache_dir = self.workdir / "cache"
        self.cache_dir.mkdir(exist_ok=True)
        self.argv = [PULLPROXY_BIN, "serve", "--listen", "%s:%d" % (LOCALHOST, self.port),
                     "--cache-dir", str(self.cache_dir),
                     "--log", str(self.log_path), "--log-level", log_level]
        for name, url in registries:
            self.argv += ["--registry", "%s=%s" % (name, url)]
        self.argv += list(args or [])
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid

    def start(self, timeout=20):
        for attempt in range(3):
            try:
                return self._start(timeout)
            except AssertionError:
                # The port free_port() found was taken before pullproxy
                # bound it (an ephemeral port of some connection): re-pick.
                if attempt == 2 or not self.port_picked or \
                        not self.logs("cannot listen"):
                    raise
                old = "%s:%d" % (LOCALHOST, self.port)
                self.port = free_port()
                self.argv[self.argv.index(old)] = "%s:%d" % (LOCALHOST, self.port)
                self.log_path.unlink()

    def _start(self, timeout):
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=open(self.workdir / "stdout.log", "wb"),
                                     stderr=open(self.stderr_path, "wb"))

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("pullproxy exited %s at start\nstderr: %s\nlog: %s" % (
                    self.proc.returncode, self.stderr_path.read_text(errors="replace"),
                    self.log_text()))
            return any(l.get("msg") == "listening" for l in self.log_lines()) and \
                port_open(self.port)
        wait_for(ready, timeout, "pullproxy to listen on %d" % self.port)
        return self

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, strict=False):
        """Parsed log lines. A line being written right now may be cut:
        only complete lines count. strict: every line must be JSON with
        time, level and msg."""
        out = []
        text = self.log_text()
        complete = text[:text.rfind("\n") + 1]
        for line in complete.splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                if strict:
                    raise AssertionError("log line is not JSON: %r" % line)
                continue
            if strict:
                assert isinstance(obj, dict) and all(k in obj for k in ("time", "level", "msg")), line
            out.append(obj)
        return out

    def logs(self, msg):
        return [l for l in self.log_lines() if l.get("msg") == msg]

    def requests(self):
        """The "request" lines, each with "route" added: its path without
        the query."""
        out = []
        for l in self.logs("request"):
            l = dict(l)
            l["route"] = urllib.parse.urlsplit(l.get("path", "")).path
            out.append(l)
        return out

    def requests_when(self, done, timeout=10):
        """The request lines once done(lines) holds, or as they are after
        timeout s. A line is written when its reply has ended: with the
        body relayed on by a peer or a chained pullproxy, the test can be
        there first."""
        return settled(self.requests, done, timeout)

    def request(self, method, path, headers=None, timeout=30):
        return http_request(self.port, method, path, headers=headers, timeout=timeout)

    def get(self, path, headers=None, timeout=30):
        return self.request("GET", path, headers, timeout)

    def head(self, path, headers=None, timeout=30):
        return self.request("HEAD", path, headers, timeout)

    def stop(self, timeout=10):
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return None
        return stop_process(self.proc, signal.SIGTERM, timeout)

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@pytest.fixture
def pullproxy_factory(tmp_path, registry):
    """Start pullproxy instances: factory(registries=None, args=None, ...).
    registries defaults to the session registry under its own host name.
    At teardown each gets SIGTERM and must exit 0 within 10 s, and every
    log line must be JSON."""
    started = []

    def factory(registries=None, args=None, log_level="debug", start=True):
        if registries is None:
            registries = [(registry.host, registry.url)]
        pp = PullProxy(tmp_path / ("pullproxy%d" % len(started)), registries, args, log_level)
        started.append(pp)
        if start:
            pp.start()
        return pp

    yield factory
    problems = []
    for pp in started:
        if pp.proc is None:
            continue
        running = pp.proc.poll() is None
        rc = pp.stop(timeout=10)
        if running and rc != 0:
            problems.append("pullproxy on %d exited %s after SIGTERM (-9: killed after 10 s)\n"
                            "stderr: %s\nlog tail: %s" % (pp.port, rc, pp.stderr()[-3000:],
                                                         pp.log_text()[-3000:]))
        try:
            pp.log_lines(strict=True)
        except AssertionError as e:
            problems.append(str(e))
    assert not problems, "\n".join(problems)


@pytest.fixture
def pullproxy(pullproxy_factory):
    """pullproxy in front of the session registry (its default)."""
    return pullproxy_factory()


# ---------------------------------------------------------------- sentinel

class Sentinel:
    """A TCP listener that counts connections and closes them at once:
    proof that nothing was contacted."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOCALHOST, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            c.close()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def sentinel():
    s = Sentinel()
    yield s
    s.close()


# ---------------------------------------------------------------- containerd

class Containerd:
    def __init__(self, workdir, extra_config=""):
        """extra_config: TOML appended to the config (e.g. a CRI
        registry config_path); self.config is the file's path."""
        self.workdir = Path(workdir)
        self.extra_config = extra_config
        self.config = self.workdir / "containerd.toml"
        # unix socket paths must stay under 108 bytes: a short dir in /tmp.
        self.short = Path(tempfile.mkdtemp(prefix="ppctd-", dir="/tmp"))
        self.sock = str(self.short / "c.sock")
        self.log = self.workdir / "containerd.log"
        self.proc = None

    def start(self):
        root = self.workdir / "root"
        root.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "containerd.toml"
        cfg.write_text(
            'version = 2\n'
            'root = "%(root)s"\n'
            'state = "%(state)s"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri",'
            ' "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",'
            ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",'
            ' "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]\n'
            '[grpc]\n'
            '  address = "%(sock)s"\n'
            '[ttrpc]\n'
            '  address = "%(ttrpc)s"\n'
            '[debug]\n'
            '  address = ""\n'
            '  level = "info"\n'
            '[metrics]\n'
            '  address = ""\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            '  path = "%(opt)s"\n'
            % {"root": root, "state": self.short / "state", "sock": self.sock,
               "ttrpc": self.short / "t.sock", "opt": self.workdir / "opt"}
            + self.extra_config)
        self.proc = subprocess.Popen(["containerd", "--config", str(cfg)],
                                     stdin=subprocess.DEVNULL,
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("containerd exited %s: %s" % (
                    self.proc.returncode, self.log.read_text(errors="replace")[-3000:]))
            if not os.path.exists(self.sock):
                return False
            return self.ctr("version", check=False, timeout=10).returncode == 0
        wait_for(ready, 30, "containerd on %s" % self.sock, interval=0.1)

    def ctr(self, *args, check=True, timeout=120):
        return run(["ctr", "-a", self.sock, *args], check=check, timeout=timeout)

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, timeout=10)
        shutil.rmtree(self.short, ignore_errors=True)


@pytest.fixture
def containerd(tmp_path):
    c = Containerd(tmp_path / "containerd")
    try:
        c.start()
        yield c
    finally:
        c.stop()
