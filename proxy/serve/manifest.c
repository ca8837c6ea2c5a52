/*
 * manifest: manifests from the cache, or from one upstream fetch per
 * (registry, repository, reference) that every client asking meanwhile
 * waits on.
 *
 * Lifetimes: a waiter belongs to its client request and to the fetch it
 * waits on; mwaiter_close() is its one teardown path and unlinks it from
 * both. A fetch lives until its transfer ends (mfetch_close()), with or
 * without waiters: a manifest whose clients gave up is still worth caching.
 */
#include <sys/queue.h>
#include <sys/time.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "circuit.h"
#include "classify.h"
#include "client.h"
#include "config.h"
#include "digest.h"
#include "incident.h"
#include "log.h"
#include "manifest.h"
#include "metrics.h"
#include "oci.h"
#include "platform.h"
#include "registry.h"
#include "reply.h"
#include "upstream.h"

#define MANIFEST_ERRBODY_MAX	(16 * 1024)
#define MANIFEST_ACCEPT_DEFAULT \
	"application/vnd.oci.image.index.v1+json, " \
	"application/vnd.oci.image.manifest.v1+json, " \
	"application/vnd.docker.distribution.manifest.list.v2+json, " \
	"application/vnd.docker.distribution.manifest.v2+json"
#define MANIFEST_TYPE_DEFAULT	"application/vnd.oci.image.manifest.v1+json"
#define MANIFEST_PLATFORM_SEEN	256

struct mfetch;

struct mwaiter {
	TAILQ_ENTRY(mwaiter)	 w_entry;
	struct mfetch		*w_fetch;
	struct client		 w_client;
};

struct mfetch {
	TAILQ_ENTRY(mfetch)	 f_entry;
	struct manifest_ctx	*f_ctx;
	struct client_request	 f_rq;		/* the first client's */
	char			*f_accept;
	struct upstream_xfer	*f_xfer;
	int			 f_head;	/* revalidating a known tag */
	char			 f_known[CACHE_DIGEST_MAX];	/* or "" */
	char			 f_tell[INCIDENT_TELL_MAX];	/* the cause */
	struct evbuffer		*f_body;
	TAILQ_HEAD(, mwaiter)	 f_waiters;
};

struct manifest_ctx {
	struct upstream		*mc_up;
	struct cache		*mc_cache;
	const struct config	*mc_cfg;
	TAILQ_HEAD(, mfetch)	 mc_fetches;
	int			 mc_waiters;
	struct platform		 mc_platform;	/* the node's, or configured */
	/* Indexes reported without it, the last MANIFEST_PLATFORM_SEEN. */
	char			 mc_seen[MANIFEST_PLATFORM_SEEN][CACHE_DIGEST_MAX];
	size_t			 mc_nseen;
};

static void mfetch_close(struct mfetch *);
static int mfetch_get(struct mfetch *, int head);

struct manifest_ctx *
manifest_ctx_new(struct upstream *up, struct cache *cache,
    const struct config *cfg)
{
	struct manifest_ctx *ctx;

	if ((ctx = calloc(1, sizeof(*ctx))) == NULL)
		return NULL;
	ctx->mc_up = up;
	ctx->mc_cache = cache;
	ctx->mc_cfg = cfg;
	TAILQ_INIT(&ctx->mc_fetches);
	platform_configured(cfg->platform, &ctx->mc_platform);
	return ctx;
}

void
manifest_ctx_free(struct manifest_ctx *ctx)
{
	struct mfetch *f;

	if (ctx == NULL)
		return;
	while ((f = TAILQ_FIRST(&ctx->mc_fetches)) != NULL)
		mfetch_close(f);
	free(ctx);
}

int
manifest_ctx_inflight(const struct manifest_ctx *ctx)
{
	return ctx->mc_waiters;
}

static uint64_t
manifest_now_ms(void)
{
	struct timeval now;

	gettimeofday(&now, NULL);
	return (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_usec / 1000;
}

static void
manifest_unpin_cb(const void *data, size_t len, void *arg)
{
	(void)data;
	(void)len;
	cache_unpin(arg);
}

/*
 * Answer 200 with a manifest. With a pin the body is referenced in the map,
 * not copied, and unpinned once sent. Returns the body bytes sent.
 */
static size_t
manifest_send(struct evhttp_request *req, const char *media,
    const char *digest, const void *body, size_t len, struct cache_pin *pin)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	int head = evhttp_request_get_command(req) == EVHTTP_REQ_HEAD;
	struct evbuffer *buf = NULL;
	char clen[32];

	evhttp_add_header(h, "Content-Type", media);
	evhttp_add_header(h, "Docker-Content-Digest", digest);
	snprintf(clen, sizeof(clen), "%zu", len);
	evhttp_add_header(h, "Content-Length", clen);
	if (!head && (buf = evbuffer_new()) != NULL) {
		if (pin != NULL)
			evbuffer_add_reference(buf, body, len,
			    manifest_unpin_cb, pin);
		else
			evbuffer_add(buf, body, len);
		pin = NULL;
	}
	if (pin != NULL)
		cache_unpin(pin);
	evhttp_send_reply(req, 200, "OK", buf);
	if (buf != NULL)
		evbuffer_free(buf);
	return head ? 0 : len;
}

