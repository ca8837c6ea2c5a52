/*
 * ratelimit: one handle per registry that paces what goes to it. A token
 * bucket admits upstream requests; a request that finds it empty waits in
 * a bounded queue instead of failing. Two classes: tag resolution,
 * manifests and token fetches (small, they unblock pods) before blobs;
 * oldest first within a class. A blob that has waited RATELIMIT_AGE_MS
 * goes before newer manifests, so a steady stream of manifests cannot
 * starve layers. A wait longer than max_wait_s ends with "throttled".
 *
 * The pace is found, not configured (AIMD, as TCP does it): the bucket's
 * rate starts at the ceiling, min(rate, fleet_rate / nodes); a 429 halves
 * it (one cut per congestion event: 429s answering requests sent before
 * the last cut are that cut's), never below RATELIMIT_AIMD_FLOOR; each
 * RATELIMIT_AIMD_QUIET_MS without a 429 adds a tenth of the ceiling back.
 * The burst shrinks with the rate. Logged when cut ("upstream rate cut")
 * and when back at the ceiling ("upstream rate at ceiling"); the
 * pullproxy_ratelimit_rate gauge is the rate in force.
 *
 * A 429 also pauses the registry: Retry-After (seconds or an HTTP date)
 * when given, else exponential backoff with jitter; nothing is admitted
 * until the pause ends (the queue holds the requests). Logged when the
 * pause starts and, with the count of 429s it absorbed, when it ends.
 *
 * Hold and resend (the transport's part, upstream.c): a request answered
 * 429 is not failed. The caller keeps the 429 from its client, reports it
 * (ratelimit_answered), then ratelimit_hold() puts it back in its class
 * at its original place (by the time it first asked), so it goes again
 * first when the pause ends, and its total wait, resends included, stays
 * within max_wait_s. Only a request that cannot be sent within max_wait_s
 * ends "throttled"; the caller then answers 503 TOOMANYREQUESTS with
 * Retry-After: ratelimit_retry_after_s() (docs/pacing.md says why 503,
 * why held to the deadline, and what containerd does with it). The same
 * holds for a token fetch and for a blob's redirect to storage: their
 * 429s are the registry's too.
 *
 *   enter -> 1: send / 0: wait for cb / -1: queue full, answer 503 now
 *   cb(arg, 1): send now;  cb(arg, 0): deadline reached, answer 503
 *   final status -> ratelimit_answered(rl, w, status, Retry-After)
 *   status 429   -> ratelimit_hold(rl, w, cb, arg):
 *                   0: held, cb as above / -1: deadline passed, answer 503
 *
 * Only requests that reach upstream come here (upstream.c): cache hits
 * and coalesced waiters never do. Everything runs from the event loop on
 * one timer per registry; nothing blocks.
 */
#ifndef PP_RATELIMIT_H
#define PP_RATELIMIT_H

#include <sys/queue.h>
#include <sys/time.h>

#include <stdint.h>
#include <time.h>

struct event_base;
struct ratelimit;

enum ratelimit_class {
	RATELIMIT_HIGH = 0,	/* tags, manifests, token fetches */
	RATELIMIT_LOW,		/* blobs */
	RATELIMIT_NCLASS,
};

/* A blob waiting this long goes before any newer manifest. */
#define RATELIMIT_AGE_MS	5000
/* Requests waiting at once per registry; more are refused at once. */
#define RATELIMIT_QUEUE_MAX	4096
/* Bounds of a pause: a silly Retry-After is capped. */
#define RATELIMIT_BACKOFF_MIN_MS	1000
#define RATELIMIT_PAUSE_MAX_MS		(300 * 1000)

