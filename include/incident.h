/*
 * incident: one "upstream failure" line per failed upstream interaction,
 * with the cause, phase and hint classify.h makes of it, counted in the
 * registry's metrics by cause. A failure with the same registry, cause,
 * repository and outcome as one logged less than INCIDENT_REPEAT_MS ago
 * is counted instead; each count is logged as one "upstream failure
 * repeated" line when its window closes (on the loop's timer, or at the
 * next failure without one) or at incident_end(). A 404 is logged as
 * "upstream not found" (info): an answer, not a failure.
 */
#ifndef PP_INCIDENT_H
#define PP_INCIDENT_H

#include <stddef.h>

#include "classify.h"

struct client_request;
struct evbuffer;
struct event_base;
struct upstream_result;
struct upstream_xfer;

#define INCIDENT_REPEAT_MS	10000

struct incident {
	const struct client_request *rq;	/* who asked what, since when */
	const char	*url;		/* without query: no SAS tokens */
	long		 status;	/* upstream HTTP status, 0 if none */
	const char	*error;		/* transport error or what was wrong */
	int		 client_status;	/* what the client got; 0: none waiting */
	enum classify_phase phase;	/* request, body or digest */
	const struct upstream_result *res;	/* the transfer's end, or NULL */
	const void	*body;		/* upstream's error body, or NULL */
	size_t		 bodylen;
	/* What clients got instead of an error, or NULL: "stale", "resumed". */
	const char	*served;
};

/*
 * An incident for rq from what a transfer knows: x's URL and end (x NULL:
 * none), status, and when it is an error status, the error body kept in
 * body (or NULL). The caller adds phase, error, client_status, served.
 */
void incident_init(struct incident *f, const struct client_request *rq,
    const struct upstream_xfer *x, long status, struct evbuffer *body);
void incident_log(const struct incident *f);
/* The window timer runs on base; without this, windows close lazily. */
int incident_begin(struct event_base *base);
/* Logs the counts still open, frees everything. */
void incident_end(void);

#endif
