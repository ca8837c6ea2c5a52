/*
 * fuzz_www_authenticate: what a registry (or anything answering in its
 * place) sends back in WWW-Authenticate, through auth_challenge_parse,
 * and the scope auth derives from a request URL; and the other way, the
 * Authorization a client sends pullproxy (guard_token_match). Input: the
 * header value; its second line, when there is one, is the URL.
 */
#include "auth.h"
#include "fuzz.h"
#include "guard.h"

static void
fuzz_challenge(const char *value)
{
	struct auth_challenge c;

	if (auth_challenge_parse(value, &c) == -1)
		return;
	FUZZ_CHECK(c.scheme == AUTH_SCHEME_BASIC ||
	    c.scheme == AUTH_SCHEME_BEARER);
	FUZZ_CHECK(strlen(c.realm) < sizeof(c.realm) &&
	    strlen(c.service) < sizeof(c.service) &&
	    strlen(c.scope) < sizeof(c.scope));
}

static void
fuzz_scope(const char *name)
{
	char scope[AUTH_PARAM_MAX];

	if (auth_scope_name(name, scope, sizeof(scope)) == -1) {
		FUZZ_CHECK(scope[0] == '\0');
		return;
	}
	FUZZ_CHECK(strncmp(scope, "repository:", 11) == 0 &&
	    strlen(scope) == strlen(name) + 16 && strcmp(scope +
	    strlen(scope) - 5, ":pull") == 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const unsigned char zero[32];
	char *whole = fuzz_str(data, size), *s = fuzz_str(data, size);
	char *part[2];

	/* The whole input as one value too: a line break is just a byte. */
	fuzz_challenge(whole);
	/* No token hashes to zeros: nothing the input says may match. */
	FUZZ_CHECK(!guard_token_match(whole, zero));
	fuzz_split(s, '\n', part, 2);
	fuzz_challenge(part[0]);
	fuzz_scope(part[1]);
	free(whole);
	free(s);
	return 0;
}
