/*
 * req: one request on the registry, storage or IMDS listener. Handlers
 * set headers and a body and call req_send(); a matching fault rule may
 * then delay the reply, stall it half way, cut the connection with an RST
 * or a FIN, send it chunked or flip a byte on the way out.
 */
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <linux/sockios.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "fakeacr.h"

enum req_stage {
	REQ_HANDLING,
	REQ_DELAYED,		/* delay_ms before anything is sent */
	REQ_STALL_WHOLE,	/* stall_s with no body to cut */
	REQ_WRITING,		/* first part of the body in flight */
	REQ_STALLED		/* first part sent, rest or reset pending */
};

static TAILQ_HEAD(, fa_req)	 req_live = TAILQ_HEAD_INITIALIZER(req_live);

static void	req_timer(evutil_socket_t, short, void *);

static void
req_free(struct fa_req *fr)
{
	TAILQ_REMOVE(&req_live, fr, fr_entry);
	if (fr->fr_timer != NULL)
		event_free(fr->fr_timer);
	if (fr->fr_body != NULL)
		evbuffer_free(fr->fr_body);
	json_decref(fr->fr_log);
	json_decref(fr->fr_fault);
	free(fr->fr_repo);
	free(fr->fr_ref);
	free(fr);
}

struct fa_req *
req_new(struct evhttp_request *req, enum fa_listener l)
{
	struct fa_req	*fr;

	if ((fr = calloc(1, sizeof(*fr))) == NULL)
		return NULL;
	fr->fr_req = req;
	fr->fr_listener = l;
	fr->fr_endpoint = "other";
	TAILQ_INSERT_TAIL(&req_live, fr, fr_entry);
	if ((fr->fr_body = evbuffer_new()) == NULL ||
	    (fr->fr_timer = evtimer_new(fa_base, req_timer, fr)) == NULL) {
		req_free(fr);
		return NULL;
	}
	fr->fr_log = control_log(fr);
	return fr;
}

/*
 * A request whose client left while a fault held it has been detached
 * from its connection by libevent and is ours to free; the others go
 * with their connections in evhttp_free().
 */
void
req_shutdown(void)
{
	struct fa_req	*fr;

	while ((fr = TAILQ_FIRST(&req_live)) != NULL) {
		if (evhttp_request_get_connection(fr->fr_req) == NULL)
			evhttp_request_free(fr->fr_req);
		req_free(fr);
	}
}

/* Names the endpoint for faults and the log; 1 if a fault answered. */
int
req_route(struct fa_req *fr, const char *endpoint, const char *repo,
    const char *ref)
{
	fr->fr_endpoint = endpoint;
	if (repo != NULL)
		fr->fr_repo = strdup(repo);
	if (ref != NULL)
		fr->fr_ref = strdup(ref);
	if (fr->fr_log != NULL) {
		json_object_set_new(fr->fr_log, "endpoint",
		    json_string(endpoint));
		if (repo != NULL)
			json_object_set_new(fr->fr_log, "repo",
			    json_string(repo));
	}
	if ((fr->fr_fault = fault_match(fr)) == NULL ||
	    json_object_get(fr->fr_fault, "status") == NULL)
		return 0;
	fault_reply(fr);
	return 1;
}

/* 1 if the method is one of mask, else answers 405. */
int
req_method(struct fa_req *fr, int mask)
{
	char	allow[32];

	if (evhttp_request_get_command(fr->fr_req) & mask)
		return 1;
	snprintf(allow, sizeof(allow), "%s%s%s",
	    mask & EVHTTP_REQ_GET ? "GET, " : "",
	    mask & EVHTTP_REQ_HEAD ? "HEAD, " : "",
	    mask & EVHTTP_REQ_POST ? "POST, " : "");
	allow[strlen(allow) - 2] = '\0';
	req_set_header(fr, "Allow", allow);
	switch (fr->fr_listener) {
	case FA_STORAGE:
		storage_error(fr, 405, "UnsupportedHttpVerb",
		    "The resource doesn't support specified Http Verb.");
		break;
	case FA_IMDS:
		imds_error(fr, 405, "invalid_request", "Method not allowed");
		break;
	default:
		req_error(fr, 405, "UNSUPPORTED",
		    "The operation is unsupported.", NULL);
		break;
	}
	return 0;
}

const char *
req_verb(struct fa_req *fr)
{
	switch (evhttp_request_get_command(fr->fr_req)) {
	case EVHTTP_REQ_GET: return "GET";
	case EVHTTP_REQ_HEAD: return "HEAD";
	case EVHTTP_REQ_POST: return "POST";
	case EVHTTP_REQ_PUT: return "PUT";
	case EVHTTP_REQ_DELETE: return "DELETE";
	case EVHTTP_REQ_PATCH: return "PATCH";
	default: return "OTHER";
	}
}

const char *
req_header(struct fa_req *fr, const char *name)
{
	return evhttp_find_header(
	    evhttp_request_get_input_headers(fr->fr_req), name);
}

