#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "classify.h"
#include "platform.h"

struct sample {
	const char		*what;
	struct classify_input	 in;
	enum classify_cause	 cause;
	enum classify_phase	 phase;
};

#define HOST	"myacr.azurecr.io"

/* One or more representative inputs for every cause. */
static const struct sample samples[] = {
	{ "data 401 after a fresh token", { .status = 401, .host = HOST,
	    .headers = 1, .connected = 1 }, CLASSIFY_AUTH_UNAUTHORIZED,
	    CLASSIFY_PHASE_REQUEST },
	{ "token 401", { .phase = CLASSIFY_PHASE_TOKEN, .status = 401,
	    .acr_code = "UNAUTHORIZED", .host = HOST },
	    CLASSIFY_AUTH_UNAUTHORIZED, CLASSIFY_PHASE_TOKEN },
	{ "exchange 401", { .phase = CLASSIFY_PHASE_EXCHANGE, .status = 401,
	    .host = HOST }, CLASSIFY_AUTH_UNAUTHORIZED,
	    CLASSIFY_PHASE_EXCHANGE },
	{ "secret file unreadable", { .phase = CLASSIFY_PHASE_TOKEN,
	    .host = HOST }, CLASSIFY_AUTH_UNAUTHORIZED, CLASSIFY_PHASE_TOKEN },
	{ "IMDS refused", { .phase = CLASSIFY_PHASE_IMDS,
	    .curl = CURLE_COULDNT_CONNECT, .os_errno = ECONNREFUSED },
	    CLASSIFY_AUTH_IDENTITY_UNAVAILABLE, CLASSIFY_PHASE_IMDS },
	{ "IMDS 400", { .phase = CLASSIFY_PHASE_IMDS, .status = 400,
	    .acr_code = "invalid_request" },
	    CLASSIFY_AUTH_IDENTITY_UNAVAILABLE, CLASSIFY_PHASE_IMDS },
	{ "token 403", { .phase = CLASSIFY_PHASE_TOKEN, .status = 403,
	    .host = HOST }, CLASSIFY_FORBIDDEN_NETWORK, CLASSIFY_PHASE_TOKEN },
	{ "data 403", { .status = 403, .acr_code = "DENIED", .host = HOST },
	    CLASSIFY_FORBIDDEN_NETWORK, CLASSIFY_PHASE_REQUEST },
	{ "manifest 404", { .status = 404, .acr_code = "MANIFEST_UNKNOWN",
	    .host = HOST }, CLASSIFY_NOT_FOUND, CLASSIFY_PHASE_REQUEST },
	{ "404 on a typo host", { .status = 404, .host = "myacr.azureacr.io" },
	    CLASSIFY_NAME_TYPO, CLASSIFY_PHASE_REQUEST },
	{ "DNS on a typo host", { .curl = CURLE_COULDNT_RESOLVE_HOST,
	    .host = "myacr.azurcr.io" }, CLASSIFY_NAME_TYPO,
	    CLASSIFY_PHASE_REQUEST },
	{ "no such name", { .curl = CURLE_COULDNT_RESOLVE_HOST, .host = HOST },
	    CLASSIFY_DNS_FAILURE, CLASSIFY_PHASE_DNS },
	{ "connect timeout", { .curl = CURLE_OPERATION_TIMEDOUT, .host = HOST },
	    CLASSIFY_CONNECT_TIMEOUT, CLASSIFY_PHASE_CONNECT },
	{ "kernel connect timeout", { .curl = CURLE_COULDNT_CONNECT,
	    .os_errno = ETIMEDOUT, .host = HOST }, CLASSIFY_CONNECT_TIMEOUT,
	    CLASSIFY_PHASE_CONNECT },
	{ "stall before headers", { .curl = CURLE_OPERATION_TIMEDOUT,
	    .connected = 1, .host = HOST }, CLASSIFY_IO_TIMEOUT,
	    CLASSIFY_PHASE_REQUEST },
	{ "stall mid-body", { .curl = CURLE_OPERATION_TIMEDOUT, .connected = 1,
	    .headers = 1, .status = 200, .host = HOST }, CLASSIFY_IO_TIMEOUT,
	    CLASSIFY_PHASE_BODY },
	{ "refused", { .curl = CURLE_COULDNT_CONNECT, .os_errno = ECONNREFUSED,
	    .host = HOST }, CLASSIFY_CONNECTION_REFUSED,
	    CLASSIFY_PHASE_CONNECT },
	{ "reset", { .curl = CURLE_RECV_ERROR, .os_errno = ECONNRESET,
	    .connected = 1, .host = HOST }, CLASSIFY_CONNECTION_RESET,
	    CLASSIFY_PHASE_REQUEST },
	{ "closed mid-body", { .curl = CURLE_PARTIAL_FILE, .connected = 1,
	    .headers = 1, .host = HOST }, CLASSIFY_CONNECTION_RESET,
	    CLASSIFY_PHASE_BODY },
	{ "reset in the handshake", { .curl = CURLE_SSL_CONNECT_ERROR,
	    .os_errno = ECONNRESET, .host = HOST }, CLASSIFY_CONNECTION_RESET,
	    CLASSIFY_PHASE_TLS },
	{ "bad certificate", { .curl = CURLE_PEER_FAILED_VERIFICATION,
	    .connected = 1, .host = HOST }, CLASSIFY_TLS_ERROR,
	    CLASSIFY_PHASE_TLS },
	{ "handshake failure", { .curl = CURLE_SSL_CONNECT_ERROR,
	    .connected = 1, .host = HOST }, CLASSIFY_TLS_ERROR,
	    CLASSIFY_PHASE_TLS },
	{ "429", { .status = 429, .acr_code = "TOOMANYREQUESTS",
	    .host = HOST }, CLASSIFY_THROTTLED, CLASSIFY_PHASE_REQUEST },
	{ "429 from storage", { .status = 429, .redirected = 1, .host = HOST },
	    CLASSIFY_THROTTLED, CLASSIFY_PHASE_REQUEST },
	{ "local pace", { .curl = CURLE_ABORTED_BY_CALLBACK, .throttled = 1,
	    .host = HOST }, CLASSIFY_THROTTLED, CLASSIFY_PHASE_REQUEST },
	{ "503", { .status = 503, .host = HOST },
	    CLASSIFY_UPSTREAM_UNAVAILABLE, CLASSIFY_PHASE_REQUEST },
	{ "token 500", { .phase = CLASSIFY_PHASE_TOKEN, .status = 500,
	    .host = HOST }, CLASSIFY_UPSTREAM_UNAVAILABLE,
	    CLASSIFY_PHASE_TOKEN },
	{ "HTTP/2 trouble", { .curl = CURLE_HTTP2, .connected = 1,
	    .host = HOST }, CLASSIFY_UPSTREAM_UNAVAILABLE,
	    CLASSIFY_PHASE_REQUEST },
	{ "body longer than announced", { .phase = CLASSIFY_PHASE_BODY,
	    .status = 200, .host = HOST }, CLASSIFY_UPSTREAM_UNAVAILABLE,
	    CLASSIFY_PHASE_BODY },
	{ "index without the platform", { .phase = CLASSIFY_PHASE_PLATFORM },
	    CLASSIFY_PLATFORM_MISMATCH, CLASSIFY_PHASE_PLATFORM },
	{ "digest", { .phase = CLASSIFY_PHASE_DIGEST, .status = 200,
	    .host = HOST }, CLASSIFY_DIGEST_MISMATCH, CLASSIFY_PHASE_DIGEST },
	{ "storage does not resolve", { .curl = CURLE_COULDNT_RESOLVE_HOST,
	    .redirected = 1, .status = 307, .connected = 1, .host = HOST },
	    CLASSIFY_REDIRECT_FAILED, CLASSIFY_PHASE_REDIRECT },
	{ "SAS refused", { .status = 403, .redirected = 1, .host = HOST,
	    .acr_code = "AuthenticationFailed" }, CLASSIFY_REDIRECT_FAILED,
	    CLASSIFY_PHASE_REDIRECT },
	{ "redirect loop", { .curl = CURLE_TOO_MANY_REDIRECTS, .host = HOST },
	    CLASSIFY_REDIRECT_FAILED, CLASSIFY_PHASE_REDIRECT },
	{ "redirect refused", { .curl = CURLE_ABORTED_BY_CALLBACK,
	    .redirected = 1, .connected = 1, .status = 307, .host = HOST },
	    CLASSIFY_REDIRECT_FAILED, CLASSIFY_PHASE_REDIRECT },
	{ "a cache write, not upstream", { .status = 200, .host = HOST },
	    CLASSIFY_NONE, CLASSIFY_PHASE_REQUEST },
	{ "token POST redirected, not followed", { .phase =
	    CLASSIFY_PHASE_TOKEN, .status = 307, .connected = 1, .headers = 1,
	    .host = HOST }, CLASSIFY_REDIRECT_FAILED, CLASSIFY_PHASE_REDIRECT },
	{ "exchange redirected, not followed", { .phase =
	    CLASSIFY_PHASE_EXCHANGE, .status = 307, .connected = 1,
	    .headers = 1, .host = HOST }, CLASSIFY_REDIRECT_FAILED,
	    CLASSIFY_PHASE_REDIRECT },
	{ "realm on the node refused", { .phase = CLASSIFY_PHASE_TOKEN,
	    .curl = CURLE_ABORTED_BY_CALLBACK, .host = HOST },
	    CLASSIFY_REDIRECT_FAILED, CLASSIFY_PHASE_REDIRECT },
};

