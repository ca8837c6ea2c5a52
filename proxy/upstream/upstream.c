/*
 * upstream: libcurl multi_socket driven by libevent, after curl's
 * hiperfifo.c. One timer, one event per socket curl asks about,
 * curl_multi_info_read after every action.
 *
 * curl forbids adding or removing easy handles from inside its callbacks,
 * and callers of this module start and cancel transfers from inside theirs
 * (which run inside curl's). So handles are added and removed only by
 * upstream_kick(), an event that runs on the next loop turn.
 *
 * A 401 that auth can answer is held: its headers and body are kept from
 * the caller, the transfer waits for a token (XFER_AUTH), then goes back
 * to the pending queue, either to be sent again with the token or, when
 * none came, to give the caller the kept 401 from the kick.
 *
 * With a ratelimit handle the kick asks for a token before each send; a
 * transfer without one waits on the limited queue (XFER_LIMITED) and
 * comes back to the pending queue admitted, or throttled to be reported.
 * Then the circuit is asked, and an open one ends the transfer unsent.
 * A send to a mirror is neither paced nor asked the registry's circuit:
 * the mirror has its own.
 *
 * A transient 5xx is held like a 401; it, or a transport failure before
 * any header reached the caller, sends the transfer to the backoff queue
 * (XFER_BACKOFF), whose timer puts it back on the pending queue: the
 * same easy handle added again is a new request.
 */
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "circuit.h"
#include "log.h"
#include "metrics.h"
#include "upstream.h"

#define UPSTREAM_BUFFER_SIZE	(128 * 1024)
#define UPSTREAM_MAX_REDIRS	5
/* Of a held 401's body: enough for the caller to read its error code. */
#define UPSTREAM_HELD_MAX	(16 * 1024)
/* Before the first retry; doubled for each next one, with jitter. */
#define UPSTREAM_BACKOFF_MS	200
/*
 * A fleet peer whose fan-out slots are taken (fanout.h) is asked again
 * after about this long, this many times, then the next origin is.
 */
#define UPSTREAM_BUSY_MS	1000
#define UPSTREAM_BUSY_TRIES	60

/* x_mirror before the kick picks where the next send goes. */
#define UPSTREAM_CHOOSE		(-2)

enum xfer_hold {
	HOLD_NONE,
	HOLD_AUTH,	/* a 401 auth can answer */
	HOLD_RETRY,	/* a transient 5xx, to be sent again */
	HOLD_FALLBACK,	/* a mirror's error: the next origin is asked */
	HOLD_PACE,	/* the registry's 429: sent again when the pace allows */
	HOLD_BUSY,	/* a fleet peer's "ask again shortly" */
};

enum xfer_state {
	XFER_PENDING,	/* waiting for upstream_kick to add it (or replay) */
	XFER_RUNNING,	/* in the multi handle */
	XFER_AUTH,	/* a held 401 waiting for a token */
	XFER_LIMITED,	/* waiting for the registry's rate limit */
	XFER_BACKOFF,	/* waiting to be sent again after a failure */
	XFER_DEAD,	/* finishing, or cancelled and waiting for the kick */
};

/* How far into the node an address reaches, for the redirect rule. */
enum upstream_reach {
	REACH_REMOTE,		/* off this node */
	REACH_LOOPBACK,		/* this host: 127/8, 0/8, ::1, :: */
	REACH_LINKLOCAL,	/* 169.254/16, fe80::/10, Azure's wireserver */
};

struct upstream_xfer {
	struct upstream		*x_up;
	CURL			*x_easy;
	enum xfer_state		 x_state;
	int			 x_in_multi;
	int			 x_cancelled;
	int			 x_headers_done;
	struct upstream_cbs	 x_cbs;
	void			*x_arg;
	struct curl_slist	*x_reqheaders;
	char			*x_url;	/* effective URL without its query */
	char			 x_errbuf[CURL_ERROR_SIZE];
	TAILQ_ENTRY(upstream_xfer) x_entry;
	/* With an auth handle: */
	const struct upstream_auth *x_auth;
	char			*x_scope;	/* the token's scope */
	struct curl_slist	*x_authheaders;	/* x_reqheaders + Authorization */
	char			*x_sent;	/* Authorization value sent */
	void			*x_wait;	/* XFER_AUTH */
	int			 x_retried;	/* held a 401 once already */
	enum xfer_hold		 x_held;	/* an answer kept from the caller */
	int			 x_replay;	/* no token: report the kept 401 */
	char			*x_heldbody;
	size_t			 x_heldlen;
	struct upstream_result	 x_heldres;
	const struct upstream_result *x_res;	/* during on_done */
	/* The redirect rule (upstream_hop_allowed): */
	int			 x_https;	/* asked over https: stays https */
	int			 x_named;	/* named by the registry (named_by) */
	int			 x_noredirect;	/* a 3xx is the answer */
	enum upstream_reach	 x_reach;	/* where the last hop went */
	char			 x_refusal[128];	/* a hop it refused */
	/* With a ratelimit handle: */
	struct ratelimit	*x_rl;
	enum ratelimit_class	 x_rlclass;
	struct ratelimit_wait	 x_rlwait;	/* XFER_LIMITED */
	int			 x_admitted;	/* took a token for the next send */
	int			 x_throttled;	/* waited too long: report it */
	int			 x_paced;	/* held after a 429 */
	struct timeval		 x_queued;	/* when it began to wait */
	/* With a circuit, and retries: */
	struct circuit		*x_circuit;
	int			 x_probe;	/* the half-open probe */
	enum classify_cause	 x_refused;	/* the open circuit's cause */
	int			 x_attempts;
	int			 x_retries;	/* left */
	struct event		*x_backoff;
	const char		*x_registry;
	/* With mirrors (origins: the mirrors in order, then the registry): */
	struct upstream_mirror	*x_mirrors;	/* a copy of the request's */
	size_t			 x_nmirrors;
	size_t			 x_next;	/* the next mirror to ask */
	int			 x_mirror;	/* asked: index; -1 the registry */
	int			 x_mprobe;	/* the mirror's half-open probe */
	int			 x_busy;	/* busy answers from peers */
	char			*x_path;	/* what mirrors are asked */
	const char		*x_mirrorauth;	/* Authorization for mirrors */
	struct curl_slist	*x_mirrorheaders;	/* x_reqheaders + its own */
	long			 x_stall_s;	/* the request's stall timeout */
	char			*x_regurl;	/* the URL at the registry */
};
TAILQ_HEAD(xferq, upstream_xfer);

struct upstream {
	struct event_base	*u_base;
	CURLM			*u_multi;
	struct event		*u_timer;
	struct event		*u_kick;
	struct xferq		 u_pending;
	struct xferq		 u_running;
	struct xferq		 u_waiting;	/* XFER_AUTH */
	struct xferq		 u_limited;	/* XFER_LIMITED */
	struct xferq		 u_backoff;	/* XFER_BACKOFF */
	struct xferq		 u_dead;
	int			 u_active;
};

/* What curl asked us to watch on one socket. */
struct upstream_sock {
	struct event	*s_ev;
};

