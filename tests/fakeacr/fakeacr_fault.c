/*
 * fault: rules posted on the control listener, tried in order against
 * every request on the other listeners; the first match applies and its
 * count goes down. A rule with a status replaces the answer, with the
 * body the real service sends for that status; its other fields shape
 * how any answer leaves (see fakeacr_req.c).
 *
 * A rule with rate_limit (requests per second) and burst is a throttle:
 * a token bucket of its own, kept in the rule ("tokens", "tokens_at"); it
 * applies only to the matching requests that find the bucket empty.
 */
#include <stdio.h>
#include <time.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "fakeacr.h"

static json_t		*fault_rules;
static json_int_t	 fault_next = 1;

static const char	*fault_endpoints[] = {
	"manifests", "blobs", "tags", "token", "exchange", "imds", "storage",
	"base", "any", NULL
};

int
fault_init(void)
{
	return (fault_rules = json_array()) == NULL ? -1 : 0;
}

void
fault_free(void)
{
	json_decref(fault_rules);
	fault_rules = NULL;
}

static int
fault_endpoint_known(const char *s)
{
	size_t	i;

	for (i = 0; fault_endpoints[i] != NULL; i++)
		if (strcmp(s, fault_endpoints[i]) == 0)
			return 1;
	return 0;
}

static int
fault_strings(json_t *o)
{
	const char	*k;
	json_t		*v;

	if (!json_is_object(o))
		return 0;
	json_object_foreach(o, k, v)
		if (!json_is_string(v))
			return 0;
	return 1;
}

/* A typo in a rule should fail the test that posts it, not be ignored. */
static int
fault_valid(const char *k, json_t *v)
{
	json_int_t	i = json_integer_value(v);

	if (strcmp(k, "endpoint") == 0)
		return json_is_string(v) &&
		    fault_endpoint_known(json_string_value(v));
	if (strcmp(k, "repo") == 0 || strcmp(k, "body") == 0 ||
	    strcmp(k, "redirect_host") == 0 || strcmp(k, "method") == 0 ||
	    strcmp(k, "listener") == 0)
		return json_is_string(v);
	if (strcmp(k, "status") == 0)
		return json_is_integer(v) && i >= 100 && i <= 599;
	if (strcmp(k, "count") == 0)
		return json_is_integer(v) && i >= 1;
	if (strcmp(k, "delay_ms") == 0 || strcmp(k, "reset_after_bytes") == 0 ||
	    strcmp(k, "close_after_bytes") == 0)
		return json_is_integer(v) && i >= 0;
	if (strcmp(k, "stall_s") == 0)
		return json_is_number(v) && json_number_value(v) >= 0;
	if (strcmp(k, "rate_limit") == 0)
		return json_is_number(v) && json_number_value(v) > 0;
	if (strcmp(k, "burst") == 0)
		return json_is_integer(v) && i >= 1;
	if (strcmp(k, "corrupt") == 0 || strcmp(k, "chunked") == 0)
		return json_is_boolean(v);
	if (strcmp(k, "headers") == 0)
		return fault_strings(v);
	return 0;
}

json_int_t
fault_add(json_t *rule, const char **err)
{
	static char	 msg[128];
	const char	*k;
	json_t		*v, *r;

	if (!json_is_object(rule)) {
		*err = "a rule is a JSON object";
		return -1;
	}
	json_object_foreach(rule, k, v) {
		if (!fault_valid(k, v)) {
			snprintf(msg, sizeof(msg), "bad or unknown field: %s",
			    k);
			*err = msg;
			return -1;
		}
	}
	if ((r = json_deep_copy(rule)) == NULL) {
		*err = "out of memory";
		return -1;
	}
	json_object_set_new(r, "id", json_integer(fault_next));
	json_array_append_new(fault_rules, r);
	return fault_next++;
}

int
fault_delete(json_int_t id)
{
	size_t	 i;
	json_t	*r;

	json_array_foreach(fault_rules, i, r)
		if (json_integer_value(json_object_get(r, "id")) == id)
			return json_array_remove(fault_rules, i);
	return -1;
}

void
fault_clear(void)
{
	json_array_clear(fault_rules);
}

json_t *
fault_list(void)
{
	return fault_rules;
}

/*
 * A throttle rule's bucket: 1 when the request is within the rate (the
 * rule does not apply), 0 when it is over. The bucket starts full.
 */
