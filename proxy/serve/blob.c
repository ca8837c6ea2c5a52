/*
 * blob: the cache's read side (readers) and write side (fetches).
 *
 * A fetch is one upstream GET of a blob into the cache. It fills one chunk
 * in memory, puts it in the cache when full, and wakes its readers; the
 * last chunk waits in memory until the digest is checked and goes in with
 * the blob's record (cache_blob_commit), which makes the blob visible.
 *
 * A reader is one client response: a byte range [pos, end) of a blob,
 * queued a few chunks at a time as references into the LMDB map, each
 * pinned by a read transaction until the socket has taken (copied) it.
 *
 * A fetch cut off in the body resumes with a Range from the last byte it
 * received (the digest state and the chunk in memory carry on), at most
 * BLOB_RESUMES times; a registry that ignores the Range and sends the
 * whole blob again has the bytes already received skipped.
 *
 * Lifetimes: a reader belongs to its client request and, while the blob is
 * being fetched, to that fetch's list; breader_close() is its one teardown
 * path. A fetch ends in bfetch_close(), which detaches its readers first
 * (to carry on from the completed blob, or cut off).
 */
#include <sys/queue.h>
#include <sys/time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blob.h"
#include "cache.h"
#include "circuit.h"
#include "client.h"
#include "config.h"
#include "digest.h"
#include "fanout.h"
#include "incident.h"
#include "log.h"
#include "metrics.h"
#include "oci.h"
#include "platform.h"
#include "relay.h"
#include "registry.h"
#include "reply.h"
#include "upstream.h"

/* Chunks queued ahead per reader: segments of the file, not memory. */
#define BLOB_AHEAD		(4 * CACHE_CHUNK)
#define BLOB_ERRBODY_MAX	(16 * 1024)
#define BLOB_TYPE_DEFAULT	"application/octet-stream"
#define BLOB_RESUMES		3
/* A cache without room for a chunk is asked again this often, this long. */
#define BLOB_ROOM_TRIES		25
#define BLOB_ROOM_MS		200

struct bfetch;

struct breader {
	TAILQ_ENTRY(breader)	 r_entry;
	struct blob_ctx		*r_ctx;
	struct bfetch		*r_fetch;	/* NULL: the blob is complete */
	struct client		 r_client;
	int			 r_ranged;
	struct oci_range	 r_range;
	uint64_t		 r_pos;		/* next byte to queue */
	uint64_t		 r_end;
	char			 r_peer[FLEET_ID_MAX];	/* holds a fanout slot */
};

struct bfetch {
	TAILQ_ENTRY(bfetch)	 f_entry;
	struct blob_ctx		*f_ctx;
	struct client_request	 f_rq;		/* the first client's */
	struct upstream_xfer	*f_xfer;
	int			 f_sized;	/* headers seen, f_size known */
	uint64_t		 f_size;
	uint64_t		 f_received;
	uint32_t		 f_chunks;	/* full chunks in the cache */
	char			*f_chunk;	/* the chunk being filled */
	size_t			 f_chunklen;
	struct digest		*f_digest;
	char			 f_media[CACHE_MEDIA_MAX];
	long			 f_status;	/* upstream status */
	int			 f_resumes;	/* Range requests sent so far */
	int			 f_resuming;	/* the transfer is one of them */
	uint64_t		 f_skip;	/* resent bytes to drop */
	struct event		*f_room;	/* waiting for the cache to have room */
	int			 f_roomtries;
	struct evbuffer		*f_errbody;
	char			 f_tell[INCIDENT_TELL_MAX];	/* the cause */
	TAILQ_HEAD(, breader)	 f_readers;
};

struct blob_ctx {
	struct upstream		*bc_up;
	struct cache		*bc_cache;
	const struct config	*bc_cfg;
	struct relay_ctx	*bc_relays;
	struct fanout		*bc_fanout;	/* peers served at once */
	struct platform		 bc_platform;	/* for image configs */
	TAILQ_HEAD(, bfetch)	 bc_fetches;
	TAILQ_HEAD(, breader)	 bc_readers;	/* of complete blobs */
	int			 bc_nreaders;
};

static void breader_pump(struct breader *);

struct blob_ctx *
blob_ctx_new(struct upstream *up, struct cache *cache,
    const struct config *cfg, struct relay_ctx *relays)
{
	struct blob_ctx *ctx;

	if ((ctx = calloc(1, sizeof(*ctx))) == NULL)
		return NULL;
	ctx->bc_up = up;
	ctx->bc_cache = cache;
	ctx->bc_cfg = cfg;
	ctx->bc_relays = relays;
	if ((ctx->bc_fanout = fanout_new(cfg->fleet.fanout)) == NULL) {
		free(ctx);
		return NULL;
	}
	platform_configured(cfg->platform, &ctx->bc_platform);
	TAILQ_INIT(&ctx->bc_fetches);
	TAILQ_INIT(&ctx->bc_readers);
	return ctx;
}

