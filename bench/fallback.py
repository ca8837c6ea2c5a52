#!/usr/bin/env python3
"""What containerd does with each answer a mirror can give while the
registry throttles: docs/pacing.md has the findings and the decision.

containerd (Debian's 1.6, started here with its own root and socket) pulls
one small image with `ctr images pull --hosts-dir`, its hosts.toml naming a
mirror (this script's own server on 127.0.0.1) and the registry itself as
`server` (another of this script's servers, serving the image). For each
mirror behaviour the script counts the requests each side got, when, and
whether the pull succeeded:

  503-retry-after  503 TOOMANYREQUESTS with Retry-After: 5
  503              503 TOOMANYREQUESTS without it
  hold             the first request held HOLD_S seconds, then 200 (as
                   pullproxy holding a request until its turn)
  hold-503         the first request held HOLD_S seconds, then 503 with
                   Retry-After: 5, and 503 so at once to the others (a
                   request whose deadline passed)
  429              429 TOOMANYREQUESTS (pullproxy never does this)
  503-registry-429 the mirror 503s and the registry throttles: 429 to all

Usage: bench/fallback.py [MODE...]   (as root; all modes by default)
HOLD_S (environment, default 30) is how long "hold" holds. Prints one
block per mode and a summary table. Bounded: a pull is killed after
HOLD_S + 60 s; everything listens on 127.0.0.1 and stops at the end.
"""
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOLD_S = float(os.environ.get("HOLD_S", "30"))
MODES = ["503-retry-after", "503", "hold", "hold-503", "429",
         "503-registry-429"]
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
TOOMANY = json.dumps({"errors": [{"code": "TOOMANYREQUESTS",
                                  "message": "too many requests"}]}).encode()