static void upstream_check_done(struct upstream *);
static void upstream_unhold(struct upstream_xfer *);
static void upstream_note_url(struct upstream_xfer *);
static enum classify_cause upstream_cause(const struct upstream_result *, int);
static struct curl_slist *upstream_headers_auth(const struct upstream_xfer *,
    const char *);
static struct curl_slist *upstream_headers_plus(const struct upstream_xfer *,
    const char *, const char *);

static void
upstream_schedule_kick(struct upstream *up)
{
	event_active(up->u_kick, EV_TIMEOUT, 0);
}

/* The queue a live transfer is on, by its state. */
static struct xferq *
upstream_queue(struct upstream *up, const struct upstream_xfer *x)
{
	switch (x->x_state) {
	case XFER_PENDING:
		return &up->u_pending;
	case XFER_RUNNING:
		return &up->u_running;
	case XFER_AUTH:
		return &up->u_waiting;
	case XFER_LIMITED:
		return &up->u_limited;
	case XFER_BACKOFF:
		return &up->u_backoff;
	default:
		return &up->u_dead;
	}
}

/* Onto the pending queue, to be sent (again) or replayed by the kick. */
static void
upstream_requeue(struct upstream_xfer *x)
{
	x->x_state = XFER_PENDING;
	TAILQ_INSERT_TAIL(&x->x_up->u_pending, x, x_entry);
	upstream_schedule_kick(x->x_up);
}

static void
upstream_xfer_free(struct upstream_xfer *x)
{
	size_t m;

	for (m = 0; m < x->x_nmirrors; m++)
		if (x->x_mirrors[m].unref != NULL)
			x->x_mirrors[m].unref(x->x_mirrors[m].hold);
	free(x->x_mirrors);
	if (x->x_in_multi)
		curl_multi_remove_handle(x->x_up->u_multi, x->x_easy);
	curl_easy_cleanup(x->x_easy);
	if (x->x_backoff != NULL)
		event_free(x->x_backoff);
	curl_slist_free_all(x->x_reqheaders);
	curl_slist_free_all(x->x_authheaders);
	curl_slist_free_all(x->x_mirrorheaders);
	free(x->x_url);
	free(x->x_regurl);
	free(x->x_path);
	free(x->x_scope);
	free(x->x_sent);
	free(x->x_heldbody);
	free(x);
}

/*
 * Report the end: headers first when the caller has not seen them (an
 * empty body, or a held 401 with its kept body), then on_done. Frees x.
 */
static void
upstream_finish(struct upstream_xfer *x, const struct upstream_result *res)
{
	if (!x->x_headers_done && res->curl == CURLE_OK && res->status != 0) {
		x->x_headers_done = 1;
		x->x_cbs.on_headers(x, x->x_arg);
		if (x->x_heldlen > 0 && !x->x_cancelled)
			x->x_cbs.on_data(x, x->x_heldbody, x->x_heldlen,
			    x->x_arg);
	}
	x->x_res = res;
	if (!x->x_cancelled)
		x->x_cbs.on_done(x, res, x->x_arg);
	upstream_xfer_free(x);
}

/* ratelimit_cb: a token came, or the wait was too long. */
static void
upstream_admitted(void *arg, int ok)
{
	struct upstream_xfer *x = arg;

	TAILQ_REMOVE(&x->x_up->u_limited, x, x_entry);
	if (ok) {
		x->x_admitted = 1;
		if (x->x_held == HOLD_PACE)
			upstream_unhold(x);
	} else if (x->x_paced)
		x->x_replay = 1;	/* the kept 429 is the answer */
	else {
		x->x_throttled = 1;
		snprintf(x->x_errbuf, sizeof(x->x_errbuf), "throttled locally: "
		    "no rate-limit token within %.1f s",
		    (double)log_ms_since(&x->x_queued) / 1000.0);
	}
	upstream_requeue(x);
}

/* May x be sent now? Else it waits on the limited queue. */
static int
upstream_admit(struct upstream_xfer *x)
{
	if (x->x_rl == NULL || x->x_admitted || x->x_throttled)
		return 1;
	gettimeofday(&x->x_queued, NULL);
	switch (ratelimit_enter(x->x_rl, &x->x_rlwait, x->x_rlclass,
	    upstream_admitted, x)) {
	case 1:
		return 1;
	case 0:
		x->x_state = XFER_LIMITED;
		TAILQ_INSERT_TAIL(&x->x_up->u_limited, x, x_entry);
		return 0;
	default:
		x->x_throttled = 1;
		snprintf(x->x_errbuf, sizeof(x->x_errbuf), "throttled locally: "
		    "the rate-limit queue is full");
		return 1;
	}
}

/* A transfer that never went out: a held 401, throttled, or refused. */
static void
upstream_end_unsent(struct upstream_xfer *x, CURLcode code)
{
	struct upstream_result res = { .curl = code, .error = x->x_errbuf };

	x->x_state = XFER_DEAD;
	x->x_up->u_active--;
	/* A probe answered 401 went out; one refused by the pace did not. */
	if (x->x_probe && x->x_replay)
		circuit_observe(x->x_circuit, 1, upstream_cause(&x->x_heldres,
		    1));
	else
		circuit_abandon(x->x_circuit, x->x_probe);
	x->x_probe = 0;
	if (x->x_replay) {
		upstream_finish(x, &x->x_heldres);
		return;
	}
	res.throttled = x->x_throttled;
	res.circuit = x->x_refused;
	res.attempts = x->x_attempts;
	upstream_finish(x, &res);
}

/* May x go out, as far as the registry's circuit is concerned? */
static int
upstream_circuit_allow(struct upstream_xfer *x)
{
	/* A probe sent again is still the probe. */
	if (x->x_probe || circuit_allow(x->x_circuit, &x->x_probe))
		return 1;
	x->x_refused = circuit_cause(x->x_circuit);
	snprintf(x->x_errbuf, sizeof(x->x_errbuf), "circuit open after "
	    "%ld failures in a row (%s): not sent, next probe in %.1f s",
	    circuit_failures(x->x_circuit), classify_cause_name(x->x_refused),
	    circuit_retry_in(x->x_circuit));
	return 0;
}

/* Where the next send goes; the URL without its query, for logs. */
static int
upstream_set_url(struct upstream_xfer *x, const char *url)
{
	char *copy;

	if ((copy = strdup(url)) == NULL)
		return -1;
	copy[strcspn(copy, "?")] = '\0';
	free(x->x_url);
	x->x_url = copy;
	curl_easy_setopt(x->x_easy, CURLOPT_URL, url);
	/* From https, never on to plain http, where anyone could answer. */
	x->x_https = strncasecmp(url, "https:", 6) == 0;
	curl_easy_setopt(x->x_easy, CURLOPT_REDIR_PROTOCOLS_STR,
	    x->x_https ? "https" : "http,https");
	x->x_refusal[0] = '\0';
	return 0;
}

/*
 * A mirror's headers: the request's, its token (its own, else the
 * mirrors') and its extra line; its stall timeout; and for a fleet peer,
 * the token follows the redirects upstream_hop_allowed lets through.
 */
