#include <sys/time.h>

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
	ratelimit_observe(rl, 429, "1");
	/* Tokens in the bucket do not matter while paused. */
	enter(rl, &w, RATELIMIT_HIGH, 0);
	run_until(base, 3000);
	assert_int_equal(w.ok, 1);
	timersub(&w.at, &t0, &d);
	assert_true(d.tv_sec * 1000 + d.tv_usec / 1000 >= 1000);
	assert_true(d.tv_sec * 1000 + d.tv_usec / 1000 < 1500);
	/* Any other status ends the streak; the pause is over. */
	ratelimit_observe(rl, 200, NULL);
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
		cmocka_unit_test(test_priority),
		cmocka_unit_test(test_expire_and_leave),
		cmocka_unit_test(test_queue_full),
		cmocka_unit_test(test_pause),
	};

	log_open(NULL, LOG_LEVEL_ERROR);
	return cmocka_run_group_tests_name("ratelimit", tests, NULL, NULL);
}