/* A stored manifest, pinned for manifest_send; -1 on a miss. */
struct manifest_hit {
	struct cache_pin	*pin;
	const void		*body;
	size_t			 len;
	char			 media[CACHE_MEDIA_MAX];
};

static int
manifest_lookup(struct manifest_ctx *ctx, const char *digest,
    struct manifest_hit *hit)
{
	return cache_manifest_pin(ctx->mc_cache, digest, &hit->pin, &hit->body,
	    &hit->len, hit->media) == CACHE_OK ? 0 : -1;
}

static void
mwaiter_close(struct mwaiter *w)
{
	client_end(&w->w_client, 1);	/* never answered: cut */
	TAILQ_REMOVE(&w->w_fetch->f_waiters, w, w_entry);
	w->w_fetch->f_ctx->mc_waiters--;
	free(w);
}

static void
mwaiter_gone(void *arg)
{
	mwaiter_close(arg);
}


static void
mfetch_close(struct mfetch *f)
{
	struct mwaiter *w;

	if (f->f_xfer != NULL)
		upstream_xfer_cancel(f->f_xfer);
	while ((w = TAILQ_FIRST(&f->f_waiters)) != NULL)
		mwaiter_close(w);
	TAILQ_REMOVE(&f->f_ctx->mc_fetches, f, f_entry);
	if (f->f_body != NULL)
		evbuffer_free(f->f_body);
	free(f->f_accept);
	registry_release(f->f_rq.reg);
	free(f);
}

static void
mfetch_log_failure(struct mfetch *f, const struct upstream_xfer *x,
    enum classify_phase phase, long status, const char *error,
    int client_status, const char *served)
{
	struct incident rf;

	f->f_tell[0] = '\0';
	incident_init(&rf, &f->f_rq, x, status, f->f_body);
	rf.error = error;
	rf.client_status = client_status;
	rf.phase = phase;
	rf.served = served;
	rf.tell = f->f_tell;
	rf.tellen = sizeof(f->f_tell);
	incident_log(&rf);
}

/* Every waiter gets the same error. */
static void
mfetch_fail_all(struct mfetch *f, int status, enum oci_err err,
    const char *msg)
{
	struct mwaiter *w;

	while ((w = TAILQ_FIRST(&f->f_waiters)) != NULL) {
		client_error(&w->w_client, status, err, msg);
		mwaiter_close(w);
	}
}

/*
 * Answer every waiter from the cache; -1 when it does not hold digest.
 * A stale answer says so (RFC 9111's Warning 110), for whoever debugs it.
 */
static int
mfetch_answer_cached(struct mfetch *f, const char *digest, int stale)
{
	struct evhttp_request *req;
	struct manifest_hit hit;
	struct mwaiter *w;

	while ((w = TAILQ_FIRST(&f->f_waiters)) != NULL) {
		if (manifest_lookup(f->f_ctx, digest, &hit) == -1)
			return -1;
		req = client_take(&w->w_client, 200);
		if (stale) {
			w->w_client.c_rq.result = METRICS_RESULT_STALE;
			evhttp_add_header(evhttp_request_get_output_headers(req),
			    "Warning", "110 pullproxy \"Response is Stale\"");
		}
		w->w_client.c_bytes = manifest_send(req, hit.media, digest,
		    hit.body, hit.len, hit.pin);
		mwaiter_close(w);
	}
	return 0;
}

/*
 * The registry could not answer. A tag that was known is served stale: a
 * pod on a node that already has the image should not fail because the
 * registry is down. A 404 is an answer (the tag is gone), not a failure.
 */
