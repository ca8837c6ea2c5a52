/*
 * circuit: a breaker per registry, so that a registry that is down costs
 * each client one fast answer rather than a timeout (containerd then
 * tries the next host in hosts.toml: the registry itself).
 *
 * Closed, it counts transfers in a row that failed in the registry's
 * transport or got a 5xx (classify.h's fault). An answer to the request,
 * any 4xx, is not counted and resets the count: a client can ask for
 * what gets a 405 or a 416 as often as it likes, and a registry that
 * answers is reachable (a 429 pauses the rate limiter instead). At the
 * threshold it opens: upstream.c refuses transfers at once with the cause
 * that opened it. After the open time, one transfer goes as a probe
 * (half-open) while the others are still refused: success closes the
 * circuit, failure opens it again for twice as long (up to
 * CIRCUIT_BACKOFF_MAX times the configured time).
 *
 * Time is read when asked: no timer, nothing runs while nobody asks.
 */
#ifndef PP_CIRCUIT_H
#define PP_CIRCUIT_H

#include "classify.h"

#define CIRCUIT_BACKOFF_MAX	8

enum circuit_state {
	CIRCUIT_CLOSED = 0,
	CIRCUIT_OPEN,
	CIRCUIT_HALF_OPEN,
};

struct circuit;

/*
 * failures 0: never opens. name is kept (the registry's, for logs) and
 * names the registry's metric series, which outlive the circuit.
 */
struct circuit *circuit_new(const char *name, long failures, long open_s);
/*
 * The same for a fleet peer (fleet.h): peers come and go, so name is
 * copied and there is no metric series; logs say "peer".
 */
struct circuit *circuit_new_peer(const char *name, long failures,
    long open_s);
void circuit_free(struct circuit *c);

/*
 * May a transfer go out now? 1 yes, with *probe set when it is the
 * half-open probe (its outcome must be reported, or circuit_abandon'd);
 * 0 no: refuse it with circuit_cause().
 */
int circuit_allow(struct circuit *c, int *probe);

/*
 * A transfer that went out ended. cause: why it failed when that was the
 * registry's fault (classify_result.fault), else CLASSIFY_NONE (it
 * answered, whatever the answer).
 */
void circuit_observe(struct circuit *c, int probe, enum classify_cause cause);
/*
 * Open it now, whatever the count: an answer that looked fine but was
 * wrong (a fleet peer's bytes that do not match their digest).
 */
void circuit_trip(struct circuit *c, enum classify_cause cause);
/* A probe that ended without an answer (cancelled): let another probe. */
void circuit_abandon(struct circuit *c, int probe);

/*
 * The state now: open only while its window lasts; after, half-open (the
 * next request goes out as a probe), even when none has come yet.
 */
enum circuit_state circuit_state(const struct circuit *c);
/* Set the state gauge (metrics.h) to circuit_state(), when scraped. */
void circuit_sample(const struct circuit *c);
/* What opened it (CLASSIFY_NONE while closed). */
enum classify_cause circuit_cause(const struct circuit *c);
/* Failures in a row so far. */
long circuit_failures(const struct circuit *c);
/* Seconds until the next probe may go; 0 when not open. */
double circuit_retry_in(const struct circuit *c);

#endif
