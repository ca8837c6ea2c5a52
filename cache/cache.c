/*
 * cache: blobs, manifests and tags in one LMDB environment (layout in
 * cache.h). Every LMDB call of the project is in this file, and every LMDB
 * return code goes through cache_err_from_mdb.
 *
 * What lives in memory, per digest (struct cache_ent): the committed size,
 * the last access time (written back in batches), hold counts and the
 * reservation the blob's writer made. The budget totals are kept here too,
 * computed at open by scanning the records.
 */
#include <sys/file.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <lmdb.h>
#include <pthread.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "digest.h"
#include "log.h"
#include "oci.h"

#define CACHE_REC_V1		1	/* first byte of every record */
#define CACHE_KEYLEN		32	/* raw sha256 */
#define CACHE_CKEYLEN		(CACHE_KEYLEN + 4)
#define CACHE_BLOB_HDR		25	/* version, size, created, atime */
#define CACHE_KEY_MAX		511	/* LMDB's default key size limit */
#define CACHE_FLUSH_SECS	10
#define CACHE_MAP_SLACK		(64ULL << 20)
#define CACHE_MAP_ALIGN		(1ULL << 20)
/* Of the disk, kept for LMDB's own pages and whoever else writes there. */
#define CACHE_DISK_SLACK	(4ULL << 20)

struct cache_ent {
	unsigned char		 ce_key[CACHE_KEYLEN];
	TAILQ_ENTRY(cache_ent)	 ce_entry;
	uint64_t		 ce_size;	/* committed blob size */
	uint64_t		 ce_created;
	uint64_t		 ce_atime;
	uint64_t		 ce_reserved;	/* claimed by its writer */
	int			 ce_claimed;	/* even a 0-byte reservation */
	unsigned		 ce_holds;
	int			 ce_stored;	/* has a blob record */
	int			 ce_dirty;	/* ce_atime newer than record */
};
TAILQ_HEAD(cache_ents, cache_ent);

struct cache_pin {
	struct cache		*cp_cache;
	MDB_txn			*cp_txn;
	LIST_ENTRY(cache_pin)	 cp_entry;
};
LIST_HEAD(cache_pins, cache_pin);

struct cache {
	char			*c_dir;
	MDB_env			*c_env;
	MDB_dbi			 c_chunks;
	MDB_dbi			 c_blobs;
	MDB_dbi			 c_manifests;
	MDB_dbi			 c_tags;
	MDB_dbi			 c_meta;
	int			 c_fd;		/* data.mdb, for its size */
	int			 c_lockfd;
	int			 c_readonly;
	int			 c_server;
	uint64_t		 c_budget;
	uint64_t		 c_high;	/* bytes */
	uint64_t		 c_low;
	int			 c_high_pct;
	int			 c_low_pct;
	int			 c_disk_limited;	/* cache_budget's last say */

	void			*c_tree;	/* tsearch root of c_ents */
	struct cache_ents	 c_ents;
	uint64_t		 c_nblobs;
	uint64_t		 c_blob_bytes;
	uint64_t		 c_nmanifests;
	uint64_t		 c_manifest_bytes;
	uint64_t		 c_evictions;
	int			 c_evicting;	/* no eviction in eviction */
	time_t			 c_flushed;	/* last LRU write-back */
	int			 c_dirty;	/* some ce_dirty is set */

	/*
	 * Reservations: cache_blob_reserve has no digest, so a reservation
	 * waits in c_pending until a writer claims it (its first chunk, its
	 * commit or its discard) and is released by that commit or discard.
	 * Which reservation a blob claims does not matter; only the sum does.
	 */
	uint64_t		 c_reserved;	/* pending plus claimed */
	uint64_t		*c_pending;
	size_t			 c_npending;
	size_t			 c_pendcap;

	struct cache_pins	 c_idle;	/* reset read transactions */
	struct cache_pins	 c_busy;

	pthread_t		 c_syncer;
	int			 c_syncing;
	pthread_mutex_t		 c_mtx;
	pthread_cond_t		 c_cond;
	int			 c_stop;
	unsigned		 c_sync_ms;

	char			 c_errstr[256];
	int			 c_mdbrc;	/* code behind c_errstr */
};

typedef int (*cache_txfn)(struct cache *, MDB_txn *, void *);

static const unsigned char cache_layout[] = { CACHE_REC_V1 };

/*
 * The one place LMDB (and system) codes become enum cache_err; the detail
 * of anything that is not a plain miss is kept for cache_strerror.
 */
static enum cache_err
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

/* The one-line error of a failed open. */
static enum cache_err
cache_open_err(struct cache *c, int rc, const char *what, char *err,
    size_t errlen)
{
	if (cache_err_from_mdb(c, rc, what) == CACHE_NOTFOUND)
		snprintf(err, errlen, "cache %s: not a pullproxy cache",
		    c->c_dir);
	else
		snprintf(err, errlen, "cache %s: %s", c->c_dir, c->c_errstr);
	return CACHE_IO;
}

static void
cache_put64(unsigned char *p, uint64_t v)
{
	int i;

	for (i = 7; i >= 0; i--) {
		p[i] = (unsigned char)(v & 0xff);
		v >>= 8;
	}
}

static uint64_t
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
static int
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

static int
cache_key(const char *digest, unsigned char *key)
{
	if (digest == NULL)
		return -1;
	return cache_digest_key(digest, strlen(digest), key);
}

static void
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

static void
cache_chunk_key(unsigned char *ck, const unsigned char *key, uint32_t idx)
{
	memcpy(ck, key, CACHE_KEYLEN);
	ck[32] = (unsigned char)(idx >> 24);
	ck[33] = (unsigned char)(idx >> 16);
	ck[34] = (unsigned char)(idx >> 8);
	ck[35] = (unsigned char)idx;
}

/* Blob record v1: version, size, created, last_access, media type, NUL. */
static size_t
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
static int
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

