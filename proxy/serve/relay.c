/*
 * relay: a client request answered from an upstream transfer.
 *
 * Lifetimes: a relay is referenced by its client request (evhttp's close
 * callback and write callback carry it) and by its upstream transfer.
 * relay_close() severs both before freeing: the transfer is cancelled
 * (upstream guarantees no callback after that) and the close callback is
 * cleared, and evhttp_send_reply_end() replaces the write callback.
 */
#include <sys/queue.h>
#include <sys/time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "client.h"
#include "digest.h"
#include "log.h"
#include "incident.h"
#include "oci.h"
#include "relay.h"
#include "registry.h"
#include "reply.h"
#include "upstream.h"

/* Pause the upstream transfer above this much unsent client data. */
#define RELAY_HIGH_WATER	(1024 * 1024)
/* Enough of an upstream error body to read its OCI code. */
#define RELAY_ERRBODY_MAX	(16 * 1024)

enum relay_mode {
	RELAY_STREAM,	/* bytes go straight to the client */
	RELAY_ERROR,	/* upstream said no: keep its body to read the code */
};

struct relay_ctx {
	struct upstream		*rc_up;
	TAILQ_HEAD(, relay)	 rc_relays;
	int			 rc_inflight;
};

struct relay {
	TAILQ_ENTRY(relay)	 r_entry;
	struct relay_ctx	*r_ctx;
	struct client		 r_client;
	struct upstream_xfer	*r_xfer;	/* NULL once done or cancelled */
	enum relay_mode		 r_mode;
	int			 r_paused;
	int64_t			 r_expect;	/* upstream Content-Length, -1 */
	struct evbuffer		*r_buf;
	/*
	 * A whole body that claims a digest (by-digest routes) is hashed on
	 * the way, and its latest piece held back until the hash matched: no
	 * client gets a complete wrong body, cached or not.
	 */
	struct digest		*r_digest;
	struct evbuffer		*r_held;
};

static void relay_close(struct relay *, int abort_client);

struct relay_ctx *
relay_ctx_new(struct upstream *up)
{
	struct relay_ctx *ctx;

	if ((ctx = calloc(1, sizeof(*ctx))) == NULL)
		return NULL;
	ctx->rc_up = up;
	TAILQ_INIT(&ctx->rc_relays);
	return ctx;
}

void
relay_ctx_free(struct relay_ctx *ctx)
{
	struct relay *r;

	if (ctx == NULL)
		return;
	while ((r = TAILQ_FIRST(&ctx->rc_relays)) != NULL)
		relay_close(r, 1);
	free(ctx);
}

int
relay_ctx_inflight(const struct relay_ctx *ctx)
{
	return ctx->rc_inflight;
}

static void
relay_gone(void *arg)
{
	relay_close(arg, 0);
}

/*
 * The one teardown path. abort_client cuts the client's connection: the
 * only way to tell a client that a body already under way is incomplete.
 */
static void
relay_close(struct relay *r, int abort_client)
{
	if (r->r_xfer != NULL) {
		upstream_xfer_cancel(r->r_xfer);
		r->r_xfer = NULL;
	}
	client_end(&r->r_client, abort_client);
	TAILQ_REMOVE(&r->r_ctx->rc_relays, r, r_entry);
	r->r_ctx->rc_inflight--;
	if (r->r_buf != NULL)
		evbuffer_free(r->r_buf);
	if (r->r_held != NULL)
		evbuffer_free(r->r_held);
	digest_free(r->r_digest);
	free(r);
}

/* Send a complete reply (headers already set) and close the relay. */
static void
relay_reply(struct relay *r, int status)
{
	evhttp_send_reply(client_take(&r->r_client, status), status, NULL,
	    NULL);
	relay_close(r, 0);
}

/* An error answer, or, too late for a status, a cut connection. */
static void
relay_fail(struct relay *r, int status, enum oci_err err, const char *msg)
{
	client_error(&r->r_client, status, err, msg);
	relay_close(r, r->r_client.c_started);
}

/* tell: NULL, or where the cause goes for the client (incident.h). */
static void
relay_log_failure(struct relay *r, const struct upstream_xfer *x,
    enum classify_phase phase, long upstatus, const char *error,
    int client_status, char *tell)
{
	struct incident f;

	incident_init(&f, &r->r_client.c_rq, x, upstatus, r->r_buf);
	f.error = error;
	f.client_status = client_status;
	f.phase = phase;
	f.tell = tell;
	f.tellen = INCIDENT_TELL_MAX;
	incident_log(&f);
}