int
blob_ctx_inflight(const struct blob_ctx *ctx)
{
	return ctx->bc_nreaders;
}

/* The list a reader is on: its fetch's, or the context's. */
static void
breader_unlink(struct breader *r)
{
	if (r->r_fetch != NULL)
		TAILQ_REMOVE(&r->r_fetch->f_readers, r, r_entry);
	else
		TAILQ_REMOVE(&r->r_ctx->bc_readers, r, r_entry);
}

/*
 * The one teardown path. abort_client cuts the connection: the only way to
 * tell a client that a body under way is incomplete.
 */
static void
breader_close(struct breader *r, int abort_client)
{
	metrics_cache_bytes(METRICS_CACHE_BLOB, r->r_client.c_bytes,
	    r->r_client.c_rq.result == METRICS_RESULT_HIT);
	/* A peer that got the whole verified blob holds it now. */
	if (r->r_peer[0] != '\0')
		fanout_done(r->r_ctx->bc_fanout, r->r_client.c_rq.route.reference,
		    r->r_peer, !abort_client && r->r_client.c_started &&
		    r->r_fetch == NULL && r->r_pos == r->r_end);
	cache_blob_unhold(r->r_ctx->bc_cache, r->r_client.c_rq.route.reference);
	client_end(&r->r_client, abort_client);
	breader_unlink(r);
	r->r_ctx->bc_nreaders--;
	free(r);
}

static void
breader_gone(void *arg)
{
	breader_close(arg, 0);
}

/* Answer with an error before any byte of the body. */
static void
breader_fail(struct breader *r, int status, enum oci_err err,
    const char *msg)
{
	client_error(&r->r_client, status, err, msg);
	breader_close(r, r->r_client.c_started);
}

/* Hand the client to a plain relay: the cache will not hold this blob. */
static void
breader_pass_through(struct breader *r)
{
	relay_start(r->r_ctx->bc_relays, client_hand_over(&r->r_client),
	    &r->r_client.c_rq);
	breader_close(r, 0);
}

/* Size and type are known: send the status line, then the body. */
static void
breader_begin(struct breader *r, uint64_t size, const char *media)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(r->r_client.c_req);
	uint64_t off = 0, len = size;
	char buf[96];
	int status;

	if (r->r_ranged) {
		if (!oci_range_resolve(&r->r_range, size, &off, &len)) {
			snprintf(buf, sizeof(buf), "bytes */%" PRIu64, size);
			evhttp_add_header(h, "Content-Range", buf);
			breader_fail(r, 416, OCI_ERR_RANGE_INVALID,
			    "range not satisfiable");
			return;
		}
		snprintf(buf, sizeof(buf), "bytes %" PRIu64 "-%" PRIu64
		    "/%" PRIu64, off, off + len - 1, size);
		evhttp_add_header(h, "Content-Range", buf);
	}
	status = r->r_ranged ? 206 : 200;
	r->r_pos = off;
	r->r_end = off + len;
	snprintf(buf, sizeof(buf), "%" PRIu64, len);
	evhttp_add_header(h, "Content-Length", buf);
	evhttp_add_header(h, "Content-Type", media);
	evhttp_add_header(h, "Docker-Content-Digest", r->r_client.c_rq.route.reference);
	evhttp_add_header(h, "Accept-Ranges", "bytes");
	if (r->r_client.c_rq.head) {
		evhttp_send_reply(client_take(&r->r_client, status), status,
		    NULL, NULL);
		breader_close(r, 0);
		return;
	}
	r->r_client.c_status = status;
	r->r_client.c_started = 1;
	evhttp_send_reply_start(r->r_client.c_req, status, NULL);
	breader_pump(r);
}

static void
breader_unpin_cb(const void *data, size_t len, void *arg)
{
	(void)data;
	(void)len;
	cache_unpin(arg);
}

static void
breader_drained(struct evhttp_connection *evcon, void *arg)
{
	(void)evcon;
	breader_pump(arg);
}

/*
 * Queue chunks while the client has taken what was queued before, up to
 * what is in the cache. Called again when the socket drains and when the
 * fetch commits a chunk.
 */
