/*
 * ratelimit: a token bucket and a two-class wait queue per registry, the
 * pause after a 429, and the AIMD controller that sets the bucket's rate.
 * One evtimer per registry wakes the queue when the next token is due,
 * the oldest wait expires, a pause ends or the rate's next step is due.
 */
#include <sys/queue.h>
#include <sys/time.h>

#include <event2/event.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
#include "ratelimit.h"

#define RATELIMIT_BACKOFF_MAX_MS	(60 * 1000)

TAILQ_HEAD(ratelimit_queue, ratelimit_wait);

struct ratelimit {
	struct event		*rl_timer;
	const char		*rl_name;
	int			 rl_metric;	/* metrics registry slot */
	struct ratelimit_bucket	 rl_bucket;
	struct ratelimit_aimd	 rl_aimd;
	double			 rl_rate;	/* configured: the ceiling's cap */
	double			 rl_burst;	/* configured, at rl_rate */
	uint64_t		 rl_max_wait_ms;
	struct ratelimit_queue	 rl_queue[RATELIMIT_NCLASS];
	int			 rl_depth[RATELIMIT_NCLASS];
	uint64_t		 rl_paused_until;	/* 0: not paused */
	uint64_t		 rl_pause_start;
	unsigned int		 rl_streak;	/* 429s in a row */
	unsigned long		 rl_absorbed;	/* 429s during this pause */
};

static uint64_t
ratelimit_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ the bucket */

void
ratelimit_bucket_init(struct ratelimit_bucket *b, double rate, double burst,
    uint64_t now_ms)
{
	b->b_rate = rate;
	b->b_burst = burst;
	b->b_tokens = burst;
	b->b_last_ms = now_ms;
}

/* b_last_ms may lie ahead (a pause): no tokens accrue before it. */
static void
ratelimit_bucket_refill(struct ratelimit_bucket *b, uint64_t now_ms)
{
	if (now_ms <= b->b_last_ms)
		return;
	b->b_tokens += (double)(now_ms - b->b_last_ms) * b->b_rate / 1000.0;
	if (b->b_tokens > b->b_burst)
		b->b_tokens = b->b_burst;
	b->b_last_ms = now_ms;
}

int
ratelimit_bucket_take(struct ratelimit_bucket *b, uint64_t now_ms)
{
	ratelimit_bucket_refill(b, now_ms);
	if (b->b_tokens < 1.0)
		return 0;
	b->b_tokens -= 1.0;
	return 1;
}

uint64_t
ratelimit_bucket_wait_ms(struct ratelimit_bucket *b, uint64_t now_ms)
{
	uint64_t ahead = 0, whole;
	double ms;

	ratelimit_bucket_refill(b, now_ms);
	if (b->b_tokens >= 1.0)
		return 0;
	if (b->b_last_ms > now_ms)
		ahead = b->b_last_ms - now_ms;
	/* Rounded up: at that time the token is there. */
	ms = (1.0 - b->b_tokens) * 1000.0 / b->b_rate;
	whole = (uint64_t)ms;
	return ahead + whole + (ms > (double)whole);
}

void
ratelimit_bucket_set(struct ratelimit_bucket *b, double rate, double burst,
    uint64_t now_ms)
{
	ratelimit_bucket_refill(b, now_ms);
	b->b_rate = rate;
	b->b_burst = burst;
	if (b->b_tokens > burst)
		b->b_tokens = burst;
}

/* ------------------------------------------------------------- the pace */

double
ratelimit_aimd_ceiling(double rate, double fleet_rate, unsigned int nodes)
{
	double share;

	if (fleet_rate <= 0)
		return rate;
	share = fleet_rate / (nodes > 0 ? nodes : 1);
	return share < rate ? share : rate;
}

void
ratelimit_aimd_init(struct ratelimit_aimd *a, double ceiling,
    uint64_t now_ms)
{
	a->a_rate = ceiling;
	a->a_ceiling = ceiling;
	a->a_cut_ms = 0;
	a->a_quiet_ms = now_ms;
}

double
ratelimit_aimd_floor(const struct ratelimit_aimd *a)
{
	return a->a_ceiling < RATELIMIT_AIMD_FLOOR ? a->a_ceiling :
	    RATELIMIT_AIMD_FLOOR;
}

int
ratelimit_aimd_cut(struct ratelimit_aimd *a, uint64_t now_ms,
    uint64_t sent_ms)
{
	double floor = ratelimit_aimd_floor(a);

	a->a_quiet_ms = now_ms;
	/* Sent before the last cut: that cut already answered it. */
	if (a->a_cut_ms != 0 && sent_ms <= a->a_cut_ms)
		return 0;
	a->a_cut_ms = now_ms;
	a->a_rate /= 2;
	if (a->a_rate < floor)
		a->a_rate = floor;
	return 1;
}

