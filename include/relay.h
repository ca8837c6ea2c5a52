/*
 * relay: one client request answered from an upstream transfer.
 * Manifests are fetched whole (at most 4 MiB), hashed and answered with
 * Docker-Content-Digest and Content-Length, also for HEAD. Blobs and tag
 * lists stream to the client as they arrive, pausing the transfer while the
 * client's output buffer is above a watermark.
 *
 * relay_close() is a relay's one teardown path. It cancels the transfer
 * (no upstream callback runs after that) and releases the client request,
 * so no callback can reach a freed relay.
 */
#ifndef PP_RELAY_H
#define PP_RELAY_H

struct config;
struct config_registry;
struct evhttp_request;
struct oci_route;
struct relay_ctx;
struct upstream;

/* What every relay shares: the upstream engine, settings, the open relays. */
struct relay_ctx *relay_ctx_new(struct upstream *up, const struct config *cfg);
/* Aborts open relays (their clients see a cut connection). */
void relay_ctx_free(struct relay_ctx *ctx);
int relay_ctx_inflight(const struct relay_ctx *ctx);

/*
 * Answer req (GET or HEAD) for route from registry reg. reqid names the
 * request in logs. Always answers the client, whatever happens upstream.
 */
void relay_start(struct relay_ctx *ctx, struct evhttp_request *req,
    const struct oci_route *route, const struct config_registry *reg,
    unsigned long reqid);

#endif