static void
breader_pump(struct breader *r)
{
	struct cache *cache = r->r_ctx->bc_cache;
	struct evhttp_connection *evcon;
	struct evbuffer *out, *buf;
	struct cache_pin *pin;
	const void *ptr;
	uint64_t within, n;
	uint32_t idx;
	size_t len;

	if (r->r_client.c_req == NULL ||
	    (evcon = evhttp_request_get_connection(r->r_client.c_req)) == NULL)
		return;
	out = bufferevent_get_output(evhttp_connection_get_bufferevent(evcon));
	if ((buf = evbuffer_new()) == NULL) {
		breader_close(r, 1);
		return;
	}
	while (r->r_pos < r->r_end &&
	    evbuffer_get_length(out) + evbuffer_get_length(buf) < BLOB_AHEAD) {
		idx = (uint32_t)(r->r_pos / CACHE_CHUNK);
		if (r->r_fetch != NULL && idx >= r->r_fetch->f_chunks)
			break;		/* not downloaded yet: woken later */
		if (cache_chunk_pin(cache, r->r_client.c_rq.route.reference, idx, &pin,
		    &ptr, &len) != CACHE_OK)
			goto fail;
		within = r->r_pos - (uint64_t)idx * CACHE_CHUNK;
		if (within >= len) {
			cache_unpin(pin);
			goto fail;
		}
		n = len - within;
		if (n > r->r_end - r->r_pos)
			n = r->r_end - r->r_pos;
		/*
		 * Referenced in the map, copied into the socket by writev, and
		 * unpinned once written. Not sendfile: the socket would keep
		 * references to page-cache pages that LMDB may reuse as soon
		 * as the chunk is unpinned, before the kernel sent them.
		 */
		if (evbuffer_add_reference(buf, (const char *)ptr + within,
		    (size_t)n, breader_unpin_cb, pin) == -1) {
			cache_unpin(pin);
			goto fail;
		}
		r->r_pos += n;
		r->r_client.c_bytes += n;
	}
	if (evbuffer_get_length(buf) > 0)
		evhttp_send_reply_chunk_with_cb(r->r_client.c_req, buf,
		    breader_drained, r);
	evbuffer_free(buf);
	/* Done only once the fetch has verified the blob: a body of no
	 * bytes (Content-Length: 0) is all "sent" before the check. */
	if (r->r_pos == r->r_end && r->r_fetch == NULL)
		breader_close(r, 0);
	return;
fail:
	/* The cache lost the bytes under us (evicted, or the store failed). */
	evbuffer_free(buf);
	log_event(LOG_LEVEL_ERROR, "cache read failed", json_pack("{s:I,s:s,"
	    "s:I,s:s}", "id", (json_int_t)r->r_client.c_rq.id, "digest",
	    r->r_client.c_rq.route.reference, "offset", (json_int_t)r->r_pos, "error",
	    cache_strerror(cache)));
	breader_close(r, 1);
}

static struct breader *
breader_new(struct blob_ctx *ctx, struct evhttp_request *req,
    const struct client_request *rq)
{
	const char *rh = evhttp_find_header(
	    evhttp_request_get_input_headers(req), "Range");
	struct breader *r;

	if ((r = calloc(1, sizeof(*r))) == NULL)
		return NULL;
	if (client_hold(&r->r_client, rq, req, breader_gone, r) == -1) {
		free(r);
		return NULL;
	}
	r->r_ctx = ctx;
	/* Anything but one well-formed range gets the whole blob (RFC 9110). */
	r->r_ranged = rh != NULL && oci_range_parse(rh, &r->r_range) == 1;
	cache_blob_hold(ctx->bc_cache, rq->route.reference);
	ctx->bc_nreaders++;
	return r;
}

/*
 * client_status is what readers still waiting for a status line get (0
 * when none does: a resume); served says what happened instead.
 */
static void
bfetch_log_failure(struct bfetch *f, const struct upstream_xfer *x,
    enum classify_phase phase, long status, const char *error,
    int client_status, const char *served)
{
	struct incident rf;
	struct breader *r;

	f->f_tell[0] = '\0';
	incident_init(&rf, &f->f_rq, x, status, f->f_errbody);
	rf.error = error;
	rf.phase = phase;
	rf.served = served;
	rf.tell = f->f_tell;
	rf.tellen = sizeof(f->f_tell);
	/* What the first waiting client gets tells the operator the impact. */
	TAILQ_FOREACH(r, &f->f_readers, r_entry)
		if (!r->r_client.c_started) {
			rf.client_status = client_status;
			break;
		}
	incident_log(&rf);
}

/*
 * The one teardown path of a fetch. Readers of a completed blob carry on
 * from the cache; the others get err (or are cut off if their body has
 * started). What was written of an incomplete blob is discarded.
 */
