/*
 * blob: layers and configs served from the cache, with one upstream
 * download per digest however many clients ask.
 *
 * A miss starts a fetch that writes the blob into the cache chunk by chunk;
 * the client that asked, and every later one for the same digest, read the
 * chunks as they are committed, each at its own pace: a slow client never
 * slows the download or another client. The last chunk is committed only
 * after the digest matched, so no client ever receives a whole blob that is
 * wrong: on a mismatch they are cut off and containerd retries.
 * Hits are written from the LMDB map (no copy in user space) while a read transaction
 * pins the chunk. Blobs the cache cannot take are passed through.
 */
#ifndef PP_BLOB_H
#define PP_BLOB_H

struct blob_ctx;
struct cache;
struct client_request;
struct config;
struct evhttp_request;
struct relay_ctx;
struct upstream;

struct blob_ctx *blob_ctx_new(struct upstream *up, struct cache *cache,
    const struct config *cfg, struct relay_ctx *relays);
/* Cuts the clients still being served and cancels the downloads. */
void blob_ctx_free(struct blob_ctx *ctx);
int blob_ctx_inflight(const struct blob_ctx *ctx);

/* Answer a GET or HEAD of /v2/<name>/blobs/<digest>. */
void blob_start(struct blob_ctx *ctx, struct evhttp_request *req,
    const struct client_request *rq);

#endif
