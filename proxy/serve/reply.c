/*
 * reply: OCI error replies, the mapping of upstream errors to what a
 * client should see, and the classified "upstream failure" log lines.
 */
#include <sys/queue.h>
#include <sys/time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classify.h"
#include "log.h"
#include "metrics.h"
#include "oci.h"
#include "reply.h"
#include "upstream.h"

size_t
reply_error(struct evhttp_request *req, int status, enum oci_err err,
    const char *msg)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	struct evbuffer *body = evbuffer_new();
	char buf[1024], len[32];
	int n;

	n = oci_err_body(buf, sizeof(buf), err, msg, NULL);
	if (n < 0 || body == NULL)
		n = 0;
	else
		evbuffer_add(body, buf, (size_t)n);
	evhttp_remove_header(h, "Content-Length");
	evhttp_add_header(h, "Content-Type", "application/json");
	if (err == OCI_ERR_METHOD)
		evhttp_add_header(h, "Allow", "GET, HEAD");
	snprintf(len, sizeof(len), "%d", n);
	evhttp_add_header(h, "Content-Length", len);
	evhttp_send_reply(req, status, NULL,
	    evhttp_request_get_command(req) == EVHTTP_REQ_HEAD ? NULL : body);
	if (body != NULL)
		evbuffer_free(body);
	return (size_t)n;
}

static void
reply_client_closed(struct evhttp_connection *evcon, void *arg)
{
	struct reply_client *c = arg;

	(void)evcon;
	/*
	 * evhttp detaches a request still in use from a failing connection;
	 * a detached request is ours to free. One still attached is freed
	 * with the connection.
	 */
	if (evhttp_request_get_connection(c->req) == NULL)
		evhttp_request_free(c->req);
	c->req = NULL;
	c->gone(c->arg);
}

void
reply_client_hold(struct reply_client *c, struct evhttp_request *req,
    void (*gone)(void *), void *arg)
{
	c->req = req;
	c->gone = gone;
	c->arg = arg;
	evhttp_connection_set_closecb(evhttp_request_get_connection(req),
	    reply_client_closed, c);
}

struct evhttp_request *
reply_client_take(struct reply_client *c)
{
	struct evhttp_request *req = c->req;
	struct evhttp_connection *evcon;

	if (req != NULL && (evcon = evhttp_request_get_connection(req)) != NULL)
		evhttp_connection_set_closecb(evcon, NULL, NULL);
	c->req = NULL;
	return req;
}

void
reply_client_release(struct reply_client *c, int abort_client, int started)
{
	struct evhttp_request *req = reply_client_take(c);
	struct evhttp_connection *evcon;

	if (req == NULL)
		return;
	evcon = evhttp_request_get_connection(req);
	if (evcon == NULL)
		evhttp_request_free(req);
	else if (abort_client)
		evhttp_connection_free(evcon);	/* frees req */
	else if (started)
		evhttp_send_reply_end(req);
	else
		reply_error(req, 500, OCI_ERR_UPSTREAM, "internal error");
}

void
reply_body_error(const void *body, size_t len, json_t **doc,
    const char **code, const char **msg)
{
	json_t *e;

	*code = *msg = NULL;
	*doc = body != NULL && len > 0 ? json_loadb(body, len, 0, NULL) : NULL;
	if ((e = json_array_get(json_object_get(*doc, "errors"), 0)) != NULL) {
		*code = json_string_value(json_object_get(e, "code"));
		*msg = json_string_value(json_object_get(e, "message"));
	} else {
		*code = json_string_value(json_object_get(*doc, "error"));
		*msg = json_string_value(json_object_get(*doc,
		    "error_description"));
	}
}

/* The OCI code in an upstream error body, when it is one we pass on. */
static enum oci_err
reply_upstream_code(const void *body, size_t len, enum oci_err dflt)
{
	static const enum oci_err known[] = { OCI_ERR_BLOB_UNKNOWN,
	    OCI_ERR_MANIFEST_UNKNOWN, OCI_ERR_NAME_UNKNOWN };
	const char *code, *msg;
	enum oci_err err = dflt;
	json_t *doc;
	size_t i;

	reply_body_error(body, len, &doc, &code, &msg);
	for (i = 0; code != NULL && i < sizeof(known) / sizeof(known[0]); i++)
		if (strcmp(code, oci_err_code(known[i])) == 0)
			err = known[i];
	json_decref(doc);
	return err;
}