static void
bfetch_close(struct bfetch *f, int complete, int status, enum oci_err err,
    const char *msg)
{
	struct blob_ctx *ctx = f->f_ctx;
	struct breader *r;

	if (f->f_xfer != NULL)
		upstream_xfer_cancel(f->f_xfer);
	TAILQ_REMOVE(&ctx->bc_fetches, f, f_entry);
	if (!complete)
		cache_blob_discard(ctx->bc_cache, f->f_rq.route.reference);
	while ((r = TAILQ_FIRST(&f->f_readers)) != NULL) {
		TAILQ_REMOVE(&f->f_readers, r, r_entry);
		r->r_fetch = NULL;
		TAILQ_INSERT_TAIL(&ctx->bc_readers, r, r_entry);
		if (!complete)
			breader_fail(r, status, err, f->f_tell[0] != '\0' ?
			    f->f_tell : msg);
		else if (!r->r_client.c_started)
			breader_begin(r, f->f_size, f->f_media);
		else
			breader_pump(r);
	}
	cache_blob_unhold(ctx->bc_cache, f->f_rq.route.reference);
	if (f->f_room != NULL)
		event_free(f->f_room);
	if (f->f_digest != NULL)
		digest_free(f->f_digest);
	if (f->f_errbody != NULL)
		evbuffer_free(f->f_errbody);
	free(f->f_chunk);
	registry_release(f->f_rq.reg);
	free(f);
}

/* Give up on caching before any body was sent: every reader passes through. */
static void
bfetch_pass_through(struct bfetch *f, const char *why)
{
	struct breader *r;

	log_event(LOG_LEVEL_WARN, "cache bypassed", json_pack(
	    "{s:I,s:s,s:s,s:I,s:s}", "id", (json_int_t)f->f_rq.id, "registry",
	    registry_name(f->f_rq.reg), "digest", f->f_rq.route.reference, "size",
	    (json_int_t)f->f_size, "reason", why));
	upstream_xfer_cancel(f->f_xfer);
	f->f_xfer = NULL;
	while ((r = TAILQ_FIRST(&f->f_readers)) != NULL)
		breader_pass_through(r);
	bfetch_close(f, 0, 0, OCI_OK, NULL);
}

/*
 * The answer to a resume: the rest of the blob (206 from where it was
 * cut), or all of it again (200: skip what came before). Anything else
 * is an error status for bfetch_on_done.
 */
static void
bfetch_resume_headers(struct bfetch *f, struct upstream_xfer *x)
{
	const char *cr = upstream_xfer_header(x, "Content-Range");
	const char *cl = upstream_xfer_header(x, "Content-Length");
	char want[96];

	snprintf(want, sizeof(want), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64,
	    f->f_received, f->f_size - 1, f->f_size);
	if (f->f_status == 206 && cr != NULL && strcmp(cr, want) == 0)
		f->f_status = 200;
	else if (f->f_status == 200 && cl != NULL &&
	    strtoull(cl, NULL, 10) == f->f_size) {
		f->f_skip = f->f_received;
		f->f_status = 200;
	} else if (f->f_status < 300)
		f->f_status = 502;	/* not the bytes asked for */
}

static void
bfetch_on_headers(struct upstream_xfer *x, void *arg)
{
	struct bfetch *f = arg;
	struct cache *cache = f->f_ctx->bc_cache;
	const char *cl = upstream_xfer_header(x, "Content-Length");
	const char *ct = upstream_xfer_header(x, "Content-Type");
	struct breader *r;
	enum cache_err cerr;
	char *end;

	f->f_status = upstream_xfer_status(x);
	if (f->f_resuming) {
		bfetch_resume_headers(f, x);
		return;
	}
	if (f->f_status != 200)
		return;		/* the error body is read, then mapped */
	if (cl == NULL || *cl == '\0' ||
	    (f->f_size = strtoull(cl, &end, 10), *end != '\0')) {
		bfetch_pass_through(f, "no Content-Length");
		return;
	}
	if ((cerr = cache_blob_reserve(cache, f->f_size)) != CACHE_OK) {
		bfetch_pass_through(f, cerr == CACHE_FULL ?
		    "larger than the free cache budget" :
		    cache_strerror(cache));
		return;
	}
	/* Memory for the chunk in hand once there is a body to hold: a cold
	 * burst of many digests waiting for their turn costs none. */
	if ((f->f_chunk = malloc(f->f_size < CACHE_CHUNK ?
	    (size_t)f->f_size + 1 : CACHE_CHUNK)) == NULL) {
		bfetch_close(f, 0, 500, OCI_ERR_UPSTREAM, "out of memory");
		return;
	}
	f->f_sized = 1;
	snprintf(f->f_media, sizeof(f->f_media), "%s",
	    ct != NULL && *ct != '\0' ? ct : BLOB_TYPE_DEFAULT);
	/* Each begin may close its reader (HEAD, 416): take them one by one. */
	while ((r = TAILQ_FIRST(&f->f_readers)) != NULL &&
	    !r->r_client.c_started) {
		TAILQ_REMOVE(&f->f_readers, r, r_entry);
		TAILQ_INSERT_TAIL(&f->f_readers, r, r_entry);
		breader_begin(r, f->f_size, f->f_media);
	}
}

