/*
 * cache space: the budget in force, reservations, eviction of least
 * recently used blobs, and the batched write-back of access times.
 */
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <lmdb.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache.h"
#include "cache_int.h"
#include "digest.h"
#include "log.h"

/* Of the disk, kept for LMDB's own pages and whoever else writes there. */
#define CACHE_DISK_SLACK	(4ULL << 20)

uint64_t
cache_total(const struct cache *c)
{
	return c->c_blob_bytes + c->c_manifest_bytes;
}

/*
 * All the disk could give the cache: data.mdb as it is plus the free
 * space of its filesystem (data.mdb counts as 0 before it exists);
 * UINT64_MAX when the filesystem cannot say.
 */
uint64_t
cache_disk(const struct cache *c)
{
	char path[PATH_MAX];
	struct statvfs vfs;
	struct stat sb;

	if (c->c_fd != -1) {
		if (fstat(c->c_fd, &sb) == -1 || fstatvfs(c->c_fd, &vfs) == -1)
			return UINT64_MAX;
	} else {
		if (statvfs(c->c_dir, &vfs) == -1)
			return UINT64_MAX;
		if (cache_path(c, "data.mdb", path, sizeof(path)) == -1 ||
		    stat(path, &sb) == -1)
			sb.st_size = 0;
	}
	return (uint64_t)sb.st_size + (uint64_t)vfs.f_bavail * vfs.f_frsize;
}

/*
 * The budget in force and its watermarks: the configured ones, or less
 * when the disk holds less (cache_disk() less an eighth and
 * CACHE_DISK_SLACK for LMDB's own pages and for others on the disk). So a
 * cache on a small or shared disk stops growing before the disk is full
 * and eviction makes room, as under the budget; what cannot fit is passed
 * through. Logged when it starts and ends. (The map's own cap, set at
 * open, keeps data.mdb from outgrowing the disk when pinned pages cannot
 * be reused: cache_disk_map().)
 */
