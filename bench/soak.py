#!/usr/bin/python3
"""Soak: pullproxy under mixed warm and cold pulls with upstream faults
injected, for a bounded time; started by bench/soak.sh (see there and
bench/README.md). Python 3 standard library only, plus tests/fakeacr's
fakeacr.py.

Clients pull images the way containerd does (manifest by tag, then the
config and layers by digest, every digest checked) from a fake ACR over
TLS, through one pullproxy whose cache holds a fraction of the images
(eviction and cold pulls keep happening) and whose tags expire every few
seconds (revalidations). A fault injector posts one rule at a time to
the fake ACR: resets and FINs mid-body, 5xx, 429, stalls past the stall
timeout, wrong bytes, slow answers. Every client error is attributed:
to an injected fault when the fake logged a faulted request for that
repository and reference during the client's request (or, for a 503, a
429 pause or an open circuit that injected faults caused), else
"unexplained", which should stay 0. Every few seconds pullproxy's
RssAnon and open file descriptors are sampled.

Everything listens on 127.0.0.1 and is stopped at the end.
"""
import argparse
import hashlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request

MiB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IMAGES = 24
LAYERS = 3
CLIENTS = 6
BUDGET = "64M"
TAG_TTL_S = 5
STALL_S = 3
SAMPLE_S = 5
FAULT_EVERY_S = 2.0
HOT = 4			# images most pulls go to (they stay warm)
HOT_SHARE = 0.6
THINK_S = (0.3, 1.5)	# a client's pause between pulls (2 shared cores)
WINDOW_S = 1.0		# slack around a request when matching faults
INDIRECT_S = 75.0	# how long a 429 pause or an open circuit may echo


class Stop(Exception):
	pass


def on_signal(signum, frame):
	raise Stop("signal %d" % signum)


def progress(msg):
	sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), msg))
	sys.stderr.flush()


def layer_sizes(rnd):
	"""Small, medium and large layers; odd sizes, some a few bytes past
	a MiB (the chunk boundary)."""
	out = []
	for _ in range(LAYERS):
		kind = rnd.random()
		if kind < 0.4:
			out.append(rnd.randint(1, 256) * 1024 + rnd.randint(0, 999))
		elif kind < 0.8:
			out.append(rnd.randint(1, 3) * MiB + rnd.choice(
			    (1, 17, 4321, rnd.randint(0, MiB - 1))))
		else:
			out.append(rnd.randint(4, 7) * MiB + rnd.randint(0, MiB - 1))
	return out


def rss_fds(pid):
	rss = None
	with open("/proc/%d/status" % pid) as f:
		for line in f:
			if line.startswith("RssAnon:"):
				rss = int(line.split()[1])
	return rss, len(os.listdir("/proc/%d/fd" % pid))


class Client(threading.Thread):
	"""One node pulling images, one at a time, keep-alive."""

	def __init__(self, n, soak):
		super().__init__(daemon=True)
		self.n, self.soak = n, soak
		self.rnd = random.Random(1000 + n)
		self.conn = None
		self.reused = False	# the connection answered before

	def request(self, path, accept=None):
		"""(status, headers, body, complete, error)"""
		for attempt in (0, 1):
			if self.conn is None:
				self.conn = http.client.HTTPConnection(
				    "127.0.0.1", self.soak.port, timeout=60)
				self.reused = False
			try:
				h = {"Accept": accept} if accept else {}
				self.conn.request("GET", path + "?ns=" +
				    self.soak.registry, headers=h)
				resp = self.conn.getresponse()
			except (http.client.RemoteDisconnected,
			    ConnectionResetError, BrokenPipeError) as e:
				# A kept-alive connection pullproxy closed
				# while idle: containerd would just reconnect.
				# On a new one it is an error.
				self.conn.close()
				self.conn = None
				if attempt == 0 and self.reused:
					continue
				return None, {}, b"", False, repr(e)
			except OSError as e:
				self.conn.close()
				self.conn = None
				return None, {}, b"", False, repr(e)
			try:
				body = resp.read()
				complete = True
				err = None
			except (http.client.IncompleteRead, OSError) as e:
				body, complete, err = b"", False, repr(e)[:200]
			self.reused = True
			if not complete or resp.getheader("Connection") == "close":
				self.conn.close()
				self.conn = None
			return resp.status, resp.headers, body, complete, err

	def record(self, t0, kind, repo, ref, status, ok, err, body=b""):
		msg = ""
		if not ok and body:
			try:
				msg = json.loads(body)["errors"][0].get(
				    "message", "")
			except (ValueError, KeyError, IndexError, TypeError):
				msg = body[:200].decode(errors="replace")
		self.soak.note(dict(t0=t0, t1=time.monotonic(), kind=kind,
		    repo=repo, ref=ref, status=status, ok=ok, error=err,
		    message=msg, client=self.n))

	def pull(self, img):
		repo = img["repo"]
		t0 = time.monotonic()
		st, h, body, complete, err = self.request(
		    "/v2/%s/manifests/v1" % repo, OCI_MANIFEST)
		ok = st == 200 and complete and body == img["manifest_bytes"]
		self.record(t0, "manifest", repo, "v1", st, ok,
		    err or (None if ok else "status %s" % st), body)
		if not ok:
			return False
		whole = True
		for d in [img["config"]] + img["layers"]:
			t0 = time.monotonic()
			st, h, body, complete, err = self.request(
			    "/v2/%s/blobs/%s" % (repo, d))
			got = "sha256:" + hashlib.sha256(body).hexdigest()
			ok = st == 200 and complete and got == d
			if st == 200 and complete and got != d:
				# Never acceptable, whatever the fault.
				self.soak.wrong += 1
			self.record(t0, "blob", repo, d, st, ok, err or
			    (None if ok else "status %s" % st), body if
			    st != 200 else b"")
			self.soak.bytes += len(body)
			whole = whole and ok
		return whole

	def run(self):
		while not self.soak.stopping.is_set():
			if self.rnd.random() < HOT_SHARE:
				img = self.soak.images[self.rnd.randrange(HOT)]
			else:
				img = self.soak.images[self.rnd.randrange(
				    HOT, len(self.soak.images))]
			ok = self.pull(img)
			with self.soak.lock:
				self.soak.pulls += 1
				self.soak.failed_pulls += not ok
			self.soak.stopping.wait(self.rnd.uniform(*THINK_S))


