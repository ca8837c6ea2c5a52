/*
 * cache reads: pins (read transactions holding stored bytes in place)
 * and the lookups served through them.
 */
#include <errno.h>
#include <lmdb.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache.h"
#include "cache_int.h"
#include "digest.h"

#define CACHE_FLUSH_SECS	10

enum cache_err
cache_pin_get(struct cache *c, struct cache_pin **pinp)
{
	struct cache_pin *pin;
	int rc;

	if ((pin = LIST_FIRST(&c->c_idle)) != NULL) {
		LIST_REMOVE(pin, cp_entry);
		if ((rc = mdb_txn_renew(pin->cp_txn)) != 0) {
			mdb_txn_abort(pin->cp_txn);
			free(pin);
			return cache_err_from_mdb(c, rc, "read transaction");
		}
	} else {
		if ((pin = calloc(1, sizeof(*pin))) == NULL)
			return cache_err_from_mdb(c, ENOMEM, "pin");
		pin->cp_cache = c;
		if ((rc = mdb_txn_begin(c->c_env, NULL, MDB_RDONLY,
		    &pin->cp_txn)) != 0) {
			free(pin);
			return cache_err_from_mdb(c, rc, "read transaction");
		}
	}
	LIST_INSERT_HEAD(&c->c_busy, pin, cp_entry);
	*pinp = pin;
	return CACHE_OK;
}

void
cache_unpin(struct cache_pin *pin)
{
	struct cache *c;

	if (pin == NULL)
		return;
	if ((c = pin->cp_cache) == NULL) {	/* outlived cache_close */
		free(pin);
		return;
	}
	LIST_REMOVE(pin, cp_entry);
	mdb_txn_reset(pin->cp_txn);
	LIST_INSERT_HEAD(&c->c_idle, pin, cp_entry);
}

void
cache_pins_free(struct cache_pins *list)
{
	struct cache_pin *pin;

	while ((pin = LIST_FIRST(list)) != NULL) {
		LIST_REMOVE(pin, cp_entry);
		mdb_txn_abort(pin->cp_txn);
		free(pin);
	}
}

/*
 * The record of digest in dbi, read under a pin the caller owns on
 * CACHE_OK (the value lives in the map until cache_unpin); key is filled
 * with the digest's binary key.
 */
static enum cache_err
cache_record_pin(struct cache *c, MDB_dbi dbi, const char *digest,
    unsigned char key[CACHE_KEYLEN], struct cache_pin **pinp, MDB_val *v,
    const char *what)
{
	struct cache_pin *pin;
	enum cache_err ce;
	MDB_val k;
	int rc;

	if (cache_key(digest, key) == -1)
		return CACHE_NOTFOUND;
	if ((ce = cache_pin_get(c, &pin)) != CACHE_OK)
		return ce;
	k.mv_data = (void *)digest;
	k.mv_size = DIGEST_STR_LEN;
	if ((rc = mdb_get(pin->cp_txn, dbi, &k, v)) != 0) {
		cache_unpin(pin);
		return cache_err_from_mdb(c, rc, what);
	}
	*pinp = pin;
	return CACHE_OK;
}

enum cache_err
cache_blob_lookup(struct cache *c, const char *digest,
    struct cache_blob_info *info)
{
	unsigned char key[CACHE_KEYLEN];
	struct cache_pin *pin;
	struct cache_ent *e;
	enum cache_err ce;
	MDB_val v;
	int bad;

	if ((ce = cache_record_pin(c, c->c_blobs, digest, key, &pin, &v,
	    "lookup")) != CACHE_OK)
		return ce;
	bad = cache_blob_decode(&v, info) == -1;
	cache_unpin(pin);
	if (bad)
		return CACHE_NOTFOUND;
	memcpy(info->digest, digest, DIGEST_STR_LEN + 1);
	if ((e = cache_ent_find(c, key)) != NULL && e->ce_stored &&
	    e->ce_atime > info->last_access)
		info->last_access = e->ce_atime;
	cache_touch(c, key);
	/* Hits cost no write: access times go back in batches. */
	if (!c->c_readonly && time(NULL) - c->c_flushed >= CACHE_FLUSH_SECS)
		cache_lru_flush(c);
	return CACHE_OK;
}

enum cache_err
cache_chunk_pin(struct cache *c, const char *digest, uint32_t idx,
    struct cache_pin **pinp, const void **ptr, size_t *len)
{
	unsigned char key[CACHE_KEYLEN], ck[CACHE_CKEYLEN];
	struct cache_pin *pin;
	enum cache_err ce;
	MDB_val k, v;
	int rc;

	if (cache_key(digest, key) == -1)
		return CACHE_NOTFOUND;
	if ((ce = cache_pin_get(c, &pin)) != CACHE_OK)
		return ce;
	cache_chunk_key(ck, key, idx);
	k.mv_data = ck;
	k.mv_size = sizeof(ck);
	if ((rc = mdb_get(pin->cp_txn, c->c_chunks, &k, &v)) != 0) {
		cache_unpin(pin);
		return cache_err_from_mdb(c, rc, "pin");
	}
	if (idx == 0)
		cache_touch(c, key);
	*pinp = pin;
	*ptr = v.mv_data;
	*len = v.mv_size;
	return CACHE_OK;
}

enum cache_err
cache_manifest_pin(struct cache *c, const char *digest,
    struct cache_pin **pinp, const void **body, size_t *len,
    char media_type[CACHE_MEDIA_MAX])
{
	unsigned char key[CACHE_KEYLEN];
	struct cache_pin *pin;
	enum cache_err ce;
	MDB_val v;

	if ((ce = cache_record_pin(c, c->c_manifests, digest, key, &pin, &v,
	    "manifest")) != CACHE_OK)
		return ce;
	if (cache_manifest_decode(&v, body, len, media_type) == -1) {
		cache_unpin(pin);
		return CACHE_NOTFOUND;
	}
	*pinp = pin;
	return CACHE_OK;
}

enum cache_err
cache_tag_get(struct cache *c, const char *registry, const char *repo,
    const char *tag, char digest[CACHE_DIGEST_MAX], uint64_t *fetched_ms)
{
	char tk[CACHE_KEY_MAX + 1];
	struct cache_pin *pin = NULL;
	const unsigned char *p;
	enum cache_err ce;
	MDB_val k, v;
	int n, rc;

	if ((n = cache_tag_key(tk, sizeof(tk), registry, repo, tag)) == -1)
		return CACHE_NOTFOUND;
	if ((ce = cache_pin_get(c, &pin)) != CACHE_OK)
		return ce;
	k.mv_data = tk;
	k.mv_size = (size_t)n;
	/* Tag record v1: version, digest, NUL, fetched_ms. */
	if ((rc = mdb_get(pin->cp_txn, c->c_tags, &k, &v)) == 0) {
		p = v.mv_data;
		if (v.mv_size != 1 + DIGEST_STR_LEN + 1 + 8 ||
		    p[0] != CACHE_REC_V1 || p[1 + DIGEST_STR_LEN] != '\0')
			rc = MDB_NOTFOUND;
		else {
			memcpy(digest, p + 1, DIGEST_STR_LEN + 1);
			*fetched_ms = cache_get64(p + 1 + DIGEST_STR_LEN + 1);
		}
	}
	cache_unpin(pin);
	return cache_err_from_mdb(c, rc, "tag");
}
