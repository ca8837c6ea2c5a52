#!/usr/bin/python3
"""pullproxy against its peers, side by side on loopback, in one run.

Started by bench/run.sh (which builds, makes the work directory and bounds
the run with a hard timeout); see bench/README.md for what each scenario
does and how its figures are taken. Python 3 standard library only.

Everything listens on 127.0.0.1; every process started here is stopped at
the end, whatever happens (the work directory is removed by run.sh).
"""
import argparse
import hashlib
import http.client
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

MiB = 1 << 20
GiB = 1 << 30
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
SCENARIOS = ["warm", "cold", "manifests", "memory", "churn", "burst", "pacing"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
BLOCK = MiB

# Sizes and counts (the brief's; run.sh's environment may scale the slow ones
# down for a quick try, and the header then says so).
WARM_SIZE = 256 * MiB
WARM_CLIENTS = 4
WARM_TARGET_S = 11.0		# aim for this long per server
COLD_SIZE = 128 * MiB
COLD_CLIENTS = 32
MEM_SIZE = 1 * GiB
MEM_CLIENTS = 8
UPSTREAM_RATE = 64 * MiB	# bytes/s per connection at the upstream front
# The front: "relay" (default), bench.py's own pacing TCP relay, or "nginx"
# (limit_rate; see the header's note on why it is not the default).
FRONT = os.environ.get("BENCH_FRONT", "relay")
# Cold burst and churn clients: "splice" (default; bench.py's own, socket to
# file without a copy through user space) or "curl" (curl -o FILE).
CLIENT = os.environ.get("BENCH_CLIENT", "splice")
WRK_ARGS = ["-t2", "-c16", "-d10s"]
CHURN_BUDGET = 1 * GiB
CHURN_BLOB = 64 * MiB
CHURN_ROUNDS = 5		# rounds of a budget's worth of new blobs after the fill
MEM_SAMPLE_S = 0.05
SHORT_TTL = 2			# the manifests scenario's second pullproxy
# burst: pods pulling at once from a fake ACR that throttles at a fixed rate.
BURST_PODS = 50
BURST_IMAGES = 20
BURST_LAYERS = 3		# plus a config: 1 HEAD + 1 manifest + 4 blobs a pull
BURST_LAYER_SIZE = 128 * 1024
BURST_ACR_RATE = 20		# the fake ACR's reads per second (429 beyond)
BURST_ACR_BURST = 20
BURST_PP_RATE = 15		# pullproxy's pace: below the registry's
BURST_PP_BURST = 15
BURST_RETRIES_429 = 5		# containerd: 429 retried at once, same host
# pacing: K nodes, each a pullproxy with its defaults (rate 10, burst 20,
# max_wait_s 30), pulling distinct images at once through one registry
# that answers 429 (no Retry-After, as ACR) beyond its reads/s; a request
# a node answers with an error goes to the registry itself (hosts.toml's
# server), as containerd does.
PACING_NODES = 4
PACING_IMAGES = 6		# per node, 24 distinct pulls in all
PACING_LAYERS = 2		# plus a config: 4 reads a pull at least (5 direct)
PACING_LAYER_SIZE = 64 * 1024
PACING_ACR_RATE = 4		# the registry's reads per second (429 beyond)
PACING_ACR_BURST = 4
PACING_TIMEOUT_S = 100

PP_NAME = "pullproxy"
PEER_STATIC = "nginx static"
PEER_NGXCACHE = "nginx proxy_cache"
PEER_REGPROXY = "docker-registry proxy"


class Stop(Exception):
	"""SIGTERM/SIGINT: unwind, stop everything, keep what was printed."""


def on_signal(signum, frame):
	raise Stop("signal %d" % signum)


def progress(msg):
	sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), msg))
	sys.stderr.flush()


class Out:
	"""The report: stdout and bench/results/latest.txt, line by line."""

	def __init__(self, path):
		self.path = path
		os.makedirs(os.path.dirname(path), exist_ok=True)
		self.f = open(path + ".partial", "w")

	def line(self, s=""):
		sys.stdout.write(s + "\n")
		sys.stdout.flush()
		self.f.write(s + "\n")
		self.f.flush()

	def table(self, headers, rows, left=1):
		"""Fixed width: the first `left` columns left-aligned, others right."""
		rows = [[("-" if c is None else str(c)) for c in r] for r in rows]
		w = [len(h) for h in headers]
		for r in rows:
			for i, c in enumerate(r):
				w[i] = max(w[i], len(c))

		def fmt(r):
			cells = []
			for i, c in enumerate(r):
				cells.append(c.ljust(w[i]) if i < left else c.rjust(w[i]))
			return "  ".join(cells).rstrip()
		self.line(fmt(headers))
		self.line("  ".join("-" * x for x in w))
		for r in rows:
			self.line(fmt(r))

	def close(self):
		self.f.close()
		os.replace(self.path + ".partial", self.path)


def f1(x):
	return None if x is None else "%.1f" % x


def f2(x):
	return None if x is None else "%.2f" % x


def f3(x):
	return None if x is None else "%.3f" % x


def gib_of(r):
	return max(r["bytes"], 1) / GiB


def ratio(a, b):
	if a is None or b is None or b == 0:
		return None
	return a / b


def rx(x):
	return None if x is None else "x%.2f" % x


# ---------------------------------------------------------------- processes

class Procs:
	"""Every long-running process this run starts, stopped at the end."""

	def __init__(self):
		self.procs = []

	def start(self, name, argv, log_path, cwd=None):
		logf = open(log_path, "ab")
		p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
		    stderr=subprocess.STDOUT, cwd=cwd)
		logf.close()
		self.procs.append((name, p))
		return p

	def stop(self, p, grace=10.0):
		if p.poll() is None:
			try:
				p.send_signal(signal.SIGTERM)
			except ProcessLookupError:
				pass
			try:
				p.wait(grace)
			except subprocess.TimeoutExpired:
				progress("%d did not stop in %.0f s: SIGKILL" % (p.pid, grace))
				p.kill()
				p.wait()
		self.procs = [(n, q) for n, q in self.procs if q is not p]

	def stop_all(self):
		for name, p in reversed(list(self.procs)):
			self.stop(p)


def free_port():
	s = socket.socket()
	s.bind(("127.0.0.1", 0))
	port = s.getsockname()[1]
	s.close()
	return port


def wait_http(url, proc, timeout=20.0):
	"""Until url answers anything over HTTP; False if proc died or time ran out."""
	u = urllib.parse.urlsplit(url)
	end = time.monotonic() + timeout
	while time.monotonic() < end:
		if proc.poll() is not None:
			return False
		try:
			c = http.client.HTTPConnection(u.hostname, u.port, timeout=2)
			c.request("GET", u.path or "/")
			c.getresponse().read()
			c.close()
			return True
		except OSError:
			time.sleep(0.1)
	return False


def tail(path, n=5):
	try:
		with open(path, "rb") as f:
			lines = f.read().decode("utf-8", "replace").splitlines()
		return " | ".join(lines[-n:])
	except OSError:
		return ""


def proc_stat(pid):
	"""(ppid, utime+stime+cutime+cstime in ticks) or None."""
	try:
		with open("/proc/%d/stat" % pid) as f:
			s = f.read()
	except OSError:
		return None
	rest = s[s.rfind(")") + 2:].split()
	return int(rest[1]), sum(int(x) for x in rest[11:15])


def proc_tree(pid):
	"""pid and all its descendants (no /proc/PID/task/*/children here)."""
	parent = {}
	for d in os.listdir("/proc"):
		if d.isdigit():
			st = proc_stat(int(d))
			if st:
				parent[int(d)] = st[0]
	out, todo = [], [pid]
	while todo:
		p = todo.pop()
		if p in out:
			continue
		out.append(p)
		todo.extend(c for c, pp in parent.items() if pp == p)
	return out


def cpu_seconds(pid):
	"""utime+stime of the server and its live workers, plus reaped children."""
	t = 0
	for p in proc_tree(pid):
		st = proc_stat(p)
		if st:
			t += st[1]
	return t / CLK_TCK


def rss_anon_kib(pids):
	t = 0
	for p in pids:
		try:
			with open("/proc/%d/status" % p) as f:
				for ln in f:
					if ln.startswith("RssAnon:"):
						t += int(ln.split()[1])
						break
		except OSError:
			pass
	return t


class RssSampler(threading.Thread):
	"""Sum of RssAnon over a server's processes every 50 ms; keeps the peak."""

	def __init__(self, pid):
		super().__init__(daemon=True)
		self.pid = pid
		self.peak = 0
		self.samples = 0
		self.halt = threading.Event()
		self.pids = proc_tree(pid)

	def run(self):
		n = 0
		while not self.halt.is_set():
			if n % 20 == 0:	# workers may come and go; refresh each second
				self.pids = proc_tree(self.pid)
			n += 1
			self.peak = max(self.peak, rss_anon_kib(self.pids))
			self.samples += 1
			self.halt.wait(MEM_SAMPLE_S)

	def stop(self):
		self.halt.set()
		self.join()
		return self.peak / 1024.0	# MiB


def damon_note():
	"""This machine's DAMON pageout, if on: it evicts memory idle for a while,
	so page-cache content (upstream blobs, data.mdb) may be read from disk."""
	base = "/sys/kernel/mm/damon/admin/kdamonds"
	try:
		for k in os.listdir(base):
			with open(os.path.join(base, k, "state")) as f:
				if f.read().strip() != "on":
					continue
			ctx = os.path.join(base, k, "contexts", "0")
			sch = os.path.join(ctx, "schemes", "0")
			with open(os.path.join(sch, "action")) as f:
				action = f.read().strip()
			with open(os.path.join(sch, "access_pattern", "age", "min")) as f:
				age = int(f.read())
			with open(os.path.join(ctx, "monitoring_attrs", "intervals", "aggr_us")) as f:
				aggr = int(f.read()) / 1e6
			return ("DAMON %s is on: memory untouched for about %.0f s is reclaimed, "
			    "so page-cache content may be read from disk again" % (action, age * aggr))
	except (OSError, ValueError):
		pass
	return None


def machine_idle():
	"""(idle+iowait, total) jiffies from /proc/stat."""
	with open("/proc/stat") as f:
		v = [int(x) for x in f.readline().split()[1:]]
	return v[3] + v[4], sum(v[:8])


def children_cpu():
	r = resource.getrusage(resource.RUSAGE_CHILDREN)
	return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------- content

_BASE = None


def base_block():
	global _BASE
	if _BASE is None:
		_BASE = random.Random(20261123).randbytes(BLOCK)
	return _BASE


def blob_blocks(blob_id, size):
	"""Deterministic pseudo-random content: one random 1 MiB block with the
	blob's id and the block's index stamped in front, so every block and
	every blob differs; streamed, never whole in memory."""
	base = base_block()
	tag = blob_id.encode()[:48].ljust(48, b".")
	off, i = 0, 0
	while off < size:
		n = min(BLOCK, size - off)
		b = tag + i.to_bytes(8, "big") + base[56:]
		yield b[:n]
		off += n
		i += 1


class Upstream:
	"""Loads the upstream docker-registry through its API."""

	def __init__(self, port):
		self.port = port

	def conn(self):
		return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

	def _upload(self, c, repo, body, size, digest_fn):
		c.request("POST", "/v2/%s/blobs/uploads/" % repo,
		    headers={"Content-Length": "0"})
		r = c.getresponse()
		r.read()
		if r.status != 202:
			raise RuntimeError("upload start: HTTP %d" % r.status)
		loc = r.getheader("Location")
		c.request("PATCH", loc, body=body, headers={
		    "Content-Type": "application/octet-stream",
		    "Content-Length": str(size)})
		r = c.getresponse()
		r.read()
		if r.status != 202:
			raise RuntimeError("upload PATCH: HTTP %d" % r.status)
		loc = r.getheader("Location")
		digest = digest_fn()
		c.request("PUT", loc + ("&" if "?" in loc else "?") + "digest=" + digest,
		    headers={"Content-Length": "0"})
		r = c.getresponse()
		r.read()
		if r.status != 201:
			raise RuntimeError("upload PUT: HTTP %d" % r.status)
		return digest

	def push_blob(self, repo, blob_id, size, tee=None):
		"""Streams a generated blob (PATCH, then PUT ?digest=); returns its
		digest. tee: also write the bytes to this file."""
		h = hashlib.sha256()
		tf = open(tee, "wb") if tee else None

		def gen():
			for b in blob_blocks(blob_id, size):
				h.update(b)
				if tf:
					tf.write(b)
				yield b
		c = self.conn()
		try:
			return self._upload(c, repo, gen(), size,
			    lambda: "sha256:" + h.hexdigest())
		finally:
			c.close()
			if tf:
				tf.close()

	def push_bytes(self, repo, data):
		c = self.conn()
		try:
			return self._upload(c, repo, data, len(data),
			    lambda: "sha256:" + hashlib.sha256(data).hexdigest())
		finally:
			c.close()

	def put_manifest(self, repo, tag, body):
		c = self.conn()
		try:
			c.request("PUT", "/v2/%s/manifests/%s" % (repo, tag), body=body,
			    headers={"Content-Type": OCI_MANIFEST})
			r = c.getresponse()
			r.read()
			if r.status != 201:
				raise RuntimeError("manifest PUT: HTTP %d" % r.status)
			return r.getheader("Docker-Content-Digest")
		finally:
			c.close()