int
ratelimit_aimd_grow(struct ratelimit_aimd *a, uint64_t now_ms)
{
	uint64_t n;

	if (a->a_rate >= a->a_ceiling || now_ms < a->a_quiet_ms +
	    RATELIMIT_AIMD_QUIET_MS)
		return 0;
	n = (now_ms - a->a_quiet_ms) / RATELIMIT_AIMD_QUIET_MS;
	a->a_quiet_ms += n * RATELIMIT_AIMD_QUIET_MS;
	a->a_rate += (double)n * a->a_ceiling / RATELIMIT_AIMD_STEPS;
	if (a->a_rate > a->a_ceiling)
		a->a_rate = a->a_ceiling;
	return 1;
}

uint64_t
ratelimit_aimd_next_ms(const struct ratelimit_aimd *a)
{
	if (a->a_rate >= a->a_ceiling)
		return UINT64_MAX;
	return a->a_quiet_ms + RATELIMIT_AIMD_QUIET_MS;
}

void
ratelimit_aimd_set_ceiling(struct ratelimit_aimd *a, double ceiling,
    uint64_t now_ms)
{
	/* From the old ceiling the quiet interval starts now, not long ago. */
	if (a->a_rate >= a->a_ceiling)
		a->a_quiet_ms = now_ms;
	a->a_ceiling = ceiling;
	if (a->a_rate > ceiling)
		a->a_rate = ceiling;
}

long
ratelimit_retry_hint_s(uint64_t pause_left_ms, int queued, double rate)
{
	double s = (double)pause_left_ms / 1000.0 + (double)(queued + 1) /
	    rate;

	if (s > RATELIMIT_PAUSE_MAX_MS / 1000)
		return RATELIMIT_PAUSE_MAX_MS / 1000;
	if (s <= 1)
		return 1;
	return (long)s + (s > (double)(long)s);	/* rounded up */
}

/* ------------------------------------------------------ 429 and backoff */

long
ratelimit_retry_after_ms(const char *value, time_t now)
{
	struct tm tm;
	const char *p, *end;
	long secs;
	time_t t;

	while (*value == ' ' || *value == '\t')
		value++;
	if (isdigit((unsigned char)*value)) {
		for (p = value; isdigit((unsigned char)*p); p++)
			;
		for (end = p; *end == ' ' || *end == '\t'; end++)
			;
		if (*end != '\0')
			return -1;
		errno = 0;
		secs = strtol(value, NULL, 10);
		if (errno != 0 || secs > RATELIMIT_PAUSE_MAX_MS / 1000)
			return RATELIMIT_PAUSE_MAX_MS;
		return secs * 1000;
	}
	/* IMF-fixdate, the form servers send ("Sun, 06 Nov 1994 08:49:37 GMT"). */
	memset(&tm, 0, sizeof(tm));
	if ((end = strptime(value, "%a, %d %b %Y %H:%M:%S GMT", &tm)) ==
	    NULL || *end != '\0' || (t = timegm(&tm)) == (time_t)-1)
		return -1;
	if (t <= now)
		return 0;
	if (t - now > RATELIMIT_PAUSE_MAX_MS / 1000)
		return RATELIMIT_PAUSE_MAX_MS;
	return (long)(t - now) * 1000;
}

long
ratelimit_backoff_ms(unsigned int n, uint32_t random)
{
	long d = RATELIMIT_BACKOFF_MIN_MS;

	while (n-- > 1 && d < RATELIMIT_BACKOFF_MAX_MS)
		d *= 2;
	if (d > RATELIMIT_BACKOFF_MAX_MS)
		d = RATELIMIT_BACKOFF_MAX_MS;
	return d / 2 + (long)(random % (uint32_t)(d / 2 + 1));
}

/* ------------------------------------------------------------ the queue */

static int
ratelimit_paused(const struct ratelimit *rl, uint64_t now)
{
	return rl->rl_paused_until != 0 && now < rl->rl_paused_until;
}

static int
ratelimit_queued(const struct ratelimit *rl)
{
	return rl->rl_depth[RATELIMIT_HIGH] + rl->rl_depth[RATELIMIT_LOW];
}

static void
ratelimit_unlink(struct ratelimit_wait *w)
{
	struct ratelimit *rl = w->w_rl;

	TAILQ_REMOVE(&rl->rl_queue[w->w_class], w, w_entry);
	rl->rl_depth[w->w_class]--;
	metrics_rl_queue(rl->rl_metric, w->w_class, rl->rl_depth[w->w_class]);
	w->w_rl = NULL;
}