/* Manifest record v1: version, media type, NUL, body. */
static int
cache_manifest_decode(const MDB_val *v, const void **body, size_t *len,
    char *media)
{
	const unsigned char *p = v->mv_data, *nul;
	size_t mlen;

	if (v->mv_size < 2 || p[0] != CACHE_REC_V1 ||
	    (nul = memchr(p + 1, '\0', v->mv_size - 1)) == NULL)
		return -1;
	mlen = (size_t)(nul - (p + 1));
	if (mlen >= CACHE_MEDIA_MAX)
		return -1;
	if (media != NULL)
		memcpy(media, p + 1, mlen + 1);
	*body = nul + 1;
	*len = v->mv_size - 1 - mlen - 1;
	return 0;
}

static int
cache_ent_cmp(const void *a, const void *b)
{
	return memcmp(((const struct cache_ent *)a)->ce_key,
	    ((const struct cache_ent *)b)->ce_key, CACHE_KEYLEN);
}

static struct cache_ent *
cache_ent_find(struct cache *c, const unsigned char *key)
{
	struct cache_ent probe;
	void *node;

	memcpy(probe.ce_key, key, CACHE_KEYLEN);
	if ((node = tfind(&probe, &c->c_tree, cache_ent_cmp)) == NULL)
		return NULL;
	return *(struct cache_ent **)node;
}

static struct cache_ent *
cache_ent_get(struct cache *c, const unsigned char *key)
{
	struct cache_ent *e;

	if ((e = cache_ent_find(c, key)) != NULL)
		return e;
	if ((e = calloc(1, sizeof(*e))) == NULL)
		return NULL;
	memcpy(e->ce_key, key, CACHE_KEYLEN);
	if (tsearch(e, &c->c_tree, cache_ent_cmp) == NULL) {
		free(e);
		return NULL;
	}
	TAILQ_INSERT_TAIL(&c->c_ents, e, ce_entry);
	return e;
}

/* Entries live while something refers to the digest. */
static void
cache_ent_drop(struct cache *c, struct cache_ent *e)
{
	if (e->ce_stored || e->ce_holds > 0 || e->ce_claimed)
		return;
	tdelete(e, &c->c_tree, cache_ent_cmp);
	TAILQ_REMOVE(&c->c_ents, e, ce_entry);
	free(e);
}

static void
cache_ent_unstore(struct cache *c, struct cache_ent *e)
{
	if (!e->ce_stored)
		return;
	c->c_nblobs--;
	c->c_blob_bytes -= e->ce_size;
	e->ce_stored = 0;
	e->ce_dirty = 0;
}

/* Give e the oldest pending reservation if it holds none yet. */
static void
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

static void
cache_release(struct cache *c, const unsigned char *key)
{
	struct cache_ent *e;

	if (c->c_npending == 0 && (e = cache_ent_find(c, key)) == NULL)
		return;
	if ((e = cache_ent_get(c, key)) == NULL)
		return;
	cache_claim(c, e);
	c->c_reserved -= e->ce_reserved;
	e->ce_reserved = 0;
	e->ce_claimed = 0;
	cache_ent_drop(c, e);
}

static uint64_t
cache_total(const struct cache *c)
{
	return c->c_blob_bytes + c->c_manifest_bytes;
}

static int
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
	unsigned char ck[CACHE_CKEYLEN];
	MDB_cursor *cur;
	MDB_val k, v;
	int rc;

	if ((rc = mdb_cursor_open(txn, c->c_chunks, &cur)) != 0)
		return rc;
	cache_chunk_key(ck, key, 0);
	k.mv_data = ck;
	k.mv_size = sizeof(ck);
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
	    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (k.mv_size != CACHE_CKEYLEN ||
		    memcmp(k.mv_data, key, CACHE_KEYLEN) != 0)
			break;
		if ((rc = mdb_cursor_del(cur, 0)) != 0)
			break;
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

static int
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
static int
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
 * The server records its budget so that admin commands, which are not
 * given the server's flags, report the budget actually in force.
 */
static int
cache_tx_budget(struct cache *c, MDB_txn *txn, void *arg)
{
	MDB_val k, v;

	(void)arg;
	k.mv_data = "budget";
	k.mv_size = 6;
	v.mv_data = &c->c_budget;
	v.mv_size = sizeof(c->c_budget);
	return mdb_put(txn, c->c_meta, &k, &v, 0);
}

static enum cache_err cache_evict_lru(struct cache *, uint64_t, uint64_t *);

/*
 * The budget in force and its watermarks: the configured ones, or less
 * when the disk holds less (data.mdb as it is plus the filesystem's free
 * space, less an eighth and CACHE_DISK_SLACK for LMDB's own pages and for
 * others on the disk). So a cache on a small or shared disk stops growing
 * before the disk is full and eviction makes room, as under the budget;
 * what cannot fit is passed through. Logged when it starts and ends.
 */
static uint64_t
cache_budget(struct cache *c, uint64_t *high, uint64_t *low)
{
	uint64_t disk = UINT64_MAX;
	struct statvfs vfs;
	struct stat sb;
	int limited;

	*high = c->c_high;
	*low = c->c_low;
	if (fstat(c->c_fd, &sb) == 0 && fstatvfs(c->c_fd, &vfs) == 0) {
		disk = (uint64_t)sb.st_size + (uint64_t)vfs.f_bavail *
		    vfs.f_frsize;
		disk -= disk / 8;
		disk = disk > CACHE_DISK_SLACK ? disk - CACHE_DISK_SLACK : 0;
	}
	limited = disk < c->c_budget;
	if (limited != c->c_disk_limited && c->c_server)
		log_msg(limited ? LOG_LEVEL_WARN : LOG_LEVEL_INFO, limited ?
		    "cache %s: the disk holds less than the budget: %" PRIu64
		    " bytes in force" : "cache %s: the disk holds the budget "
		    "again", c->c_dir, disk);
	c->c_disk_limited = limited;
	if (!limited)
		return c->c_budget;
	*high = disk / 100 * (uint64_t)c->c_high_pct;
	*low = disk / 100 * (uint64_t)c->c_low_pct;
	return disk;
}