uint64_t
cache_budget(struct cache *c, uint64_t *high, uint64_t *low)
{
	uint64_t disk;
	int limited;

	*high = c->c_high;
	*low = c->c_low;
	if ((disk = cache_disk(c)) != UINT64_MAX) {
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
 * The most data.mdb may ever take, from the disk at open: cache_disk()
 * less a sixteenth and CACHE_DISK_SLACK. The budget in force (an eighth
 * off) leaves room under it for LMDB's own pages; without it, pages freed
 * by eviction while a reader's snapshot still sees them cannot be reused,
 * data.mdb grows instead, and a burst of writes fills the disk (seen: 62.6
 * of 64 MiB). At the cap a write waits for room as on a full disk. Fixed
 * until restart: LMDB resizes its map only with no transaction open.
 */
uint64_t
cache_disk_map(const struct cache *c)
{
	uint64_t disk = cache_disk(c);

	if (disk == UINT64_MAX)
		return UINT64_MAX;
	disk -= disk / 16;
	return disk > CACHE_DISK_SLACK ? disk - CACHE_DISK_SLACK : 0;
}

/*
 * Out of room, in the map or on the disk: worth evicting and trying
 * again. LMDB reports a write cut short by a full disk as EIO.
 */
int
cache_no_room(struct cache *c, int rc)
{
	struct statvfs vfs;

	if (rc == MDB_MAP_FULL || rc == ENOSPC || rc == EDQUOT)
		return 1;
	return rc == EIO && fstatvfs(c->c_fd, &vfs) == 0 &&
	    (uint64_t)vfs.f_bavail * vfs.f_frsize < CACHE_DISK_SLACK;
}

struct cache_victims {
	struct cache_ent	**v_ents;
	size_t			  v_n;
};

/*
 * Tags go with the manifest they point at: a tag whose manifest is not
 * stored (evicted in this transaction) or whose record is unreadable is
 * dropped, so tags stay as few as the manifests, and the next pull of the
 * tag fetches it again as a first one does.
 */
static int
cache_del_tags(struct cache *c, MDB_txn *txn)
{
	MDB_cursor *cur;
	const char *digest;
	uint64_t ms;
	MDB_val k, v, mk, mv;
	int rc;

	if ((rc = mdb_cursor_open(txn, c->c_tags, &cur)) != 0)
		return rc;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (cache_tag_decode(&v, &digest, &ms) == 0) {
			mk.mv_data = (void *)digest;
			mk.mv_size = DIGEST_STR_LEN;
			if ((rc = mdb_get(txn, c->c_manifests, &mk, &mv)) == 0)
				continue;
			if (rc != MDB_NOTFOUND)
				break;
		}
		if ((rc = mdb_cursor_del(cur, 0)) != 0)
			break;
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

static int
cache_tx_evict(struct cache *c, MDB_txn *txn, void *arg)
{
	struct cache_victims *vs = arg;
	char digest[CACHE_DIGEST_MAX];
	struct cache_ent *e;
	int rc, manifests = 0;
	size_t i;
	MDB_val k;

	for (i = 0; i < vs->v_n; i++) {
		e = vs->v_ents[i];
		if (e->ce_kind == CACHE_KIND_BLOB) {
			if ((rc = cache_del_blob(c, txn, e->ce_key)) != 0)
				return rc;
			continue;
		}
		cache_digest_str(e->ce_key, digest);
		k.mv_data = digest;
		k.mv_size = DIGEST_STR_LEN;
		if ((rc = mdb_del(txn, c->c_manifests, &k, NULL)) != 0 &&
		    rc != MDB_NOTFOUND)
			return rc;
		manifests = 1;
	}
	return manifests ? cache_del_tags(c, txn) : 0;
}

enum cache_err
cache_evict_ents(struct cache *c, struct cache_ent **ents, size_t n)
{
	struct cache_victims vs;
	enum cache_err ce;
	uint64_t bytes = 0, high, low;
	size_t i, nman = 0;

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
		nman += ents[i]->ce_kind == CACHE_KIND_MANIFEST;
		cache_ent_unstore(c, ents[i]);
		cache_ent_drop(c, ents[i]);
	}
	c->c_evictions += n;
	if (c->c_server)
		log_msg(LOG_LEVEL_INFO, "cache: evicted %zu blobs and %zu "
		    "manifests, %" PRIu64 " bytes; %" PRIu64 " of %" PRIu64
		    " bytes used", n - nman, nman, bytes, cache_total(c),
		    cache_budget(c, &high, &low));
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

/*
 * Evicts unheld blobs and manifests, least recently used first, until
 * need bytes went.
 */
enum cache_err
cache_evict_lru(struct cache *c, uint64_t need, uint64_t *evicted)
{
	struct cache_ent **ents, *e;
	enum cache_err ce;
	uint64_t freed = 0;
	size_t n = 0, k;

	*evicted = 0;
	if (need == 0 || c->c_nblobs + c->c_nmanifests == 0)
		return CACHE_OK;
	if ((ents = calloc(c->c_nblobs + c->c_nmanifests, sizeof(*ents))) ==
	    NULL)
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

/* A manifest's record again with its new access time (k: its digest). */
static int
cache_flush_manifest(struct cache *c, MDB_txn *txn, MDB_val *k,
    uint64_t atime)
{
	struct cache_mrec m;
	unsigned char *buf;
	MDB_val v;
	int rc;

	if ((rc = mdb_get(txn, c->c_manifests, k, &v)) != 0)
		return rc == MDB_NOTFOUND ? 0 : rc;
	if (cache_manifest_decode(&v, &m) == -1)
		return 0;
	/* Copied first: the put may reuse the pages m points into. */
	if ((buf = malloc(CACHE_MANIFEST_HDR + CACHE_MEDIA_MAX + m.mr_len)) ==
	    NULL)
		return ENOMEM;
	m.mr_atime = atime;
	v.mv_data = buf;
	v.mv_size = cache_manifest_encode(buf, &m);
	rc = mdb_put(txn, c->c_manifests, k, &v, 0);
	free(buf);
	return rc;
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
		if (e->ce_kind == CACHE_KIND_MANIFEST) {
			if ((rc = cache_flush_manifest(c, txn, &k,
			    e->ce_atime)) != 0)
				return rc;
			continue;
		}
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
void
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

/*
 * Room for size more bytes under the budget in force: past the high
 * watermark, evict down to the low one; CACHE_FULL if it cannot fit.
 */
enum cache_err
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
