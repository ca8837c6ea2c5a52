/*
 * incident: the classified "upstream failure" lines, and the windows that
 * fold repeats of one failure into a count.
 */
#include <sys/queue.h>
#include <sys/time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "classify.h"
#include "client.h"
#include "incident.h"
#include "log.h"
#include "metrics.h"
#include "registry.h"
#include "reply.h"
#include "upstream.h"

/* A failure logged within the window, and how often it came again. */
struct incident_repeat {
	TAILQ_ENTRY(incident_repeat) ir_entry;
	char			*ir_registry;
	char			*ir_repository;
	enum classify_cause	 ir_cause;
	const char		*ir_served;	/* static, or NULL */
	struct timeval		 ir_t0;		/* when it was logged */
	unsigned long		 ir_first_id;
	unsigned long		 ir_last_id;
	unsigned long		 ir_count;	/* not logged since */
};

/* Oldest first: windows close in this order. */
static TAILQ_HEAD(, incident_repeat) incident_repeats =
    TAILQ_HEAD_INITIALIZER(incident_repeats);
static struct event *incident_repeat_timer;

static void
incident_repeat_close(struct incident_repeat *rr)
{
	if (rr->ir_count > 0)
		log_event(LOG_LEVEL_WARN, "upstream failure repeated",
		    json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:s*}", "registry",
		    rr->ir_registry, "repository", rr->ir_repository, "cause",
		    classify_cause_name(rr->ir_cause), "count",
		    (json_int_t)rr->ir_count, "first_id",
		    (json_int_t)rr->ir_first_id, "last_id",
		    (json_int_t)rr->ir_last_id, "window_ms",
		    (json_int_t)INCIDENT_REPEAT_MS, "served", rr->ir_served));
	TAILQ_REMOVE(&incident_repeats, rr, ir_entry);
	free(rr->ir_registry);
	free(rr->ir_repository);
	free(rr);
}

/* Close the windows that are over (all: every one), re-arm the timer. */
static void
incident_repeat_expire(int all)
{
	struct incident_repeat *rr;
	struct timeval tv;
	long left = 0;

	while ((rr = TAILQ_FIRST(&incident_repeats)) != NULL && (all ||
	    (left = INCIDENT_REPEAT_MS - log_ms_since(&rr->ir_t0)) <= 0))
		incident_repeat_close(rr);
	if (rr == NULL || incident_repeat_timer == NULL)
		return;
	tv.tv_sec = left / 1000;
	tv.tv_usec = (left % 1000) * 1000;
	evtimer_add(incident_repeat_timer, &tv);
}

static void
incident_repeat_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	incident_repeat_expire(0);
}

static int
incident_same(const char *a, const char *b)
{
	return a == NULL || b == NULL ? a == b : strcmp(a, b) == 0;
}

/*
 * 1 when the failure repeats one in its window (and was counted). What
 * clients got is part of the key: a resumed download is not a failed one.
 */
static int
incident_repeat_count(const struct incident *f, const char *registry,
    enum classify_cause cause)
{
	struct incident_repeat *rr;
	int first;

	incident_repeat_expire(0);
	TAILQ_FOREACH(rr, &incident_repeats, ir_entry)
		if (rr->ir_cause == cause && incident_same(rr->ir_served,
		    f->served) && strcmp(rr->ir_registry, registry) == 0 &&
		    strcmp(rr->ir_repository, f->rq->route.name) == 0) {
			rr->ir_count++;
			rr->ir_last_id = f->rq->id;
			return 1;
		}
	/* Out of memory: log every one rather than lose any. */
	if ((rr = calloc(1, sizeof(*rr))) == NULL)
		return 0;
	rr->ir_registry = strdup(registry);
	rr->ir_repository = strdup(f->rq->route.name);
	if (rr->ir_registry == NULL || rr->ir_repository == NULL) {
		free(rr->ir_registry);
		free(rr->ir_repository);
		free(rr);
		return 0;
	}
	rr->ir_cause = cause;
	rr->ir_served = f->served;
	rr->ir_first_id = rr->ir_last_id = f->rq->id;
	gettimeofday(&rr->ir_t0, NULL);
	first = TAILQ_EMPTY(&incident_repeats);
	TAILQ_INSERT_TAIL(&incident_repeats, rr, ir_entry);
	if (first)
		incident_repeat_expire(0);
	return 0;
}

int
incident_begin(struct event_base *base)
{
	incident_repeat_timer = evtimer_new(base, incident_repeat_timer_cb, NULL);
	return incident_repeat_timer != NULL ? 0 : -1;
}

void
incident_end(void)
{
	if (incident_repeat_timer != NULL)
		event_free(incident_repeat_timer);
	incident_repeat_timer = NULL;
	incident_repeat_expire(1);
}

/* ------------------------------------------------------ failure lines */

/* What the failure was, from what the caller and the transfer know. */
static void
incident_classify(const struct incident *f, const char *code,
    const char *msg, struct classify_result *out)
{
	struct classify_input in;

	memset(&in, 0, sizeof(in));
	in.phase = f->phase;
	in.status = f->status;
	in.acr_code = code;
	in.acr_message = msg;
	in.host = registry_name(f->rq->reg);
	upstream_result_classify(&in, f->res);
	classify(&in, out);
}

void
incident_init(struct incident *f, const struct client_request *rq,
    const struct upstream_xfer *x, long status, struct evbuffer *body)
{
	memset(f, 0, sizeof(*f));
	f->rq = rq;
	f->status = status;
	if (x != NULL) {
		f->url = upstream_xfer_url(x);
		f->res = upstream_xfer_result(x);
	}
	if (status >= 400 && body != NULL) {
		f->body = evbuffer_pullup(body, -1);
		f->bodylen = evbuffer_get_length(body);
	}
}

void
incident_log(const struct incident *f)
{
	const char *registry = registry_name(f->rq->reg);
	struct classify_result c;
	const char *code, *msg;
	json_t *o, *doc;

	reply_body_error(f->body, f->bodylen, &doc, &code, &msg);
	incident_classify(f, code, msg, &c);
	metrics_failure(metrics_registry(registry), c.cause);
	if (c.cause != CLASSIFY_NONE &&
	    incident_repeat_count(f, registry, c.cause)) {
		json_decref(doc);
		return;
	}
	o = json_pack("{s:I,s:s,s:s,s:s,s:s,s:I,s:s}", "id",
	    (json_int_t)f->rq->id, "registry", registry, "repository",
	    f->rq->route.name, "reference", f->rq->route.reference, "url",
	    f->url != NULL ? f->url : "", "ms",
	    (json_int_t)log_ms_since(&f->rq->t0), "phase",
	    classify_phase_name(c.phase));
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
