/*
 * cache store: the one place LMDB codes become enum cache_err (every LMDB
 * call of the project is in cache/, and every LMDB return code goes
 * through cache_err_from_mdb), the keys and record formats, and the write
 * transaction every change goes through.
 */
#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <string.h>

#include "cache.h"
#include "cache_int.h"
#include "digest.h"

static const unsigned char cache_layout[] = { CACHE_REC_V1 };

/*
 * The one place LMDB (and system) codes become enum cache_err; the detail
 * of anything that is not a plain miss is kept for cache_strerror.
 */
enum cache_err
cache_err_from_mdb(struct cache *c, int rc, const char *what)
{
	if (rc == MDB_SUCCESS)
		return CACHE_OK;
	if (rc == MDB_NOTFOUND)
		return CACHE_NOTFOUND;
	c->c_mdbrc = rc;
	/* mdb_strerror falls back to strerror for errno values. */
	snprintf(c->c_errstr, sizeof(c->c_errstr), "%s: %s", what,
	    mdb_strerror(rc));
	return rc == MDB_MAP_FULL ? CACHE_FULL : CACHE_IO;
}

void
cache_put64(unsigned char *p, uint64_t v)
{
	int i;

	for (i = 7; i >= 0; i--) {
		p[i] = (unsigned char)(v & 0xff);
		v >>= 8;
	}
}