int
reply_upstream_status(enum oci_route_kind kind, long status,
    const void *body, size_t len, enum oci_err *err)
{
	switch (status) {
	case 404:
		*err = reply_upstream_code(body, len,
		    kind == OCI_ROUTE_BLOB ? OCI_ERR_BLOB_UNKNOWN :
		    kind == OCI_ROUTE_MANIFEST ? OCI_ERR_MANIFEST_UNKNOWN :
		    OCI_ERR_NAME_UNKNOWN);
		return 404;
	case 416:
		*err = OCI_ERR_RANGE_INVALID;
		return 416;
	case 401:
		*err = OCI_ERR_UNAUTHORIZED;
		return 502;
	case 403:
		*err = OCI_ERR_DENIED;
		return 502;
	case 429:
		*err = OCI_ERR_TOOMANYREQUESTS;
		return 503;
	default:
		*err = OCI_ERR_UPSTREAM;
		return 502;
	}
}

int
reply_transport_status(const struct upstream_result *res, enum oci_err *err)
{
	if (res->throttled) {
		*err = OCI_ERR_TOOMANYREQUESTS;
		return 503;
	}
	if (res->circuit != CLASSIFY_NONE) {
		*err = OCI_ERR_UPSTREAM;
		return 503;
	}
	if (res->curl == CURLE_OPERATION_TIMEDOUT) {
		*err = OCI_ERR_TIMEOUT;
		return 504;
	}
	*err = OCI_ERR_UPSTREAM;
	return 502;
}

/* ------------------------------------------------ repeated failures */

/* A failure logged within the window, and how often it came again. */
struct reply_repeat {
	TAILQ_ENTRY(reply_repeat) rr_entry;
	char			*rr_registry;
	char			*rr_repository;
	enum classify_cause	 rr_cause;
	const char		*rr_served;	/* static, or NULL */
	struct timeval		 rr_t0;		/* when it was logged */
	unsigned long		 rr_first_id;
	unsigned long		 rr_last_id;
	unsigned long		 rr_count;	/* not logged since */
};

/* Oldest first: windows close in this order. */
static TAILQ_HEAD(, reply_repeat) reply_repeats =
    TAILQ_HEAD_INITIALIZER(reply_repeats);
static struct event *reply_repeat_timer;

static void
reply_repeat_close(struct reply_repeat *rr)
{
	if (rr->rr_count > 0)
		log_event(LOG_LEVEL_WARN, "upstream failure repeated",
		    json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:s*}", "registry",
		    rr->rr_registry, "repository", rr->rr_repository, "cause",
		    classify_cause_name(rr->rr_cause), "count",
		    (json_int_t)rr->rr_count, "first_id",
		    (json_int_t)rr->rr_first_id, "last_id",
		    (json_int_t)rr->rr_last_id, "window_ms",
		    (json_int_t)REPLY_REPEAT_MS, "served", rr->rr_served));
	TAILQ_REMOVE(&reply_repeats, rr, rr_entry);
	free(rr->rr_registry);
	free(rr->rr_repository);
	free(rr);
}

/* Close the windows that are over (all: every one), re-arm the timer. */
static void
reply_repeat_expire(int all)
{
	struct reply_repeat *rr;
	struct timeval tv;
	long left = 0;

	while ((rr = TAILQ_FIRST(&reply_repeats)) != NULL && (all ||
	    (left = REPLY_REPEAT_MS - log_ms_since(&rr->rr_t0)) <= 0))
		reply_repeat_close(rr);
	if (rr == NULL || reply_repeat_timer == NULL)
		return;
	tv.tv_sec = left / 1000;
	tv.tv_usec = (left % 1000) * 1000;
	evtimer_add(reply_repeat_timer, &tv);
}

static void
reply_repeat_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	reply_repeat_expire(0);
}

static int
reply_same(const char *a, const char *b)
{
	return a == NULL || b == NULL ? a == b : strcmp(a, b) == 0;
}

/*
 * 1 when the failure repeats one in its window (and was counted). What
 * clients got is part of the key: a resumed download is not a failed one.
 */
