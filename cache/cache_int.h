/*
 * cache_int: what the files of cache/ share and nothing else sees: the
 * struct cache, the per-digest entries, pins, the record formats' sizes
 * and the helpers each file offers the others (one block per file).
 * Part of the module "cache" (tests/layers.py: a private header
 * NAME_int.h belongs to the module NAME).
 *
 * What lives in memory, per digest (struct cache_ent): the committed size,
 * the last access time (written back in batches), hold counts and the
 * reservation the blob's writer made. The budget totals are kept here too,
 * computed at open by scanning the records.
 */
#ifndef PP_CACHE_INT_H
#define PP_CACHE_INT_H

#include <sys/queue.h>

#include <lmdb.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "cache.h"

#define CACHE_REC_V1		1	/* first byte of every record */
#define CACHE_REC_V2		2	/* manifests with times */
#define CACHE_KEYLEN		32	/* raw sha256 */
#define CACHE_CKEYLEN		(CACHE_KEYLEN + 4)
#define CACHE_BLOB_HDR		25	/* version, size, created, atime */
#define CACHE_MANIFEST_HDR	17	/* version, created, atime */
#define CACHE_READERS		4096	/* lock.mdb's table, all processes */
#define CACHE_KEY_MAX		511	/* LMDB's default key size limit */

/* Entries of both kinds are in the LRU; the digest spaces are apart. */
enum cache_kind {
	CACHE_KIND_BLOB,
	CACHE_KIND_MANIFEST,
};

struct cache_ent {
	enum cache_kind		 ce_kind;
	unsigned char		 ce_key[CACHE_KEYLEN];
	TAILQ_ENTRY(cache_ent)	 ce_entry;
	uint64_t		 ce_size;	/* blob or manifest bytes */
	uint64_t		 ce_created;
	uint64_t		 ce_atime;
	uint64_t		 ce_reserved;	/* claimed by its writer */
	int			 ce_claimed;	/* even a 0-byte reservation */
	unsigned		 ce_holds;
	int			 ce_stored;	/* has a record */
	int			 ce_dirty;	/* ce_atime newer than record */
};
TAILQ_HEAD(cache_ents, cache_ent);

/*
 * A read transaction, shared: every pin taken while no write committed
 * since it began refers to the same one (counted in cp_refs), so pins
 * cost no reader slot each. See reads.c.
 */
struct cache_pin {
	struct cache		*cp_cache;	/* NULL: outlived cache_close */
	MDB_txn			*cp_txn;
	unsigned		 cp_refs;
	uint64_t		 cp_gen;	/* c_gen when it began */
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
	struct cache_pins	 c_busy;	/* with pins out */
	struct cache_pin	*c_shared;	/* the newest of c_busy */
	unsigned		 c_nidle;
	unsigned		 c_nbusy;
	uint64_t		 c_gen;		/* write commits so far */

	pthread_t		 c_syncer;
	int			 c_syncing;
	pthread_mutex_t		 c_mtx;
	pthread_cond_t		 c_cond;
	int			 c_stop;
	unsigned		 c_sync_ms;

	char			 c_errstr[256];
	int			 c_mdbrc;	/* code behind c_errstr */
};

/* A manifest record, decoded: pointers into the record. */
struct cache_mrec {
	const char		*mr_media;
	const void		*mr_body;
	size_t			 mr_len;
	uint64_t		 mr_created;
	uint64_t		 mr_atime;
};

typedef int (*cache_txfn)(struct cache *, MDB_txn *, void *);

/* store.c */
enum cache_err cache_err_from_mdb(struct cache *c, int rc, const char *what);
void cache_put64(unsigned char *p, uint64_t v);
uint64_t cache_get64(const unsigned char *p);
int cache_digest_key(const char *digest, size_t len, unsigned char *key);
int cache_key(const char *digest, unsigned char *key);
void cache_digest_str(const unsigned char *key, char out[CACHE_DIGEST_MAX]);
void cache_chunk_key(unsigned char *ck, const unsigned char *key, uint32_t idx);
int cache_chunk_step(MDB_cursor *cur, const unsigned char *key, int first,
    MDB_val *k, MDB_val *v);
size_t cache_blob_encode(unsigned char *buf, uint64_t size, uint64_t created,
    uint64_t atime, const char *media);
/*
 * The record of digest in dbi, read under a pin the caller owns on
 * CACHE_OK (the value lives in the map until cache_unpin); key is filled
 * with the digest's binary key. what names the operation in errors.
 */
enum cache_err cache_record_pin(struct cache *c, MDB_dbi dbi,
    const char *digest, unsigned char key[CACHE_KEYLEN],
    struct cache_pin **pinp, MDB_val *v, const char *what);
int cache_blob_decode(const MDB_val *v, struct cache_blob_info *info);
size_t cache_manifest_encode(unsigned char *buf, const struct cache_mrec *m);
int cache_manifest_decode(const MDB_val *v, struct cache_mrec *m);
int cache_path(const struct cache *c, const char *name, char *buf, size_t len);
int cache_del_blob(struct cache *c, MDB_txn *txn, const unsigned char *key);
int cache_tx_layout(struct cache *c, MDB_txn *txn, void *arg);
enum cache_err cache_write(struct cache *c, const char *what, uint64_t need,
    cache_txfn fn, void *arg);
int cache_tag_key(char *buf, size_t len, const char *registry,
    const char *repo, const char *tag);
int cache_tag_decode(const MDB_val *v, const char **digest,
    uint64_t *fetched_ms);

/* entries.c */
int cache_ent_cmp(const void *a, const void *b);
struct cache_ent *cache_ent_find(struct cache *c, enum cache_kind kind,
    const unsigned char *key);
struct cache_ent *cache_ent_get(struct cache *c, enum cache_kind kind,
    const unsigned char *key);
void cache_ent_drop(struct cache *c, struct cache_ent *e);
void cache_ent_unstore(struct cache *c, struct cache_ent *e);
void cache_ent_store(struct cache *c, struct cache_ent *e, uint64_t size,
    uint64_t created, uint64_t atime);
void cache_claim(struct cache *c, struct cache_ent *e);
void cache_release(struct cache *c, const unsigned char *key);
void cache_touch(struct cache *c, enum cache_kind kind,
    const unsigned char *key);

/* space.c */
uint64_t cache_total(const struct cache *c);
uint64_t cache_disk(const struct cache *c);
uint64_t cache_disk_map(const struct cache *c);
uint64_t cache_budget(struct cache *c, uint64_t *high, uint64_t *low);
int cache_no_room(struct cache *c, int rc);
enum cache_err cache_evict_ents(struct cache *c, struct cache_ent **ents,
    size_t n);
enum cache_err cache_evict_lru(struct cache *c, uint64_t need,
    uint64_t *evicted);
void cache_lru_flush(struct cache *c);
enum cache_err cache_make_room(struct cache *c, uint64_t size);

/* reads.c */
int cache_read_begin(struct cache *c, MDB_txn **txn);
enum cache_err cache_pin_get(struct cache *c, struct cache_pin **pinp);
void cache_pins_free(struct cache *c);

/* syncer.c */
int cache_sync_start(struct cache *c);
void cache_sync_stop(struct cache *c);

#endif
