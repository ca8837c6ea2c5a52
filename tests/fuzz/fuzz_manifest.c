/*
 * fuzz_manifest: what a registry sends as a manifest, an image index, an
 * image config or an error body: the platform checks of an index and of
 * a config (platform.h) against a few node platforms, and the OCI code
 * read from an error body (reply.h). Input: the body.
 */
#include "fuzz.h"
#include "platform.h"
#include "reply.h"

static void
fuzz_platforms(const uint8_t *data, size_t size)
{
	static const char *nodes[] = { "linux/amd64", "linux/arm64/v8",
	    "windows/amd64" };
	struct platform p;
	char have[512];
	size_t i;
	int rc;

	for (i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++) {
		FUZZ_CHECK(platform_parse(nodes[i], &p) == 0);
		rc = platform_index_match(data, size, &p, have, sizeof(have));
		FUZZ_CHECK(rc >= -1 && rc <= 1 && strlen(have) < sizeof(have));
		/* Short answers: "have" is cut, never overrun. */
		rc = platform_index_match(data, size, &p, have, 8);
		FUZZ_CHECK(rc >= -1 && rc <= 1 && strlen(have) < 8);
		rc = platform_config_match(data, size, &p, have, sizeof(have));
		FUZZ_CHECK(rc >= -1 && rc <= 1 && strlen(have) < sizeof(have));
		rc = platform_config_match(data, size, &p, have, 8);
		FUZZ_CHECK(rc >= -1 && rc <= 1 && strlen(have) < 8);
	}
}

static void
fuzz_error_body(const uint8_t *data, size_t size)
{
	static const enum oci_route_kind kinds[] = { OCI_ROUTE_MANIFEST,
	    OCI_ROUTE_BLOB, OCI_ROUTE_TAGS };
	static const long statuses[] = { 401, 403, 404, 416, 429, 500, 503 };
	enum oci_err err;
	size_t i, j;
	int st;

	for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		for (j = 0; j < sizeof(statuses) / sizeof(statuses[0]); j++) {
			st = reply_upstream_status(kinds[i], statuses[j], data,
			    size, &err);
			/* Never 401 or 429 to containerd. */
			FUZZ_CHECK(st >= 400 && st <= 599 && st != 401 &&
			    st != 429);
		}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct platform p;
	char *s;

	fuzz_platforms(data, size);
	fuzz_error_body(data, size);
	/* [server] platform takes the same grammar. */
	s = fuzz_str(data, size);
	if (platform_parse(s, &p) == 0)
		FUZZ_CHECK(p.os[0] != '\0' && p.arch[0] != '\0');
	free(s);
	return 0;
}
