#include <sys/stat.h>
#include <sys/wait.h>

#include <fcntl.h>
#include <lmdb.h>
#include <signal.h>
#include <ftw.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "cache.h"
#include "cachecmd.h"
#include "digest.h"

#define MIB	(1024 * 1024)

struct fixture {
	char	dir[64];
};

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int
setup(void **state)
{
	struct fixture *f;

	if ((f = calloc(1, sizeof(*f))) == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "/tmp/pp-test-cache-XXXXXX");
	if (mkdtemp(f->dir) == NULL) {
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static struct cache_opts
opts_for(const struct fixture *f, uint64_t budget, int server, int readonly)
{
	struct cache_opts o;

	memset(&o, 0, sizeof(o));
	o.dir = f->dir;
	o.max_bytes = budget;
	o.high_pct = 90;
	o.low_pct = 80;
	o.server = server;
	o.readonly = readonly;
	return o;
}

static struct cache *
open_server(const struct fixture *f, uint64_t budget)
{
	struct cache_opts o = opts_for(f, budget, 1, 0);
	struct cache *c;
	char err[256];

	err[0] = '\0';
	if (cache_open(&c, &o, err, sizeof(err)) != CACHE_OK)
		fail_msg("cache_open: %s", err);
	return c;
}

/* Deterministic bytes, different per seed. */
static unsigned char *
make_bytes(size_t len, uint32_t seed)
{
	unsigned char *b;
	uint32_t x = seed * 2654435761u + 1;
	size_t i;

	b = malloc(len ? len : 1);
	assert_non_null(b);
	for (i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		b[i] = (unsigned char)x;
	}
	return b;
}

static void
digest_of(const void *buf, size_t len, char out[CACHE_DIGEST_MAX])
{
	struct digest *d;

	d = digest_new();
	assert_non_null(d);
	digest_update(d, buf, len);
	digest_final(d, out);
	digest_free(d);
}

/* Writes buf as blob `digest` the way the proxy does, chunk by chunk. */
static enum cache_err
put_blob_as(struct cache *c, const char *digest, const unsigned char *buf,
    size_t len, uint64_t created)
{
	struct cache_blob_info info;
	enum cache_err ce;
	uint32_t idx = 0;
	size_t off = 0;

	while (len - off > CACHE_CHUNK) {
		if ((ce = cache_chunk_put(c, digest, idx, buf + off,
		    CACHE_CHUNK)) != CACHE_OK)
			return ce;
		off += CACHE_CHUNK;
		idx++;
	}
	memset(&info, 0, sizeof(info));
	snprintf(info.digest, sizeof(info.digest), "%s", digest);
	snprintf(info.media_type, sizeof(info.media_type),
	    "application/vnd.oci.image.layer.v1.tar+gzip");
	info.size = len;
	info.created = created;
	return cache_blob_commit(c, &info, idx, buf + off, len - off);
}

static void
put_blob(struct cache *c, const unsigned char *buf, size_t len,
    uint64_t created, char digest[CACHE_DIGEST_MAX])
{
	digest_of(buf, len, digest);
	assert_int_equal(put_blob_as(c, digest, buf, len, created), CACHE_OK);
}

static void
check_blob_bytes(struct cache *c, const char *digest,
    const unsigned char *buf, size_t len)
{
	struct cache_pin *pin;
	const void *ptr;
	size_t clen, off = 0;
	uint32_t idx = 0;

	while (off < len) {
		assert_int_equal(cache_chunk_pin(c, digest, idx, &pin, &ptr,
		    &clen), CACHE_OK);
		assert_true(clen <= CACHE_CHUNK);
		assert_true(off + clen <= len);
		assert_memory_equal(ptr, buf + off, clen);
		cache_unpin(pin);
		off += clen;
		idx++;
	}
	assert_int_equal(cache_chunk_pin(c, digest, idx, &pin, &ptr, &clen),
	    CACHE_NOTFOUND);
}

static void
test_open_reopen(void **state)
{
	struct fixture *f = *state;
	struct cache_opts o;
	struct cache_stats st;
	struct cache *c;
	char err[256], path[128];
	struct stat sb;

	/* Nothing there yet: read-only opens say so, servers create it. */
	snprintf(path, sizeof(path), "%s/sub/dir", f->dir);
	o = opts_for(f, 64 * MIB, 0, 1);
	o.dir = path;
	assert_int_equal(cache_open(&c, &o, err, sizeof(err)), CACHE_IO);
	assert_non_null(strstr(err, path));

	o.readonly = 0;
	o.server = 1;
	assert_int_equal(cache_open(&c, &o, err, sizeof(err)), CACHE_OK);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0700);
	assert_int_equal(cache_stats(c, &st), CACHE_OK);
	assert_int_equal(st.blobs, 0);
	assert_int_equal(st.budget, 64 * MIB);
	assert_true(st.map_size >= 64 * MIB / 4 * 5 + 64 * MIB);
	assert_true(st.file_size > 0);
	cache_close(c);

	assert_int_equal(cache_open(&c, &o, err, sizeof(err)), CACHE_OK);
	cache_close(c);
	o.server = 0;
	o.readonly = 1;
	assert_int_equal(cache_open(&c, &o, err, sizeof(err)), CACHE_OK);
	cache_close(c);
}

static void
test_blob_roundtrip(void **state)
{
	struct fixture *f = *state;
	struct cache_blob_info info;
	struct cache_stats st;
	char digest[CACHE_DIGEST_MAX], small[CACHE_DIGEST_MAX];
	char actual[CACHE_DIGEST_MAX];
	unsigned char *buf, *tiny;
	struct cache *c;
	size_t len = 2 * CACHE_CHUNK + 12345;

	buf = make_bytes(len, 1);
	tiny = make_bytes(100, 2);
	c = open_server(f, 64 * MIB);
	assert_int_equal(cache_blob_reserve(c, len), CACHE_OK);
	put_blob(c, buf, len, 0, digest);
	put_blob(c, tiny, 100, 0, small);

	assert_int_equal(cache_blob_lookup(c, digest, &info), CACHE_OK);
	assert_string_equal(info.digest, digest);
	assert_int_equal(info.size, len);
	assert_string_equal(info.media_type,
	    "application/vnd.oci.image.layer.v1.tar+gzip");
	assert_true(info.created > 0);
	check_blob_bytes(c, digest, buf, len);
	check_blob_bytes(c, small, tiny, 100);
	assert_int_equal(cache_blob_verify(c, digest, actual), CACHE_OK);
	assert_string_equal(actual, digest);

	/* Other digests: not found, and never written. */
	assert_int_equal(cache_blob_lookup(c, "sha512:abcd", &info),
	    CACHE_NOTFOUND);
	assert_int_equal(cache_chunk_put(c, "sha512:abcd", 0, "x", 1),
	    CACHE_IO);
	cache_close(c);

	/* Everything is still there after a reopen. */
	c = open_server(f, 64 * MIB);
	assert_int_equal(cache_stats(c, &st), CACHE_OK);
	assert_int_equal(st.blobs, 2);
	assert_int_equal(st.blob_bytes, len + 100);
	assert_int_equal(cache_blob_lookup(c, digest, &info), CACHE_OK);
	check_blob_bytes(c, digest, buf, len);
	cache_close(c);
	free(buf);
	free(tiny);
}

static void
test_uncommitted_and_crash(void **state)
{
	struct fixture *f = *state;
	struct cache_blob_info info;
	struct cache_pin *pin;
	char digest[CACHE_DIGEST_MAX];
	const void *ptr;
	unsigned char *buf;
	struct cache *c;
	size_t len;
	pid_t pid;
	int status;

	buf = make_bytes(3 * CACHE_CHUNK, 3);
	digest_of(buf, 3 * CACHE_CHUNK, digest);

	/* Chunks without a record: pinnable by the writer, not a blob. */
	c = open_server(f, 64 * MIB);
	assert_int_equal(cache_chunk_put(c, digest, 0, buf, CACHE_CHUNK),
	    CACHE_OK);
	assert_int_equal(cache_blob_lookup(c, digest, &info), CACHE_NOTFOUND);
	assert_int_equal(cache_chunk_pin(c, digest, 0, &pin, &ptr, &len),
	    CACHE_OK);
	cache_unpin(pin);
	cache_close(c);

	/* A server killed mid-download: no commit, no close. */
	if ((pid = fork()) == 0) {
		c = open_server(f, 64 * MIB);
		if (cache_chunk_put(c, digest, 1, buf + CACHE_CHUNK,
		    CACHE_CHUNK) != CACHE_OK ||
		    cache_chunk_pin(c, digest, 1, &pin, &ptr, &len) != CACHE_OK)
			_exit(1);
		_exit(0);	/* with a reader slot still taken */
	}
	assert_true(pid > 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);

	c = open_server(f, 64 * MIB);
	assert_int_equal(cache_blob_lookup(c, digest, &info), CACHE_NOTFOUND);
	assert_int_equal(cache_chunk_pin(c, digest, 0, &pin, &ptr, &len),
	    CACHE_NOTFOUND);
	assert_int_equal(cache_chunk_pin(c, digest, 1, &pin, &ptr, &len),
	    CACHE_NOTFOUND);
	cache_close(c);
	free(buf);
}

static void
test_discard(void **state)
{
	struct fixture *f = *state;
	struct cache_blob_info info;
	struct cache_stats st;
	struct cache_pin *pin;
	char digest[CACHE_DIGEST_MAX], kept[CACHE_DIGEST_MAX];
	const void *ptr;
	unsigned char *buf, *other;
	struct cache *c;
	size_t len;

	buf = make_bytes(2 * CACHE_CHUNK + 7, 4);
	other = make_bytes(1000, 5);
	digest_of(buf, 2 * CACHE_CHUNK + 7, digest);
	c = open_server(f, 64 * MIB);
	put_blob(c, other, 1000, 0, kept);

	/* A download that failed half-way. */
	assert_int_equal(cache_blob_reserve(c, 2 * CACHE_CHUNK + 7), CACHE_OK);
	assert_int_equal(cache_chunk_put(c, digest, 0, buf, CACHE_CHUNK),
	    CACHE_OK);
	assert_int_equal(cache_chunk_put(c, digest, 1, buf + CACHE_CHUNK,
	    CACHE_CHUNK), CACHE_OK);
	cache_blob_discard(c, digest);
	assert_int_equal(cache_chunk_pin(c, digest, 0, &pin, &ptr, &len),
	    CACHE_NOTFOUND);
	assert_int_equal(cache_chunk_pin(c, digest, 1, &pin, &ptr, &len),
	    CACHE_NOTFOUND);

	/* A committed blob that the caller takes back. */
	put_blob(c, buf, 2 * CACHE_CHUNK + 7, 0, digest);
	assert_int_equal(cache_blob_lookup(c, digest, &info), CACHE_OK);
	cache_blob_discard(c, digest);
	assert_int_equal(cache_blob_lookup(c, digest, &info), CACHE_NOTFOUND);
	assert_int_equal(cache_stats(c, &st), CACHE_OK);
	assert_int_equal(st.blobs, 1);
	assert_int_equal(st.blob_bytes, 1000);
	assert_int_equal(cache_blob_lookup(c, kept, &info), CACHE_OK);
	check_blob_bytes(c, kept, other, 1000);
	cache_close(c);
	free(buf);
	free(other);
}

static void
test_manifests_and_tags(void **state)
{
	struct fixture *f = *state;
	static const char body[] = "{\"schemaVersion\":2}";
	static const char body2[] = "{\"schemaVersion\":2,\"layers\":[]}";
	char digest[CACHE_DIGEST_MAX], got[CACHE_DIGEST_MAX];
	char media[CACHE_MEDIA_MAX];
	struct cache_stats st;
	struct cache_pin *pin;
	const void *ptr;
	struct cache *c;
	uint64_t ms;
	size_t len;

	digest_of(body, sizeof(body) - 1, digest);
	c = open_server(f, 64 * MIB);
	assert_int_equal(cache_manifest_pin(c, digest, &pin, &ptr, &len,
	    media), CACHE_NOTFOUND);
	assert_int_equal(cache_manifest_put(c, digest,
	    "application/vnd.oci.image.manifest.v1+json", body,
	    sizeof(body) - 1), CACHE_OK);
	assert_int_equal(cache_manifest_pin(c, digest, &pin, &ptr, &len,
	    media), CACHE_OK);
	assert_int_equal(len, sizeof(body) - 1);
	assert_memory_equal(ptr, body, len);
	assert_string_equal(media,
	    "application/vnd.oci.image.manifest.v1+json");
	cache_unpin(pin);
	/* Same digest again (a second puller): counted once. */
	assert_int_equal(cache_manifest_put(c, digest,
	    "application/vnd.oci.image.manifest.v1+json", body,
	    sizeof(body) - 1), CACHE_OK);
	assert_int_equal(cache_manifest_put(c, "sha512:00", "x", body, 1),
	    CACHE_IO);

	assert_int_equal(cache_tag_get(c, "r.io", "lib/app", "v1", got, &ms),
	    CACHE_NOTFOUND);
	assert_int_equal(cache_tag_put(c, "r.io", "lib/app", "v1", digest,
	    1700000000123ULL), CACHE_OK);
	assert_int_equal(cache_tag_get(c, "r.io", "lib/app", "v1", got, &ms),
	    CACHE_OK);
	assert_string_equal(got, digest);
	assert_int_equal(ms, 1700000000123ULL);
	/* Tags are per registry and repository. */
	assert_int_equal(cache_tag_get(c, "s.io", "lib/app", "v1", got, &ms),
	    CACHE_NOTFOUND);
	cache_close(c);

	c = open_server(f, 64 * MIB);
	assert_int_equal(cache_stats(c, &st), CACHE_OK);
	assert_int_equal(st.manifests, 1);
	assert_int_equal(st.manifest_bytes, sizeof(body) - 1);
	assert_int_equal(st.tags, 1);
	digest_of(body2, sizeof(body2) - 1, got);
	assert_int_equal(cache_tag_put(c, "r.io", "lib/app", "v1", got, 5),
	    CACHE_OK);
	assert_int_equal(cache_tag_get(c, "r.io", "lib/app", "v1", digest,
	    &ms), CACHE_OK);
	assert_string_equal(digest, got);
	assert_int_equal(ms, 5);
	cache_close(c);
}

static void
next_second(void)
{
	time_t t = time(NULL);

	while (time(NULL) == t)
		usleep(20000);
}

static void
assert_within_budget(struct cache *c, uint64_t budget)
{
	struct cache_stats st;

	assert_int_equal(cache_stats(c, &st), CACHE_OK);
	assert_true(st.blob_bytes + st.manifest_bytes <= budget);
}

static void
test_evict_lru(void **state)
{
	struct fixture *f = *state;
	struct cache_blob_info info;
	char d[6][CACHE_DIGEST_MAX], extra[CACHE_DIGEST_MAX];
	unsigned char *buf[6];
	struct cache_stats st;
	struct cache *c;
	uint64_t n;
	const uint64_t budget = 16 * MIB;	/* high 14.4, low 12.8 MiB */
	const size_t len = 3 * MIB;
	int i;

	for (i = 0; i < 6; i++)
		buf[i] = make_bytes(len, 10 + (uint32_t)i);
	c = open_server(f, budget);
	for (i = 0; i < 4; i++) {	/* A B C D: 12 MiB */
		assert_int_equal(cache_blob_reserve(c, len), CACHE_OK);
		put_blob(c, buf[i], len, 100 * (uint64_t)(i + 1), d[i]);
		assert_within_budget(c, budget);
	}
	cache_blob_hold(c, d[1]);	/* B is being served */
	next_second();
	assert_int_equal(cache_blob_lookup(c, d[0], &info), CACHE_OK);

	/* E needs room: C, the least recently used unheld blob, goes. */
	assert_int_equal(cache_blob_reserve(c, len), CACHE_OK);
	assert_int_equal(cache_blob_lookup(c, d[2], &info), CACHE_NOTFOUND);
	put_blob(c, buf[4], len, 500, d[4]);
	assert_within_budget(c, budget);

	/* F: D goes next; B, though older, is held. */
	assert_int_equal(cache_blob_reserve(c, len), CACHE_OK);
	assert_int_equal(cache_blob_lookup(c, d[3], &info), CACHE_NOTFOUND);
	assert_int_equal(cache_blob_lookup(c, d[1], &info), CACHE_OK);
	assert_int_equal(cache_blob_evict(c, d[1]), CACHE_BUSY);
	put_blob(c, buf[5], len, 600, d[5]);
	assert_within_budget(c, budget);
	for (i = 0; i < 6; i++)
		if (i != 2 && i != 3)
			assert_int_equal(cache_blob_lookup(c, d[i], &info),
			    CACHE_OK);

	/* Larger than the high watermark: never. */
	assert_int_equal(cache_blob_reserve(c, 15 * MIB), CACHE_FULL);

	/* All held: over the high watermark is allowed up to the budget. */
	for (i = 0; i < 6; i++)
		cache_blob_hold(c, d[i]);	/* B twice */
	assert_int_equal(cache_blob_reserve(c, len), CACHE_OK);
	assert_int_equal(cache_blob_reserve(c, len), CACHE_FULL);
	/* A failed download gives its reservation back. */
	digest_of("x", 1, extra);
	assert_int_equal(cache_chunk_put(c, extra, 0, buf[0], CACHE_CHUNK),
	    CACHE_OK);
	cache_blob_discard(c, extra);
	assert_int_equal(cache_blob_reserve(c, len), CACHE_OK);
	cache_blob_discard(c, extra);	/* a reservation never written to */

	for (i = 0; i < 6; i++)
		cache_blob_unhold(c, d[i]);
	cache_blob_unhold(c, d[1]);
	assert_int_equal(cache_evict_to(c, 0, &n), CACHE_OK);
	assert_int_equal(n, 4);
	assert_int_equal(cache_stats(c, &st), CACHE_OK);
	assert_int_equal(st.blob_bytes, 0);
	assert_int_equal(st.evictions, 6);
	cache_close(c);
	for (i = 0; i < 6; i++)
		free(buf[i]);
}

static void
test_map_full(void **state)
{
	struct fixture *f = *state;
	struct cache_blob_info info;
	char a[CACHE_DIGEST_MAX], x[CACHE_DIGEST_MAX], y[CACHE_DIGEST_MAX];
	unsigned char *buf;
	struct cache_stats st;
	struct cache *c;
	enum cache_err ce = CACHE_OK;
	uint32_t i;

	/* Map: 8 MiB * 5/4 + 64 MiB = 74 MiB. */
	buf = make_bytes(6 * MIB, 20);
	c = open_server(f, 8 * MIB);
	assert_int_equal(cache_stats(c, &st), CACHE_OK);
	assert_int_equal(st.map_size, 74 * MIB);
	assert_int_equal(cache_blob_reserve(c, 6 * MIB), CACHE_OK);
	put_blob(c, buf, 6 * MIB, 0, a);

	/* Writes the budget never allowed: the map fills up. */
	digest_of("x", 1, x);
	for (i = 0; i < 100; i++)
		if ((ce = cache_chunk_put(c, x, i, buf, CACHE_CHUNK)) !=
		    CACHE_OK)
			break;
	assert_int_equal(ce, CACHE_FULL);
	assert_true(i > 60);	/* A was evicted to make room */
	assert_int_equal(cache_blob_lookup(c, a, &info), CACHE_NOTFOUND);
	assert_int_equal(cache_stats(c, &st), CACHE_OK);
	assert_int_equal(st.evictions, 1);

	/* Discarded space is reused. */
	cache_blob_discard(c, x);
	digest_of("y", 1, y);
	for (i = 0; i < 20; i++)
		assert_int_equal(cache_chunk_put(c, y, i, buf, CACHE_CHUNK),
		    CACHE_OK);
	cache_blob_discard(c, y);
	cache_close(c);
	free(buf);
}

static void
test_verify_corrupt(void **state)
{
	struct fixture *f = *state;
	struct cache_blob_info info;
	char good[CACHE_DIGEST_MAX], claimed[CACHE_DIGEST_MAX];
	char stored[CACHE_DIGEST_MAX], actual[CACHE_DIGEST_MAX];
	unsigned char *real, *fake;
	struct cache *c;
	size_t len = CACHE_CHUNK + 4096;

	real = make_bytes(len, 30);
	fake = make_bytes(len, 31);
	digest_of(fake, len, claimed);
	digest_of(real, len, stored);
	c = open_server(f, 64 * MIB);
	put_blob(c, fake, len, 0, good);
	assert_int_equal(cache_blob_verify(c, good, actual), CACHE_OK);
	cache_blob_discard(c, good);

	/* Commit does not verify; the caller does. Verify catches it. */
	assert_int_equal(put_blob_as(c, claimed, real, len, 0), CACHE_OK);
	assert_int_equal(cache_blob_verify(c, claimed, actual), CACHE_CORRUPT);
	assert_string_equal(actual, stored);

	/* A record whose middle chunk is missing. */
	memset(&info, 0, sizeof(info));
	snprintf(info.digest, sizeof(info.digest), "%s", stored);
	info.size = 2 * CACHE_CHUNK + 10;
	assert_int_equal(cache_chunk_put(c, stored, 0, real, CACHE_CHUNK),
	    CACHE_OK);
	assert_int_equal(cache_blob_commit(c, &info, 2, real, 10), CACHE_OK);
	assert_int_equal(cache_blob_verify(c, stored, actual), CACHE_CORRUPT);
	assert_string_equal(actual, "");

	/* A record that does not match the chunk layout is refused. */
	info.size = 5;
	assert_int_equal(cache_blob_commit(c, &info, 1, real, 5), CACHE_IO);
	assert_int_equal(cache_blob_lookup(c, stored, &info), CACHE_OK);
	assert_int_equal(info.size, 2 * CACHE_CHUNK + 10);
	cache_close(c);
	free(real);
	free(fake);
}

static void
test_server_lock(void **state)
{
	struct fixture *f = *state;
	struct cache_opts o;
	struct cache_blob_info info;
	char digest[CACHE_DIGEST_MAX], err[256], want[64];
	struct cache *c, *c2;
	pid_t pid;
	int status;

	c = open_server(f, 64 * MIB);
	put_blob(c, (const unsigned char *)"hello", 5, 0, digest);
	snprintf(want, sizeof(want), "in use by pid %ld", (long)getpid());

	o = opts_for(f, 64 * MIB, 1, 0);
	assert_int_equal(cache_open(&c2, &o, err, sizeof(err)), CACHE_BUSY);
	assert_null(c2);
	assert_non_null(strstr(err, want));
	assert_non_null(strstr(err, f->dir));

	o.server = 0;	/* evict, purge */
	assert_int_equal(cache_open(&c2, &o, err, sizeof(err)), CACHE_BUSY);
	assert_non_null(strstr(err, want));

	/* Read-only: fine next to the server (from another process, as
	 * LMDB wants one environment per file per process). */
	if ((pid = fork()) == 0) {
		o.readonly = 1;
		if (cache_open(&c2, &o, err, sizeof(err)) != CACHE_OK ||
		    cache_blob_lookup(c2, digest, &info) != CACHE_OK ||
		    info.size != 5)
			_exit(1);
		cache_close(c2);
		_exit(0);
	}
	assert_true(pid > 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	cache_close(c);

	/* Server gone: admin writers get in. */
	o.readonly = 0;
	assert_int_equal(cache_open(&c2, &o, err, sizeof(err)), CACHE_OK);
	assert_int_equal(cache_purge(c2), CACHE_OK);
	assert_int_equal(cache_blob_lookup(c2, digest, &info), CACHE_NOTFOUND);
	cache_close(c2);
}

static void
test_corrupt_file(void **state)
{
	struct fixture *f = *state;
	struct cache_opts o;
	struct cache_blob_info info;
	char path[128], digest[CACHE_DIGEST_MAX], err[256];
	unsigned char junk[8192];
	struct cache *c;
	struct stat sb;
	FILE *fp;

	snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
	memset(junk, 'x', sizeof(junk));
	assert_non_null(fp = fopen(path, "w"));
	assert_int_equal(fwrite(junk, 1, sizeof(junk), fp), sizeof(junk));
	fclose(fp);

	o = opts_for(f, 64 * MIB, 0, 0);
	assert_int_equal(cache_open(&c, &o, err, sizeof(err)), CACHE_IO);
	assert_non_null(strstr(err, "MDB_INVALID"));
	o.readonly = 1;
	assert_int_equal(cache_open(&c, &o, err, sizeof(err)), CACHE_IO);

	c = open_server(f, 64 * MIB);	/* moves it aside, starts empty */
	snprintf(path, sizeof(path), "%s/data.mdb.corrupt", f->dir);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_size, sizeof(junk));
	put_blob(c, (const unsigned char *)"abc", 3, 0, digest);
	assert_int_equal(cache_blob_lookup(c, digest, &info), CACHE_OK);
	cache_close(c);
}

/* Pages that a power cut left unwritten, past the two meta pages. */
static void
test_damaged_pages(void **state)
{
	struct fixture *f = *state;
	struct cache_opts o;
	struct cache_stats st;
	char path[128], digest[CACHE_DIGEST_MAX], err[256];
	unsigned char zero[4096];
	struct cache *c;
	struct stat sb;
	off_t off, size;
	int fd, i;

	c = open_server(f, 64 * MIB);
	for (i = 0; i < 50; i++) {
		snprintf(digest, sizeof(digest), "sha256:%064x", i);
		assert_int_equal(cache_manifest_put(c, digest, "x", "{}", 2),
		    CACHE_OK);
	}
	cache_close(c);
	snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
	assert_true((fd = open(path, O_RDWR)) != -1);
	size = lseek(fd, 0, SEEK_END);
	memset(zero, 0, sizeof(zero));
	for (off = 2 * 4096; off < size; off += 4096)
		assert_int_equal(pwrite(fd, zero, sizeof(zero), off),
		    sizeof(zero));
	close(fd);

	o = opts_for(f, 64 * MIB, 0, 1);
	assert_int_equal(cache_open(&c, &o, err, sizeof(err)), CACHE_IO);
	assert_non_null(strstr(err, "MDB_"));

	c = open_server(f, 64 * MIB);
	assert_int_equal(cache_stats(c, &st), CACHE_OK);
	assert_int_equal(st.manifests, 0);
	cache_close(c);
	snprintf(path, sizeof(path), "%s/data.mdb.corrupt", f->dir);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_size, size);
}