def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def make_image(name):
    """A one-layer image whose layer is a real tar (ctr unpacks it)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        data = ("hello from %s\n" % name).encode()
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        t.addfile(info, io.BytesIO(data))
    layer = buf.getvalue()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers",
                                    "diff_ids": [digest(layer)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": MT_LAYER, "digest": digest(layer),
                    "size": len(layer)}]}).encode()
    return manifest, {digest(config): config, digest(layer): layer}


class Server:
    """One HTTP/1.1 server: serves images or misbehaves per self.mode, and
    logs (time, method, path, status) for every request."""

    def __init__(self, name):
        self.name, self.mode, self.images, self.log = name, "serve", {}, []
        self.lock = threading.Lock()
        self.held = False
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                srv.handle(self, head=True)

            def do_GET(self):
                srv.handle(self, head=False)

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass	# containerd resets idle connections: not news

        self.httpd = Quiet(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reply(self, h, status, body, headers=(), head=False):
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)
        with self.lock:
            self.log.append((time.monotonic(), h.command, h.path, status))

    def handle(self, h, head):
        mode = self.mode
        if mode in ("hold", "hold-503"):
            with self.lock:
                first, self.held = not self.held, True
            if first:
                time.sleep(HOLD_S)
            mode = "serve" if mode == "hold" else "503-retry-after"
        if mode in ("503", "503-retry-after"):
            hdr = [("Content-Type", "application/json")]
            if mode == "503-retry-after":
                hdr.append(("Retry-After", "5"))
            return self.reply(h, 503, TOOMANY, hdr, head)
        if mode == "429":
            return self.reply(h, 429, TOOMANY,
                              [("Content-Type", "application/json")], head)
        path = h.path.split("?")[0]
        if path == "/v2/":
            return self.reply(h, 200, b"{}", [], head)
        parts = path[len("/v2/"):].rsplit("/", 2)
        if len(parts) == 3 and parts[1] == "manifests" and parts[0] in self.images:
            manifest, _ = self.images[parts[0]]
            ref = parts[2]
            if ref in ("v1", digest(manifest)):
                return self.reply(h, 200, manifest, [
                    ("Content-Type", MT_MANIFEST),
                    ("Docker-Content-Digest", digest(manifest))], head)
        if len(parts) == 3 and parts[1] == "blobs" and parts[0] in self.images:
            blobs = self.images[parts[0]][1]
            if parts[2] in blobs:
                return self.reply(h, 200, blobs[parts[2]], [
                    ("Content-Type", "application/octet-stream"),
                    ("Docker-Content-Digest", parts[2])], head)
        self.reply(h, 404, b'{"errors":[{"code":"NOT_FOUND"}]}',
                   [("Content-Type", "application/json")], head)

    def take_log(self):
        with self.lock:
            out, self.log, self.held = self.log, [], False
        return out

    def stop(self):
        self.httpd.shutdown()


class Containerd:
    """containerd 1.6 with its own root, state and socket under work."""

    def __init__(self, work):
        self.work = work
        self.sock = os.path.join(work, "c.sock")
        cfg = os.path.join(work, "containerd.toml")
        with open(cfg, "w") as f:
            f.write('version = 2\nroot = "%s/root"\nstate = "%s/state"\n'
                    'disabled_plugins = ["io.containerd.grpc.v1.cri",'
                    ' "io.containerd.snapshotter.v1.aufs",'
                    ' "io.containerd.snapshotter.v1.btrfs",'
                    ' "io.containerd.snapshotter.v1.zfs",'
                    ' "io.containerd.snapshotter.v1.devmapper",'
                    ' "io.containerd.tracing.processor.v1.otlp",'
                    ' "io.containerd.internal.v1.tracing"]\n'
                    '[grpc]\n  address = "%s"\n[ttrpc]\n  address = "%s/t.sock"\n'
                    '[debug]\n  address = ""\n[metrics]\n  address = ""\n'
                    '[plugins."io.containerd.internal.v1.opt"]\n  path = "%s/opt"\n'
                    % (work, work, self.sock, work, work))
        self.proc = subprocess.Popen(["containerd", "--config", cfg],
                                     stdin=subprocess.DEVNULL,
                                     stdout=open(os.path.join(work, "log"), "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.path.exists(self.sock) and subprocess.run(
                    ["ctr", "-a", self.sock, "version"], capture_output=True,
                    timeout=10).returncode == 0:
                return
            time.sleep(0.1)
        raise SystemExit("containerd did not start")

    def pull(self, hosts, ref):
        """The finished ctr, or None when it was still pulling after
        HOLD_S + 60 s (and was killed)."""
        try:
            return subprocess.run(["ctr", "-a", self.sock, "images", "pull",
                                   "--plain-http", "--hosts-dir", hosts,
                                   "--snapshotter", "native", ref],
                                  capture_output=True, text=True,
                                  timeout=HOLD_S + 60)
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)


def describe(mode, t0, mlog, rlog, cp, took):
    def fmt(log):
        return ["  %+6.2fs %-4s %-60s %d" % (t - t0, m, p[:60], s) for t, m, p, s in log]
    ok = cp is not None and cp.returncode == 0
    print("== %s: pull %s in %.1f s; mirror %d requests, registry %d" % (
        mode, "ok" if ok else "still waiting, killed" if cp is None else
        "FAILED", took, len(mlog), len(rlog)))
    print(" mirror:")
    print("\n".join(fmt(mlog)) or "  -")
    print(" registry (server):")
    print("\n".join(fmt(rlog)) or "  -")
    if cp is not None and not ok:
        print(" ctr: " + (cp.stderr.strip().splitlines() or ["?"])[-1][:200])
    return ok, len(mlog), len(rlog), took


def main():
    modes = sys.argv[1:] or MODES
    for m in modes:
        if m not in MODES:
            raise SystemExit("unknown mode %s (%s)" % (m, " ".join(MODES)))
    mirror, registry = Server("mirror"), Server("registry")
    work = tempfile.mkdtemp(prefix="ppfb-", dir="/tmp")
    host = "127.0.0.1:%d" % registry.port
    hosts = os.path.join(work, "hosts")
    os.makedirs(os.path.join(hosts, host))
    with open(os.path.join(hosts, host, "hosts.toml"), "w") as f:
        f.write('server = "http://%s"\n\n[host."http://127.0.0.1:%d"]\n'
                '  capabilities = ["pull", "resolve"]\n' % (host, mirror.port))
    ctd = Containerd(work)
    rows = []
    try:
        print("containerd: %s" % subprocess.run(["containerd", "--version"],
              capture_output=True, text=True).stdout.strip())
        for i, mode in enumerate(modes):
            name = "pacing/img%d" % i	# a fresh image: nothing cached
            registry.images[name] = make_image(name)
            mirror.images = registry.images
            mirror.mode = "503" if mode == "503-registry-429" else mode
            registry.mode = "429" if mode == "503-registry-429" else "serve"
            mirror.take_log(), registry.take_log()
            t0 = time.monotonic()
            cp = ctd.pull(hosts, "%s/%s:v1" % (host, name))
            took = time.monotonic() - t0
            rows.append((mode,) + describe(mode, t0, mirror.take_log(),
                                           registry.take_log(), cp, took))
        print("\n%-18s %-6s %8s %10s %8s" % ("mirror answers", "pull", "mirror",
                                            "registry", "seconds"))
        for mode, ok, nm, nr, took in rows:
            print("%-18s %-6s %8d %10d %8.1f" % (mode, "ok" if ok else "fail",
                                                 nm, nr, took))
    finally:
        ctd.stop()
        mirror.stop()
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
