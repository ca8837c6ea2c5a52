/*
 * fuzz_token_json: the JSON answers of a token endpoint, ACR's exchange
 * and IMDS, through auth_token_parse, and the token's lifetime from its
 * JWT exp or expires_in. Input: the answer body.
 */
#include <time.h>

#include "auth.h"
#include "fuzz.h"

/* The same keys auth.c asks for in each phase. */
static const char *fuzz_keys[][2] = {
	{ "token", "access_token" },	/* token endpoint */
	{ "refresh_token", NULL },	/* /oauth2/exchange */
	{ "access_token", NULL },	/* IMDS */
};

static void
fuzz_lifetime(const char *tok, long expires)
{
	static const time_t nows[] = { 0, 1700000000, 4102444800 };
	long lifetime, margin;
	time_t at;
	size_t i;

	for (i = 0; i < sizeof(nows) / sizeof(nows[0]); i++) {
		lifetime = auth_lifetime(tok, expires, nows[i]);
		margin = auth_margin(lifetime);
		/* auth.c keeps now + lifetime and now + lifetime - margin. */
		FUZZ_CHECK(!__builtin_add_overflow(nows[i], lifetime, &at) &&
		    !__builtin_sub_overflow(at, margin, &at));
		if (lifetime > 0)
			FUZZ_CHECK(margin >= 0 && margin <= lifetime / 2 + 1);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *tok, *s;
	long long exp;
	long expires;
	size_t i;

	for (i = 0; i < sizeof(fuzz_keys) / sizeof(fuzz_keys[0]); i++) {
		tok = auth_token_parse(data, size, fuzz_keys[i][0],
		    fuzz_keys[i][1], &expires);
		if (tok == NULL)
			continue;
		FUZZ_CHECK(*tok != '\0');
		fuzz_lifetime(tok, expires);
		free(tok);
	}
	/* The input as a token itself: a JWT whose claims are garbage. */
	s = fuzz_str(data, size);
	auth_jwt_exp(s, &exp);
	fuzz_lifetime(s, -1);
	free(s);
	return 0;
}