static int
upstream_mirror_headers(struct upstream_xfer *x,
    const struct upstream_mirror *m)
{
	const char *auth = m->authorization != NULL ? m->authorization :
	    x->x_mirrorauth;

	curl_slist_free_all(x->x_mirrorheaders);
	x->x_mirrorheaders = NULL;
	if ((auth != NULL || m->header != NULL) &&
	    (x->x_mirrorheaders = upstream_headers_plus(x, auth,
	    m->header)) == NULL)
		return -1;
	curl_easy_setopt(x->x_easy, CURLOPT_HTTPHEADER,
	    x->x_mirrorheaders != NULL ? x->x_mirrorheaders : x->x_reqheaders);
	curl_easy_setopt(x->x_easy, CURLOPT_LOW_SPEED_TIME,
	    m->stall_timeout_s > 0 ? m->stall_timeout_s : x->x_stall_s);
	curl_easy_setopt(x->x_easy, CURLOPT_UNRESTRICTED_AUTH,
	    m->hop_ok != NULL ? 1L : 0L);
	return 0;
}

/*
 * Pick the origin of the next send, once per fallback: the first mirror
 * from x_next whose circuit lets a request go (asked as containerd asks
 * a mirror: ?ns=, no credentials), else the registry.
 */
static int
upstream_origin(struct upstream_xfer *x)
{
	const struct upstream_mirror *m;
	char *url;
	int rc;

	if (x->x_mirror != UPSTREAM_CHOOSE)
		return 0;
	for (; x->x_next < x->x_nmirrors; x->x_next++) {
		m = &x->x_mirrors[x->x_next];
		if (!circuit_allow(m->circuit, &x->x_mprobe))
			continue;
		if (asprintf(&url, "%s%s%cns=%s", m->url, x->x_path,
		    strchr(x->x_path, '?') != NULL ? '&' : '?',
		    x->x_registry) == -1) {
			circuit_abandon(m->circuit, x->x_mprobe);
			x->x_mprobe = 0;
			return -1;
		}
		x->x_mirror = (int)x->x_next++;
		rc = upstream_set_url(x, url);
		free(url);
		if (rc == 0)
			rc = upstream_mirror_headers(x, m);
		return rc;
	}
	x->x_mirror = -1;
	curl_easy_setopt(x->x_easy, CURLOPT_HTTPHEADER,
	    x->x_authheaders != NULL ? x->x_authheaders : x->x_reqheaders);
	curl_easy_setopt(x->x_easy, CURLOPT_LOW_SPEED_TIME, x->x_stall_s);
	curl_easy_setopt(x->x_easy, CURLOPT_UNRESTRICTED_AUTH, 0L);
	return upstream_set_url(x, x->x_regurl);
}

static void
upstream_kick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct upstream *up = arg;
	struct upstream_xfer *x;
	CURLMcode rc;

	(void)fd;
	(void)what;
	while ((x = TAILQ_FIRST(&up->u_dead)) != NULL) {
		TAILQ_REMOVE(&up->u_dead, x, x_entry);
		upstream_xfer_free(x);
	}
	while ((x = TAILQ_FIRST(&up->u_pending)) != NULL) {
		TAILQ_REMOVE(&up->u_pending, x, x_entry);
		if (!x->x_replay && !x->x_throttled &&
		    upstream_origin(x) == -1) {
			snprintf(x->x_errbuf, sizeof(x->x_errbuf),
			    "out of memory");
			upstream_end_unsent(x, CURLE_OUT_OF_MEMORY);
			continue;
		}
		/* The registry's pace is the registry's: mirrors go at once. */
		if (!x->x_replay && x->x_mirror < 0 && !upstream_admit(x))
			continue;
		if (x->x_replay || x->x_throttled) {
			upstream_end_unsent(x, CURLE_ABORTED_BY_CALLBACK);
			continue;
		}
		if (x->x_mirror < 0 && !upstream_circuit_allow(x)) {
			upstream_end_unsent(x, CURLE_COULDNT_CONNECT);
			continue;
		}
		rc = curl_multi_add_handle(up->u_multi, x->x_easy);
		if (rc != CURLM_OK) {
			snprintf(x->x_errbuf, sizeof(x->x_errbuf), "%s",
			    curl_multi_strerror(rc));
			upstream_end_unsent(x, CURLE_FAILED_INIT);
			continue;
		}
		x->x_admitted = 0;	/* a resend after a 401 takes another */
		x->x_attempts++;
		x->x_in_multi = 1;
		x->x_state = XFER_RUNNING;
		TAILQ_INSERT_TAIL(&up->u_running, x, x_entry);
	}
}

static void
upstream_action(struct upstream *up, curl_socket_t s, int flags)
{
	int running;

	curl_multi_socket_action(up->u_multi, s, flags, &running);
	upstream_check_done(up);
}

static void
upstream_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	upstream_action(arg, CURL_SOCKET_TIMEOUT, 0);
}

static void
upstream_sock_cb(evutil_socket_t fd, short what, void *arg)
{
	int flags = 0;

	if (what & EV_READ)
		flags |= CURL_CSELECT_IN;
	if (what & EV_WRITE)
		flags |= CURL_CSELECT_OUT;
	upstream_action(arg, fd, flags);
}

/* CURLMOPT_SOCKETFUNCTION */
static int
upstream_curl_sock(CURL *easy, curl_socket_t s, int what, void *userp,
    void *sockp)
{
	struct upstream *up = userp;
	struct upstream_sock *us = sockp;
	short kind;

	(void)easy;
	if (what == CURL_POLL_REMOVE) {
		if (us != NULL) {
			event_free(us->s_ev);
			free(us);
			curl_multi_assign(up->u_multi, s, NULL);
		}
		return 0;
	}
	kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
	    ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
	if (us == NULL) {
		if ((us = calloc(1, sizeof(*us))) == NULL)
			return -1;
		curl_multi_assign(up->u_multi, s, us);
	} else
		event_free(us->s_ev);
	us->s_ev = event_new(up->u_base, s, kind, upstream_sock_cb, up);
	if (us->s_ev == NULL)
		return -1;
	event_add(us->s_ev, NULL);
	return 0;
}

/* CURLMOPT_TIMERFUNCTION */
static int
upstream_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
	struct upstream *up = userp;
	struct timeval tv;

	(void)multi;
	if (timeout_ms < 0) {
		evtimer_del(up->u_timer);
		return 0;
	}
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	evtimer_add(up->u_timer, &tv);
	return 0;
}

/*
 * The request's headers, an Authorization line with value and one more
 * line (each when not NULL): a new list, or NULL.
 */
static struct curl_slist *
upstream_headers_plus(const struct upstream_xfer *x, const char *value,
    const char *extra)
{
	struct curl_slist *l = NULL, *h, *n;
	char *line;

	for (h = x->x_reqheaders; h != NULL; h = h->next) {
		if ((n = curl_slist_append(l, h->data)) == NULL)
			goto fail;
		l = n;
	}
	if (extra != NULL) {
		if ((n = curl_slist_append(l, extra)) == NULL)
			goto fail;
		l = n;
	}
	if (value == NULL)
		return l;
	if (asprintf(&line, "Authorization: %s", value) == -1)
		goto fail;
	n = curl_slist_append(l, line);
	explicit_bzero(line, strlen(line));
	free(line);
	if (n != NULL)
		return n;
fail:
	curl_slist_free_all(l);
	return NULL;
}