/*
 * Into w's class, oldest first: a new request goes last, one held after a
 * 429 back to where its first ask puts it. The head is the next deadline.
 */
static void
ratelimit_insert(struct ratelimit *rl, struct ratelimit_wait *w,
    ratelimit_cb cb, void *arg)
{
	struct ratelimit_queue *q = &rl->rl_queue[w->w_class];
	struct ratelimit_wait *o;

	w->w_rl = rl;
	w->w_cb = cb;
	w->w_arg = arg;
	TAILQ_FOREACH_REVERSE(o, q, ratelimit_queue, w_entry)
		if (o->w_since_ms <= w->w_since_ms)
			break;
	if (o != NULL)
		TAILQ_INSERT_AFTER(q, o, w, w_entry);
	else
		TAILQ_INSERT_HEAD(q, w, w_entry);
	rl->rl_depth[w->w_class]++;
	metrics_rl_queue(rl->rl_metric, w->w_class, rl->rl_depth[w->w_class]);
}

/* Who goes next: manifests first, unless the oldest blob has aged. */
static struct ratelimit_wait *
ratelimit_next(struct ratelimit *rl, uint64_t now)
{
	struct ratelimit_wait *hi = TAILQ_FIRST(&rl->rl_queue[RATELIMIT_HIGH]);
	struct ratelimit_wait *lo = TAILQ_FIRST(&rl->rl_queue[RATELIMIT_LOW]);

	if (hi == NULL)
		return lo;
	if (lo != NULL && now - lo->w_since_ms >= RATELIMIT_AGE_MS &&
	    lo->w_since_ms < hi->w_since_ms)
		return lo;
	return hi;
}

static void
ratelimit_schedule(struct ratelimit *rl, uint64_t now)
{
	struct ratelimit_wait *w;
	struct timeval tv;
	uint64_t at = UINT64_MAX;
	int c;

	if (rl->rl_paused_until != 0)	/* also a pause just over: log it */
		at = rl->rl_paused_until;
	else if (ratelimit_queued(rl) > 0)
		at = now + ratelimit_bucket_wait_ms(&rl->rl_bucket, now);
	if (ratelimit_aimd_next_ms(&rl->rl_aimd) < at)
		at = ratelimit_aimd_next_ms(&rl->rl_aimd);
	for (c = 0; c < RATELIMIT_NCLASS; c++)
		if ((w = TAILQ_FIRST(&rl->rl_queue[c])) != NULL &&
		    w->w_since_ms + rl->rl_max_wait_ms < at)
			at = w->w_since_ms + rl->rl_max_wait_ms;
	if (at == UINT64_MAX) {
		evtimer_del(rl->rl_timer);
		return;
	}
	at = at > now ? at - now : 0;
	tv.tv_sec = (time_t)(at / 1000);
	tv.tv_usec = (suseconds_t)(at % 1000) * 1000;
	evtimer_add(rl->rl_timer, &tv);
}

/* The bucket follows the controller; the burst shrinks with the rate. */
static void
ratelimit_apply(struct ratelimit *rl, uint64_t now)
{
	double rate = rl->rl_aimd.a_rate;
	double burst = rl->rl_burst * rate / rl->rl_rate;

	ratelimit_bucket_set(&rl->rl_bucket, rate, burst < 1 ? 1 : burst, now);
	metrics_rl_rate(rl->rl_metric, rate, rl->rl_aimd.a_ceiling);
	metrics_rl_tokens(rl->rl_metric, rl->rl_bucket.b_tokens);
}

/* The steps due by now; logged when they reach the ceiling. */
static void
ratelimit_grow(struct ratelimit *rl, uint64_t now)
{
	if (!ratelimit_aimd_grow(&rl->rl_aimd, now))
		return;
	ratelimit_apply(rl, now);
	if (rl->rl_aimd.a_rate >= rl->rl_aimd.a_ceiling)
		log_event(LOG_LEVEL_INFO, "upstream rate at ceiling",
		    json_pack("{s:s,s:f}", "registry", rl->rl_name, "rate",
		    rl->rl_aimd.a_rate));
}

static void
ratelimit_pause_end(struct ratelimit *rl, uint64_t now)
{
	log_event(LOG_LEVEL_INFO, "upstream pause ended", json_pack(
	    "{s:s,s:I,s:I,s:i}", "registry", rl->rl_name, "ms",
	    (json_int_t)(now - rl->rl_pause_start), "throttled",
	    (json_int_t)rl->rl_absorbed, "queued", ratelimit_queued(rl)));
	rl->rl_paused_until = 0;
	rl->rl_absorbed = 0;
	metrics_rl_paused(rl->rl_metric, 0);
}

