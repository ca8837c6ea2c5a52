"""Deployment: `pullproxy containerd-config` against a real containerd, and
checks of what deploy/ ships: the Kubernetes manifests (parsed, their
fields cross-checked, and schema-validated offline), the container image's
runtime libraries, and the systemd unit (systemd-analyze) and installer."""

import configparser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import (LOCALHOST, PULLPROXY_BIN, ROOT, Containerd, build_image,
                      push_image, run)

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
MONITORING = K8S / "monitoring"
PREFETCH = K8S / "prefetch"
SCHEMA = ROOT / "tests" / "kubernetes"

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
    # Two registries: the one without a foreign file is written all the
    # same, and the exit status is 0 (an init container must not
    # crash-loop on a node where someone else owns one registry's file).
    conf = pullproxy_conf(tmp_path / "pullproxy.conf", 5000,
                          [("second.example", "https://second.example"),
                           (registry.host, registry.url)])
    before = snapshot(hosts)

    cp = containerd_config_cmd("--config", conf, "--hosts-dir", hosts,
                               "--containerd-config", ctd_conf)
    assert cp.returncode == 0, cp.stderr
    assert "skip %s: not written by pullproxy" % foreign in cp.stdout, cp.stdout
    assert "wrote %s" % (hosts / "second.example" / "hosts.toml") in cp.stdout
    one_line_error(cp, "1 of 2 registries left alone")
    assert foreign.read_text() == before[str(foreign.relative_to(hosts))][1].decode()
    assert (hosts / "second.example" / "hosts.toml").read_text().startswith(MARK)
    cp = containerd_config_cmd("--remove", "--hosts-dir", hosts)
    assert cp.returncode == 0, cp.stderr
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


# ------------------------------------------------------- Kubernetes manifests

