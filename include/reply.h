/*
 * reply: answering a client in OCI terms, shared by every way a request is
 * served (from the cache, coalesced behind a fetch, or relayed), so a
 * client sees the same status and body for the same upstream answer.
 * Pure mappings, plus reply_error, which sends.
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
 * Send a complete error reply with an OCI body and its Content-Length
 * (HEAD gets the headers only, and a 5xx's reason phrase carries msg).
 * Returns the body length sent.
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

#endif
