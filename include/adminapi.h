/*
 * adminapi: the cache's administration while the server runs (`pullproxy
 * cache evict|purge` then talk to it). Served on a unix socket in the
 * cache directory (ADMINAPI_SOCKET), mode 0600: whoever may write the
 * cache's files may administer it, and nobody else, with no token to
 * manage and nothing reachable over the network.
 *
 *   POST /cache/evict?digest=D[&digest=D...]  one JSON line per digest:
 *        {"digest", "evicted": true} or {"digest", "error"}
 *   POST /cache/evict?to=BYTES   {"evicted", "blob_bytes", "manifest_bytes"}
 *   POST /cache/purge            everything not in use: {"evicted",
 *        "blobs", "manifests"} (what transfers in flight still hold stays)
 *
 * Status 200 with those lines, 400 for a malformed request, 404 for any
 * other path, 405 for another method, 500 when the cache fails.
 */
#ifndef PP_ADMINAPI_H
#define PP_ADMINAPI_H

#define ADMINAPI_SOCKET	"admin.sock"

struct cache;
struct evhttp_request;

/* Answer req; returns the status sent. */
int adminapi_handle(struct cache *c, struct evhttp_request *req,
    const char *path);

#endif