static void
test_every_cause(void **state)
{
	int seen[CLASSIFY_NCAUSES] = { 0 };
	struct classify_result r;
	size_t i;
	int c;

	(void)state;
	for (i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
		classify(&samples[i].in, &r);
		if (r.cause != samples[i].cause || r.phase != samples[i].phase)
			fail_msg("%s: got %s/%s, want %s/%s", samples[i].what,
			    classify_cause_name(r.cause),
			    classify_phase_name(r.phase),
			    classify_cause_name(samples[i].cause),
			    classify_phase_name(samples[i].phase));
		if (r.cause == CLASSIFY_NONE)
			assert_null(r.hint);
		else
			assert_true(r.hint != NULL && strlen(r.hint) > 20);
		seen[r.cause] = 1;
	}
	/* name_typo comes from the name check alone as well. */
	for (c = 1; c < CLASSIFY_NCAUSES; c++)
		if (!seen[c])
			fail_msg("no sample for %s", classify_cause_name(c));
}

/*
 * Only the registry's own failures are faults (what a circuit counts):
 * transport, timeouts, broken answers, 5xx. An answer to the request is
 * not, whatever its 4xx, nor a URL curl would not send; a 405 or 416 is
 * no cause of the registry's either.
 */
static void
test_faults(void **state)
{
	static const struct {
		struct classify_input	in;
		int			fault;
		enum classify_cause	cause;
	} t[] = {
		{ { .status = 405, .host = HOST }, 0, CLASSIFY_NONE },
		{ { .status = 416, .host = HOST }, 0, CLASSIFY_NONE },
		{ { .status = 416, .redirected = 1, .host = HOST }, 0,
		    CLASSIFY_NONE },
		{ { .status = 400, .acr_code = "NAME_INVALID", .host = HOST },
		    0, CLASSIFY_NONE },
		{ { .status = 410, .host = HOST }, 0, CLASSIFY_NONE },
		{ { .status = 405, .phase = CLASSIFY_PHASE_BODY, .headers = 1,
		    .host = HOST }, 0, CLASSIFY_NONE },
		{ { .curl = CURLE_URL_MALFORMAT, .host = HOST }, 0,
		    CLASSIFY_NONE },
		{ { .status = 401, .host = HOST }, 0,
		    CLASSIFY_AUTH_UNAUTHORIZED },
		{ { .status = 403, .host = HOST }, 0,
		    CLASSIFY_FORBIDDEN_NETWORK },
		{ { .status = 404, .host = HOST }, 0, CLASSIFY_NOT_FOUND },
		{ { .status = 429, .host = HOST }, 0, CLASSIFY_THROTTLED },
		{ { .status = 403, .redirected = 1, .host = HOST }, 0,
		    CLASSIFY_REDIRECT_FAILED },
		{ { .curl = CURLE_ABORTED_BY_CALLBACK, .throttled = 1,
		    .host = HOST }, 0, CLASSIFY_THROTTLED },
		{ { .curl = CURLE_COULDNT_CONNECT, .os_errno = ECONNREFUSED,
		    .circuit = CLASSIFY_CONNECTION_REFUSED, .host = HOST }, 0,
		    CLASSIFY_CONNECTION_REFUSED },
		/* A token endpoint's refusal gives no token. */
		{ { .phase = CLASSIFY_PHASE_TOKEN, .status = 400,
		    .host = HOST }, 0, CLASSIFY_AUTH_UNAUTHORIZED },
		{ { .status = 500, .host = HOST }, 1,
		    CLASSIFY_UPSTREAM_UNAVAILABLE },
		{ { .status = 503, .redirected = 1, .host = HOST }, 1,
		    CLASSIFY_UPSTREAM_UNAVAILABLE },
		{ { .curl = CURLE_COULDNT_CONNECT, .os_errno = ECONNREFUSED,
		    .host = HOST }, 1, CLASSIFY_CONNECTION_REFUSED },
		{ { .curl = CURLE_OPERATION_TIMEDOUT, .connected = 1,
		    .host = HOST }, 1, CLASSIFY_IO_TIMEOUT },
		{ { .curl = CURLE_COULDNT_RESOLVE_HOST, .host = HOST }, 1,
		    CLASSIFY_DNS_FAILURE },
		{ { .curl = CURLE_PEER_FAILED_VERIFICATION, .host = HOST }, 1,
		    CLASSIFY_TLS_ERROR },
		{ { .curl = CURLE_HTTP2, .connected = 1, .host = HOST }, 1,
		    CLASSIFY_UPSTREAM_UNAVAILABLE },
		{ { .curl = CURLE_COULDNT_RESOLVE_HOST, .redirected = 1,
		    .host = HOST }, 1, CLASSIFY_REDIRECT_FAILED },
		{ { .phase = CLASSIFY_PHASE_BODY, .status = 200,
		    .host = HOST }, 1, CLASSIFY_UPSTREAM_UNAVAILABLE },
	};
	struct classify_result r;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		classify(&t[i].in, &r);
		if (r.fault != t[i].fault || r.cause != t[i].cause)
			fail_msg("case %zu (status %ld, curl %d): got %s "
			    "fault %d, want %s fault %d", i, t[i].in.status,
			    (int)t[i].in.curl, classify_cause_name(r.cause),
			    r.fault, classify_cause_name(t[i].cause),
			    t[i].fault);
	}
}