static int
reply_repeat_count(const struct reply_failure *f, enum classify_cause cause)
{
	struct reply_repeat *rr;
	int first;

	reply_repeat_expire(0);
	TAILQ_FOREACH(rr, &reply_repeats, rr_entry)
		if (rr->rr_cause == cause && reply_same(rr->rr_served,
		    f->served) && strcmp(rr->rr_registry, f->registry) == 0 &&
		    strcmp(rr->rr_repository, f->repository) == 0) {
			rr->rr_count++;
			rr->rr_last_id = f->id;
			return 1;
		}
	/* Out of memory: log every one rather than lose any. */
	if ((rr = calloc(1, sizeof(*rr))) == NULL)
		return 0;
	rr->rr_registry = strdup(f->registry);
	rr->rr_repository = strdup(f->repository);
	if (rr->rr_registry == NULL || rr->rr_repository == NULL) {
		free(rr->rr_registry);
		free(rr->rr_repository);
		free(rr);
		return 0;
	}
	rr->rr_cause = cause;
	rr->rr_served = f->served;
	rr->rr_first_id = rr->rr_last_id = f->id;
	gettimeofday(&rr->rr_t0, NULL);
	first = TAILQ_EMPTY(&reply_repeats);
	TAILQ_INSERT_TAIL(&reply_repeats, rr, rr_entry);
	if (first)
		reply_repeat_expire(0);
	return 0;
}

int
reply_log_begin(struct event_base *base)
{
	reply_repeat_timer = evtimer_new(base, reply_repeat_timer_cb, NULL);
	return reply_repeat_timer != NULL ? 0 : -1;
}

void
reply_log_end(void)
{
	if (reply_repeat_timer != NULL)
		event_free(reply_repeat_timer);
	reply_repeat_timer = NULL;
	reply_repeat_expire(1);
}

/* ------------------------------------------------------ failure lines */

/* What the failure was, from what the caller and the transfer know. */
static void
reply_classify(const struct reply_failure *f, const char *code,
    const char *msg, struct classify_result *out)
{
	struct classify_input in;

	memset(&in, 0, sizeof(in));
	in.phase = f->phase;
	in.status = f->status;
	in.acr_code = code;
	in.acr_message = msg;
	in.host = f->registry;
	upstream_result_classify(&in, f->res);
	classify(&in, out);
}

void
reply_log_failure(const struct reply_failure *f)
{
	struct classify_result c;
	const char *code, *msg;
	json_t *o, *doc;

	reply_body_error(f->body, f->bodylen, &doc, &code, &msg);
	reply_classify(f, code, msg, &c);
	metrics_failure(metrics_registry(f->registry), c.cause);
	if (c.cause != CLASSIFY_NONE && reply_repeat_count(f, c.cause)) {
		json_decref(doc);
		return;
	}
	o = json_pack("{s:I,s:s,s:s,s:s,s:s,s:I,s:s}", "id", (json_int_t)f->id,
	    "registry", f->registry, "repository", f->repository,
	    "reference", f->reference, "url", f->url != NULL ? f->url : "",
	    "ms", (json_int_t)f->ms, "phase", classify_phase_name(c.phase));
	if (o == NULL) {
		json_decref(doc);
		return;
	}
	if (f->status != 0)
		json_object_set_new(o, "status", json_integer(f->status));
	if (f->error != NULL && *f->error != '\0')
		json_object_set_new(o, "error", json_string(f->error));
	if (code != NULL)
		json_object_set_new(o, "code", json_string(code));
	if (msg != NULL)
		json_object_set_new(o, "message", json_string(msg));
	if (c.cause != CLASSIFY_NONE) {
		json_object_set_new(o, "cause", json_string(
		    classify_cause_name(c.cause)));
		json_object_set_new(o, "hint", json_string(c.hint));
	}
	if (f->client_status != 0)
		json_object_set_new(o, "client_status",
		    json_integer(f->client_status));
	if (f->served != NULL)
		json_object_set_new(o, "served", json_string(f->served));
	if (f->res != NULL && f->res->attempts > 0)
		json_object_set_new(o, "attempt", json_integer(
		    f->res->attempts));
	if (f->res != NULL && f->res->circuit != CLASSIFY_NONE)
		json_object_set_new(o, "circuit", json_string("open"));
	json_decref(doc);
	/* A 404 is an answer, not a failure: containerd tries the next host. */
	if (f->status == 404 && c.cause == CLASSIFY_NOT_FOUND)
		log_event(LOG_LEVEL_INFO, "upstream not found", o);
	else
		log_event(LOG_LEVEL_WARN, "upstream failure", o);
}
