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
#include "log.h"

#define CACHE_FLUSH_SECS	10

/*
 * Read transactions and the reader table. Every read transaction takes a
 * slot in lock.mdb's table, shared by every process using the cache
 * (CACHE_READERS slots; a server, `pullproxy cache` beside it). A reset
 * transaction keeps its slot. So: pins share one transaction until a
 * write commits (c_gen), a server never holds more than CACHE_PINS_MAX
 * with pins out nor CACHE_IDLE_MAX reset ones, and a full table is
 * recovered from (idle slots given back, dead processes' slots cleared)
 * rather than failing until restart.
 */
#define CACHE_PINS_MAX		(CACHE_READERS / 4)
#define CACHE_IDLE_MAX		8

/* Gives back the slots of idle transactions and of dead processes. */
static void
cache_readers_recover(struct cache *c)
{
	int dead = 0;

	cache_pins_free(c);
	if (mdb_reader_check(c->c_env, &dead) == 0 && dead > 0)
		log_msg(LOG_LEVEL_INFO, "cache %s: cleared %d stale readers",
		    c->c_dir, dead);
}

/* A read transaction, once more after recovering a full reader table. */
int
cache_read_begin(struct cache *c, MDB_txn **txn)
{
	int rc;

	if ((rc = mdb_txn_begin(c->c_env, NULL, MDB_RDONLY, txn)) ==
	    MDB_READERS_FULL) {
		cache_readers_recover(c);
		rc = mdb_txn_begin(c->c_env, NULL, MDB_RDONLY, txn);
	}
	return rc;
}

/*
 * A pin on what the cache holds now: the shared transaction if no write
 * committed since it began, else a new one. At CACHE_PINS_MAX the newest
 * is shared even if older: it may lack what was written since (the
 * caller's lookup then misses), but the table is never exhausted.
 */
enum cache_err
cache_pin_get(struct cache *c, struct cache_pin **pinp)
{
	struct cache_pin *pin = c->c_shared;
	int rc;

	if (pin != NULL && (pin->cp_gen == c->c_gen ||
	    c->c_nbusy >= CACHE_PINS_MAX)) {
		pin->cp_refs++;
		*pinp = pin;
		return CACHE_OK;
	}
	if ((pin = LIST_FIRST(&c->c_idle)) != NULL) {
		LIST_REMOVE(pin, cp_entry);
		c->c_nidle--;
		if ((rc = mdb_txn_renew(pin->cp_txn)) != 0) {
			mdb_txn_abort(pin->cp_txn);
			free(pin);
			return cache_err_from_mdb(c, rc, "read transaction");
		}
	} else {
		if ((pin = calloc(1, sizeof(*pin))) == NULL)
			return cache_err_from_mdb(c, ENOMEM, "pin");
		pin->cp_cache = c;
		if ((rc = cache_read_begin(c, &pin->cp_txn)) != 0) {
			free(pin);
			return cache_err_from_mdb(c, rc, "read transaction");
		}
	}
	pin->cp_refs = 1;
	pin->cp_gen = c->c_gen;
	LIST_INSERT_HEAD(&c->c_busy, pin, cp_entry);
	c->c_nbusy++;
	c->c_shared = pin;
	*pinp = pin;
	return CACHE_OK;
}

/*
 * The last pin of a transaction ends its snapshot at once (so pages
 * freed since can be reused); a few reset ones are kept for reuse, the
 * others give their slot back.
 */
void
cache_unpin(struct cache_pin *pin)
{
	struct cache *c;

	if (pin == NULL || --pin->cp_refs > 0)
		return;
	if ((c = pin->cp_cache) == NULL) {	/* outlived cache_close */
		free(pin);
		return;
	}
	LIST_REMOVE(pin, cp_entry);
	c->c_nbusy--;
	if (c->c_shared == pin)
		c->c_shared = NULL;
	if (c->c_nidle >= CACHE_IDLE_MAX) {
		mdb_txn_abort(pin->cp_txn);
		free(pin);
		return;
	}
	mdb_txn_reset(pin->cp_txn);
	LIST_INSERT_HEAD(&c->c_idle, pin, cp_entry);
	c->c_nidle++;
}

/* Ends the idle transactions, giving their slots back. */
void
cache_pins_free(struct cache *c)
{
	struct cache_pin *pin;

	while ((pin = LIST_FIRST(&c->c_idle)) != NULL) {
		LIST_REMOVE(pin, cp_entry);
		mdb_txn_abort(pin->cp_txn);
		free(pin);
	}
	c->c_nidle = 0;
}

/* A hit: counts for the LRU. Hits cost no write: access times go back in
 * batches. */
static void
cache_accessed(struct cache *c, enum cache_kind kind, const unsigned char *key)
{
	cache_touch(c, kind, key);
	if (!c->c_readonly && time(NULL) - c->c_flushed >= CACHE_FLUSH_SECS)
		cache_lru_flush(c);
}

enum cache_err
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
	struct cache_pin *pin = NULL;
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
	if ((e = cache_ent_find(c, CACHE_KIND_BLOB, key)) != NULL &&
	    e->ce_stored &&
	    e->ce_atime > info->last_access)
		info->last_access = e->ce_atime;
	cache_accessed(c, CACHE_KIND_BLOB, key);
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
		cache_touch(c, CACHE_KIND_BLOB, key);
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
	struct cache_mrec m;
	struct cache_pin *pin = NULL;
	enum cache_err ce;
	MDB_val v;

	if ((ce = cache_record_pin(c, c->c_manifests, digest, key, &pin, &v,
	    "manifest")) != CACHE_OK)
		return ce;
	if (cache_manifest_decode(&v, &m) == -1) {
		cache_unpin(pin);
		return CACHE_NOTFOUND;
	}
	if (media_type != NULL)
		memcpy(media_type, m.mr_media, strlen(m.mr_media) + 1);
	*body = m.mr_body;
	*len = m.mr_len;
	cache_accessed(c, CACHE_KIND_MANIFEST, key);
	*pinp = pin;
	return CACHE_OK;
}

enum cache_err
cache_tag_get(struct cache *c, const char *registry, const char *repo,
    const char *tag, char digest[CACHE_DIGEST_MAX], uint64_t *fetched_ms)
{
	char tk[CACHE_KEY_MAX + 1];
	struct cache_pin *pin = NULL;
	const char *d;
	enum cache_err ce;
	MDB_val k, v;
	int n, rc;

	if ((n = cache_tag_key(tk, sizeof(tk), registry, repo, tag)) == -1)
		return CACHE_NOTFOUND;
	if ((ce = cache_pin_get(c, &pin)) != CACHE_OK)
		return ce;
	k.mv_data = tk;
	k.mv_size = (size_t)n;
	if ((rc = mdb_get(pin->cp_txn, c->c_tags, &k, &v)) == 0) {
		if (cache_tag_decode(&v, &d, fetched_ms) == -1)
			rc = MDB_NOTFOUND;
		else
			memcpy(digest, d, DIGEST_STR_LEN + 1);
	}
	cache_unpin(pin);
	return cache_err_from_mdb(c, rc, "tag");
}
