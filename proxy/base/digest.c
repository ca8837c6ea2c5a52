/*
 * digest: sha256 over OpenSSL's EVP interface, which picks the CPU's
 * SHA extensions when present.
 */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>

#include "digest.h"

struct digest {
	EVP_MD_CTX	*d_ctx;
};

struct digest *
digest_new(void)
{
	struct digest *d;

	if ((d = calloc(1, sizeof(*d))) == NULL)
		return NULL;
	if ((d->d_ctx = EVP_MD_CTX_new()) == NULL ||
	    EVP_DigestInit_ex(d->d_ctx, EVP_sha256(), NULL) != 1) {
		digest_free(d);
		return NULL;
	}
	return d;
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