static void
mfetch_failed(struct mfetch *f, struct upstream_xfer *x, long status,
    const char *error, enum oci_err err, int cstatus)
{
	/* The error the caller chose for the client names the phase. */
	enum classify_phase phase = err == OCI_ERR_DIGEST_INVALID ?
	    CLASSIFY_PHASE_DIGEST : err == OCI_ERR_MANIFEST_INVALID ?
	    CLASSIFY_PHASE_BODY : CLASSIFY_PHASE_REQUEST;
	char msg[256];

	if (f->f_known[0] != '\0' && status != 404 &&
	    !TAILQ_EMPTY(&f->f_waiters) &&
	    mfetch_answer_cached(f, f->f_known, 1) == 0) {
		mfetch_log_failure(f, x, phase, status, error, 200, "stale");
		mfetch_close(f);
		return;
	}
	if (status != 0 && error == NULL) {
		cstatus = reply_upstream_status(OCI_ROUTE_MANIFEST, status,
		    evbuffer_pullup(f->f_body, -1),
		    evbuffer_get_length(f->f_body), &err);
		snprintf(msg, sizeof(msg), "upstream registry %s answered %ld",
		    registry_name(f->f_rq.reg), status);
	} else
		snprintf(msg, sizeof(msg), "upstream registry %s: %s",
		    registry_name(f->f_rq.reg), error);
	mfetch_log_failure(f, x, phase, status, error,
	    TAILQ_EMPTY(&f->f_waiters) ? 0 : cstatus, NULL);
	mfetch_fail_all(f, cstatus, err, f->f_tell[0] != '\0' ? f->f_tell :
	    msg);
	mfetch_close(f);
}

/*
 * An index without the node's platform: containerd will fail to pull it
 * ("no match for platform in manifest"). Logged once per index digest;
 * the index is still served (another node may use it). A single-platform
 * manifest names its platform in its config blob: blob.c checks that.
 */
static void
mfetch_check_platform(struct mfetch *f, const char *digest,
    const void *body, size_t len)
{
	struct manifest_ctx *ctx = f->f_ctx;
	struct platform_mismatch m = { f->f_rq.id, registry_name(f->f_rq.reg),
	    f->f_rq.route.name, f->f_rq.route.reference, digest, &ctx->mc_platform,
	    NULL };
	char have[512];
	size_t i;

	if (platform_index_match(body, len, &ctx->mc_platform, have,
	    sizeof(have)) != 0)
		return;
	for (i = 0; i < ctx->mc_nseen && i < MANIFEST_PLATFORM_SEEN; i++)
		if (strcmp(ctx->mc_seen[i], digest) == 0)
			return;
	snprintf(ctx->mc_seen[ctx->mc_nseen++ % MANIFEST_PLATFORM_SEEN],
	    CACHE_DIGEST_MAX, "%s", digest);
	m.have = have;
	platform_log_mismatch(&m);
}

/* A whole manifest arrived: verify, store, answer everyone. */
static void
mfetch_got_manifest(struct mfetch *f, struct upstream_xfer *x)
{
	struct cache *cache = f->f_ctx->mc_cache;
	char dgst[DIGEST_STR_LEN + 1], media[CACHE_MEDIA_MAX];
	const char *ctype = upstream_xfer_header(x, "Content-Type");
	size_t len = evbuffer_get_length(f->f_body);
	const void *body = evbuffer_pullup(f->f_body, -1);
	const char *dcd;
	struct mwaiter *w;
	struct digest *d;

	if ((d = digest_new()) == NULL) {
		mfetch_failed(f, x, 200, "out of memory", OCI_ERR_UPSTREAM,
		    502);
		return;
	}
	digest_update(d, body, len);
	digest_final(d, dgst);
	digest_free(d);
	/*
	 * By tag only the registry's Docker-Content-Digest vouches for the
	 * bytes: a body cut to a lying Content-Length, or changed on the way,
	 * would otherwise be stored and served as the tag's manifest.
	 */
	dcd = upstream_xfer_header(x, "Docker-Content-Digest");
	if (f->f_rq.route.by_digest ? strcmp(dgst, f->f_rq.route.reference) !=
	    0 : dcd != NULL && strncmp(dcd, "sha256:", 7) == 0 &&
	    strcmp(dgst, dcd) != 0) {
		if (f->f_rq.route.by_digest)
			f->f_known[0] = '\0';
		/* A mirror or peer that sent it is not asked again soon. */
		circuit_trip(upstream_xfer_mirror_circuit(x),
		    CLASSIFY_DIGEST_MISMATCH);
		mfetch_failed(f, x, 200, "digest mismatch",
		    OCI_ERR_DIGEST_INVALID, 502);
		return;
	}
	snprintf(media, sizeof(media), "%s",
	    ctype != NULL && *ctype != '\0' ? ctype : MANIFEST_TYPE_DEFAULT);
	mfetch_check_platform(f, dgst, body, len);
	/* A manifest the cache cannot take is still served. */
	if (cache_manifest_put(cache, dgst, media, body, len) != CACHE_OK)
		log_event(LOG_LEVEL_WARN, "cache store failed", json_pack(
		    "{s:s,s:s}", "digest", dgst, "error",
		    cache_strerror(cache)));
	else if (!f->f_rq.route.by_digest)
		cache_tag_put(cache, registry_name(f->f_rq.reg), f->f_rq.route.name,
		    f->f_rq.route.reference, dgst, manifest_now_ms());
	while ((w = TAILQ_FIRST(&f->f_waiters)) != NULL) {
		w->w_client.c_bytes = manifest_send(client_take(&w->w_client,
		    200), media, dgst, body, len, NULL);
		mwaiter_close(w);
	}
	mfetch_close(f);
}

