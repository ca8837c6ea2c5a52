#include <sys/time.h>

#include <unistd.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "log.h"
#include "metrics.h"
#include "ratelimit.h"

static void
test_bucket(void **state)
{
	struct ratelimit_bucket b;
	int i;

	(void)state;
	/* 20/s, burst 10: ten at once, then one per 50 ms. */
	ratelimit_bucket_init(&b, 20, 10, 1000);
	for (i = 0; i < 10; i++)
		assert_int_equal(ratelimit_bucket_take(&b, 1000), 1);
	assert_int_equal(ratelimit_bucket_take(&b, 1000), 0);
	assert_int_equal(ratelimit_bucket_wait_ms(&b, 1000), 50);
	assert_int_equal(ratelimit_bucket_wait_ms(&b, 1030), 20);
	assert_int_equal(ratelimit_bucket_take(&b, 1049), 0);
	assert_int_equal(ratelimit_bucket_take(&b, 1050), 1);
	assert_int_equal(ratelimit_bucket_take(&b, 1050), 0);
	/* A long quiet spell fills it to the burst, no more. */
	b.b_tokens = 0;
	assert_int_equal(ratelimit_bucket_wait_ms(&b, 100000), 0);
	assert_true(b.b_tokens == 10);
	/* A clock that goes back adds nothing. */
	assert_int_equal(ratelimit_bucket_take(&b, 500), 1);
	assert_true(b.b_tokens == 9);
	/* Tokens that start in the future (a pause) wait for it. */
	b.b_tokens = 0;
	b.b_last_ms = 200000;
	assert_int_equal(ratelimit_bucket_wait_ms(&b, 199000), 1050);
	assert_int_equal(ratelimit_bucket_take(&b, 200049), 0);
	assert_int_equal(ratelimit_bucket_take(&b, 200050), 1);
	/* Half a request per second. */
	ratelimit_bucket_init(&b, 0.5, 1, 0);
	assert_int_equal(ratelimit_bucket_take(&b, 0), 1);
	assert_int_equal(ratelimit_bucket_wait_ms(&b, 0), 2000);
}

static void
test_retry_after(void **state)
{
	time_t now = 784111777;	/* Sun, 06 Nov 1994 08:49:37 GMT */

	(void)state;
	assert_int_equal(ratelimit_retry_after_ms("2", now), 2000);
	assert_int_equal(ratelimit_retry_after_ms(" 0 ", now), 0);
	assert_int_equal(ratelimit_retry_after_ms("120", now), 120000);
	/* Capped: a registry cannot stop a node for a day. */
	assert_int_equal(ratelimit_retry_after_ms("86400", now),
	    RATELIMIT_PAUSE_MAX_MS);
	assert_int_equal(ratelimit_retry_after_ms("99999999999999999999", now),
	    RATELIMIT_PAUSE_MAX_MS);
	assert_int_equal(ratelimit_retry_after_ms(
	    "Sun, 06 Nov 1994 08:49:40 GMT", now), 3000);
	assert_int_equal(ratelimit_retry_after_ms(
	    "Sun, 06 Nov 1994 08:49:37 GMT", now), 0);
	assert_int_equal(ratelimit_retry_after_ms(
	    "Sat, 05 Nov 1994 08:49:37 GMT", now), 0);
	assert_int_equal(ratelimit_retry_after_ms(
	    "Mon, 07 Nov 1994 08:49:37 GMT", now), RATELIMIT_PAUSE_MAX_MS);
	assert_int_equal(ratelimit_retry_after_ms("", now), -1);
	assert_int_equal(ratelimit_retry_after_ms("-1", now), -1);
	assert_int_equal(ratelimit_retry_after_ms("1.5", now), -1);
	assert_int_equal(ratelimit_retry_after_ms("2 s", now), -1);
	assert_int_equal(ratelimit_retry_after_ms("soon", now), -1);
	assert_int_equal(ratelimit_retry_after_ms(
	    "Sun, 06 Nov 1994 08:49:40", now), -1);
	assert_int_equal(ratelimit_retry_after_ms(
	    "Sun, 06 Nov 1994 08:49:40 GMT trailing", now), -1);
}

