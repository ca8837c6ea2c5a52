/*
 * reply: answering a client in OCI terms, shared by every way a request is
 * served (from the cache, coalesced behind a fetch, or relayed), so a
 * client sees the same status and body for the same upstream answer.
 */
#ifndef PP_REPLY_H
#define PP_REPLY_H

#include <stddef.h>
#include <jansson.h>

#include "classify.h"
#include "oci.h"

struct event_base;
struct evhttp_request;
struct upstream_result;

/*
 * A client request held across callbacks. A client that goes away is
 * reported through the connection's close callback: the holder's gone()
 * runs with the request already released (and freed if evhttp had
 * detached it), so the holder's one teardown path can run.
 */
struct reply_client {
	struct evhttp_request	*req;		/* NULL once released */
	void			(*gone)(void *arg);
	void			*arg;
};

void reply_client_hold(struct reply_client *c, struct evhttp_request *req,
    void (*gone)(void *), void *arg);
/* Stop watching the client; the request (or NULL) is the caller's to answer. */
struct evhttp_request *reply_client_take(struct reply_client *c);
/*
 * Let go of a client still held: abort_client cuts the connection (the only
 * way to tell a client that a body under way is incomplete), started ends
 * the body, anything else answers 500.
 */
void reply_client_release(struct reply_client *c, int abort_client,
    int started);

/*
 * Send a complete error reply with an OCI body and its Content-Length
 * (HEAD gets the headers only). Returns the body length sent.
 */
size_t reply_error(struct evhttp_request *req, int status, enum oci_err err,
    const char *msg);

/*
 * The client's status and OCI error for an upstream error status, reading
 * the upstream's OCI code from its body when there is one. 404 stays 404
 * (containerd tries the next host); 401 and 403 become 502, 429 becomes
 * 503: containerd would try to authenticate to the mirror on 401 and
 * retries 429 five times at once.
 */
int reply_upstream_status(enum oci_route_kind kind, long status,
    const void *body, size_t len, enum oci_err *err);

/*
 * The code and message of an upstream error body: OCI's errors[0], or
 * OAuth's error and error_description (NULL when absent). Valid while
 * *doc lives: json_decref it.
 */
void reply_body_error(const void *body, size_t len, json_t **doc,
    const char **code, const char **msg);

/*
 * The client's status and OCI error when no upstream answer came: 503 when
 * pullproxy did not send (its own pace, or the circuit open), 504 on a
 * timeout, else 502.
 */
int reply_transport_status(const struct upstream_result *res,
    enum oci_err *err);

/*
 * What the "upstream failure" log line says. The line carries the cause,
 * hint and phase classify.h makes of the rest.
 */
struct reply_failure {
	unsigned long	 id;
	const char	*registry;
	const char	*repository;
	const char	*reference;
	const char	*url;		/* without query: no SAS tokens */
	long		 status;	/* upstream HTTP status, 0 if none */
	const char	*error;		/* transport error or what was wrong */
	int		 client_status;	/* what the client got; 0: none waiting */
	long		 ms;
	enum classify_phase phase;	/* request, body or digest */
	const struct upstream_result *res;	/* the transfer's end, or NULL */
	const void	*body;		/* upstream's error body, or NULL */
	size_t		 bodylen;
	/* What clients got instead of an error, or NULL: "stale", "resumed". */
	const char	*served;
};

/*
 * Logs one line per failure, and counts it in the registry's metrics
 * by cause (repeats included). A failure with the same registry, cause and
 * repository as one logged less than REPLY_REPEAT_MS ago is counted
 * instead; each count is logged as one "upstream failure repeated" line
 * when its window closes (on the loop's timer, or at the next failure
 * without one) or at reply_log_end().
 */
#define REPLY_REPEAT_MS	10000
void reply_log_failure(const struct reply_failure *f);
/* The window timer runs on base; without this, windows close lazily. */
int reply_log_begin(struct event_base *base);
/* Logs the counts still open, frees everything. */
void reply_log_end(void);

#endif