def load_yaml(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomize_objects(kdir, kind="Kustomization"):
    """The objects a kustomization's (or component's) resources hold and
    the ConfigMaps its configMapGenerator makes (parsed YAML; generated
    names without kustomize's hash suffix)."""
    k = load_yaml(kdir / "kustomization.yaml")[0]
    assert k["kind"] == kind
    objs = []
    for res in k["resources"]:
        assert (kdir / res).is_file(), "kustomization names a missing file: %s" % res
        objs += load_yaml(kdir / res)
    for gen in k.get("configMapGenerator", []):
        data = {}
        for f in gen["files"]:
            assert (kdir / f).is_file(), "configMapGenerator names a missing file: %s" % f
            data[f] = (kdir / f).read_text()
        meta = {"name": gen["name"], "labels": gen.get("options", {}).get("labels", {})}
        if "namespace" in gen:
            meta["namespace"] = gen["namespace"]
        objs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
    return k, objs


def deploy_copy(tmp_path):
    """A copy of deploy/kubernetes under tmp_path/deploy, to render or edit."""
    copy = tmp_path / "deploy"
    if not copy.exists():
        shutil.copytree(K8S, copy / "kubernetes")
    return copy


def kustomize_render(deploy, components=()):
    """kubectl kustomize of deploy/kubernetes (a copy: deploy_copy), from
    an overlay next to it with these components, as an operator would
    (kustomize refuses a parent or an absolute path as a resource): the
    objects as applied. None without a kubectl whose kustomize knows
    components and labels (v4 and later: kubectl 1.24+; Debian 12's
    kubernetes-client is 1.20)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    cp = run([kubectl, "version", "--client", "-o", "json"], check=False, timeout=30)
    try:
        kv = json.loads(cp.stdout).get("kustomizeVersion", "")
    except ValueError:
        return None
    m = re.match(r"v(\d+)\.", kv)
    if m is None or int(m.group(1)) < 4:
        return None
    overlay = deploy / "overlay"
    overlay.mkdir(exist_ok=True)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": ["../kubernetes"],
        "components": ["../kubernetes/%s" % c for c in components]}))
    cp = run([kubectl, "kustomize", str(overlay)], check=False, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return [d for d in yaml.safe_load_all(cp.stdout) if d is not None]


def image_platforms():
    """The architectures the Dockerfile says the image is built for."""
    m = re.search(r"buildx build --platform (\S+)", (K8S / "Dockerfile").read_text())
    assert m, "the Dockerfile says how to build it multi-arch"
    plats = m.group(1).split(",")
    assert all(p.startswith("linux/") for p in plats), plats
    return [p.split("/", 1)[1] for p in plats]


def find(objs, kind, name):
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, (kind, name, [(o["kind"], o["metadata"]["name"]) for o in objs])
    return hits[0]


@pytest.fixture(scope="module")
def manifests():
    k, objs = kustomize_objects(K8S)
    ds = find(objs, "DaemonSet", "pullproxy")
    cm = find(objs, "ConfigMap", "pullproxy")
    conf = configparser.ConfigParser(interpolation=None, comment_prefixes=("#", ";"))
    conf.read_string(cm["data"]["pullproxy.conf"])
    return k, objs, ds, cm, conf


def test_manifests_parse(manifests):
    k, objs, ds, cm, conf = manifests
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in load_yaml(path):
            assert "apiVersion" in doc and "kind" in doc, path
    assert {o["kind"] for o in objs} == {"Namespace", "ConfigMap", "DaemonSet"}
    # The config is generated with kustomize's hash suffix, so that a
    # change renames it and rolls the DaemonSet.
    gen = [g for g in k["configMapGenerator"] if g["name"] == cm["metadata"]["name"]]
    assert gen and not gen[0].get("options", {}).get("disableNameSuffixHash")
    assert not k.get("generatorOptions", {}).get("disableNameSuffixHash")
    ns = find(objs, "Namespace", k["namespace"])
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    # Every container's image is the one kustomize rewrites.
    names = {i["name"] for i in k["images"]}
    spec = ds["spec"]["template"]["spec"]
    for c in spec["initContainers"] + spec["containers"]:
        assert c["image"] in names, c["name"]


def test_daemonset_fields(manifests, tmp_path):
    k, objs, ds, cm, conf = manifests
    spec = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= \
        ds["spec"]["template"]["metadata"]["labels"].items()
    # containerd dials loopback in the node's namespace.
    assert spec["hostNetwork"] is True
    # pullproxy never calls the API server: no token in the pod.
    assert spec["automountServiceAccountToken"] is False
    # Every node that can run it, tainted ones too, but only those:
    # Linux, an architecture the image is built for, not a virtual node.
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert "nodeSelector" not in spec
    terms = spec["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == 1
    expr = {e["key"]: (e["operator"], e["values"]) for e in terms[0]["matchExpressions"]}
    assert expr["kubernetes.io/os"] == ("In", ["linux"])
    assert expr["kubernetes.io/arch"] == ("In", sorted(image_platforms()))
    assert expr["type"] == ("NotIn", ["virtual-kubelet"])
    host, port = conf["server"]["listen"].rsplit(":", 1)
    assert host == LOCALHOST
    port = int(port)

    main = find([dict(c, kind="c", metadata={"name": c["name"]}) for c in spec["containers"]],
                "c", "pullproxy")
    # Probes: the right paths, on the address the config listens on.
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("startupProbe", "/healthz")):
        get = main[probe]["httpGet"]
        assert (get["path"], get["host"], get["port"]) == (path, LOCALHOST, port), probe
    assert [p["containerPort"] for p in main["ports"]] == [port]

    # Resources on every container.
    for c in spec["initContainers"] + spec["containers"]:
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (c["name"], kind)

    # Graceful termination outlasts pullproxy's own drain.
    assert spec["terminationGracePeriodSeconds"] > int(conf["server"]["shutdown_timeout_s"])

    # Volumes: the cache on the node's disk where the config says; the
    # config mounted where --config reads it.
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    cache = [n for n, m in mounts.items() if m["mountPath"] == conf["server"]["cache_dir"]]
    assert cache and vols[cache[0]]["hostPath"]["path"] == "/var/lib/pullproxy"
    cfg_arg = main["args"][main["args"].index("--config") + 1]
    cfg_mount = [n for n, m in mounts.items() if cfg_arg.startswith(m["mountPath"] + "/")]
    assert cfg_mount and vols[cfg_mount[0]]["configMap"]["name"] == cm["metadata"]["name"]
    assert mounts[cfg_mount[0]].get("readOnly") is True

    # The server runs as non-root; root only in the init containers.
    sc = main["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    owner = find([dict(c, kind="c", metadata={"name": c["name"]})
                  for c in spec["initContainers"]], "c", "cache-owner")
    assert owner["command"][-2:] == ["%d:%d" % (sc["runAsUser"], sc["runAsGroup"]),
                                     conf["server"]["cache_dir"]]

    # containerd-config: host paths mounted at the same paths, so that
    # config_path in the node's config.toml matches --hosts-dir.
    init = find([dict(c, kind="c", metadata={"name": c["name"]})
                 for c in spec["initContainers"]], "c", "containerd-config")
    cmd = init["command"]
    assert cmd[:2] == ["/usr/local/bin/pullproxy", "containerd-config"]
    opt = {cmd[i]: cmd[i + 1] for i in range(2, len(cmd) - 1, 2)}
    imounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    assert vols[imounts[opt["--hosts-dir"]]]["hostPath"] == \
        {"path": opt["--hosts-dir"], "type": "Directory"}
    assert vols[imounts[opt["--containerd-config"]]]["hostPath"] == \
        {"path": opt["--containerd-config"], "type": "File"}
    assert opt["--config"] == cfg_arg

    # The ConfigMap's config is one pullproxy accepts, and the init
    # container's command works with it (--dry-run, against a containerd
    # config like AKS's).
    conf_file = tmp_path / "pullproxy.conf"
    conf_file.write_text(cm["data"]["pullproxy.conf"])
    hosts = tmp_path / "certs.d"
    hosts.mkdir()
    cp = containerd_config_cmd("--config", conf_file, "--hosts-dir", hosts,
                               "--containerd-config", containerd_config(tmp_path, hosts),
                               "--dry-run")
    assert cp.returncode == 0, cp.stderr
    regs = [s.split(" ", 1)[1] for s in conf.sections() if s.startswith("registry ")]
    assert regs and all("would write %s/%s/hosts.toml" % (hosts, r) in cp.stdout for r in regs)
    assert list(hosts.iterdir()) == []


def test_shipped_config_on_aks_node_with_mcr_hosts_toml(manifests, tmp_path):
    """AKS node bootstrap writes mcr.microsoft.com/hosts.toml on
    network-isolated and custom-MCR clusters; the shipped ConfigMap lists
    mcr.microsoft.com. The init container's command must leave that file
    alone, write the ACR's, and exit 0 (no Init:CrashLoopBackOff)."""
    _, _, ds, cm, conf = manifests
    conf_file = tmp_path / "pullproxy.conf"
    conf_file.write_text(cm["data"]["pullproxy.conf"])
    hosts = tmp_path / "certs.d"
    (hosts / "mcr.microsoft.com").mkdir(parents=True)
    mcr = hosts / "mcr.microsoft.com" / "hosts.toml"
    aks = ('[host."https://myacr.azurecr.io/v2/mcr"]\n'
           '  capabilities = ["pull", "resolve"]\n  override_path = true\n')
    mcr.write_text(aks)
    init = [c for c in ds["spec"]["template"]["spec"]["initContainers"]
            if c["name"] == "containerd-config"][0]
    cmd = init["command"][1:]
    for opt, val in (("--config", conf_file), ("--hosts-dir", hosts),
                     ("--containerd-config", containerd_config(tmp_path, hosts))):
        cmd[cmd.index(opt) + 1] = str(val)
    cp = run([PULLPROXY_BIN, *cmd], check=False)
    assert cp.returncode == 0, cp.stderr
    assert "skip %s" % mcr in cp.stdout, cp.stdout
    assert mcr.read_text() == aks
    acr = [s.split(" ", 1)[1] for s in conf.sections()
           if s.startswith("registry ") and s != "registry mcr.microsoft.com"]
    assert acr
    for name in acr:
        assert (hosts / name / "hosts.toml").read_text().startswith(MARK)


def test_uninstall_manifest_removes_hosts(manifests):
    k, objs = kustomize_objects(K8S / "uninstall")
    spec = find(objs, "DaemonSet", "pullproxy-remove")["spec"]["template"]["spec"]
    # The same nodes as the DaemonSet it undoes.
    main = manifests[2]["spec"]["template"]["spec"]
    assert spec["affinity"] == main["affinity"]
    assert spec["tolerations"] == main["tolerations"]
    assert spec["automountServiceAccountToken"] is False
    cmd = spec["initContainers"][0]["command"]
    assert cmd[1:3] == ["containerd-config", "--remove"]
    hosts = cmd[cmd.index("--hosts-dir") + 1]
    _, _, ds, _, _ = manifests
    init = [c for c in ds["spec"]["template"]["spec"]["initContainers"]
            if c["name"] == "containerd-config"][0]
    assert hosts == init["command"][init["command"].index("--hosts-dir") + 1]


def test_kustomize_renders_and_config_change_rolls(tmp_path):
    """kubectl kustomize (when kubectl is installed): the DaemonSet mounts
    the generated pullproxy-<hash> ConfigMap, and a changed pullproxy.conf
    is a new name, so a changed pod template: the DaemonSet rolls."""
    objs = kustomize_render(deploy_copy(tmp_path))
    if objs is None:
        pytest.skip("no kubectl with kustomize v4+: kustomize's rendering not run")
    cms = [o for o in objs if o["kind"] == "ConfigMap"]
    assert len(cms) == 1 and re.fullmatch(r"pullproxy-[a-z0-9]{10}", cms[0]["metadata"]["name"])
    ds = find(objs, "DaemonSet", "pullproxy")
    vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert vols["config"]["configMap"]["name"] == cms[0]["metadata"]["name"]

    conf = deploy_copy(tmp_path) / "kubernetes" / "pullproxy.conf"
    assert "tag_ttl_s = 60" in conf.read_text()
    conf.write_text(conf.read_text().replace("tag_ttl_s = 60", "tag_ttl_s = 30"))
    again = kustomize_render(deploy_copy(tmp_path))
    cm2 = [o for o in again if o["kind"] == "ConfigMap"][0]
    assert cm2["metadata"]["name"] != cms[0]["metadata"]["name"]
    ds2 = find(again, "DaemonSet", "pullproxy")
    assert ds2["spec"]["template"] != ds["spec"]["template"]
    assert {v["name"]: v for v in ds2["spec"]["template"]["spec"]["volumes"]}[
        "config"]["configMap"]["name"] == cm2["metadata"]["name"]


def test_manifests_schema(manifests, tmp_path):
    """Kubernetes' OpenAPI schemas, offline (kubernetes-models from npm,
    installed by scripts/install-deps.sh --test), and the Prometheus
    Operator's for the monitoring CRDs."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None or not (SCHEMA / "node_modules" / "kubernetes-models").is_dir():
        pytest.skip("no node or tests/kubernetes/node_modules (scripts/install-deps.sh "
                    "--test installs them): schema validation not run")
    objs = manifests[1] + kustomize_objects(K8S / "uninstall")[1]
    crds = (SCHEMA / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir()
    objs += [o for o in monitoring_objects() if crds or o["kind"] not in CRD_KINDS]
    # As kubectl would apply them, the monitoring patch included.
    rendered = kustomize_render(deploy_copy(tmp_path), components=["monitoring"])
    if rendered is not None:
        objs += [o for o in rendered if crds or o["kind"] not in CRD_KINDS]
    cp = subprocess.run([node, str(SCHEMA / "validate.js")], input=json.dumps(objs),
                        capture_output=True, text=True, cwd=SCHEMA, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cp.stdout.count(": ok\n") == len(objs), cp.stdout
    # The validator does reject a broken object.
    bad = json.loads(json.dumps(manifests[2]))
    bad["spec"]["template"]["spec"]["hostNetwork"] = "yes"
    cp = subprocess.run([node, str(SCHEMA / "validate.js")], input=json.dumps([bad]),
                        capture_output=True, text=True, cwd=SCHEMA, timeout=60)
    assert cp.returncode == 1 and "hostNetwork must be boolean" in cp.stdout, cp.stdout
    if crds:
        bad = json.loads(json.dumps(find(monitoring_objects(), "PrometheusRule", "pullproxy")))
        bad["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
        cp = subprocess.run([node, str(SCHEMA / "validate.js")], input=json.dumps([bad]),
                            capture_output=True, text=True, cwd=SCHEMA, timeout=60)
        assert cp.returncode == 1 and "rules/0/for must match" in cp.stdout, cp.stdout


# --------------------------------------------------------------- monitoring

CRD_KINDS = {"PodMonitor", "PrometheusRule"}
# Families not exported yet that the alerts and the dashboard may use
# besides what metrics.c exports (none today: keep it empty unless a
# family is on its way).
PLANNED = set()
ALERTS = {"PullproxyRegistryFailing", "PullproxyCircuitOpen", "PullproxyRegistryThrottling",
          "PullproxyRateLimitRejecting", "PullproxyCacheNearBudget", "PullproxyServingStale"}


def monitoring_objects():
    return kustomize_objects(MONITORING, kind="Component")[1]


def metrics_today():
    """The metric families pullproxy exports today, as proxy/base/metrics.c
    spells them."""
    names = set(re.findall(r'"(pullproxy_[a-z0-9_]+)', (ROOT / "proxy/base/metrics.c").read_text()))
    assert "pullproxy_upstream_failures_total" in names and len(names) > 15, names
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def metric_names(expr):
    """The pullproxy families a PromQL expression reads (a histogram's
    _bucket, _sum and _count series are its family)."""
    names = {re.sub(r"_(bucket|sum|count)$", "", n)
             for n in re.findall(r"\b(pullproxy_[a-z0-9_]+)", expr)}
    assert names, expr
    return names


def alert_rules():
    rule = find(monitoring_objects(), "PrometheusRule", "pullproxy")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def test_monitoring_objects(manifests, tmp_path):
    k, objs, ds, cm, conf = manifests
    comp, mon = kustomize_objects(MONITORING, kind="Component")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    for o in mon:
        assert o["metadata"]["namespace"] == k["namespace"], o["metadata"]
    # The DaemonSet patch: the metrics listener on the node's address.
    patch = load_yaml(MONITORING / comp["patches"][0]["path"])[0]
    assert (patch["kind"], patch["metadata"]["name"]) == ("DaemonSet", ds["metadata"]["name"])
    c = patch["spec"]["template"]["spec"]["containers"][0]
    base = [x for x in ds["spec"]["template"]["spec"]["containers"] if x["name"] == c["name"]][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    # The patch replaces args: it keeps the base's and adds the listener.
    assert c["args"][:len(base["args"])] == base["args"]
    assert c["args"][len(base["args"]):] == ["--metrics-listen", "$(HOST_IP):9090"]
    assert c["ports"] == [{"name": "metrics", "containerPort": 9090, "hostPort": 9090,
                           "protocol": "TCP"}]

    svc = find(mon, "Service", "pullproxy-metrics")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics",
                                     "protocol": "TCP"}]
    pm = find(mon, "PodMonitor", "pullproxy")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ep = pm["spec"]["podMetricsEndpoints"]
    assert [(e["port"], e["path"]) for e in ep] == [("metrics", "/metrics")]
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in \
        ep[0]["relabelings"]

    rule = find(mon, "PrometheusRule", "pullproxy")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules = alert_rules()
    assert {r["alert"] for r in rules} == ALERTS
    for r in rules:
        assert set(r) == {"alert", "expr", "for", "labels", "annotations"}, r
        assert re.fullmatch(r"\d+[smh]", r["for"]), r
        assert r["labels"]["severity"] in ("info", "warning", "critical")
        assert {"summary", "description"} <= set(r["annotations"])

    dash = find(mon, "ConfigMap", "pullproxy-dashboard")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(dash["data"]["pullproxy-dashboard.json"])

    # As kubectl applies them (when it is installed): the patch merged.
    rendered = kustomize_render(deploy_copy(tmp_path), components=["monitoring"])
    if rendered is None:
        return
    assert {o["kind"] for o in rendered} == {"Namespace", "ConfigMap", "DaemonSet", "Service"} | \
        CRD_KINDS
    main = [x for x in find(rendered, "DaemonSet", "pullproxy")["spec"]["template"]["spec"][
        "containers"] if x["name"] == "pullproxy"][0]
    assert sorted(p["containerPort"] for p in main["ports"]) == [5000, 9090]
    assert main["args"] == c["args"] and main["env"] == c["env"]
    assert main["livenessProbe"] == base["livenessProbe"]


def test_monitoring_uses_only_known_metrics():
    """Every alert and every dashboard query reads a family pullproxy
    exports today (proxy/base/metrics.c) or one of the planned ones; the
    dashboard shows every family exported today."""
    known = metrics_today() | PLANNED
    for r in alert_rules():
        assert metric_names(r["expr"]) <= known, (r["alert"], metric_names(r["expr"]) - known)
    dash = json.loads((MONITORING / "pullproxy-dashboard.json").read_text())
    shown = set()
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    for e in exprs:
        assert metric_names(e) <= known, (e, metric_names(e) - known)
        shown |= metric_names(e)
    assert metrics_today() <= shown, metrics_today() - shown
    assert PLANNED <= shown, PLANNED - shown
    # The operator guide's table names each alert with what it reads.
    guide = (ROOT / "docs" / "operator-guide.md").read_text()
    for r in alert_rules():
        row = [l for l in guide.splitlines() if l.startswith("| `%s`" % r["alert"])]
        assert len(row) == 1, r["alert"]
        for name in metric_names(r["expr"]):
            assert "`%s" % name in row[0], (r["alert"], name)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "namespace", "node"}
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]


def test_prefetch_component(manifests, tmp_path):
    """The prefetch DaemonSet runs where pullproxy runs, reaches it on the
    node's loopback with its config, prefetches in an init container and
    then idles; it passes the schemas and renders with the base."""
    k, objs, ds, cm, conf = manifests
    comp, pre = kustomize_objects(PREFETCH, kind="Component")
    pds = find(pre, "DaemonSet", "pullproxy-prefetch")
    assert pds["metadata"]["namespace"] == k["namespace"]
    spec, base = pds["spec"]["template"]["spec"], ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["tolerations"] == base["tolerations"] and spec["affinity"] == base["affinity"]
    assert pds["spec"]["selector"]["matchLabels"].items() <= \
        pds["spec"]["template"]["metadata"]["labels"].items()
    # Not pullproxy's own pods: its Service and PodMonitor select by name.
    assert pds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] != \
        ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
    init = spec["initContainers"][0]
    assert init["image"] == "pullproxy"
    assert init["command"] == ["/bin/sh", "-c"]
    assert init["args"][0].startswith(
        "exec /usr/local/bin/pullproxy prefetch --config /etc/pullproxy/pullproxy.conf ")
    assert "$PREFETCH_IMAGES" in init["args"][0]
    assert {e["name"] for e in init["env"]} == {"PREFETCH_IMAGES"}
    vol = [v for v in spec["volumes"] if v["name"] == "config"][0]
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    assert [m["mountPath"] for m in init["volumeMounts"]] == ["/etc/pullproxy"]
    # The config it reads listens on the loopback it can reach.
    assert conf["server"]["listen"].startswith("127.0.0.1:")

    node = shutil.which("node") or shutil.which("nodejs")
    if node is not None and (SCHEMA / "node_modules" / "kubernetes-models").is_dir():
        cp = subprocess.run([node, str(SCHEMA / "validate.js")], input=json.dumps(pre),
                            capture_output=True, text=True, cwd=SCHEMA, timeout=60)
        assert cp.returncode == 0 and cp.stdout.count(": ok\n") == len(pre), cp.stdout
    rendered = kustomize_render(deploy_copy(tmp_path), components=["prefetch"])
    if rendered is None:
        return
    r = find(rendered, "DaemonSet", "pullproxy-prefetch")
    assert r["metadata"]["namespace"] == k["namespace"]
    # The generated ConfigMap's name, hash and all.
    cms = [o["metadata"]["name"] for o in rendered if o["kind"] == "ConfigMap"]
    assert [v for v in r["spec"]["template"]["spec"]["volumes"]
            if v["name"] == "config"][0]["configMap"]["name"] in cms


def promtool():
    for p in (SCHEMA / "bin" / "promtool", shutil.which("promtool")):
        if p is not None and os.access(str(p), os.X_OK):
            return str(p)
    return None


# Each alert, fed series as a PodMonitor scrape labels them: what fires
# and what must not (promtool test rules, one sample a minute).
PROMTOOL_TESTS = """
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'pullproxy_upstream_failures_total{registry="myacr.azurecr.io",cause="auth_unauthorized",namespace="pullproxy",pod="pp-a",node="n1"}'
        values: '0+2x40'
      # 404s are answers and a platform mismatch is the image's: no alert.
      - series: 'pullproxy_upstream_failures_total{registry="myacr.azurecr.io",cause="not_found",namespace="pullproxy",pod="pp-a",node="n1"}'
        values: '0+50x40'
      - series: 'pullproxy_upstream_failures_total{registry="mcr.microsoft.com",cause="platform_mismatch",namespace="pullproxy",pod="pp-a",node="n1"}'
        values: '0+50x40'
      # Open, half-open, open: never closed.
      - series: 'pullproxy_circuit_state{registry="myacr.azurecr.io",namespace="pullproxy",pod="pp-a",node="n1"}'
        values: '1 2 1 2 1 2 1 2 1 2 1 2 1 2 1 2 1 2 1 2'
      # Closed once in every five minutes: no alert.
      - series: 'pullproxy_circuit_state{registry="mcr.microsoft.com",namespace="pullproxy",pod="pp-a",node="n1"}'
        values: '1 1 1 0 1 1 1 0 1 1 1 0 1 1 1 0 1 1 1 0'
      # An idle node: opened once, its window passed, no request since.
      - series: 'pullproxy_circuit_state{registry="idle.azurecr.io",namespace="pullproxy",pod="pp-a",node="n1"}'
        values: '1 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2'
      - series: 'pullproxy_upstream_throttled_total{registry="myacr.azurecr.io",namespace="pullproxy",pod="pp-a",node="n1"}'
        values: '0+3x40'
      - series: 'pullproxy_upstream_throttled_total{registry="mcr.microsoft.com",namespace="pullproxy",pod="pp-a",node="n1"}'
        values: '7x40'
      - series: 'pullproxy_ratelimit_rejected_total{registry="myacr.azurecr.io",namespace="pullproxy",pod="pp-a",node="n1"}'
        values: '0+1x40'
      # Node n1: full and evicting. Node n2: full but not evicting.
      - series: 'pullproxy_cache_bytes{namespace="pullproxy",pod="pp-a",node="n1"}'
        values: '95x90'
      - series: 'pullproxy_cache_budget_bytes{namespace="pullproxy",pod="pp-a",node="n1"}'
        values: '100x90'
      - series: 'pullproxy_cache_evictions_total{namespace="pullproxy",pod="pp-a",node="n1"}'
        values: '0+1x90'
      - series: 'pullproxy_cache_bytes{namespace="pullproxy",pod="pp-b",node="n2"}'
        values: '99x90'
      - series: 'pullproxy_cache_budget_bytes{namespace="pullproxy",pod="pp-b",node="n2"}'
        values: '100x90'
      - series: 'pullproxy_cache_evictions_total{namespace="pullproxy",pod="pp-b",node="n2"}'
        values: '4x90'
      - series: 'pullproxy_requests_total{kind="manifest",result="stale",namespace="pullproxy",pod="pp-a",node="n1"}'
        values: '0+1x40'
      - series: 'pullproxy_requests_total{kind="blob",result="hit",namespace="pullproxy",pod="pp-b",node="n2"}'
        values: '0+100x40'
    alert_rule_test:
      - eval_time: 5m
        alertname: PullproxyRegistryFailing
        exp_alerts: []
      - eval_time: 20m
        alertname: PullproxyRegistryFailing
        exp_alerts:
          - exp_labels: {severity: warning, registry: myacr.azurecr.io, cause: auth_unauthorized}
      - eval_time: 12m
        alertname: PullproxyCircuitOpen
        exp_alerts:
          - exp_labels: {severity: warning, registry: myacr.azurecr.io}
      - eval_time: 20m
        alertname: PullproxyRegistryThrottling
        exp_alerts:
          - exp_labels: {severity: warning, registry: myacr.azurecr.io}
      - eval_time: 20m
        alertname: PullproxyRateLimitRejecting
        exp_alerts:
          - exp_labels: {severity: warning, registry: myacr.azurecr.io}
      - eval_time: 20m
        alertname: PullproxyCacheNearBudget
        exp_alerts: []
      - eval_time: 75m
        alertname: PullproxyCacheNearBudget
        exp_alerts:
          - exp_labels: {severity: info, namespace: pullproxy, pod: pp-a, node: n1}
      - eval_time: 20m
        alertname: PullproxyServingStale
        exp_alerts:
          - exp_labels: {severity: warning, namespace: pullproxy, pod: pp-a, node: n1}
"""


def test_alert_rules_promtool(tmp_path):
    """promtool check rules, then promtool test rules: each alert fires on
    the incident it is for and not on its look-alikes."""
    tool = promtool()
    if tool is None:
        pytest.skip("no promtool (scripts/install-deps.sh --test takes it out of Debian's "
                    "prometheus package): the rules are only parsed")
    spec = find(monitoring_objects(), "PrometheusRule", "pullproxy")["spec"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": spec["groups"]}))
    cp = run([tool, "check", "rules", str(rules)], check=False)
    assert cp.returncode == 0 and "SUCCESS: %d rules found" % len(ALERTS) in cp.stdout, \
        cp.stdout + cp.stderr
    # The annotations' templates were checked above; the unit tests
    # compare labels only.
    bare = json.loads(json.dumps(spec["groups"]))
    for g in bare:
        for r in g["rules"]:
            del r["annotations"]
    rules.write_text(yaml.safe_dump({"groups": bare}))
    tests = tmp_path / "tests.yaml"
    tests.write_text(PROMTOOL_TESTS)
    cp = run([tool, "test", "rules", str(tests)], check=False, cwd=str(tmp_path))
    assert cp.returncode == 0 and "SUCCESS" in cp.stdout, cp.stdout + cp.stderr
    # Every alert has a case that makes it fire.
    fired = set(re.findall(r"alertname: (\w+)\n        exp_alerts:\n          -", PROMTOOL_TESTS))
    assert fired == ALERTS, ALERTS - fired
    # And the tool does fail a wrong expectation.
    tests.write_text(PROMTOOL_TESTS.replace("registry: myacr.azurecr.io, cause: auth_unauthorized",
                                            "registry: myacr.azurecr.io, cause: not_found"))
    cp = run([tool, "test", "rules", str(tests)], check=False, cwd=str(tmp_path))
    assert cp.returncode != 0, cp.stdout


def test_image_has_the_runtime_libraries():
    """The Dockerfile's runtime stage installs the package of every
    library the binary is linked against (libc6 is in the base image)."""
    text = (K8S / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)
    assert len(stages) == 3 and stages[1].startswith("debian:12 AS build")
    runtime = stages[2]
    assert runtime.startswith("debian:12-slim")
    m = re.search(r"apt-get install -y --no-install-recommends((?:[^&]|\\\n)*)", runtime)
    assert m, runtime
    pkgs = set(m.group(1).replace("\\", " ").split())
    assert "ca-certificates" in pkgs
    out = run(["readelf", "-d", PULLPROXY_BIN]).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    assert "libcurl.so.4" in needed
    owners = set()
    for lib in needed:
        lib = re.sub(r"^lib(asan|ubsan)\.so.*", "", lib)
        if not lib:
            continue
        cp = run(["dpkg", "-S", "*/" + lib])
        owners.add(cp.stdout.split(":", 1)[0])
    missing = owners - pkgs - {"libc6", "libgcc-s1", "libasan8", "libubsan1"}
    assert not missing, "runtime stage lacks %s" % sorted(missing)
    assert re.search(r"^USER 65532:65532$", runtime, re.M)
    # Built for amd64 and arm64 (buildx): no instruction names one.
    assert sorted(image_platforms()) == ["amd64", "arm64"]
    code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
    assert not re.search(r"amd64|arm64|x86_64|aarch64|--platform", code), code


# ------------------------------------------------------------------ systemd

UNIT = DEPLOY / "systemd" / "pullproxy.service"


def unit_for_test(tmp_path):
    """The unit with ExecStart pointing at the binary under test
    (verify checks that the programs it names exist)."""
    p = tmp_path / "pullproxy.service"
    p.write_text(UNIT.read_text().replace("/usr/local/bin/pullproxy", PULLPROXY_BIN))
    return p


def test_systemd_unit_verifies(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (Debian's systemd package)")
    unit = unit_for_test(tmp_path)
    cp = run([tool, "verify", str(unit)], check=False)
    assert cp.returncode == 0 and cp.stderr.strip() == "", cp.stderr
    # The sandbox: systemd's own exposure score (0 best, 10 worst).
    cp = run([tool, "security", "--offline=yes", str(unit)], check=False)
    m = re.search(r"Overall exposure level for pullproxy.service: ([0-9.]+)", cp.stdout)
    assert m, cp.stdout + cp.stderr
    assert float(m.group(1)) <= 2.0, cp.stdout
    # What the unit promises the operator.
    text = UNIT.read_text()
    for line in ("ProtectSystem=strict", "NoNewPrivileges=yes", "StateDirectory=pullproxy",
                 "DynamicUser=yes", "ProtectHome=yes", "PrivateTmp=yes",
                 "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK"):
        assert re.search("^%s$" % re.escape(line), text, re.M), line
    # The cache is the state directory, and stop waits out the drain.
    assert "--cache-dir ${STATE_DIRECTORY}" in text
    # reload is SIGHUP, then hosts.toml in step with the new registries.
    reloads = re.findall(r"^ExecReload=(.*)$", text, re.M)
    assert reloads == ["/bin/kill -HUP $MAINPID", "+/usr/local/bin/pullproxy containerd-config "
                       "--config /etc/pullproxy/pullproxy.conf"], reloads
    assert int(re.search(r"^TimeoutStopSec=(\d+)s$", text, re.M).group(1)) > 30


def test_systemd_install_staged(tmp_path):
    """install.sh into a staging root, then --uninstall: every file placed
    with its mode, and gone again (config and cache kept, then purged)."""
    script = DEPLOY / "systemd" / "install.sh"
    root = tmp_path / "root"
    conf = pullproxy_conf(tmp_path / "pullproxy.conf", 5000, [("r.example", "https://r.example")])
    run(["sh", str(script), "--root", str(root), "--binary", PULLPROXY_BIN,
         "--config", str(conf)])
    placed = {str(p.relative_to(root)): oct(p.stat().st_mode & 0o777)
              for p in root.rglob("*") if p.is_file()}
    assert placed == {"usr/local/bin/pullproxy": "0o755",
                      "etc/pullproxy/pullproxy.conf": "0o644",
                      "etc/systemd/system/pullproxy.service": "0o644",
                      "usr/local/share/doc/pullproxy/operator-guide.md": "0o644"}
    assert (root / "etc/systemd/system/pullproxy.service").read_bytes() == UNIT.read_bytes()
    # A second install without --config keeps the installed config.
    run(["sh", str(script), "--root", str(root), "--binary", PULLPROXY_BIN])
    assert (root / "etc/pullproxy/pullproxy.conf").read_text() == conf.read_text()
    run(["sh", str(script), "--root", str(root), "--uninstall"])
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert left == ["etc/pullproxy/pullproxy.conf"]
    run(["sh", str(script), "--root", str(root), "--uninstall", "--purge"])
    assert not [p for p in root.rglob("*") if p.is_file()]
    # Refusals: an unknown flag, no binary.
    cp = run(["sh", str(script), "--bogus"], check=False)
    assert cp.returncode == 1 and "--bogus" in cp.stderr
    cp = run(["sh", str(script), "--root", str(root), "--binary", str(tmp_path / "none"),
              "--config", str(conf)], check=False)
    assert cp.returncode == 1 and "no pullproxy binary" in cp.stderr
