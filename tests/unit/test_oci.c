#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "oci.h"

#define D64 "sha256:" \
	"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

static int
name_ok(const char *s)
{
	return oci_name_valid(s, strlen(s));
}

static void
test_names(void **state)
{
	char longname[300];

	(void)state;
	assert_true(name_ok("library/alpine"));
	assert_true(name_ok("a"));
	assert_true(name_ok("my-org/sub.team/app_1"));
	assert_true(name_ok("a__b"));
	assert_true(name_ok("a---b"));
	assert_false(name_ok(""));
	assert_false(name_ok("Library/alpine"));	/* upper case */
	assert_false(name_ok("a/../b"));		/* dot segment */
	assert_false(name_ok("a/./b"));
	assert_false(name_ok("a//b"));
	assert_false(name_ok("/a"));
	assert_false(name_ok("a/"));
	assert_false(name_ok("a___b"));			/* three underscores */
	assert_false(name_ok("a..b"));
	assert_false(name_ok("a.-b"));
	assert_false(name_ok("-a"));
	assert_false(name_ok("a-"));
	assert_false(name_ok("a%2fb"));
	assert_false(name_ok("a b"));
	memset(longname, 'a', sizeof(longname));
	assert_true(oci_name_valid(longname, 255));
	assert_false(oci_name_valid(longname, 256));
}

static void
test_tags_and_digests(void **state)
{
	char tag[130];

	(void)state;
	assert_true(oci_tag_valid("latest", 6));
	assert_true(oci_tag_valid("_v1.2-RC_3", 10));
	assert_false(oci_tag_valid(".hidden", 7));
	assert_false(oci_tag_valid("-x", 2));
	assert_false(oci_tag_valid("a/b", 3));
	assert_false(oci_tag_valid("", 0));
	memset(tag, 'a', sizeof(tag));
	assert_true(oci_tag_valid(tag, 128));
	assert_false(oci_tag_valid(tag, 129));

	assert_true(oci_digest_valid(D64, strlen(D64)));
	assert_false(oci_digest_valid(D64, strlen(D64) - 1));	/* short */
	assert_false(oci_digest_valid("sha256:E3B0", 11));
	assert_false(oci_digest_valid("md5:d41d8cd98f00b204e9800998ecf8427e",
	    36));
	assert_false(oci_digest_valid("sha256:"
	    "E3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
	    71));						/* upper hex */
}

static void
test_routes(void **state)
{
	struct oci_route r;

	(void)state;
	assert_int_equal(oci_route_parse("/v2/", &r), OCI_OK);
	assert_int_equal(r.kind, OCI_ROUTE_BASE);
	assert_int_equal(oci_route_parse("/v2", &r), OCI_OK);
	assert_int_equal(r.kind, OCI_ROUTE_BASE);

	assert_int_equal(oci_route_parse("/v2/library/alpine/manifests/3.19",
	    &r), OCI_OK);
	assert_int_equal(r.kind, OCI_ROUTE_MANIFEST);
	assert_string_equal(r.name, "library/alpine");
	assert_string_equal(r.reference, "3.19");
	assert_false(r.by_digest);

	assert_int_equal(oci_route_parse("/v2/a/manifests/" D64, &r), OCI_OK);
	assert_true(r.by_digest);
	assert_string_equal(r.reference, D64);

	/* A repository may itself be called "blobs". */
	assert_int_equal(oci_route_parse("/v2/x/blobs/blobs/" D64, &r),
	    OCI_OK);
	assert_int_equal(r.kind, OCI_ROUTE_BLOB);
	assert_string_equal(r.name, "x/blobs");

	assert_int_equal(oci_route_parse("/v2/team/app/tags/list", &r),
	    OCI_OK);
	assert_int_equal(r.kind, OCI_ROUTE_TAGS);
	assert_string_equal(r.name, "team/app");
}