static void
relay_copy_header(struct relay *r, const struct upstream_xfer *x,
    const char *name)
{
	const char *v = upstream_xfer_header(x, name);

	if (v != NULL)
		evhttp_add_header(evhttp_request_get_output_headers(
		    r->r_client.c_req), name, v);
}

/* Upstream answered with an error status: tell the client in OCI terms. */
static void
relay_upstream_error(struct relay *r, const struct upstream_xfer *x,
    long status)
{
	enum oci_err err;
	int cstatus;
	char msg[INCIDENT_TELL_MAX];

	cstatus = reply_upstream_status(r->r_client.c_rq.route.kind, status,
	    evbuffer_pullup(r->r_buf, -1), evbuffer_get_length(r->r_buf), &err);
	if (status == 416)
		relay_copy_header(r, x, "Content-Range");
	snprintf(msg, sizeof(msg), "upstream registry %s answered %ld",
	    registry_name(r->r_client.c_rq.reg), status);
	/* Before relay_fail, which frees r. */
	if (status != 416)
		relay_log_failure(r, x, CLASSIFY_PHASE_REQUEST, status, NULL,
		    cstatus, msg);
	relay_fail(r, cstatus, err, msg);
}

static void
relay_drained(struct evhttp_connection *evcon, void *arg)
{
	struct relay *r = arg;

	(void)evcon;
	if (r->r_paused && r->r_xfer != NULL) {
		r->r_paused = 0;
		upstream_xfer_resume(r->r_xfer);
	}
}

static void
relay_on_headers(struct upstream_xfer *x, void *arg)
{
	struct relay *r = arg;
	const struct oci_route *rt = &r->r_client.c_rq.route;
	struct evkeyvalq *out;
	long status = upstream_xfer_status(x);
	const char *cl;

	cl = upstream_xfer_header(x, "Content-Length");
	r->r_expect = cl != NULL ? strtoll(cl, NULL, 10) : -1;
	if (status != 200 && status != 206) {
		r->r_mode = RELAY_ERROR;
		return;
	}
	relay_copy_header(r, x, "Content-Type");
	relay_copy_header(r, x, "Content-Length");
	relay_copy_header(r, x, "Content-Range");
	relay_copy_header(r, x, "Link");
	out = evhttp_request_get_output_headers(r->r_client.c_req);
	if (rt->by_digest)
		evhttp_add_header(out, "Docker-Content-Digest", rt->reference);
	else
		relay_copy_header(r, x, "Docker-Content-Digest");
	if (rt->kind == OCI_ROUTE_BLOB)
		evhttp_add_header(out, "Accept-Ranges", "bytes");
	if (r->r_client.c_rq.head) {
		relay_reply(r, (int)status);
		return;
	}
	if (status == 200 && rt->by_digest &&
	    ((r->r_digest = digest_new_for(rt->reference)) == NULL ||
	    (r->r_held = evbuffer_new()) == NULL)) {
		upstream_xfer_cancel(x);
		r->r_xfer = NULL;
		relay_fail(r, 500, OCI_ERR_UPSTREAM, "out of memory");
		return;
	}
	r->r_client.c_status = (int)status;
	r->r_client.c_started = 1;
	evhttp_send_reply_start(r->r_client.c_req, (int)status, NULL);
}

static void
relay_on_data(struct upstream_xfer *x, const char *buf, size_t len, void *arg)
{
	struct relay *r = arg;
	struct evhttp_connection *evcon;
	struct evbuffer *out;

	switch (r->r_mode) {
	case RELAY_ERROR:
		if (evbuffer_get_length(r->r_buf) + len <= RELAY_ERRBODY_MAX)
			evbuffer_add(r->r_buf, buf, len);
		return;
	case RELAY_STREAM:
		break;
	}
	if (r->r_digest != NULL) {
		digest_update(r->r_digest, buf, len);
		evbuffer_add_buffer(r->r_buf, r->r_held);
		evbuffer_add(r->r_held, buf, len);
	} else
		evbuffer_add(r->r_buf, buf, len);
	if (evbuffer_get_length(r->r_buf) == 0)
		return;
	r->r_client.c_bytes += evbuffer_get_length(r->r_buf);
	evhttp_send_reply_chunk_with_cb(r->r_client.c_req, r->r_buf,
	    relay_drained, r);
	evcon = evhttp_request_get_connection(r->r_client.c_req);
	if (evcon == NULL)
		return;
	out = bufferevent_get_output(evhttp_connection_get_bufferevent(evcon));
	if (!r->r_paused && evbuffer_get_length(out) > RELAY_HIGH_WATER) {
		r->r_paused = 1;
		upstream_xfer_pause(x);
	}
}

