/*
 * cache: the LMDB store of blobs, manifests and tags (cache/).
 *
 * Layout (named databases in DIR/data.mdb):
 *   chunks     (32-byte sha256 | u32 big-endian index) -> CACHE_CHUNK bytes
 *              (the last chunk shorter). Fixed-size values so the overflow
 *              page runs that eviction frees are reused by the next blob.
 *   blobs      "sha256:<hex>" -> struct cache_blob_info (packed record)
 *              Written in the same transaction as the last chunk, only after
 *              the caller verified the digest: a blob is visible to lookups
 *              only once it is complete and correct.
 *   manifests  "sha256:<hex>" -> created, last access, media type, body
 *              (<= OCI_MANIFEST_MAX)
 *   tags       "<registry>/<repo>:<tag>" -> digest, time fetched
 *
 * Blobs and manifests share one LRU under the budget; a tag goes with the
 * manifest it points at.
 *
 * Content is addressed by digest alone: the same layer pulled from two
 * repositories or registries is stored once.
 *
 * The environment runs with MDB_NOSYNC: commits reach the page cache (which
 * survives kill -9) and a background thread calls mdb_env_sync, so the event
 * loop never waits on a disk flush. Chunks written for a blob that never
 * got its record (a crash mid-download) are removed by cache_open.
 *
 * One thread (the event loop) uses a struct cache; the sync thread only
 * calls mdb_env_sync. All LMDB return codes are translated to enum cache_err
 * here, once.
 */
#ifndef PP_CACHE_H
#define PP_CACHE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CACHE_CHUNK		(1024 * 1024)
#define CACHE_DIGEST_MAX	72	/* "sha256:" + 64 hex + NUL */
#define CACHE_MEDIA_MAX		128

enum cache_err {
	CACHE_OK = 0,
	CACHE_NOTFOUND,
	CACHE_FULL,	/* no room even after evicting everything evictable */
	CACHE_BUSY,	/* a running server holds the cache (admin commands) */
	CACHE_CORRUPT,	/* stored bytes do not hash to their digest */
	CACHE_IO,	/* any other LMDB or system error; see cache_strerror */
};

struct cache_opts {
	const char	*dir;
	uint64_t	 max_bytes;	/* budget for blob and manifest bytes */
	int		 high_pct;	/* start evicting above this % of budget */
	int		 low_pct;	/* evict down to this % */
	int		 readonly;	/* admin: stats, ls, verify */
	int		 server;	/* take the server lock (see below) */
	unsigned	 sync_interval_ms;	/* background sync period; 0: 1000 */
};

struct cache_blob_info {
	char		 digest[CACHE_DIGEST_MAX];
	uint64_t	 size;
	char		 media_type[CACHE_MEDIA_MAX];
	uint64_t	 created;	/* unix seconds */
	uint64_t	 last_access;	/* unix seconds */
};

struct cache_stats {
	uint64_t	 blobs;
	uint64_t	 blob_bytes;
	uint64_t	 manifests;
	uint64_t	 manifest_bytes;
	uint64_t	 tags;
	uint64_t	 budget;	/* max_bytes */
	uint64_t	 map_size;	/* LMDB map size */
	uint64_t	 file_size;	/* data.mdb on disk */
	uint64_t	 evictions;	/* since open */
};

struct cache;
struct cache_pin;	/* a read transaction holding stored bytes in place */

/*
 * Open (creating DIR and the environment if needed). With opts->server, an
 * exclusive flock on DIR/lock is taken and kept; a second server, or an
 * admin command that writes (evict, purge), gets CACHE_BUSY with err naming
 * the pid in DIR/lock. Readonly opens never need the lock.
 * On error returns a cache_err and writes one line to err.
 */
enum cache_err cache_open(struct cache **cp, const struct cache_opts *opts,
    char *err, size_t errlen);
/* Final sync, joins the sync thread. Unpin everything first. */
void cache_close(struct cache *c);
const char *cache_strerror(struct cache *c);	/* detail of the last CACHE_IO */

/* A complete blob's record. Counts as an access for LRU (kept in memory and
 * written back in batches, so hits cost no write transaction). */
enum cache_err cache_blob_lookup(struct cache *c, const char *digest,
    struct cache_blob_info *info);

/*
 * In-use marks: a held digest is never evicted (readers serving it, the
 * writer filling it). Counted; in memory only.
 */
void cache_blob_hold(struct cache *c, const char *digest);
void cache_blob_unhold(struct cache *c, const char *digest);

