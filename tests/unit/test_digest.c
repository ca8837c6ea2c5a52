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

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_known_answers),
	};

	return cmocka_run_group_tests_name("digest", tests, NULL, NULL);
}
