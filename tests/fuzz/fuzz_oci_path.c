/*
 * fuzz_oci_path: what a client controls in a request: the path, the
 * query's ns and a Range header (oci.h), and the head's framing
 * (guard.h). Input: lines path\nquery\nrange, then header fields, one
 * "Name: value" a line. The names, tags and digests are also checked as
 * raw bytes of exactly their length.
 */
#include <sys/queue.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "fuzz.h"
#include "guard.h"
#include "oci.h"

static void
fuzz_route(const char *path)
{
	struct oci_route r;
	size_t nlen, rlen;

	if (oci_route_parse(path, &r) != OCI_OK) {
		FUZZ_CHECK(r.kind == OCI_ROUTE_NONE);
		return;
	}
	nlen = strlen(r.name);
	rlen = strlen(r.reference);
	FUZZ_CHECK(nlen <= OCI_NAME_MAX && rlen <= OCI_REF_MAX);
	/* Nothing that could leave the path reaches the proxy. */
	FUZZ_CHECK(strstr(r.name, "..") == NULL && strchr(r.name, '%') == NULL);
	switch (r.kind) {
	case OCI_ROUTE_BASE:
		FUZZ_CHECK(nlen == 0 && rlen == 0);
		break;
	case OCI_ROUTE_TAGS:
		FUZZ_CHECK(oci_name_valid(r.name, nlen) && rlen == 0);
		break;
	case OCI_ROUTE_MANIFEST:
	case OCI_ROUTE_BLOB:
		FUZZ_CHECK(oci_name_valid(r.name, nlen));
		FUZZ_CHECK(r.by_digest ? oci_digest_valid(r.reference, rlen) :
		    oci_tag_valid(r.reference, rlen));
		FUZZ_CHECK(r.kind == OCI_ROUTE_MANIFEST || r.by_digest);
		break;
	default:
		FUZZ_CHECK(0);
	}
}

static void
fuzz_ns(const char *query)
{
	char ns[OCI_NAME_MAX + 1];
	int rc;

	rc = oci_query_ns(*query != '\0' ? query : NULL, ns, sizeof(ns));
	FUZZ_CHECK(rc >= -1 && rc <= 1);
	if (rc == 1)
		FUZZ_CHECK(strlen(ns) <= OCI_NAME_MAX && oci_host_valid(ns) &&
		    strpbrk(ns, "/?#@%") == NULL);
}

static void
fuzz_range(const char *value)
{
	static const uint64_t sizes[] = { 0, 1, 2, 1023, 1 << 20,
	    UINT64_MAX - 1, UINT64_MAX };
	struct oci_range r;
	uint64_t off, len;
	size_t i;

	if (oci_range_parse(value, &r) != 1)
		return;
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		if (oci_range_resolve(&r, sizes[i], &off, &len) != 1)
			continue;
		FUZZ_CHECK(len > 0 && off < sizes[i] && len <= sizes[i] - off);
	}
}

/* The fields as evhttp would hand them over: name, colon, value. */
static void
fuzz_head(const char *target, char *fields)
{
	struct evkeyvalq h;
	const char *why = NULL;
	char *line, *colon;
	int st;

	TAILQ_INIT(&h);
	for (line = strtok(fields, "\n"); line != NULL;
	    line = strtok(NULL, "\n")) {
		if ((colon = strchr(line, ':')) == NULL)
			continue;
		*colon++ = '\0';
		evhttp_add_header(&h, line, colon + strspn(colon, " "));
	}
	st = guard_head(target, &h, &why);
	FUZZ_CHECK(st == 0 || ((st == 400 || st == 414 || st == 431) &&
	    why != NULL));
	evhttp_clear_headers(&h);
}

/* The grammar checks on raw bytes: they must not read past len. */
static void
fuzz_raw(const uint8_t *data, size_t size)
{
	char *copy = malloc(size > 0 ? size : 1);

	if (copy == NULL)
		abort();
	memcpy(copy, data, size);
	oci_name_valid(copy, size);
	oci_tag_valid(copy, size);
	oci_digest_valid(copy, size);
	free(copy);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = fuzz_str(data, size), *part[4], body[512];
	int n;

	fuzz_split(s, '\n', part, 4);
	fuzz_route(part[0]);
	fuzz_ns(part[1]);
	fuzz_range(part[2]);
	fuzz_head(part[0], part[3]);
	/* A path may end up in an error body's message. */
	n = oci_err_body(body, sizeof(body), OCI_ERR_NAME_INVALID, part[0],
	    part[1]);
	FUZZ_CHECK(n == -1 || (size_t)n == strlen(body));
	fuzz_raw(data, size);
	free(s);
	return 0;
}