static int
run_cmd(const char *dir, ...)
{
	char *argv[16];
	va_list ap;
	int argc = 0, saved, devnull, rc;

	argv[argc++] = (char *)"cache";
	argv[argc++] = (char *)"--cache-dir";
	argv[argc++] = (char *)dir;
	va_start(ap, dir);
	while (argc < 15 && (argv[argc] = va_arg(ap, char *)) != NULL)
		argc++;
	va_end(ap);
	argv[argc] = NULL;
	/* What the command prints would break the TAP stream meson reads. */
	fflush(stdout);
	saved = dup(STDOUT_FILENO);
	devnull = open("/dev/null", O_WRONLY);
	dup2(devnull, STDOUT_FILENO);
	rc = cachecmd_main(argc, argv);
	fflush(stdout);
	dup2(saved, STDOUT_FILENO);
	close(saved);
	close(devnull);
	return rc;
}

static void
test_cachecmd(void **state)
{
	struct fixture *f = *state;
	char good[CACHE_DIGEST_MAX], bad[CACHE_DIGEST_MAX];
	unsigned char *buf;
	struct cache *c;

	buf = make_bytes(2000, 40);
	c = open_server(f, 64 * MIB);
	put_blob(c, buf, 1000, 0, good);
	digest_of(buf + 1000, 1000, bad);
	assert_int_equal(put_blob_as(c, bad, buf, 1000, 0), CACHE_OK);
	/* Writers are refused while the server runs. */
	assert_int_equal(run_cmd(f->dir, "purge", NULL), 1);
	assert_int_equal(run_cmd(f->dir, "evict", good, NULL), 1);
	cache_close(c);

	assert_int_equal(run_cmd(f->dir, "stats", NULL), 0);
	assert_int_equal(run_cmd(f->dir, "--json", "stats", NULL), 0);
	assert_int_equal(run_cmd(f->dir, "ls", NULL), 0);
	assert_int_equal(run_cmd(f->dir, "ls", "--json", NULL), 0);
	assert_int_equal(run_cmd(f->dir, "verify", good, NULL), 0);
	assert_int_equal(run_cmd(f->dir, "verify", NULL), 1);
	assert_int_equal(run_cmd(f->dir, "verify", "--json", bad, NULL), 1);
	assert_int_equal(run_cmd(f->dir, "evict", bad, NULL), 0);
	assert_int_equal(run_cmd(f->dir, "verify", NULL), 0);
	assert_int_equal(run_cmd(f->dir, "evict", bad, NULL), 1);
	assert_int_equal(run_cmd(f->dir, "evict", "--to", "0", NULL), 0);
	assert_int_equal(run_cmd(f->dir, "purge", NULL), 0);

	/* Usage errors. */
	assert_int_equal(run_cmd(f->dir, NULL), 2);
	assert_int_equal(run_cmd(f->dir, "frob", NULL), 2);
	assert_int_equal(run_cmd(f->dir, "evict", NULL), 2);
	assert_int_equal(run_cmd(f->dir, "evict", "--to", "5X", NULL), 2);
	assert_int_equal(run_cmd(f->dir, "stats", "--to", "5G", NULL), 2);
	assert_int_equal(run_cmd(f->dir, "--bogus", "stats", NULL), 2);
	free(buf);
}