/*
 * AIMD (Chiu and Jain, 1989). Nodes that each halve their rate on a
 * congestion signal and add the same step per interval converge to equal
 * shares: every cut halves the difference between two nodes' rates and
 * the equal steps leave it alone, so after 5 cuts two nodes are within
 * 3% of each other, wherever they started.
 *
 * Halving: a registry throttling at C while this node sent at 2C or less
 * is under C after one cut; 429s to requests already on their way (sent
 * before the cut) are the same event, or a burst of 20 would cut 20 times.
 *
 * The step, ceiling / 10 every 5 s: back from half the ceiling in 25 s,
 * from the floor to it in under a minute. 5 s is well over the time a
 * 429 takes to come back (under a second), so a step's overshoot is seen
 * before the next step. K nodes at the default ceiling 10/s sharing a
 * registry that allows C add K/s every 5 s between them and oscillate
 * between about C/2 and C (75% of C on average). With K = 1 and C = 4
 * (the registry): 10 -> 5 -> 2.5, then 3.5, 4.5 -> 2.25 ...: a
 * cut every 10 to 15 s, each costing the few 429s of one overshoot, which
 * hold and resend absorb. When K/s nears C (K = 4, C = 4) every step
 * overshoots, and a fleet larger than C / 0.2 sits at the floor and still
 * draws 429s: that is what fleet_rate is for (below).
 *
 * The floor, 0.2/s (one request per 5 s): a node never stops probing, and
 * 80 nodes at the floor spend 16/s, ACR Basic's whole budget; a ceiling
 * below it (fleet_rate / nodes) is the floor.
 *
 * Fleet budget: fleet_rate per registry is what the whole cluster may
 * spend on it (ACR Standard: 3,000 ReadOps/min = 50/s); each node's
 * ceiling is fleet_rate / nodes, so nodes at their ceilings never draw a
 * 429 from their own traffic, and AIMD handles the rest (other clients,
 * a miscounted fleet).
 */
#define RATELIMIT_AIMD_FLOOR		0.2
#define RATELIMIT_AIMD_QUIET_MS		5000
#define RATELIMIT_AIMD_STEPS		10	/* step = ceiling / 10 */
/* When a 429's request is not known, it was sent this long before. */
#define RATELIMIT_RTT_MS		1000

/*
 * ok: 1 when admitted (send now), 0 when the request cannot be sent within
 * max_wait_s of when it first asked (answer 503 with Retry-After).
 */
typedef void (*ratelimit_cb)(void *arg, int ok);

/* A place in the queue, kept by the caller (no allocation per wait). */
struct ratelimit_wait {
	TAILQ_ENTRY(ratelimit_wait) w_entry;
	struct ratelimit	*w_rl;		/* NULL: not queued */
	enum ratelimit_class	 w_class;
	uint64_t		 w_since_ms;	/* first asked: the deadline's start */
	uint64_t		 w_sent_ms;	/* last admitted; 0: never */
	ratelimit_cb		 w_cb;
	void			*w_arg;
};

/*
 * rate: requests per second (> 0), burst: bucket size (>= 1), max_wait_s:
 * longest wait in the queue. name is the registry's, for logs and metrics;
 * it must outlive the handle.
 */
struct ratelimit *ratelimit_new(struct event_base *base, const char *name,
    double rate, double burst, long max_wait_s);
/* Waits still queued are dropped: cancel their owners first. */
void ratelimit_free(struct ratelimit *rl);

/*
 * The fleet's budget for this registry (fleet_rate, requests per second
 * for the whole cluster; 0: none) and how many nodes share it now (0:
 * not known, taken as 1). The ceiling becomes min(rate, fleet_rate /
 * nodes): a lower one applies at once, a higher one is grown to
 * additively. The server calls it at start with fleet_nodes (or the
 * peers configured), the fleet whenever the live count changes.
 */
void ratelimit_fleet(struct ratelimit *rl, double fleet_rate,
    unsigned int nodes);

/*
 * Ask to send one request; w is the request's for its whole life (its
 * first ask starts the max_wait_s deadline). Returns 1 when a token was
 * taken (send now), 0 when queued (cb runs later from the loop, never
 * from inside this call), -1 when the queue is full (fail the request as
 * throttled).
 */
int ratelimit_enter(struct ratelimit *rl, struct ratelimit_wait *w,
    enum ratelimit_class cls, ratelimit_cb cb, void *arg);
/* Leave the queue: cb will not run. Harmless when not queued. */
void ratelimit_leave(struct ratelimit_wait *w);

/*
 * The final status of a request admitted with w (the registry's, or its
 * storage's after a redirect; not a mirror's), retry_after the answer's
 * Retry-After or NULL. Counted; a 429 pauses the registry and, when the
 * request was sent after the last cut, cuts the rate. w NULL: the send
 * time is not known and taken as RATELIMIT_RTT_MS ago.
 */
void ratelimit_answered(struct ratelimit *rl, struct ratelimit_wait *w,
    long status, const char *retry_after);

