/*
 * control: the tests' side door, plain HTTP with JSON bodies. Fault
 * rules, the log of every request on the other listeners, counts, and
 * token lifetimes changed at run time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "fakeacr.h"

static json_t		*control_requests;
static const char	*control_listeners[FA_NLISTENERS] = {
	"registry", "storage", "imds", "control"
};

const char *
control_listener_name(enum fa_listener l)
{
	return control_listeners[l];
}

int
control_init(void)
{
	return (control_requests = json_array()) == NULL ? -1 : 0;
}

void
control_free(void)
{
	json_decref(control_requests);
	control_requests = NULL;
}

/* A new log entry; the caller holds a reference to fill in the status. */
json_t *
control_log(struct fa_req *fr)
{
	const struct evhttp_uri	*uri;
	const char		*path, *query, *auth, *scheme = "none", *range;
	const char		*agent;
	struct timespec		 ts;
	json_t			*e;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	uri = evhttp_request_get_evhttp_uri(fr->fr_req);
	if ((path = evhttp_uri_get_path(uri)) == NULL)
		path = "";
	if ((query = evhttp_uri_get_query(uri)) == NULL)
		query = "";
	if ((auth = req_header(fr, "Authorization")) != NULL)
		scheme = strncasecmp(auth, "Bearer ", 7) == 0 ? "Bearer" :
		    strncasecmp(auth, "Basic ", 6) == 0 ? "Basic" : "other";
	e = json_pack("{s:s, s:s, s:s, s:s, s:f, s:s, s:n}",
	    "listener", control_listeners[fr->fr_listener],
	    "method", req_verb(fr), "path", path, "query", query,
	    "time", (double)ts.tv_sec + (double)ts.tv_nsec / 1e9,
	    "authorization_scheme", scheme, "status");
	if (e == NULL)
		return NULL;
	if ((range = req_header(fr, "Range")) != NULL)
		json_object_set_new(e, "range", json_string(range));
	/* Who asked: pullproxy, or a client that fell back to the registry. */
	if ((agent = req_header(fr, "User-Agent")) != NULL)
		json_object_set_new(e, "user_agent", json_string(agent));
	json_array_append(control_requests, e);
	return e;
}

static void
control_reply(struct evhttp_request *req, int status, json_t *doc)
{
	struct evbuffer	*buf = evbuffer_new();
	char		*s;

	if (buf != NULL && doc != NULL &&
	    (s = json_dumps(doc, JSON_COMPACT)) != NULL) {
		evbuffer_add(buf, s, strlen(s));
		free(s);
	}
	json_decref(doc);
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "application/json");
	evhttp_send_reply(req, status, req_reason(status), buf);
	if (buf != NULL)
		evbuffer_free(buf);
}

static json_t *
control_body(struct evhttp_request *req)
{
	struct evbuffer	*in = evhttp_request_get_input_buffer(req);

	return json_loadb((const char *)evbuffer_pullup(in, -1),
	    evbuffer_get_length(in), 0, NULL);
}

static void
control_count(json_t *counts, const char *key)
{
	json_t	*v;

	if (key == NULL)
		return;
	if ((v = json_object_get(counts, key)) != NULL)
		json_integer_set(v, json_integer_value(v) + 1);
	else
		json_object_set_new(counts, key, json_integer(1));
}

static json_t *
control_stats(void)
{
	json_t	*ep = json_object(), *li = json_object(), *st = json_object();
	json_t	*e;
	size_t	 i;
	char	 status[16];

	json_array_foreach(control_requests, i, e) {
		control_count(ep, json_string_value(json_object_get(e,
		    "endpoint")));
		control_count(li, json_string_value(json_object_get(e,
		    "listener")));
		snprintf(status, sizeof(status), "%lld", (long long)
		    json_integer_value(json_object_get(e, "status")));
		control_count(st, status);
	}
	return json_pack("{s:I, s:o, s:o, s:o}", "total",
	    (json_int_t)json_array_size(control_requests), "endpoints", ep,
	    "listeners", li, "statuses", st);
}

static json_t *
control_config(void)
{
	return json_pack("{s:s, s:s*, s:I, s:I, s:I, s:I, s:b, s:s, s:s, s:s}",
	    "service", fa_conf.service, "tenant", fa_conf.tenant,
	    "access_ttl", (json_int_t)fa_conf.access_ttl,
	    "refresh_ttl", (json_int_t)fa_conf.refresh_ttl,
	    "imds_ttl", (json_int_t)fa_conf.imds_ttl,
	    "sas_ttl", (json_int_t)fa_conf.sas_ttl,
	    "anonymous", fa_conf.anonymous,
	    "registry", fakeacr_url(FA_REGISTRY),
	    "storage", fakeacr_url(FA_STORAGE),
	    "imds", fakeacr_url(FA_IMDS));
}