/*
 * Another process's view of the reader table: how many read transactions
 * it can begin before MDB_READERS_FULL (each a slot in lock.mdb). With
 * hold, it keeps them and is killed with -9, leaving its slots behind as
 * a crashed process would. The count comes back through a pipe.
 */
static int
free_readers(const char *dir, int hold)
{
	static MDB_txn *txns[8192];
	MDB_env *env;
	pid_t pid;
	int fds[2], n = 0, status;

	assert_int_equal(pipe(fds), 0);
	if ((pid = fork()) == 0) {
		close(fds[0]);
		if (mdb_env_create(&env) != 0 || mdb_env_set_maxdbs(env, 8) ||
		    mdb_env_open(env, dir, MDB_RDONLY | MDB_NOTLS, 0600) != 0)
			_exit(1);
		while (n < 8192 && mdb_txn_begin(env, NULL, MDB_RDONLY,
		    &txns[n]) == 0)
			n++;
		if (write(fds[1], &n, sizeof(n)) != sizeof(n))
			_exit(1);
		if (hold)
			pause();	/* killed */
		mdb_env_close(env);
		_exit(0);
	}
	assert_true(pid > 0);
	close(fds[1]);
	assert_int_equal(read(fds[0], &n, sizeof(n)), sizeof(n));
	close(fds[0]);
	if (hold)
		kill(pid, SIGKILL);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	return n;
}

