/*
 * reply: OCI error replies and the mapping of upstream errors to what a
 * client should see.
 */
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "oci.h"
#include "reply.h"

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

/* The OCI code in an upstream error body, when it is one we pass on. */
static enum oci_err
reply_upstream_code(const void *body, size_t len, enum oci_err dflt)
{
	static const enum oci_err known[] = { OCI_ERR_BLOB_UNKNOWN,
	    OCI_ERR_MANIFEST_UNKNOWN, OCI_ERR_NAME_UNKNOWN };
	json_t *root, *code;
	enum oci_err err = dflt;
	size_t i;

	if (body == NULL || len == 0)
		return dflt;
	root = json_loadb(body, len, 0, NULL);
	code = json_object_get(json_array_get(json_object_get(root, "errors"),
	    0), "code");
	for (i = 0; json_is_string(code) && i < sizeof(known) / sizeof(known[0]);
	    i++)
		if (strcmp(json_string_value(code), oci_err_code(known[i])) == 0)
			err = known[i];
	json_decref(root);
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

void
reply_log_failure(const struct reply_failure *f)
{
	json_t *o;

	o = json_pack("{s:I,s:s,s:s,s:s,s:s,s:I}", "id", (json_int_t)f->id,
	    "registry", f->registry, "repository", f->repository,
	    "reference", f->reference, "url", f->url != NULL ? f->url : "",
	    "ms", (json_int_t)f->ms);
	if (o == NULL)
		return;
	if (f->status != 0)
		json_object_set_new(o, "status", json_integer(f->status));
	if (f->error != NULL && *f->error != '\0')
		json_object_set_new(o, "error", json_string(f->error));
	if (f->client_status != 0)
		json_object_set_new(o, "client_status",
		    json_integer(f->client_status));
	log_event(LOG_LEVEL_WARN, "upstream failure", o);
}
