/*
 * cache writes: blob chunks and commits, manifests and tags.
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
#include "oci.h"

struct cache_chunk_arg {
	const unsigned char	*a_key;
	uint32_t		 a_idx;
	const void		*a_data;
	size_t			 a_len;
	const unsigned char	*a_rec;		/* commit: the blob record */
	size_t			 a_reclen;
	const char		*a_digest;
};

static int
cache_tx_chunk(struct cache *c, MDB_txn *txn, void *arg)
{
	struct cache_chunk_arg *a = arg;
	unsigned char ck[CACHE_CKEYLEN];
	MDB_val k, v;
	int rc;

	cache_chunk_key(ck, a->a_key, a->a_idx);
	k.mv_data = ck;
	k.mv_size = sizeof(ck);
	v.mv_data = (void *)a->a_data;
	v.mv_size = a->a_len;
	if ((rc = mdb_put(txn, c->c_chunks, &k, &v, 0)) != 0 ||
	    a->a_rec == NULL)
		return rc;
	k.mv_data = (void *)a->a_digest;
	k.mv_size = DIGEST_STR_LEN;
	v.mv_data = (void *)a->a_rec;
	v.mv_size = a->a_reclen;
	return mdb_put(txn, c->c_blobs, &k, &v, 0);
}

enum cache_err
cache_chunk_put(struct cache *c, const char *digest, uint32_t idx,
    const void *data, size_t len)
{
	unsigned char key[CACHE_KEYLEN];
	struct cache_chunk_arg a;
	struct cache_ent *e;

	if (cache_key(digest, key) == -1 || len > CACHE_CHUNK)
		return cache_err_from_mdb(c, EINVAL, "chunk put");
	if (c->c_npending > 0 &&
	    (e = cache_ent_get(c, CACHE_KIND_BLOB, key)) != NULL)
		cache_claim(c, e);
	memset(&a, 0, sizeof(a));
	a.a_key = key;
	a.a_idx = idx;
	a.a_data = data;
	a.a_len = len;
	return cache_write(c, "chunk put", len, cache_tx_chunk, &a);
}

enum cache_err
cache_blob_commit(struct cache *c, const struct cache_blob_info *info,
    uint32_t lastidx, const void *last, size_t lastlen)
{
	unsigned char key[CACHE_KEYLEN], rec[CACHE_BLOB_HDR + CACHE_MEDIA_MAX];
	struct cache_chunk_arg a;
	struct cache_ent *e;
	enum cache_err ce;
	uint64_t now = (uint64_t)time(NULL), created;

	/* The chunk layout is what pins and ranges rely on. */
	if (cache_key(info->digest, key) == -1 || lastlen > CACHE_CHUNK ||
	    (uint64_t)lastidx * CACHE_CHUNK + lastlen != info->size ||
	    (lastlen == 0 && info->size != 0) ||
	    memchr(info->media_type, '\0', CACHE_MEDIA_MAX) == NULL)
		return cache_err_from_mdb(c, EINVAL, "commit");
	/*
	 * Allocated first so that a stored blob is always counted, and held
	 * so that a MAP_FULL eviction cannot free it under us.
	 */
	if ((e = cache_ent_get(c, CACHE_KIND_BLOB, key)) == NULL)
		return cache_err_from_mdb(c, ENOMEM, "commit");
	created = info->created ? info->created : now;
	memset(&a, 0, sizeof(a));
	a.a_key = key;
	a.a_idx = lastidx;
	a.a_data = last;
	a.a_len = lastlen;
	a.a_digest = info->digest;
	a.a_rec = rec;
	a.a_reclen = cache_blob_encode(rec, info->size, created, now,
	    info->media_type);
	e->ce_holds++;
	ce = cache_write(c, "commit", lastlen, cache_tx_chunk, &a);
	e->ce_holds--;
	if (ce != CACHE_OK) {
		cache_ent_drop(c, e);
		return ce;
	}
	cache_ent_store(c, e, info->size, created, now);
	cache_release(c, key);
	return CACHE_OK;
}

static int
cache_tx_discard(struct cache *c, MDB_txn *txn, void *arg)
{
	return cache_del_blob(c, txn, arg);
}