/* cache stats from another process, as `pullproxy cache stats` does. */
static int
stats_elsewhere(const struct fixture *f)
{
	struct cache_opts o = opts_for(f, 64 * MIB, 0, 1);
	struct cache_stats st;
	struct cache *c;
	char err[256];
	pid_t pid;
	int status;

	if ((pid = fork()) == 0) {
		if (cache_open(&c, &o, err, sizeof(err)) != CACHE_OK ||
		    cache_stats(c, &st) != CACHE_OK || st.blobs == 0)
			_exit(1);
		cache_close(c);
		_exit(0);
	}
	assert_true(pid > 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/*
 * Pins share read transactions: thousands of chunks pinned at once (1,500
 * clients that never read, four chunks ahead each) take few reader slots,
 * a write in between is seen by the pins after it, and once they are let
 * go the table is free for `pullproxy cache stats` beside the server.
 */
static void
test_pins_share_readers(void **state)
{
	struct fixture *f = *state;
	enum { NPINS = 6000 };
	static struct cache_pin *pins[NPINS];
	char a[CACHE_DIGEST_MAX], b[CACHE_DIGEST_MAX];
	struct cache_pin *pin;
	unsigned char *buf;
	const void *ptr;
	struct cache *c;
	size_t len;
	int i;

	buf = make_bytes(4 * MIB, 50);
	c = open_server(f, 64 * MIB);
	put_blob(c, buf, 3 * MIB, 0, a);
	for (i = 0; i < NPINS / 2; i++)
		assert_int_equal(cache_chunk_pin(c, a, (uint32_t)(i % 3),
		    &pins[i], &ptr, &len), CACHE_OK);
	/* Others (an admin command, a reader of another blob) still can. */
	assert_true(free_readers(f->dir, 0) >= 4096 - 16);
	put_blob(c, buf + 3 * MIB, MIB, 0, b);
	for (; i < NPINS; i++) {
		assert_int_equal(cache_chunk_pin(c, i % 2 ? a : b, 0,
		    &pins[i], &ptr, &len), CACHE_OK);
		assert_memory_equal(ptr, i % 2 ? buf : buf + 3 * MIB, 64);
	}
	assert_int_equal(stats_elsewhere(f), 0);
	for (i = 0; i < NPINS; i++)
		cache_unpin(pins[i]);
	assert_true(free_readers(f->dir, 0) >= 4096 - 16);
	assert_int_equal(stats_elsewhere(f), 0);

	/*
	 * A write between every pin (clients arriving while downloads
	 * commit): the server still leaves most of the table to others.
	 */
	for (i = 0; i < 1500; i++) {
		assert_int_equal(cache_tag_put(c, "r.io", "app", "v1", a,
		    (uint64_t)i), CACHE_OK);
		assert_int_equal(cache_chunk_pin(c, a, 1, &pins[i], &ptr,
		    &len), CACHE_OK);
		assert_memory_equal(ptr, buf + MIB, 64);
	}
	assert_true(free_readers(f->dir, 0) >= 4096 - 4096 / 4 - 16);
	assert_int_equal(stats_elsewhere(f), 0);
	for (i = 0; i < 1500; i++)
		cache_unpin(pins[i]);

	/* A process killed with the table full: recovered without restart. */
	assert_true(free_readers(f->dir, 1) >= 4096 - 16);
	assert_int_equal(cache_tag_put(c, "r.io", "app", "v1", b, 1),
	    CACHE_OK);
	assert_int_equal(cache_chunk_pin(c, b, 0, &pin, &ptr, &len),
	    CACHE_OK);
	cache_unpin(pin);
	assert_int_equal(stats_elsewhere(f), 0);
	cache_close(c);
	free(buf);
}

/* A 1 MiB manifest body, different per seed, and its digest. */
static unsigned char *
put_manifest(struct cache *c, size_t len, uint32_t seed,
    char digest[CACHE_DIGEST_MAX], enum cache_err want)
{
	unsigned char *body = make_bytes(len, seed);

	digest_of(body, len, digest);
	assert_int_equal(cache_manifest_put(c, digest,
	    "application/vnd.oci.image.manifest.v1+json", body, len), want);
	return body;
}

static int
has_manifest(struct cache *c, const char *digest)
{
	char media[CACHE_MEDIA_MAX];
	struct cache_pin *pin;
	const void *body;
	size_t len;

	if (cache_manifest_pin(c, digest, &pin, &body, &len, media) !=
	    CACHE_OK)
		return 0;
	cache_unpin(pin);
	return 1;
}

/*
 * Manifests are in the LRU with blobs: twenty 1 MiB manifests on a 16 MiB
 * budget used to leave no room for any blob, for good. The least recently
 * used go first, whatever their kind, and their tags with them.
 */
static void
test_evict_manifests(void **state)
{
	struct fixture *f = *state;
	char m[20][CACHE_DIGEST_MAX], b[4][CACHE_DIGEST_MAX];
	char tag[16], got[CACHE_DIGEST_MAX];
	unsigned char *body[20], *buf;
	struct cache_blob_info info;
	struct cache_stats st;
	struct cache *c;
	uint64_t ms;
	int i, gone = 0;

	c = open_server(f, 16 * MIB);	/* high 14.4, low 12.8 MiB */
	for (i = 0; i < 10; i++) {
		body[i] = put_manifest(c, MIB, 60 + (uint32_t)i, m[i],
		    CACHE_OK);
		snprintf(tag, sizeof(tag), "t%d", i);
		assert_int_equal(cache_tag_put(c, "r.io", "app", tag, m[i],
		    1), CACHE_OK);
	}
	next_second();
	assert_true(has_manifest(c, m[0]));	/* used: kept longer */
	next_second();
	for (; i < 20; i++) {
		body[i] = put_manifest(c, MIB, 60 + (uint32_t)i, m[i],
		    CACHE_OK);
		snprintf(tag, sizeof(tag), "t%d", i);
		assert_int_equal(cache_tag_put(c, "r.io", "app", tag, m[i],
		    1), CACHE_OK);
		assert_within_budget(c, 16 * MIB);
	}
	assert_true(has_manifest(c, m[0]));
	for (i = 1; i < 10; i++) {
		snprintf(tag, sizeof(tag), "t%d", i);
		if (has_manifest(c, m[i])) {
			assert_int_equal(cache_tag_get(c, "r.io", "app", tag,
			    got, &ms), CACHE_OK);
			continue;
		}
		gone++;
		/* Its tag went with it: the next pull fetches both again. */
		assert_int_equal(cache_tag_get(c, "r.io", "app", tag, got,
		    &ms), CACHE_NOTFOUND);
	}
	assert_true(gone >= 6);
	for (i = 10; i < 20; i++)
		assert_true(has_manifest(c, m[i]));
	assert_int_equal(cache_stats(c, &st), CACHE_OK);
	assert_int_equal(st.tags, 20 - (uint64_t)gone);

	/* Blobs still get room: the manifests, used longer ago, make way. */
	next_second();
	buf = make_bytes(3 * MIB, 70);
	for (i = 0; i < 4; i++) {
		buf[0] = (unsigned char)i;
		assert_int_equal(cache_blob_reserve(c, 3 * MIB), CACHE_OK);
		put_blob(c, buf, 3 * MIB, 0, b[i]);
		assert_within_budget(c, 16 * MIB);
	}
	for (i = 0; i < 4; i++)
		assert_int_equal(cache_blob_lookup(c, b[i], &info), CACHE_OK);
	assert_int_equal(cache_stats(c, &st), CACHE_OK);
	assert_int_equal(st.blobs, 4);
	assert_true(st.manifests <= 2);
	cache_close(c);

	/* What was counted is what a restart finds. */
	c = open_server(f, 16 * MIB);
	assert_int_equal(cache_stats(c, &st), CACHE_OK);
	assert_int_equal(st.blobs, 4);
	assert_true(st.blob_bytes + st.manifest_bytes <= 16 * MIB);
	assert_int_equal(cache_purge(c), CACHE_OK);
	assert_int_equal(cache_stats(c, &st), CACHE_OK);
	assert_int_equal(st.manifests + st.manifest_bytes + st.tags, 0);
	cache_close(c);
	for (i = 0; i < 20; i++)
		free(body[i]);
	free(buf);
}

/*
 * A manifest's access time outlives a restart, as a blob's does: of two
 * manifests stored at once, the one read since is kept, even when its key
 * would break the tie first.
 */
static void
test_manifest_access_survives_restart(void **state)
{
	struct fixture *f = *state;
	char m[2][CACHE_DIGEST_MAX], tmp[CACHE_DIGEST_MAX], d[CACHE_DIGEST_MAX];
	unsigned char *body[3];
	struct cache *c;
	int first;

	c = open_server(f, 16 * MIB);
	body[0] = put_manifest(c, 2 * MIB, 80, m[0], CACHE_OK);
	body[1] = put_manifest(c, 2 * MIB, 81, m[1], CACHE_OK);
	/* m[0]: the one an equal-time tie would evict first. */
	first = strcmp(m[0], m[1]) < 0 ? 0 : 1;
	if (first == 1) {
		memcpy(tmp, m[0], sizeof(tmp));
		memcpy(m[0], m[1], sizeof(tmp));
		memcpy(m[1], tmp, sizeof(tmp));
	}
	next_second();
	assert_true(has_manifest(c, m[0]));
	cache_close(c);

	c = open_server(f, 16 * MIB);
	/* 13.5 MiB in use; 1 MiB more is past the high mark by one victim. */
	assert_int_equal(cache_blob_reserve(c, 9 * MIB + MIB / 2), CACHE_OK);
	body[2] = put_manifest(c, MIB, 82, d, CACHE_OK);
	assert_true(has_manifest(c, m[0]));
	assert_false(has_manifest(c, m[1]));
	assert_true(has_manifest(c, d));
	cache_blob_discard(c, d);	/* gives the reservation back */
	cache_close(c);
	free(body[0]);
	free(body[1]);
	free(body[2]);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_open_reopen, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_blob_roundtrip, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_uncommitted_and_crash,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_discard, setup, teardown),
		cmocka_unit_test_setup_teardown(test_manifests_and_tags, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_evict_lru, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_map_full, setup, teardown),
		cmocka_unit_test_setup_teardown(test_verify_corrupt, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_server_lock, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_file, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_damaged_pages, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_cachecmd, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pins_share_readers, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_evict_manifests, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(
		    test_manifest_access_survives_restart, setup, teardown),
	};

	return cmocka_run_group_tests_name("cache", tests, NULL, NULL);
}