/*
 * Out of room, in the map or on the disk: worth evicting and trying
 * again. LMDB reports a write cut short by a full disk as EIO.
 */
static int
cache_no_room(struct cache *c, int rc)
{
	struct statvfs vfs;

	if (rc == MDB_MAP_FULL || rc == ENOSPC || rc == EDQUOT)
		return 1;
	return rc == EIO && fstatvfs(c->c_fd, &vfs) == 0 &&
	    (uint64_t)vfs.f_bavail * vfs.f_frsize < CACHE_DISK_SLACK;
}

/*
 * One write transaction. Out of room (cache_no_room): abort, evict least
 * recently used blobs (at least need bytes, and down to the low
 * watermark) and retry once; CACHE_FULL if that did not help. With
 * nothing to evict, the retry still follows a layout rewrite: what the
 * last transaction freed (a discard) becomes usable. fn may run twice, so
 * it must not keep state between runs.
 */
static enum cache_err
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
			rc = mdb_txn_commit(txn);
		else
			mdb_txn_abort(txn);
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

struct cache_victims {
	struct cache_ent	**v_ents;
	size_t			  v_n;
};

static int
cache_tx_evict(struct cache *c, MDB_txn *txn, void *arg)
{
	struct cache_victims *vs = arg;
	size_t i;
	int rc;

	for (i = 0; i < vs->v_n; i++)
		if ((rc = cache_del_blob(c, txn, vs->v_ents[i]->ce_key)) != 0)
			return rc;
	return 0;
}

static enum cache_err
cache_evict_ents(struct cache *c, struct cache_ent **ents, size_t n)
{
	struct cache_victims vs;
	enum cache_err ce;
	uint64_t bytes = 0, high, low;
	size_t i;

	vs.v_ents = ents;
	vs.v_n = n;
	c->c_evicting = 1;
	ce = cache_write(c, "evict", 0, cache_tx_evict, &vs);
	if (ce == CACHE_OK)
		cache_write(c, "evict", 0, cache_tx_layout, NULL);
	c->c_evicting = 0;
	if (ce != CACHE_OK)
		return ce;
	for (i = 0; i < n; i++) {
		bytes += ents[i]->ce_size;
		cache_ent_unstore(c, ents[i]);
		cache_ent_drop(c, ents[i]);
	}
	c->c_evictions += n;
	if (c->c_server)
		log_msg(LOG_LEVEL_INFO, "cache: evicted %zu blobs, %" PRIu64
		    " bytes; %" PRIu64 " of %" PRIu64 " bytes used", n, bytes,
		    cache_total(c), cache_budget(c, &high, &low));
	return CACHE_OK;
}

static int
cache_lru_cmp(const void *a, const void *b)
{
	const struct cache_ent *x = *(struct cache_ent * const *)a;
	const struct cache_ent *y = *(struct cache_ent * const *)b;

	if (x->ce_atime != y->ce_atime)
		return x->ce_atime < y->ce_atime ? -1 : 1;
	if (x->ce_created != y->ce_created)
		return x->ce_created < y->ce_created ? -1 : 1;
	return memcmp(x->ce_key, y->ce_key, CACHE_KEYLEN);
}

/* Evicts unheld blobs, least recently used first, until need bytes went. */
static enum cache_err
cache_evict_lru(struct cache *c, uint64_t need, uint64_t *evicted)
{
	struct cache_ent **ents, *e;
	enum cache_err ce;
	uint64_t freed = 0;
	size_t n = 0, k;

	*evicted = 0;
	if (need == 0 || c->c_nblobs == 0)
		return CACHE_OK;
	if ((ents = calloc(c->c_nblobs, sizeof(*ents))) == NULL)
		return cache_err_from_mdb(c, ENOMEM, "evict");
	TAILQ_FOREACH(e, &c->c_ents, ce_entry)
		if (e->ce_stored && e->ce_holds == 0)
			ents[n++] = e;
	qsort(ents, n, sizeof(*ents), cache_lru_cmp);
	for (k = 0; k < n && freed < need; k++)
		freed += ents[k]->ce_size;
	ce = k > 0 ? cache_evict_ents(c, ents, k) : CACHE_OK;
	free(ents);
	if (ce == CACHE_OK)
		*evicted = k;
	return ce;
}

static int
cache_tx_flush(struct cache *c, MDB_txn *txn, void *arg)
{
	unsigned char buf[CACHE_BLOB_HDR + CACHE_MEDIA_MAX];
	char digest[CACHE_DIGEST_MAX];
	struct cache_blob_info info;
	struct cache_ent *e;
	MDB_val k, v;
	int rc;

	(void)arg;
	TAILQ_FOREACH(e, &c->c_ents, ce_entry) {
		if (!e->ce_dirty)
			continue;
		cache_digest_str(e->ce_key, digest);
		k.mv_data = digest;
		k.mv_size = DIGEST_STR_LEN;
		if ((rc = mdb_get(txn, c->c_blobs, &k, &v)) == MDB_NOTFOUND)
			continue;
		if (rc != 0)
			return rc;
		if (cache_blob_decode(&v, &info) == -1)
			continue;
		v.mv_data = buf;
		v.mv_size = cache_blob_encode(buf, info.size, info.created,
		    e->ce_atime, info.media_type);
		if ((rc = mdb_put(txn, c->c_blobs, &k, &v, 0)) != 0)
			return rc;
	}
	return 0;
}

