#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
#include <openssl/evp.h>

#include "guard.h"

#define TOKEN	"s3cret-token-0123456789abcdef"

static unsigned char want[32];

/* "Basic " and base64 of plain, in a static buffer. */
static const char *
basic(const char *plain)
{
	static char buf[256];

	memcpy(buf, "Basic ", 6);
	EVP_EncodeBlock((unsigned char *)buf + 6, (const unsigned char *)plain,
	    (int)strlen(plain));
	return buf;
}

static void
test_bearer(void **state)
{
	(void)state;
	assert_true(guard_token_match("Bearer " TOKEN, want));
	assert_true(guard_token_match("bearer   " TOKEN, want));
	assert_false(guard_token_match(NULL, want));
	assert_false(guard_token_match("", want));
	assert_false(guard_token_match("Bearer", want));
	assert_false(guard_token_match("Bearer ", want));
	assert_false(guard_token_match("Bearer " TOKEN "x", want));
	assert_false(guard_token_match("Bearer s3cret-token", want));
	assert_false(guard_token_match("Token " TOKEN, want));
	assert_false(guard_token_match(TOKEN, want));
}

static void
test_basic(void **state)
{
	(void)state;
	/* Any user name; the token is the password. */
	assert_true(guard_token_match(basic("pullproxy:" TOKEN), want));
	assert_true(guard_token_match(basic(":" TOKEN), want));
	/* Lengths 1 and 2 mod 3: one and two padding characters. */
	assert_true(guard_token_match(basic("ab:" TOKEN), want));
	assert_true(guard_token_match(basic("abc:" TOKEN), want));
	assert_false(guard_token_match(basic(TOKEN), want));	/* no ':' */
	assert_false(guard_token_match(basic(TOKEN ":x"), want));
	assert_false(guard_token_match(basic("u:" TOKEN ":"), want));
	assert_false(guard_token_match(basic("u:"), want));
	assert_false(guard_token_match("Basic ", want));
	assert_false(guard_token_match("Basic YQ", want));	/* not 4n */
	assert_false(guard_token_match("Basic !!!!", want));
	assert_false(guard_token_match("Basic ====", want));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bearer),
		cmocka_unit_test(test_basic),
	};

	EVP_Digest(TOKEN, strlen(TOKEN), want, NULL, EVP_sha256(), NULL);
	return cmocka_run_group_tests_name("guard", tests, NULL, NULL);
}
