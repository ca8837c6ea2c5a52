/*
 * ratelimit: one handle per registry that paces what goes to it. A token
 * bucket (rate per second, burst) admits upstream requests; a request
 * that finds it empty waits in a bounded queue instead of failing. Two
 * classes: tag resolution, manifests and token fetches (small, they
 * unblock pods) before blobs; first come first served within a class. A
 * blob that has waited RATELIMIT_AGE_MS goes before newer manifests, so
 * a steady stream of manifests cannot starve layers. A wait longer than
 * max_wait_s ends with "throttled": the caller answers 503 at once.
 *
 * An upstream 429 pauses the registry: Retry-After (seconds or an HTTP
 * date) when given, else exponential backoff with jitter; nothing is
 * admitted until the pause ends (the queue holds the requests). Logged
 * when the pause starts and, with the count of 429s it absorbed, when it
 * ends.
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

/* ok: 1 when admitted (send now), 0 when the wait exceeded max_wait_s. */
typedef void (*ratelimit_cb)(void *arg, int ok);

/* A place in the queue, kept by the caller (no allocation per wait). */
struct ratelimit_wait {
	TAILQ_ENTRY(ratelimit_wait) w_entry;
	struct ratelimit	*w_rl;		/* NULL: not queued */
	enum ratelimit_class	 w_class;
	uint64_t		 w_since_ms;
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
 * Ask to send one request. Returns 1 when a token was taken (send now),
 * 0 when queued (cb runs later from the loop, never from inside this
 * call), -1 when the queue is full (fail the request as throttled).
 */
int ratelimit_enter(struct ratelimit *rl, struct ratelimit_wait *w,
    enum ratelimit_class cls, ratelimit_cb cb, void *arg);
/* Leave the queue: cb will not run. Harmless when not queued. */
void ratelimit_leave(struct ratelimit_wait *w);

/*
 * The final status of a request sent to the registry. A 429 pauses it
 * (retry_after: the response's Retry-After value, or NULL).
 */
void ratelimit_observe(struct ratelimit *rl, long status,
    const char *retry_after);

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

/*
 * Retry-After (RFC 9110 10.2.3): delay-seconds or an HTTP date. Returns
 * the delay in milliseconds from now (0 for a date in the past), or -1
 * when value is malformed.
 */
long ratelimit_retry_after_ms(const char *value, time_t now);

/*
 * The pause after the n-th 429 in a row (n >= 1) without Retry-After:
 * 1 s doubled per 429 up to 60 s, then a random point in its upper half
 * (jitter: nodes throttled together do not come back together).
 */
long ratelimit_backoff_ms(unsigned int n, uint32_t random);

#endif
