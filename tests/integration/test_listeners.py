"""Listeners by role: containerd's (the pull API, with [server]'s
credentials), and the metrics listener (metrics_listen: /metrics and the
probes only, no credential, so the cluster's Prometheus can scrape a node
whose pulls stay on loopback behind a token)."""

from conftest import LOCALHOST, free_port, http_request, port_open, wait_for
from test_client_token import TOKEN, config, one_line_error, serve, token_file


def test_metrics_listener_serves_metrics_and_probes_only(pullproxy_factory,
                                                         tmp_path, images):
    mport = free_port()
    cfg = config(tmp_path, token_file(tmp_path),
                 "metrics_listen = %s:%d\n" % (LOCALHOST, mport))
    pp = pullproxy_factory(args=["--config", str(cfg)])
    wait_for(lambda: port_open(mport), 10, "the metrics listener")
    # No credential needed there...
    r = http_request(mport, "GET", "/metrics")
    assert r.status == 200 and b"pullproxy_requests_total" in r.body
    for probe in ("/healthz", "/readyz"):
        assert http_request(mport, "GET", probe).status == 200
    # ...and nothing else is served there, pulls least of all.
    for path in ("/v2/", "/v2/pp/small/manifests/v1",
                 "/v2/pp/small/blobs/" + images["small"].config_digest):
        r = http_request(mport, "GET", path)
        assert r.status == 404, (path, r.status)
    # containerd's listener still wants the token, for /metrics too.
    assert pp.get("/metrics").status == 401
    auth = {"Authorization": "Bearer " + TOKEN}
    assert pp.get("/v2/pp/small/manifests/v1", headers=auth).status == 200


def test_ops_paths_answer_get_and_head_only(pullproxy):
    for path in ("/metrics", "/healthz", "/readyz"):
        r = pullproxy.request("POST", path)
        assert r.status == 405 and r.error_code() == "UNSUPPORTED", (path, r.status)
        assert "GET" in r.header("Allow")
        assert pullproxy.head(path).status == 200


def test_metrics_listen_apart_from_listen(tmp_path):
    port = free_port()
    cp = serve("--listen", "%s:%d" % (LOCALHOST, port), "--cache-dir",
               str(tmp_path / "c"), "--registry", "r.example=http://127.0.0.1:9",
               "--config", str(config(tmp_path, token_file(tmp_path),
                                      "metrics_listen = %s:%d\n" % (LOCALHOST, port))))
    one_line_error(cp, 2, "[server] metrics_listen: ", "must differ from listen")