/* The request's headers and an Authorization line: a new list, or NULL. */
static struct curl_slist *
upstream_headers_auth(const struct upstream_xfer *x, const char *value)
{
	return upstream_headers_plus(x, value, NULL);
}

/* Replace the Authorization header the next send carries. */
static int
upstream_set_authorization(struct upstream_xfer *x, const char *value)
{
	struct curl_slist *n;

	if ((n = upstream_headers_auth(x, value)) == NULL)
		return -1;
	free(x->x_sent);
	if ((x->x_sent = strdup(value)) == NULL) {
		curl_slist_free_all(n);
		return -1;
	}
	curl_slist_free_all(x->x_authheaders);
	x->x_authheaders = n;
	curl_easy_setopt(x->x_easy, CURLOPT_HTTPHEADER, x->x_authheaders);
	return 0;
}

/* Forget what the last attempt kept and said: the transfer goes again. */
static void
upstream_unhold(struct upstream_xfer *x)
{
	x->x_held = HOLD_NONE;
	x->x_heldlen = 0;
	x->x_headers_done = 0;
	x->x_errbuf[0] = '\0';
}

/* Send the held transfer again with a token, or report its 401. */
static void
upstream_auth_resume(struct upstream_xfer *x, const char *authorization)
{
	if (authorization == NULL ||
	    upstream_set_authorization(x, authorization) == -1) {
		x->x_replay = 1;
		upstream_requeue(x);
		return;
	}
	upstream_unhold(x);
	upstream_requeue(x);
}

/* upstream_auth's wait callback */
static void
upstream_auth_done(void *arg, const char *authorization)
{
	struct upstream_xfer *x = arg;

	x->x_wait = NULL;
	TAILQ_REMOVE(&x->x_up->u_waiting, x, x_entry);
	upstream_auth_resume(x, authorization);
}

/* A held 401 came in whole: a token known by now, or wait for one. */
static void
upstream_auth_retry(struct upstream_xfer *x)
{
	const char *authorization = x->x_auth->header(x->x_auth->ctx,
	    x->x_scope);

	if (authorization != NULL) {
		upstream_auth_resume(x, authorization);
		return;
	}
	x->x_wait = x->x_auth->wait(x->x_auth->ctx, x->x_scope,
	    upstream_auth_done, x);
	if (x->x_wait == NULL) {
		upstream_auth_resume(x, NULL);
		return;
	}
	x->x_state = XFER_AUTH;
	TAILQ_INSERT_TAIL(&x->x_up->u_waiting, x, x_entry);
}

/*
 * Hold a final 401 that auth can answer, once per transfer. Only the host
 * asked: a 401 after a redirect comes from storage, not the registry.
 */
static int
upstream_auth_hold(struct upstream_xfer *x)
{
	const char *challenge;
	long redirects = 0;

	if (x->x_auth == NULL || x->x_retried)
		return 0;
	curl_easy_getinfo(x->x_easy, CURLINFO_REDIRECT_COUNT, &redirects);
	if (redirects != 0 ||
	    (challenge = upstream_xfer_header(x, "WWW-Authenticate")) == NULL ||
	    (x->x_heldbody == NULL &&
	    (x->x_heldbody = malloc(UPSTREAM_HELD_MAX)) == NULL) ||
	    x->x_auth->challenge(x->x_auth->ctx, x->x_scope, challenge,
	    x->x_sent) == -1)
		return 0;
	x->x_retried = 1;
	x->x_held = HOLD_AUTH;
	return 1;
}

/* Statuses that a second try may not get (the registry's own hiccups). */
static int
upstream_status_transient(long status)
{
	return status == 500 || status == 502 || status == 503 ||
	    status == 504;
}

/* Keep this answer from the caller: 1 when it is held. */
static int
upstream_hold(struct upstream_xfer *x, enum xfer_hold kind)
{
	if (x->x_heldbody == NULL &&
	    (x->x_heldbody = malloc(UPSTREAM_HELD_MAX)) == NULL)
		return 0;
	x->x_held = kind;
	return 1;
}

/*
 * A mirror's error status goes no further (the next origin is asked),
 * nor does a transient 5xx when a retry is left.
 */
static int
upstream_status_hold(struct upstream_xfer *x, long status)
{
	if (x->x_mirror >= 0 && status == 503 &&
	    x->x_mirrors[x->x_mirror].hop_ok != NULL &&
	    x->x_busy < UPSTREAM_BUSY_TRIES &&
	    upstream_xfer_header(x, "Pullproxy-Busy") != NULL)
		return upstream_hold(x, HOLD_BUSY);
	if (x->x_mirror >= 0 && status >= 400 && status != 416)
		return upstream_hold(x, HOLD_FALLBACK);
	if (status == 429 && x->x_rl != NULL)
		return upstream_hold(x, HOLD_PACE);
	if (x->x_retries > 0 && upstream_status_transient(status))
		return upstream_hold(x, HOLD_RETRY);
	return 0;
}

/*
 * How this attempt failed, in classify.h's terms (NONE: it did not); with
 * fault, only a failure that counts against the registry (a circuit's).
 */
static enum classify_cause
upstream_cause(const struct upstream_result *res, int fault)
{
	struct classify_input in;
	struct classify_result c;

	memset(&in, 0, sizeof(in));
	upstream_result_classify(&in, res);
	in.status = res->status;
	classify(&in, &c);
	return fault && !c.fault ? CLASSIFY_NONE : c.cause;
}

/*
 * A mirror's answer counts for its circuit. When it failed and nothing
 * reached the caller, the next origin is asked at once: 1.
 */
static int
upstream_fallback(struct upstream_xfer *x, const struct upstream_result *res)
{
	const struct upstream_mirror *m = &x->x_mirrors[x->x_mirror];
	enum classify_cause cause = upstream_cause(res, 0);

	circuit_observe(m->circuit, x->x_mprobe, upstream_cause(res, 1));
	x->x_mprobe = 0;
	if (x->x_headers_done || (res->curl == CURLE_OK &&
	    x->x_held != HOLD_FALLBACK && x->x_held != HOLD_BUSY))
		return 0;
	/* Peers come and go; metric series live for the process. */
	if (m->hop_ok == NULL)
		metrics_failure(metrics_registry(m->url), cause);
	log_event(LOG_LEVEL_INFO, "mirror failed", json_pack(
	    "{s:s,s:s,s:s,s:s,s:I,s:s}", "registry", x->x_registry, "mirror",
	    m->url, "url", upstream_xfer_url(x), "cause",
	    classify_cause_name(cause), "status", (json_int_t)res->status,
	    "error", res->error));
	upstream_unhold(x);
	x->x_mirror = UPSTREAM_CHOOSE;
	upstream_requeue(x);
	return 1;
}

static void
upstream_backoff_cb(evutil_socket_t fd, short what, void *arg)
{
	struct upstream_xfer *x = arg;

	(void)fd;
	(void)what;
	TAILQ_REMOVE(&x->x_up->u_backoff, x, x_entry);
	upstream_requeue(x);
}

/* The backoff timer, made on first use: -1 when it cannot be. */
static int
upstream_backoff_timer(struct upstream_xfer *x)
{
	if (x->x_backoff == NULL && (x->x_backoff = evtimer_new(
	    x->x_up->u_base, upstream_backoff_cb, x)) == NULL)
		return -1;
	return 0;
}

