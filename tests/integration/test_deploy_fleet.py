"""deploy/kubernetes/fleet, the fleet-mode component: the headless Service,
the token Secret, fleet.conf and the DaemonSet patch wired together, and
accepted by the schemas and by pullproxy itself."""

import base64
import configparser
import copy
import json
import shutil
import subprocess

import pytest
import yaml

from conftest import LOCALHOST, PULLPROXY_BIN, run
from test_deploy import (K8S, SCHEMA, deploy_copy, find, kustomize_objects,
                         kustomize_render, load_yaml)

FLEET = K8S / "fleet"


def component():
    k = load_yaml(FLEET / "kustomization.yaml")[0]
    assert k["kind"] == "Component"
    return k


def patched_daemonset():
    """The base DaemonSet with the component's patches applied as kustomize
    would: lists merged by name (strategic merge), args appended (the
    JSON patch)."""
    _, objs = kustomize_objects(K8S)
    ds = copy.deepcopy(find(objs, "DaemonSet", "pullproxy"))
    patch = load_yaml(FLEET / "daemonset-fleet.yaml")[0]["spec"]["template"]["spec"]
    spec = ds["spec"]["template"]["spec"]
    spec["securityContext"].update(patch["securityContext"])
    spec["volumes"] += patch["volumes"]
    main = spec["containers"][0]
    pc = patch["containers"][0]
    assert pc["name"] == main["name"] == "pullproxy"
    for key in ("env", "ports", "volumeMounts"):
        main[key] = main.get(key, []) + pc[key]
    ops = [p for p in component()["patches"] if "target" in p]
    assert len(ops) == 1 and ops[0]["target"] == {"kind": "DaemonSet", "name": "pullproxy"}
    terms = spec["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    paths = {"/spec/template/spec/containers/0/args/-": main["args"],
             "/spec/template/spec/affinity/nodeAffinity/requiredDuringScheduling"
             "IgnoredDuringExecution/nodeSelectorTerms/0/matchExpressions/-":
             terms[0]["matchExpressions"]}
    for op in yaml.safe_load(ops[0]["patch"]):
        assert op["op"] == "add" and op["path"] in paths, op
        paths[op["path"]].append(op["value"])
    return ds


def fleet_conf():
    conf = configparser.ConfigParser(interpolation=None, comment_prefixes=("#", ";"))
    conf.read_string((FLEET / "fleet.conf").read_text())
    return conf