def fetch(url, headers=None, want_hash=True, timeout=60):
	"""One GET with a reusable buffer: (status, bytes, sha256 hex, seconds)."""
	u = urllib.parse.urlsplit(url)
	t0 = time.monotonic()
	c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
	try:
		c.request("GET", u.path + ("?" + u.query if u.query else ""),
		    headers=headers or {})
		r = c.getresponse()
		h = hashlib.sha256()
		buf = bytearray(BLOCK)
		mv = memoryview(buf)
		n = 0
		while True:
			k = r.readinto(buf)
			if not k:
				break
			n += k
			if want_hash:
				h.update(mv[:k])
		return r.status, n, h.hexdigest(), time.monotonic() - t0
	finally:
		c.close()


def sha256_file(path):
	h = hashlib.sha256()
	buf = bytearray(BLOCK)
	mv = memoryview(buf)
	with open(path, "rb", buffering=0) as f:
		while True:
			k = f.readinto(buf)
			if not k:
				break
			h.update(mv[:k])
	return h.hexdigest()


def hash_files(paths):
	"""sha256 of files, two threads (hashlib releases the GIL)."""
	res = {}
	lock = threading.Lock()
	todo = list(paths)

	def work():
		while True:
			with lock:
				if not todo:
					return
				p = todo.pop()
			try:
				d = sha256_file(p)
			except OSError:
				d = None
			with lock:
				res[p] = d
	ts = [threading.Thread(target=work) for _ in range(2)]
	for t in ts:
		t.start()
	for t in ts:
		t.join()
	return res


# ---------------------------------------------------------------- logs

ACCESS_RE = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3}) (\d+|-)')


class AccessLog:
	"""Requests seen by a server, from its access log, since a mark.
	The front's nginx format is `msec method request_uri status bytes`;
	docker-registry writes the combined format to stdout."""

	def __init__(self, path, nginx):
		self.path = path
		self.nginx = nginx

	def mark(self):
		try:
			return os.path.getsize(self.path)
		except OSError:
			return 0

	def since(self, mark):
		try:
			with open(self.path, "rb") as f:
				f.seek(mark)
				data = f.read().decode("utf-8", "replace")
		except OSError:
			return []
		out = []
		for ln in data.splitlines():
			if self.nginx:
				p = ln.split()
				if len(p) >= 5 and p[0][0].isdigit():
					out.append((p[1], p[2].split("?")[0], int(p[3])))
			else:
				m = ACCESS_RE.search(ln)
				if m:
					path = urllib.parse.urlsplit(m.group(2)).path
					out.append((m.group(1), path, int(m.group(3))))
		return out

	def count(self, mark, path_prefix, method=None, settle=0.3):
		time.sleep(settle)
		return sum(1 for m, p, s in self.since(mark)
		    if p.startswith(path_prefix) and (method is None or m == method))


def front_segments(path, since, min_bytes):
	"""Downloads through the front relay that started at or after `since`
	(time.monotonic) with at least min_bytes: list of (seconds, bytes)."""
	out = []
	try:
		with open(path) as f:
			for ln in f:
				p = ln.split()
				if len(p) == 5 and p[0] == "seg":
					t0, t1, n = float(p[2]), float(p[3]), int(p[4])
					if t0 >= since and n >= min_bytes:
						out.append((t1 - t0, n))
	except OSError:
		pass
	return out


# ---------------------------------------------------------------- clients

def curl_argv(url, out, extra=()):
	return ["curl", "-sS", "--max-time", "900", "-o", out,
	    "-w", "%{http_code} %{size_download} %{time_total}\n"] + list(extra) + [url]


def parse_curl_w(text):
	res = []
	for ln in text.splitlines():
		p = ln.split()
		if len(p) == 3:
			try:
				res.append((int(p[0]), int(p[1]), float(p[2])))
			except ValueError:
				pass
	return res


def run_burst(urls_outs, timeout, hash_pipe=False):
	"""Starts one curl per (url, out) at once; returns per client
	(code, bytes, finish time since the burst's start, sha or None, err).
	hash_pipe: curl's output goes through `openssl dgst -sha256` instead of
	a file. Every process is a direct child (killed on timeout)."""
	procs = []
	t0 = time.monotonic()
	for url, out in urls_outs:
		if hash_pipe:
			c = subprocess.Popen(["curl", "-sS", "--max-time", "900", "-o", "-",
			    "-w", "%{stderr}%{http_code} %{size_download} %{time_total}\n", url],
			    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
			    stdin=subprocess.DEVNULL)
			h = subprocess.Popen(["openssl", "dgst", "-sha256", "-r"],
			    stdin=c.stdout, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
			c.stdout.close()
		else:
			c = subprocess.Popen(curl_argv(url, out), stdout=subprocess.PIPE,
			    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
			h = None
		procs.append((c, h, time.monotonic() - t0))
	end = t0 + timeout
	results = []
	for c, h, started in procs:
		try:
			if h:
				hout = h.communicate(timeout=max(0.1, end - time.monotonic()))[0]
				c.wait(timeout=max(0.1, end - time.monotonic()))
				so, se = b"", c.stderr.read()
			else:
				so, se = c.communicate(timeout=max(0.1, end - time.monotonic()))
		except subprocess.TimeoutExpired:
			for x in (c, h):
				if x:
					x.kill()
					x.wait()
			results.append((None, 0, None, None, "timeout"))
			continue
		so, se = so.decode(), se.decode()
		if h:
			w = parse_curl_w(se)
			hp = hout.decode().split()
			sha = hp[0] if hp else None
			err = "\n".join(l for l in se.splitlines() if len(l.split()) != 3)
		else:
			w = parse_curl_w(so)
			sha = None
			err = se.strip()
		if not w:
			results.append((None, 0, None, sha, err or "curl exit %d" % c.returncode))
			continue
		code, n, tt = w[0]
		results.append((code, n, started + tt, sha, err))
	return results, time.monotonic() - t0


# ---------------------------------------------------------------- the front

def relay_main(listen, target, rate):
	"""The upstream front: a TCP relay that paces every connection's
	download (upstream to client) to `rate` bytes/s with a token bucket of
	256 KiB, moving bytes with splice(2). Requests go up unpaced. Runs as its
	own process (bench.py _relay LISTEN_PORT TARGET_PORT RATE)."""
	import fcntl
	chunk = 256 * 1024
	srv = socket.socket()
	srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
	srv.bind(("127.0.0.1", listen))
	srv.listen(512)

	def close(*socks):
		for s in socks:
			try:
				s.shutdown(socket.SHUT_RDWR)
			except OSError:
				pass
			s.close()

	def up(c, u):
		try:
			while True:
				b = c.recv(65536)
				if not b:
					break
				u.sendall(b)
			u.shutdown(socket.SHUT_WR)
		except OSError:
			pass

	lock = threading.Lock()
	ids = [0]

	def seg_log(cid, t0, t1, n):
		# One line per download: a run of bytes with no gap of 1 s or more.
		with lock:
			sys.stdout.write("seg %d %.3f %.3f %d\n" % (cid, t0, t1, n))
			sys.stdout.flush()

	def down(c, u):
		with lock:
			ids[0] += 1
			cid = ids[0]
		r, w = os.pipe()
		try:
			fcntl.fcntl(w, 1031, 1 << 20)	# F_SETPIPE_SZ
		except OSError:
			pass
		tokens, last = float(chunk), time.monotonic()
		seg0 = seg1 = None
		segn = 0
		try:
			while True:
				now = time.monotonic()
				tokens = min(float(chunk), tokens + (now - last) * rate)
				last = now
				if tokens < 0:
					time.sleep(-tokens / rate)
					continue
				if seg0 is not None:
					ready = select.select([u], [], [], 1.0)[0]
					if not ready:
						seg_log(cid, seg0, seg1, segn)
						seg0 = None
						continue
				n = os.splice(u.fileno(), w, chunk)
				if n == 0:
					break
				now = time.monotonic()
				if seg0 is None:
					seg0, segn = now, 0
				seg1 = now
				segn += n
				tokens -= n
				while n:
					n -= os.splice(r, c.fileno(), n)
				seg1 = time.monotonic()
		except OSError:
			pass
		finally:
			if seg0 is not None:
				seg_log(cid, seg0, seg1, segn)
			os.close(r)
			os.close(w)
			close(c, u)

	def handle(c):
		try:
			u = socket.create_connection(("127.0.0.1", target))
		except OSError:
			c.close()
			return
		for x in (c, u):
			x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
		threading.Thread(target=up, args=(c, u), daemon=True).start()
		down(c, u)

	while True:
		c, _ = srv.accept()
		threading.Thread(target=handle, args=(c,), daemon=True).start()


# ---------------------------------------------------------------- splice client

def get_main(spec_path):
	"""bench.py _get SPEC: an HTTP/1.1 GET client that costs little CPU, so
	32 of them do not eat the machine the servers run on: bytes go from the
	socket to the output file with splice(2) (no copy through user space);
	the file is checked with sha256 afterwards by the caller. SPEC (JSON):
	{"threads": [[[url, out], ...], ...]}: one thread per list, its URLs one
	after the other, all threads released at once. Prints one JSON line per
	GET: thread, index, code, bytes, start and end (seconds since release)."""
	import fcntl
	with open(spec_path) as f:
		spec = json.load(f)
	lists = spec["threads"]
	barrier = threading.Barrier(len(lists) + 1)
	lock = threading.Lock()
	results = []
	t_release = [0.0]

	def one(url, out):
		u = urllib.parse.urlsplit(url)
		s = socket.create_connection((u.hostname, u.port), timeout=30)
		try:
			s.settimeout(None)	# blocking, for splice; the caller bounds the time
			s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
			s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench\r\n"
			    "Connection: close\r\n\r\n" % (u.path + ("?" + u.query if u.query
			    else ""), u.netloc)).encode())
			head = b""
			while b"\r\n\r\n" not in head:
				b = s.recv(65536)
				if not b:
					raise OSError("connection closed in the headers")
				head += b
			head, body = head.split(b"\r\n\r\n", 1)
			lines = head.decode("latin-1").split("\r\n")
			code = int(lines[0].split()[1])
			clen = None
			for ln in lines[1:]:
				k, _, v = ln.partition(":")
				if k.strip().lower() == "content-length":
					clen = int(v.strip())
				if k.strip().lower() == "transfer-encoding":
					raise OSError("chunked answer: not handled by this client")
			# No O_TRUNC: the caller may have allocated the file already.
			fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
			r, w = os.pipe()
			try:
				fcntl.fcntl(w, 1031, 1 << 20)	# F_SETPIPE_SZ
			except OSError:
				pass
			n = len(body)
			step = (clen or 0) // 8
			nxt = step
			marks = []
			try:
				os.write(fd, body)
				while clen is None or n < clen:
					k = os.splice(s.fileno(), w, 1 << 20)
					if k == 0:
						break
					n += k
					while step and n >= nxt:	# progress: every eighth
						marks.append(round(time.monotonic() - t_release[0], 3))
						nxt += step
					while k:
						k -= os.splice(r, fd, k)
			finally:
				os.close(r)
				os.close(w)
				try:
					os.ftruncate(fd, n)
				except OSError:	# /dev/null
					pass
				os.close(fd)
			return code, n, "", marks
		finally:
			s.close()

	def worker(ti, items):
		barrier.wait()
		for i, (url, out) in enumerate(items):
			t0 = time.monotonic() - t_release[0]
			try:
				code, n, err, marks = one(url, out)
			except OSError as e:
				code, n, err, marks = None, 0, str(e), []
			t1 = time.monotonic() - t_release[0]
			with lock:
				results.append({"thread": ti, "i": i, "code": code, "bytes": n,
				    "start": t0, "end": t1, "err": err, "eighths": marks})
	ts = [threading.Thread(target=worker, args=(i, l)) for i, l in enumerate(lists)]
	for t in ts:
		t.start()
	t_release[0] = time.monotonic()
	barrier.wait()
	for t in ts:
		t.join()
	for r in results:
		sys.stdout.write(json.dumps(r) + "\n")
	return 0


class PullFailed(Exception):
	"""A pod's pull failed; seen429: the 429s it retried before."""
	seen429 = 0