static void
test_backoff(void **state)
{
	unsigned int n;
	long lo, hi, d;

	(void)state;
	for (n = 1; n <= 40; n++) {
		d = n >= 7 ? 60000 : 1000L << (n - 1);
		lo = ratelimit_backoff_ms(n, 0);
		hi = ratelimit_backoff_ms(n, UINT32_MAX);
		/* Jitter in the upper half of the step, never past 60 s. */
		assert_true(lo >= d / 2 && lo <= d);
		assert_true(hi >= d / 2 && hi <= d);
		assert_true(ratelimit_backoff_ms(n, 12345) <= 60000);
	}
	assert_int_equal(ratelimit_backoff_ms(1, 0), 500);
	assert_int_equal(ratelimit_backoff_ms(1, 500), 1000);
	assert_int_equal(ratelimit_backoff_ms(2, 0), 1000);
	assert_int_equal(ratelimit_backoff_ms(100, 0), 30000);
}

static void
test_bucket_set(void **state)
{
	struct ratelimit_bucket b;

	(void)state;
	/* Tokens accrued at the old rate are kept; the new rate from now. */
	ratelimit_bucket_init(&b, 10, 20, 0);
	b.b_tokens = 0;
	ratelimit_bucket_set(&b, 2, 20, 500);
	assert_true(b.b_tokens == 5);
	assert_int_equal(ratelimit_bucket_wait_ms(&b, 500), 0);
	b.b_tokens = 0;
	assert_int_equal(ratelimit_bucket_wait_ms(&b, 500), 500);
	/* A smaller burst caps what is held. */
	b.b_tokens = 15;
	ratelimit_bucket_set(&b, 2, 4, 500);
	assert_true(b.b_tokens == 4);
	/* During a pause (tokens due in the future) nothing accrues. */
	b.b_tokens = 0;
	b.b_last_ms = 9000;
	ratelimit_bucket_set(&b, 1, 4, 600);
	assert_true(b.b_tokens == 0);
	assert_int_equal(ratelimit_bucket_wait_ms(&b, 600), 8400 + 1000);
}

static void
test_aimd_cut_and_grow(void **state)
{
	struct ratelimit_aimd a;

	(void)state;
	ratelimit_aimd_init(&a, 10, 1000);
	assert_true(a.a_rate == 10);
	assert_int_equal(ratelimit_aimd_grow(&a, 60000), 0);	/* at ceiling */
	assert_true(ratelimit_aimd_next_ms(&a) == UINT64_MAX);
	/* A 429: halved. */
	assert_int_equal(ratelimit_aimd_cut(&a, 2000, 1900), 1);
	assert_true(a.a_rate == 5);
	/* The rest of that burst's 429s (sent before the cut): one event. */
	assert_int_equal(ratelimit_aimd_cut(&a, 2100, 1950), 0);
	assert_int_equal(ratelimit_aimd_cut(&a, 2600, 2000), 0);
	assert_true(a.a_rate == 5);
	/* A request sent after the cut drew one too: a new event. */
	assert_int_equal(ratelimit_aimd_cut(&a, 3000, 2700), 1);
	assert_true(a.a_rate == 2.5);
	/* Growth waits for a quiet interval after the last 429. */
	assert_int_equal(ratelimit_aimd_grow(&a, 3000 + 4999), 0);
	assert_true(a.a_rate == 2.5);
	assert_true(ratelimit_aimd_next_ms(&a) == 8000);
	assert_int_equal(ratelimit_aimd_grow(&a, 8000), 1);
	assert_true(a.a_rate == 3.5);	/* a tenth of the ceiling */
	assert_int_equal(ratelimit_aimd_grow(&a, 8000), 0);
	assert_true(ratelimit_aimd_next_ms(&a) == 13000);
	/* A 429 that is no new event still restarts the quiet interval. */
	assert_int_equal(ratelimit_aimd_cut(&a, 12000, 2900), 0);
	assert_int_equal(ratelimit_aimd_grow(&a, 13000), 0);
	assert_true(a.a_rate == 3.5);
	/* Intervals missed (no timer ran) count all at once. */
	assert_int_equal(ratelimit_aimd_grow(&a, 12000 + 3 * 5000 + 10), 1);
	assert_true(a.a_rate > 6.49 && a.a_rate < 6.51);
	assert_true(ratelimit_aimd_next_ms(&a) == 12000 + 4 * 5000);
	/* Never past the ceiling. */
	assert_int_equal(ratelimit_aimd_grow(&a, 1000000), 1);
	assert_true(a.a_rate == 10);
	assert_true(ratelimit_aimd_next_ms(&a) == UINT64_MAX);
}

