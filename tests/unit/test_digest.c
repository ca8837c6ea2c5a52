#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "digest.h"

/* Known answers from FIPS 180-2 and the empty string. */
static void
test_known_answers(void **state)
{
	char out[DIGEST_STR_LEN + 1];
	struct digest *d;

	(void)state;
	d = digest_new();
	assert_non_null(d);
	digest_final(d, out);
	assert_string_equal(out, "sha256:"
	    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	digest_free(d);

	d = digest_new();
	digest_update(d, "ab", 2);
	digest_update(d, "c", 1);	/* streaming across calls */
	digest_final(d, out);
	assert_string_equal(out, "sha256:"
	    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	assert_int_equal(strlen(out), DIGEST_STR_LEN);
	digest_free(d);
}

static int
matches(const char *ref, const char *content)
{
	struct digest *d = digest_new_for(ref);
	int rc;

	assert_non_null(d);
	digest_update(d, content, strlen(content));
	rc = digest_matches(d, ref);
	digest_free(d);
	return rc;
}

static void
test_matches(void **state)
{
	static const char s256[] = "sha256:"
	    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
	static const char s512[] = "sha512:"
	    "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
	    "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";

	(void)state;
	assert_int_equal(matches(s256, "abc"), 1);
	assert_int_equal(matches(s256, "abd"), 0);
	assert_int_equal(matches(s512, "abc"), 1);
	assert_int_equal(matches(s512, ""), 0);
	/* A sha256 value under sha512's name is no match, nor a short one. */
	assert_int_equal(matches("sha512:ba7816bf", "abc"), 0);
	assert_null(digest_new_for("md5:900150983cd24fb0d6963f7d28e17f72"));
	assert_null(digest_new_for("ba7816bf"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_known_answers),
		cmocka_unit_test(test_matches),
	};

	return cmocka_run_group_tests_name("digest", tests, NULL, NULL);
}
