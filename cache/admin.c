/*
 * cache admin: what `pullproxy cache` uses (stats, ls, verify, evict,
 * purge).
 */
#include <sys/stat.h>

#include <errno.h>
#include <lmdb.h>
#include <string.h>

#include "cache.h"
#include "cache_int.h"
#include "digest.h"

enum cache_err
cache_stats(struct cache *c, struct cache_stats *st)
{
	struct cache_pin *pin;
	enum cache_err ce;
	MDB_envinfo ei;
	MDB_val k, v;
	MDB_stat ms;
	struct stat sb;
	int rc;

	memset(st, 0, sizeof(*st));
	st->blobs = c->c_nblobs;
	st->blob_bytes = c->c_blob_bytes;
	st->manifests = c->c_nmanifests;
	st->manifest_bytes = c->c_manifest_bytes;
	st->budget = c->c_budget;
	st->evictions = c->c_evictions;
	if ((ce = cache_pin_get(c, &pin)) != CACHE_OK)
		return ce;
	k.mv_data = "budget";
	k.mv_size = 6;
	if (!c->c_server && mdb_get(pin->cp_txn, c->c_meta, &k, &v) == 0 &&
	    v.mv_size == sizeof(st->budget))
		memcpy(&st->budget, v.mv_data, sizeof(st->budget));
	rc = mdb_stat(pin->cp_txn, c->c_tags, &ms);
	cache_unpin(pin);
	if (rc != 0)
		return cache_err_from_mdb(c, rc, "stats");
	st->tags = ms.ms_entries;
	if ((rc = mdb_env_info(c->c_env, &ei)) != 0)
		return cache_err_from_mdb(c, rc, "stats");
	st->map_size = ei.me_mapsize;
	if (fstat(c->c_fd, &sb) == -1)
		return cache_err_from_mdb(c, errno, "stats");
	st->file_size = (uint64_t)sb.st_size;
	return CACHE_OK;
}

/*
 * Every record of table in key order, in one read snapshot: each(k, v,
 * arg) returns nonzero to stop. The walk of blob and tag listings.
 */
static enum cache_err
cache_walk(struct cache *c, MDB_dbi table,
    int (*each)(struct cache *, const MDB_val *, const MDB_val *, void *),
    void *arg)
{
	struct cache_pin *pin;
	MDB_cursor *cur;
	enum cache_err ce;
	MDB_val k, v;
	int rc;

	if ((ce = cache_pin_get(c, &pin)) != CACHE_OK)
		return ce;
	if ((rc = mdb_cursor_open(pin->cp_txn, table, &cur)) != 0) {
		cache_unpin(pin);
		return cache_err_from_mdb(c, rc, "list");
	}
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
		if (each(c, &k, &v, arg) != 0) {
			rc = MDB_NOTFOUND;
			break;
		}
	mdb_cursor_close(cur);
	cache_unpin(pin);
	if (rc == MDB_NOTFOUND)
		return CACHE_OK;
	return cache_err_from_mdb(c, rc, "list");
}

struct cache_blob_walk {
	int	(*fn)(const struct cache_blob_info *, void *);
	void	*arg;
};

static int
cache_blob_each(struct cache *c, const MDB_val *k, const MDB_val *v,
    void *arg)
{
	struct cache_blob_walk *w = arg;
	unsigned char key[CACHE_KEYLEN];
	struct cache_blob_info info;
	struct cache_ent *e;

	if (cache_digest_key(k->mv_data, k->mv_size, key) == -1 ||
	    cache_blob_decode(v, &info) == -1)
		return 0;
	memcpy(info.digest, k->mv_data, DIGEST_STR_LEN);
	info.digest[DIGEST_STR_LEN] = '\0';
	if ((e = cache_ent_find(c, CACHE_KIND_BLOB, key)) != NULL &&
	    e->ce_atime > info.last_access)
		info.last_access = e->ce_atime;
	return w->fn(&info, w->arg);
}

enum cache_err
cache_blob_foreach(struct cache *c,
    int (*fn)(const struct cache_blob_info *, void *), void *arg)
{
	struct cache_blob_walk w = { fn, arg };

	return cache_walk(c, c->c_blobs, cache_blob_each, &w);
}