/* Admit what the bucket allows, then fail what waited too long. */
static void
ratelimit_run(evutil_socket_t fd, short what, void *arg)
{
	struct ratelimit *rl = arg;
	struct ratelimit_wait *w;
	uint64_t now = ratelimit_now_ms();
	ratelimit_cb cb;
	int c;

	(void)fd;
	(void)what;
	ratelimit_grow(rl, now);
	if (rl->rl_paused_until != 0 && !ratelimit_paused(rl, now))
		ratelimit_pause_end(rl, now);
	/* Each callback may enter or leave: take the heads afresh. */
	while (!ratelimit_paused(rl, now) &&
	    (w = ratelimit_next(rl, now)) != NULL &&
	    ratelimit_bucket_take(&rl->rl_bucket, now)) {
		ratelimit_unlink(w);
		metrics_rl_wait(rl->rl_metric,
		    (double)(now - w->w_since_ms) / 1000.0);
		w->w_sent_ms = now;
		cb = w->w_cb;
		cb(w->w_arg, 1);
	}
	for (c = 0; c < RATELIMIT_NCLASS; c++)
		while ((w = TAILQ_FIRST(&rl->rl_queue[c])) != NULL &&
		    now - w->w_since_ms >= rl->rl_max_wait_ms) {
			ratelimit_unlink(w);
			metrics_rl_rejected(rl->rl_metric);
			cb = w->w_cb;
			cb(w->w_arg, 0);
		}
	metrics_rl_tokens(rl->rl_metric, rl->rl_bucket.b_tokens);
	ratelimit_schedule(rl, now);
}

/* ------------------------------------------------------------ interface */

struct ratelimit *
ratelimit_new(struct event_base *base, const char *name, double rate,
    double burst, long max_wait_s)
{
	struct ratelimit *rl;
	int c;

	if ((rl = calloc(1, sizeof(*rl))) == NULL)
		return NULL;
	if ((rl->rl_timer = evtimer_new(base, ratelimit_run, rl)) == NULL) {
		free(rl);
		return NULL;
	}
	rl->rl_name = name;
	rl->rl_metric = metrics_registry(name);
	rl->rl_max_wait_ms = (uint64_t)max_wait_s * 1000;
	rl->rl_rate = rate;
	rl->rl_burst = burst;
	ratelimit_bucket_init(&rl->rl_bucket, rate, burst, ratelimit_now_ms());
	ratelimit_aimd_init(&rl->rl_aimd, rate, ratelimit_now_ms());
	for (c = 0; c < RATELIMIT_NCLASS; c++)
		TAILQ_INIT(&rl->rl_queue[c]);
	metrics_rl_tokens(rl->rl_metric, burst);
	metrics_rl_rate(rl->rl_metric, rate, rate);
	return rl;
}

void
ratelimit_fleet(struct ratelimit *rl, double fleet_rate, unsigned int nodes)
{
	uint64_t now = ratelimit_now_ms();
	double ceiling = ratelimit_aimd_ceiling(rl->rl_rate, fleet_rate, nodes);

	if (ceiling == rl->rl_aimd.a_ceiling)
		return;
	ratelimit_grow(rl, now);
	ratelimit_aimd_set_ceiling(&rl->rl_aimd, ceiling, now);
	ratelimit_apply(rl, now);
	log_event(LOG_LEVEL_INFO, "upstream rate ceiling", json_pack(
	    "{s:s,s:f,s:f,s:i,s:f}", "registry", rl->rl_name, "ceiling",
	    ceiling, "fleet_rate", fleet_rate, "nodes", (int)nodes, "rate",
	    rl->rl_aimd.a_rate));
	ratelimit_schedule(rl, now);
}

double
ratelimit_rate(struct ratelimit *rl)
{
	ratelimit_grow(rl, ratelimit_now_ms());
	return rl->rl_aimd.a_rate;
}

void
ratelimit_free(struct ratelimit *rl)
{
	struct ratelimit_wait *w;
	int c;

	if (rl == NULL)
		return;
	for (c = 0; c < RATELIMIT_NCLASS; c++)
		while ((w = TAILQ_FIRST(&rl->rl_queue[c])) != NULL)
			ratelimit_unlink(w);
	event_free(rl->rl_timer);
	free(rl);
}

int
ratelimit_enter(struct ratelimit *rl, struct ratelimit_wait *w,
    enum ratelimit_class cls, ratelimit_cb cb, void *arg)
{
	uint64_t now = ratelimit_now_ms();