/* Wait ms on the backoff queue, then go back to the pending one. */
static void
upstream_backoff(struct upstream_xfer *x, long ms)
{
	struct timeval tv;

	x->x_state = XFER_BACKOFF;
	TAILQ_INSERT_TAIL(&x->x_up->u_backoff, x, x_entry);
	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	evtimer_add(x->x_backoff, &tv);
}

/*
 * A fleet peer said its fan-out slots are taken: it is up (its circuit
 * hears so), and it is asked again, at its first URL, shortly. 1 when so.
 */
static int
upstream_busy(struct upstream_xfer *x, const struct upstream_result *res)
{
	if (x->x_held != HOLD_BUSY || res->curl != CURLE_OK ||
	    upstream_backoff_timer(x) == -1)
		return 0;
	circuit_observe(x->x_mirrors[x->x_mirror].circuit, x->x_mprobe,
	    CLASSIFY_NONE);
	x->x_mprobe = 0;
	x->x_busy++;
	upstream_unhold(x);
	x->x_next = (size_t)x->x_mirror;
	x->x_mirror = UPSTREAM_CHOOSE;
	upstream_backoff(x, UPSTREAM_BUSY_MS / 2 +
	    (long)arc4random_uniform(UPSTREAM_BUSY_MS));
	return 1;
}

/*
 * Send x again later when this attempt failed in a way worth one more
 * (see upstream.h) and nothing of it reached the caller.
 */
static int
upstream_retry(struct upstream_xfer *x, const struct upstream_result *res)
{
	enum classify_cause cause;
	long ms;

	if (x->x_retries == 0 || x->x_headers_done)
		return 0;
	cause = upstream_cause(res, 0);
	/*
	 * Garbage for a status line: a reused connection can still hold the
	 * excess bytes of an answer longer than its Content-Length.
	 */
	if (x->x_held != HOLD_RETRY && cause != CLASSIFY_CONNECTION_RESET &&
	    cause != CLASSIFY_CONNECTION_REFUSED &&
	    res->curl != CURLE_WEIRD_SERVER_REPLY &&
	    res->curl != CURLE_UNSUPPORTED_PROTOCOL)
		return 0;
	if (upstream_backoff_timer(x) == -1)
		return 0;
	/* Full jitter over the doubled delay: clients of one registry spread. */
	ms = UPSTREAM_BACKOFF_MS << (x->x_attempts - 1 < 4 ? x->x_attempts - 1 : 4);
	ms = ms / 2 + (long)arc4random_uniform((uint32_t)ms);
	x->x_retries--;
	if (x->x_registry != NULL)
		metrics_retry(metrics_registry(x->x_registry));
	log_event(LOG_LEVEL_INFO, "upstream retry", json_pack(
	    "{s:s,s:s,s:s,s:I,s:s,s:I,s:I}", "registry", x->x_registry != NULL ?
	    x->x_registry : "", "url", upstream_xfer_url(x), "cause",
	    classify_cause_name(cause), "status", (json_int_t)res->status,
	    "error", res->error, "attempt", (json_int_t)x->x_attempts,
	    "delay_ms", (json_int_t)ms));
	upstream_unhold(x);
	/* Not the connection that failed again. */
	curl_easy_setopt(x->x_easy, CURLOPT_FRESH_CONNECT, 1L);
	upstream_backoff(x, ms);
	return 1;
}

/*
 * What classify.h needs to tell a failure's phase. The primary IP is set
 * once a connection is up (and kept across a redirect: hence redirects).
 */
static void
upstream_note_failure(struct upstream_xfer *x, struct upstream_result *res)
{
	char *ip = NULL;

	res->headers = x->x_headers_done;
	curl_easy_getinfo(x->x_easy, CURLINFO_OS_ERRNO, &res->os_errno);
	curl_easy_getinfo(x->x_easy, CURLINFO_REDIRECT_COUNT, &res->redirects);
	curl_easy_getinfo(x->x_easy, CURLINFO_PRIMARY_IP, &ip);
	res->connected = ip != NULL && *ip != '\0';
	/* The hop that failed, for the log: a redirect's target. */
	if (res->curl != CURLE_OK)
		upstream_note_url(x);
	/*
	 * A hop the redirect rules refused: one code for it (curl says
	 * "couldn't connect" or "unsupported protocol", which other faults
	 * give too) and the reason, for classify.h and the log.
	 */
	if (res->curl != CURLE_OK && x->x_refusal[0] != '\0') {
		res->curl = CURLE_ABORTED_BY_CALLBACK;
		res->error = x->x_refusal;
	}
}

/* One attempt's bytes and time, for whoever answered: registry or mirror. */
static void
upstream_account(struct upstream_xfer *x, double seconds)
{
	curl_off_t got = 0;

	if (x->x_registry == NULL)
		return;
	curl_easy_getinfo(x->x_easy, CURLINFO_SIZE_DOWNLOAD_T, &got);
	metrics_upstream_xfer(metrics_registry(x->x_mirror >= 0 ?
	    x->x_mirrors[x->x_mirror].url : x->x_registry), (uint64_t)got,
	    seconds);
}

/*
 * The registry answered 429: the answer is kept from the caller and the
 * transfer goes back into the pace's queue at the place it first had, to
 * be sent again when the pause ends; once its wait passes max_wait_s the
 * kept 429 is the answer (the caller answers 503 with Retry-After).
 */
static void
upstream_pace_hold(struct upstream_xfer *x)
{
	x->x_paced = 1;
	x->x_admitted = 0;
	if (ratelimit_hold(x->x_rl, &x->x_rlwait, upstream_admitted, x) == 0) {
		x->x_state = XFER_LIMITED;
		TAILQ_INSERT_TAIL(&x->x_up->u_limited, x, x_entry);
		return;
	}
	x->x_replay = 1;
	upstream_requeue(x);
}

static void
upstream_check_done(struct upstream *up)
{
	struct upstream_result res;
	struct upstream_xfer *x;
	CURLMsg *msg;
	int left;
	long status;

	while ((msg = curl_multi_info_read(up->u_multi, &left)) != NULL) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE,
		    (char **)&x);
		curl_multi_remove_handle(up->u_multi, x->x_easy);
		x->x_in_multi = 0;
		if (x->x_cancelled)	/* already on the dead list */
			continue;
		TAILQ_REMOVE(&up->u_running, x, x_entry);
		status = 0;
		curl_easy_getinfo(x->x_easy, CURLINFO_RESPONSE_CODE, &status);
		memset(&res, 0, sizeof(res));
		res.curl = msg->data.result;
		res.status = status;
		res.error = res.curl == CURLE_OK ? "" : (x->x_errbuf[0] != '\0' ?
		    x->x_errbuf : curl_easy_strerror(res.curl));
		curl_easy_getinfo(x->x_easy, CURLINFO_TOTAL_TIME, &res.seconds);
		upstream_account(x, res.seconds);
		upstream_note_failure(x, &res);
		/* A mirror's 429 is the mirror's: the registry's pace stays. */
		if (x->x_rl != NULL && res.curl == CURLE_OK && x->x_mirror < 0)
			ratelimit_answered(x->x_rl, &x->x_rlwait, status,
			    upstream_xfer_header(x, "Retry-After"));
		res.attempts = x->x_attempts;
		if (x->x_held == HOLD_AUTH && res.curl == CURLE_OK) {
			x->x_heldres = res;
			upstream_auth_retry(x);
			continue;
		}
		if (x->x_held == HOLD_PACE && res.curl == CURLE_OK) {
			x->x_heldres = res;
			upstream_pace_hold(x);
			continue;
		}
		if (upstream_busy(x, &res))
			continue;
		if (x->x_mirror >= 0 && upstream_fallback(x, &res))
			continue;
		if (upstream_retry(x, &res))
			continue;
		if (x->x_circuit != NULL && x->x_mirror < 0)
			circuit_observe(x->x_circuit, x->x_probe,
			    upstream_cause(&res, 1));
		x->x_probe = 0;
		x->x_state = XFER_DEAD;
		up->u_active--;
		upstream_finish(x, &res);
	}
}

