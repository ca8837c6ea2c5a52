/*
 * client: a client request held across callbacks, and the one place a
 * request is logged and counted when it ends.
 */
#include <sys/time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "log.h"
#include "metrics.h"
#include "registry.h"
#include "reply.h"

static void
client_closed(struct evhttp_connection *evcon, void *arg)
{
	struct client *c = arg;

	(void)evcon;
	/*
	 * evhttp detaches a request still in use from a failing connection;
	 * a detached request is ours to free. One still attached is freed
	 * with the connection.
	 */
	if (evhttp_request_get_connection(c->c_req) == NULL)
		evhttp_request_free(c->c_req);
	c->c_req = NULL;
	c->c_gone(c->c_arg);
}

int
client_hold(struct client *c, const struct client_request *rq,
    struct evhttp_request *req, void (*gone)(void *), void *arg)
{
	memset(c, 0, sizeof(*c));
	if ((c->c_uri = strdup(evhttp_request_get_uri(req))) == NULL)
		return -1;
	c->c_rq = *rq;
	c->c_req = req;
	c->c_gone = gone;
	c->c_arg = arg;
	evhttp_connection_set_closecb(evhttp_request_get_connection(req),
	    client_closed, c);
	return 0;
}

/* Stop watching the connection; the request (or NULL) is the caller's. */
static struct evhttp_request *
client_unwatch(struct client *c)
{
	struct evhttp_request *req = c->c_req;
	struct evhttp_connection *evcon;

	if (req != NULL && (evcon = evhttp_request_get_connection(req)) != NULL)
		evhttp_connection_set_closecb(evcon, NULL, NULL);
	c->c_req = NULL;
	return req;
}

struct evhttp_request *
client_take(struct client *c, int status)
{
	c->c_status = status;
	return client_unwatch(c);
}

void
client_error(struct client *c, int status, enum oci_err err,
    const char *msg)
{
	char after[32];

	if (c->c_started || c->c_req == NULL)
		return;
	/* Held to max_wait_s already: say when asking again makes sense
	 * (containerd 1.6 falls back at once whatever it says). */
	if (err == OCI_ERR_TOOMANYREQUESTS && c->c_rq.reg != NULL) {
		snprintf(after, sizeof(after), "%ld",
		    registry_retry_after_s(c->c_rq.reg));
		evhttp_add_header(evhttp_request_get_output_headers(c->c_req),
		    "Retry-After", after);
	}
	c->c_bytes = reply_error(client_take(c, status), status, err, msg);
}

struct evhttp_request *
client_hand_over(struct client *c)
{
	c->c_handed = 1;
	return client_unwatch(c);
}

/*
 * A body cut short: what was queued but never left is not counted as
 * sent, and the log line says the client did not get it all.
 */
static void
client_cut(struct client *c, struct evhttp_connection *evcon)
{
	struct evbuffer *out;
	size_t unsent;

	if (!c->c_started)
		return;
	c->c_cut = 1;
	out = bufferevent_get_output(evhttp_connection_get_bufferevent(evcon));
	unsent = evbuffer_get_length(out);
	c->c_bytes -= unsent < c->c_bytes ? unsent : c->c_bytes;
}

void
client_end(struct client *c, int abort_client)
{
	struct evhttp_request *req = client_unwatch(c);
	struct evhttp_connection *evcon;

	if (req != NULL) {
		evcon = evhttp_request_get_connection(req);
		if (evcon == NULL)
			evhttp_request_free(req);
		else if (abort_client) {
			client_cut(c, evcon);
			evhttp_connection_free(evcon);	/* frees req */
		}
		else if (c->c_started)
			evhttp_send_reply_end(req);
		else {
			c->c_status = 500;
			c->c_bytes = reply_error(req, 500, OCI_ERR_UPSTREAM,
			    "internal error");
		}
	}
	if (!c->c_handed) {
		metrics_request(c->c_rq.route.kind, c->c_status);
		log_request(c->c_rq.id, c->c_rq.head ? "HEAD" : "GET",
		    c->c_uri, registry_name(c->c_rq.reg), c->c_status,
		    c->c_bytes, c->c_cut, &c->c_rq.t0);
	}
	free(c->c_uri);
	c->c_uri = NULL;
}

void
client_log(const struct client_request *rq, const char *uri, int status,
    uint64_t bytes)
{
	metrics_request(rq->route.kind, status);
	log_request(rq->id, rq->head ? "HEAD" : "GET", uri, rq->reg != NULL ?
	    registry_name(rq->reg) : NULL, status, bytes, 0, &rq->t0);
}