static void
test_aimd_floor(void **state)
{
	struct ratelimit_aimd a;
	uint64_t t;

	(void)state;
	ratelimit_aimd_init(&a, 10, 0);
	/* 10 / 2^6 < 0.2: the floor holds it, and each event still counts. */
	for (t = 1000; t <= 10000; t += 1000)
		assert_int_equal(ratelimit_aimd_cut(&a, t, t - 1), 1);
	assert_true(a.a_rate == RATELIMIT_AIMD_FLOOR);
	assert_true(ratelimit_aimd_floor(&a) == RATELIMIT_AIMD_FLOOR);
	/* From the floor, a tenth of the ceiling per quiet interval. */
	assert_int_equal(ratelimit_aimd_grow(&a, 15000), 1);
	assert_true(a.a_rate > 1.19 && a.a_rate < 1.21);
	/* A ceiling under the floor (a big fleet) is the floor. */
	ratelimit_aimd_init(&a, 0.05, 0);
	assert_int_equal(ratelimit_aimd_cut(&a, 1000, 500), 1);
	assert_true(a.a_rate == 0.05);
}

static void
test_aimd_ceiling(void **state)
{
	struct ratelimit_aimd a;

	(void)state;
	/* min(rate, fleet_rate / nodes); no budget or no count: rate. */
	assert_true(ratelimit_aimd_ceiling(10, 0, 7) == 10);
	assert_true(ratelimit_aimd_ceiling(10, 50, 10) == 5);
	assert_true(ratelimit_aimd_ceiling(10, 50, 2) == 10);
	assert_true(ratelimit_aimd_ceiling(10, 50, 0) == 10);
	assert_true(ratelimit_aimd_ceiling(10, 4, 0) == 4);
	assert_true(ratelimit_aimd_ceiling(10, 15, 100) == 0.15);
	/* Fewer shares (nodes joined): at once, the rate with it. */
	ratelimit_aimd_init(&a, 10, 0);
	ratelimit_aimd_set_ceiling(&a, ratelimit_aimd_ceiling(10, 50, 25),
	    100);
	assert_true(a.a_ceiling == 2 && a.a_rate == 2);
	/* More (nodes left): grown to, a tenth of it per quiet interval. */
	ratelimit_aimd_set_ceiling(&a, ratelimit_aimd_ceiling(10, 50, 5),
	    1000);
	assert_true(a.a_ceiling == 10 && a.a_rate == 2);
	assert_int_equal(ratelimit_aimd_grow(&a, 5999), 0);
	assert_int_equal(ratelimit_aimd_grow(&a, 6000), 1);
	assert_true(a.a_rate == 3);
}

/*
 * Two nodes sharing a registry that allows C/s, one starting at its
 * ceiling, one at the floor: when they send more than C together both
 * draw a 429 (from requests sent after their last cut), else they grow.
 * AIMD brings them to the same share, and together under C most of the
 * time.
 */