void
req_set_header(struct fa_req *fr, const char *name, const char *value)
{
	struct evkeyvalq	*h;

	h = evhttp_request_get_output_headers(fr->fr_req);
	evhttp_remove_header(h, name);
	evhttp_add_header(h, name, value);
}

/* Query string, or the form in the body; free with evhttp_clear_headers. */
int
req_params(struct fa_req *fr, int form, struct evkeyvalq *params)
{
	struct evbuffer	*in;
	const char	*q;
	char		*s;
	size_t		 len;
	int		 rc;

	TAILQ_INIT(params);
	if (!form) {
		q = evhttp_uri_get_query(
		    evhttp_request_get_evhttp_uri(fr->fr_req));
		return q == NULL ? 0 : evhttp_parse_query_str(q, params);
	}
	in = evhttp_request_get_input_buffer(fr->fr_req);
	len = evbuffer_get_length(in);
	if ((s = malloc(len + 1)) == NULL)
		return -1;
	evbuffer_copyout(in, s, len);
	s[len] = '\0';
	rc = evhttp_parse_query_str(s, params);
	free(s);
	return rc;
}

const char *
req_reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 206: return "Partial Content";
	case 307: return "Temporary Redirect";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 410: return "Gone";
	case 416: return "Range Not Satisfiable";
	case 429: return "Too Many Requests";
	case 500: return "Internal Server Error";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return "Status";
	}
}

static json_int_t
req_fault_int(struct fa_req *fr, const char *key)
{
	json_t	*v = json_object_get(fr->fr_fault, key);

	return json_is_integer(v) ? json_integer_value(v) : -1;
}

static double
req_fault_seconds(struct fa_req *fr)
{
	return json_number_value(json_object_get(fr->fr_fault, "stall_s"));
}

static void
req_wait(struct fa_req *fr, enum req_stage stage, double seconds)
{
	struct timeval	tv;

	fr->fr_stage = stage;
	tv.tv_sec = (time_t)seconds;
	tv.tv_usec = (suseconds_t)((seconds - (double)tv.tv_sec) * 1e6);
	evtimer_add(fr->fr_timer, &tv);
}

/* Keeps the length, so only a digest check can catch it. */
static void
req_corrupt(struct evbuffer *body)
{
	struct evbuffer	*head;
	size_t		 len = evbuffer_get_length(body);
	unsigned char	 c;

	if (len == 0 || (head = evbuffer_new()) == NULL)
		return;
	evbuffer_remove_buffer(body, head, len / 2);
	evbuffer_remove(body, &c, 1);
	c ^= 0x01;
	evbuffer_add(head, &c, 1);
	evbuffer_add_buffer(head, body);
	evbuffer_add_buffer(body, head);
	evbuffer_free(head);
}

/*
 * Cut the connection. An RST (rst): SO_LINGER 0, then an unconnected
 * socket is dup2()ed over the descriptor so that the close happens here
 * and libevent's own shutdown and close later act on the stand-in.
 * Otherwise a plain close, a FIN: the body just ends early.
 */
static void
req_cut(struct fa_req *fr, int rst)
{
	struct evhttp_connection	*evcon;
	struct linger			 lg = { 1, 0 };
	int				 fd, dummy;

	if ((evcon = evhttp_request_get_connection(fr->fr_req)) == NULL) {
		evhttp_request_free(fr->fr_req);
		req_free(fr);
		return;
	}
	fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evcon));
	if (rst && fd != -1) {
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		if ((dummy = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC,
		    0)) != -1) {
			dup2(dummy, fd);
			close(dummy);
		}
	}
	evhttp_connection_free(evcon);
	req_free(fr);
}

/* Bytes the kernel has yet to send or see acknowledged. */
static int
req_unsent(struct fa_req *fr)
{
	struct evhttp_connection	*evcon;
	int				 n;

	if ((evcon = evhttp_request_get_connection(fr->fr_req)) == NULL ||
	    ioctl(bufferevent_getfd(evhttp_connection_get_bufferevent(evcon)),
	    SIOCOUTQ, &n) == -1)
		return 0;
	return n;
}

static void
req_finish(struct fa_req *fr)
{
	int	rst = req_fault_int(fr, "reset_after_bytes") >= 0;

	if (rst || req_fault_int(fr, "close_after_bytes") >= 0) {
		/* An RST drops what is still queued: let it leave first,
		 * for at most two seconds if the client does not read. */
		if (req_unsent(fr) > 0 && fr->fr_polls++ < 200)
			req_wait(fr, REQ_STALLED, 0.01);
		else
			req_cut(fr, rst);
		return;
	}
	/* Both are safe, and free the request, if the client has left. */
	if (evbuffer_get_length(fr->fr_body) > 0)
		evhttp_send_reply_chunk(fr->fr_req, fr->fr_body);
	evhttp_send_reply_end(fr->fr_req);
	req_free(fr);
}

