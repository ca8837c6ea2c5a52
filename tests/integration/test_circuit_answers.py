"""The circuit counts only what says the registry is unwell (transport
failures, timeouts, 5xx), never what a client's own request gets: a local
client asking over and over for what the registry answers 405 or 416 must
not switch the registry off for the node. Against the real registry
(Debian's docker-registry, which answers a HEAD of tags/list 405), with
the default circuit (5 failures in a row open it for 10 s)."""

import pytest

from conftest import metrics

STORM = 12      # well past circuit_failures (5)


def circuit_state(pp, registry):
    return metrics(pp).get('pullproxy_circuit_state{registry="%s"}' % registry.host, 0)


def assert_still_pulls(pp, img):
    """The circuit is closed and content never asked for comes through."""
    assert circuit_state(pp, pp.registry) == 0
    assert not pp.logs("circuit open")
    r = pp.get("/v2/%s/manifests/%s" % (img.repo, img.tag),
               headers={"Accept": img.media_type})
    assert r.status == 200, r.body
    digest = img.layers[0] if img.layers else img.children[0].layers[0]
    blob = (img.blobs if img.layers else img.children[0].blobs)[digest]
    r = pp.get("/v2/%s/blobs/%s" % (img.repo if img.layers else img.children[0].repo,
                                    digest))
    assert r.status == 200 and r.body == blob


@pytest.fixture
def pp(pullproxy, registry):
    pullproxy.registry = registry
    return pullproxy


def registry_answered(registry, mark, method, status):
    """Every request of the storm reached the registry and got status."""
    got = [r for r in registry.requests_since(mark) if r.method == method]
    assert len(got) == STORM and {r.status for r in got} == {status}, got


def test_head_tags_list_405_storm(pp, images, registry):
    mark = registry.mark()
    for _ in range(STORM):
        r = pp.head("/v2/pp/small/tags/list")
        assert r.status != 503, "circuit opened by a client's 405s"
    registry_answered(registry, mark, "HEAD", 405)
    # Logged as the registry's answer, not as a registry fault.
    lines = [l for l in pp.logs("upstream failure") if l.get("status") == 405]
    assert len(lines) == STORM and not any("cause" in l for l in lines), lines
    assert_still_pulls(pp, images["multi"])


def test_range_past_the_end_416_storm(pp, images, registry):
    img = images["small"]
    digest = img.layers[-1]
    path = "/v2/%s/blobs/%s" % (img.repo, digest)
    mark = registry.mark()
    for _ in range(STORM):
        r = pp.head(path, headers={"Range": "bytes=999999999-"})
        assert r.status == 416, r
    # Still uncached: the registry was asked each time.
    registry_answered(registry, mark, "HEAD", 416)
    assert_still_pulls(pp, images["multi"])
    r = pp.get(path)
    assert r.status == 200 and r.body == img.blobs[digest]



def test_url_curl_will_not_send_storm(pp, images, registry):
    """A tags/list paging value curl refuses to put in a URL (a space)
    once made it URL_MALFORMAT, counted as upstream_unavailable. It is a
    bad request: refused before the registry, and nothing counted (curl's
    own URL errors are no fault of the registry either: test_classify)."""
    mark = registry.mark()
    for _ in range(STORM):
        r = pp.get("/v2/pp/small/tags/list?n=1%20")
        assert r.status != 503, "circuit opened by a URL curl would not send"
    assert not [r for r in registry.requests_since(mark) if "tags/list" in r.uri]
    assert_still_pulls(pp, images["multi"])