static void
test_aimd_fair_share(void **state)
{
	struct ratelimit_aimd n[2];
	const double C = 6;
	uint64_t t;
	double sum = 0, diff;
	int i, ticks = 0, over = 0;

	(void)state;
	ratelimit_aimd_init(&n[0], 10, 0);
	ratelimit_aimd_init(&n[1], 10, 0);
	n[1].a_rate = RATELIMIT_AIMD_FLOOR;
	for (t = 1000; t <= 600000; t += 1000) {
		for (i = 0; i < 2; i++)
			ratelimit_aimd_grow(&n[i], t);
		if (n[0].a_rate + n[1].a_rate > C) {
			over++;
			for (i = 0; i < 2; i++)
				ratelimit_aimd_cut(&n[i], t, t - 1);
		}
		if (t > 300000) {	/* the second half */
			sum += n[0].a_rate + n[1].a_rate;
			ticks++;
		}
	}
	diff = n[0].a_rate - n[1].a_rate;
	assert_true(diff < 0.01 && diff > -0.01);
	/* Between C/2 and C on average, over C only at the top of a step. */
	assert_true(sum / ticks > C / 2 && sum / ticks <= C);
	assert_true(over < 600 / 5);
}

static void
test_retry_hint(void **state)
{
	(void)state;
	/* The pause left, then the queue ahead at the rate in force. */
	assert_int_equal(ratelimit_retry_hint_s(0, 0, 10), 1);
	assert_int_equal(ratelimit_retry_hint_s(5000, 0, 10), 6);
	assert_int_equal(ratelimit_retry_hint_s(4000, 19, 5), 8);
	assert_int_equal(ratelimit_retry_hint_s(0, 9, 0.2), 50);
	assert_int_equal(ratelimit_retry_hint_s(0, 4095, 0.2),
	    RATELIMIT_PAUSE_MAX_MS / 1000);
}

/* What the callbacks saw, in order. */
struct seen {
	struct event_base	*base;
	char			 order[32];
	int			 n;
	int			 want;
};

struct waiter {
	struct ratelimit_wait	 w;
	struct seen		*seen;
	char			 name;
	int			 ok;
	struct timeval		 at;
};

static void
waiter_cb(void *arg, int ok)
{
	struct waiter *wt = arg;
	struct seen *s = wt->seen;

	wt->ok = ok;
	gettimeofday(&wt->at, NULL);
	s->order[s->n++] = wt->name;
	if (s->n == s->want)
		event_base_loopbreak(s->base);
}

/* n waiters named by names, reporting to s. */
static void
waiters_init(struct waiter *w, int n, struct seen *s, const char *names)
{
	int i;

	memset(w, 0, sizeof(*w) * (size_t)n);
	for (i = 0; i < n; i++) {
		w[i].seen = s;
		w[i].name = names[i];
	}
}

/* Queue w[i] in class cls; want: what ratelimit_enter must return. */
static void
enter(struct ratelimit *rl, struct waiter *w, enum ratelimit_class cls,
    int want)
{
	assert_int_equal(ratelimit_enter(rl, &w->w, cls, waiter_cb, w), want);
}

static void
run_until(struct event_base *base, long ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	event_base_loopexit(base, &tv);
	event_base_dispatch(base);
}

static void
test_priority(void **state)
{
	struct event_base *base = event_base_new();
	struct seen s = { .base = base, .want = 4 };
	struct waiter w[5];
	struct ratelimit *rl;
	int i;

	(void)state;
	waiters_init(w, 5, &s, "xlhLH");
	/* One token, then one per 20 ms. */
	rl = ratelimit_new(base, "prio.example", 50, 1, 30);
	assert_non_null(rl);
	enter(rl, &w[0], RATELIMIT_HIGH, 1);
	enter(rl, &w[1], RATELIMIT_LOW, 0);
	enter(rl, &w[2], RATELIMIT_HIGH, 0);
	enter(rl, &w[3], RATELIMIT_LOW, 0);
	enter(rl, &w[4], RATELIMIT_HIGH, 0);
	assert_int_equal(s.n, 0);	/* never from inside enter */
	run_until(base, 2000);
	/* Manifests first, each class in arrival order. */
	assert_string_equal(s.order, "hHlL");
	for (i = 1; i < 5; i++)
		assert_int_equal(w[i].ok, 1);
	ratelimit_free(rl);
	event_base_free(base);
}

