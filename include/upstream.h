/*
 * upstream: HTTP(S) transfers to registries on libcurl's multi interface,
 * driven by the daemon's event loop (curl's hiperfifo pattern). DNS runs in
 * curl's resolver thread, so nothing here blocks the loop.
 *
 * A transfer reports, in this order and at most once each: on_headers (the
 * final response's status and headers, after redirects), on_data (zero or
 * more times), on_done (always, unless cancelled). Redirects are followed
 * (but not with no_redirect); an Authorization header is only sent to the
 * host it was meant for.
 *
 * A transfer with an identity (struct upstream_auth: auth.h makes one per
 * registry) sends the cached token of its scope. A 401 with a challenge
 * from the host asked is not reported: the transfer waits for a fresh
 * token and is sent once more with it; a second 401, or one no token came
 * for, is reported as usual. The transport knows the identity only
 * through that interface, so auth, which fetches its tokens with
 * transfers, sits above it.
 *
 * A transfer with a ratelimit handle (ratelimit.h) waits for a token of
 * its class before each send; a wait past the limit ends the transfer
 * with "throttled" set and no exchange. Its final status goes back to
 * the handle, so a 429 pauses the registry.
 *
 * A transfer with a circuit (circuit.h) is refused at once while the
 * circuit is open ("circuit" set to the cause that opened it), and its
 * end counts for or against the registry.
 *
 * A transfer allowed retries is sent again, after a jittered backoff,
 * when it fails before anything reached the caller in a way that may not
 * happen twice (connection refused or reset, 500, 502, 503, 504): the
 * caller sees only the last attempt. Only for idempotent requests.
 *
 * A transfer with mirrors asks them first, in order, skipping those whose
 * circuit is open: the request's path goes under the mirror's URL, with
 * ?ns=<registry> (as containerd asks a mirror), and never the registry's
 * credentials (only the mirrors' own token, if any). A mirror's transport
 * failure or error status (but 416) is not reported: the next one is
 * asked, then the registry. A fleet peer (an entry with hop_ok) that
 * answers 503 with Pullproxy-Busy (its fan-out slots are taken) is asked
 * again about a second later, up to a minute, before the next origin.
 */
#ifndef PP_UPSTREAM_H
#define PP_UPSTREAM_H

#include <stddef.h>
#include <curl/curl.h>

#include "classify.h"
#include "ratelimit.h"

struct circuit;
struct event_base;
struct upstream;
struct upstream_xfer;

struct upstream_result {
	CURLcode	 curl;		/* CURLE_OK when the exchange completed */
	long		 status;	/* final HTTP status, 0 if none */
	double		 seconds;	/* total time */
	const char	*error;		/* curl's message, "" when ok */
	/* Never sent: waited too long for the rate limit (curl is not OK). */
	int		 throttled;
	/* What curl knows of a failure, for classify.h: */
	long		 os_errno;	/* CURLINFO_OS_ERRNO */
	int		 connected;	/* a connection to the last host was up */
	int		 headers;	/* the final response's headers came */
	long		 redirects;	/* hops followed: >0, the last one failed */
	int		 attempts;	/* sends, retries and 401 replays included */
	/* Never sent: the registry's circuit is open after this cause. */
	enum classify_cause circuit;
};

struct upstream_cbs {
	void	(*on_headers)(struct upstream_xfer *, void *arg);
	/* Consume all of buf. May call upstream_xfer_pause(). */
	void	(*on_data)(struct upstream_xfer *, const char *buf, size_t len,
		    void *arg);
	void	(*on_done)(struct upstream_xfer *,
		    const struct upstream_result *, void *arg);
};

/*
 * An identity as the transport sees it. scope names the token a request
 * needs ("repository:<name>:pull", or "" outside a repository).
 */
struct upstream_auth {
	void	*ctx;
	/* The Authorization value for scope when one is current, else NULL;
	 * valid until the loop runs again. */
	const char *(*header)(void *ctx, const char *scope);
	/* A 401 with this challenge came after sending refused (or NULL):
	 * 0 when a token can answer it, -1 to report the 401 as it is. */
	int	(*challenge)(void *ctx, const char *scope,
		    const char *challenge, const char *refused);
	/* Wait for a token: cb runs later from the loop with the value, or
	 * NULL when none came. Returns NULL when no fetch can start. */
	void	*(*wait)(void *ctx, const char *scope,
		    void (*cb)(void *arg, const char *authorization),
		    void *arg);
	void	(*wait_cancel)(void *wait);
};