/*
 * The body came whole as far as the transfer knows: the client must not
 * take it as whole if it is short, or if it does not hash to the digest
 * it was asked by (the held-back bytes are then never sent).
 */
static void
relay_stream_done(struct relay *r, struct upstream_xfer *x,
    const struct upstream_result *res)
{
	uint64_t got = r->r_client.c_bytes;

	if (r->r_held != NULL)
		got += evbuffer_get_length(r->r_held);
	if (r->r_expect >= 0 && got != (uint64_t)r->r_expect) {
		relay_log_failure(r, x, CLASSIFY_PHASE_BODY, res->status,
		    "short body", r->r_client.c_status, NULL);
		relay_close(r, 1);
		return;
	}
	if (r->r_digest != NULL && !digest_matches(r->r_digest,
	    r->r_client.c_rq.route.reference)) {
		relay_log_failure(r, x, CLASSIFY_PHASE_DIGEST, res->status,
		    "digest mismatch", r->r_client.c_status, NULL);
		relay_close(r, 1);
		return;
	}
	if (r->r_held != NULL && evbuffer_get_length(r->r_held) > 0) {
		r->r_client.c_bytes += evbuffer_get_length(r->r_held);
		evhttp_send_reply_chunk(r->r_client.c_req, r->r_held);
	}
	relay_close(r, 0);
}

static void
relay_on_done(struct upstream_xfer *x, const struct upstream_result *res,
    void *arg)
{
	struct relay *r = arg;

	/*
	 * An error status whose body was cut short (distribution answers 416
	 * with the blob's Content-Length) is still that status.
	 */
	if (res->curl != CURLE_OK &&
	    !(r->r_mode == RELAY_ERROR && res->status >= 400)) {
		enum oci_err err;
		int status = reply_transport_status(res, &err);
		char tell[INCIDENT_TELL_MAX];

		snprintf(tell, sizeof(tell), "%s", res->throttled ||
		    res->circuit != CLASSIFY_NONE ? res->error :
		    "upstream registry unreachable");
		relay_log_failure(r, x, r->r_client.c_started ?
		    CLASSIFY_PHASE_BODY : CLASSIFY_PHASE_REQUEST, res->status,
		    res->error, r->r_client.c_started ? r->r_client.c_status :
		    status, tell);
		r->r_xfer = NULL;
		relay_fail(r, status, err, tell);
		return;
	}
	r->r_xfer = NULL;
	switch (r->r_mode) {
	case RELAY_ERROR:
		relay_upstream_error(r, x, res->status);
		break;
	case RELAY_STREAM:
		relay_stream_done(r, x, res);
		break;
	}
}

void
relay_start(struct relay_ctx *ctx, struct evhttp_request *req,
    const struct client_request *rq)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	struct registry_req rr;
	struct upstream_cbs cbs = { relay_on_headers, relay_on_data,
	    relay_on_done };
	struct oci_range range;
	const char *rh;
	struct relay *r;

	if ((r = calloc(1, sizeof(*r))) == NULL ||
	    client_hold(&r->r_client, rq, req, relay_gone, r) == -1) {
		free(r);
		reply_error(req, 500, OCI_ERR_UPSTREAM, "out of memory");
		client_log(rq, evhttp_request_get_uri(req), 500, 0);
		return;
	}
	/* Never cached, unless the blob reader decided (a miss). */
	if (r->r_client.c_rq.result == METRICS_RESULT_NONE)
		r->r_client.c_rq.result = METRICS_RESULT_PASS;
	r->r_ctx = ctx;
	r->r_mode = RELAY_STREAM;
	r->r_expect = -1;
	r->r_buf = evbuffer_new();
	TAILQ_INSERT_TAIL(&ctx->rc_relays, r, r_entry);
	ctx->rc_inflight++;

	if (r->r_buf == NULL ||
	    registry_req_init(&rr, rq->reg, &rq->route) == -1) {
		relay_fail(r, 500, OCI_ERR_UPSTREAM, "out of memory");
		return;
	}
	if (!rq->from_peer)
		registry_req_fleet(&rr, rq->reg, &rq->route);
	rr.ureq.head = rq->head;
	/* Only a single, well-formed byte range is passed on. */
	rh = evhttp_find_header(in, "Range");
	if (rq->route.kind == OCI_ROUTE_BLOB && rh != NULL &&
	    oci_range_parse(rh, &range) == 1)
		rr.ureq.range = rh;
	r->r_xfer = upstream_xfer_start(ctx->rc_up, &rr.ureq, &cbs, r);
	registry_req_clear(&rr);
	if (r->r_xfer == NULL)
		relay_fail(r, 500, OCI_ERR_UPSTREAM, "cannot start transfer");
}
