/*
 * cache: opening a cache and recovering what a crash or another version
 * left (a damaged file, partial blobs, stale readers), and closing it.
 */
#include <sys/file.h>
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <lmdb.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "cache_int.h"
#include "log.h"

#define CACHE_MAP_SLACK		(64ULL << 20)
#define CACHE_MAP_ALIGN		(1ULL << 20)

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
 * B-trees and small budgets; but never more than the disk gives
 * (cache_disk_map), and never less than a few pages' worth for the
 * B-trees, so a cache opens on a nearly full disk and passes through.
 */
static size_t
cache_mapsize(const struct cache *c)
{
	uint64_t sz, budget = c->c_budget, disk = cache_disk_map(c);

	if (budget > (UINT64_MAX - 2 * CACHE_MAP_SLACK) / 5 * 4)
		budget = (UINT64_MAX - 2 * CACHE_MAP_SLACK) / 5 * 4;
	sz = budget / 4 * 5 + CACHE_MAP_SLACK;
	if (sz > disk)
		sz = disk > CACHE_MAP_ALIGN ? disk : CACHE_MAP_ALIGN;
	sz &= ~(CACHE_MAP_ALIGN - 1);
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
		rc = mdb_env_set_mapsize(c->c_env, cache_mapsize(c));
	}
	if (rc == 0)
		rc = mdb_env_set_maxdbs(c->c_env, 8);
	if (rc == 0)
		rc = mdb_env_set_maxreaders(c->c_env, CACHE_READERS);
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

	if ((rc = c->c_readonly ? cache_read_begin(c, &txn) :
	    mdb_txn_begin(c->c_env, NULL, 0, &txn)) != 0)
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
	struct cache_mrec m;
	MDB_val k, v;
	int rc, bad, have = 0, orphan = 0;

	if ((rc = mdb_cursor_open(txn, c->c_blobs, &cur)) != 0)
		return rc;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		bad = cache_digest_key(k.mv_data, k.mv_size, key) == -1 ||
		    cache_blob_decode(&v, &info) == -1;
		if (!bad) {
			if ((e = cache_ent_get(c, CACHE_KIND_BLOB,
			    key)) == NULL) {
				rc = ENOMEM;
				break;
			}
			cache_ent_store(c, e, info.size, info.created,
			    info.last_access);
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
		bad = cache_digest_key(k.mv_data, k.mv_size, key) == -1 ||
		    cache_manifest_decode(&v, &m) == -1;
		if (!bad) {
			if ((e = cache_ent_get(c, CACHE_KIND_MANIFEST,
			    key)) == NULL) {
				rc = ENOMEM;
				break;
			}
			cache_ent_store(c, e, m.mr_len, m.mr_created,
			    m.mr_atime);
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
			e = cache_ent_find(c, CACHE_KIND_BLOB, last);
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
	if ((rc = fix ? mdb_txn_begin(c->c_env, NULL, 0, &txn) :
	    cache_read_begin(c, &txn)) != 0)
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
	cache_pins_free(c);
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
