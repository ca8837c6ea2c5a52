/*
 * metrics: fixed tables of numbers, one static instance for the process,
 * written by the modules that know the facts and read by GET /metrics.
 */
#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>

#include "classify.h"
#include "metrics.h"
#include "oci.h"

#define METRICS_NCLASS	2	/* enum ratelimit_class */

/* Status codes that get their own label; the rest count as "other". */
static const int metrics_codes[] = {
	200, 206, 304, 307, 400, 401, 403, 404, 405, 416, 429, 500, 502,
	503, 504,
};
#define METRICS_NCODE	(sizeof(metrics_codes) / sizeof(metrics_codes[0]))

static const char *metrics_routes[] = {
	[OCI_ROUTE_NONE] = "other", [OCI_ROUTE_BASE] = "base",
	[OCI_ROUTE_MANIFEST] = "manifest", [OCI_ROUTE_BLOB] = "blob",
	[OCI_ROUTE_TAGS] = "tags",
};
#define METRICS_NROUTE	(sizeof(metrics_routes) / sizeof(metrics_routes[0]))

static const char *metrics_kinds[] = { "manifest", "blob" };
static const char *metrics_classes[] = { "high", "low" };

/* Waiting time for a token, seconds (upper bounds; +Inf implied). */
static const double metrics_wait_le[] = {
	0.005, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
};
#define METRICS_NWAIT	(sizeof(metrics_wait_le) / sizeof(metrics_wait_le[0]))

/* One number per registry, each its own family. */
enum metrics_scalar {
	METRICS_TOKENS,
	METRICS_REJECTED,
	METRICS_THROTTLED,	/* 429s received */
	METRICS_PAUSED,
	METRICS_RATE,
	METRICS_CEILING,
	METRICS_CIRCUIT,
	METRICS_CIRCUIT_OPENED,
	METRICS_RETRIES,
	METRICS_NSCALAR,
};

static const struct {
	const char	*name;
	const char	*type;
	const char	*help;
} metrics_scalars[] = {
	[METRICS_TOKENS] = { "pullproxy_ratelimit_tokens", "gauge",
	    "Tokens in the registry's bucket when last looked at." },
	[METRICS_REJECTED] = { "pullproxy_ratelimit_rejected_total",
	    "counter", "Requests answered 503 because their wait exceeded "
	    "max_wait_s or the queue was full (throttled locally)." },
	[METRICS_THROTTLED] = { "pullproxy_upstream_throttled_total",
	    "counter", "429 answers received from the registry." },
	[METRICS_PAUSED] = { "pullproxy_ratelimit_paused", "gauge",
	    "1 while requests to the registry are paused after a 429." },
	[METRICS_RATE] = { "pullproxy_ratelimit_rate", "gauge",
	    "Requests per second admitted to the registry now: halved on a "
	    "429, grown back toward the ceiling while none come." },
	[METRICS_CEILING] = { "pullproxy_ratelimit_ceiling", "gauge",
	    "The most requests per second the registry is admitted: rate, "
	    "or fleet_rate / nodes when lower." },
	[METRICS_CIRCUIT] = { "pullproxy_circuit_state", "gauge",
	    "The registry's circuit: 0 closed, 1 open (requests refused at "
	    "once), 2 half-open (one probe out)." },
	[METRICS_CIRCUIT_OPENED] = { "pullproxy_circuit_opened_total",
	    "counter", "Times the circuit opened after failures in a row." },
	[METRICS_RETRIES] = { "pullproxy_upstream_retries_total", "counter",
	    "Requests sent again after a transient failure (backoff), or "
	    "downloads resumed with a Range." },
};

struct metrics_reg {
	const char		*name;
	unsigned long long	 upstream[METRICS_NCODE + 1];
	unsigned long long	 failures[CLASSIFY_NCAUSES];
	double			 scalar[METRICS_NSCALAR];
	int			 queue[METRICS_NCLASS];
	unsigned long long	 wait[METRICS_NWAIT + 1];	/* not cumulative */
	double			 wait_sum;
};

