/*
 * relay: one client request passed through to the registry, for what the
 * cache does not keep: tag lists, blob HEADs on a miss, and blobs the cache
 * cannot take. The body streams to the client as it arrives, pausing the
 * transfer while the client's output buffer is above a watermark.
 *
 * relay_close() is a relay's one teardown path. It cancels the transfer
 * (no upstream callback runs after that) and releases the client request,
 * so no callback can reach a freed relay.
 */
#ifndef PP_RELAY_H
#define PP_RELAY_H

struct client_request;
struct evhttp_request;
struct relay_ctx;
struct upstream;

/* What every relay shares: the upstream engine and the open relays. */
struct relay_ctx *relay_ctx_new(struct upstream *up);
/* Aborts open relays (their clients see a cut connection). */
void relay_ctx_free(struct relay_ctx *ctx);
int relay_ctx_inflight(const struct relay_ctx *ctx);

/*
 * Answer req (GET or HEAD) as rq says. Always answers the client, whatever
 * happens upstream, and logs it.
 */
void relay_start(struct relay_ctx *ctx, struct evhttp_request *req,
    const struct client_request *rq);

#endif