static int bfetch_send(struct bfetch *, const char *);
static void bfetch_commit(struct bfetch *, struct upstream_xfer *);
static void bfetch_room_cb(evutil_socket_t, short, void *);

/* A full chunk went into the cache: readers may go on. */
static void
bfetch_stored(struct bfetch *f)
{
	struct breader *r, *next;

	f->f_chunks++;
	f->f_chunklen = 0;
	/* A pump closes only its own reader, when it is done. */
	for (r = TAILQ_FIRST(&f->f_readers); r != NULL; r = next) {
		next = TAILQ_NEXT(r, r_entry);
		if (r->r_client.c_started)
			breader_pump(r);
	}
}

/*
 * The cache had no room for the bytes in hand (a full chunk, or the last
 * one with the record) even after evicting: most often because readers
 * still pin, for a moment, pages an eviction freed, which LMDB cannot
 * reuse until they let go. Rather than cut every reader: stop the
 * transfer, keep the chunk, ask again shortly, then go on with a Range
 * request from where the kept bytes end, as a resume does. 0 when the
 * tries are spent.
 */
static int
bfetch_wait_room(struct bfetch *f)
{
	struct timeval tv = { 0, BLOB_ROOM_MS * 1000 };

	if (f->f_roomtries >= BLOB_ROOM_TRIES || (f->f_room == NULL &&
	    (f->f_room = evtimer_new(upstream_base(f->f_ctx->bc_up),
	    bfetch_room_cb, f)) == NULL))
		return 0;
	if (f->f_roomtries++ == 0)
		log_event(LOG_LEVEL_INFO, "cache full: waiting for room",
		    json_pack("{s:I,s:s,s:I}", "id", (json_int_t)f->f_rq.id,
		    "digest", f->f_rq.route.reference, "offset",
		    (json_int_t)f->f_received));
	if (f->f_xfer != NULL) {
		upstream_xfer_cancel(f->f_xfer);
		f->f_xfer = NULL;
	}
	evtimer_add(f->f_room, &tv);
	return 1;
}

static void
bfetch_room_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bfetch *f = arg;
	struct cache *cache = f->f_ctx->bc_cache;
	enum cache_err ce;
	char range[48];

	(void)fd;
	(void)what;
	if (f->f_received == f->f_size) {	/* the commit waits */
		bfetch_commit(f, NULL);
		return;
	}
	if ((ce = cache_chunk_put(cache, f->f_rq.route.reference, f->f_chunks,
	    f->f_chunk, f->f_chunklen)) == CACHE_FULL && bfetch_wait_room(f))
		return;
	if (ce != CACHE_OK) {
		bfetch_log_failure(f, NULL, CLASSIFY_PHASE_REQUEST, 200,
		    cache_strerror(cache), 502, NULL);
		bfetch_close(f, 0, 502, OCI_ERR_UPSTREAM, "cache write failed");
		return;
	}
	bfetch_stored(f);
	snprintf(range, sizeof(range), "bytes=%" PRIu64 "-", f->f_received);
	f->f_resuming = 1;
	f->f_skip = 0;
	if (bfetch_send(f, range) == -1)
		bfetch_close(f, 0, 500, OCI_ERR_UPSTREAM,
		    "cannot start transfer");
}

