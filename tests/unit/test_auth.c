#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "auth.h"

static void
expect_challenge(const char *value, enum auth_scheme scheme,
    const char *realm, const char *service, const char *scope)
{
	struct auth_challenge c;

	if (auth_challenge_parse(value, &c) != 0)
		fail_msg("did not parse: %s", value);
	assert_int_equal(c.scheme, scheme);
	assert_string_equal(c.realm, realm);
	assert_string_equal(c.service, service);
	assert_string_equal(c.scope, scope);
}

static void
test_challenge(void **state)
{
	(void)state;
	/* ACR's, as the fake and the real one send it. */
	expect_challenge("Bearer realm=\"https://r.azurecr.io/oauth2/token\","
	    "service=\"r.azurecr.io\",scope=\"repository:a/b:pull\"",
	    AUTH_SCHEME_BEARER, "https://r.azurecr.io/oauth2/token",
	    "r.azurecr.io", "repository:a/b:pull");
	/* Spaces around the separators, names in any case, unknown ones. */
	expect_challenge("bearer  Realm = \"https://a/t\" , SERVICE=a ,"
	    " error=\"insufficient_scope\"", AUTH_SCHEME_BEARER, "https://a/t",
	    "a", "");
	/* Commas and escapes inside quotes; several scopes in one. */
	expect_challenge("Bearer realm=\"https://a/t?x=1,y=2\",scope="
	    "\"repository:a:pull,push repository:b:pull\",service=\"s\\\"q\"",
	    AUTH_SCHEME_BEARER, "https://a/t?x=1,y=2",
	    "s\"q", "repository:a:pull,push repository:b:pull");
	/* Token (unquoted) values, URL characters included. */
	expect_challenge("Bearer realm=https://auth.docker.io/token,"
	    "service=registry.docker.io", AUTH_SCHEME_BEARER,
	    "https://auth.docker.io/token", "registry.docker.io", "");
	expect_challenge("Basic realm=\"Registry Realm\"", AUTH_SCHEME_BASIC,
	    "Registry Realm", "", "");
	expect_challenge("Basic", AUTH_SCHEME_BASIC, "", "", "");
	/* Several challenges: Bearer wins whatever its place. */
	expect_challenge("Basic realm=\"x\", Bearer realm=\"https://a/t\","
	    "service=\"s\"", AUTH_SCHEME_BEARER, "https://a/t", "s", "");
	expect_challenge("Bearer realm=\"https://a/t\", Basic realm=\"x\"",
	    AUTH_SCHEME_BEARER, "https://a/t", "", "");
	expect_challenge("Negotiate, Basic realm=\"x\"", AUTH_SCHEME_BASIC, "x",
	    "", "");
}

static void
test_challenge_malformed(void **state)
{
	static const char *bad[] = {
		"",
		"   ",
		"Negotiate",			/* nothing we can answer */
		"realm=\"x\"",			/* a parameter, no scheme */
		"Bearer realm=\"unterminated",
		"Bearer realm=",
		"Bearer realm=\"x\" service=\"y\"",	/* no comma */
		"Bearer =\"x\"",
		"Bearer realm=\"x\",service=\"a\"b",
	};
	struct auth_challenge c;
	char big[3 * AUTH_PARAM_MAX];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (auth_challenge_parse(bad[i], &c) != -1)
			fail_msg("parsed: \"%s\"", bad[i]);
	/* A value longer than we keep is refused, not cut. */
	snprintf(big, sizeof(big), "Bearer realm=\"https://a/%0*d\"",
	    AUTH_PARAM_MAX, 0);
	assert_int_equal(auth_challenge_parse(big, &c), -1);
}

/* A JWT with this payload (header and signature do not matter here). */
static const char *
jwt(const char *payload_b64url)
{
	static char buf[512];

	snprintf(buf, sizeof(buf), "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.%s."
	    "c2lnbmF0dXJl", payload_b64url);
	return buf;
}

