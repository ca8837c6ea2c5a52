#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include <event2/buffer.h>

#include "circuit.h"
#include "log.h"
#include "metrics.h"

/* Past the open time: real time, so open_s is 1 and this sleeps. */
static void
wait_open(const struct circuit *c)
{
	struct timespec ts = { 0, 50 * 1000 * 1000 };

	while (circuit_retry_in(c) > 0)
		nanosleep(&ts, NULL);
}

static void
test_opens_after_failures_in_a_row(void **state)
{
	struct circuit *c = circuit_new("r.example", 3, 1);
	int probe, i;

	(void)state;
	assert_non_null(c);
	for (i = 0; i < 2; i++) {
		assert_int_equal(circuit_allow(c, &probe), 1);
		assert_int_equal(probe, 0);
		circuit_observe(c, probe, CLASSIFY_CONNECTION_REFUSED);
	}
	/* An answer in between starts the count again. */
	circuit_observe(c, 0, CLASSIFY_NONE);
	assert_int_equal(circuit_failures(c), 0);
	for (i = 0; i < 2; i++)
		circuit_observe(c, 0, CLASSIFY_UPSTREAM_UNAVAILABLE);
	assert_int_equal(circuit_state(c), CIRCUIT_CLOSED);
	for (i = 0; i < 3; i++)
		circuit_observe(c, 0, CLASSIFY_IO_TIMEOUT);
	assert_int_equal(circuit_state(c), CIRCUIT_OPEN);
	assert_int_equal(circuit_cause(c), CLASSIFY_IO_TIMEOUT);
	assert_true(circuit_retry_in(c) > 0.5 && circuit_retry_in(c) <= 1.0);
	assert_int_equal(circuit_allow(c, &probe), 0);
	circuit_free(c);
}

/* What upstream.c reports of a transfer: its cause when it is a fault. */
static void
observe(struct circuit *c, int probe, const struct classify_input *in)
{
	struct classify_result r;

	classify(in, &r);
	circuit_observe(c, probe, r.fault ? r.cause : CLASSIFY_NONE);
}

/*
 * Only the registry's faults count. What a client's request gets (405 to
 * a HEAD of tags/list, 416 to a Range past the end, any other 4xx, a URL
 * curl will not send) never opens the circuit, however often it comes,
 * and neither do refusals, throttling or a SAS refused by storage.
 */
static void
test_client_cannot_open(void **state)
{
	static const struct classify_input answers[] = {
		{ .status = 405, .connected = 1, .headers = 1 },
		{ .status = 416, .connected = 1, .headers = 1 },
		{ .status = 416, .connected = 1, .headers = 1,
		    .redirected = 1 },
		{ .status = 400, .connected = 1, .headers = 1 },
		{ .status = 409, .connected = 1, .headers = 1 },
		{ .status = 401, .connected = 1, .headers = 1 },
		{ .status = 403, .connected = 1, .headers = 1 },
		{ .status = 403, .connected = 1, .headers = 1,
		    .redirected = 1 },
		{ .status = 404, .connected = 1, .headers = 1 },
		{ .status = 429, .connected = 1, .headers = 1 },
		{ .curl = CURLE_URL_MALFORMAT },
		{ .curl = CURLE_ABORTED_BY_CALLBACK, .throttled = 1 },
	};
	static const struct classify_input fault = { .status = 502,
	    .connected = 1, .headers = 1 };
	struct circuit *c = circuit_new("r.example", 5, 1);
	size_t i;
	int probe, n;

	(void)state;
	for (i = 0; i < sizeof(answers) / sizeof(answers[0]); i++) {
		for (n = 0; n < 50; n++) {
			assert_int_equal(circuit_allow(c, &probe), 1);
			observe(c, probe, &answers[i]);
		}
		if (circuit_state(c) != CIRCUIT_CLOSED ||
		    circuit_failures(c) != 0)
			fail_msg("answer %zu opened the circuit", i);
		/* Between faults, an answer starts the count again. */
		for (n = 0; n < 4; n++)
			observe(c, 0, &fault);
		observe(c, 0, &answers[i]);
		assert_int_equal(circuit_failures(c), 0);
	}
	for (n = 0; n < 5; n++)
		observe(c, 0, &fault);
	assert_int_equal(circuit_state(c), CIRCUIT_OPEN);
	assert_int_equal(circuit_cause(c), CLASSIFY_UPSTREAM_UNAVAILABLE);
	circuit_free(c);
}

static void
test_half_open_lets_one_probe(void **state)
{
	struct circuit *c = circuit_new("r.example", 1, 1);
	int probe, other;

	(void)state;
	circuit_observe(c, 0, CLASSIFY_CONNECTION_RESET);
	assert_int_equal(circuit_state(c), CIRCUIT_OPEN);
	wait_open(c);
	assert_int_equal(circuit_allow(c, &probe), 1);
	assert_int_equal(probe, 1);
	assert_int_equal(circuit_state(c), CIRCUIT_HALF_OPEN);
	assert_int_equal(circuit_allow(c, &other), 0);
	/* A probe given up (its client left) lets the next one go. */
	circuit_abandon(c, probe);
	assert_int_equal(circuit_allow(c, &probe), 1);
	assert_int_equal(probe, 1);
	/* It fails: open again, twice as long. */
	circuit_observe(c, probe, CLASSIFY_CONNECTION_RESET);
	assert_int_equal(circuit_state(c), CIRCUIT_OPEN);
	assert_true(circuit_retry_in(c) > 1.5 && circuit_retry_in(c) <= 2.0);
	wait_open(c);
	assert_int_equal(circuit_allow(c, &probe), 1);
	circuit_observe(c, probe, CLASSIFY_NONE);
	assert_int_equal(circuit_state(c), CIRCUIT_CLOSED);
	assert_int_equal(circuit_cause(c), CLASSIFY_NONE);
	assert_int_equal(circuit_allow(c, &probe), 1);
	assert_int_equal(probe, 0);
	circuit_free(c);
}

static void
test_disabled_and_metrics(void **state)
{
	struct circuit *c = circuit_new("off.example", 0, 1);
	struct evbuffer *out = evbuffer_new();
	int probe, i;
	char *text;

	(void)state;
	for (i = 0; i < 100; i++)
		circuit_observe(c, 0, CLASSIFY_DNS_FAILURE);
	assert_int_equal(circuit_allow(c, &probe), 1);
	circuit_free(c);

	c = circuit_new("on.example", 1, 5);
	circuit_observe(c, 0, CLASSIFY_TLS_ERROR);
	metrics_render(out);
	evbuffer_add(out, "", 1);
	text = (char *)evbuffer_pullup(out, -1);
	assert_non_null(strstr(text,
	    "pullproxy_circuit_state{registry=\"on.example\"} 1\n"));
	assert_non_null(strstr(text,
	    "pullproxy_circuit_opened_total{registry=\"on.example\"} 1\n"));
	assert_non_null(strstr(text,
	    "pullproxy_circuit_state{registry=\"off.example\"} 0\n"));
	evbuffer_free(out);
	circuit_free(c);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_opens_after_failures_in_a_row),
		cmocka_unit_test(test_client_cannot_open),
		cmocka_unit_test(test_half_open_lets_one_probe),
		cmocka_unit_test(test_disabled_and_metrics),
	};

	log_open("/dev/null", LOG_LEVEL_ERROR);
	metrics_reset();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