static void
test_route_errors(void **state)
{
	struct oci_route r;

	(void)state;
	assert_int_equal(oci_route_parse("/", &r), OCI_ERR_NOT_FOUND);
	assert_int_equal(oci_route_parse("/v1/a/manifests/x", &r),
	    OCI_ERR_NOT_FOUND);
	assert_int_equal(oci_route_parse("/v2/a/uploads/x", &r),
	    OCI_ERR_NOT_FOUND);
	assert_int_equal(oci_route_parse("/v2/a/manifests", &r),
	    OCI_ERR_NOT_FOUND);
	assert_int_equal(oci_route_parse("/v2/A/manifests/x", &r),
	    OCI_ERR_NAME_INVALID);
	assert_int_equal(oci_route_parse("/v2/a/../b/manifests/x", &r),
	    OCI_ERR_NAME_INVALID);
	assert_int_equal(oci_route_parse("/v2/a/%2e%2e/b/manifests/x", &r),
	    OCI_ERR_NAME_INVALID);
	assert_int_equal(oci_route_parse("/v2/a%2fb/manifests/x", &r),
	    OCI_ERR_NAME_INVALID);
	assert_int_equal(oci_route_parse("/v2//manifests/x", &r),
	    OCI_ERR_NAME_INVALID);
	assert_int_equal(oci_route_parse("/v2/a/manifests/", &r),
	    OCI_ERR_MANIFEST_INVALID);
	assert_int_equal(oci_route_parse("/v2/a/manifests/-bad", &r),
	    OCI_ERR_MANIFEST_INVALID);
	assert_int_equal(oci_route_parse("/v2/a/manifests/sha256:abc", &r),
	    OCI_ERR_DIGEST_INVALID);
	assert_int_equal(oci_route_parse("/v2/a/blobs/latest", &r),
	    OCI_ERR_DIGEST_INVALID);
	assert_int_equal(r.kind, OCI_ROUTE_NONE);
}

static void
test_ns(void **state)
{
	char ns[OCI_NAME_MAX + 1];

	(void)state;
	assert_int_equal(oci_query_ns(NULL, ns, sizeof(ns)), 0);
	assert_int_equal(oci_query_ns("n=1", ns, sizeof(ns)), 0);
	assert_int_equal(oci_query_ns("ns=myacr.azurecr.io", ns, sizeof(ns)),
	    1);
	assert_string_equal(ns, "myacr.azurecr.io");
	/* containerd escapes the port's colon. */
	assert_int_equal(oci_query_ns("x=1&ns=127.0.0.1%3A5001", ns,
	    sizeof(ns)), 1);
	assert_string_equal(ns, "127.0.0.1:5001");
	assert_int_equal(oci_query_ns("ns=[::1]:5000", ns, sizeof(ns)), 1);
	assert_string_equal(ns, "[::1]:5000");
	assert_int_equal(oci_query_ns("ns=", ns, sizeof(ns)), -1);
	assert_int_equal(oci_query_ns("ns=a&ns=b", ns, sizeof(ns)), -1);
	assert_int_equal(oci_query_ns("ns=a%2Fb", ns, sizeof(ns)), -1);
	assert_int_equal(oci_query_ns("ns=a%2", ns, sizeof(ns)), -1);
	assert_int_equal(oci_query_ns("ns=host:99999x", ns, sizeof(ns)), -1);
	assert_int_equal(oci_query_ns("ns=user@host", ns, sizeof(ns)), -1);
	assert_int_equal(oci_query_ns("ns=abcdefghij", ns, 8), -1);
}