	ratelimit_grow(rl, now);
	w->w_class = cls;
	w->w_since_ms = now;
	/* FIFO: nobody overtakes a queue, even when a token is there. */
	if (!ratelimit_paused(rl, now) && ratelimit_queued(rl) == 0 &&
	    ratelimit_bucket_take(&rl->rl_bucket, now)) {
		w->w_sent_ms = now;
		metrics_rl_wait(rl->rl_metric, 0.0);
		metrics_rl_tokens(rl->rl_metric, rl->rl_bucket.b_tokens);
		return 1;
	}
	if (ratelimit_queued(rl) >= RATELIMIT_QUEUE_MAX) {
		metrics_rl_rejected(rl->rl_metric);
		return -1;
	}
	ratelimit_insert(rl, w, cb, arg);
	ratelimit_schedule(rl, now);
	return 0;
}

int
ratelimit_hold(struct ratelimit *rl, struct ratelimit_wait *w,
    ratelimit_cb cb, void *arg)
{
	uint64_t now = ratelimit_now_ms();

	if (now - w->w_since_ms >= rl->rl_max_wait_ms) {
		metrics_rl_rejected(rl->rl_metric);
		return -1;
	}
	ratelimit_insert(rl, w, cb, arg);
	ratelimit_schedule(rl, now);
	return 0;
}

long
ratelimit_retry_after_s(struct ratelimit *rl)
{
	uint64_t now = ratelimit_now_ms();

	ratelimit_grow(rl, now);
	return ratelimit_retry_hint_s(ratelimit_paused(rl, now) ?
	    rl->rl_paused_until - now : 0, ratelimit_queued(rl),
	    rl->rl_aimd.a_rate);
}

void
ratelimit_leave(struct ratelimit_wait *w)
{
	if (w->w_rl != NULL)
		ratelimit_unlink(w);
}

void
ratelimit_answered(struct ratelimit *rl, struct ratelimit_wait *w,
    long status, const char *retry_after)
{
	uint64_t now = ratelimit_now_ms(), sent;
	double was = rl->rl_aimd.a_rate;
	long delay = -1;
	int fresh;

	metrics_upstream(rl->rl_metric, status);
	ratelimit_grow(rl, now);
	if (status != 429) {
		rl->rl_streak = 0;
		return;
	}
	metrics_rl_429(rl->rl_metric);
	sent = w != NULL && w->w_sent_ms != 0 ? w->w_sent_ms :
	    now - (now > RATELIMIT_RTT_MS ? RATELIMIT_RTT_MS : now);
	/*
	 * Only a new congestion event cuts, and counts as one more 429 in a
	 * row for the backoff: twenty answers to one burst are one event.
	 */
	if ((fresh = ratelimit_aimd_cut(&rl->rl_aimd, now, sent))) {
		rl->rl_streak++;
		ratelimit_apply(rl, now);
		log_event(LOG_LEVEL_WARN, "upstream rate cut", json_pack(
		    "{s:s,s:f,s:f,s:f}", "registry", rl->rl_name, "from", was,
		    "rate", rl->rl_aimd.a_rate, "ceiling",
		    rl->rl_aimd.a_ceiling));
	}
	if (retry_after != NULL)
		delay = ratelimit_retry_after_ms(retry_after, time(NULL));
	if (delay < 0 && fresh)
		delay = ratelimit_backoff_ms(rl->rl_streak, arc4random());
	if (ratelimit_paused(rl, now)) {
		/* Answers to requests sent before the pause: counted, not logged. */
		rl->rl_absorbed++;
		if (delay >= 0 && now + (uint64_t)delay > rl->rl_paused_until)
			rl->rl_paused_until = now + (uint64_t)delay;
	} else if (delay >= 0) {
		rl->rl_paused_until = now + (uint64_t)delay;
		rl->rl_pause_start = now;
		rl->rl_absorbed = 1;
		metrics_rl_paused(rl->rl_metric, 1);
		log_event(LOG_LEVEL_WARN, "upstream throttled: pausing",
		    json_pack("{s:s,s:s?,s:I,s:i}", "registry", rl->rl_name,
		    "retry_after", retry_after, "pause_ms", (json_int_t)delay,
		    "queued", ratelimit_queued(rl)));
	}
	/* Come back at the rate in force, not with a burst. */
	if (rl->rl_paused_until != 0) {
		rl->rl_bucket.b_tokens = 0;
		rl->rl_bucket.b_last_ms = rl->rl_paused_until;
	}
	ratelimit_schedule(rl, now);
}