static void
upstream_note_url(struct upstream_xfer *x)
{
	char *url = NULL, *q;

	curl_easy_getinfo(x->x_easy, CURLINFO_EFFECTIVE_URL, &url);
	if (url == NULL)
		return;
	free(x->x_url);
	if ((x->x_url = strdup(url)) != NULL && (q = strchr(x->x_url, '?')))
		*q = '\0';
}

/* CURLOPT_HEADERFUNCTION: only the blank line that ends a block matters. */
static size_t
upstream_curl_header(char *buf, size_t size, size_t n, void *arg)
{
	struct upstream_xfer *x = arg;
	size_t len = size * n;
	struct curl_header *loc;
	long status = 0;

	if (x->x_cancelled || x->x_headers_done)
		return len;
	if (!(len == 2 && buf[0] == '\r') && !(len == 1 && buf[0] == '\n'))
		return len;
	curl_easy_getinfo(x->x_easy, CURLINFO_RESPONSE_CODE, &status);
	if (status < 200)
		return len;	/* 1xx interim, or a proxy's CONNECT */
	/*
	 * curl follows a 3xx with a Location, unless told not to (then it is
	 * the answer). (CURLINFO_REDIRECT_URL cannot tell: it stays NULL
	 * while CURLOPT_FOLLOWLOCATION is on.)
	 */
	if (status >= 300 && status < 400 && !x->x_noredirect &&
	    curl_easy_header(x->x_easy, "Location", 0, CURLH_HEADER, -1,
	    &loc) == CURLHE_OK) {
		/* curl refuses it (REDIR_PROTOCOLS): say why in the log. */
		if (x->x_https && strncasecmp(loc->value, "http:", 5) == 0)
			snprintf(x->x_refusal, sizeof(x->x_refusal),
			    "redirect from https to plain http refused");
		return len;
	}
	upstream_note_url(x);
	if (upstream_status_hold(x, status))
		return len;
	if (status == 401 && upstream_auth_hold(x))
		return len;
	x->x_headers_done = 1;
	x->x_cbs.on_headers(x, x->x_arg);
	return len;
}

static size_t
upstream_curl_write(char *buf, size_t size, size_t n, void *arg)
{
	struct upstream_xfer *x = arg;
	size_t len = size * n, keep;

	if (x->x_cancelled)
		return len;
	if (x->x_held) {
		keep = len < UPSTREAM_HELD_MAX - x->x_heldlen ? len :
		    UPSTREAM_HELD_MAX - x->x_heldlen;
		memcpy(x->x_heldbody + x->x_heldlen, buf, keep);
		x->x_heldlen += keep;
		return len;
	}
	if (!x->x_headers_done)
		return len;
	x->x_cbs.on_data(x, buf, len, x->x_arg);
	return len;
}

/* addr: an in_addr or in6_addr. IPv4-mapped IPv6 is its IPv4 address. */
static enum upstream_reach
upstream_reach(int family, const void *addr)
{
	static const unsigned char mapped[12] = { [10] = 0xff, [11] = 0xff };
	const unsigned char *b = addr;
	int i;

	if (family == AF_INET6 && memcmp(b, mapped, sizeof(mapped)) != 0) {
		if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)
			return REACH_LINKLOCAL;
		for (i = 0; i < 15 && b[i] == 0; i++)
			;
		return i == 15 && b[15] <= 1 ? REACH_LOOPBACK : REACH_REMOTE;
	}
	if (family == AF_INET6)
		b += sizeof(mapped);
	else if (family != AF_INET)
		return REACH_REMOTE;
	/* connect() to 0.0.0.0 reaches this host's listeners too. */
	if (b[0] == 127 || b[0] == 0)
		return REACH_LOOPBACK;
	/* 168.63.129.16: reachable from Azure VMs only, like IMDS. */
	if ((b[0] == 169 && b[1] == 254) ||
	    (b[0] == 168 && b[1] == 63 && b[2] == 129 && b[3] == 16))
		return REACH_LINKLOCAL;
	return REACH_REMOTE;
}

/*
 * The redirect rule. A registry may send pullproxy elsewhere (ACR: to
 * blob storage) but never further into the node than the request went: a
 * hop after a redirect may reach a loopback or link-local address only
 * when the hop before it reached the same kind. A registry on the
 * internet cannot point pullproxy at 127.0.0.1, IMDS or the wireserver;
 * a lab registry on 127.0.0.1 can still redirect to storage there. By
 * address, not name: what a name resolves to is what gets contacted.
 * Called for every new connection and every request sent on one.
 */
static int
upstream_hop_allowed(struct upstream_xfer *x, int family, const void *addr,
    int port)
{
	enum upstream_reach to = upstream_reach(family, addr);
	const struct upstream_mirror *m = x->x_mirror >= 0 ?
	    &x->x_mirrors[x->x_mirror] : NULL;
	long redirects = 0;
	char ip[INET6_ADDRSTRLEN];

	curl_easy_getinfo(x->x_easy, CURLINFO_REDIRECT_COUNT, &redirects);
	/* A peer's redirect carries the peer token: to another peer only. */
	if (redirects != 0 && m != NULL && m->hop_ok != NULL &&
	    !m->hop_ok(m->hold, family, addr, port)) {
		inet_ntop(family, addr, ip, sizeof(ip));
		snprintf(x->x_refusal, sizeof(x->x_refusal), "redirect to "
		    "%s port %d refused: not a fleet peer", ip, port);
		return 0;
	}
	if ((redirects == 0 && !x->x_named) || to == REACH_REMOTE ||
	    to == x->x_reach)
		return 1;
	inet_ntop(family, addr, ip, sizeof(ip));
	snprintf(x->x_refusal, sizeof(x->x_refusal), "%s to %s address %s "
	    "refused: the registry is not there", redirects == 0 ?
	    "a URL the registry named" : "redirect", to == REACH_LOOPBACK ?
	    "loopback" : "link-local", ip);
	return 0;
}