static struct {
	unsigned long long	 requests[METRICS_NROUTE][METRICS_NCODE + 1];
	unsigned long long	 hits[METRICS_CACHE_NKIND];
	unsigned long long	 misses[METRICS_CACHE_NKIND];
	unsigned long long	 bytes[METRICS_CACHE_NKIND];
	unsigned long long	 coalesced[METRICS_CACHE_NKIND];
	struct metrics_usage	 usage;
	struct metrics_reg	 regs[METRICS_REGISTRY_MAX];
	int			 nregs;
} metrics;

void
metrics_reset(void)
{
	memset(&metrics, 0, sizeof(metrics));
}

int
metrics_registry(const char *name)
{
	int i;

	for (i = 0; i < metrics.nregs; i++)
		if (strcmp(metrics.regs[i].name, name) == 0)
			return i;
	if (metrics.nregs == METRICS_REGISTRY_MAX)
		return -1;
	metrics.regs[metrics.nregs].name = name;
	return metrics.nregs++;
}

static struct metrics_reg *
metrics_reg(int reg)
{
	return reg >= 0 && reg < metrics.nregs ? &metrics.regs[reg] : NULL;
}

/* The label index of a status: its own, or "other" last. */
static size_t
metrics_code(long status)
{
	size_t i;

	for (i = 0; i < METRICS_NCODE; i++)
		if (metrics_codes[i] == status)
			return i;
	return METRICS_NCODE;
}

void
metrics_request(enum oci_route_kind kind, int status)
{
	metrics.requests[kind][metrics_code(status)]++;
}

void
metrics_cache(enum metrics_cache kind, int hit)
{
	if (hit)
		metrics.hits[kind]++;
	else
		metrics.misses[kind]++;
}

void
metrics_cache_bytes(enum metrics_cache kind, uint64_t bytes)
{
	metrics.bytes[kind] += bytes;
}

void
metrics_upstream(int reg, long status)
{
	struct metrics_reg *r = metrics_reg(reg);

	if (r != NULL)
		r->upstream[metrics_code(status)]++;
}

void
metrics_failure(int reg, int cause)
{
	struct metrics_reg *r = metrics_reg(reg);

	if (r != NULL && cause > CLASSIFY_NONE && cause < CLASSIFY_NCAUSES)
		r->failures[cause]++;
}

void
metrics_coalesced(enum metrics_cache kind)
{
	metrics.coalesced[kind]++;
}

void
metrics_cache_usage(const struct metrics_usage *u)
{
	metrics.usage = *u;
}

static void
metrics_scalar_set(int reg, enum metrics_scalar m, double v, int add)
{
	struct metrics_reg *r = metrics_reg(reg);

	if (r != NULL)
		r->scalar[m] = add ? r->scalar[m] + v : v;
}

void
metrics_rl_tokens(int reg, double tokens)
{
	metrics_scalar_set(reg, METRICS_TOKENS, tokens, 0);
}

void
metrics_rl_queue(int reg, int cls, int depth)
{
	struct metrics_reg *r = metrics_reg(reg);

	if (r != NULL && cls >= 0 && cls < METRICS_NCLASS)
		r->queue[cls] = depth;
}

void
metrics_rl_wait(int reg, double seconds)
{
	struct metrics_reg *r = metrics_reg(reg);
	size_t i;

	if (r == NULL)
		return;
	for (i = 0; i < METRICS_NWAIT && seconds > metrics_wait_le[i]; i++)
		;
	r->wait[i]++;
	r->wait_sum += seconds;
}

void
metrics_rl_rejected(int reg)
{
	metrics_scalar_set(reg, METRICS_REJECTED, 1, 1);
}

void
metrics_rl_429(int reg)
{
	metrics_scalar_set(reg, METRICS_THROTTLED, 1, 1);
}

void
metrics_rl_paused(int reg, int paused)
{
	metrics_scalar_set(reg, METRICS_PAUSED, paused, 0);
}

