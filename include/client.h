/*
 * client: one client request, the same record whichever way it is served
 * (a blob reader, a manifest waiter, a relay).
 *
 * The server describes a request once, when it has been routed (struct
 * client_request: who asked what, of which registry, since when). A
 * holder embeds a struct client: it holds the evhttp request across
 * callbacks, keeps what the client got, and ends in client_end(), the
 * one place where a request is logged and counted. A client that goes
 * away is reported through the holder's gone() callback, with the request
 * already released, so the holder's one teardown path can run.
 */
#ifndef PP_CLIENT_H
#define PP_CLIENT_H

#include <sys/time.h>

#include <stdint.h>

#include "metrics.h"
#include "oci.h"

struct evhttp_request;
struct registry;

struct client_request {
	unsigned long		 id;	/* names the request in logs */
	int			 head;	/* HEAD, else GET */
	struct oci_route	 route;
	struct registry		*reg;
	struct timeval		 t0;	/* when it arrived */
	int			 from_peer;	/* on the peer listener */
	enum metrics_result	 result;	/* set by whoever serves it */
};

struct client {
	struct client_request	 c_rq;
	struct evhttp_request	*c_req;		/* NULL once let go */
	char			*c_uri;		/* as asked, for the log */
	void			(*c_gone)(void *arg);
	void			*c_arg;
	int			 c_started;	/* status line sent */
	int			 c_status;	/* what it got; 0: nothing */
	uint64_t		 c_bytes;	/* body bytes sent */
	int			 c_cut;		/* its body was cut short */
	int			 c_handed;	/* another holder logs it */
};

/*
 * Hold req for rq, watching its connection. Returns -1 (nothing held, req
 * still the caller's to answer) when out of memory.
 */
int client_hold(struct client *c, const struct client_request *rq,
    struct evhttp_request *req, void (*gone)(void *arg), void *arg);
/* The request, to answer now with status; no longer watched. */
struct evhttp_request *client_take(struct client *c, int status);
/*
 * A complete OCI error answer, or, once the body has started, nothing (the
 * caller's client_end with abort_client tells the client).
 */
void client_error(struct client *c, int status, enum oci_err err,
    const char *msg);
/* The request goes to another holder, which logs it. */
struct evhttp_request *client_hand_over(struct client *c);
/*
 * Let go: abort_client cuts the connection (the only way to tell a client
 * that a body under way is incomplete), a started body is ended, a client
 * still waiting for an answer gets 500. Then the request's log line and
 * metrics, unless it was handed over.
 */
void client_end(struct client *c, int abort_client);

/* The log line and metrics of a request answered at once. */
void client_log(const struct client_request *rq, const char *uri,
    int status, uint64_t bytes);

#endif