/* Writes back the access times gathered since the last flush. */
static void
cache_lru_flush(struct cache *c)
{
	struct cache_ent *e;

	c->c_flushed = time(NULL);
	if (!c->c_dirty)
		return;
	if (cache_write(c, "flush access times", 0, cache_tx_flush, NULL) !=
	    CACHE_OK) {
		log_msg(LOG_LEVEL_WARN, "cache: %s", c->c_errstr);
		return;
	}
	TAILQ_FOREACH(e, &c->c_ents, ce_entry)
		e->ce_dirty = 0;
	c->c_dirty = 0;
}

static void
cache_touch(struct cache *c, const unsigned char *key)
{
	struct cache_ent *e;
	uint64_t now = (uint64_t)time(NULL);

	if ((e = cache_ent_find(c, key)) == NULL || !e->ce_stored ||
	    e->ce_atime == now)
		return;
	e->ce_atime = now;
	e->ce_dirty = 1;
	c->c_dirty = 1;
}

static enum cache_err
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

static void
cache_pins_free(struct cache_pins *list)
{
	struct cache_pin *pin;

	while ((pin = LIST_FIRST(list)) != NULL) {
		LIST_REMOVE(pin, cp_entry);
		mdb_txn_abort(pin->cp_txn);
		free(pin);
	}
}

static void *
cache_sync_main(void *arg)
{
	struct cache *c = arg;
	struct timespec ts;

	pthread_mutex_lock(&c->c_mtx);
	while (!c->c_stop) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += c->c_sync_ms / 1000;
		ts.tv_nsec += (long)(c->c_sync_ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		while (!c->c_stop && pthread_cond_timedwait(&c->c_cond,
		    &c->c_mtx, &ts) != ETIMEDOUT)
			;
		if (c->c_stop)
			break;
		pthread_mutex_unlock(&c->c_mtx);
		/*
		 * An error here (EIO) is not reported: it only costs
		 * durability, and the next write or read hits it too.
		 */
		(void)mdb_env_sync(c->c_env, 1);
		pthread_mutex_lock(&c->c_mtx);
	}
	pthread_mutex_unlock(&c->c_mtx);
	return NULL;
}

static int
cache_sync_start(struct cache *c)
{
	pthread_condattr_t attr;
	int rc;

	if ((rc = pthread_condattr_init(&attr)) != 0)
		return rc;
	if ((rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)) == 0)
		rc = pthread_cond_init(&c->c_cond, &attr);
	pthread_condattr_destroy(&attr);
	if (rc != 0)
		return rc;
	if ((rc = pthread_mutex_init(&c->c_mtx, NULL)) != 0) {
		pthread_cond_destroy(&c->c_cond);
		return rc;
	}
	if ((rc = pthread_create(&c->c_syncer, NULL, cache_sync_main, c)) !=
	    0) {
		pthread_mutex_destroy(&c->c_mtx);
		pthread_cond_destroy(&c->c_cond);
		return rc;
	}
	c->c_syncing = 1;
	return 0;
}

static void
cache_sync_stop(struct cache *c)
{
	if (!c->c_syncing)
		return;
	pthread_mutex_lock(&c->c_mtx);
	c->c_stop = 1;
	pthread_cond_signal(&c->c_cond);
	pthread_mutex_unlock(&c->c_mtx);
	pthread_join(c->c_syncer, NULL);
	pthread_mutex_destroy(&c->c_mtx);
	pthread_cond_destroy(&c->c_cond);
	c->c_syncing = 0;
}

/* mkdir -p with mode 0700 for what it creates. */
static int
cache_mkdirs(const char *dir)
{
	char path[PATH_MAX];
	size_t i, len = strlen(dir);

	if (len == 0 || len >= sizeof(path)) {
		errno = len == 0 ? ENOENT : ENAMETOOLONG;
		return -1;
	}
	memcpy(path, dir, len + 1);
	for (i = 1; i <= len; i++) {
		if (path[i] != '/' && path[i] != '\0')
			continue;
		path[i] = '\0';
		if (mkdir(path, 0700) == -1 && errno != EEXIST)
			return -1;
		path[i] = i == len ? '\0' : '/';
	}
	return 0;
}

/*
 * The server lock: flock on DIR/lock, holding the owner's pid for the
 * message the next comer gets. Admin commands that write take it too.
 */
static enum cache_err
cache_lock(struct cache *c, char *err, size_t errlen)
{
	char path[PATH_MAX], buf[32];
	ssize_t n;
	long pid;
	int len;

	if (cache_path(c, "lock", path, sizeof(path)) == -1 ||
	    (c->c_lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC,
	    0600)) == -1) {
		snprintf(err, errlen, "cache %s: lock: %s", c->c_dir,
		    strerror(errno));
		return CACHE_IO;
	}
	if (flock(c->c_lockfd, LOCK_EX | LOCK_NB) == -1) {
		if (errno != EWOULDBLOCK) {
			snprintf(err, errlen, "cache %s: lock: %s", c->c_dir,
			    strerror(errno));
			return CACHE_IO;
		}
		n = pread(c->c_lockfd, buf, sizeof(buf) - 1, 0);
		buf[n > 0 ? n : 0] = '\0';
		if ((pid = strtol(buf, NULL, 10)) > 0)
			snprintf(err, errlen, "cache %s is in use by pid %ld",
			    c->c_dir, pid);
		else
			snprintf(err, errlen, "cache %s is in use by another "
			    "process", c->c_dir);
		return CACHE_BUSY;
	}
	len = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
	if (ftruncate(c->c_lockfd, 0) == -1 ||
	    pwrite(c->c_lockfd, buf, (size_t)len, 0) != len) {
		snprintf(err, errlen, "cache %s: lock: %s", c->c_dir,
		    strerror(errno));
		return CACHE_IO;
	}
	return CACHE_OK;
}

/*
 * The map only reserves address space (data.mdb grows as pages are used),
 * so it is sized generously: the budget, plus a quarter for what LMDB
 * needs beyond the bytes (a page header per 1 MiB chunk, the last chunk's
 * page rounding, pages freed but still seen by a reader's snapshot or not
 * yet reusable, free runs too short for a chunk), plus 64 MiB for the
 * B-trees and small budgets.
 */