/* Every hint a cause can give is its own: none is shared with another. */
static void
test_hints_distinct(void **state)
{
	const char *by_cause[CLASSIFY_NCAUSES];
	struct classify_result r;
	size_t i, j;
	int a, b;

	(void)state;
	for (a = 1; a < CLASSIFY_NCAUSES; a++) {
		by_cause[a] = classify_hint(a);
		assert_non_null(by_cause[a]);
		assert_string_not_equal(classify_cause_name(a), "none");
		for (b = 1; b < a; b++)
			assert_string_not_equal(by_cause[a], by_cause[b]);
	}
	for (i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
		classify(&samples[i].in, &r);
		for (j = 0; j < sizeof(samples) / sizeof(samples[0]); j++) {
			struct classify_result o;

			classify(&samples[j].in, &o);
			if (o.cause != r.cause && r.hint != NULL &&
			    o.hint != NULL)
				assert_string_not_equal(r.hint, o.hint);
		}
	}
	/* The narrower hints say more than the cause's own. */
	classify(&samples[1].in, &r);
	assert_string_not_equal(r.hint, classify_hint(r.cause));
	classify(&samples[6].in, &r);
	assert_string_not_equal(r.hint, classify_hint(r.cause));
	assert_non_null(strstr(r.hint, "network-rule"));
}