/*
 * A mirror asked before the registry, with its own breaker. The transfer
 * copies the entries; what they point to must live until it ends, or be
 * held through ref and unref (called with hold at start and at the end).
 */
struct upstream_mirror {
	const char	*url;		/* base URL, as the registry's */
	struct circuit	*circuit;
	/* Its Authorization value, or NULL: the request's
	 * mirror_authorization. */
	const char	*authorization;
	const char	*header;	/* one more "Name: value", or NULL */
	long		 stall_timeout_s;	/* 0: the request's */
	/*
	 * A fleet peer: its redirects are followed, Authorization included,
	 * only to addresses hop_ok accepts (1), the other peers; without
	 * hop_ok a mirror's Authorization stays on its own host.
	 */
	int		(*hop_ok)(void *hold, int family, const void *addr,
			    int port);
	void		*hold;
	void		(*ref)(void *hold);
	void		(*unref)(void *hold);
};

struct upstream_req {
	const char	*url;
	int		 head;		/* HEAD instead of GET */
	const char	*range;		/* Range header value, or NULL */
	const char	*accept;	/* Accept header value, or NULL */
	/* POST this form (application/x-www-form-urlencoded), or NULL. */
	const char	*body;
	size_t		 bodylen;
	/* More "Name: value" lines, NULL-terminated, or NULL. */
	const char *const *headers;
	const struct upstream_auth *auth;	/* the registry's, or NULL */
	const char	*scope;		/* the token auth sends; "" for none */
	struct ratelimit *ratelimit;	/* the registry's pace, or NULL */
	enum ratelimit_class rlclass;
	struct circuit	*circuit;	/* the registry's breaker, or NULL */
	int		 retries;	/* sends after the first; 0 unless idempotent */
	const char	*registry;	/* its name, for metrics, logs and ns */
	/* url's path and query below the registry's URL: what mirrors get. */
	const char	*path;
	const struct upstream_mirror *mirrors;	/* asked first, or NULL */
	size_t		 nmirrors;
	/* What mirrors get as Authorization (their own token), or NULL. */
	const char	*mirror_authorization;
	/*
	 * A URL the registry named (a token realm): its first hop is held to
	 * the redirect rule too, as a hop from the registry at this base URL
	 * (by its host: an IP address, localhost, or a name, taken as off
	 * the node). NULL for the registry's own URLs.
	 */
	const char	*named_by;
	/* Credentials in the request (a token POST): no redirect is followed
	 * (the 3xx is the answer), wherever it points. */
	int		 no_redirect;
	const char	*ca_file;	/* extra CA bundle, or NULL */
	int		 tls_verify;
	long		 connect_timeout_ms;
	long		 stall_timeout_s;
};

struct upstream *upstream_new(struct event_base *base);
/* Cancels whatever is still running. */
void upstream_free(struct upstream *up);
int upstream_active(const struct upstream *up);	/* transfers running */
/* The loop transfers run on, for callers' own timers. */
struct event_base *upstream_base(const struct upstream *up);

/* Start a transfer. Returns NULL only when curl can't make a handle. */
struct upstream_xfer *upstream_xfer_start(struct upstream *up,
    const struct upstream_req *req, const struct upstream_cbs *cbs,
    void *arg);

/*
 * Stop a transfer: no callback runs after this returns. Safe from inside
 * the transfer's own callbacks (the handle is removed on the next loop turn).
 */
void upstream_xfer_cancel(struct upstream_xfer *x);

/* Backpressure: stop or restart delivery of on_data. */
void upstream_xfer_pause(struct upstream_xfer *x);
void upstream_xfer_resume(struct upstream_xfer *x);

/* Valid from on_headers until on_done returns or cancel. */
long upstream_xfer_status(const struct upstream_xfer *x);
const char *upstream_xfer_header(const struct upstream_xfer *x,
    const char *name);
/* The URL that answered, with the query removed (no SAS tokens in logs). */
const char *upstream_xfer_url(const struct upstream_xfer *x);
/* The transport facts of a transfer's end (NULL: none) into in. */
void upstream_result_classify(struct classify_input *in,
    const struct upstream_result *res);

/* The breaker of the mirror that answered, or NULL: the registry did.
 * Valid from on_headers until on_done returns. */
struct circuit *upstream_xfer_mirror_circuit(const struct upstream_xfer *x);

/* How it ended, while on_done runs; NULL before. */
const struct upstream_result *upstream_xfer_result(
    const struct upstream_xfer *x);

#endif
