/*
 * digest: sha256 over OpenSSL's EVP interface, which picks the CPU's
 * SHA extensions when present.
 */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "digest.h"

struct digest {
	EVP_MD_CTX	*d_ctx;
};

static struct digest *
digest_new_md(const EVP_MD *md)
{
	struct digest *d;

	if ((d = calloc(1, sizeof(*d))) == NULL)
		return NULL;
	if ((d->d_ctx = EVP_MD_CTX_new()) == NULL ||
	    EVP_DigestInit_ex(d->d_ctx, md, NULL) != 1) {
		digest_free(d);
		return NULL;
	}
	return d;
}

struct digest *
digest_new(void)
{
	return digest_new_md(EVP_sha256());
}

struct digest *
digest_new_for(const char *ref)
{
	if (strncmp(ref, "sha256:", 7) == 0)
		return digest_new_md(EVP_sha256());
	if (strncmp(ref, "sha512:", 7) == 0)
		return digest_new_md(EVP_sha512());
	return NULL;
}

void
digest_free(struct digest *d)
{
	if (d == NULL)
		return;
	EVP_MD_CTX_free(d->d_ctx);
	free(d);
}

void
digest_update(struct digest *d, const void *buf, size_t len)
{
	EVP_DigestUpdate(d->d_ctx, buf, len);
}

void
digest_final(struct digest *d, char out[DIGEST_STR_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0, i;
	char *p;

	EVP_DigestFinal_ex(d->d_ctx, md, &mdlen);
	p = out + snprintf(out, DIGEST_STR_LEN + 1, "sha256:");
	for (i = 0; i < mdlen && i < 32; i++) {
		*p++ = hex[md[i] >> 4];
		*p++ = hex[md[i] & 0xf];
	}
	*p = '\0';
}

int
digest_matches(struct digest *d, const char *ref)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0, i;
	const char *want = strchr(ref, ':');

	if (EVP_DigestFinal_ex(d->d_ctx, md, &mdlen) != 1 || want == NULL ||
	    strlen(++want) != 2 * (size_t)mdlen)
		return 0;
	for (i = 0; i < mdlen; i++)
		if (want[2 * i] != hex[md[i] >> 4] ||
		    want[2 * i + 1] != hex[md[i] & 0xf])
			return 0;
	return 1;
}