def pod_pull(base, ctx, repo, tag, ns=None, timeout=60, fallback=None,
    sent=None):
	"""What containerd does for one image: HEAD the tag, GET the manifest
	by digest, GET config and layers (following the 307 to storage), each
	digest checked. A 429 is retried at once up to BURST_RETRIES_429 times,
	as containerd does against one host. With fallback (the registry's
	base URL, hosts.toml's server), a request that base answers with an
	error (or a 429 six times, or not at all) goes to the registry at
	once, as containerd 1.6 does (docs/pacing.md); sent["fallback"] counts
	the requests that went there. Returns the 429s seen; raises PullFailed
	(with them) when the pull fails."""
	seen = [0]
	query = "?ns=" + ns if ns else ""

	def send(method, url, accept, hops=3):
		"""(status, response, body or error) after 307s and 429 retries."""
		u = urllib.parse.urlsplit(url)
		for attempt in range(BURST_RETRIES_429 + 1):
			if url.startswith(fallback or "\0") and sent is not None:
				sent["fallback"] = sent.get("fallback", 0) + 1
			if u.scheme == "https":
				c = http.client.HTTPSConnection(u.hostname, u.port,
				    context=ctx, timeout=timeout)
			else:
				c = http.client.HTTPConnection(u.hostname, u.port,
				    timeout=timeout)
			try:
				c.request(method, u.path + ("?" + u.query if u.query else ""),
				    headers={"Accept": accept} if accept else {})
				r = c.getresponse()
				body = r.read()
			except OSError as e:
				return 0, None, str(e)
			finally:
				c.close()
			if r.status == 429:
				seen[0] += 1
				continue
			if r.status == 307 and hops > 0:
				return send(method, urllib.parse.urljoin(url,
				    r.getheader("Location")), accept, hops - 1)
			return r.status, r, body
		return 429, None, "429 %d times" % (BURST_RETRIES_429 + 1)

	def one(method, path, accept=None):
		status, r, body = send(method, base + path + query, accept)
		if status != 200 and fallback:
			status, r, body = send(method, fallback + path, accept)
		if status != 200:
			raise PullFailed("%s %s: %s" % (method, path,
			    body if status in (0, 429) else status))
		return r, body

	def blob(digest):
		_, body = one("GET", "/v2/%s/blobs/%s" % (repo, digest))
		if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
			raise PullFailed("blob %s: digest mismatch" % digest)

	try:
		r, _ = one("HEAD", "/v2/%s/manifests/%s" % (repo, tag), OCI_MANIFEST)
		digest = r.getheader("Docker-Content-Digest")
		_, body = one("GET", "/v2/%s/manifests/%s" % (repo, digest),
		    OCI_MANIFEST)
		if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
			raise PullFailed("manifest %s: digest mismatch" % digest)
		m = json.loads(body)
		for d in [m["config"]] + m["layers"]:
			blob(d["digest"])
	except PullFailed as e:
		e.seen429 = seen[0]
		raise
	return seen[0]


def peak_rate(times, window=1.0):
	"""Most arrivals in any window (seconds) of sorted times."""
	best, j = 0, 0
	for i in range(len(times)):
		while times[i] - times[j] > window:
			j += 1
		best = max(best, i - j + 1)
	return best


def splice_get(work, lists, timeout):
	"""Runs bench.py _get over lists of (url, out); returns (results sorted by
	thread and index, wall seconds). A timeout kills it: results then lack
	the unfinished GETs."""
	spec = os.path.join(work, "get-spec.json")
	with open(spec, "w") as f:
		json.dump({"threads": lists}, f)
	t0 = time.monotonic()
	p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_get", spec],
	    stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
	try:
		so, se = p.communicate(timeout=timeout)
	except subprocess.TimeoutExpired:
		p.kill()
		so, se = p.communicate()
	wall = time.monotonic() - t0
	res = [json.loads(l) for l in so.decode().splitlines() if l.startswith("{")]
	res.sort(key=lambda r: (r["thread"], r["i"]))
	if se.strip():
		progress("client: " + se.decode("utf-8", "replace").strip()[-500:])
	return res, wall


# ---------------------------------------------------------------- the bench

