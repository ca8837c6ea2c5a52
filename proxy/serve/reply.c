/*
 * reply: OCI error replies, and the mapping of upstream errors to what a
 * client should see.
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

/* A reason phrase holds the cause and its hint, cut past this. */
#define REPLY_REASON_MAX	640

/*
 * The status line's reason phrase for a server error answering a HEAD
 * with msg: the standard one, then msg, printable and short. containerd
 * resolves a tag with a HEAD (no body to read) and reports a failing
 * host by its status line; when every host fails, the pod's event shows
 * the first host's error, which is then pullproxy's. A GET's body says
 * the same (containerd prints it as "Server message").
 */
static const char *
reply_reason(int status, const char *msg, char *buf, size_t len)
{
	const char *std;
	size_t i, n;

	switch (status) {
	case 500: std = "Internal Server Error"; break;
	case 502: std = "Bad Gateway"; break;
	case 503: std = "Service Unavailable"; break;
	case 504: std = "Gateway Timeout"; break;
	default: return NULL;
	}
	if (msg == NULL || *msg == '\0')
		return std;
	snprintf(buf, len, "%s: %s", std, msg);
	for (i = 0, n = strlen(buf); i < n; i++)
		if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f)
			buf[i] = ' ';
	return buf;
}

size_t
reply_error(struct evhttp_request *req, int status, enum oci_err err,
    const char *msg)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	struct evbuffer *body = evbuffer_new();
	char buf[4096], len[32], reason[REPLY_REASON_MAX];
	int n, head;

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
	head = evhttp_request_get_command(req) == EVHTTP_REQ_HEAD;
	evhttp_send_reply(req, status, head ? reply_reason(status, msg, reason,
	    sizeof(reason)) : NULL, head ? NULL : body);
	if (body != NULL)
		evbuffer_free(body);
	return head ? 0 : (size_t)n;
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