static void
test_expire_and_leave(void **state)
{
	struct event_base *base = event_base_new();
	struct seen s = { .base = base, .want = 1 };
	struct waiter w[3];
	struct ratelimit *rl;
	struct evbuffer *out;

	(void)state;
	waiters_init(w, 3, &s, "abc");
	metrics_reset();
	/* A token per 100 s and no waiting at all: the second fails. */
	rl = ratelimit_new(base, "slow.example", 0.01, 1, 0);
	enter(rl, &w[0], RATELIMIT_HIGH, 1);
	enter(rl, &w[1], RATELIMIT_LOW, 0);
	enter(rl, &w[2], RATELIMIT_HIGH, 0);
	ratelimit_leave(&w[2].w);
	ratelimit_leave(&w[2].w);	/* harmless twice */
	run_until(base, 1000);
	assert_string_equal(s.order, "b");
	assert_int_equal(w[1].ok, 0);

	out = evbuffer_new();
	metrics_render(out);
	evbuffer_add(out, "", 1);
	assert_non_null(strstr((char *)evbuffer_pullup(out, -1),
	    "pullproxy_ratelimit_rejected_total{registry=\"slow.example\"} 1\n"));
	assert_non_null(strstr((char *)evbuffer_pullup(out, -1),
	    "pullproxy_ratelimit_queue_depth{registry=\"slow.example\","
	    "class=\"high\"} 0\n"));
	evbuffer_free(out);
	ratelimit_free(rl);
	event_base_free(base);
}

static void
test_queue_full(void **state)
{
	struct event_base *base = event_base_new();
	struct ratelimit_wait *w;
	struct ratelimit *rl;
	int i;

	(void)state;
	w = calloc(RATELIMIT_QUEUE_MAX + 2, sizeof(*w));
	rl = ratelimit_new(base, "full.example", 0.01, 1, 60);
	assert_int_equal(ratelimit_enter(rl, &w[0], RATELIMIT_LOW, NULL,
	    NULL), 1);
	for (i = 1; i <= RATELIMIT_QUEUE_MAX; i++)
		assert_int_equal(ratelimit_enter(rl, &w[i], RATELIMIT_LOW,
		    NULL, NULL), 0);
	assert_int_equal(ratelimit_enter(rl, &w[i], RATELIMIT_HIGH, NULL,
	    NULL), -1);
	/* One held after a 429 had its place already: the cap is no bar. */
	ratelimit_answered(rl, &w[0], 429, NULL);
	assert_int_equal(ratelimit_hold(rl, &w[0], NULL, NULL), 0);
	ratelimit_free(rl);	/* drops the waits still queued */
	free(w);
	event_base_free(base);
}

static void
test_pause(void **state)
{
	struct event_base *base = event_base_new();
	struct seen s = { .base = base, .want = 1 };
	struct waiter w;
	struct ratelimit *rl;
	struct timeval t0, d;

	(void)state;
	waiters_init(&w, 1, &s, "p");
	rl = ratelimit_new(base, "pause.example", 100, 50, 30);
	gettimeofday(&t0, NULL);
	ratelimit_answered(rl, NULL, 429, "1");
	/* Tokens in the bucket do not matter while paused. */
	enter(rl, &w, RATELIMIT_HIGH, 0);
	run_until(base, 3000);
	assert_int_equal(w.ok, 1);
	timersub(&w.at, &t0, &d);
	assert_true(d.tv_sec * 1000 + d.tv_usec / 1000 >= 1000);
	assert_true(d.tv_sec * 1000 + d.tv_usec / 1000 < 1500);
	/* Any other status ends the streak; the pause is over. */
	ratelimit_answered(rl, NULL, 200, NULL);
	ratelimit_free(rl);
	event_base_free(base);
}