static void
mfetch_on_headers(struct upstream_xfer *x, void *arg)
{
	struct mfetch *f = arg;
	const char *cl = upstream_xfer_header(x, "Content-Length");

	if (upstream_xfer_status(x) == 200 && !f->f_head && cl != NULL &&
	    strtoll(cl, NULL, 10) > OCI_MANIFEST_MAX) {
		f->f_xfer = NULL;
		upstream_xfer_cancel(x);
		mfetch_failed(f, x, 200, "manifest over 4 MiB",
		    OCI_ERR_MANIFEST_INVALID, 502);
	}
}

static void
mfetch_on_data(struct upstream_xfer *x, const char *buf, size_t len,
    void *arg)
{
	struct mfetch *f = arg;
	size_t max = upstream_xfer_status(x) == 200 ? OCI_MANIFEST_MAX :
	    MANIFEST_ERRBODY_MAX;

	if (evbuffer_get_length(f->f_body) + len <= max) {
		evbuffer_add(f->f_body, buf, len);
		return;
	}
	if (upstream_xfer_status(x) != 200)
		return;		/* enough of an error body to read its code */
	f->f_xfer = NULL;
	upstream_xfer_cancel(x);
	mfetch_failed(f, x, 200, "manifest over 4 MiB",
	    OCI_ERR_MANIFEST_INVALID, 502);
}

static void
mfetch_on_done(struct upstream_xfer *x, const struct upstream_result *res,
    void *arg)
{
	struct mfetch *f = arg;
	const char *dcd;
	enum oci_err err;
	int status;

	f->f_xfer = NULL;
	if (res->curl != CURLE_OK) {
		status = reply_transport_status(res, &err);
		mfetch_failed(f, x, res->status, res->error, err, status);
		return;
	}
	if (res->status != 200) {
		mfetch_failed(f, x, res->status, NULL, OCI_ERR_UPSTREAM, 502);
		return;
	}
	if (!f->f_head) {
		mfetch_got_manifest(f, x);
		return;
	}
	/* Revalidated: the same digest means the stored manifest is current. */
	dcd = upstream_xfer_header(x, "Docker-Content-Digest");
	if (dcd != NULL && strcmp(dcd, f->f_known) == 0 &&
	    mfetch_answer_cached(f, f->f_known, 0) == 0) {
		cache_tag_put(f->f_ctx->mc_cache, registry_name(f->f_rq.reg),
		    f->f_rq.route.name, f->f_rq.route.reference, f->f_known,
		    manifest_now_ms());
		mfetch_close(f);
		return;
	}
	if (mfetch_get(f, 0) == -1) {
		mfetch_failed(f, x, 0, "cannot start transfer",
		    OCI_ERR_UPSTREAM, 502);
	}
}

/* Start (or restart, after a HEAD that showed a change) the transfer. */
static int
mfetch_get(struct mfetch *f, int head)
{
	struct manifest_ctx *ctx = f->f_ctx;
	struct upstream_cbs cbs = { mfetch_on_headers, mfetch_on_data,
	    mfetch_on_done };
	struct registry_req rr;

	if (registry_req_init(&rr, f->f_rq.reg, &f->f_rq.route) == -1)
		return -1;
	if (!f->f_rq.from_peer)
		registry_req_fleet(&rr, f->f_rq.reg, &f->f_rq.route);
	rr.ureq.head = head;
	rr.ureq.accept = f->f_accept;
	f->f_head = head;
	evbuffer_drain(f->f_body, evbuffer_get_length(f->f_body));
	f->f_xfer = upstream_xfer_start(ctx->mc_up, &rr.ureq, &cbs, f);
	registry_req_clear(&rr);
	return f->f_xfer != NULL ? 0 : -1;
}