static void
test_jwt_exp(void **state)
{
	long long exp;

	(void)state;
	/* {"exp":1700000000,"sub":"x"} */
	assert_int_equal(auth_jwt_exp(jwt("eyJleHAiOjE3MDAwMDAwMDAsInN1YiI6Ing"
	    "ifQ"), &exp), 0);
	assert_true(exp == 1700000000LL);
	/* The same, padded: {"exp":1700000000,"sub":"x"} */
	assert_int_equal(auth_jwt_exp(jwt("eyJleHAiOjE3MDAwMDAwMDAsInN1YiI6Ing"
	    "ifQ=="), &exp), 0);
	/* base64url's - and _: {"a":"~~~?","exp":42} */
	assert_int_equal(auth_jwt_exp(jwt("eyJhIjoifn5-PyIsImV4cCI6NDJ9"),
	    &exp), 0);
	assert_true(exp == 42);
	/* {"exp":1.7e9} */
	assert_int_equal(auth_jwt_exp(jwt("eyJleHAiOjEuN2U5fQ"), &exp), 0);
	assert_true(exp == 1700000000LL);
	/* {"sub":"x"}: no exp */
	assert_int_equal(auth_jwt_exp(jwt("eyJzdWIiOiJ4In0"), &exp), -1);
	/* {"exp":"soon"} */
	assert_int_equal(auth_jwt_exp(jwt("eyJleHAiOiJzb29uIn0"), &exp), -1);
	assert_int_equal(auth_jwt_exp("opaque-token", &exp), -1);
	assert_int_equal(auth_jwt_exp("a.b", &exp), -1);
	assert_int_equal(auth_jwt_exp("a.!!!.c", &exp), -1);
	assert_int_equal(auth_jwt_exp("a.bm90IGpzb24.c", &exp), -1);
	assert_int_equal(auth_jwt_exp("a.A.c", &exp), -1);	/* 1 char */
}

static void
test_lifetime(void **state)
{
	const char *t = jwt("eyJleHAiOjE3MDAwMDAwMDAsInN1YiI6IngifQ");

	(void)state;
	/* The JWT's exp wins over expires_in. */
	assert_int_equal(auth_lifetime(t, 5, 1700000000 - 3600), 3600);
	assert_int_equal(auth_lifetime(t, -1, 1700000000 + 10), -10);
	assert_int_equal(auth_lifetime("opaque", 300, 0), 300);
	assert_int_equal(auth_lifetime("opaque", 0, 0), 0);
	assert_int_equal(auth_lifetime("opaque", -1, 0), 60);
	/* A day at most, and no overflow: expires_in LONG_MAX (fuzzing
	 * found it), exp {"exp":-9223372036854775808} and {"exp":1e300}. */
	assert_int_equal(auth_lifetime("opaque", 0x7fffffffffffffffL,
	    1700000000), 86400);
	assert_int_equal(auth_lifetime(jwt("eyJleHAiOi05MjIzMzcyMDM2ODU0Nzc1"
	    "ODA4fQ"), -1, 1700000000), -86400);
	assert_int_equal(auth_lifetime(jwt("eyJleHAiOjFlMzAwfQ"), 7,
	    1700000000), 7);

	/* 10%, at least 30 s, at most 5 min, never over half the life. */
	assert_int_equal(auth_margin(10800), 300);
	assert_int_equal(auth_margin(3000), 300);
	assert_int_equal(auth_margin(1200), 120);
	assert_int_equal(auth_margin(300), 30);
	assert_int_equal(auth_margin(60), 30);
	assert_int_equal(auth_margin(40), 20);
	assert_int_equal(auth_margin(2), 1);
	assert_int_equal(auth_margin(1), 0);
	assert_int_equal(auth_margin(0), 0);
}

static void
test_scope(void **state)
{
	char out[256], small[16];

	(void)state;
	assert_int_equal(auth_scope_name("library/alpine", out, sizeof(out)),
	    0);
	assert_string_equal(out, "repository:library/alpine:pull");
	assert_int_equal(auth_scope_name("a/b/c", out, sizeof(out)), 0);
	assert_string_equal(out, "repository:a/b/c:pull");
	/* No repository (/v2/, token endpoints): no scope. */
	assert_int_equal(auth_scope_name(NULL, out, sizeof(out)), -1);
	assert_string_equal(out, "");
	assert_int_equal(auth_scope_name("", out, sizeof(out)), -1);
	assert_string_equal(out, "");
	assert_int_equal(auth_scope_name("a-long-name", small, sizeof(small)),
	    -1);
	assert_string_equal(small, "");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_challenge),
		cmocka_unit_test(test_challenge_malformed),
		cmocka_unit_test(test_jwt_exp),
		cmocka_unit_test(test_lifetime),
		cmocka_unit_test(test_scope),
	};

	return cmocka_run_group_tests_name("auth", tests, NULL, NULL);
}