static const char *
render(struct evbuffer *out)
{
	evbuffer_drain(out, evbuffer_get_length(out));
	metrics_render(out);
	evbuffer_add(out, "", 1);
	return (const char *)evbuffer_pullup(out, -1);
}

/* The controller wired into a handle: cuts, one per event, the gauges. */
static void
test_aimd_handle(void **state)
{
	struct event_base *base = event_base_new();
	struct ratelimit_wait w[4];
	struct evbuffer *out = evbuffer_new();
	struct ratelimit *rl;
	int i;

	(void)state;
	memset(w, 0, sizeof(w));
	metrics_reset();
	rl = ratelimit_new(base, "aimd.example", 10, 20, 30);
	assert_true(ratelimit_rate(rl) == 10);
	assert_non_null(strstr(render(out),
	    "pullproxy_ratelimit_rate{registry=\"aimd.example\"} 10\n"));
	for (i = 0; i < 4; i++)
		assert_int_equal(ratelimit_enter(rl, &w[i], RATELIMIT_LOW, NULL,
		    NULL), 1);
	ratelimit_answered(rl, &w[0], 200, NULL);
	assert_true(ratelimit_rate(rl) == 10);
	/* All four were out when their 429s came: one cut... */
	for (i = 0; i < 4; i++)
		ratelimit_answered(rl, &w[i], 429, NULL);
	assert_true(ratelimit_rate(rl) == 5);
	/* ...and one 429 in a row: the pause is backoff(1), 1 s at most. */
	assert_true(ratelimit_retry_after_s(rl) <= 2);
	/* Without its request, a 429 is taken as sent a second ago. */
	ratelimit_answered(rl, NULL, 429, "0");
	assert_true(ratelimit_rate(rl) == 5);
	assert_non_null(strstr(render(out),
	    "pullproxy_ratelimit_rate{registry=\"aimd.example\"} 5\n"));
	assert_non_null(strstr(render(out),
	    "pullproxy_upstream_throttled_total{registry=\"aimd.example\"} "
	    "5\n"));
	/* A fleet of 25 sharing 50/s: 2/s each, at once. */
	ratelimit_fleet(rl, 50, 25);
	assert_true(ratelimit_rate(rl) == 2);
	assert_non_null(strstr(render(out),
	    "pullproxy_ratelimit_ceiling{registry=\"aimd.example\"} 2\n"));
	/* Nodes left: the ceiling rises, the rate grows to it later. */
	ratelimit_fleet(rl, 50, 0);
	assert_non_null(strstr(render(out),
	    "pullproxy_ratelimit_ceiling{registry=\"aimd.example\"} 10\n"));
	assert_true(ratelimit_rate(rl) == 2);
	evbuffer_free(out);
	ratelimit_free(rl);
	event_base_free(base);
}

/*
 * Hold and resend: a 429 puts its request back before those that asked
 * after it, and it goes again when the pause ends.
 */