/* How far into the node a base URL's host reaches, without resolving it. */
static enum upstream_reach
upstream_url_reach(const char *url)
{
	unsigned char addr[sizeof(struct in6_addr)];
	const char *host = strstr(url, "://");
	char name[256];
	size_t len;

	host = host != NULL ? host + 3 : url;
	if (*host == '[') {
		len = strcspn(++host, "]");
		snprintf(name, sizeof(name), "%.*s", (int)len, host);
		return inet_pton(AF_INET6, name, addr) == 1 ?
		    upstream_reach(AF_INET6, addr) : REACH_REMOTE;
	}
	len = strcspn(host, ":/");
	snprintf(name, sizeof(name), "%.*s", (int)len, host);
	if (strcasecmp(name, "localhost") == 0)
		return REACH_LOOPBACK;
	return inet_pton(AF_INET, name, addr) == 1 ?
	    upstream_reach(AF_INET, addr) : REACH_REMOTE;
}

/* CURLOPT_OPENSOCKETFUNCTION: a refused hop is never contacted. */
static curl_socket_t
upstream_curl_open(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
	const void *ip = a->family == AF_INET6 ?
	    (const void *)&((const struct sockaddr_in6 *)&a->addr)->sin6_addr :
	    (const void *)&((const struct sockaddr_in *)&a->addr)->sin_addr;

	int port = ntohs(a->family == AF_INET6 ?
	    ((const struct sockaddr_in6 *)&a->addr)->sin6_port :
	    ((const struct sockaddr_in *)&a->addr)->sin_port);

	if (purpose == CURLSOCKTYPE_IPCXN &&
	    (a->family == AF_INET || a->family == AF_INET6) &&
	    !upstream_hop_allowed(arg, a->family, ip, port))
		return CURL_SOCKET_BAD;
	return socket(a->family, a->socktype, a->protocol);
}

/*
 * CURLOPT_PREREQFUNCTION: before each request, on a new connection or a
 * reused one (which the socket check never sees), and the hop it makes.
 */
static int
upstream_curl_prereq(void *arg, char *primary_ip, char *local_ip,
    int primary_port, int local_port)
{
	struct upstream_xfer *x = arg;
	unsigned char addr[sizeof(struct in6_addr)];
	int family = strchr(primary_ip, ':') != NULL ? AF_INET6 : AF_INET;
	char ip[INET6_ADDRSTRLEN];

	(void)local_ip;
	(void)local_port;
	/* Without a zone ("fe80::1%eth0"), which inet_pton refuses. */
	snprintf(ip, sizeof(ip), "%.*s", (int)strcspn(primary_ip, "%"),
	    primary_ip);
	if (inet_pton(family, ip, addr) != 1)
		return CURL_PREREQFUNC_OK;	/* not IP: a unix socket */
	if (!upstream_hop_allowed(x, family, addr, primary_port))
		return CURL_PREREQFUNC_ABORT;
	x->x_reach = upstream_reach(family, addr);
	return CURL_PREREQFUNC_OK;
}

struct upstream *
upstream_new(struct event_base *base)
{
	struct upstream *up;

	if ((up = calloc(1, sizeof(*up))) == NULL)
		return NULL;
	up->u_base = base;
	TAILQ_INIT(&up->u_pending);
	TAILQ_INIT(&up->u_running);
	TAILQ_INIT(&up->u_waiting);
	TAILQ_INIT(&up->u_limited);
	TAILQ_INIT(&up->u_backoff);
	TAILQ_INIT(&up->u_dead);
	up->u_multi = curl_multi_init();
	up->u_timer = evtimer_new(base, upstream_timer_cb, up);
	up->u_kick = event_new(base, -1, 0, upstream_kick_cb, up);
	if (up->u_multi == NULL || up->u_timer == NULL || up->u_kick == NULL) {
		upstream_free(up);
		return NULL;
	}
	curl_multi_setopt(up->u_multi, CURLMOPT_SOCKETFUNCTION,
	    upstream_curl_sock);
	curl_multi_setopt(up->u_multi, CURLMOPT_SOCKETDATA, up);
	curl_multi_setopt(up->u_multi, CURLMOPT_TIMERFUNCTION,
	    upstream_curl_timer);
	curl_multi_setopt(up->u_multi, CURLMOPT_TIMERDATA, up);
	return up;
}

void
upstream_free(struct upstream *up)
{
	struct upstream_xfer *x;

	if (up == NULL)
		return;
	while ((x = TAILQ_FIRST(&up->u_running)) != NULL) {
		TAILQ_REMOVE(&up->u_running, x, x_entry);
		upstream_xfer_free(x);
	}
	while ((x = TAILQ_FIRST(&up->u_pending)) != NULL) {
		TAILQ_REMOVE(&up->u_pending, x, x_entry);
		upstream_xfer_free(x);
	}
	/* Their auth waits went with the auth handles (auth_free). */
	while ((x = TAILQ_FIRST(&up->u_waiting)) != NULL) {
		TAILQ_REMOVE(&up->u_waiting, x, x_entry);
		upstream_xfer_free(x);
	}
	/* Before the ratelimit handles, which outlive the engine. */
	while ((x = TAILQ_FIRST(&up->u_limited)) != NULL) {
		TAILQ_REMOVE(&up->u_limited, x, x_entry);
		ratelimit_leave(&x->x_rlwait);
		upstream_xfer_free(x);
	}
	while ((x = TAILQ_FIRST(&up->u_backoff)) != NULL) {
		TAILQ_REMOVE(&up->u_backoff, x, x_entry);
		upstream_xfer_free(x);
	}
	while ((x = TAILQ_FIRST(&up->u_dead)) != NULL) {
		TAILQ_REMOVE(&up->u_dead, x, x_entry);
		upstream_xfer_free(x);
	}
	if (up->u_multi != NULL)
		curl_multi_cleanup(up->u_multi);
	if (up->u_timer != NULL)
		event_free(up->u_timer);
	if (up->u_kick != NULL)
		event_free(up->u_kick);
	free(up);
}

int
upstream_active(const struct upstream *up)
{
	return up->u_active;
}

struct event_base *
upstream_base(const struct upstream *up)
{
	return up->u_base;
}

static int
upstream_add_line(struct upstream_xfer *x, const char *line)
{
	struct curl_slist *l;

	if ((l = curl_slist_append(x->x_reqheaders, line)) == NULL)
		return -1;
	x->x_reqheaders = l;
	return 0;
}

static int
upstream_add_header(struct upstream_xfer *x, const char *name,
    const char *value)
{
	char *line;
	int rc;

	if (value == NULL)
		return 0;
	if (asprintf(&line, "%s: %s", name, value) == -1)
		return -1;
	rc = upstream_add_line(x, line);
	free(line);
	return rc;
}

/* The caller's headers, then the auth handle's token if it has one. */
static int
upstream_set_headers(struct upstream_xfer *x, const struct upstream_req *req)
{
	const char *const *h;
	const char *authorization;

	/* Exact bytes are needed for digests: no Accept-Encoding. */
	if (upstream_add_header(x, "Accept", req->accept) == -1 ||
	    upstream_add_header(x, "Range", req->range) == -1 ||
	    upstream_add_header(x, "Expect", "") == -1)
		return -1;
	for (h = req->headers; h != NULL && *h != NULL; h++)
		if (upstream_add_line(x, *h) == -1)
			return -1;
	curl_easy_setopt(x->x_easy, CURLOPT_HTTPHEADER, x->x_reqheaders);
	if (req->auth == NULL)
		return 0;
	x->x_auth = req->auth;
	if ((x->x_scope = strdup(req->scope != NULL ? req->scope : "")) ==
	    NULL)
		return -1;
	authorization = x->x_auth->header(x->x_auth->ctx, x->x_scope);
	return authorization == NULL ? 0 :
	    upstream_set_authorization(x, authorization);
}

