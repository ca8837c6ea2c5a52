/*
 * manifest: manifests served from the cache, fetched once however many
 * clients ask.
 *
 * By digest: immutable; a hit never goes upstream. By tag: the digest the
 * tag pointed at is trusted for the tag TTL; after it, one HEAD (shared by
 * every client asking meanwhile) revalidates it and the stored manifest is
 * reused when the digest is unchanged. When the registry fails, a tag that
 * was known is served stale and the failure logged.
 */
#ifndef PP_MANIFEST_H
#define PP_MANIFEST_H

struct cache;
struct client_request;
struct config;
struct evhttp_request;
struct manifest_ctx;
struct upstream;

struct manifest_ctx *manifest_ctx_new(struct upstream *up,
    struct cache *cache, const struct config *cfg);
/* Cuts the clients still waiting. */
void manifest_ctx_free(struct manifest_ctx *ctx);
int manifest_ctx_inflight(const struct manifest_ctx *ctx);

/* Answer a GET or HEAD of /v2/<name>/manifests/<reference>. */
void manifest_start(struct manifest_ctx *ctx, struct evhttp_request *req,
    const struct client_request *rq);

#endif