class Bench:
	def __init__(self, args, out):
		self.args = args
		self.root = args.root
		self.work = args.work
		self.out = out
		self.procs = Procs()
		self.deadline = time.monotonic() + args.budget
		self.pp_bin = os.environ.get("PULLPROXY_BIN") or os.path.join(self.root,
		    "build", "pullproxy")
		self.peers = {}		# name -> dict(url, pid, proc, note)
		self.unavailable = {}	# name -> why
		self.targets = []	# (target, measured, pass/fail/n.a.)
		self.notes = []
		self.errors = []	# pullproxy misbehaviour seen, for the report
		self.shm = self.pick_shm()
		self.mem_peaks_cold = {}
		self.busy0 = machine_idle()
		me = resource.getrusage(resource.RUSAGE_SELF)
		self.ours0 = me.ru_utime + me.ru_stime + children_cpu()
		with open("/proc/loadavg") as f:
			self.load0 = " ".join(f.read().split()[:3])

	# ---- setup

	def pick_shm(self):
		d = "/dev/shm"
		try:
			st = os.statvfs(d)
			if st.f_bavail * st.f_frsize > 6 * GiB:
				p = os.path.join(d, "pullproxy-bench-%d" % os.getpid())
				os.makedirs(p)
				return p
		except OSError:
			pass
		p = os.path.join(self.work, "clients")
		os.makedirs(p, exist_ok=True)
		return p

	def progress_at(self, eighth):
		"""The slowest client's time to eighth/8 of the body in the last
		burst (splice client only)."""
		ts = [m[eighth - 1] for m in getattr(self, "last_eighths", []) if len(m) >= eighth]
		return max(ts) if ts and len(ts) == len(self.last_eighths) else None

	def clients_at_once(self, pairs, timeout, size=0):
		"""One client per (url, out file), all at once: a list of (code, bytes,
		seconds from the burst's start to the last byte, None, error) in the
		order of pairs, and the wall time. size: allocate the files first
		(tmpfs pages, outside the timed part)."""
		if CLIENT == "curl":
			return run_burst(pairs, timeout)
		for _, f in pairs:
			if size:
				fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
				try:
					os.posix_fallocate(fd, 0, size)
				except OSError:
					pass
				os.close(fd)
		res, wall = splice_get(self.work, [[list(p)] for p in pairs], timeout)
		self.last_eighths = [r.get("eighths") or [] for r in res]
		by = {r["thread"]: r for r in res}
		out = []
		for i in range(len(pairs)):
			r = by.get(i)
			if r is None:
				out.append((None, 0, None, None, "no result (timeout?)"))
			else:
				out.append((r["code"], r["bytes"], r["end"] if r["code"] else None,
				    None, r["err"]))
		return out, wall

	def settle_disk(self):
		"""After loading the upstream: flush the written content to disk now,
		so writeback does not run during the measurements (not timed)."""
		t = time.monotonic()
		os.sync()
		progress("sync after loading the upstream: %.1f s" % (time.monotonic() - t))

	def remaining(self):
		return self.deadline - time.monotonic()

	def version(self, argv):
		try:
			r = subprocess.run(argv, capture_output=True, timeout=10)
			s = (r.stdout + r.stderr).decode("utf-8", "replace").strip()
			return s.splitlines()[0] if s else "?"
		except (OSError, subprocess.TimeoutExpired) as e:
			return "? (%s)" % e

	def header(self):
		o = self.out
		cpu = "?"
		try:
			with open("/proc/cpuinfo") as f:
				for ln in f:
					if ln.startswith("model name"):
						cpu = ln.split(":", 1)[1].strip()
						break
		except OSError:
			pass
		mem = "?"
		with open("/proc/meminfo") as f:
			mem = "%.1f GiB" % (int(f.readline().split()[1]) / 1048576)
		git = self.version(["git", "-C", self.root, "describe", "--always",
		    "--dirty"])
		o.line("pullproxy benchmark  %s" % time.strftime("%Y-%m-%d %H:%M:%S %Z"))
		o.line("machine:   %d cpus (%s), %s RAM, kernel %s" % (
		    os.cpu_count(), cpu, mem, os.uname().release))
		btype = "?"
		try:
			with open(os.path.join(self.root, "build", "meson-info",
			    "intro-buildoptions.json")) as f:
				for opt in json.load(f):
					if opt.get("name") == "buildtype":
						btype = opt.get("value")
		except (OSError, ValueError):
			pass
		if os.environ.get("PULLPROXY_BIN"):
			o.line("pullproxy: %s  (PULLPROXY_BIN=%s, not build/)" % (
			    self.version([self.pp_bin, "--version"]), self.pp_bin))
		else:
			o.line("pullproxy: %s  (tree %s; build/ %s; build: %s)" % (
			    self.version([self.pp_bin, "--version"]), git, btype,
			    self.args.build_status))
		o.line("nginx:     %s" % self.version(["nginx", "-v"]))
		o.line("registry:  %s" % self.version(["docker-registry", "--version"]))
		o.line("clients:   %s; %s; python %s" % (
		    self.version(["curl", "--version"]).split(" (")[0],
		    self.version(["wrk", "-v"]).split(" Copyright")[0],
		    sys.version.split()[0]))
		o.line("setup:     all on 127.0.0.1; nginx peers: worker_processes auto "
		    "(= %d workers), sendfile on, access_log off;" % os.cpu_count())
		if FRONT == "nginx":
			o.line("           upstream = docker-registry (filesystem) behind an nginx "
			    "front with limit_rate %dm (every proxy pulls through it); NOTE: "
			    "nginx's limit_rate lets the first second's worth through at once"
			    % (UPSTREAM_RATE // MiB))
		else:
			o.line("           upstream = docker-registry (filesystem) behind a front "
			    "that paces each connection's download to %d MiB/s (every proxy "
			    "pulls through it):" % (UPSTREAM_RATE // MiB))
			o.line("           bench.py's splice(2) relay with a 256 KiB token bucket, "
			    "not nginx limit_rate: with proxy_buffering off nginx did not limit "
			    "at all here")
			o.line("           (256 MiB in 0.18 s), and otherwise it sends the first "
			    "second's worth at once (100 MiB static in 0.76 s), so a 128 MiB "
			    "pull took 0.1-1 s; BENCH_FRONT=nginx runs it anyway")
		o.line("           upstream requests are counted in the upstream registry's "
		    "access log")
		o.line("           nginx proxy_cache: key $uri, proxy_cache_lock on, "
		    "lock_timeout 10m, lock_age 10m (so one request fills a slow entry), "
		    "valid 200 1h;")
		o.line("           pullproxy: --log-level info, default tag TTL (60 s), "
		    "default cache budget; client bytes land in %s" % (
		    "tmpfs" if self.shm.startswith("/dev/shm") else "the work dir"))
		damon = damon_note()
		if damon:
			o.line("memory:    %s" % damon)
		o.line("load:      %s (1/5/15 min) at the start; other users of this machine "
		    "skew the figures: see the last line" % self.load0)
		o.line("scenarios: %s" % " ".join(self.args.scenarios))
		o.line()

	def start_servers(self):
		w = self.work
		self.up_port = free_port()
		self.front_port = free_port()
		os.makedirs(os.path.join(w, "upstream"))
		with open(os.path.join(w, "upstream.yml"), "w") as f:
			f.write("version: 0.1\nlog:\n  level: warn\n"
			    "storage:\n  filesystem:\n    rootdirectory: %s/upstream\n"
			    "  delete:\n    enabled: true\n"
			    "http:\n  addr: 127.0.0.1:%d\n  secret: pullproxy-bench\n"
			    % (w, self.up_port))
		self.up_log = os.path.join(w, "upstream.log")
		self.upstream_proc = self.procs.start("upstream", ["docker-registry",
		    "serve", os.path.join(w, "upstream.yml")], self.up_log)
		if not wait_http("http://127.0.0.1:%d/v2/" % self.up_port,
		    self.upstream_proc):
			raise RuntimeError("upstream docker-registry did not start: "
			    + tail(self.up_log))
		self.upstream = Upstream(self.up_port)
		self.uplog = AccessLog(self.up_log, nginx=False)

		# The front, rate-limited per connection: the only way the proxies
		# reach the upstream. Upstream requests are counted in the registry's
		# access log (its stdout), whichever front runs.
		self.front = self.uplog
		if FRONT == "nginx":
			self.start_nginx("front", """
	upstream registry { server 127.0.0.1:%d; keepalive 64; }
	server {
		listen 127.0.0.1:%d;
		access_log off;
		limit_rate %dk;
		location / {
			proxy_pass http://registry;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header Host $http_host;
			proxy_max_temp_file_size 0;
			proxy_read_timeout 600s;
		}
	}
""" % (self.up_port, self.front_port, UPSTREAM_RATE // 1024),
			    "http://127.0.0.1:%d/v2/" % self.front_port, peer=False)
		else:
			p = self.procs.start("front", [sys.executable, os.path.abspath(__file__),
			    "_relay", str(self.front_port), str(self.up_port),
			    str(UPSTREAM_RATE)], os.path.join(w, "front.log"))
			if not wait_http("http://127.0.0.1:%d/v2/" % self.front_port, p):
				raise RuntimeError("the front relay did not start: " +
				    tail(os.path.join(w, "front.log")))
			self.front_proc = p

		# (a) nginx static: the warm layer as a file.
		port = free_port()
		os.makedirs(os.path.join(w, "static"))
		self.start_nginx(PEER_STATIC, """
	server {
		listen 127.0.0.1:%d;
		access_log off;
		root %s/static;
		location / { }
	}
""" % (port, w), "http://127.0.0.1:%d/" % port)

		# (b) nginx proxy_cache on the front.
		port = free_port()
		os.makedirs(os.path.join(w, "ngxcache", "cache"))
		self.start_nginx(PEER_NGXCACHE, """
	proxy_cache_path %s/ngxcache/cache levels=1:2 keys_zone=reg:16m
	    max_size=40g inactive=7d use_temp_path=off;
	upstream front { server 127.0.0.1:%d; keepalive 32; }
	server {
		listen 127.0.0.1:%d;
		access_log off;
		location / {
			proxy_pass http://front;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_cache reg;
			proxy_cache_key $uri;
			proxy_cache_lock on;
			proxy_cache_lock_timeout 10m;
			proxy_cache_lock_age 10m;
			proxy_cache_valid 200 1h;
			proxy_read_timeout 600s;
		}
	}
""" % (w, self.front_port, port), "http://127.0.0.1:%d/v2/" % port)

		# (c) docker-registry in proxy mode, on the front.
		port = free_port()
		d = os.path.join(w, "regproxy")
		os.makedirs(d)
		with open(os.path.join(d, "config.yml"), "w") as f:
			f.write("version: 0.1\nlog:\n  level: warn\n  accesslog:\n"
			    "    disabled: true\n"
			    "storage:\n  filesystem:\n    rootdirectory: %s/storage\n"
			    "  cache:\n    blobdescriptor: inmemory\n"
			    "http:\n  addr: 127.0.0.1:%d\n  secret: pullproxy-bench\n"
			    "proxy:\n  remoteurl: http://127.0.0.1:%d\n"
			    % (d, port, self.front_port))
		p = self.procs.start(PEER_REGPROXY, ["docker-registry", "serve",
		    os.path.join(d, "config.yml")], os.path.join(d, "log"))
		self.add_peer(PEER_REGPROXY, p, port, os.path.join(d, "log"))

		# (d) pullproxy.
		port = free_port()
		d = os.path.join(w, "pullproxy")
		os.makedirs(d)
		self.pp_log = os.path.join(d, "pullproxy.log")
		self.pp_cache = os.path.join(d, "cache")
		p = self.procs.start(PP_NAME, [self.pp_bin, "serve", "--listen",
		    "127.0.0.1:%d" % port, "--cache-dir", self.pp_cache,
		    "--registry", "bench.local=http://127.0.0.1:%d" % self.front_port,
		    "--log", self.pp_log, "--log-level", "info"],
		    os.path.join(d, "stderr"))
		self.add_peer(PP_NAME, p, port, os.path.join(d, "stderr"))

	def add_peer(self, name, proc, port, log, path="/v2/"):
		url = "http://127.0.0.1:%d" % port
		if wait_http(url + path, proc):
			self.peers[name] = {"url": url, "pid": proc.pid, "proc": proc}
		else:
			why = "did not start: %s" % (tail(log) or "exit %s" % proc.poll())
			self.unavailable[name] = why
			progress("%s %s" % (name, why))
			self.procs.stop(proc)

	def start_nginx(self, name, server_conf, probe, peer=True):
		d = os.path.join(self.work, name.replace(" ", "-"))
		os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
		conf = os.path.join(d, "nginx.conf")
		with open(conf, "w") as f:
			f.write("""daemon off;
master_process on;
user root;
worker_processes auto;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log warn;
events { worker_connections 4096; }
http {
	default_type application/octet-stream;
	sendfile on;
	tcp_nopush on;
	keepalive_requests 100000;
	client_body_temp_path %(d)s/tmp/body;
	proxy_temp_path %(d)s/tmp/proxy;
	fastcgi_temp_path %(d)s/tmp/fastcgi;
	uwsgi_temp_path %(d)s/tmp/uwsgi;
	scgi_temp_path %(d)s/tmp/scgi;
%(server)s}
""" % {"d": d, "server": server_conf})
		p = self.procs.start(name, ["nginx", "-p", d, "-e", d + "/error.log",
		    "-c", conf], os.path.join(d, "stderr"))
		if not peer:
			if not wait_http(probe, p):
				raise RuntimeError("nginx %s did not start: %s" % (
				    name, tail(os.path.join(d, "error.log"))))
			return p
		port = int(urllib.parse.urlsplit(probe).port)
		self.add_peer(name, p, port, os.path.join(d, "error.log"),
		    urllib.parse.urlsplit(probe).path)
		return p

	def upstream_xfer(self, since, size, expect):
		"""The slowest download of >= 90% of size through the front since
		`since` (seconds), waiting up to 2.5 s for the relay to log them."""
		if FRONT != "relay":
			return None
		end = time.monotonic() + 2.5
		while True:
			segs = front_segments(os.path.join(self.work, "front.log"), since,
			    int(size * 0.9))
			if len(segs) >= max(1, expect) or time.monotonic() > end:
				break
			time.sleep(0.2)
		return max(s for s, n in segs) if segs else None

	def proxies(self):
		return [n for n in (PEER_NGXCACHE, PEER_REGPROXY, PP_NAME)
		    if n in self.peers]

	def pp_alive(self, where):
		p = self.peers.get(PP_NAME)
		if p and p["proc"].poll() is not None:
			msg = "pullproxy exited with status %s during %s; log: %s" % (
			    p["proc"].returncode, where, tail(self.pp_log, 3) or
			    tail(os.path.join(self.work, "pullproxy", "stderr"), 3))
			self.errors.append(msg)
			self.unavailable[PP_NAME] = "exited during %s" % where
			del self.peers[PP_NAME]
			return False
		return p is not None

	def target(self, name, measured, ok):
		if len(measured) > 70:
			measured = measured[:67] + "..."
		self.targets.append((name, measured,
		    "n/a" if ok is None else ("pass" if ok else "FAIL")))

	def missing_lines(self, names):
		for n in names:
			if n in self.unavailable:
				self.out.line("  %s: not run (%s)" % (n, self.unavailable[n]))

	def pp_log_problems(self, mark):
		"""warn/error lines pullproxy logged since mark (a byte offset)."""
		try:
			with open(self.pp_log, "rb") as f:
				f.seek(mark)
				lines = f.read().decode("utf-8", "replace").splitlines()
		except OSError:
			return []
		bad = [l for l in lines if '"level":"warn"' in l or '"level":"error"' in l]
		return bad

	def pp_log_mark(self):
		try:
			return os.path.getsize(self.pp_log)
		except OSError:
			return 0

	def note_pp_log(self, mark, where):
		bad = self.pp_log_problems(mark)
		if bad:
			self.errors.append("%s: pullproxy logged %d warn/error lines, first: %s"
			    % (where, len(bad), bad[0][:400]))

	# ---- 1. warm hit

	def warm(self):
		o = self.out
		o.line("== 1. warm hit: %d MiB layer cached everywhere, %d clients "
		    "(curl, keep-alive) GET it N times each" % (WARM_SIZE // MiB,
		    WARM_CLIENTS))
		repo = "bench/warm"
		path = os.path.join(self.work, "warm-layer")
		progress("warm: pushing the %d MiB layer" % (WARM_SIZE // MiB))
		digest = self.upstream.push_blob(repo, "warm", WARM_SIZE, tee=path)
		self.settle_disk()
		want = digest.split(":")[1]
		blob_path = "/v2/%s/blobs/%s" % (repo, digest)
		if PEER_STATIC in self.peers:
			dst = os.path.join(self.work, "static") + blob_path
			os.makedirs(os.path.dirname(dst), exist_ok=True)
			os.link(path, dst)
		# Warm every server at once (one full GET each, bytes checked).
		progress("warm: one full GET per server (through the %s/s front for "
		    "the proxies)" % ("%d MiB" % (UPSTREAM_RATE // MiB)))
		names = [n for n in (PEER_STATIC, PEER_NGXCACHE, PEER_REGPROXY, PP_NAME)
		    if n in self.peers]
		check = {}

		def warm_one(n):
			try:
				check[n] = fetch(self.peers[n]["url"] + blob_path)
			except Exception as e:
				check[n] = (None, 0, str(e), 0)
		ts = [threading.Thread(target=warm_one, args=(n,)) for n in names]
		for t in ts:
			t.start()
		for t in ts:
			t.join()
		time.sleep(1.0)
		rows = []
		results = {}
		verified = {}
		for n in names:
			st, nb, sha, secs = check[n]
			verified[n] = (st == 200 and nb == WARM_SIZE and sha == want)
			if not verified[n]:
				msg = "warm-up GET: HTTP %s, %d bytes, sha256 %s" % (
				    st, nb, "ok" if sha == want else "MISMATCH (%s)" % sha)
				if n == PP_NAME:
					self.errors.append("warm: " + msg)
				o.line("  %s: %s" % (n, msg))
		# Calibrate N on nginx static (the fastest peer) for ~WARM_TARGET_S.
		per_client = self.args.warm_n
		if not per_client:
			ref = PEER_STATIC if PEER_STATIC in self.peers else (names[0] if names else None)
			if ref is None:
				o.line("  no server to run against")
				return
			r = self.warm_run(ref, blob_path, 2, 60)
			rate = r["bytes"] / r["wall"] if r["wall"] > 0 else 1e9
			per_client = int(round(WARM_TARGET_S * rate / (WARM_CLIENTS * WARM_SIZE)))
			per_client = max(4, min(64, per_client))
		total = per_client * WARM_CLIENTS * WARM_SIZE
		o.line("  N = %d GETs per client (%.1f GiB per server), sha256 of the "
		    "bytes checked once per server on the warm-up GET" % (
		    per_client, total / GiB))
		for n in names:
			if self.remaining() < 60:
				o.line("  %s: skipped (time budget)" % n)
				continue
			if n == PP_NAME and not self.pp_alive("warm"):
				continue
			progress("warm: %s, %d x %d GETs" % (n, WARM_CLIENTS, per_client))
			mark = self.front.mark()
			# One untimed GET first: the layer's pages may have been reclaimed
			# since the warm-up (see the header's memory line).
			subprocess.run(["curl", "-sS", "--max-time", "60", "-o", "/dev/null",
			    self.peers[n]["url"] + blob_path], timeout=70)
			ppm = self.pp_log_mark()
			results[n] = r = self.warm_run(n, blob_path, per_client,
			    max(60.0, 5 * WARM_TARGET_S))
			r["upstream"] = self.front.count(mark, blob_path)
			if n == PP_NAME:
				self.pp_alive("warm")
				self.note_pp_log(ppm, "warm")
				if r["bad"]:
					self.errors.append("warm: %d of %d pullproxy transfers were not "
					    "200 with %d bytes" % (r["bad"], r["done"] + r["bad"],
					    WARM_SIZE))
		pp = results.get(PP_NAME)
		for n in names:
			if n not in results:
				continue
			r = results[n]
			gib = r["bytes"] / GiB
			mibs = r["bytes"] / MiB / r["wall"] if r["wall"] else None
			cpu_gib = r["cpu"] / gib if gib else None
			r["mibs"], r["cpu_gib"] = mibs, cpu_gib
		for n in names:
			if n not in results:
				continue
			r = results[n]
			rows.append([n, "yes" if verified[n] else "NO",
			    "%d/%d" % (r["done"], r["want"]) + (" TIMEOUT" if r["timeout"] else ""),
			    r["bad"], r["upstream"], f2(r["wall"]), f2(r["bytes"] / GiB),
			    f1(r["mibs"]), f2(r["cpu"]), f3(r["cpu_gib"]), f2(r["client_cpu"]),
			    "%.0f%%" % r["idle"], f3(r["busy"] / gib_of(r)), f1(r["rss"]),
			    rx(ratio(pp["mibs"], r["mibs"])) if pp and n != PP_NAME else None,
			    rx(ratio(pp["cpu_gib"], r["cpu_gib"])) if pp and n != PP_NAME else None])
		o.table(["server", "sha ok", "GETs done", "bad", "upstr GETs", "wall s",
		    "GiB", "MiB/s", "srv CPU s", "CPU s/GiB", "client CPU s", "idle",
		    "machine CPU s/GiB", "RssAnon MiB", "pp MiB/s / it", "pp CPU/GiB / it"], rows)
		self.missing_lines([PEER_STATIC, PEER_NGXCACHE, PEER_REGPROXY, PP_NAME])
		o.line("  CPU = utime+stime of the server's processes (nginx: master and "
		    "workers); idle = whole machine idle during the run; RssAnon = peak, "
		    "sampled every 50 ms;")
		o.line("  machine CPU s/GiB = every cpu's busy time (servers, clients, kernel) "
		    "per GiB: loopback TCP work is charged to the sender or the receiver")
		o.line("  as the kernel happens to run it, so the server's own figure moves "
		    "from run to run more than this one does;")
		o.line("  each server's run is preceded by one untimed GET; upstr GETs = "
		    "upstream GETs of the layer during the run and that GET (0: all hits)")
		o.line()
		st = results.get(PEER_STATIC)
		if pp and st:
			rc = ratio(pp["cpu_gib"], st["cpu_gib"])
			rt = ratio(pp["mibs"], st["mibs"])
			self.target("warm hit CPU/GiB <= 1.2x nginx static",
			    "%.3f vs %.3f s/GiB = x%.2f" % (pp["cpu_gib"], st["cpu_gib"], rc),
			    rc is not None and rc <= 1.2 and verified.get(PP_NAME))
			self.target("warm hit throughput >= 0.95x nginx static",
			    "%.0f vs %.0f MiB/s = x%.2f" % (pp["mibs"], st["mibs"], rt),
			    rt is not None and rt >= 0.95 and verified.get(PP_NAME))
		else:
			why = self.unavailable.get(PP_NAME) or self.unavailable.get(PEER_STATIC) or "not measured"
			self.target("warm hit CPU/GiB <= 1.2x nginx static", why, False if PP_NAME not in results else None)
			self.target("warm hit throughput >= 0.95x nginx static", why, False if PP_NAME not in results else None)

	def warm_run(self, name, blob_path, per_client, timeout):
		peer = self.peers[name]
		url = peer["url"] + blob_path
		cfgs = []
		for i in range(WARM_CLIENTS):
			cfg = os.path.join(self.work, "warm-client-%d.curl" % i)
			with open(cfg, "w") as f:
				for _ in range(per_client):
					f.write('url = "%s"\noutput = "/dev/null"\n' % url)
			cfgs.append(cfg)
		sampler = RssSampler(peer["pid"])
		sampler.start()
		cpu0 = cpu_seconds(peer["pid"])
		ccpu0 = children_cpu()
		idle0 = machine_idle()
		t0 = time.monotonic()
		procs = [subprocess.Popen(["curl", "-sS", "--max-time", "900", "-K", cfg,
		    "-w", "%{http_code} %{size_download} %{time_total}\n"],
		    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
		    stdin=subprocess.DEVNULL) for cfg in cfgs]
		timed_out = False
		outs = []
		for p in procs:
			try:
				so, se = p.communicate(timeout=max(0.1, t0 + timeout - time.monotonic()))
			except subprocess.TimeoutExpired:
				timed_out = True
				p.kill()
				so, se = p.communicate()
			outs.append(so.decode())
		wall = time.monotonic() - t0
		cpu = cpu_seconds(peer["pid"]) - cpu0
		ccpu = children_cpu() - ccpu0
		idle1 = machine_idle()
		rss = sampler.stop()
		done = bad = nbytes = 0
		for so in outs:
			for code, n, tt in parse_curl_w(so):
				nbytes += n
				if code == 200 and n == WARM_SIZE:
					done += 1
				else:
					bad += 1
		idle = 100.0 * (idle1[0] - idle0[0]) / max(1, idle1[1] - idle0[1])
		busy = ((idle1[1] - idle1[0]) - (idle0[1] - idle0[0])) / CLK_TCK
		return {"wall": wall, "cpu": cpu, "client_cpu": ccpu, "idle": idle, "busy": busy,
		    "bytes": nbytes, "done": done, "bad": bad,
		    "want": per_client * WARM_CLIENTS, "timeout": timed_out, "rss": rss}

	# ---- 2. cold burst

	def cold(self):
		o = self.out
		o.line("== 2. cold burst: %d clients at once for one uncached %d MiB layer "
		    "(a fresh digest per server), upstream front at %s/s per request" % (
		    COLD_CLIENTS, COLD_SIZE // MiB, "%d MiB" % (UPSTREAM_RATE // MiB)))
		repo = "bench/cold"
		names = self.proxies()
		progress("cold: pushing %d layers of %d MiB" % (len(names) + 1,
		    COLD_SIZE // MiB))
		digests = {n: self.upstream.push_blob(repo, "cold-" + n, COLD_SIZE)
		    for n in ["direct"] + names}
		self.settle_disk()
		# The direct pull: one client straight from the front.
		d = digests["direct"]
		f = os.path.join(self.shm, "direct")
		res, _ = self.clients_at_once([("http://127.0.0.1:%d/v2/%s/blobs/%s" % (
		    self.front_port, repo, d), f)], 120, COLD_SIZE)
		code, nb, direct_s, _, err = res[0]
		ok = code == 200 and nb == COLD_SIZE and sha256_file(f) == d.split(":")[1]
		os.unlink(f)
		o.line("  direct pull from the upstream front (one client): %.2f s%s" % (
		    direct_s or 0, "" if ok else " (BAD: HTTP %s, %d bytes, %s)" % (code, nb, err)))
		rows = []
		pp = None
		for n in names:
			if self.remaining() < 45:
				o.line("  %s: skipped (time budget)" % n)
				continue
			if n == PP_NAME and not self.pp_alive("cold"):
				continue
			progress("cold: %s, %d clients" % (n, COLD_CLIENTS))
			d = digests[n]
			blob_path = "/v2/%s/blobs/%s" % (repo, d)
			url = self.peers[n]["url"] + blob_path
			files = [os.path.join(self.shm, "cold-%d" % i) for i in range(COLD_CLIENTS)]
			mark = self.front.mark()
			ppm = self.pp_log_mark()
			sampler = RssSampler(self.peers[n]["pid"])
			sampler.start()
			cpu0, ccpu0, idle0 = cpu_seconds(self.peers[n]["pid"]), children_cpu(), machine_idle()
			tb = time.monotonic()
			self.last_eighths = []
			res, wall = self.clients_at_once([(url, f) for f in files], 180, COLD_SIZE)
			half, seven = self.progress_at(4), self.progress_at(7)
			cpu = cpu_seconds(self.peers[n]["pid"]) - cpu0
			ccpu = children_cpu() - ccpu0
			idle1 = machine_idle()
			idle = 100.0 * (idle1[0] - idle0[0]) / max(1, idle1[1] - idle0[1])
			peak = sampler.stop()
			self.mem_peaks_cold[n] = peak
			gets = self.front.count(mark, blob_path, "GET")
			heads = self.front.count(mark, blob_path, "HEAD", settle=0)
			xfer = self.upstream_xfer(tb, COLD_SIZE, gets)
			hashes = hash_files([f for f in files if os.path.exists(f)])
			want = d.split(":")[1]
			good = 0
			errs = []
			for (code, nb, fin, _, err), f in zip(res, files):
				if code == 200 and nb == COLD_SIZE and hashes.get(f) == want:
					good += 1
				else:
					errs.append("HTTP %s %d bytes sha %s %s" % (
					    code, nb, "ok" if hashes.get(f) == want else "bad", err))
			for f in files:
				if os.path.exists(f):
					os.unlink(f)
			fins = sorted(r[2] for r in res if r[2] is not None)
			slow = max(fins) if len(fins) == len(res) else None
			r = {"gets": gets, "heads": heads, "good": good,
			    "fast": fins[0] if fins else None,
			    "median": fins[len(fins) // 2] if fins else None,
			    "slow": slow, "wall": wall, "peak": peak, "cpu": cpu, "xfer": xfer,
			    "half": half, "seven": seven,
			    "ccpu": ccpu, "idle": idle,
			    "slow_direct": ratio(slow, direct_s) if ok else None}
			if n == PP_NAME:
				pp = r
				self.pp_alive("cold")
				self.note_pp_log(ppm, "cold")
				if errs:
					self.errors.append("cold: %d of %d pullproxy clients failed, e.g. %s"
					    % (len(errs), COLD_CLIENTS, errs[0]))
			elif errs:
				o.line("  %s: %d clients failed, e.g. %s" % (n, len(errs), errs[0]))
			rows.append((n, r))
		table = []
		for n, r in rows:
			table.append([n, r["gets"], r["heads"], "%d/%d" % (r["good"], COLD_CLIENTS),
			    f2(r["half"]), f2(r["seven"]),
			    f2(r["fast"]), f2(r["median"]), f2(r["slow"]), f2(direct_s),
			    rx(r["slow_direct"]), f2(r["xfer"]), f2(r["cpu"]), f2(r["ccpu"]),
			    "%.0f%%" % r["idle"],
			    f1(r["peak"]),
			    rx(ratio(pp["slow"], r["slow"])) if pp and n != PP_NAME else None])
		o.table(["server", "upstr GETs", "upstr HEADs", "sha ok", "all at 1/2 s",
		    "all at 7/8 s", "fastest s",
		    "median s", "slowest s", "direct s", "slowest/direct",
		    "upstr xfer s", "srv CPU s",
		    "client CPU s", "idle", "peak RssAnon MiB", "pp slowest / it"], table)
		self.missing_lines([PEER_NGXCACHE, PEER_REGPROXY, PP_NAME])
		o.line("  times: from the burst's start until each client had its last byte "
		    "(%s -> file in tmpfs); sha256 of every client's file checked after;" % (
		    "curl -o" if CLIENT == "curl" else "bench.py's splice client"))
		o.line("  all at 1/2, 7/8 = when the slowest client had half, seven eighths "
		    "of the layer (the upstream alone: %.2f s, %.2f s)" % (
		    COLD_SIZE / 2 / UPSTREAM_RATE, COLD_SIZE * 7 / 8 / UPSTREAM_RATE))
		o.line("  upstr xfer = the slowest upstream download of the layer, timed at "
		    "the front (%d MiB at %d MiB/s takes %.1f s)" % (COLD_SIZE // MiB,
		    UPSTREAM_RATE // MiB, COLD_SIZE / UPSTREAM_RATE))
		o.line("  %d clients x %d MiB = %.0f MiB to deliver: idle = whole machine idle "
		    "during the burst (0%% = the %d cpus were the limit)" % (COLD_CLIENTS,
		    COLD_SIZE // MiB, COLD_CLIENTS * COLD_SIZE / MiB, os.cpu_count()))
		o.line()
		if pp:
			self.target("cold burst: exactly 1 upstream GET", "%d GET, %d HEAD" % (
			    pp["gets"], pp["heads"]), pp["gets"] == 1)
			self.target("cold burst: slowest <= 1.25x direct",
			    "%s s vs %s s = %s, %d/%d sha ok" % (f2(pp["slow"]), f2(direct_s),
			    rx(pp["slow_direct"]), pp["good"], COLD_CLIENTS),
			    pp["slow_direct"] is not None and pp["slow_direct"] <= 1.25
			    and pp["good"] == COLD_CLIENTS)
		else:
			why = self.unavailable.get(PP_NAME, "not measured")
			self.target("cold burst: exactly 1 upstream GET", why, False)
			self.target("cold burst: slowest <= 1.25x direct", why, False)

	# ---- 3. manifests by tag

	def manifests(self):
		o = self.out
		o.line("== 3. manifests by tag: wrk %s, GET /v2/<repo>/manifests/<tag> "
		    "with Accept: %s" % (" ".join(WRK_ARGS), OCI_MANIFEST))
		repo, tag = "bench/app", "v1"
		cfg = json.dumps({"architecture": "amd64", "os": "linux",
		    "rootfs": {"type": "layers", "diff_ids": []}}).encode()
		cd = self.upstream.push_bytes(repo, cfg)
		ld = self.upstream.push_blob(repo, "manifest-layer", MiB)
		man = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
		    "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": len(cfg)},
		    "layers": [{"mediaType": OCI_LAYER, "digest": ld, "size": MiB}]},
		    indent=3).encode()
		md = self.upstream.put_manifest(repo, tag, man)
		want = hashlib.sha256(man).hexdigest()
		mpath = "/v2/%s/manifests/%s" % (repo, tag)
		rows = []
		res = {}
		ttl_name = "pullproxy --tag-ttl %d" % SHORT_TTL
		servers = [(n, self.peers[n]["url"]) for n in self.proxies()]
		for n, base in servers + [(ttl_name, None)]:
			if self.remaining() < 30:
				o.line("  %s: skipped (time budget)" % n)
				continue
			if n == PP_NAME and not self.pp_alive("manifests"):
				continue
			is_pp = n in (PP_NAME, ttl_name)
			if n == ttl_name:
				# Its own pullproxy with a short tag TTL, to see revalidation
				# under load: one upstream request per TTL, not one per client.
				if PP_NAME not in self.peers and PP_NAME not in self.unavailable:
					continue
				ttl_proc, base = self.start_pp_extra("pullproxy-ttl",
				    ["--tag-ttl", str(SHORT_TTL)], "http://127.0.0.1:%d" % self.front_port)
				if not base:
					o.line("  %s: did not start" % n)
					continue
			url = base + mpath
			st, nb, sha, _ = fetch(url, {"Accept": OCI_MANIFEST})
			ok = st == 200 and sha == want
			if not ok:
				o.line("  %s: warm-up GET: HTTP %s, %d bytes, %s" % (n, st, nb,
				    "digest ok" if sha == want else "digest MISMATCH"))
				if is_pp:
					self.errors.append("manifests (%s): warm-up GET HTTP %s, %d bytes, "
					    "digest %s" % (n, st, nb, "ok" if sha == want else "mismatch"))
			progress("manifests: %s, wrk %s" % (n, " ".join(WRK_ARGS)))
			mark = self.front.mark()
			ppm = self.pp_log_mark()
			try:
				w = subprocess.run(["wrk"] + WRK_ARGS + ["--latency", "-H",
				    "Accept: " + OCI_MANIFEST, url], capture_output=True,
				    timeout=60).stdout.decode()
			except subprocess.TimeoutExpired:
				w = ""
			time.sleep(0.3)
			ups = self.front.since(mark)
			man_req = [u for u in ups if u[1].startswith("/v2/%s/manifests/" % repo)]
			other = len(ups) - len(man_req)
			m = re.search(r"Requests/sec:\s+([\d.]+)", w)
			rps = float(m.group(1)) if m else None
			m = re.search(r"(\d+) requests in", w)
			total = int(m.group(1)) if m else None
			m = re.search(r"Non-2xx or 3xx responses: (\d+)", w)
			non2xx = int(m.group(1)) if m else 0
			m = re.search(r"Socket errors: (.*)", w)
			sockerr = m.group(1).strip() if m else ""
			lat = {}
			for q in ("50%", "99%"):
				m = re.search(r"^\s+%s\s+(\S+)" % q, w, re.M)
				lat[q] = m.group(1) if m else None
			res[n] = {"rps": rps, "up": len(man_req), "other": other,
			    "non2xx": non2xx, "ok": ok}
			if n == PP_NAME:
				self.pp_alive("manifests")
				self.note_pp_log(ppm, "manifests")
			if is_pp:
				if non2xx:
					self.errors.append("manifests (%s): %d non-2xx answers of %s "
					    "under wrk" % (n, non2xx, total))
				if sockerr:
					self.errors.append("manifests (%s): wrk socket errors: %s" % (
					    n, sockerr))
			if n == ttl_name:
				if ttl_proc.poll() is not None:
					self.errors.append("manifests: %s exited (status %s)" % (n,
					    ttl_proc.returncode))
				self.procs.stop(ttl_proc)
			if rps is None:
				o.line("  %s: wrk printed no result: %s" % (n, w.strip()[-300:]))
			rows.append([n, "yes" if ok else "NO", total, f1(rps), lat["50%"],
			    lat["99%"], non2xx, sockerr or "0", len(man_req),
			    "%s" % ", ".join("%s %d" % (k, sum(1 for u in man_req if u[0] == k))
			    for k in ("GET", "HEAD") if any(u[0] == k for u in man_req)) or None,
			    other])
		pp = res.get(PP_NAME)
		for r in rows:
			r.append(rx(ratio(pp["rps"], res[r[0]]["rps"])) if pp and r[0] not in
			    (PP_NAME, ttl_name) else None)
		o.table(["server", "digest ok", "requests", "req/s", "p50", "p99",
		    "non-2xx", "socket errors", "upstr manifest reqs", "by method",
		    "upstr other paths", "pp req/s / it"], rows)
		self.missing_lines([PEER_NGXCACHE, PEER_REGPROXY, PP_NAME])
		dur = float(WRK_ARGS[2][2:].rstrip("s"))
		allowed = int(dur // SHORT_TTL) + 1
		o.line("  upstream requests counted at the upstream during the wrk run "
		    "(warm-up GET excluded); pullproxy's default tag TTL is 60 s;")
		o.line("  %s: the same with tags trusted %d s, so %.0f s of load may ask "
		    "upstream at most %d times" % (ttl_name, SHORT_TTL, dur, allowed))
		o.line()
		nc = res.get(PEER_NGXCACHE)
		if pp and nc and pp["rps"] is not None and nc["rps"] is not None:
			self.target("manifests req/s >= nginx proxy_cache",
			    "%.0f vs %.0f req/s = x%.2f%s" % (pp["rps"], nc["rps"],
			    pp["rps"] / nc["rps"], ", %d non-2xx" % pp["non2xx"] if pp["non2xx"] else ""),
			    pp["rps"] >= nc["rps"] and pp["non2xx"] == 0 and pp["ok"])
		else:
			self.target("manifests req/s >= nginx proxy_cache",
			    self.unavailable.get(PP_NAME) or self.unavailable.get(PEER_NGXCACHE)
			    or "not measured", False if not pp else None)
		if pp:
			self.target("manifests: <= 1 upstream request per tag per TTL",
			    "%d in %.0f s (TTL 60 s)" % (pp["up"], dur), pp["up"] <= 1)
		else:
			self.target("manifests: <= 1 upstream request per tag per TTL",
			    self.unavailable.get(PP_NAME, "not measured"), False)
		pt = res.get(ttl_name)
		if pt:
			self.target("manifests, TTL %d s: <= 1 upstream request per TTL" % SHORT_TTL,
			    "%d in %.0f s (<= %d allowed)" % (pt["up"], dur, allowed),
			    pt["up"] <= allowed and pt["non2xx"] == 0)

	def start_pp_extra(self, name, flags, upstream_url, registry="bench.local"):
		"""Another pullproxy with its own cache dir and extra flags: (proc,
		base URL) or (None, None) when it did not start."""
		port = free_port()
		d = os.path.join(self.work, name)
		os.makedirs(d)
		p = self.procs.start(name, [self.pp_bin, "serve", "--listen",
		    "127.0.0.1:%d" % port, "--cache-dir", os.path.join(d, "cache"),
		    "--registry", "%s=%s" % (registry, upstream_url),
		    "--log", os.path.join(d, "pullproxy.log"), "--log-level", "info"] + flags,
		    os.path.join(d, "stderr"))
		url = "http://127.0.0.1:%d" % port
		if wait_http(url + "/v2/", p):
			return p, url
		why = tail(os.path.join(d, "stderr")) or "exit %s" % p.poll()
		self.errors.append("%s (%s) did not start: %s" % (name, " ".join(flags), why))
		self.procs.stop(p)
		return None, None

	# ---- 4. peak anonymous memory

	def memory(self):
		o = self.out
		o.line("== 4. peak anonymous memory: RssAnon summed over the server's "
		    "processes, sampled every 50 ms")
		o.line("  cold burst of %d clients for one uncached %d MiB layer (a fresh "
		    "digest per server), bytes sha256-checked in the stream" % (
		    MEM_CLIENTS, MEM_SIZE // MiB))
		repo = "bench/mem"
		names = self.proxies()
		free = shutil.disk_usage(self.work).free
		need = 2 * len(names) * MEM_SIZE + 2 * GiB
		if free < need:
			o.line("  not run: %.1f GiB free in %s, this needs %.1f GiB" % (
			    free / GiB, self.work, need / GiB))
			self.target("peak RssAnon in the %d MiB burst <= 32 MiB" % (MEM_SIZE // MiB),
			    "not run (disk)", False)
			return
		progress("memory: pushing %d layers of %d MiB" % (len(names), MEM_SIZE // MiB))
		digests = {n: self.upstream.push_blob(repo, "mem-" + n, MEM_SIZE)
		    for n in names}
		self.settle_disk()
		rows = []
		pp = None
		for n in names:
			if self.remaining() < 60:
				o.line("  %s: skipped (time budget)" % n)
				continue
			if n == PP_NAME and not self.pp_alive("memory"):
				continue
			progress("memory: %s, %d clients x %d MiB" % (n, MEM_CLIENTS, MEM_SIZE // MiB))
			d = digests[n]
			blob_path = "/v2/%s/blobs/%s" % (repo, d)
			url = self.peers[n]["url"] + blob_path
			base = rss_anon_kib(proc_tree(self.peers[n]["pid"])) / 1024.0
			mark = self.front.mark()
			ppm = self.pp_log_mark()
			sampler = RssSampler(self.peers[n]["pid"])
			sampler.start()
			tb = time.monotonic()
			res, wall = run_burst([(url, None)] * MEM_CLIENTS,
			    min(240, max(30, self.remaining() - 30)), hash_pipe=True)
			peak = sampler.stop()
			gets = self.front.count(mark, blob_path, "GET")
			xfer = self.upstream_xfer(tb, MEM_SIZE, gets)
			want = d.split(":")[1]
			good = sum(1 for code, nb, fin, sha, err in res
			    if code == 200 and nb == MEM_SIZE and sha == want)
			fins = [r[2] for r in res if r[2] is not None]
			r = {"base": base, "peak": peak, "gets": gets, "good": good,
			    "slow": max(fins) if len(fins) == len(res) else None,
			    "samples": sampler.samples, "xfer": xfer}
			if n == PP_NAME:
				pp = r
				self.pp_alive("memory")
				self.note_pp_log(ppm, "memory")
				if good != MEM_CLIENTS:
					bad = [x for x in res if not (x[0] == 200 and x[1] == MEM_SIZE
					    and x[3] == want)]
					self.errors.append("memory: %d of %d pullproxy clients failed, "
					    "e.g. HTTP %s %d bytes %s" % (len(bad), MEM_CLIENTS,
					    bad[0][0], bad[0][1], bad[0][4]))
			rows.append((n, r))
		table = []
		for n, r in rows:
			table.append([n, f1(r["base"]), f1(self.mem_peaks_cold.get(n)),
			    f1(r["peak"]), r["samples"], r["gets"], "%d/%d" % (r["good"], MEM_CLIENTS),
			    f2(r["slow"]), f2(r["xfer"]),
			    rx(ratio(pp["peak"], r["peak"])) if pp and n != PP_NAME else None])
		o.table(["server", "idle MiB", "peak %dx%dMiB MiB" % (COLD_CLIENTS,
		    COLD_SIZE // MiB), "peak %dx%dMiB MiB" % (MEM_CLIENTS, MEM_SIZE // MiB),
		    "samples", "upstr GETs", "sha ok", "slowest s", "upstr xfer s",
		    "pp peak / it"], table)
		self.missing_lines([PEER_NGXCACHE, PEER_REGPROXY, PP_NAME])
		if not self.mem_peaks_cold:
			o.line("  (the %d x %d MiB column is filled when the cold scenario runs "
			    "in the same run)" % (COLD_CLIENTS, COLD_SIZE // MiB))
		o.line()
		if pp:
			self.target("peak RssAnon in the %d MiB burst <= 32 MiB" % (MEM_SIZE // MiB),
			    "%.1f MiB (%d/%d sha ok)" % (pp["peak"], pp["good"], MEM_CLIENTS),
			    pp["peak"] <= 32 and pp["good"] == MEM_CLIENTS)
		else:
			self.target("peak RssAnon in the %d MiB burst <= 32 MiB" % (MEM_SIZE // MiB),
			    self.unavailable.get(PP_NAME, "not measured"), False)

	# ---- 5. churn

	def churn(self):
		o = self.out
		budget, bsize = CHURN_BUDGET, CHURN_BLOB
		per_round = budget // bsize
		rounds = CHURN_ROUNDS
		# Disk: upstream holds every blob once; the cache up to ~budget.
		free = shutil.disk_usage(self.work).free
		need = lambda r: (r + 1) * budget + int(budget * 1.2) + 2 * GiB
		scaled = ""
		while rounds > 1 and need(rounds) > free:
			rounds -= 1
		if rounds != CHURN_ROUNDS:
			scaled = (" SCALED DOWN to %d rounds: %.1f GiB free in %s, %d rounds "
			    "need %.1f GiB" % (rounds, free / GiB, self.work, CHURN_ROUNDS,
			    need(CHURN_ROUNDS) / GiB))
		o.line("== 5. churn (pullproxy, --cache-max-size %dG): fill with %d MiB blobs "
		    "to the budget, then %dx the budget of new blobs, one client, "
		    "straight from the upstream registry (no rate limit)%s" % (
		    budget // GiB, bsize // MiB, rounds, scaled))
		if need(rounds) > free:
			o.line("  not run: %.1f GiB free in %s" % (free / GiB, self.work))
			self.target("churn: data.mdb <= budget + 10%", "not run (disk)", False)
			self.target("churn: last/first round write MiB/s >= 0.8", "not run (disk)", False)
			return
		repo = "bench/churn"
		n_blobs = per_round * (rounds + 1)
		progress("churn: pushing %d blobs of %d MiB (%.1f GiB)" % (
		    n_blobs, bsize // MiB, n_blobs * bsize / GiB))
		t0 = time.monotonic()
		digests = []
		for i in range(n_blobs):
			digests.append(self.upstream.push_blob(repo, "churn-%d" % i, bsize))
			if self.remaining() < 40:
				break
		push_s = time.monotonic() - t0
		self.settle_disk()
		if len(digests) < n_blobs:
			rounds = len(digests) // per_round - 1
			o.line("  time budget: only %d blobs pushed; %d rounds after the fill"
			    % (len(digests), rounds))
			if rounds < 1:
				self.target("churn: data.mdb <= budget + 10%", "not run (time)", False)
				self.target("churn: last/first round write MiB/s >= 0.8", "not run (time)", False)
				return
		# Read every blob once straight from the upstream, untimed: the first
		# read of a freshly pushed blob was often several times slower here
		# (most GETs 0.03 s, some 0.2 s), which made whichever round came first
		# look slow for reasons that are not pullproxy's.
		progress("churn: reading every blob once from the upstream (untimed)")
		splice_get(self.work, [[("http://127.0.0.1:%d/v2/%s/blobs/%s" % (
		    self.up_port, repo, dg), "/dev/null") for dg in digests]],
		    max(30, min(300, self.remaining() - 60)))
		# The same client straight from the upstream, on the fill's blobs.
		progress("churn: direct pulls from the upstream (reference)")
		dwall, dbad, dfl = self.pull_in_turn([("http://127.0.0.1:%d/v2/%s/blobs/%s" % (
		    self.up_port, repo, dg), dg) for dg in digests[:per_round]], bsize, "direct")
		direct_mibs = per_round * bsize / MiB / dwall if dwall else None
		for fl in dfl[:3]:
			o.line("  direct pull problem (not pullproxy): %s" % fl)
		# Its own pullproxy, straight on the upstream registry.
		port = free_port()
		d = os.path.join(self.work, "pullproxy-churn")
		os.makedirs(d)
		cache = os.path.join(d, "cache")
		log = os.path.join(d, "pullproxy.log")
		p = self.procs.start("pullproxy churn", [self.pp_bin, "serve", "--listen",
		    "127.0.0.1:%d" % port, "--cache-dir", cache, "--cache-max-size",
		    "%dG" % (budget // GiB), "--registry",
		    "churn.local=http://127.0.0.1:%d" % self.up_port,
		    "--log", log, "--log-level", "info"], os.path.join(d, "stderr"))
		url = "http://127.0.0.1:%d" % port
		if not wait_http(url + "/v2/", p):
			why = tail(os.path.join(d, "stderr")) or "exit %s" % p.poll()
			o.line("  pullproxy did not start: %s" % why)
			self.errors.append("churn: pullproxy --cache-max-size did not start: " + why)
			self.procs.stop(p)
			self.target("churn: data.mdb <= budget + 10%", "did not start", False)
			self.target("churn: last/first round write MiB/s >= 0.8", "did not start", False)
			return
		mdb = os.path.join(cache, "data.mdb")
		rows = [["direct", per_round, per_round, dbad, f2(dwall), f1(direct_mibs)] +
		    [None] * 5]
		first = last = round1 = None
		size_end = None
		failures = []
		for r in range(rounds + 1):
			if self.remaining() < 20:
				o.line("  round %d and later: skipped (time budget)" % r)
				break
			if p.poll() is not None:
				failures.append("pullproxy exited (status %s) before round %d: %s" % (
				    p.returncode, r, tail(log, 3) or tail(os.path.join(d, "stderr"), 3)))
				break
			progress("churn: round %d/%d" % (r, rounds))
			mark = self.uplog.mark()
			wall, bad, fl = self.pull_in_turn([(url + "/v2/%s/blobs/%s" % (repo, dg), dg)
			    for dg in digests[r * per_round:(r + 1) * per_round]], bsize,
			    "round %d" % r)
			failures += fl
			time.sleep(0.3)
			ups = sum(1 for m, pth, s in self.uplog.since(mark)
			    if m == "GET" and "/blobs/" in pth and pth.startswith("/v2/" + repo))
			try:
				st = os.stat(mdb)
				fsize, alloc = st.st_size, st.st_blocks * 512
			except OSError:
				fsize = alloc = None
			stats = self.cache_stats(cache)
			mibs = per_round * bsize / MiB / wall
			if r == 0:
				first = mibs
			if r == 1:
				round1 = mibs
			last = mibs
			size_end = fsize
			rows.append(["fill" if r == 0 else str(r), per_round, ups, bad, f2(wall),
			    f1(mibs), f1(fsize / MiB if fsize is not None else None),
			    f1(alloc / MiB if alloc is not None else None),
			    f1(stats.get("blob_bytes") / MiB) if "blob_bytes" in stats else None,
			    stats.get("blobs"), stats.get("evictions")])
		o.table(["round", "blobs", "upstr GETs", "bad", "wall s", "MiB/s",
		    "data.mdb MiB", "allocated MiB", "blob MiB (stats)", "blobs (stats)",
		    "evictions (stats)"], rows)
		o.line("  every blob was read once from the upstream before (untimed), so no "
		    "round pays for first reads there; direct = the fill's blobs pulled")
		o.line("  straight from the upstream by the same client, before pullproxy "
		    "starts (what the upstream and client manage alone)")
		if first and last:
			o.line("  last/fill = %.2f; last/round 1 (the first round that evicts) = %s; "
			    "fill/direct = %s" % (last / first, f2(ratio(last, round1)),
			    f2(ratio(first, direct_mibs))))
		o.line("  upstream pushes took %.1f s (not counted); MiB/s = one client "
		    "pulling the round's blobs one after the other (%s -> tmpfs), sha256 "
		    "checked after each round" % (push_s, "curl" if CLIENT == "curl" else
		    "splice client"))
		stats = self.cache_stats(cache, raw=True)
		o.line("  cache stats --json at the end: %s" % stats)
		self.procs.stop(p, grace=40)
		if p.returncode not in (0, None):
			failures.append("pullproxy churn instance exited %s on SIGTERM" % p.returncode)
		bad_log = []
		try:
			with open(log, "rb") as f:
				bad_log = [l for l in f.read().decode("utf-8", "replace").splitlines()
				    if '"level":"warn"' in l or '"level":"error"' in l]
		except OSError:
			pass
		if bad_log:
			failures.append("pullproxy logged %d warn/error lines, first: %s" % (
			    len(bad_log), bad_log[0][:400]))
		for fl in failures[:5]:
			o.line("  PROBLEM: %s" % fl)
			self.errors.append("churn: " + fl)
		o.line()
		if size_end is not None:
			self.target("churn: data.mdb <= budget + 10%",
			    "%.0f MiB vs %.0f MiB budget (x%.2f)" % (size_end / MiB, budget / MiB,
			    size_end / budget), size_end <= budget * 1.1)
		else:
			self.target("churn: data.mdb <= budget + 10%", "no data.mdb", False)
		if first and last and round1 is not None:
			self.target("churn: last/first round write MiB/s >= 0.8",
			    "%.0f / %.0f MiB/s = %.2f" % (last, first, last / first),
			    last / first >= 0.8 and not failures)
		else:
			self.target("churn: last/first round write MiB/s >= 0.8", "not measured", False)

	def pull_in_turn(self, items, size, label):
		"""One client GETs items [(url, digest)] one after the other into
		tmpfs; sha256 checked after. Returns (seconds, bad count, problems)."""
		files = []
		for i, (u, dg) in enumerate(items):
			f = os.path.join(self.shm, "turn-%d" % i)
			files.append((u, f, dg))
			if CLIENT != "curl":
				fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
				try:
					os.posix_fallocate(fd, 0, size)
				except OSError:
					pass
				os.close(fd)
		t0 = time.monotonic()
		if CLIENT == "curl":
			res = [run_burst([(u, f)], 120)[0][0] for u, f, _ in files]
			wall = time.monotonic() - t0
		else:
			got, _ = splice_get(self.work, [[(u, f) for u, f, _ in files]],
			    max(30, min(600, self.remaining())))
			res = [(g["code"], g["bytes"], g["end"], None, g["err"]) for g in got]
			res += [(None, 0, None, None, "no result")] * (len(files) - len(res))
			wall = (got[-1]["end"] - got[0]["start"]) if got else time.monotonic() - t0
			if os.environ.get("BENCH_DEBUG"):
				progress("%s: %s" % (label, [round(g["end"] - g["start"], 3) for g in got]))
		bad, problems = 0, []
		hashes = hash_files([f for _, f, _ in files if os.path.exists(f)])
		for (code, nb, fin, _, err), (u, f, dg) in zip(res, files):
			if code != 200 or nb != size:
				bad += 1
				problems.append("%s %s: HTTP %s, %d bytes %s" % (label, dg[:19], code,
				    nb, err))
			elif hashes.get(f) != dg.split(":")[1]:
				bad += 1
				problems.append("%s: sha256 mismatch for %s" % (label, dg))
			if os.path.exists(f):
				os.unlink(f)
		return wall, bad, problems

	def cache_stats(self, cache, raw=False):
		try:
			r = subprocess.run([self.pp_bin, "cache", "--cache-dir", cache, "stats",
			    "--json"], capture_output=True, timeout=30)
		except subprocess.TimeoutExpired:
			return "timeout" if raw else {}
		s = r.stdout.decode("utf-8", "replace").strip()
		if raw:
			if r.returncode != 0:
				return "unavailable (exit %d: %s)" % (r.returncode,
				    (r.stderr.decode("utf-8", "replace").strip() or s)[:200])
			return s
		try:
			return json.loads(s) if r.returncode == 0 else {}
		except ValueError:
			return {}

	# ---- burst: a fake ACR that throttles, pods straight at it or through us

	def burst_pods(self, base, ctx, ns):
		"""BURST_PODS pulls at once, pod i pulling image i % BURST_IMAGES.
		Returns (failures [(pod, why)], 429s retried by clients, seconds)."""
		fails, retried, lock = [], [0], threading.Lock()
		start = threading.Barrier(BURST_PODS + 1)

		def pod(i):
			start.wait()
			try:
				n = pod_pull(base, ctx, "burst/app%02d" % (i % BURST_IMAGES),
				    "v1", ns)
				with lock:
					retried[0] += n
			except PullFailed as e:
				with lock:
					retried[0] += e.seen429
					fails.append((i, str(e)))

		threads = [threading.Thread(target=pod, args=(i,), daemon=True)
		    for i in range(BURST_PODS)]
		for t in threads:
			t.start()
		t0 = time.monotonic()
		start.wait()
		for t in threads:
			t.join(max(1.0, min(120.0, self.remaining() - 10)))
		if any(t.is_alive() for t in threads):
			fails.append((-1, "pods still pulling at the deadline"))
		return fails, retried[0], time.monotonic() - t0

	def burst(self):
		o = self.out
		o.line("== burst: %d pods pulling %d images at once (%d layers of %d KiB "
		    "+ config each) from a fake ACR over TLS that answers 429 beyond "
		    "%d reads/s (burst %d), anonymous pull" % (BURST_PODS, BURST_IMAGES,
		    BURST_LAYERS, BURST_LAYER_SIZE // 1024, BURST_ACR_RATE,
		    BURST_ACR_BURST))
		acr = self.fake_acr("burst", ["burst/app%02d" % i
		    for i in range(BURST_IMAGES)], BURST_LAYERS, BURST_LAYER_SIZE)
		if acr is None:
			return
		try:
			self.burst_run(acr)
		finally:
			acr.stop(check=False)

	def fake_acr(self, name, repos, layers, size, own_config=False):
		"""The fake ACR (tests/fakeacr, built if missing), anonymous pull,
		with an image tagged v1 of layers random layers of size bytes in
		each of repos (own_config: a config blob of its own each, else one
		shared by all); None (and a line saying why) when it cannot run."""
		sys.path.insert(0, os.path.join(self.root, "tests", "fakeacr"))
		import fakeacr
		if not os.path.exists(fakeacr.FAKEACR_BIN):
			subprocess.run(["ninja", "-C", os.path.join(self.root, "build"),
			    "tests/fakeacr/fakeacr"], capture_output=True, timeout=300)
		if not os.path.exists(fakeacr.FAKEACR_BIN):
			self.out.line("  not run: no fakeacr binary at %s" %
			    fakeacr.FAKEACR_BIN)
			return None
		content = os.path.join(self.work, name + "-content")
		rnd = random.Random(6)
		for repo in repos:
			config = {"architecture": "amd64", "os": "linux",
			    "rootfs": {"type": "layers", "diff_ids": []},
			    "config": {"Labels": {"repo": repo}}} if own_config else None
			fakeacr.write_image(content, repo, "v1",
			    [rnd.randbytes(size) for _ in range(layers)], config)
		return fakeacr.FakeACR().start(os.path.join(self.work, name + "-acr"),
		    content, anonymous=True)

	def burst_side(self, acr, name, base, ns):
		"""One run of the pods; returns a table row and the failures."""
		acr.clear_faults()
		acr.add_fault(listener="registry", status=429,
		    rate_limit=BURST_ACR_RATE, burst=BURST_ACR_BURST)
		acr.clear_requests()
		fails, retried, wall = self.burst_pods(base, acr.ssl_context(), ns)
		log = acr.requests("registry")
		times = sorted(r["time"] for r in log)
		ok = sorted(r["time"] for r in log if r["status"] != 429)
		n429 = sum(1 for r in log if r["status"] == 429)
		return [name, "%d/%d" % (len(fails), BURST_PODS), f1(wall), str(len(log)),
		    str(n429), str(peak_rate(times)), str(peak_rate(ok)),
		    str(retried)], fails

	def burst_run(self, acr):
		o = self.out
		conf = os.path.join(self.work, "burst-pullproxy.conf")
		with open(conf, "w") as f:
			f.write("[registry %s]\nurl = %s\nca_file = %s\nrate = %d\n"
			    "burst = %d\nmax_wait_s = 30\n" % (acr.registry,
			    acr.registry_url, acr.ca, BURST_PP_RATE, BURST_PP_BURST))
		port = free_port()
		cache = os.path.join(self.work, "burst-cache")
		log = os.path.join(self.work, "burst-pullproxy.log")
		pp = self.procs.start("pullproxy-burst", [self.pp_bin, "serve",
		    "--config", conf, "--listen", "127.0.0.1:%d" % port,
		    "--cache-dir", cache, "--log-level", "info"], log)
		if not wait_http("http://127.0.0.1:%d/healthz" % port, pp):
			o.line("  pullproxy did not start: " + tail(log))
			return
		rows, details = [], []
		for name, base, ns in (("direct", acr.registry_url, None),
		    (PP_NAME, "http://127.0.0.1:%d" % port, acr.registry)):
			progress("burst: %s" % name)
			row, fails = self.burst_side(acr, name, base, ns)
			rows.append(row)
			details += ["  %s pod %d: %s" % (name, i, why) for i, why in fails[:5]]
		self.procs.stop(pp)
		o.table(["path", "failed pulls", "wall s", "upstream reqs", "429s",
		    "peak req/s", "peak ok/s", "client 429 retries"], rows)
		for d in details:
			o.line(d)
		thr = [l for l in open(log) if "upstream throttled" in l]
		rej = [l for l in open(log) if "throttled locally" in l]
		o.line("  pullproxy paced at %d/s (burst %d): %d pauses after a 429, "
		    "%d log lines of local throttling" % (BURST_PP_RATE, BURST_PP_BURST,
		    len(thr), len(rej)))
		o.line()
		pp_fails = int(rows[1][1].split("/")[0])
		self.target("burst: zero failed pulls through pullproxy", rows[1][1]
		    + " failed, direct " + rows[0][1], pp_fails == 0)

	# ---- pacing: K nodes with default settings, one throttling registry

	def pacing(self):
		o = self.out
		o.line("== pacing: %d nodes (a pullproxy each, default rate 10/s, "
		    "burst 20, max_wait_s 30) pulling %d distinct images each at once "
		    "(%d layers of %d KiB + config) from a fake ACR over TLS that "
		    "answers 429 without Retry-After beyond %d reads/s (burst %d); "
		    "a request a node answers with an error goes to the registry "
		    "(hosts.toml's server), 429s there retried 5 times at once" % (
		    PACING_NODES, PACING_IMAGES, PACING_LAYERS,
		    PACING_LAYER_SIZE // 1024, PACING_ACR_RATE, PACING_ACR_BURST))
		acr = self.fake_acr("pacing", [self.pacing_repo(n, i)
		    for n in range(PACING_NODES) for i in range(PACING_IMAGES)],
		    PACING_LAYERS, PACING_LAYER_SIZE, own_config=True)
		if acr is None:
			return
		try:
			self.pacing_run(acr)
		finally:
			acr.stop(check=False)

	@staticmethod
	def pacing_repo(node, i):
		return "pacing/n%dimg%02d" % (node, i)

	def pacing_pods(self, acr, bases, fallback):
		"""Every node's pulls at once (bases[n]: where node n's pods go).
		Returns (failures, requests that fell back to the registry,
		seconds until the last pull ended)."""
		pods = [(n, i) for n in range(len(bases)) for i in range(PACING_IMAGES)]
		fails, sent, lock = [], {}, threading.Lock()
		start = threading.Barrier(len(pods) + 1)
		ctx = acr.ssl_context()

		def pod(n, i):
			mine = {}
			start.wait()
			try:
				pod_pull(bases[n], ctx, self.pacing_repo(n, i), "v1",
				    acr.registry if fallback else None,
				    timeout=PACING_TIMEOUT_S, fallback=fallback, sent=mine)
			except PullFailed as e:
				with lock:
					fails.append(((n, i), str(e)))
			with lock:
				sent["fallback"] = sent.get("fallback", 0) + \
				    mine.get("fallback", 0)

		threads = [(p, threading.Thread(target=pod, args=p, daemon=True))
		    for p in pods]
		for _, t in threads:
			t.start()
		t0 = time.monotonic()
		start.wait()
		end = t0 + min(PACING_TIMEOUT_S + 10, max(1.0, self.remaining() - 10))
		for _, t in threads:
			t.join(max(0.1, end - time.monotonic()))
		with lock:
			fails += [(p, "still pulling at the deadline")
			    for p, t in threads if t.is_alive()]
			return list(fails), sent.get("fallback", 0), \
			    time.monotonic() - t0

	def pacing_run(self, acr):
		o = self.out
		nodes = []
		for n in range(PACING_NODES):
			conf = os.path.join(self.work, "pacing-%d.conf" % n)
			with open(conf, "w") as f:	# the defaults: only where it is
				f.write("[registry %s]\nurl = %s\nca_file = %s\n" % (
				    acr.registry, acr.registry_url, acr.ca))
			port = free_port()
			log = os.path.join(self.work, "pacing-%d.log" % n)
			p = self.procs.start("pullproxy-pacing-%d" % n, [self.pp_bin,
			    "serve", "--config", conf, "--listen", "127.0.0.1:%d" % port,
			    "--cache-dir", os.path.join(self.work, "pacing-cache-%d" % n),
			    "--log-level", "info"], log)
			if not wait_http("http://127.0.0.1:%d/healthz" % port, p):
				o.line("  pullproxy %d did not start: %s" % (n, tail(log)))
				return
			nodes.append((p, port, log))
		# What the registry must serve at least: each image's manifest,
		# config and layers once (a tag's HEAD can be answered by the GET).
		reads = PACING_NODES * PACING_IMAGES * (2 + PACING_LAYERS)
		ideal = float(reads) / PACING_ACR_RATE
		rows, details = [], []
		for name, bases, fallback in (
		    ("direct", [acr.registry_url] * PACING_NODES, None),
		    ("%d x %s" % (PACING_NODES, PP_NAME), ["http://127.0.0.1:%d" % port
		    for _, port, _ in nodes], acr.registry_url)):
			progress("pacing: %s" % name)
			acr.clear_faults()
			acr.add_fault(listener="registry", status=429,
			    rate_limit=PACING_ACR_RATE, burst=PACING_ACR_BURST)
			acr.clear_requests()
			fails, fell, wall = self.pacing_pods(acr, bases, fallback)
			log = acr.requests("registry")
			n429 = sum(1 for r in log if r["status"] == 429)
			rows.append([name, "%d/%d" % (len(fails),
			    PACING_NODES * PACING_IMAGES), str(len(log)), str(n429),
			    str(fell) if fallback else "-", f1(wall),
			    "%.2fx" % (wall / ideal)])
			details += ["  %s pod %s: %s" % (name, who, why)
			    for who, why in fails[:4]]
		pp429, rates, cuts = 0, [], 0
		for p, port, log in nodes:
			m = self.pp_metrics(port)
			pp429 += int(m.get('pullproxy_upstream_throttled_total{registry="%s"}'
			    % acr.registry, 0))
			rates.append(m.get('pullproxy_ratelimit_rate{registry="%s"}'
			    % acr.registry))
			self.procs.stop(p)
			cuts += sum(1 for l in open(log) if "upstream rate cut" in l)
		o.table(["path", "failed pulls", "registry reqs", "429s",
		    "fell back to registry", "wall s", "wall / ideal"], rows)
		for d in details:
			o.line(d)
		o.line("  ideal: %d reads (manifest, config, layers) / %d reads/s = %.0f s; "
		    "of the 429s, %d were "
		    "drawn by the pullproxies, the rest by pods sent to the registry"
		    % (reads, PACING_ACR_RATE, ideal, pp429))
		o.line("  rate cuts logged by the pullproxies: %d; admitted rate per "
		    "node at the end: %s" % (cuts, ", ".join(
		    "?" if r is None else "%g/s" % r for r in rates)))
		o.line()
		self.target("pacing: zero failed pulls through %d default nodes" %
		    PACING_NODES, rows[1][1] + " failed, direct " + rows[0][1],
		    rows[1][1].startswith("0/"))

	def pp_metrics(self, port):
		"""A pullproxy's /metrics as {series: value}; {} when unreadable."""
		out = {}
		try:
			c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
			c.request("GET", "/metrics")
			text = c.getresponse().read().decode()
			c.close()
		except OSError:
			return out
		for line in text.splitlines():
			if line and not line.startswith("#"):
				k, _, v = line.rpartition(" ")
				try:
					out[k] = float(v)
				except ValueError:
					pass
		return out

	# ---- driver

	def run(self):
		self.header()
		progress("starting upstream, front and peers in %s" % self.work)
		# burst and pacing bring their own fake ACR
		if set(self.args.scenarios) - {"burst", "pacing"}:
			self.start_servers()
		for n, why in self.unavailable.items():
			self.out.line("NOTE: %s %s; the run goes on without it" % (n, why))
			if n == PP_NAME:
				self.errors.append("pullproxy " + why)
		if self.unavailable:
			self.out.line()
		for s in self.args.scenarios:
			if self.remaining() < 30:
				self.out.line("== %s: skipped (time budget of %d s spent)" % (
				    s, self.args.budget))
				continue
			t = time.monotonic()
			try:
				getattr(self, s)()
			except Stop:
				raise
			except Exception as e:
				import traceback
				self.out.line("  scenario %s stopped by an error: %s" % (s, e))
				progress(traceback.format_exc())
			progress("%s done in %.0f s" % (s, time.monotonic() - t))
		self.summary()

	def summary(self):
		o = self.out
		o.line("== targets (pullproxy)")
		o.table(["target", "measured", "result"], self.targets, left=2)
		o.line()
		o.line("pullproxy problems seen: %s" % ("none" if not self.errors else ""))
		for e in self.errors:
			o.line("  - " + e)
		o.line("run took %.0f s" % (time.monotonic() - (self.deadline - self.args.budget)))

	def machine_share(self):
		"""After cleanup (every child reaped): CPU seconds the whole machine
		was busy since the start, and how much of it was this run's."""
		busy0 = self.busy0
		idle1 = machine_idle()
		busy = ((idle1[1] - idle1[0]) - (busy0[1] - busy0[0])) / CLK_TCK
		me = resource.getrusage(resource.RUSAGE_SELF)
		ours = me.ru_utime + me.ru_stime + children_cpu() - self.ours0
		return busy, ours

	def cleanup(self):
		self.procs.stop_all()
		if self.shm.startswith("/dev/shm/"):
			shutil.rmtree(self.shm, ignore_errors=True)


def main():
	if len(sys.argv) == 5 and sys.argv[1] == "_relay":
		relay_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
		return 0
	if len(sys.argv) == 3 and sys.argv[1] == "_get":
		return get_main(sys.argv[2])
	ap = argparse.ArgumentParser(description=__doc__)
	ap.add_argument("--root", required=True)
	ap.add_argument("--work", required=True)
	ap.add_argument("--budget", type=float, default=float(os.environ.get(
	    "BENCH_BUDGET_S", "570")))
	ap.add_argument("--build-status", default="unknown")
	ap.add_argument("--warm-n", type=int, default=0,
	    help="GETs per client in the warm scenario (default: calibrated)")
	ap.add_argument("scenarios", nargs="*")
	args = ap.parse_args()
	for s in args.scenarios:
		if s not in SCENARIOS:
			ap.error("unknown scenario %r (choose from %s)" % (s, " ".join(SCENARIOS)))
	if not args.scenarios:
		args.scenarios = list(SCENARIOS)
	else:	# keep the canonical order (memory reuses the cold burst's peaks)
		args.scenarios = [s for s in SCENARIOS if s in args.scenarios]
	signal.signal(signal.SIGTERM, on_signal)
	signal.signal(signal.SIGINT, on_signal)
	signal.signal(signal.SIGHUP, on_signal)
	out = Out(os.path.join(args.root, "bench", "results", "latest.txt"))
	b = Bench(args, out)
	rc = 0
	try:
		b.run()
	except Stop as e:
		out.line("STOPPED (%s): the figures above are all this run has" % e)
		out.line()
		try:
			b.summary()
		except Exception:
			pass
		rc = 1
	except Exception as e:
		import traceback
		out.line("ERROR: %s" % e)
		progress(traceback.format_exc())
		rc = 1
	finally:
		signal.signal(signal.SIGTERM, signal.SIG_IGN)
		signal.signal(signal.SIGINT, signal.SIG_IGN)
		b.cleanup()
		busy, ours = b.machine_share()
		out.line("machine busy %.0f CPU-s during the run, %.0f of them this run's "
		    "processes: %.0f CPU-s (%.0f%%) went to other work on the machine%s" % (
		    busy, ours, max(0, busy - ours), 100 * max(0, busy - ours) / max(busy, 1),
		    " (kernel threads included)"))
		out.close()
	return rc


if __name__ == "__main__":
	sys.exit(main())