struct upstream_xfer *
upstream_xfer_start(struct upstream *up, const struct upstream_req *req,
    const struct upstream_cbs *cbs, void *arg)
{
	struct upstream_xfer *x;
	CURL *e;

	if ((x = calloc(1, sizeof(*x))) == NULL)
		return NULL;
	if ((x->x_easy = e = curl_easy_init()) == NULL) {
		free(x);
		return NULL;
	}
	x->x_up = up;
	x->x_cbs = *cbs;
	x->x_arg = arg;
	x->x_state = XFER_PENDING;
	x->x_rl = req->ratelimit;
	x->x_rlclass = req->rlclass;
	x->x_circuit = req->circuit;
	x->x_retries = req->body == NULL ? req->retries : 0;
	x->x_registry = req->registry;
	x->x_mirror = -1;
	x->x_stall_s = req->stall_timeout_s;
	x->x_noredirect = req->no_redirect;
	if ((x->x_named = req->named_by != NULL))
		x->x_reach = upstream_url_reach(req->named_by);
	if (req->nmirrors > 0 && req->path != NULL && req->registry != NULL) {
		if ((x->x_mirrors = calloc(req->nmirrors,
		    sizeof(*x->x_mirrors))) == NULL ||
		    (x->x_path = strdup(req->path)) == NULL) {
			upstream_xfer_free(x);
			return NULL;
		}
		for (; x->x_nmirrors < req->nmirrors; x->x_nmirrors++) {
			x->x_mirrors[x->x_nmirrors] = req->mirrors[x->x_nmirrors];
			if (req->mirrors[x->x_nmirrors].ref != NULL)
				req->mirrors[x->x_nmirrors].ref(
				    req->mirrors[x->x_nmirrors].hold);
		}
		x->x_mirrorauth = req->mirror_authorization;
		x->x_mirror = UPSTREAM_CHOOSE;
	}
	if ((x->x_regurl = strdup(req->url)) == NULL ||
	    upstream_set_url(x, req->url) == -1 ||
	    upstream_set_headers(x, req) == -1) {
		upstream_xfer_free(x);
		return NULL;
	}
	curl_easy_setopt(e, CURLOPT_PRIVATE, x);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "pullproxy/" PULLPROXY_VERSION);
	curl_easy_setopt(e, CURLOPT_NOBODY, req->head ? 1L : 0L);
	if (req->body != NULL) {
		/* Copied: the caller may wipe its form (secrets) at once. */
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
		    (curl_off_t)req->bodylen);
		curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, req->body);
	}
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	/*
	 * ACR answers blob GETs with 307 to blob storage. Since curl 7.83 a
	 * custom Authorization header goes to the original host and port
	 * only, and UNRESTRICTED_AUTH stays off.
	 */
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, req->no_redirect ? 0L : 1L);
	curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)UPSTREAM_MAX_REDIRS);
	curl_easy_setopt(e, CURLOPT_UNRESTRICTED_AUTH, 0L);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, req->connect_timeout_ms);
	/* A stalled transfer: under 1 byte/s for the stall time. Paused
	 * transfers are exempt from curl's speed check. */
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, req->stall_timeout_s);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long)UPSTREAM_BUFFER_SIZE);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, req->tls_verify ? 1L : 0L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, req->tls_verify ? 2L : 0L);
	/* With OpenSSL, CAINFO adds to the system CAPATH, not replaces it. */
	if (req->ca_file != NULL)
		curl_easy_setopt(e, CURLOPT_CAINFO, req->ca_file);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->x_errbuf);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, upstream_curl_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, upstream_curl_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, upstream_curl_open);
	curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, x);
	curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, upstream_curl_prereq);
	curl_easy_setopt(e, CURLOPT_PREREQDATA, x);

	TAILQ_INSERT_TAIL(&up->u_pending, x, x_entry);
	up->u_active++;
	upstream_schedule_kick(up);
	return x;
}

void
upstream_xfer_cancel(struct upstream_xfer *x)
{
	struct upstream *up;

	if (x == NULL || x->x_cancelled)
		return;
	x->x_cancelled = 1;
	if (x->x_state == XFER_DEAD)
		return;		/* finishing: upstream_check_done frees it */
	up = x->x_up;
	if (x->x_wait != NULL)
		x->x_auth->wait_cancel(x->x_wait);
	x->x_wait = NULL;
	ratelimit_leave(&x->x_rlwait);
	if (x->x_backoff != NULL)
		evtimer_del(x->x_backoff);
	circuit_abandon(x->x_circuit, x->x_probe);
	if (x->x_mirror >= 0)
		circuit_abandon(x->x_mirrors[x->x_mirror].circuit,
		    x->x_mprobe);
	TAILQ_REMOVE(upstream_queue(up, x), x, x_entry);
	x->x_state = XFER_DEAD;
	up->u_active--;
	TAILQ_INSERT_TAIL(&up->u_dead, x, x_entry);
	upstream_schedule_kick(up);
}

void
upstream_xfer_pause(struct upstream_xfer *x)
{
	curl_easy_pause(x->x_easy, CURLPAUSE_RECV);
}

void
upstream_xfer_resume(struct upstream_xfer *x)
{
	if (x->x_cancelled || x->x_state != XFER_RUNNING)
		return;
	/* May deliver buffered data to on_data before it returns. */
	curl_easy_pause(x->x_easy, CURLPAUSE_RECV_CONT);
}

long
upstream_xfer_status(const struct upstream_xfer *x)
{
	long status = 0;

	curl_easy_getinfo(x->x_easy, CURLINFO_RESPONSE_CODE, &status);
	return status;
}

const char *
upstream_xfer_header(const struct upstream_xfer *x, const char *name)
{
	struct curl_header *h;

	/* request -1: the last response, after any redirect */
	if (curl_easy_header(x->x_easy, name, 0, CURLH_HEADER, -1, &h) !=
	    CURLHE_OK)
		return NULL;
	return h->value;
}

const char *
upstream_xfer_url(const struct upstream_xfer *x)
{
	return x->x_url != NULL ? x->x_url : "";
}

const struct upstream_result *
upstream_xfer_result(const struct upstream_xfer *x)
{
	return x->x_res;
}

void
upstream_result_classify(struct classify_input *in,
    const struct upstream_result *res)
{
	if (res == NULL)
		return;
	in->curl = res->curl;
	in->os_errno = res->os_errno;
	in->connected = res->connected;
	in->headers = res->headers;
	in->redirected = res->redirects > 0;
	in->throttled = res->throttled;
	in->circuit = res->circuit;
}

struct circuit *
upstream_xfer_mirror_circuit(const struct upstream_xfer *x)
{
	return x->x_mirror >= 0 ? x->x_mirrors[x->x_mirror].circuit : NULL;
}