static void
bfetch_on_data(struct upstream_xfer *x, const char *buf, size_t len,
    void *arg)
{
	struct bfetch *f = arg;
	struct cache *cache = f->f_ctx->bc_cache;
	enum cache_err ce;
	size_t n;

	if (f->f_status != 200) {
		if (evbuffer_get_length(f->f_errbody) + len <= BLOB_ERRBODY_MAX)
			evbuffer_add(f->f_errbody, buf, len);
		return;
	}
	n = f->f_skip < len ? (size_t)f->f_skip : len;
	f->f_skip -= n;
	buf += n;
	len -= n;
	if (f->f_received + len > f->f_size) {
		bfetch_log_failure(f, x, CLASSIFY_PHASE_BODY, 200,
		    "body longer than Content-Length", 502, NULL);
		bfetch_close(f, 0, 502, OCI_ERR_UPSTREAM,
		    "upstream sent more than it announced");
		return;
	}
	while (len > 0) {
		n = CACHE_CHUNK - f->f_chunklen;
		if (n > len)
			n = len;
		/* Counted as kept: what a full cache drops is asked again. */
		digest_update(f->f_digest, buf, n);
		f->f_received += n;
		memcpy(f->f_chunk + f->f_chunklen, buf, n);
		f->f_chunklen += n;
		buf += n;
		len -= n;
		/*
		 * The last chunk waits for the digest check. Whether this
		 * one is the last is its place in the blob, not whether the
		 * data has all come: one read can end a full chunk and carry
		 * the whole of a short last one.
		 */
		if (f->f_chunklen < CACHE_CHUNK ||
		    (uint64_t)(f->f_chunks + 1) * CACHE_CHUNK == f->f_size)
			continue;
		if ((ce = cache_chunk_put(cache, f->f_rq.route.reference,
		    f->f_chunks, f->f_chunk, f->f_chunklen)) != CACHE_OK) {
			if (ce == CACHE_FULL && bfetch_wait_room(f))
				return;
			bfetch_log_failure(f, x, CLASSIFY_PHASE_REQUEST, 200,
			    cache_strerror(cache), 502, NULL);
			bfetch_close(f, 0, 502, OCI_ERR_UPSTREAM,
			    "cache write failed");
			return;
		}
		bfetch_stored(f);
	}
}

static void bfetch_on_done(struct upstream_xfer *,
    const struct upstream_result *, void *);

/*
 * A single-platform image names its platform in its config, a small JSON
 * blob fetched once: a mismatch is logged when it is (the blob is still
 * served). Configs fit in one chunk, still in memory here.
 */
static void
bfetch_check_platform(struct bfetch *f, const char *digest)
{
	struct platform_mismatch m = { f->f_rq.id, registry_name(f->f_rq.reg),
	    f->f_rq.route.name, f->f_rq.route.reference, digest,
	    &f->f_ctx->bc_platform, NULL };
	char have[128];

	if (f->f_chunks != 0 || platform_config_match(f->f_chunk,
	    f->f_chunklen, &f->f_ctx->bc_platform, have, sizeof(have)) != 0)
		return;
	m.have = have;
	platform_log_mismatch(&m);
}

/* The GET of the blob, or of its rest from range ("bytes=N-"). */
static int
bfetch_send(struct bfetch *f, const char *range)
{
	struct upstream_cbs cbs = { bfetch_on_headers, bfetch_on_data,
	    bfetch_on_done };
	struct registry_req rr;

	if (registry_req_init(&rr, f->f_rq.reg, &f->f_rq.route) == -1)
		return -1;
	if (!f->f_rq.from_peer)
		registry_req_fleet(&rr, f->f_rq.reg, &f->f_rq.route);
	rr.ureq.range = range;
	f->f_xfer = upstream_xfer_start(f->f_ctx->bc_up, &rr.ureq, &cbs, f);
	registry_req_clear(&rr);
	return f->f_xfer != NULL ? 0 : -1;
}

/* A body cut off: ask for the rest. 1 when a resume is under way. */
static int
bfetch_resume(struct bfetch *f, struct upstream_xfer *x,
    const struct upstream_result *res)
{
	char range[48];

	if (!f->f_sized || f->f_status != 200 || f->f_received >= f->f_size ||
	    f->f_resumes >= BLOB_RESUMES || res->throttled ||
	    res->circuit != CLASSIFY_NONE)
		return 0;
	snprintf(range, sizeof(range), "bytes=%" PRIu64 "-", f->f_received);
	if (bfetch_send(f, range) == -1)
		return 0;
	f->f_resumes++;
	f->f_resuming = 1;
	f->f_skip = 0;
	metrics_retry(metrics_registry(registry_name(f->f_rq.reg)));
	bfetch_log_failure(f, x, CLASSIFY_PHASE_BODY, res->status, res->error,
	    0, "resumed");
	return 1;
}