uint64_t
cache_get64(const unsigned char *p)
{
	uint64_t v = 0;
	int i;

	for (i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

static int
cache_hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	return -1;
}

/* "sha256:<64 lowercase hex>" to raw bytes; anything else is refused. */
int
cache_digest_key(const char *digest, size_t len, unsigned char *key)
{
	int hi, lo;
	size_t i;

	if (len != DIGEST_STR_LEN || strncmp(digest, "sha256:", 7) != 0)
		return -1;
	for (i = 0; i < CACHE_KEYLEN; i++) {
		if ((hi = cache_hexval(digest[7 + 2 * i])) == -1 ||
		    (lo = cache_hexval(digest[8 + 2 * i])) == -1)
			return -1;
		key[i] = (unsigned char)(hi << 4 | lo);
	}
	return 0;
}

int
cache_key(const char *digest, unsigned char *key)
{
	if (digest == NULL)
		return -1;
	return cache_digest_key(digest, strlen(digest), key);
}

void
cache_digest_str(const unsigned char *key, char out[CACHE_DIGEST_MAX])
{
	static const char hex[] = "0123456789abcdef";
	char *p;
	int i;

	memcpy(out, "sha256:", 7);
	p = out + 7;
	for (i = 0; i < CACHE_KEYLEN; i++) {
		*p++ = hex[key[i] >> 4];
		*p++ = hex[key[i] & 0xf];
	}
	*p = '\0';
}

void
cache_chunk_key(unsigned char *ck, const unsigned char *key, uint32_t idx)
{
	memcpy(ck, key, CACHE_KEYLEN);
	ck[32] = (unsigned char)(idx >> 24);
	ck[33] = (unsigned char)(idx >> 16);
	ck[34] = (unsigned char)(idx >> 8);
	ck[35] = (unsigned char)idx;
}

/*
 * The chunks of key in key order, whatever indexes were written: first
 * set, the lowest; then the next. MDB_NOTFOUND after the last.
 */
int
cache_chunk_step(MDB_cursor *cur, const unsigned char *key, int first,
    MDB_val *k, MDB_val *v)
{
	unsigned char ck[CACHE_CKEYLEN];
	int rc;

	if (first) {
		cache_chunk_key(ck, key, 0);
		k->mv_data = ck;
		k->mv_size = sizeof(ck);
	}
	if ((rc = mdb_cursor_get(cur, k, v, first ? MDB_SET_RANGE :
	    MDB_NEXT)) != 0)
		return rc;
	if (k->mv_size != CACHE_CKEYLEN ||
	    memcmp(k->mv_data, key, CACHE_KEYLEN) != 0)
		return MDB_NOTFOUND;
	return 0;
}

/* Blob record v1: version, size, created, last_access, media type, NUL. */
size_t
cache_blob_encode(unsigned char *buf, uint64_t size, uint64_t created,
    uint64_t atime, const char *media)
{
	size_t mlen = strlen(media);

	buf[0] = CACHE_REC_V1;
	cache_put64(buf + 1, size);
	cache_put64(buf + 9, created);
	cache_put64(buf + 17, atime);
	memcpy(buf + CACHE_BLOB_HDR, media, mlen + 1);
	return CACHE_BLOB_HDR + mlen + 1;
}

/* A record this version cannot read counts as absent. */
int
cache_blob_decode(const MDB_val *v, struct cache_blob_info *info)
{
	const unsigned char *p = v->mv_data;
	size_t mlen;

	if (v->mv_size < CACHE_BLOB_HDR + 1 || p[0] != CACHE_REC_V1 ||
	    p[v->mv_size - 1] != '\0')
		return -1;
	mlen = v->mv_size - CACHE_BLOB_HDR - 1;
	if (mlen >= CACHE_MEDIA_MAX || memchr(p + CACHE_BLOB_HDR, '\0', mlen))
		return -1;
	info->size = cache_get64(p + 1);
	info->created = cache_get64(p + 9);
	info->last_access = cache_get64(p + 17);
	memcpy(info->media_type, p + CACHE_BLOB_HDR, mlen + 1);
	return 0;
}

/*
 * Manifest record v2: version, created, last_access, media type, NUL,
 * body; buf holds CACHE_MANIFEST_HDR + the media type, its NUL and the
 * body.
 */
size_t
cache_manifest_encode(unsigned char *buf, const struct cache_mrec *m)
{
	size_t mlen = strlen(m->mr_media);

	buf[0] = CACHE_REC_V2;
	cache_put64(buf + 1, m->mr_created);
	cache_put64(buf + 9, m->mr_atime);
	memcpy(buf + CACHE_MANIFEST_HDR, m->mr_media, mlen + 1);
	if (m->mr_len > 0)
		memcpy(buf + CACHE_MANIFEST_HDR + mlen + 1, m->mr_body,
		    m->mr_len);
	return CACHE_MANIFEST_HDR + mlen + 1 + m->mr_len;
}

/* v2, or v1 (version, media type, NUL, body: times unknown, so 0). */
int
cache_manifest_decode(const MDB_val *v, struct cache_mrec *m)
{
	const unsigned char *p = v->mv_data, *nul;
	size_t hdr;

	if (v->mv_size < 1)
		return -1;
	hdr = p[0] == CACHE_REC_V2 ? CACHE_MANIFEST_HDR : 1;
	if ((p[0] != CACHE_REC_V1 && p[0] != CACHE_REC_V2) ||
	    v->mv_size <= hdr ||
	    (nul = memchr(p + hdr, '\0', v->mv_size - hdr)) == NULL ||
	    (size_t)(nul - (p + hdr)) >= CACHE_MEDIA_MAX)
		return -1;
	m->mr_created = hdr == 1 ? 0 : cache_get64(p + 1);
	m->mr_atime = hdr == 1 ? 0 : cache_get64(p + 9);
	m->mr_media = (const char *)p + hdr;
	m->mr_body = nul + 1;
	m->mr_len = v->mv_size - (size_t)(nul + 1 - p);
	return 0;
}

int
cache_path(const struct cache *c, const char *name, char *buf, size_t len)
{
	int n;

	n = snprintf(buf, len, "%s/%s", c->c_dir, name);
	if (n < 0 || (size_t)n >= len) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
}

/* Deletes every chunk of key, whatever indexes were written. */
static int
cache_del_chunks(struct cache *c, MDB_txn *txn, const unsigned char *key)
{
	MDB_cursor *cur;
	MDB_val k, v;
	int rc;

	if ((rc = mdb_cursor_open(txn, c->c_chunks, &cur)) != 0)
		return rc;
	for (rc = cache_chunk_step(cur, key, 1, &k, &v); rc == 0;
	    rc = cache_chunk_step(cur, key, 0, &k, &v))
		if ((rc = mdb_cursor_del(cur, 0)) != 0)
			break;
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

int
cache_del_blob(struct cache *c, MDB_txn *txn, const unsigned char *key)
{
	char digest[CACHE_DIGEST_MAX];
	MDB_val k;
	int rc;

	if ((rc = cache_del_chunks(c, txn, key)) != 0)
		return rc;
	cache_digest_str(key, digest);
	k.mv_data = digest;
	k.mv_size = DIGEST_STR_LEN;
	rc = mdb_del(txn, c->c_blobs, &k, NULL);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

/*
 * LMDB reuses pages freed by transaction N only from transaction N + 2 on
 * (N + 1 may still need the snapshot before N). Rewriting the layout
 * version after an eviction makes that one transaction happen at once, so
 * the write that needed the room finds it.
 */
int
cache_tx_layout(struct cache *c, MDB_txn *txn, void *arg)
{
	MDB_val k, v;

	(void)arg;
	k.mv_data = "layout";
	k.mv_size = 6;
	v.mv_data = (void *)cache_layout;
	v.mv_size = sizeof(cache_layout);
	return mdb_put(txn, c->c_meta, &k, &v, 0);
}

/*
 * One write transaction. Out of room (cache_no_room): abort, evict least
 * recently used blobs (at least need bytes, and down to the low
 * watermark) and retry once; CACHE_FULL if that did not help. With
 * nothing to evict, the retry still follows a layout rewrite: what the
 * last transaction freed (a discard) becomes usable. fn may run twice, so
 * it must not keep state between runs.
 */
enum cache_err
cache_write(struct cache *c, const char *what, uint64_t need, cache_txfn fn,
    void *arg)
{
	enum cache_err ce;
	uint64_t over, n, high, low;
	MDB_txn *txn;
	int rc, full, retried = 0;

	if (c->c_readonly)
		return cache_err_from_mdb(c, EROFS, what);
	for (;;) {
		if ((rc = mdb_txn_begin(c->c_env, NULL, 0, &txn)) != 0)
			return cache_err_from_mdb(c, rc, what);
		if ((rc = fn(c, txn, arg)) == 0)
			rc = mdb_txn_commit(txn);	/* ends it, even failing */
		else
			mdb_txn_abort(txn);
		if (rc == 0)
			c->c_gen++;	/* pins from now on see it */
		full = rc != 0 && cache_no_room(c, rc);
		if (!full || retried || c->c_evicting) {
			ce = cache_err_from_mdb(c, rc, what);
			return full ? CACHE_FULL : ce;
		}
		retried = 1;
		(void)cache_budget(c, &high, &low);
		over = cache_total(c) + c->c_reserved;
		over = over > low ? over - low : 0;
		if ((ce = cache_evict_lru(c, need > over ? need : over, &n)) !=
		    CACHE_OK)
			return ce;
		if (n == 0) {
			c->c_evicting = 1;
			ce = cache_write(c, what, 0, cache_tx_layout, NULL);
			c->c_evicting = 0;
			if (ce != CACHE_OK)
				return ce;
		}
	}
}

/* Tag record v1: version, digest, NUL, fetched_ms. */
int
cache_tag_decode(const MDB_val *v, const char **digest, uint64_t *fetched_ms)
{
	const unsigned char *p = v->mv_data;

	if (v->mv_size != 1 + DIGEST_STR_LEN + 1 + 8 ||
	    p[0] != CACHE_REC_V1 || p[1 + DIGEST_STR_LEN] != '\0')
		return -1;
	*digest = (const char *)p + 1;
	*fetched_ms = cache_get64(p + 1 + DIGEST_STR_LEN + 1);
	return 0;
}

int
cache_tag_key(char *buf, size_t len, const char *registry, const char *repo,
    const char *tag)
{
	int n;

	n = snprintf(buf, len, "%s/%s:%s", registry, repo, tag);
	return n < 0 || (size_t)n >= len ? -1 : n;
}
