/*
 * rendezvous: labelled sha256 for nodes and keys, a 64-bit mix for the
 * weight, a partial selection for the ranking.
 */
#include <openssl/evp.h>
#include <string.h>

#include "rendezvous.h"

/*
 * sha256 of the parts, each followed by a NUL (none of them holds one),
 * so ("a/b", "c") and ("a", "b/c") differ; the first 8 bytes, big endian.
 */
static uint64_t
rendezvous_hash(const char *const *parts, size_t nparts)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	EVP_MD_CTX *ctx;
	uint64_t h = 0;
	size_t i;

	/*
	 * Only allocation can fail here; the hash is then 0: a wrong owner
	 * costs that request a miss (the registry), not a wrong byte.
	 */
	memset(md, 0, sizeof(md));
	if ((ctx = EVP_MD_CTX_new()) == NULL)
		return 0;
	if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1) {
		for (i = 0; i < nparts; i++)
			EVP_DigestUpdate(ctx, parts[i], strlen(parts[i]) + 1);
		EVP_DigestFinal_ex(ctx, md, NULL);
	}
	EVP_MD_CTX_free(ctx);
	for (i = 0; i < 8; i++)
		h = h << 8 | md[i];
	return h;
}

uint64_t
rendezvous_digest(const char *digest)
{
	const char *parts[] = { "digest", digest };

	return rendezvous_hash(parts, 2);
}

uint64_t
rendezvous_tag(const char *registry, const char *repository, const char *tag)
{
	const char *parts[] = { "tag", registry, repository, tag };

	return rendezvous_hash(parts, 4);
}

uint64_t
rendezvous_node(const char *id)
{
	const char *parts[] = { "node", id };

	return rendezvous_hash(parts, 2);
}

/*
 * Both inputs are already uniform; the mix (the finaliser of MurmurHash3,
 * a bijection with full avalanche) makes the weights of one key across
 * nodes, and of one node across keys, look independent.
 */
uint64_t
rendezvous_weight(uint64_t node, uint64_t key)
{
	uint64_t x = node ^ key;

	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

/* a before b: heavier first; a tie (two equal node hashes) by index. */
static int
rendezvous_before(uint64_t wa, size_t a, uint64_t wb, size_t b)
{
	return wa > wb || (wa == wb && a < b);
}

size_t
rendezvous_rank(const uint64_t *nodes, size_t n, uint64_t key, size_t *out,
    size_t max)
{
	size_t i, j, len = 0;
	uint64_t wi, wlast = 0;

	/* Insertion into the short sorted out[]; weights are recomputed. */
	for (i = 0; i < n && max > 0; i++) {
		wi = rendezvous_weight(nodes[i], key);
		if (len == max && !rendezvous_before(wi, i, wlast,
		    out[len - 1]))
			continue;
		j = len < max ? len++ : len - 1;
		for (; j > 0 && rendezvous_before(wi, i,
		    rendezvous_weight(nodes[out[j - 1]], key), out[j - 1]); j--)
			out[j] = out[j - 1];
		out[j] = i;
		wlast = rendezvous_weight(nodes[out[len - 1]], key);
	}
	return len;
}