void
metrics_rl_rate(int reg, double rate, double ceiling)
{
	metrics_scalar_set(reg, METRICS_RATE, rate, 0);
	metrics_scalar_set(reg, METRICS_CEILING, ceiling, 0);
}

void
metrics_circuit(int reg, int state)
{
	metrics_scalar_set(reg, METRICS_CIRCUIT, state, 0);
}

void
metrics_circuit_opened(int reg)
{
	metrics_scalar_set(reg, METRICS_CIRCUIT_OPENED, 1, 1);
}

void
metrics_retry(int reg)
{
	metrics_scalar_set(reg, METRICS_RETRIES, 1, 1);
}

/* ------------------------------------------------------------ rendering */

static void
metrics_head(struct evbuffer *out, const char *name, const char *type,
    const char *help)
{
	evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help,
	    name, type);
}

static void
metrics_code_label(char *buf, size_t len, size_t code)
{
	if (code < METRICS_NCODE)
		snprintf(buf, len, "%d", metrics_codes[code]);
	else
		snprintf(buf, len, "other");
}

static void
metrics_render_client(struct evbuffer *out)
{
	const struct {
		const char			*name;
		const char			*help;
		const unsigned long long	*v;
	} kinded[] = {
		{ "pullproxy_cache_hits_total",
		    "Requests answered from the cache.", metrics.hits },
		{ "pullproxy_cache_misses_total", "Requests that needed the "
		    "registry (or a download in flight).", metrics.misses },
		{ "pullproxy_cache_served_bytes_total",
		    "Body bytes sent to clients from the cache.",
		    metrics.bytes },
		{ "pullproxy_coalesced_total", "Misses that waited for a "
		    "download or revalidation already in flight instead of "
		    "starting their own.", metrics.coalesced },
	};
	const struct {
		const char		*name;
		const char		*type;
		const char		*help;
		unsigned long long	 v;
	} usage[] = {
		{ "pullproxy_cache_bytes", "gauge", "Bytes of blobs and "
		    "manifests in the cache.", metrics.usage.bytes },
		{ "pullproxy_cache_budget_bytes", "gauge", "The cache budget "
		    "(cache_max_size).", metrics.usage.budget },
		{ "pullproxy_cache_blobs", "gauge", "Blobs in the cache.",
		    metrics.usage.blobs },
		{ "pullproxy_cache_manifests", "gauge", "Manifests in the "
		    "cache.", metrics.usage.manifests },
		{ "pullproxy_cache_evictions_total", "counter", "Blobs "
		    "evicted to stay within the budget.",
		    metrics.usage.evictions },
	};
	char code[16];
	size_t k, c, f;

	metrics_head(out, "pullproxy_requests_total", "counter",
	    "Client requests answered, by route kind and status.");
	for (k = 0; k < METRICS_NROUTE; k++)
		for (c = 0; c <= METRICS_NCODE; c++) {
			if (metrics.requests[k][c] == 0)
				continue;
			metrics_code_label(code, sizeof(code), c);
			evbuffer_add_printf(out, "pullproxy_requests_total"
			    "{route=\"%s\",status=\"%s\"} %llu\n",
			    metrics_routes[k], code, metrics.requests[k][c]);
		}
	for (f = 0; f < sizeof(kinded) / sizeof(kinded[0]); f++) {
		metrics_head(out, kinded[f].name, "counter", kinded[f].help);
		for (k = 0; k < METRICS_CACHE_NKIND; k++)
			evbuffer_add_printf(out, "%s{kind=\"%s\"} %llu\n",
			    kinded[f].name, metrics_kinds[k], kinded[f].v[k]);
	}
	for (f = 0; f < sizeof(usage) / sizeof(usage[0]); f++) {
		metrics_head(out, usage[f].name, usage[f].type, usage[f].help);
		evbuffer_add_printf(out, "%s %llu\n", usage[f].name,
		    usage[f].v);
	}
}

