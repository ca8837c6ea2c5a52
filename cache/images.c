/*
 * cache images: which cached tags name a blob, read from the manifests
 * the cache holds (an index's children included), for `pullproxy cache
 * ls`. Built once per listing: a sorted array of (digest, reference).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"

struct cache_image_ref {
	char	 digest[CACHE_DIGEST_MAX];
	char	*ref;
};

struct cache_images {
	struct cache		*im_cache;
	struct cache_image_ref	*im_refs;
	size_t			 im_n;
	size_t			 im_cap;
	int			 im_nomem;
};

static void
cache_images_add(struct cache_images *im, const char *digest,
    const char *ref)
{
	struct cache_image_ref *p;
	size_t cap;

	if (digest == NULL || strlen(digest) >= CACHE_DIGEST_MAX)
		return;
	if (im->im_n == im->im_cap) {
		cap = im->im_cap ? im->im_cap * 2 : 64;
		if ((p = reallocarray(im->im_refs, cap, sizeof(*p))) == NULL) {
			im->im_nomem = 1;
			return;
		}
		im->im_refs = p;
		im->im_cap = cap;
	}
	p = &im->im_refs[im->im_n];
	if ((p->ref = strdup(ref)) == NULL) {
		im->im_nomem = 1;
		return;
	}
	snprintf(p->digest, sizeof(p->digest), "%s", digest);
	im->im_n++;
}

static json_t *
cache_images_load(struct cache_images *im, const char *digest)
{
	struct cache_pin *pin;
	char media[CACHE_MEDIA_MAX];
	const void *body;
	json_t *doc;
	size_t len;

	if (cache_manifest_pin(im->im_cache, digest, &pin, &body, &len,
	    media) != CACHE_OK)
		return NULL;
	doc = json_loadb(body, len, 0, NULL);
	cache_unpin(pin);
	return doc;
}

/* The blobs of one manifest, or of an index's cached children (depth 1). */
static void
cache_images_manifest(struct cache_images *im, const char *digest,
    const char *ref, int depth)
{
	json_t *doc, *list, *e;
	size_t i;

	if ((doc = cache_images_load(im, digest)) == NULL)
		return;
	cache_images_add(im, json_string_value(json_object_get(
	    json_object_get(doc, "config"), "digest")), ref);
	list = json_object_get(doc, "layers");
	json_array_foreach(list, i, e)
		cache_images_add(im, json_string_value(json_object_get(e,
		    "digest")), ref);
	list = json_object_get(doc, "manifests");
	if (depth == 0)
		json_array_foreach(list, i, e)
			if (json_is_string(json_object_get(e, "digest")))
				cache_images_manifest(im, json_string_value(
				    json_object_get(e, "digest")), ref, 1);
	json_decref(doc);
}

static int
cache_images_tag(const char *ref, const char *digest, void *arg)
{
	cache_images_manifest(arg, digest, ref, 0);
	return 0;
}

static int
cache_images_cmp(const void *a, const void *b)
{
	const struct cache_image_ref *x = a, *y = b;
	int c = strcmp(x->digest, y->digest);

	return c != 0 ? c : strcmp(x->ref, y->ref);
}

struct cache_images *
cache_images_new(struct cache *c)
{
	struct cache_images *im;

	if ((im = calloc(1, sizeof(*im))) == NULL)
		return NULL;
	im->im_cache = c;
	if (cache_tag_foreach(c, cache_images_tag, im) != CACHE_OK ||
	    im->im_nomem) {
		cache_images_free(im);
		return NULL;
	}
	/* No tags, no array: qsort wants one all the same. */
	if (im->im_n > 0)
		qsort(im->im_refs, im->im_n, sizeof(*im->im_refs),
		    cache_images_cmp);
	return im;
}

size_t
cache_images_of(const struct cache_images *im, const char *digest,
    const char **refs, size_t max)
{
	size_t lo = 0, hi = im->im_n, mid, n = 0;

	while (lo < hi) {	/* the first entry >= digest */
		mid = lo + (hi - lo) / 2;
		if (strcmp(im->im_refs[mid].digest, digest) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (; lo < im->im_n && strcmp(im->im_refs[lo].digest, digest) == 0;
	    lo++)
		/* One tag may name a blob twice (two platforms share it). */
		if (n == 0 || strcmp(refs[n - 1], im->im_refs[lo].ref) != 0) {
			if (n == max)
				break;
			refs[n++] = im->im_refs[lo].ref;
		}
	return n;
}

void
cache_images_free(struct cache_images *im)
{
	size_t i;

	if (im == NULL)
		return;
	for (i = 0; i < im->im_n; i++)
		free(im->im_refs[i].ref);
	free(im->im_refs);
	free(im);
}