enum cache_err
cache_blob_verify(struct cache *c, const char *digest,
    char actual[CACHE_DIGEST_MAX])
{
	unsigned char key[CACHE_KEYLEN], ck[CACHE_CKEYLEN];
	struct cache_blob_info info;
	struct cache_pin *pin;
	struct digest *d;
	MDB_cursor *cur;
	enum cache_err ce;
	uint64_t total = 0;
	uint32_t idx = 0;
	MDB_val k, v;
	int rc, whole = 1;

	actual[0] = '\0';
	if ((ce = cache_record_pin(c, c->c_blobs, digest, key, &pin, &v,
	    "verify")) != CACHE_OK)
		return ce;
	rc = cache_blob_decode(&v, &info) == -1 ? MDB_NOTFOUND :
	    mdb_cursor_open(pin->cp_txn, c->c_chunks, &cur);
	if (rc != 0) {
		cache_unpin(pin);
		return cache_err_from_mdb(c, rc, "verify");
	}
	if ((d = digest_new()) == NULL) {
		mdb_cursor_close(cur);
		cache_unpin(pin);
		return cache_err_from_mdb(c, ENOMEM, "verify");
	}
	for (rc = cache_chunk_step(cur, key, 1, &k, &v); rc == 0;
	    rc = cache_chunk_step(cur, key, 0, &k, &v)) {
		cache_chunk_key(ck, key, idx++);
		/* A gap, or a short chunk before the last one. */
		if (memcmp(k.mv_data, ck, CACHE_CKEYLEN) != 0 ||
		    (total % CACHE_CHUNK) != 0)
			whole = 0;
		digest_update(d, v.mv_data, v.mv_size);
		total += v.mv_size;
	}
	mdb_cursor_close(cur);
	cache_unpin(pin);
	if (rc != 0 && rc != MDB_NOTFOUND) {
		digest_free(d);
		return cache_err_from_mdb(c, rc, "verify");
	}
	if (!whole || idx == 0 || total != info.size) {
		digest_free(d);
		return CACHE_CORRUPT;
	}
	digest_final(d, actual);
	digest_free(d);
	return strcmp(actual, digest) == 0 ? CACHE_OK : CACHE_CORRUPT;
}

struct cache_tag_walk {
	int	(*fn)(const char *ref, const char *digest, void *);
	void	*arg;
};

static int
cache_tag_each(struct cache *c, const MDB_val *k, const MDB_val *v,
    void *arg)
{
	struct cache_tag_walk *w = arg;
	char ref[CACHE_KEY_MAX + 1], digest[CACHE_DIGEST_MAX];
	uint64_t fetched;
	const char *d;

	(void)c;
	if (k->mv_size >= sizeof(ref) ||
	    cache_tag_decode(v, &d, &fetched) == -1)
		return 0;
	memcpy(ref, k->mv_data, k->mv_size);
	ref[k->mv_size] = '\0';
	memcpy(digest, d, DIGEST_STR_LEN + 1);
	return w->fn(ref, digest, w->arg);
}

enum cache_err
cache_tag_foreach(struct cache *c,
    int (*fn)(const char *ref, const char *digest, void *), void *arg)
{
	struct cache_tag_walk w = { fn, arg };

	return cache_walk(c, c->c_tags, cache_tag_each, &w);
}

enum cache_err
cache_blob_evict(struct cache *c, const char *digest)
{
	unsigned char key[CACHE_KEYLEN];
	struct cache_ent *e;

	if (cache_key(digest, key) == -1 ||
	    (e = cache_ent_find(c, CACHE_KIND_BLOB, key)) == NULL ||
	    !e->ce_stored)
		return CACHE_NOTFOUND;
	if (e->ce_holds > 0)
		return CACHE_BUSY;
	return cache_evict_ents(c, &e, 1);
}

enum cache_err
cache_evict_to(struct cache *c, uint64_t target, uint64_t *evicted)
{
	*evicted = 0;
	if (cache_total(c) <= target)
		return CACHE_OK;
	return cache_evict_lru(c, cache_total(c) - target, evicted);
}

static int
cache_tx_purge(struct cache *c, MDB_txn *txn, void *arg)
{
	int rc;

	(void)arg;
	if ((rc = mdb_drop(txn, c->c_chunks, 0)) == 0 &&
	    (rc = mdb_drop(txn, c->c_blobs, 0)) == 0 &&
	    (rc = mdb_drop(txn, c->c_manifests, 0)) == 0)
		rc = mdb_drop(txn, c->c_tags, 0);
	return rc;
}

enum cache_err
cache_purge(struct cache *c)
{
	struct cache_ent *e, *next;
	enum cache_err ce;

	c->c_evicting = 1;	/* deleting needs no eviction */
	ce = cache_write(c, "purge", 0, cache_tx_purge, NULL);
	c->c_evicting = 0;
	if (ce != CACHE_OK)
		return ce;
	for (e = TAILQ_FIRST(&c->c_ents); e != NULL; e = next) {
		next = TAILQ_NEXT(e, ce_entry);
		cache_ent_unstore(c, e);
		cache_ent_drop(c, e);
	}
	return CACHE_OK;
}