static struct mfetch *
mfetch_find(struct manifest_ctx *ctx, struct registry *reg,
    const struct oci_route *route)
{
	struct mfetch *f;

	TAILQ_FOREACH(f, &ctx->mc_fetches, f_entry)
		if (f->f_rq.reg == reg &&
		    strcmp(f->f_rq.route.name, route->name) == 0 &&
		    strcmp(f->f_rq.route.reference, route->reference) == 0)
			return f;
	return NULL;
}

static struct mfetch *
mfetch_new(struct manifest_ctx *ctx, struct evhttp_request *req,
    const struct client_request *rq, const char *known)
{
	const char *accept = evhttp_find_header(
	    evhttp_request_get_input_headers(req), "Accept");
	struct mfetch *f;

	if ((f = calloc(1, sizeof(*f))) == NULL)
		return NULL;
	f->f_ctx = ctx;
	f->f_rq = *rq;
	registry_hold(rq->reg);
	snprintf(f->f_known, sizeof(f->f_known), "%s", known);
	TAILQ_INIT(&f->f_waiters);
	TAILQ_INSERT_TAIL(&ctx->mc_fetches, f, f_entry);
	f->f_accept = strdup(accept != NULL ? accept :
	    MANIFEST_ACCEPT_DEFAULT);
	f->f_body = evbuffer_new();
	if (f->f_accept == NULL || f->f_body == NULL ||
	    mfetch_get(f, known[0] != '\0') == -1) {
		mfetch_close(f);
		return NULL;
	}
	return f;
}

static void
manifest_wait(struct manifest_ctx *ctx, struct evhttp_request *req,
    const struct client_request *rq, const char *known)
{
	struct mfetch *f;
	struct mwaiter *w;

	metrics_cache(METRICS_CACHE_MANIFEST, 0);
	if ((f = mfetch_find(ctx, rq->reg, &rq->route)) != NULL)
		metrics_coalesced(METRICS_CACHE_MANIFEST);
	else if ((f = mfetch_new(ctx, req, rq, known)) == NULL) {
		reply_error(req, 500, OCI_ERR_UPSTREAM, "cannot start transfer");
		client_log(rq, evhttp_request_get_uri(req), 500, 0);
		return;
	}
	if ((w = calloc(1, sizeof(*w))) == NULL ||
	    client_hold(&w->w_client, rq, req, mwaiter_gone, w) == -1) {
		free(w);
		reply_error(req, 500, OCI_ERR_UPSTREAM, "out of memory");
		client_log(rq, evhttp_request_get_uri(req), 500, 0);
		return;
	}
	w->w_fetch = f;
	w->w_client.c_rq.result = METRICS_RESULT_MISS;
	TAILQ_INSERT_TAIL(&f->f_waiters, w, w_entry);
	ctx->mc_waiters++;
}

void
manifest_start(struct manifest_ctx *ctx, struct evhttp_request *req,
    const struct client_request *rq)
{
	const struct oci_route *route = &rq->route;
	uint64_t fetched, ttl_ms = (uint64_t)ctx->mc_cfg->tag_ttl_s * 1000;
	char digest[CACHE_DIGEST_MAX];
	struct client_request hrq;
	struct manifest_hit hit;
	size_t n;

	digest[0] = '\0';
	if (route->by_digest) {
		/* The server sends only sha256 digests here. */
		if (strlen(route->reference) >= sizeof(digest)) {
			n = reply_error(req, 400, OCI_ERR_DIGEST_INVALID, NULL);
			client_log(rq, evhttp_request_get_uri(req), 400, n);
			return;
		}
		memcpy(digest, route->reference, strlen(route->reference) + 1);
	} else if (cache_tag_get(ctx->mc_cache, registry_name(rq->reg),
	    route->name, route->reference, digest, &fetched) != CACHE_OK)
		digest[0] = '\0';
	else if (manifest_now_ms() - fetched >= ttl_ms) {
		/* Stale: revalidate, knowing what the tag pointed at. */
		manifest_wait(ctx, req, rq, digest);
		return;
	}
	if (digest[0] != '\0' && manifest_lookup(ctx, digest, &hit) == 0) {
		/* Logged before sending, while req (and its URI) is ours. */
		n = rq->head ? 0 : hit.len;
		hrq = *rq;
		hrq.result = METRICS_RESULT_HIT;
		metrics_cache(METRICS_CACHE_MANIFEST, 1);
		metrics_cache_bytes(METRICS_CACHE_MANIFEST, n, 1);
		client_log(&hrq, evhttp_request_get_uri(req), 200, n);
		manifest_send(req, hit.media, digest, hit.body, hit.len,
		    hit.pin);
		return;
	}
	manifest_wait(ctx, req, rq, "");
}
