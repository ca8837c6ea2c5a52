/*
 * auth: tokens shaped like the real ones. Entra ID (IMDS) tokens, ACR
 * refresh and access tokens are all HS256 JWTs signed with one random
 * per-process key, so a token from another run never verifies. Blob URLs
 * carry a SAS-like HMAC over path and expiry.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "fakeacr.h"

#define AUTH_ACR_ISSUER		"Azure Container Registry"
#define AUTH_STS_ISSUER		"https://sts.windows.net/"
#define AUTH_DEFAULT_TENANT	"72f988bf-0000-4000-8000-00000000fa4e"
#define AUTH_TOKEN_USER		"00000000-0000-0000-0000-000000000000"

static unsigned char	auth_key[32];

int
auth_init(void)
{
	return RAND_bytes(auth_key, sizeof(auth_key)) == 1 ? 0 : -1;
}

void
auth_random_hex(char *out, size_t outlen)
{
	unsigned char	b[32];
	size_t		i, n = (outlen - 1) / 2;

	if (n > sizeof(b))
		n = sizeof(b);
	RAND_bytes(b, (int)n);
	for (i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", b[i]);
	out[2 * n] = '\0';
}

static void
auth_hmac(const char *data, size_t len, unsigned char mac[32])
{
	unsigned int	maclen = 32;

	HMAC(EVP_sha256(), auth_key, sizeof(auth_key),
	    (const unsigned char *)data, len, mac, &maclen);
}

/* Standard base64 when url is 0, unpadded base64url when 1. */
static char *
auth_b64(const unsigned char *p, size_t len, int url)
{
	char	*s, *c;

	if ((s = malloc(4 * ((len + 2) / 3) + 1)) == NULL)
		return NULL;
	EVP_EncodeBlock((unsigned char *)s, p, (int)len);
	if (url) {
		for (c = s; *c != '\0'; c++)
			if (*c == '+')
				*c = '-';
			else if (*c == '/')
				*c = '_';
		if ((c = strchr(s, '=')) != NULL)
			*c = '\0';
	}
	return s;
}

/* Decodes base64 or base64url, padded or not; NUL-terminated result. */
static unsigned char *
auth_unb64(const char *s, size_t len, size_t *outlen)
{
	unsigned char	*in, *out;
	size_t		 i, padded;
	int		 n;

	while (len > 0 && s[len - 1] == '=')
		len--;
	padded = (len + 3) / 4 * 4;
	if (len % 4 == 1 || (in = malloc(padded + 1)) == NULL)
		return NULL;
	for (i = 0; i < len; i++)
		in[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
	for (; i < padded; i++)
		in[i] = '=';
	if ((out = malloc(padded / 4 * 3 + 1)) == NULL) {
		free(in);
		return NULL;
	}
	n = EVP_DecodeBlock(out, in, (int)padded);
	free(in);
	if (n < 0) {
		free(out);
		return NULL;
	}
	/* EVP_DecodeBlock counts each padding character as a zero byte. */
	*outlen = (size_t)n - (padded - len);
	out[*outlen] = '\0';
	return out;
}

static char *
auth_jwt(json_t *claims)
{
	static const char	 header[] =
	    "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
	unsigned char		 mac[32];
	char			*h, *p, *sig, *body, *tok = NULL;
	char			*pl;

	pl = json_dumps(claims, JSON_COMPACT);
	json_decref(claims);
	if (pl == NULL)
		return NULL;
	h = auth_b64((const unsigned char *)header, strlen(header), 1);
	p = auth_b64((const unsigned char *)pl, strlen(pl), 1);
	free(pl);
	if (h != NULL && p != NULL && asprintf(&body, "%s.%s", h, p) != -1) {
		auth_hmac(body, strlen(body), mac);
		if ((sig = auth_b64(mac, sizeof(mac), 1)) != NULL &&
		    asprintf(&tok, "%s.%s", body, sig) == -1)
			tok = NULL;
		free(sig);
		free(body);
	}
	free(h);
	free(p);
	return tok;
}

static json_t *
auth_claims(const char *iss, const char *aud, const char *sub, long ttl)
{
	char	jti[33];
	time_t	now = time(NULL);

	auth_random_hex(jti, sizeof(jti));
	return json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "jti", jti,
	    "iss", iss, "aud", aud, "sub", sub, "iat", (json_int_t)now,
	    "nbf", (json_int_t)now, "exp", (json_int_t)(now + ttl));
}

/* An Entra ID access token as IMDS hands it out. */
char *
auth_imds_token(const char *client_id, const char *resource, long *exp)
{
	const char	*tid = fa_conf.tenant ? fa_conf.tenant :
			    AUTH_DEFAULT_TENANT;
	json_t		*c;
	char		*iss;

	if (asprintf(&iss, AUTH_STS_ISSUER "%s/", tid) == -1)
		return NULL;
	c = auth_claims(iss, resource, client_id, fa_conf.imds_ttl);
	free(iss);
	if (c == NULL)
		return NULL;
	*exp = (long)json_integer_value(json_object_get(c, "exp"));
	json_object_set_new(c, "appid", json_string(client_id));
	json_object_set_new(c, "oid", json_string(client_id));
	json_object_set_new(c, "tid", json_string(tid));
	return auth_jwt(c);
}

char *
auth_refresh_token(const char *sub, const char *tenant)
{
	json_t	*c;

	if ((c = auth_claims(AUTH_ACR_ISSUER, fa_conf.service, sub,
	    fa_conf.refresh_ttl)) == NULL)
		return NULL;
	json_object_set_new(c, "grant_type", json_string("refresh_token"));
	json_object_set_new(c, "tenant", json_string(tenant ? tenant :
	    AUTH_DEFAULT_TENANT));
	json_object_set_new(c, "version", json_string("1.0"));
	json_object_set_new(c, "generation", json_integer(
	    fa_conf.refresh_generation));
	return auth_jwt(c);
}

