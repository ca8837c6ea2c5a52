/*
 * metrics: counters, gauges and one histogram, rendered in the Prometheus
 * text format for GET /metrics. Label sets are fixed (route kinds, status
 * codes, cache kinds, queue classes, the configured registries), so an
 * observation is an array increment: nothing is allocated, nothing is
 * looked up by string. One process, one loop: no locking.
 *
 * A registry slot is an int from metrics_registry(); functions given a
 * negative slot (the table was full) do nothing.
 */
#ifndef PP_METRICS_H
#define PP_METRICS_H

#include <stdint.h>

#include "oci.h"

struct evbuffer;

#define METRICS_REGISTRY_MAX	32

enum metrics_cache {
	METRICS_CACHE_MANIFEST = 0,
	METRICS_CACHE_BLOB,
	METRICS_CACHE_NKIND,
};

/* The cache's size, read by the server before rendering. */
struct metrics_usage {
	unsigned long long	 bytes;
	unsigned long long	 budget;
	unsigned long long	 blobs;
	unsigned long long	 manifests;
	unsigned long long	 evictions;
};

/* Forget everything (a new server); registry names are not copied. */
void metrics_reset(void);
/* The slot of a registry, added when new; -1 when the table is full. */
int metrics_registry(const char *name);

/* A client request for a route of this kind ended (status 0: no answer). */
void metrics_request(enum oci_route_kind kind, int status);
/* A request answered from the cache (hit) or sent upstream (miss). */
void metrics_cache(enum metrics_cache kind, int hit);
/* Body bytes sent to clients from the cache. */
void metrics_cache_bytes(enum metrics_cache kind, uint64_t bytes);
/* A miss that joined a fetch in flight. */
void metrics_coalesced(enum metrics_cache kind);
void metrics_cache_usage(const struct metrics_usage *u);
/* The final status of a request to a registry. */
void metrics_upstream(int reg, long status);
/* An upstream failure of a classified cause (enum classify_cause). */
void metrics_failure(int reg, int cause);
/* circuit.h's state (enum circuit_state), and each time it opens. */
void metrics_circuit(int reg, int state);
void metrics_circuit_opened(int reg);
/* A transfer sent again after a transient failure, or resumed. */
void metrics_retry(int reg);

/* ratelimit's state (see ratelimit.h); cls is enum ratelimit_class. */
void metrics_rl_tokens(int reg, double tokens);
void metrics_rl_queue(int reg, int cls, int depth);
void metrics_rl_wait(int reg, double seconds);
void metrics_rl_rejected(int reg);
void metrics_rl_429(int reg);
void metrics_rl_paused(int reg, int paused);
/* The rate admitted now (AIMD) and its ceiling, requests per second. */
void metrics_rl_rate(int reg, double rate, double ceiling);

/* Everything, in the Prometheus text exposition format 0.0.4. */
void metrics_render(struct evbuffer *out);

#endif