static void
test_hold(void **state)
{
	struct event_base *base = event_base_new();
	struct seen s = { .base = base, .want = 3 };
	struct waiter w[3];
	struct ratelimit *rl;

	(void)state;
	waiters_init(w, 3, &s, "abc");
	rl = ratelimit_new(base, "hold.example", 100, 1, 30);
	enter(rl, &w[0], RATELIMIT_HIGH, 1);		/* a is sent */
	usleep(3000);
	enter(rl, &w[1], RATELIMIT_HIGH, 0);
	usleep(3000);
	enter(rl, &w[2], RATELIMIT_HIGH, 0);
	ratelimit_answered(rl, &w[0].w, 429, "1");
	assert_int_equal(ratelimit_hold(rl, &w[0].w, waiter_cb, &w[0]), 0);
	assert_int_equal(s.n, 0);	/* never from inside hold */
	run_until(base, 5000);
	assert_string_equal(s.order, "abc");
	assert_int_equal(w[0].ok, 1);
	assert_int_equal(w[1].ok, 1);
	/* The pause cut the rate: 100/s to 50/s. */
	assert_true(ratelimit_rate(rl) == 50);

	/* b drew a 429 too, c waits: b goes first again, before c. */
	memset(&s, 0, sizeof(s));
	s.base = base;
	s.want = 2;
	ratelimit_answered(rl, &w[1].w, 429, "0");
	enter(rl, &w[2], RATELIMIT_HIGH, 0);
	assert_int_equal(ratelimit_hold(rl, &w[1].w, waiter_cb, &w[1]), 0);
	run_until(base, 5000);
	assert_string_equal(s.order, "bc");
	ratelimit_free(rl);
	event_base_free(base);
}

/*
 * A pause longer than what is left of max_wait_s: the held request ends
 * at its deadline (counted from its first ask), not at the pause's end;
 * one whose deadline passed is refused at once.
 */
static void
test_hold_deadline(void **state)
{
	struct event_base *base = event_base_new();
	struct seen s = { .base = base, .want = 1 };
	struct waiter w[2];
	struct ratelimit *rl;
	struct evbuffer *out = evbuffer_new();

	(void)state;
	waiters_init(w, 2, &s, "ab");
	metrics_reset();
	rl = ratelimit_new(base, "deadline.example", 10, 5, 1);
	enter(rl, &w[0], RATELIMIT_LOW, 1);
	ratelimit_answered(rl, &w[0].w, 429, "4");
	/* The pause left, then its own turn at the cut rate (1 / 5 s). */
	assert_true(ratelimit_retry_after_s(rl) >= 4);
	assert_true(ratelimit_retry_after_s(rl) <= 5);
	assert_int_equal(ratelimit_hold(rl, &w[0].w, waiter_cb, &w[0]), 0);
	run_until(base, 3000);	/* the pause ends at 4 s */
	assert_string_equal(s.order, "a");
	assert_int_equal(w[0].ok, 0);
	assert_non_null(strstr(render(out), "pullproxy_ratelimit_rejected_"
	    "total{registry=\"deadline.example\"} 1\n"));
	ratelimit_free(rl);

	rl = ratelimit_new(base, "deadline0.example", 10, 5, 0);
	enter(rl, &w[1], RATELIMIT_HIGH, 1);
	ratelimit_answered(rl, &w[1].w, 429, NULL);
	assert_int_equal(ratelimit_hold(rl, &w[1].w, waiter_cb, &w[1]), -1);
	assert_int_equal(s.n, 1);
	evbuffer_free(out);
	ratelimit_free(rl);
	event_base_free(base);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bucket),
		cmocka_unit_test(test_retry_after),
		cmocka_unit_test(test_backoff),
		cmocka_unit_test(test_bucket_set),
		cmocka_unit_test(test_aimd_cut_and_grow),
		cmocka_unit_test(test_aimd_floor),
		cmocka_unit_test(test_aimd_ceiling),
		cmocka_unit_test(test_aimd_fair_share),
		cmocka_unit_test(test_retry_hint),
		cmocka_unit_test(test_priority),
		cmocka_unit_test(test_expire_and_leave),
		cmocka_unit_test(test_queue_full),
		cmocka_unit_test(test_pause),
		cmocka_unit_test(test_aimd_handle),
		cmocka_unit_test(test_hold),
		cmocka_unit_test(test_hold_deadline),
	};

	log_open(NULL, LOG_LEVEL_ERROR);
	return cmocka_run_group_tests_name("ratelimit", tests, NULL, NULL);
}