static void
req_whole(struct fa_req *fr)
{
	/* Without a Content-Length, reply_start makes it chunked. */
	if (json_is_true(json_object_get(fr->fr_fault, "chunked"))) {
		evhttp_send_reply_start(fr->fr_req, fr->fr_status,
		    req_reason(fr->fr_status));
		evhttp_send_reply_chunk(fr->fr_req, fr->fr_body);
		evhttp_send_reply_end(fr->fr_req);
	} else
		evhttp_send_reply(fr->fr_req, fr->fr_status,
		    req_reason(fr->fr_status), fr->fr_body);
	req_free(fr);
}

/* From libevent's write callback: finish from the loop, not in here. */
static void
req_written(struct evhttp_connection *evcon, void *arg)
{
	struct fa_req	*fr = arg;
	double		 stall = req_fault_seconds(fr);

	(void)evcon;
	if (fr->fr_stage == REQ_WRITING)
		req_wait(fr, REQ_STALLED, stall > 0 ? stall : 0);
}

static void
req_start(struct fa_req *fr)
{
	struct evbuffer	*head;
	json_int_t	 reset = req_fault_int(fr, "reset_after_bytes");
	json_int_t	 fin = req_fault_int(fr, "close_after_bytes");
	json_int_t	 at = reset >= 0 ? reset : fin;
	double		 stall = req_fault_seconds(fr);
	size_t		 len = evbuffer_get_length(fr->fr_body), cut;

	if (reset == 0) {
		req_cut(fr, 1);
		return;
	}
	if (at < 0 && stall <= 0) {
		req_whole(fr);
		return;
	}
	if (at < 0 && len == 0) {
		req_wait(fr, REQ_STALL_WHOLE, stall);
		return;
	}
	cut = at < 0 ? len / 2 : (size_t)at < len ? (size_t)at : len;
	evhttp_send_reply_start(fr->fr_req, fr->fr_status,
	    req_reason(fr->fr_status));
	fr->fr_stage = REQ_WRITING;
	/* No write callback for an empty chunk: give the headers a moment. */
	if (cut == 0 || (head = evbuffer_new()) == NULL) {
		req_wait(fr, REQ_STALLED, stall > 0 ? stall : 0.05);
		return;
	}
	evbuffer_remove_buffer(fr->fr_body, head, cut);
	evhttp_send_reply_chunk_with_cb(fr->fr_req, head, req_written, fr);
	evbuffer_free(head);
}

static void
req_timer(evutil_socket_t fd, short ev, void *arg)
{
	struct fa_req	*fr = arg;

	(void)fd;
	(void)ev;
	switch (fr->fr_stage) {
	case REQ_DELAYED:
		req_start(fr);
		break;
	case REQ_STALL_WHOLE:
		req_whole(fr);
		break;
	case REQ_STALLED:
		req_finish(fr);
		break;
	default:
		break;
	}
}

void
req_send(struct fa_req *fr, int status)
{
	json_t		*v;
	const char	*k;
	char		 len[32];
	json_int_t	 delay;

	fr->fr_status = status;
	if (fr->fr_log != NULL)
		json_object_set_new(fr->fr_log, "status", json_integer(status));
	if (fr->fr_listener == FA_REGISTRY)
		req_set_header(fr, "Docker-Distribution-Api-Version",
		    "registry/2.0");
	if (json_is_true(json_object_get(fr->fr_fault, "corrupt")))
		req_corrupt(fr->fr_body);
	if (status >= 200 && status != 204 && status != 304) {
		snprintf(len, sizeof(len), "%zu",
		    evbuffer_get_length(fr->fr_body));
		req_set_header(fr, "Content-Length", len);
	}
	if (json_is_true(json_object_get(fr->fr_fault, "chunked")))
		evhttp_remove_header(evhttp_request_get_output_headers(
		    fr->fr_req), "Content-Length");
	/* Last, so that a rule can also lie about Content-Length. */
	json_object_foreach(json_object_get(fr->fr_fault, "headers"), k, v)
		req_set_header(fr, k, json_string_value(v));
	if (evhttp_request_get_command(fr->fr_req) == EVHTTP_REQ_HEAD)
		evbuffer_drain(fr->fr_body, evbuffer_get_length(fr->fr_body));
	if ((delay = req_fault_int(fr, "delay_ms")) > 0) {
		req_wait(fr, REQ_DELAYED, (double)delay / 1000);
		return;
	}
	req_start(fr);
}

void
req_json(struct fa_req *fr, int status, json_t *doc)
{
	char	*s;

	if (doc != NULL && (s = json_dumps(doc, JSON_COMPACT)) != NULL) {
		evbuffer_add(fr->fr_body, s, strlen(s));
		free(s);
	}
	json_decref(doc);
	req_set_header(fr, "Content-Type", "application/json; charset=utf-8");
	req_send(fr, status);
}

/* The distribution-spec error body, as ACR sends it. */
void
req_error(struct fa_req *fr, int status, const char *code, const char *msg,
    json_t *detail)
{
	json_t	*e;

	e = json_pack("{s:s, s:s}", "code", code, "message", msg);
	if (e != NULL && detail != NULL)
		json_object_set(e, "detail", detail);
	json_decref(detail);
	req_json(fr, status, json_pack("{s:[o*]}", "errors", e));
}