# Each a rule for the fake ACR (count 1 unless said) and what it does.
FAULTS = [
	("reset mid-body", dict(endpoint="storage", reset_after_bytes=-1)),
	("FIN mid-body", dict(endpoint="storage", close_after_bytes=-1)),
	("reset before answering", dict(endpoint="manifests",
	    reset_after_bytes=0)),
	("503 once", dict(endpoint="manifests", status=503)),
	("500 three times", dict(endpoint="any", status=500, count=3)),
	("429", dict(endpoint="manifests", status=429,
	    headers={"Retry-After": "1"})),
	("storage 503", dict(endpoint="storage", status=503)),
	("stall past the timeout", dict(endpoint="storage",
	    stall_s=STALL_S + 3)),
	("wrong bytes", dict(endpoint="storage", corrupt=True)),
	("slow answer", dict(endpoint="manifests", delay_ms=1500)),
]


class Soak:
	def __init__(self, args):
		self.args = args
		self.lock = threading.Lock()
		self.stopping = threading.Event()
		self.results = []
		self.faulted = []	# the fake's log entries a rule matched
		self.rules = {}		# id -> fault name
		self.samples = []	# (t, rss KiB, fds)
		self.pulls = self.failed_pulls = self.bytes = self.wrong = 0
		self.upstream_requests = 0

	def note(self, r):
		with self.lock:
			self.results.append(r)

	# ------------------------------------------------------ setup

	def setup(self):
		sys.path.insert(0, os.path.join(self.args.root, "tests",
		    "fakeacr"))
		import fakeacr
		self.fakeacr = fakeacr
		work = self.args.work
		content = os.path.join(work, "content")
		rnd = random.Random(7)
		self.images = []
		total = 0
		for i in range(IMAGES):
			layers = [rnd.randbytes(s) for s in layer_sizes(rnd)]
			total += sum(map(len, layers))
			img = fakeacr.write_image(content, "soak/app%02d" % i,
			    "v1", layers)
			img["repo"] = "soak/app%02d" % i
			self.images.append(img)
		self.content_bytes = total
		self.acr = fakeacr.FakeACR().start(os.path.join(work, "acr"),
		    content, anonymous=True)
		self.registry = self.acr.registry
		self.port = fakeacr.free_port()
		self.log = os.path.join(work, "pullproxy.log")
		conf = os.path.join(work, "pullproxy.conf")
		with open(conf, "w") as f:
			f.write("[server]\nlisten = 127.0.0.1:%d\n"
			    "cache_dir = %s\ncache_max_size = %s\n"
			    "tag_ttl_s = %d\nstall_timeout_s = %d\n"
			    "connect_timeout_ms = 2000\nlog = %s\n"
			    "log_level = info\n\n[registry %s]\nurl = %s\n"
			    "ca_file = %s\nrate = 500\nburst = 500\n" % (
			    self.port, os.path.join(work, "cache"), BUDGET,
			    TAG_TTL_S, STALL_S, self.log, self.registry,
			    self.acr.registry_url, self.acr.ca))
		self.pp = subprocess.Popen([self.args.pullproxy, "serve",
		    "--config", conf], stdin=subprocess.DEVNULL,
		    stdout=subprocess.DEVNULL, stderr=open(os.path.join(work,
		    "pullproxy.stderr"), "wb"))
		deadline = time.monotonic() + 30
		while True:
			try:
				urllib.request.urlopen("http://127.0.0.1:%d/healthz"
				    % self.port, timeout=2).read()
				break
			except OSError:
				if self.pp.poll() is not None or \
				    time.monotonic() > deadline:
					raise RuntimeError("pullproxy did not start")
				time.sleep(0.1)

	# ---------------------------------------------------- threads

	def drain(self):
		"""The fake's log since the last call; keeps faulted entries."""
		log = self.acr.requests(clear=True)
		with self.lock:
			self.upstream_requests += len(log)
			self.faulted += [e for e in log if e.get("fault")]

	def injector(self):
		rnd = random.Random(99)
		while not self.stopping.wait(FAULT_EVERY_S):
			name, rule = rnd.choice(FAULTS)
			rule = dict(rule)
			for k in ("reset_after_bytes", "close_after_bytes"):
				if rule.get(k) == -1:
					rule[k] = rnd.randint(64 * 1024, 3 * MiB)
			rule.setdefault("count", 1)
			# Half the rules for one repository, half for any.
			if rnd.random() < 0.5:
				rule["repo"] = rnd.choice(self.images)["repo"]
			try:
				rid = self.acr.add_fault(**rule)
			except OSError:
				continue
			with self.lock:
				self.rules[rid] = name
			try:
				self.drain()
			except OSError:
				pass

	def sampler(self):
		while True:
			try:
				rss, fds = rss_fds(self.pp.pid)
			except OSError:
				return
			self.samples.append((time.monotonic() - self.t0, rss, fds))
			if self.stopping.wait(SAMPLE_S):
				return

	# ---------------------------------------------- attribution

	def attribute(self, r):
		"""The cause of one client error: direct, pause, circuit, or
		None (unexplained)."""
		lo, hi = r["t0"] - WINDOW_S, r["t1"] + WINDOW_S
		for e in self.faulted:
			if e.get("repo") != r["repo"] or not lo <= e["time"] <= hi:
				continue
			path = e.get("path", "")
			if r["ref"] in path or (r["kind"] == "manifest" and
			    e.get("endpoint") == "manifests"):
				return "direct"
			if e.get("endpoint") in ("blobs", "storage") and \
			    r["kind"] == "blob" and r["ref"] in path:
				return "direct"
		if r["status"] == 503:
			msg = r.get("message", "")
			for e in self.faulted:
				if not r["t0"] - INDIRECT_S <= e["time"] <= hi:
					continue
				name = self.rules.get(e["fault"], "")
				if name == "429":
					return "429 pause"
				if "circuit" in msg:
					return "circuit"
		return None

	# ------------------------------------------------------- run

	def run(self):
		self.setup()
		self.t0 = time.monotonic()
		threads = [threading.Thread(target=self.sampler, daemon=True),
		    threading.Thread(target=self.injector, daemon=True)]
		threads += [Client(i, self) for i in range(CLIENTS)]
		for t in threads:
			t.start()
		end = self.t0 + self.args.seconds
		try:
			while time.monotonic() < end:
				time.sleep(min(10, end - time.monotonic()))
				if self.pp.poll() is not None:
					raise RuntimeError("pullproxy exited %s" %
					    self.pp.returncode)
				with self.lock:
					progress("%4.0f s: %d pulls, %d failed, "
					    "RssAnon %s KiB, %s fds" % (
					    time.monotonic() - self.t0, self.pulls,
					    self.failed_pulls,
					    self.samples[-1][1] if self.samples else "?",
					    self.samples[-1][2] if self.samples else "?"))
		finally:
			self.stopping.set()
			for t in threads:
				t.join(90)
		self.elapsed = time.monotonic() - self.t0
		time.sleep(1)
		self.drain()
		self.acr.clear_faults()
		self.rss_fds_end = rss_fds(self.pp.pid)
		try:
			self.metrics = urllib.request.urlopen(
			    "http://127.0.0.1:%d/metrics" % self.port,
			    timeout=10).read().decode()
		except OSError:
			self.metrics = ""
		self.pp.send_signal(signal.SIGTERM)
		try:
			self.exit = self.pp.wait(40)
		except subprocess.TimeoutExpired:
			self.pp.kill()
			self.exit = "killed after 40 s"
		self.verify = subprocess.run([self.args.pullproxy, "cache",
		    "--cache-dir", os.path.join(self.args.work, "cache"),
		    "verify"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
		    text=True, timeout=300).stdout.strip()
		self.acr.stop(check=False)

	def stop(self):
		self.stopping.set()
		for p in (getattr(self, "pp", None),):
			if p is not None and p.poll() is None:
				p.kill()
				p.wait(10)
		acr = getattr(self, "acr", None)
		if acr is not None and acr.proc is not None:
			acr.stop(check=False)

	# ---------------------------------------------------- report

	def metric(self, name):
		total = 0.0
		for line in self.metrics.splitlines():
			if line.startswith(name + " ") or line.startswith(name + "{"):
				total += float(line.rsplit(" ", 1)[1])
		return int(total)

	def report(self):
		warm = min(60.0, self.elapsed / 4)
		after = [s for s in self.samples if s[0] >= warm]
		first = after[0] if after else self.samples[0]
		last = (self.elapsed, self.rss_fds_end[0], self.rss_fds_end[1])
		errors = [r for r in self.results if not r["ok"]]
		causes = {}
		unexplained = []
		for r in errors:
			c = self.attribute(r)
			causes[c] = causes.get(c, 0) + 1
			if c is None:
				unexplained.append(r)
		hits = self.metric("pullproxy_cache_hits_total")
		misses = self.metric("pullproxy_cache_misses_total")
		out = []
		w = out.append
		w("pullproxy soak: %s" % time.strftime("%Y-%m-%d %H:%M:%S %z"))
		w("binary %s; %.0f s, %d clients, %d images (%d layers each, "
		    "%.0f MiB in all), budget %s, tag TTL %d s, stall timeout "
		    "%d s; a fault every %.0f s" % (self.args.pullproxy,
		    self.elapsed, CLIENTS, IMAGES, LAYERS,
		    self.content_bytes / MiB, BUDGET, TAG_TTL_S, STALL_S,
		    FAULT_EVERY_S))
		w("")
		w("pulls            %d (%d with an error), %d requests, "
		    "%.2f GiB to clients" % (self.pulls, self.failed_pulls,
		    len(self.results), self.bytes / (1 << 30)))
		w("cache            %d hits, %d misses (%.0f%% hits); "
		    "%d upstream requests; %d evictions" % (hits, misses,
		    100.0 * hits / max(hits + misses, 1),
		    self.upstream_requests,
		    self.metric("pullproxy_cache_evictions_total")))
		w("pullproxy        %d retries, %d circuit openings" % (
		    self.metric("pullproxy_upstream_retries_total"),
		    self.metric("pullproxy_circuit_opened_total")))
		hit = {}
		for e in self.faulted:
			name = self.rules.get(e["fault"], "?")
			hit[name] = hit.get(name, 0) + 1
		w("faults injected  %d rules; requests they hit: %s" % (
		    len(self.rules), ", ".join("%s %d" % kv for kv in
		    sorted(hit.items()))))
		w("client errors    %d: %d caused by an injected fault "
		    "(%s), %d unexplained" % (len(errors), len(errors) -
		    len(unexplained), ", ".join("%s %d" % (k, v) for k, v in
		    sorted(causes.items(), key=lambda kv: str(kv[0]))
		    if k is not None) or "none", len(unexplained)))
		w("wrong bytes      %d complete bodies with the wrong digest" %
		    self.wrong)
		w("RssAnon          %d KiB after warm-up (%.0f s), %d KiB at "
		    "the end, %d KiB max" % (first[1], first[0], last[1],
		    max(s[1] for s in self.samples)))
		w("fds              %d after warm-up, %d at the end, %d max" % (
		    first[2], last[2], max(s[2] for s in self.samples)))
		w("exit on SIGTERM  %s" % self.exit)
		w("cache verify     %s" % self.verify.splitlines()[-1])
		w("")
		w("samples (s, RssAnon KiB, fds), every %d s:" % (SAMPLE_S * 6))
		for s in self.samples[::6]:
			w("  %5.0f %8d %4d" % s)
		if unexplained:
			w("")
			w("unexplained errors (first 20):")
			for r in unexplained[:20]:
				w("  %s" % json.dumps(r))
		return out


def main():
	ap = argparse.ArgumentParser()
	ap.add_argument("--root", required=True)
	ap.add_argument("--work", required=True)
	ap.add_argument("--pullproxy", required=True)
	ap.add_argument("--seconds", type=float, default=600)
	ap.add_argument("--out", required=True)
	args = ap.parse_args()
	signal.signal(signal.SIGTERM, on_signal)
	signal.signal(signal.SIGINT, on_signal)
	soak = Soak(args)
	try:
		soak.run()
		lines = soak.report()
	except Stop as e:
		progress("stopped: %s" % e)
		soak.stop()
		return 1
	except Exception:
		soak.stop()
		raise
	text = "\n".join(lines) + "\n"
	sys.stdout.write(text)
	os.makedirs(os.path.dirname(args.out), exist_ok=True)
	with open(args.out, "w") as f:
		f.write(text)
	return 0


if __name__ == "__main__":
	sys.exit(main())