void
cache_blob_discard(struct cache *c, const char *digest)
{
	unsigned char key[CACHE_KEYLEN];
	struct cache_ent *e;

	if (cache_key(digest, key) == -1)
		return;
	/* Left-over chunks are removed by the next server open. */
	if (cache_write(c, "discard", 0, cache_tx_discard, key) != CACHE_OK)
		log_msg(LOG_LEVEL_WARN, "cache: %s", c->c_errstr);
	else if ((e = cache_ent_find(c, CACHE_KIND_BLOB, key)) != NULL) {
		cache_ent_unstore(c, e);
		cache_ent_drop(c, e);
	}
	cache_release(c, key);
}

struct cache_manifest_arg {
	const char		*m_digest;
	const unsigned char	*m_rec;
	size_t			 m_reclen;
};

static int
cache_tx_manifest(struct cache *c, MDB_txn *txn, void *arg)
{
	struct cache_manifest_arg *a = arg;
	MDB_val k, v;

	k.mv_data = (void *)a->m_digest;
	k.mv_size = DIGEST_STR_LEN;
	v.mv_data = (void *)a->m_rec;
	v.mv_size = a->m_reclen;
	return mdb_put(txn, c->c_manifests, &k, &v, 0);
}

enum cache_err
cache_manifest_put(struct cache *c, const char *digest,
    const char *media_type, const void *body, size_t len)
{
	unsigned char key[CACHE_KEYLEN], *rec;
	struct cache_manifest_arg a;
	struct cache_mrec m;
	struct cache_ent *e;
	enum cache_err ce;
	uint64_t now = (uint64_t)time(NULL);

	if (cache_key(digest, key) == -1 || len > OCI_MANIFEST_MAX ||
	    strlen(media_type) >= CACHE_MEDIA_MAX)
		return cache_err_from_mdb(c, EINVAL, "manifest put");
	if (cache_make_room(c, len) != CACHE_OK)
		return CACHE_FULL;
	/* Held, as a commit's: a MAP_FULL eviction cannot free it. */
	if ((e = cache_ent_get(c, CACHE_KIND_MANIFEST, key)) == NULL ||
	    (rec = malloc(CACHE_MANIFEST_HDR + CACHE_MEDIA_MAX + len)) ==
	    NULL) {
		if (e != NULL)
			cache_ent_drop(c, e);
		return cache_err_from_mdb(c, ENOMEM, "manifest put");
	}
	m.mr_media = media_type;
	m.mr_body = body;
	m.mr_len = len;
	m.mr_created = now;
	m.mr_atime = now;
	a.m_digest = digest;
	a.m_rec = rec;
	a.m_reclen = cache_manifest_encode(rec, &m);
	e->ce_holds++;
	ce = cache_write(c, "manifest put", len, cache_tx_manifest, &a);
	e->ce_holds--;
	free(rec);
	if (ce != CACHE_OK) {
		cache_ent_drop(c, e);
		return ce;
	}
	cache_ent_store(c, e, len, now, now);
	return CACHE_OK;
}

struct cache_tag_arg {
	const char	*t_key;
	size_t		 t_keylen;
	unsigned char	*t_rec;
	size_t		 t_reclen;
};

static int
cache_tx_tag(struct cache *c, MDB_txn *txn, void *arg)
{
	struct cache_tag_arg *a = arg;
	MDB_val k, v;

	k.mv_data = (void *)a->t_key;
	k.mv_size = a->t_keylen;
	v.mv_data = a->t_rec;
	v.mv_size = a->t_reclen;
	return mdb_put(txn, c->c_tags, &k, &v, 0);
}

enum cache_err
cache_tag_put(struct cache *c, const char *registry, const char *repo,
    const char *tag, const char *digest, uint64_t fetched_ms)
{
	unsigned char key[CACHE_KEYLEN], rec[1 + DIGEST_STR_LEN + 1 + 8];
	char tk[CACHE_KEY_MAX + 1];
	struct cache_tag_arg a;
	int n;

	if ((n = cache_tag_key(tk, sizeof(tk), registry, repo, tag)) == -1 ||
	    cache_key(digest, key) == -1)
		return cache_err_from_mdb(c, EINVAL, "tag put");
	rec[0] = CACHE_REC_V1;
	memcpy(rec + 1, digest, DIGEST_STR_LEN + 1);
	cache_put64(rec + 1 + DIGEST_STR_LEN + 1, fetched_ms);
	a.t_key = tk;
	a.t_keylen = (size_t)n;
	a.t_rec = rec;
	a.t_reclen = sizeof(rec);
	return cache_write(c, "tag put", 0, cache_tx_tag, &a);
}