static int
fault_within_rate(json_t *r)
{
	double		 rate = json_number_value(json_object_get(r, "rate_limit"));
	json_t		*b = json_object_get(r, "burst");
	double		 burst = b != NULL ? (double)json_integer_value(b) : rate;
	json_t		*tok = json_object_get(r, "tokens");
	double		 tokens, now;
	struct timespec	 ts;

	if (burst < 1)
		burst = 1;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
	tokens = tok == NULL ? burst : json_number_value(tok) + rate *
	    (now - json_number_value(json_object_get(r, "tokens_at")));
	if (tokens > burst)
		tokens = burst;
	json_object_set_new(r, "tokens_at", json_real(now));
	if (tokens >= 1) {
		json_object_set_new(r, "tokens", json_real(tokens - 1));
		return 1;
	}
	json_object_set_new(r, "tokens", json_real(tokens));
	return 0;
}

/* The first rule for this request, with a reference for the caller. */
json_t *
fault_match(struct fa_req *fr)
{
	const char	*ep, *repo, *method, *listener;
	json_t		*r, *count;
	size_t		 i;

	json_array_foreach(fault_rules, i, r) {
		ep = json_string_value(json_object_get(r, "endpoint"));
		repo = json_string_value(json_object_get(r, "repo"));
		method = json_string_value(json_object_get(r, "method"));
		listener = json_string_value(json_object_get(r, "listener"));
		if (ep != NULL && strcmp(ep, "any") != 0 &&
		    strcmp(ep, fr->fr_endpoint) != 0)
			continue;
		if (repo != NULL && (fr->fr_repo == NULL ||
		    strcmp(repo, fr->fr_repo) != 0))
			continue;
		if (method != NULL && strcasecmp(method, req_verb(fr)) != 0)
			continue;
		if (listener != NULL && strcmp(listener,
		    control_listener_name(fr->fr_listener)) != 0)
			continue;
		if (json_object_get(r, "rate_limit") != NULL &&
		    fault_within_rate(r))
			continue;
		json_incref(r);
		if ((count = json_object_get(r, "count")) != NULL) {
			json_integer_set(count, json_integer_value(count) - 1);
			if (json_integer_value(count) <= 0)
				json_array_remove(fault_rules, i);
		}
		if (fr->fr_log != NULL)
			json_object_set(fr->fr_log, "fault",
			    json_object_get(r, "id"));
		return r;
	}
	return NULL;
}

/* What Azure Storage and IMDS answer for the statuses tests ask for. */
static const struct {
	enum fa_listener	 listener;
	int			 status;
	const char		*code;
	const char		*msg;
} fault_bodies[] = {
	{ FA_STORAGE, 403, "AuthorizationFailure",
	    "This request is not authorized to perform this operation." },
	{ FA_STORAGE, 404, "BlobNotFound",
	    "The specified blob does not exist." },
	{ FA_STORAGE, 429, "ServerBusy",
	    "Operations per second is over the account limit." },
	{ FA_STORAGE, 503, "ServerBusy",
	    "Operations per second is over the account limit." },
	{ FA_STORAGE, 500, "InternalError", "Server encountered an internal "
	    "error. Please try again after some time." },
	{ FA_IMDS, 400, "invalid_request", "Bad request" },
	{ FA_IMDS, 404, "unknown_error", "IMDS is updating, retry later" },
	{ FA_IMDS, 410, "unknown_error", "IMDS is updating, retry later" },
	{ FA_IMDS, 429, "too_many_requests", "Too many requests" },
};

static void
fault_default(struct fa_req *fr, int status)
{
	const char	*code = NULL, *msg = req_reason(status);
	size_t		 i;

	if (fr->fr_listener == FA_REGISTRY) {
		registry_error(fr, status);
		return;
	}
	for (i = 0; i < sizeof(fault_bodies) / sizeof(fault_bodies[0]); i++)
		if (fault_bodies[i].listener == fr->fr_listener &&
		    fault_bodies[i].status == status) {
			code = fault_bodies[i].code;
			msg = fault_bodies[i].msg;
		}
	if (fr->fr_listener == FA_STORAGE)
		storage_error(fr, status, code ? code : msg, msg);
	else
		imds_error(fr, status, code ? code : "unknown_error", msg);
}

/* Answers with the rule's status: its body, or the service's own. */
void
fault_reply(struct fa_req *fr)
{
	const char	*body;
	int		 status;

	status = (int)json_integer_value(json_object_get(fr->fr_fault,
	    "status"));
	if ((body = json_string_value(json_object_get(fr->fr_fault,
	    "body"))) == NULL) {
		fault_default(fr, status);
		return;
	}
	evbuffer_add(fr->fr_body, body, strlen(body));
	req_set_header(fr, "Content-Type", fr->fr_listener == FA_STORAGE ?
	    "application/xml" : "application/json; charset=utf-8");
	if (fr->fr_listener == FA_REGISTRY && status == 401)
		registry_challenge(fr);
	req_send(fr, status);
}
