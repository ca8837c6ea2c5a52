/*
 * cache entries: what is kept in memory per digest (struct cache_ent):
 * the committed size, the access time, holds and the writer's reservation.
 */
#include <search.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache.h"
#include "cache_int.h"

int
cache_ent_cmp(const void *a, const void *b)
{
	const struct cache_ent *x = a, *y = b;

	if (x->ce_kind != y->ce_kind)
		return x->ce_kind < y->ce_kind ? -1 : 1;
	return memcmp(x->ce_key, y->ce_key, CACHE_KEYLEN);
}

struct cache_ent *
cache_ent_find(struct cache *c, enum cache_kind kind,
    const unsigned char *key)
{
	struct cache_ent probe;
	void *node;

	probe.ce_kind = kind;
	memcpy(probe.ce_key, key, CACHE_KEYLEN);
	if ((node = tfind(&probe, &c->c_tree, cache_ent_cmp)) == NULL)
		return NULL;
	return *(struct cache_ent **)node;
}

struct cache_ent *
cache_ent_get(struct cache *c, enum cache_kind kind,
    const unsigned char *key)
{
	struct cache_ent *e;

	if ((e = cache_ent_find(c, kind, key)) != NULL)
		return e;
	if ((e = calloc(1, sizeof(*e))) == NULL)
		return NULL;
	e->ce_kind = kind;
	memcpy(e->ce_key, key, CACHE_KEYLEN);
	if (tsearch(e, &c->c_tree, cache_ent_cmp) == NULL) {
		free(e);
		return NULL;
	}
	TAILQ_INSERT_TAIL(&c->c_ents, e, ce_entry);
	return e;
}

/* Entries live while something refers to the digest. */
void
cache_ent_drop(struct cache *c, struct cache_ent *e)
{
	if (e->ce_stored || e->ce_holds > 0 || e->ce_claimed)
		return;
	tdelete(e, &c->c_tree, cache_ent_cmp);
	TAILQ_REMOVE(&c->c_ents, e, ce_entry);
	free(e);
}

void
cache_ent_unstore(struct cache *c, struct cache_ent *e)
{
	if (!e->ce_stored)
		return;
	if (e->ce_kind == CACHE_KIND_MANIFEST) {
		c->c_nmanifests--;
		c->c_manifest_bytes -= e->ce_size;
	} else {
		c->c_nblobs--;
		c->c_blob_bytes -= e->ce_size;
	}
	e->ce_stored = 0;
	e->ce_dirty = 0;
}

/* e has a record now (again: replacing what it had), counted. */
void
cache_ent_store(struct cache *c, struct cache_ent *e, uint64_t size,
    uint64_t created, uint64_t atime)
{
	cache_ent_unstore(c, e);
	e->ce_stored = 1;
	e->ce_size = size;
	e->ce_created = created;
	e->ce_atime = atime;
	if (e->ce_kind == CACHE_KIND_MANIFEST) {
		c->c_nmanifests++;
		c->c_manifest_bytes += size;
	} else {
		c->c_nblobs++;
		c->c_blob_bytes += size;
	}
}

/* Give e the oldest pending reservation if it holds none yet. */
void
cache_claim(struct cache *c, struct cache_ent *e)
{
	if (e->ce_claimed || c->c_npending == 0)
		return;
	e->ce_claimed = 1;
	e->ce_reserved = c->c_pending[0];
	c->c_npending--;
	memmove(c->c_pending, c->c_pending + 1,
	    c->c_npending * sizeof(*c->c_pending));
}

void
cache_release(struct cache *c, const unsigned char *key)
{
	struct cache_ent *e;

	if (c->c_npending == 0 &&
	    (e = cache_ent_find(c, CACHE_KIND_BLOB, key)) == NULL)
		return;
	if ((e = cache_ent_get(c, CACHE_KIND_BLOB, key)) == NULL)
		return;
	cache_claim(c, e);
	c->c_reserved -= e->ce_reserved;
	e->ce_reserved = 0;
	e->ce_claimed = 0;
	cache_ent_drop(c, e);
}

void
cache_touch(struct cache *c, enum cache_kind kind, const unsigned char *key)
{
	struct cache_ent *e;
	uint64_t now = (uint64_t)time(NULL);

	if ((e = cache_ent_find(c, kind, key)) == NULL || !e->ce_stored ||
	    e->ce_atime == now)
		return;
	e->ce_atime = now;
	e->ce_dirty = 1;
	c->c_dirty = 1;
}

void
cache_blob_hold(struct cache *c, const char *digest)
{
	unsigned char key[CACHE_KEYLEN];
	struct cache_ent *e;

	if (cache_key(digest, key) == 0 &&
	    (e = cache_ent_get(c, CACHE_KIND_BLOB, key)) != NULL)
		e->ce_holds++;
}

void
cache_blob_unhold(struct cache *c, const char *digest)
{
	unsigned char key[CACHE_KEYLEN];
	struct cache_ent *e;

	if (cache_key(digest, key) == -1 ||
	    (e = cache_ent_find(c, CACHE_KIND_BLOB, key)) == NULL ||
	    e->ce_holds == 0)
		return;
	e->ce_holds--;
	cache_ent_drop(c, e);
}