static void
metrics_render_wait(struct evbuffer *out, const struct metrics_reg *r)
{
	unsigned long long sum = 0;
	size_t i;

	for (i = 0; i <= METRICS_NWAIT; i++) {
		sum += r->wait[i];
		if (i < METRICS_NWAIT)
			evbuffer_add_printf(out,
			    "pullproxy_ratelimit_wait_seconds_bucket"
			    "{registry=\"%s\",le=\"%g\"} %llu\n", r->name,
			    metrics_wait_le[i], sum);
		else
			evbuffer_add_printf(out,
			    "pullproxy_ratelimit_wait_seconds_bucket"
			    "{registry=\"%s\",le=\"+Inf\"} %llu\n", r->name,
			    sum);
	}
	evbuffer_add_printf(out, "pullproxy_ratelimit_wait_seconds_sum"
	    "{registry=\"%s\"} %.6f\n", r->name, r->wait_sum);
	evbuffer_add_printf(out, "pullproxy_ratelimit_wait_seconds_count"
	    "{registry=\"%s\"} %llu\n", r->name, sum);
}

/* One family per registry loop: the format wants a family's lines together. */
static void
metrics_render_registries(struct evbuffer *out)
{
	const struct metrics_reg *r;
	char code[16];
	size_t c;
	int i;

	metrics_head(out, "pullproxy_upstream_responses_total", "counter",
	    "Final statuses of requests sent to each registry.");
	for (i = 0; i < metrics.nregs; i++)
		for (r = &metrics.regs[i], c = 0; c <= METRICS_NCODE; c++) {
			if (r->upstream[c] == 0)
				continue;
			metrics_code_label(code, sizeof(code), c);
			evbuffer_add_printf(out,
			    "pullproxy_upstream_responses_total"
			    "{registry=\"%s\",status=\"%s\"} %llu\n", r->name,
			    code, r->upstream[c]);
		}
	metrics_head(out, "pullproxy_upstream_failures_total", "counter",
	    "Upstream failures by classified cause (see pullproxy logs for "
	    "hints); repeats folded in the log are counted here.");
	for (i = 0; i < metrics.nregs; i++)
		for (r = &metrics.regs[i], c = 1; c < CLASSIFY_NCAUSES; c++)
			if (r->failures[c] != 0)
				evbuffer_add_printf(out,
				    "pullproxy_upstream_failures_total"
				    "{registry=\"%s\",cause=\"%s\"} %llu\n",
				    r->name, classify_cause_name(
				    (enum classify_cause)c), r->failures[c]);
	for (c = 0; c < METRICS_NSCALAR; c++) {
		metrics_head(out, metrics_scalars[c].name,
		    metrics_scalars[c].type, metrics_scalars[c].help);
		for (i = 0; i < metrics.nregs; i++)
			evbuffer_add_printf(out, "%s{registry=\"%s\"} %.15g\n",
			    metrics_scalars[c].name, metrics.regs[i].name,
			    metrics.regs[i].scalar[c]);
	}
	metrics_head(out, "pullproxy_ratelimit_queue_depth", "gauge",
	    "Requests waiting for a token, by class (high: tags, manifests, "
	    "tokens; low: blobs).");
	for (i = 0; i < metrics.nregs; i++)
		for (c = 0; c < METRICS_NCLASS; c++)
			evbuffer_add_printf(out,
			    "pullproxy_ratelimit_queue_depth"
			    "{registry=\"%s\",class=\"%s\"} %d\n",
			    metrics.regs[i].name, metrics_classes[c],
			    metrics.regs[i].queue[c]);
	metrics_head(out, "pullproxy_ratelimit_wait_seconds", "histogram",
	    "Time requests waited for a token before going upstream.");
	for (i = 0; i < metrics.nregs; i++)
		metrics_render_wait(out, &metrics.regs[i]);
}

void
metrics_render(struct evbuffer *out)
{
	metrics_render_client(out);
	metrics_render_registries(out);
}