/* Steals access. */
char *
auth_access_token(const char *sub, json_t *access)
{
	json_t	*c;

	if ((c = auth_claims(AUTH_ACR_ISSUER, fa_conf.service, sub,
	    fa_conf.access_ttl)) == NULL) {
		json_decref(access);
		return NULL;
	}
	json_object_set_new(c, "access", access);
	json_object_set_new(c, "version", json_string("1.0"));
	return auth_jwt(c);
}

static int
auth_kind_ok(json_t *c, enum auth_kind kind)
{
	const char	*iss = json_string_value(json_object_get(c, "iss"));
	const char	*aud = json_string_value(json_object_get(c, "aud"));
	const char	*gt = json_string_value(json_object_get(c,
			    "grant_type"));
	json_t		*access = json_object_get(c, "access");

	if (iss == NULL || aud == NULL)
		return 0;
	switch (kind) {
	case AUTH_IMDS:
		return strncmp(iss, AUTH_STS_ISSUER,
		    strlen(AUTH_STS_ISSUER)) == 0;
	case AUTH_REFRESH:
		return strcmp(iss, AUTH_ACR_ISSUER) == 0 && access == NULL &&
		    gt != NULL && strcmp(gt, "refresh_token") == 0 &&
		    strcmp(aud, fa_conf.service) == 0 &&
		    json_integer_value(json_object_get(c, "generation")) ==
		    fa_conf.refresh_generation;
	default:
		return strcmp(iss, AUTH_ACR_ISSUER) == 0 &&
		    json_is_array(access) && strcmp(aud, fa_conf.service) == 0;
	}
}

/* The claims of a token of that kind, signed by us and current. */
json_t *
auth_verify(const char *tok, enum auth_kind kind)
{
	const char	*dot1, *dot2;
	unsigned char	 mac[32], *sig, *pl;
	size_t		 siglen, pllen;
	json_t		*c;
	time_t		 now = time(NULL);
	int		 ok;

	if ((dot1 = strchr(tok, '.')) == NULL ||
	    (dot2 = strchr(dot1 + 1, '.')) == NULL)
		return NULL;
	if ((sig = auth_unb64(dot2 + 1, strlen(dot2 + 1), &siglen)) == NULL)
		return NULL;
	auth_hmac(tok, (size_t)(dot2 - tok), mac);
	ok = siglen == sizeof(mac) && CRYPTO_memcmp(sig, mac, siglen) == 0;
	free(sig);
	if (!ok || (pl = auth_unb64(dot1 + 1, (size_t)(dot2 - dot1 - 1),
	    &pllen)) == NULL)
		return NULL;
	c = json_loadb((const char *)pl, pllen, 0, NULL);
	free(pl);
	if (c == NULL)
		return NULL;
	if (!auth_kind_ok(c, kind) ||
	    json_integer_value(json_object_get(c, "exp")) <= now ||
	    json_integer_value(json_object_get(c, "nbf")) > now) {
		json_decref(c);
		return NULL;
	}
	return c;
}

/* "Basic base64(user:password)" into two strings the caller frees. */
int
auth_basic(const char *hdr, char **user, char **pass)
{
	unsigned char	*dec;
	char		*colon;
	size_t		 len;

	if (strncasecmp(hdr, "Basic ", 6) != 0)
		return -1;
	hdr += 6;
	if ((dec = auth_unb64(hdr, strlen(hdr), &len)) == NULL)
		return -1;
	if (strlen((char *)dec) != len ||
	    (colon = strchr((char *)dec, ':')) == NULL) {
		free(dec);
		return -1;
	}
	*colon = '\0';
	*user = strdup((char *)dec);
	*pass = strdup(colon + 1);
	free(dec);
	if (*user == NULL || *pass == NULL) {
		free(*user);
		free(*pass);
		return -1;
	}
	return 0;
}

/*
 * The subject for a password grant, or NULL: a --user pair, or ACR's
 * form with the null GUID as user and a refresh token as password.
 */
char *
auth_password(const char *user, const char *pass)
{
	json_t		*c;
	char		*sub;
	size_t		 i, ulen = strlen(user);

	if (strcmp(user, AUTH_TOKEN_USER) == 0) {
		if ((c = auth_verify(pass, AUTH_REFRESH)) == NULL)
			return NULL;
		sub = strdup(json_string_value(json_object_get(c, "sub")));
		json_decref(c);
		return sub;
	}
	for (i = 0; i < fa_conf.nusers; i++) {
		const char	*u = fa_conf.users[i];

		if (strncmp(u, user, ulen) == 0 && u[ulen] == ':' &&
		    strcmp(u + ulen + 1, pass) == 0)
			return strdup(user);
	}
	return NULL;
}

char *
auth_sas_sign(const char *path, const char *se)
{
	unsigned char	 mac[32];
	char		*s;

	if (asprintf(&s, "r\n%s\n%s", se, path) == -1)
		return NULL;
	auth_hmac(s, strlen(s), mac);
	free(s);
	return auth_b64(mac, sizeof(mac), 0);
}

int
auth_sas_check(const char *path, const char *se, const char *sig)
{
	char	*want;
	int	 ok;

	if ((want = auth_sas_sign(path, se)) == NULL)
		return 0;
	ok = strlen(want) == strlen(sig) &&
	    CRYPTO_memcmp(want, sig, strlen(want)) == 0;
	free(want);
	return ok;
}