static void
test_name_typo(void **state)
{
	static const char *typos[] = { "myacr.azureacr.io", "myacr.azurcr.io",
	    "myacr.azurecr.com", "myacr.azure.cr.io", "myacr.azurecrio",
	    "MYACR.AZUREACR.IO", "myacr.azureacr.io:443", "myacr.azurecr.oi",
	    "myacrazurecr.io", "azureacr.io" };
	static const char *fine[] = { "myacr.azurecr.io", "myacr.azurecr.cn",
	    "myacr.azurecr.us", "MyAcr.AzureCR.io:443", "myacr.azurecr.io.",
	    "docker.io", "registry-1.docker.io", "mcr.microsoft.com",
	    "ghcr.io", "quay.io", "gcr.io", "127.0.0.1:5000", "localhost",
	    "registry.k8s.io", "public.ecr.aws", "example.io", "" };
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(typos) / sizeof(typos[0]); i++)
		if (!classify_name_typo(typos[i]))
			fail_msg("%s is a typo", typos[i]);
	for (i = 0; i < sizeof(fine) / sizeof(fine[0]); i++)
		if (classify_name_typo(fine[i]))
			fail_msg("%s is not a typo", fine[i]);
	assert_false(classify_name_typo(NULL));
}

static void
test_platform(void **state)
{
	static const char index[] = "{\"schemaVersion\":2,\"manifests\":["
	    "{\"digest\":\"sha256:a\",\"platform\":{\"os\":\"linux\","
	    "\"architecture\":\"amd64\"}},"
	    "{\"digest\":\"sha256:b\",\"platform\":{\"os\":\"linux\","
	    "\"architecture\":\"arm64\",\"variant\":\"v8\"}},"
	    "{\"digest\":\"sha256:c\",\"platform\":{\"os\":\"unknown\","
	    "\"architecture\":\"unknown\"}}]}";
	static const char windows[] = "{\"manifests\":[{\"platform\":"
	    "{\"os\":\"windows\",\"architecture\":\"amd64\"}}]}";
	static const char single[] = "{\"schemaVersion\":2,\"config\":{},"
	    "\"layers\":[]}";
	struct platform p;
	char have[128], buf[96];

	(void)state;
	assert_int_equal(platform_parse("linux/amd64", &p), 0);
	assert_int_equal(platform_index_match(index, strlen(index), &p, have,
	    sizeof(have)), 1);
	assert_string_equal(have, "linux/amd64, linux/arm64/v8");
	assert_int_equal(platform_parse("linux/arm64", &p), 0);
	assert_int_equal(platform_index_match(index, strlen(index), &p, have,
	    sizeof(have)), 1);
	assert_int_equal(platform_parse("linux/arm64/v8", &p), 0);
	assert_int_equal(platform_index_match(index, strlen(index), &p, have,
	    sizeof(have)), 1);
	assert_int_equal(platform_parse("linux/arm/v7", &p), 0);
	platform_format(&p, buf, sizeof(buf));
	assert_string_equal(buf, "linux/arm/v7");
	assert_int_equal(platform_index_match(index, strlen(index), &p, have,
	    sizeof(have)), 0);
	assert_string_equal(have, "linux/amd64, linux/arm64/v8");
	assert_int_equal(platform_parse("linux/amd64", &p), 0);
	assert_int_equal(platform_index_match(windows, strlen(windows), &p,
	    have, sizeof(have)), 0);
	assert_string_equal(have, "windows/amd64");
	assert_int_equal(platform_index_match(single, strlen(single), &p,
	    have, sizeof(have)), -1);
	assert_int_equal(platform_index_match("not json", 8, &p, have,
	    sizeof(have)), -1);
	/* Malformed settings. */
	assert_int_equal(platform_parse("linux", &p), -1);
	assert_int_equal(platform_parse("Linux/amd64", &p), -1);
	assert_int_equal(platform_parse("linux/amd64/", &p), -1);
	assert_int_equal(platform_parse("linux//amd64", &p), -1);
	assert_int_equal(platform_parse("linux/arm/v7/x", &p), -1);
	/* The node is something OCI names. */
	platform_node(&p);
	assert_string_equal(p.os, "linux");
	assert_string_not_equal(p.arch, "x86_64");
	assert_string_not_equal(p.arch, "aarch64");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_cause),
		cmocka_unit_test(test_faults),
		cmocka_unit_test(test_hints_distinct),
		cmocka_unit_test(test_name_typo),
		cmocka_unit_test(test_platform),
	};

	return cmocka_run_group_tests_name("classify", tests, NULL, NULL);
}
