/*
 * circuit: consecutive failures, an open deadline, one probe at a time.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "circuit.h"
#include "log.h"
#include "metrics.h"

struct circuit {
	const char		*c_name;
	const char		*c_what;	/* "registry" or "peer", for logs */
	char			*c_own_name;	/* a peer's: copied, freed here */
	int			 c_metric;
	long			 c_threshold;
	long			 c_open_s;
	enum circuit_state	 c_state;
	long			 c_failures;	/* in a row */
	enum classify_cause	 c_cause;	/* the last counted failure */
	int			 c_backoff;	/* open time multiplier */
	int			 c_probing;	/* half-open: a probe is out */
	double			 c_until;	/* open: no probe before this */
};

static double
circuit_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct circuit *
circuit_alloc(long failures, long open_s)
{
	struct circuit *c;

	if ((c = calloc(1, sizeof(*c))) == NULL)
		return NULL;
	c->c_threshold = failures;
	c->c_open_s = open_s > 0 ? open_s : 1;
	c->c_backoff = 1;
	return c;
}

struct circuit *
circuit_new(const char *name, long failures, long open_s)
{
	struct circuit *c;

	if ((c = circuit_alloc(failures, open_s)) == NULL)
		return NULL;
	c->c_name = name;
	c->c_what = "registry";
	c->c_metric = metrics_registry(name);
	metrics_circuit(c->c_metric, CIRCUIT_CLOSED);
	return c;
}

struct circuit *
circuit_new_peer(const char *name, long failures, long open_s)
{
	struct circuit *c;

	if ((c = circuit_alloc(failures, open_s)) == NULL)
		return NULL;
	if ((c->c_own_name = strdup(name)) == NULL) {
		free(c);
		return NULL;
	}
	c->c_name = c->c_own_name;
	c->c_what = "peer";
	c->c_metric = -1;
	return c;
}

void
circuit_free(struct circuit *c)
{
	if (c == NULL)
		return;
	free(c->c_own_name);
	free(c);
}

static void
circuit_set(struct circuit *c, enum circuit_state state)
{
	c->c_state = state;
	metrics_circuit(c->c_metric, state);
}

static void
circuit_open(struct circuit *c)
{
	long open_s = c->c_open_s * c->c_backoff;

	c->c_until = circuit_now() + (double)open_s;
	c->c_probing = 0;
	circuit_set(c, CIRCUIT_OPEN);
	metrics_circuit_opened(c->c_metric);
	log_event(LOG_LEVEL_WARN, "circuit open", json_pack(
	    "{s:s,s:s,s:s,s:I,s:I}", c->c_what, c->c_name, "cause",
	    classify_cause_name(c->c_cause), "hint", classify_hint(c->c_cause),
	    "failures", (json_int_t)c->c_failures, "open_s",
	    (json_int_t)open_s));
}

int
circuit_allow(struct circuit *c, int *probe)
{
	*probe = 0;
	if (c == NULL || c->c_state == CIRCUIT_CLOSED)
		return 1;
	if (c->c_state == CIRCUIT_OPEN) {
		if (circuit_now() < c->c_until)
			return 0;
		circuit_set(c, CIRCUIT_HALF_OPEN);
	}
	if (c->c_probing)
		return 0;
	c->c_probing = 1;
	*probe = 1;
	return 1;
}

void
circuit_observe(struct circuit *c, int probe, enum classify_cause cause)
{
	if (c == NULL)
		return;
	if (cause == CLASSIFY_NONE) {
		/* One answer is enough: the registry is reachable again. */
		if (c->c_state != CIRCUIT_CLOSED) {
			log_event(LOG_LEVEL_INFO, "circuit closed", json_pack(
			    "{s:s,s:I}", c->c_what, c->c_name, "failures",
			    (json_int_t)c->c_failures));
			c->c_backoff = 1;
			c->c_probing = 0;
			circuit_set(c, CIRCUIT_CLOSED);
		}
		c->c_failures = 0;
		c->c_cause = CLASSIFY_NONE;
		return;
	}
	c->c_failures++;
	c->c_cause = cause;
	if (c->c_state == CIRCUIT_HALF_OPEN && probe) {
		if (c->c_backoff < CIRCUIT_BACKOFF_MAX)
			c->c_backoff *= 2;
		circuit_open(c);
	} else if (c->c_state == CIRCUIT_CLOSED && c->c_threshold > 0 &&
	    c->c_failures >= c->c_threshold)
		circuit_open(c);
}

void
circuit_trip(struct circuit *c, enum classify_cause cause)
{
	if (c == NULL)
		return;
	c->c_failures++;
	c->c_cause = cause;
	c->c_probing = 0;
	if (c->c_state != CIRCUIT_OPEN)
		circuit_open(c);
}

void
circuit_abandon(struct circuit *c, int probe)
{
	if (c != NULL && probe && c->c_state == CIRCUIT_HALF_OPEN)
		c->c_probing = 0;
}

enum circuit_state
circuit_state(const struct circuit *c)
{
	if (c->c_state == CIRCUIT_OPEN && circuit_now() >= c->c_until)
		return CIRCUIT_HALF_OPEN;
	return c->c_state;
}

void
circuit_sample(const struct circuit *c)
{
	if (c != NULL)
		metrics_circuit(c->c_metric, circuit_state(c));
}

enum classify_cause
circuit_cause(const struct circuit *c)
{
	return c->c_state == CIRCUIT_CLOSED ? CLASSIFY_NONE : c->c_cause;
}

long
circuit_failures(const struct circuit *c)
{
	return c->c_failures;
}

double
circuit_retry_in(const struct circuit *c)
{
	double left;

	if (c->c_state != CIRCUIT_OPEN)
		return 0;
	left = c->c_until - circuit_now();
	return left > 0 ? left : 0;
}