def test_component_wires_service_secret_config_and_listener():
    k = component()
    svc = load_yaml(FLEET / "service.yaml")[0]
    ds = patched_daemonset()
    spec = ds["spec"]["template"]["spec"]
    main = spec["containers"][0]
    conf = fleet_conf()["fleet"]
    # The Service is headless and selects the DaemonSet's pods: its
    # records are the nodes' IPs (hostNetwork).
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert spec["hostNetwork"] is True
    # peers_dns names it in the kustomization's namespace.
    base = load_yaml(K8S / "kustomization.yaml")[0]
    assert conf["peers_dns"] == "%s.%s.svc.cluster.local" % (
        svc["metadata"]["name"], base["namespace"])
    # One peer port everywhere: the Service, the hostPort, --peer-listen
    # on the node's IP from the downward API.
    args = main["args"]
    listen = args[args.index("--peer-listen") + 1]
    assert listen.startswith("$(NODE_IP):")
    port = int(listen.rsplit(":", 1)[1])
    env = {e["name"]: e for e in main["env"]}
    assert env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    peer = [p for p in main["ports"] if p["name"] == "peer"]
    assert peer == [{"name": "peer", "containerPort": port, "hostPort": port,
                     "protocol": "TCP"}]
    assert svc["spec"]["ports"][0]["port"] == port
    assert svc["spec"]["ports"][0]["targetPort"] == "peer"
    # A node labelled pullproxy.io/fleet=off gets no fleet pod.
    terms = spec["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "pullproxy.io/fleet", "operator": "NotIn", "values": ["off"]} in \
        terms[0]["matchExpressions"]
    # The containerd listener stays on loopback, and its probes with it.
    assert main["readinessProbe"]["httpGet"]["host"] == LOCALHOST
    # fleet.conf is read after pullproxy.conf, from the same ConfigMap.
    cfgs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
    assert cfgs == ["/etc/pullproxy/pullproxy.conf", "/etc/pullproxy/fleet.conf"]
    gen = [g for g in k["configMapGenerator"] if g["name"] == "pullproxy"]
    assert gen and gen[0]["behavior"] == "merge" and gen[0]["files"] == ["fleet.conf"]
    # The token: a generated Secret (hash suffix: a new token rolls the
    # DaemonSet), mounted where peer_token_file reads it, readable by the
    # server's group only.
    sec = [g for g in k["secretGenerator"] if g["name"] == "pullproxy-peer-token"]
    assert sec and sec[0]["files"] == ["token=peer-token"]
    assert not sec[0].get("options", {}).get("disableNameSuffixHash")
    vols = {v["name"]: v for v in spec["volumes"]}
    mount = [m for m in main["volumeMounts"]
             if conf["peer_token_file"].startswith(m["mountPath"] + "/")]
    assert len(mount) == 1 and mount[0]["readOnly"] is True
    vol = vols[mount[0]["name"]]["secret"]
    assert vol["secretName"] == "pullproxy-peer-token"
    assert conf["peer_token_file"].rsplit("/", 1)[1] == "token"
    assert vol["defaultMode"] == 0o440
    assert spec["securityContext"]["fsGroup"] == main["securityContext"]["runAsGroup"]
    # The token itself is never shipped.
    assert not (FLEET / "peer-token").exists() or \
        "/deploy/kubernetes/fleet/peer-token" in (K8S.parents[1] / ".gitignore").read_text()


def test_fleet_config_is_accepted_by_pullproxy(tmp_path):
    """pullproxy.conf then fleet.conf, as the DaemonSet passes them, with
    the token where the Secret puts it and kube-dns replaced by a closed
    local port: `pullproxy fleet` loads and checks the settings as serve
    does (a missing token or listener would be refused)."""
    _, objs = kustomize_objects(K8S)
    base = tmp_path / "pullproxy.conf"
    base.write_text(find(objs, "ConfigMap", "pullproxy")["data"]["pullproxy.conf"])
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    token.chmod(0o440)
    text = (FLEET / "fleet.conf").read_text()
    conf = fleet_conf()["fleet"]
    text = text.replace(conf["peer_token_file"], str(token))
    text = text.replace(conf["peers_dns_server"], "127.0.0.1:9")
    fleet = tmp_path / "fleet.conf"
    fleet.write_text(text + "peer_listen = 127.0.0.1:5001\n")
    # fleetcmd reads one --config: the two files, in order.
    both = tmp_path / "both.conf"
    both.write_text(base.read_text() + "\n" + fleet.read_text())
    cp = run([PULLPROXY_BIN, "fleet", "--config", str(both), "--for", "1"],
             check=False, timeout=60)
    assert cp.returncode == 0, cp.stderr
    # serve reads the token at start: without it, it refuses, by name.
    bad = tmp_path / "bad.conf"
    bad.write_text(fleet.read_text().replace(str(token), str(tmp_path / "none")))
    cp = subprocess.run([PULLPROXY_BIN, "serve", "--config", str(base), "--config",
                         str(bad), "--listen", "127.0.0.1:9", "--cache-dir",
                         str(tmp_path / "cache"), "--log", str(tmp_path / "log")],
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode != 0 and "[fleet] peer_token_file" in cp.stderr, cp.stderr
    # serve takes --config twice and --peer-listen, as the DaemonSet runs it.
    cp = subprocess.run([PULLPROXY_BIN, "serve", "--config", str(base), "--config",
                         str(fleet), "--peer-listen", "127.0.0.1:5001", "--help"],
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0 and "--peer-listen" in cp.stdout + cp.stderr


def test_fleet_objects_schema():
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None or not (SCHEMA / "node_modules" / "kubernetes-models").is_dir():
        pytest.skip("no node or tests/kubernetes/node_modules: schema validation not run")
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "pullproxy-peer-token", "namespace": "pullproxy"},
              "type": "Opaque",
              "data": {"token": base64.b64encode(b"0" * 64).decode()}}
    objs = [patched_daemonset(), load_yaml(FLEET / "service.yaml")[0], secret]
    cp = subprocess.run([node, str(SCHEMA / "validate.js")], input=json.dumps(objs),
                        capture_output=True, text=True, cwd=SCHEMA, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cp.stdout.count(": ok\n") == len(objs), cp.stdout


def test_fleet_component_renders(tmp_path):
    deploy = deploy_copy(tmp_path)
    (deploy / "kubernetes" / "fleet" / "peer-token").write_text("0" * 64 + "\n")
    objs = kustomize_render(deploy, components=["monitoring", "fleet"])
    if objs is None:
        pytest.skip("no kubectl with kustomize v4+: kustomize's rendering not run")
    ds = find(objs, "DaemonSet", "pullproxy")
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--metrics-listen" in args and "--peer-listen" in args
    cm = [o for o in objs if o["kind"] == "ConfigMap" and
          o["metadata"]["name"].startswith("pullproxy-") and "fleet.conf" in o["data"]]
    assert len(cm) == 1 and "pullproxy.conf" in cm[0]["data"]
    assert [o for o in objs if o["kind"] == "Secret"]