static void
bfetch_on_done(struct upstream_xfer *x, const struct upstream_result *res,
    void *arg)
{
	struct bfetch *f = arg;
	char dgst[DIGEST_STR_LEN + 1];
	enum oci_err err;
	int status;

	f->f_xfer = NULL;
	if (res->curl != CURLE_OK && bfetch_resume(f, x, res))
		return;
	if (res->curl != CURLE_OK) {
		status = reply_transport_status(res, &err);
		bfetch_log_failure(f, x, CLASSIFY_PHASE_REQUEST, res->status,
		    res->error, status, NULL);
		bfetch_close(f, 0, status, err, res->throttled ||
		    res->circuit != CLASSIFY_NONE ? res->error :
		    "upstream registry unreachable");
		return;
	}
	if (f->f_status != 200) {
		status = reply_upstream_status(OCI_ROUTE_BLOB, f->f_status,
		    evbuffer_pullup(f->f_errbody, -1),
		    evbuffer_get_length(f->f_errbody), &err);
		bfetch_log_failure(f, x, CLASSIFY_PHASE_REQUEST, f->f_status,
		    NULL, status, NULL);
		bfetch_close(f, 0, status, err, "upstream registry refused");
		return;
	}
	if (f->f_received != f->f_size) {
		bfetch_log_failure(f, x, CLASSIFY_PHASE_BODY, 200,
		    "body shorter than Content-Length", 502, NULL);
		bfetch_close(f, 0, 502, OCI_ERR_UPSTREAM, "short body");
		return;
	}
	digest_final(f->f_digest, dgst);
	if (strcmp(dgst, f->f_rq.route.reference) != 0) {
		bfetch_log_failure(f, x, CLASSIFY_PHASE_DIGEST, 200,
		    "digest mismatch", 502, NULL);
		/* A mirror or fleet peer that sent wrong bytes is not asked
		 * again until its probe: the next attempt goes elsewhere. */
		circuit_trip(upstream_xfer_mirror_circuit(x),
		    CLASSIFY_DIGEST_MISMATCH);
		bfetch_close(f, 0, 502, OCI_ERR_DIGEST_INVALID,
		    "upstream blob does not match its digest");
		return;
	}
	bfetch_commit(f, x);
}

/* The whole blob, verified: its last chunk and record go in. */
static void
bfetch_commit(struct bfetch *f, struct upstream_xfer *x)
{
	struct cache *cache = f->f_ctx->bc_cache;
	const char *dgst = f->f_rq.route.reference;
	struct cache_blob_info info;
	enum cache_err ce;

	memset(&info, 0, sizeof(info));
	/* The reference is this digest: on_done compared them. */
	snprintf(info.digest, sizeof(info.digest), "%.*s",
	    (int)DIGEST_STR_LEN, dgst);
	snprintf(info.media_type, sizeof(info.media_type), "%s", f->f_media);
	info.size = f->f_size;
	info.created = info.last_access = (uint64_t)time(NULL);
	if ((ce = cache_blob_commit(cache, &info, f->f_chunks, f->f_chunk,
	    f->f_chunklen)) != CACHE_OK) {
		if (ce == CACHE_FULL && bfetch_wait_room(f))
			return;
		bfetch_log_failure(f, x, CLASSIFY_PHASE_REQUEST, 200,
		    cache_strerror(cache), 502, NULL);
		bfetch_close(f, 0, 502, OCI_ERR_UPSTREAM, "cache write failed");
		return;
	}
	bfetch_check_platform(f, dgst);
	log_event(LOG_LEVEL_DEBUG, "blob cached", json_pack("{s:I,s:s,s:s,"
	    "s:I,s:I}", "id", (json_int_t)f->f_rq.id, "registry", registry_name(f->f_rq.reg),
	    "digest", dgst, "size", (json_int_t)f->f_size, "ms",
	    (json_int_t)log_ms_since(&f->f_rq.t0)));
	bfetch_close(f, 1, 0, OCI_OK, NULL);
}

static struct bfetch *
bfetch_start(struct blob_ctx *ctx, const struct client_request *rq)
{
	struct bfetch *f;

	if ((f = calloc(1, sizeof(*f))) == NULL)
		return NULL;
	f->f_ctx = ctx;
	f->f_rq = *rq;
	registry_hold(rq->reg);
	TAILQ_INIT(&f->f_readers);
	TAILQ_INSERT_TAIL(&ctx->bc_fetches, f, f_entry);
	cache_blob_hold(ctx->bc_cache, rq->route.reference);
	f->f_digest = digest_new();
	f->f_errbody = evbuffer_new();
	if (f->f_digest == NULL ||
	    f->f_errbody == NULL || bfetch_send(f, NULL) == -1) {
		bfetch_close(f, 0, 500, OCI_ERR_UPSTREAM, "out of memory");
		return NULL;
	}
	return f;
}

static struct bfetch *
bfetch_find(struct blob_ctx *ctx, const char *digest)
{
	struct bfetch *f;

	TAILQ_FOREACH(f, &ctx->bc_fetches, f_entry)
		if (strcmp(f->f_rq.route.reference, digest) == 0)
			return f;
	return NULL;
}

/*
 * A peer's GET of a whole blob takes one of the K slots, or is sent to a
 * holder (307), or told to come back shortly (503 with Pullproxy-Busy;
 * its upstream.c asks again). 1 when answered here; 0: serve it, with
 * peer set when it holds a slot.
 */