static size_t
cache_mapsize(uint64_t budget)
{
	uint64_t sz;

	if (budget > (UINT64_MAX - 2 * CACHE_MAP_SLACK) / 5 * 4)
		budget = (UINT64_MAX - 2 * CACHE_MAP_SLACK) / 5 * 4;
	sz = budget / 4 * 5 + CACHE_MAP_SLACK;
	sz = (sz + CACHE_MAP_ALIGN - 1) & ~(CACHE_MAP_ALIGN - 1);
	return sz > SIZE_MAX ? SIZE_MAX & ~(CACHE_MAP_ALIGN - 1) : (size_t)sz;
}

static int
cache_env_try(struct cache *c, const struct cache_opts *opts)
{
	unsigned flags;
	int rc;

	if ((rc = mdb_env_create(&c->c_env)) != 0)
		return rc;
	/*
	 * No MDB_NORDAHEAD, even for caches larger than RAM: almost every
	 * byte read through the map is a 1 MiB chunk read front to back
	 * (copied to a client, hashed by verify), and MADV_RANDOM would
	 * fault it in one page at a time; the B-tree pages readahead could
	 * waste memory on are few and hot.
	 * MDB_NOTLS: one thread holds many read transactions (pins).
	 */
	flags = MDB_NOTLS;
	if (opts->readonly)
		flags |= MDB_RDONLY;	/* the map size is the file's */
	else {
		flags |= MDB_NOSYNC;
		rc = mdb_env_set_mapsize(c->c_env, cache_mapsize(c->c_budget));
	}
	if (rc == 0)
		rc = mdb_env_set_maxdbs(c->c_env, 8);
	if (rc == 0)
		rc = mdb_env_set_maxreaders(c->c_env, 4096);
	if (rc == 0)
		rc = mdb_env_open(c->c_env, c->c_dir, flags, 0600);
	if (rc != 0) {
		mdb_env_close(c->c_env);
		c->c_env = NULL;
	}
	return rc;
}

static int
cache_damaged(int rc)
{
	return rc == MDB_INVALID || rc == MDB_CORRUPTED ||
	    rc == MDB_VERSION_MISMATCH || rc == MDB_PAGE_NOTFOUND;
}

/*
 * A server that finds a damaged data.mdb (a crash with MDB_NOSYNC can
 * leave one) moves it aside and starts empty: it is a cache. Admin
 * commands report the damage instead. damaged: the LMDB code of damage an
 * earlier open found past the headers that mdb_env_open checks, or 0.
 */
static enum cache_err
cache_env_open(struct cache *c, const struct cache_opts *opts, int damaged,
    char *err, size_t errlen)
{
	char path[PATH_MAX], aside[PATH_MAX], lockmdb[PATH_MAX];
	int rc;

	rc = damaged != 0 ? damaged : cache_env_try(c, opts);
	if (cache_damaged(rc) && opts->server &&
	    cache_path(c, "data.mdb", path, sizeof(path)) == 0 &&
	    cache_path(c, "data.mdb.corrupt", aside, sizeof(aside)) == 0 &&
	    cache_path(c, "lock.mdb", lockmdb, sizeof(lockmdb)) == 0) {
		(void)cache_err_from_mdb(c, rc, "open");
		log_msg(LOG_LEVEL_ERROR, "cache %s: %s; moved data.mdb to "
		    "data.mdb.corrupt and starting empty", c->c_dir,
		    c->c_errstr);
		if (rename(path, aside) == -1 && errno != ENOENT) {
			snprintf(err, errlen, "cache %s: rename data.mdb: %s",
			    c->c_dir, strerror(errno));
			return CACHE_IO;
		}
		/* Its reader table belonged to the damaged file. */
		if (unlink(lockmdb) == -1 && errno != ENOENT) {
			snprintf(err, errlen, "cache %s: unlink lock.mdb: %s",
			    c->c_dir, strerror(errno));
			return CACHE_IO;
		}
		rc = cache_env_try(c, opts);
	}
	if (rc == ENOENT && opts->readonly) {
		snprintf(err, errlen, "cache %s: no cache there", c->c_dir);
		return CACHE_IO;
	}
	if (rc != 0)
		return cache_open_err(c, rc, "open", err, errlen);
	return CACHE_OK;
}

static int
cache_dbis(struct cache *c)
{
	unsigned flags = c->c_readonly ? 0 : MDB_CREATE;
	MDB_txn *txn;
	int rc;

	if ((rc = mdb_txn_begin(c->c_env, NULL,
	    c->c_readonly ? MDB_RDONLY : 0, &txn)) != 0)
		return rc;
	if ((rc = mdb_dbi_open(txn, "chunks", flags, &c->c_chunks)) == 0 &&
	    (rc = mdb_dbi_open(txn, "blobs", flags, &c->c_blobs)) == 0 &&
	    (rc = mdb_dbi_open(txn, "manifests", flags,
	    &c->c_manifests)) == 0 &&
	    (rc = mdb_dbi_open(txn, "tags", flags, &c->c_tags)) == 0 &&
	    (rc = mdb_dbi_open(txn, "meta", flags, &c->c_meta)) == 0 &&
	    (c->c_readonly || (rc = cache_tx_layout(c, txn, NULL)) == 0))
		return mdb_txn_commit(txn);	/* keeps the handles */
	mdb_txn_abort(txn);
	return rc;
}

/*
 * Builds the in-memory view from the records. With fix (a server's open),
 * also deletes what a crash or another version left: chunks of blobs that
 * never got a record, and records this version cannot read.
 */