/* Checks the whole change before applying any of it. */
static const char *
control_set_config(json_t *doc)
{
	const char	*k;
	json_t		*v;
	long		*ttl;

	if (!json_is_object(doc))
		return "a JSON object is expected";
	json_object_foreach(doc, k, v) {
		if (strcmp(k, "anonymous") == 0 ? !json_is_boolean(v) :
		    (strcmp(k, "access_ttl") != 0 && strcmp(k, "refresh_ttl") !=
		    0 && strcmp(k, "imds_ttl") != 0 && strcmp(k, "sas_ttl") !=
		    0) || !json_is_integer(v) || json_integer_value(v) < 1)
			return "bad or unknown field";
	}
	json_object_foreach(doc, k, v) {
		if (strcmp(k, "anonymous") == 0) {
			fa_conf.anonymous = json_is_true(v);
			continue;
		}
		ttl = strcmp(k, "access_ttl") == 0 ? &fa_conf.access_ttl :
		    strcmp(k, "refresh_ttl") == 0 ? &fa_conf.refresh_ttl :
		    strcmp(k, "imds_ttl") == 0 ? &fa_conf.imds_ttl :
		    &fa_conf.sas_ttl;
		*ttl = (long)json_integer_value(v);
	}
	return NULL;
}

void
control_handle(struct evhttp_request *req)
{
	enum evhttp_cmd_type	 cmd = evhttp_request_get_command(req);
	const char		*path, *query, *err = NULL;
	json_t			*doc;
	json_int_t		 id;
	char			*end;

	path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
	if (path == NULL)
		control_reply(req, 400, NULL);
	else if (strcmp(path, "/faults") == 0 && cmd == EVHTTP_REQ_GET) {
		control_reply(req, 200, json_incref(fault_list()));
	} else if (strcmp(path, "/faults") == 0 && cmd == EVHTTP_REQ_POST) {
		doc = control_body(req);
		id = fault_add(doc, &err);
		json_decref(doc);
		if (id == -1)
			control_reply(req, 400, json_pack("{s:s}", "error",
			    err));
		else
			control_reply(req, 200, json_pack("{s:I}", "id", id));
	} else if (strcmp(path, "/faults") == 0 && cmd == EVHTTP_REQ_DELETE) {
		fault_clear();
		control_reply(req, 200, json_object());
	} else if (strncmp(path, "/faults/", 8) == 0 &&
	    cmd == EVHTTP_REQ_DELETE) {
		id = strtoll(path + 8, &end, 10);
		if (*end != '\0' || fault_delete(id) == -1)
			control_reply(req, 404, json_pack("{s:s}", "error",
			    "no such rule"));
		else
			control_reply(req, 200, json_object());
	} else if (strcmp(path, "/requests") == 0 && cmd == EVHTTP_REQ_GET) {
		control_reply(req, 200, json_incref(control_requests));
		/* ?clear=1: taken and cleared at once, none lost between. */
		if ((query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(
		    req))) != NULL && strcmp(query, "clear=1") == 0)
			json_array_clear(control_requests);
	} else if (strcmp(path, "/requests") == 0 &&
	    cmd == EVHTTP_REQ_DELETE) {
		json_array_clear(control_requests);
		control_reply(req, 200, json_object());
	} else if (strcmp(path, "/stats") == 0 && cmd == EVHTTP_REQ_GET) {
		control_reply(req, 200, control_stats());
	} else if (strcmp(path, "/revoke") == 0 && cmd == EVHTTP_REQ_POST) {
		/* The AcrPull role removed and granted back: every refresh
		 * token so far is refused; the exchange gives new ones. */
		fa_conf.refresh_generation++;
		control_reply(req, 200, json_pack("{s:I}", "generation",
		    (json_int_t)fa_conf.refresh_generation));
	} else if (strcmp(path, "/config") == 0 && cmd == EVHTTP_REQ_GET) {
		control_reply(req, 200, control_config());
	} else if (strcmp(path, "/config") == 0 && cmd == EVHTTP_REQ_POST) {
		doc = control_body(req);
		err = control_set_config(doc);
		json_decref(doc);
		control_reply(req, err ? 400 : 200, err ? json_pack("{s:s}",
		    "error", err) : control_config());
	} else
		control_reply(req, 404, json_pack("{s:s}", "error",
		    "not found"));
}