static int
blob_fanout(struct blob_ctx *ctx, struct evhttp_request *req,
    const struct client_request *rq, char peer[FLEET_ID_MAX])
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const char *id = evhttp_find_header(in, "Pullproxy-Peer");
	struct fleet *f = registry_fleet(rq->reg);
	char holder[FLEET_ID_MAX], *loc;
	size_t n;

	peer[0] = '\0';
	if (!rq->from_peer || rq->head || f == NULL || id == NULL ||
	    evhttp_find_header(in, "Range") != NULL || fleet_find(f, id) == NULL)
		return 0;
	switch (fanout_admit(ctx->bc_fanout, f, rq->route.reference, id,
	    holder)) {
	case FANOUT_SERVE:
		snprintf(peer, FLEET_ID_MAX, "%s", id);
		return 0;
	case FANOUT_REDIRECT:
		if (asprintf(&loc, "http://%s/v2/%s/blobs/%s?ns=%s", holder,
		    rq->route.name, rq->route.reference,
		    registry_name(rq->reg)) == -1)
			return 0;
		evhttp_add_header(evhttp_request_get_output_headers(req),
		    "Location", loc);
		free(loc);
		evhttp_send_reply(req, 307, "Temporary Redirect", NULL);
		client_log(rq, evhttp_request_get_uri(req), 307, 0);
		return 1;
	default:
		evhttp_add_header(evhttp_request_get_output_headers(req),
		    "Retry-After", "1");
		evhttp_add_header(evhttp_request_get_output_headers(req),
		    "Pullproxy-Busy", "1");
		n = reply_error(req, 503, OCI_ERR_UPSTREAM,
		    "every fan-out slot is taken: ask again");
		client_log(rq, evhttp_request_get_uri(req), 503, n);
		return 1;
	}
}

void
blob_start(struct blob_ctx *ctx, struct evhttp_request *req,
    const struct client_request *rq)
{
	const struct oci_route *route = &rq->route;
	struct client_request miss;
	struct cache_blob_info info;
	char peer[FLEET_ID_MAX];
	struct breader *r;
	struct bfetch *f;

	/*
	 * Single flight by digest alone: content is addressed by digest, so
	 * a download started for one registry serves the same layer for any.
	 */
	if ((f = bfetch_find(ctx, route->reference)) != NULL)
		metrics_coalesced(METRICS_CACHE_BLOB);
	else if (cache_blob_lookup(ctx->bc_cache, route->reference,
	    &info) != CACHE_OK) {
		/* A HEAD on a miss is not worth a download. */
		if (rq->head) {
			miss = *rq;
			miss.result = METRICS_RESULT_MISS;
			relay_start(ctx->bc_relays, req, &miss);
			return;
		}
		if ((f = bfetch_start(ctx, rq)) == NULL) {
			reply_error(req, 500, OCI_ERR_UPSTREAM,
			    "cannot start transfer");
			client_log(rq, evhttp_request_get_uri(req), 500, 0);
			return;
		}
	}
	metrics_cache(METRICS_CACHE_BLOB, f == NULL);
	/* Past K peers, the blob is in the cache or on its way already. */
	if (blob_fanout(ctx, req, rq, peer))
		return;
	if ((r = breader_new(ctx, req, rq)) == NULL) {
		if (peer[0] != '\0')
			fanout_done(ctx->bc_fanout, route->reference, peer, 0);
		reply_error(req, 500, OCI_ERR_UPSTREAM, "out of memory");
		client_log(rq, evhttp_request_get_uri(req), 500, 0);
		return;
	}
	memcpy(r->r_peer, peer, sizeof(r->r_peer));
	r->r_fetch = f;
	r->r_client.c_rq.result = f == NULL ? METRICS_RESULT_HIT :
	    METRICS_RESULT_MISS;
	if (f == NULL) {
		TAILQ_INSERT_TAIL(&ctx->bc_readers, r, r_entry);
		breader_begin(r, info.size, info.media_type);
		return;
	}
	TAILQ_INSERT_TAIL(&f->f_readers, r, r_entry);
	if (f->f_sized)
		breader_begin(r, f->f_size, f->f_media);
}

void
blob_ctx_free(struct blob_ctx *ctx)
{
	struct breader *r;
	struct bfetch *f;

	if (ctx == NULL)
		return;
	while ((f = TAILQ_FIRST(&ctx->bc_fetches)) != NULL)
		bfetch_close(f, 0, 503, OCI_ERR_UPSTREAM, "shutting down");
	while ((r = TAILQ_FIRST(&ctx->bc_readers)) != NULL)
		breader_close(r, 1);
	fanout_free(ctx->bc_fanout);
	free(ctx);
}