static int
cache_scan(struct cache *c, MDB_txn *txn, int fix, uint64_t *dropped)
{
	unsigned char key[CACHE_KEYLEN], last[CACHE_KEYLEN];
	struct cache_blob_info info;
	struct cache_ent *e;
	MDB_cursor *cur;
	const void *body;
	MDB_val k, v;
	size_t len;
	int rc, bad, have = 0, orphan = 0;

	if ((rc = mdb_cursor_open(txn, c->c_blobs, &cur)) != 0)
		return rc;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		bad = cache_digest_key(k.mv_data, k.mv_size, key) == -1 ||
		    cache_blob_decode(&v, &info) == -1;
		if (!bad) {
			if ((e = cache_ent_get(c, key)) == NULL) {
				rc = ENOMEM;
				break;
			}
			e->ce_stored = 1;
			e->ce_size = info.size;
			e->ce_created = info.created;
			e->ce_atime = info.last_access;
			c->c_nblobs++;
			c->c_blob_bytes += info.size;
		} else if (fix) {
			if ((rc = mdb_cursor_del(cur, 0)) != 0)
				break;
			(*dropped)++;
		}
	}
	mdb_cursor_close(cur);
	if (rc != MDB_NOTFOUND)
		return rc;

	if ((rc = mdb_cursor_open(txn, c->c_manifests, &cur)) != 0)
		return rc;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (cache_manifest_decode(&v, &body, &len, NULL) == 0) {
			c->c_nmanifests++;
			c->c_manifest_bytes += len;
		} else if (fix) {
			if ((rc = mdb_cursor_del(cur, 0)) != 0)
				break;
			(*dropped)++;
		}
	}
	mdb_cursor_close(cur);
	if (rc != MDB_NOTFOUND || !fix)
		return rc == MDB_NOTFOUND ? 0 : rc;

	/* Chunks are in digest order: decide once per digest. */
	if ((rc = mdb_cursor_open(txn, c->c_chunks, &cur)) != 0)
		return rc;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (k.mv_size != CACHE_CKEYLEN) {
			orphan = 1;
			have = 0;
		} else if (!have ||
		    memcmp(k.mv_data, last, CACHE_KEYLEN) != 0) {
			memcpy(last, k.mv_data, CACHE_KEYLEN);
			have = 1;
			e = cache_ent_find(c, last);
			orphan = e == NULL || !e->ce_stored;
			if (orphan)
				(*dropped)++;
		}
		if (orphan && (rc = mdb_cursor_del(cur, 0)) != 0)
			break;
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

static enum cache_err
cache_load(struct cache *c, char *err, size_t errlen)
{
	uint64_t dropped = 0, n, over, high, low;
	MDB_txn *txn;
	int rc, dead = 0, fix = c->c_server;

	/* Reader slots of killed processes would pin old pages forever. */
	if (fix && (rc = mdb_reader_check(c->c_env, &dead)) != 0)
		goto fail;
	if ((rc = mdb_txn_begin(c->c_env, NULL, fix ? 0 : MDB_RDONLY,
	    &txn)) != 0)
		goto fail;
	if ((rc = cache_scan(c, txn, fix, &dropped)) != 0) {
		mdb_txn_abort(txn);
		goto fail;
	}
	if ((rc = mdb_txn_commit(txn)) != 0)
		goto fail;
	if (dead > 0 || dropped > 0)
		log_msg(LOG_LEVEL_INFO, "cache %s: cleared %d stale readers, "
		    "dropped %" PRIu64 " partial or unreadable entries",
		    c->c_dir, dead, dropped);
	/* The budget, or the disk, may have shrunk since the last run. */
	(void)cache_budget(c, &high, &low);
	if (fix && cache_total(c) > high) {
		over = cache_total(c) - low;
		if (cache_evict_lru(c, over, &n) != CACHE_OK) {
			snprintf(err, errlen, "cache %s: %s", c->c_dir,
			    c->c_errstr);
			return CACHE_IO;
		}
	}
	return CACHE_OK;
fail:
	return cache_open_err(c, rc, "load", err, errlen);
}