static void
test_ranges(void **state)
{
	struct oci_range r;
	uint64_t off, len;

	(void)state;
	assert_int_equal(oci_range_parse("bytes=10-99", &r), 1);
	assert_int_equal(oci_range_resolve(&r, 1000, &off, &len), 1);
	assert_int_equal(off, 10);
	assert_int_equal(len, 90);
	assert_int_equal(oci_range_resolve(&r, 50, &off, &len), 1);
	assert_int_equal(len, 40);				/* clamped */
	assert_int_equal(oci_range_resolve(&r, 10, &off, &len), 0);

	assert_int_equal(oci_range_parse("bytes=100-", &r), 1);
	assert_int_equal(oci_range_resolve(&r, 1000, &off, &len), 1);
	assert_int_equal(off, 100);
	assert_int_equal(len, 900);

	assert_int_equal(oci_range_parse("bytes=-10", &r), 1);
	assert_int_equal(oci_range_resolve(&r, 1000, &off, &len), 1);
	assert_int_equal(off, 990);
	assert_int_equal(len, 10);
	assert_int_equal(oci_range_resolve(&r, 4, &off, &len), 1);
	assert_int_equal(off, 0);
	assert_int_equal(len, 4);
	assert_int_equal(oci_range_parse("bytes=-0", &r), 1);
	assert_int_equal(oci_range_resolve(&r, 4, &off, &len), 0);

	assert_int_equal(oci_range_parse("bytes=0-1,5-6", &r), 0);
	assert_int_equal(oci_range_parse("items=0-1", &r), 0);
	assert_int_equal(oci_range_parse("bytes=9-1", &r), -1);
	assert_int_equal(oci_range_parse("bytes=a-b", &r), -1);
	assert_int_equal(oci_range_parse("bytes=1-2x", &r), -1);
	assert_int_equal(oci_range_parse("bytes=", &r), -1);
	assert_int_equal(oci_range_parse("bytes=99999999999999999999-", &r),
	    -1);
}

static void
test_error_bodies(void **state)
{
	char buf[256];
	int n;

	(void)state;
	assert_int_equal(oci_err_status(OCI_ERR_NAME_INVALID), 400);
	assert_int_equal(oci_err_status(OCI_ERR_METHOD), 405);
	assert_int_equal(oci_err_status(OCI_ERR_TIMEOUT), 504);
	assert_string_equal(oci_err_code(OCI_ERR_BLOB_UNKNOWN),
	    "BLOB_UNKNOWN");

	n = oci_err_body(buf, sizeof(buf), OCI_ERR_NAME_UNKNOWN,
	    "say \"hi\"\n", "x\\y");
	assert_int_equal(n, (int)strlen(buf));
	assert_string_equal(buf, "{\"errors\":[{\"code\":\"NAME_UNKNOWN\","
	    "\"message\":\"say \\\"hi\\\"\\u000a\",\"detail\":\"x\\\\y\"}]}");
	n = oci_err_body(buf, sizeof(buf), OCI_ERR_DIGEST_INVALID, NULL, NULL);
	assert_true(n > 0);
	assert_non_null(strstr(buf, "\"code\":\"DIGEST_INVALID\""));
	assert_int_equal(oci_err_body(buf, 20, OCI_ERR_DIGEST_INVALID, NULL,
	    NULL), -1);
}

static void
test_tags_query(void **state)
{
	struct oci_route rt;

	(void)state;
	assert_int_equal(oci_route_parse("/v2/a/tags/list", &rt), OCI_OK);
	assert_int_equal(rt.tags_n, -1);
	assert_int_equal(oci_query_tags(NULL, &rt), 0);
	assert_int_equal(rt.tags_n, -1);
	assert_string_equal(rt.tags_last, "");
	assert_int_equal(oci_query_tags("ns=r.io&n=%32%30&last=v%2E1", &rt),
	    0);
	assert_int_equal(rt.tags_n, 20);
	assert_string_equal(rt.tags_last, "v.1");
	/* What would change the upstream query once decoded, or is no
	 * number or tag, is refused. */
	assert_int_equal(oci_query_tags("n=1%26ns%3Devil", &rt), -1);
	assert_int_equal(oci_query_tags("n=1%20x", &rt), -1);
	assert_int_equal(oci_query_tags("n=-1", &rt), -1);
	assert_int_equal(oci_query_tags("n=", &rt), -1);
	assert_int_equal(oci_query_tags("n=1&n=2", &rt), -1);
	assert_int_equal(oci_query_tags("n=99999999999999999", &rt), -1);
	assert_int_equal(oci_query_tags("last=a%26b", &rt), -1);
	assert_string_equal(rt.tags_last, "");
	assert_int_equal(oci_query_tags("last=.x", &rt), -1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_tags_and_digests),
		cmocka_unit_test(test_routes),
		cmocka_unit_test(test_route_errors),
		cmocka_unit_test(test_ns),
		cmocka_unit_test(test_tags_query),
		cmocka_unit_test(test_ranges),
		cmocka_unit_test(test_error_bodies),
	};

	return cmocka_run_group_tests_name("oci", tests, NULL, NULL);
}