/*
 * Pin chunk idx of digest (complete, or committed so far by a writer). On
 * CACHE_OK, *ptr and *len are the bytes inside the map, valid until
 * cache_unpin. Pins are cheap (pins taken while no write committed share
 * one read transaction) and many may be open at once: however many, they
 * leave most of LMDB's reader table to others (`pullproxy cache`). Copy
 * the bytes out before unpinning: LMDB may reuse the pages right after
 * (which is why hits are not sent with sendfile: the socket would still
 * reference the pages).
 */
enum cache_err cache_chunk_pin(struct cache *c, const char *digest,
    uint32_t idx, struct cache_pin **pin, const void **ptr, size_t *len);
void cache_unpin(struct cache_pin *pin);

/*
 * Writing a blob: reserve its size (evicts least recently used, unheld blobs
 * while over the high watermark, down to the low one; CACHE_FULL when it
 * cannot fit), put full chunks as they arrive (each its own write
 * transaction; MDB_MAP_FULL evicts and retries once), then commit the last
 * chunk with the record once the caller has verified the digest, or
 * discard everything written.
 * Write every blob as reserve, chunk puts, then commit or discard, never
 * skipping the reserve or the end: reserve takes no digest, so the blob's
 * first chunk put (or its commit or discard) claims the oldest unclaimed
 * reservation, and its commit or discard releases it.
 * Chunks are CACHE_CHUNK bytes except the last (lastidx), so commit requires lastidx * CACHE_CHUNK + lastlen == info->size.
 */
enum cache_err cache_blob_reserve(struct cache *c, uint64_t size);
enum cache_err cache_chunk_put(struct cache *c, const char *digest,
    uint32_t idx, const void *data, size_t len);
enum cache_err cache_blob_commit(struct cache *c,
    const struct cache_blob_info *info, uint32_t lastidx, const void *last,
    size_t lastlen);
void cache_blob_discard(struct cache *c, const char *digest);

/* Manifests by digest; the pin variant serves without copying. */
enum cache_err cache_manifest_put(struct cache *c, const char *digest,
    const char *media_type, const void *body, size_t len);
enum cache_err cache_manifest_pin(struct cache *c, const char *digest,
    struct cache_pin **pin, const void **body, size_t *len,
    char media_type[CACHE_MEDIA_MAX]);

/* Tags: which digest a tag pointed at, and when that was learnt (unix ms). */
enum cache_err cache_tag_get(struct cache *c, const char *registry,
    const char *repo, const char *tag, char digest[CACHE_DIGEST_MAX],
    uint64_t *fetched_ms);
enum cache_err cache_tag_put(struct cache *c, const char *registry,
    const char *repo, const char *tag, const char *digest,
    uint64_t fetched_ms);

/* Admin (pullproxy cache ...). */
enum cache_err cache_stats(struct cache *c, struct cache_stats *st);
/* Calls fn for every complete blob, in key order; fn returns nonzero to stop. */
enum cache_err cache_blob_foreach(struct cache *c,
    int (*fn)(const struct cache_blob_info *, void *), void *arg);
/* Re-hash a stored blob: CACHE_OK, CACHE_CORRUPT (actual set; empty when
 * chunks are missing or the sizes are wrong), CACHE_NOTFOUND, ... */
enum cache_err cache_blob_verify(struct cache *c, const char *digest,
    char actual[CACHE_DIGEST_MAX]);
/* Calls fn for every tag ("registry/repo:tag") and the digest it names. */
enum cache_err cache_tag_foreach(struct cache *c,
    int (*fn)(const char *ref, const char *digest, void *), void *arg);
struct cache_images;
/*
 * Which images a blob belongs to, where the cache knows: from every
 * cached tag, its manifest (and an index's cached children) name their
 * config and layers. A snapshot; NULL when out of memory.
 */
struct cache_images *cache_images_new(struct cache *c);
/* The references ("registry/repo:tag") of digest, up to max; how many. */
size_t cache_images_of(const struct cache_images *im, const char *digest,
    const char **refs, size_t max);
void cache_images_free(struct cache_images *im);
enum cache_err cache_blob_evict(struct cache *c, const char *digest);
/* Evict least recently used blobs and manifests until their bytes <=
 * target; returns how many went. */
enum cache_err cache_evict_to(struct cache *c, uint64_t target,
    uint64_t *evicted);
enum cache_err cache_purge(struct cache *c);	/* everything */

#endif