/* One try at opening; *damaged says whether a second try could help. */
static enum cache_err
cache_open1(struct cache **cp, const struct cache_opts *opts, int *damaged,
    char *err, size_t errlen)
{
	char path[PATH_MAX];
	enum cache_err ce;
	struct cache *c;
	int rc;

	*cp = NULL;
	if (opts->dir == NULL || opts->high_pct <= 0 || opts->high_pct > 100 ||
	    opts->low_pct <= 0 || opts->low_pct > opts->high_pct ||
	    (opts->server && opts->readonly)) {
		snprintf(err, errlen, "cache: invalid options");
		return CACHE_IO;
	}
	if ((c = calloc(1, sizeof(*c))) == NULL ||
	    (c->c_dir = strdup(opts->dir)) == NULL) {
		free(c);
		snprintf(err, errlen, "cache: %s", strerror(ENOMEM));
		return CACHE_IO;
	}
	c->c_fd = c->c_lockfd = -1;
	c->c_readonly = opts->readonly;
	c->c_server = opts->server;
	c->c_budget = opts->max_bytes;
	c->c_high = opts->max_bytes / 100 * (uint64_t)opts->high_pct +
	    opts->max_bytes % 100 * (uint64_t)opts->high_pct / 100;
	c->c_low = opts->max_bytes / 100 * (uint64_t)opts->low_pct +
	    opts->max_bytes % 100 * (uint64_t)opts->low_pct / 100;
	c->c_high_pct = opts->high_pct;
	c->c_low_pct = opts->low_pct;
	c->c_sync_ms = opts->sync_interval_ms ? opts->sync_interval_ms : 1000;
	c->c_flushed = time(NULL);
	TAILQ_INIT(&c->c_ents);
	LIST_INIT(&c->c_idle);
	LIST_INIT(&c->c_busy);

	if (!c->c_readonly && cache_mkdirs(c->c_dir) == -1) {
		snprintf(err, errlen, "cache %s: mkdir: %s", c->c_dir,
		    strerror(errno));
		ce = CACHE_IO;
		goto fail;
	}
	if (!c->c_readonly && (ce = cache_lock(c, err, errlen)) != CACHE_OK)
		goto fail;
	if ((ce = cache_env_open(c, opts, *damaged, err, errlen)) != CACHE_OK)
		goto fail;
	ce = CACHE_IO;
	if ((rc = cache_dbis(c)) != 0) {
		ce = cache_open_err(c, rc, "open databases", err, errlen);
		goto fail;
	}
	if (cache_path(c, "data.mdb", path, sizeof(path)) == -1 ||
	    (c->c_fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		snprintf(err, errlen, "cache %s: data.mdb: %s", c->c_dir,
		    strerror(errno));
		goto fail;
	}
	if ((ce = cache_load(c, err, errlen)) != CACHE_OK)
		goto fail;
	if (c->c_server && (ce = cache_write(c, "record budget", 0,
	    cache_tx_budget, NULL)) != CACHE_OK) {
		snprintf(err, errlen, "cache %s: %s", c->c_dir, c->c_errstr);
		goto fail;
	}
	if (!c->c_readonly && (rc = cache_sync_start(c)) != 0) {
		snprintf(err, errlen, "cache %s: sync thread: %s", c->c_dir,
		    strerror(rc));
		ce = CACHE_IO;
		goto fail;
	}
	*cp = c;
	return CACHE_OK;
fail:
	*damaged = c->c_env != NULL && cache_damaged(c->c_mdbrc) ?
	    c->c_mdbrc : 0;
	cache_close(c);
	return ce;
}

enum cache_err
cache_open(struct cache **cp, const struct cache_opts *opts, char *err,
    size_t errlen)
{
	enum cache_err ce;
	int damaged = 0;

	ce = cache_open1(cp, opts, &damaged, err, errlen);
	if (ce != CACHE_OK && damaged != 0 && opts->server)
		ce = cache_open1(cp, opts, &damaged, err, errlen);
	return ce;
}

void
cache_close(struct cache *c)
{
	struct cache_pin *pin;
	struct cache_ent *e;

	if (c == NULL)
		return;
	cache_sync_stop(c);
	if (c->c_env != NULL && !c->c_readonly) {
		cache_lru_flush(c);
		(void)mdb_env_sync(c->c_env, 1);
	}
	/*
	 * Pins still out belong to bytes a cut connection's buffer still
	 * references until libevent frees it, after this: their transactions
	 * end here, cache_unpin frees them.
	 */
	while ((pin = LIST_FIRST(&c->c_busy)) != NULL) {
		LIST_REMOVE(pin, cp_entry);
		mdb_txn_abort(pin->cp_txn);
		pin->cp_txn = NULL;
		pin->cp_cache = NULL;
	}
	cache_pins_free(&c->c_idle);
	if (c->c_env != NULL)
		mdb_env_close(c->c_env);
	while ((e = TAILQ_FIRST(&c->c_ents)) != NULL) {
		TAILQ_REMOVE(&c->c_ents, e, ce_entry);
		tdelete(e, &c->c_tree, cache_ent_cmp);
		free(e);
	}
	if (c->c_fd != -1)
		close(c->c_fd);
	if (c->c_lockfd != -1)
		close(c->c_lockfd);	/* releases the flock */
	free(c->c_pending);
	free(c->c_dir);
	free(c);
}

const char *
cache_strerror(struct cache *c)
{
	return c->c_errstr;
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

void
cache_blob_hold(struct cache *c, const char *digest)
{
	unsigned char key[CACHE_KEYLEN];
	struct cache_ent *e;

	if (cache_key(digest, key) == 0 && (e = cache_ent_get(c, key)) != NULL)
		e->ce_holds++;
}

void
cache_blob_unhold(struct cache *c, const char *digest)
{
	unsigned char key[CACHE_KEYLEN];
	struct cache_ent *e;

	if (cache_key(digest, key) == -1 ||
	    (e = cache_ent_find(c, key)) == NULL || e->ce_holds == 0)
		return;
	e->ce_holds--;
	cache_ent_drop(c, e);
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

/*
 * Room for size more bytes under the budget in force: past the high
 * watermark, evict down to the low one; CACHE_FULL if it cannot fit.
 */
static enum cache_err
cache_make_room(struct cache *c, uint64_t size)
{
	uint64_t budget, high, low, need, n;

	budget = cache_budget(c, &high, &low);
	if (size > high)
		return CACHE_FULL;
	need = cache_total(c) + c->c_reserved + size;
	if (need > high) {
		/* A failed eviction leaves the decision to the budget. */
		(void)cache_evict_lru(c, need - low, &n);
		if (cache_total(c) + c->c_reserved + size > budget)
			return CACHE_FULL;
	}
	return CACHE_OK;
}

enum cache_err
cache_blob_reserve(struct cache *c, uint64_t size)
{
	uint64_t *p;
	size_t cap;

	if (cache_make_room(c, size) != CACHE_OK)
		return CACHE_FULL;
	if (c->c_npending == c->c_pendcap) {
		cap = c->c_pendcap ? c->c_pendcap * 2 : 16;
		if ((p = reallocarray(c->c_pending, cap, sizeof(*p))) == NULL)
			return cache_err_from_mdb(c, ENOMEM, "reserve");
		c->c_pending = p;
		c->c_pendcap = cap;
	}
	c->c_pending[c->c_npending++] = size;
	c->c_reserved += size;
	return CACHE_OK;
}

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
	if (c->c_npending > 0 && (e = cache_ent_get(c, key)) != NULL)
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
	if ((e = cache_ent_get(c, key)) == NULL)
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
	cache_ent_unstore(c, e);
	e->ce_stored = 1;
	e->ce_size = info->size;
	e->ce_created = created;
	e->ce_atime = now;
	c->c_nblobs++;
	c->c_blob_bytes += info->size;
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
	else if ((e = cache_ent_find(c, key)) != NULL) {
		cache_ent_unstore(c, e);
		cache_ent_drop(c, e);
	}
	cache_release(c, key);
}

struct cache_manifest_arg {
	const char		*m_digest;
	const unsigned char	*m_rec;
	size_t			 m_reclen;
	size_t			 m_oldlen;	/* out: body replaced, if any */
	int			 m_replaced;
};

static int
cache_tx_manifest(struct cache *c, MDB_txn *txn, void *arg)
{
	struct cache_manifest_arg *a = arg;
	const void *body;
	MDB_val k, v;
	int rc;

	k.mv_data = (void *)a->m_digest;
	k.mv_size = DIGEST_STR_LEN;
	a->m_replaced = 0;
	if ((rc = mdb_get(txn, c->c_manifests, &k, &v)) == 0)
		a->m_replaced = cache_manifest_decode(&v, &body, &a->m_oldlen,
		    NULL) == 0;
	else if (rc != MDB_NOTFOUND)
		return rc;
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
	enum cache_err ce;
	size_t mlen;

	if (cache_key(digest, key) == -1 || len > OCI_MANIFEST_MAX ||
	    (mlen = strlen(media_type)) >= CACHE_MEDIA_MAX)
		return cache_err_from_mdb(c, EINVAL, "manifest put");
	if (cache_make_room(c, len) != CACHE_OK)
		return CACHE_FULL;
	if ((rec = malloc(1 + mlen + 1 + len)) == NULL)
		return cache_err_from_mdb(c, ENOMEM, "manifest put");
	rec[0] = CACHE_REC_V1;
	memcpy(rec + 1, media_type, mlen + 1);
	if (len > 0)
		memcpy(rec + 1 + mlen + 1, body, len);
	memset(&a, 0, sizeof(a));
	a.m_digest = digest;
	a.m_rec = rec;
	a.m_reclen = 1 + mlen + 1 + len;
	ce = cache_write(c, "manifest put", len, cache_tx_manifest, &a);
	free(rec);
	if (ce != CACHE_OK)
		return ce;
	if (a.m_replaced)
		c->c_manifest_bytes -= a.m_oldlen;
	else
		c->c_nmanifests++;
	c->c_manifest_bytes += len;
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

static int
cache_tag_key(char *buf, size_t len, const char *registry, const char *repo,
    const char *tag)
{
	int n;

	n = snprintf(buf, len, "%s/%s:%s", registry, repo, tag);
	return n < 0 || (size_t)n >= len ? -1 : n;
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

enum cache_err
cache_blob_foreach(struct cache *c,
    int (*fn)(const struct cache_blob_info *, void *), void *arg)
{
	unsigned char key[CACHE_KEYLEN];
	struct cache_blob_info info;
	struct cache_pin *pin;
	struct cache_ent *e;
	MDB_cursor *cur;
	enum cache_err ce;
	MDB_val k, v;
	int rc;

	if ((ce = cache_pin_get(c, &pin)) != CACHE_OK)
		return ce;
	if ((rc = mdb_cursor_open(pin->cp_txn, c->c_blobs, &cur)) != 0) {
		cache_unpin(pin);
		return cache_err_from_mdb(c, rc, "list");
	}
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (cache_digest_key(k.mv_data, k.mv_size, key) == -1 ||
		    cache_blob_decode(&v, &info) == -1)
			continue;
		memcpy(info.digest, k.mv_data, DIGEST_STR_LEN);
		info.digest[DIGEST_STR_LEN] = '\0';
		if ((e = cache_ent_find(c, key)) != NULL &&
		    e->ce_atime > info.last_access)
			info.last_access = e->ce_atime;
		if (fn(&info, arg) != 0) {
			rc = MDB_NOTFOUND;
			break;
		}
	}
	mdb_cursor_close(cur);
	cache_unpin(pin);
	if (rc == MDB_NOTFOUND)
		return CACHE_OK;
	return cache_err_from_mdb(c, rc, "list");
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
	if (cache_key(digest, key) == -1)
		return CACHE_NOTFOUND;
	if ((ce = cache_pin_get(c, &pin)) != CACHE_OK)
		return ce;
	k.mv_data = (void *)digest;
	k.mv_size = DIGEST_STR_LEN;
	if ((rc = mdb_get(pin->cp_txn, c->c_blobs, &k, &v)) == 0 &&
	    cache_blob_decode(&v, &info) == -1)
		rc = MDB_NOTFOUND;
	if (rc == 0)
		rc = mdb_cursor_open(pin->cp_txn, c->c_chunks, &cur);
	if (rc != 0) {
		cache_unpin(pin);
		return cache_err_from_mdb(c, rc, "verify");
	}
	if ((d = digest_new()) == NULL) {
		mdb_cursor_close(cur);
		cache_unpin(pin);
		return cache_err_from_mdb(c, ENOMEM, "verify");
	}
	cache_chunk_key(ck, key, 0);
	k.mv_data = ck;
	k.mv_size = sizeof(ck);
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
	    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (k.mv_size != CACHE_CKEYLEN ||
		    memcmp(k.mv_data, key, CACHE_KEYLEN) != 0)
			break;
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

enum cache_err
cache_blob_evict(struct cache *c, const char *digest)
{
	unsigned char key[CACHE_KEYLEN];
	struct cache_ent *e;

	if (cache_key(digest, key) == -1 ||
	    (e = cache_ent_find(c, key)) == NULL || !e->ce_stored)
		return CACHE_NOTFOUND;
	if (e->ce_holds > 0)
		return CACHE_BUSY;
	return cache_evict_ents(c, &e, 1);
}

enum cache_err
cache_evict_to(struct cache *c, uint64_t target, uint64_t *evicted)
{
	*evicted = 0;
	if (c->c_blob_bytes <= target)
		return CACHE_OK;
	return cache_evict_lru(c, c->c_blob_bytes - target, evicted);
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
	c->c_nmanifests = 0;
	c->c_manifest_bytes = 0;
	return CACHE_OK;
}