/*
 * Hold and resend: w's request was answered 429 (reported first with
 * ratelimit_answered). It goes back into its class's queue at its
 * original place (oldest first, so at or near the head, before anything
 * that asked after it) with its original deadline; the queue's cap does
 * not apply (it held a place already). Returns 0 when held: cb(arg, 1)
 * sends it again once the pause ends and a token is there, cb(arg, 0)
 * when its deadline comes first. Returns -1 when the deadline has passed
 * already: answer it now as for cb(arg, 0).
 */
int ratelimit_hold(struct ratelimit *rl, struct ratelimit_wait *w,
    ratelimit_cb cb, void *arg);

/*
 * For a 503 after the deadline: whole seconds until a request asking now
 * would likely be sent (the pause left, then the queue at the rate in
 * force), 1 to RATELIMIT_PAUSE_MAX_MS / 1000.
 */
long ratelimit_retry_after_s(struct ratelimit *rl);

/* The rate admitted now, requests per second (tests, check). */
double ratelimit_rate(struct ratelimit *rl);

/* The pieces below are pure, for the unit tests. */

struct ratelimit_bucket {
	double		 b_rate;	/* tokens per second */
	double		 b_burst;	/* most tokens held */
	double		 b_tokens;
	uint64_t	 b_last_ms;	/* when b_tokens was computed */
};

void ratelimit_bucket_init(struct ratelimit_bucket *b, double rate,
    double burst, uint64_t now_ms);
/* Take one token if there is one: 1, else 0. */
int ratelimit_bucket_take(struct ratelimit_bucket *b, uint64_t now_ms);
/* Milliseconds until a token is there (0: now). */
uint64_t ratelimit_bucket_wait_ms(struct ratelimit_bucket *b,
    uint64_t now_ms);
/* A new rate and burst from now on; tokens accrued so far are kept. */
void ratelimit_bucket_set(struct ratelimit_bucket *b, double rate,
    double burst, uint64_t now_ms);

/* The AIMD controller (see above); the caller applies a_rate. */
struct ratelimit_aimd {
	double		 a_rate;	/* admitted now */
	double		 a_ceiling;
	uint64_t	 a_cut_ms;	/* the last cut; 0: none yet */
	uint64_t	 a_quiet_ms;	/* growth counts from here */
};

/* min(rate, fleet_rate / nodes); fleet_rate 0: rate; nodes 0: 1. */
double ratelimit_aimd_ceiling(double rate, double fleet_rate,
    unsigned int nodes);
void ratelimit_aimd_init(struct ratelimit_aimd *a, double ceiling,
    uint64_t now_ms);
/*
 * A 429 at now_ms to a request sent at sent_ms. Returns 1 when it is a
 * new congestion event (the rate was halved, or is at the floor), 0 when
 * it belongs to the last cut. Either way the quiet interval starts over.
 */
int ratelimit_aimd_cut(struct ratelimit_aimd *a, uint64_t now_ms,
    uint64_t sent_ms);
/* The steps due by now_ms; 1 when the rate changed. */
int ratelimit_aimd_grow(struct ratelimit_aimd *a, uint64_t now_ms);
/* When the next step is due; UINT64_MAX at the ceiling. */
uint64_t ratelimit_aimd_next_ms(const struct ratelimit_aimd *a);
/* A new ceiling: applies at once downwards, grown to upwards. */
void ratelimit_aimd_set_ceiling(struct ratelimit_aimd *a, double ceiling,
    uint64_t now_ms);
/* The lowest rate: RATELIMIT_AIMD_FLOOR, or the ceiling if lower. */
double ratelimit_aimd_floor(const struct ratelimit_aimd *a);

/* The Retry-After for a deadline's 503 (see ratelimit_retry_after_s). */
long ratelimit_retry_hint_s(uint64_t pause_left_ms, int queued, double rate);

/*
 * Retry-After (RFC 9110 10.2.3): delay-seconds or an HTTP date. Returns
 * the delay in milliseconds from now (0 for a date in the past), or -1
 * when value is malformed.
 */
long ratelimit_retry_after_ms(const char *value, time_t now);

/*
 * The pause after the n-th 429 in a row (n >= 1) without Retry-After
 * (429s to requests sent before the last cut are not counted again):
 * 1 s doubled per 429 up to 60 s, then a random point in its upper half
 * (jitter: nodes throttled together do not come back together).
 */
long ratelimit_backoff_ms(unsigned int n, uint32_t random);

#endif
