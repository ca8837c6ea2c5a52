/*
 * cachecmd: `pullproxy cache`. stats, ls and verify open the cache
 * read-only, so they work next to a running server. evict and purge
 * write: on a cache a server holds (its lock says so), they ask that
 * server on its admin socket (adminapi.h).
 */
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include <errno.h>
#include <event2/http.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "adminapi.h"
#include "cache.h"
#include "cachecmd.h"
#include "config.h"

/* Images named in ls per blob, at most. */
#define CACHECMD_IMAGES_MAX	32

struct cachecmd {
	const char		*cc_dir;
	int			 cc_json;
	struct cache		*cc_cache;
	struct cache_images	*cc_images;	/* ls */
};

static void
cachecmd_usage(FILE *f)
{
	fprintf(f,
	    "usage: pullproxy cache [--cache-dir DIR] [--config FILE] [--json] "
	    "COMMAND\n"
	    "\n"
	    "  stats               blobs, manifests, tags, budget, file sizes\n"
	    "  ls                  one line per blob: digest, size, media type,"
	    " last access,\n"
	    "                      the cached tags (registry/repo:tag) it"
	    " belongs to\n"
	    "  verify [DIGEST...]  re-hash stored blobs (all by default); exit"
	    " 1 if any is corrupt\n"
	    "  evict DIGEST...     remove these blobs\n"
	    "  evict --to SIZE     remove least recently used blobs and"
	    " manifests down to SIZE\n"
	    "                      (K, M, G, T)\n"
	    "  purge               remove everything\n"
	    "\n"
	    "stats, ls and verify read the cache; evict and purge ask the"
	    " running\n"
	    "server on its admin socket (DIR/" ADMINAPI_SOCKET "), where"
	    " purge keeps what\n"
	    "transfers in flight still use. --cache-dir overrides the config"
	    " file's\ncache_dir.\n"
	    "--json prints JSON (one object per line).\n");
}

static int __attribute__((format(printf, 1, 2)))
cachecmd_usage_err(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "pullproxy cache: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (try --help)\n");
	return 2;
}

/* A byte count with an optional binary K, M, G or T suffix. */
static int
cachecmd_size(const char *s, uint64_t *out)
{
	unsigned long long v;
	unsigned shift = 0;
	char *end;

	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0)
		return -1;
	if (*end != '\0') {
		switch (*end) {
		case 'k': case 'K': shift = 10; break;
		case 'm': case 'M': shift = 20; break;
		case 'g': case 'G': shift = 30; break;
		case 't': case 'T': shift = 40; break;
		default: return -1;
		}
		if (end[1] != '\0')
			return -1;
	}
	if (shift > 0 && v > (UINT64_MAX >> shift))
		return -1;
	*out = (uint64_t)v << shift;
	return 0;
}

static const char *
cachecmd_human(uint64_t n, char *buf, size_t len)
{
	static const char *units[] = { "KiB", "MiB", "GiB", "TiB" };
	double v = (double)n;
	int i = -1;

	if (n < 1024) {
		snprintf(buf, len, "%" PRIu64 " B", n);
		return buf;
	}
	while (v >= 1024 && i < 3) {
		v /= 1024;
		i++;
	}
	snprintf(buf, len, "%.1f %s", v, units[i]);
	return buf;
}

static const char *
cachecmd_time(uint64_t t, char *buf, size_t len)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (gmtime_r(&tt, &tm) == NULL ||
	    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, len, "%" PRIu64, t);
	return buf;
}

static void
cachecmd_json(json_t *o)
{
	json_dumpf(o, stdout, JSON_COMPACT);
	fputc('\n', stdout);
	json_decref(o);
}

static int
cachecmd_stats(struct cachecmd *cc)
{
	struct cache_stats st;
	char a[32], b[32];

	if (cache_stats(cc->cc_cache, &st) != CACHE_OK) {
		fprintf(stderr, "pullproxy cache: %s\n",
		    cache_strerror(cc->cc_cache));
		return 1;
	}
	if (cc->cc_json) {
		cachecmd_json(json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, "
		    "s:I, s:I}", "dir", cc->cc_dir,
		    "blobs", (json_int_t)st.blobs,
		    "blob_bytes", (json_int_t)st.blob_bytes,
		    "manifests", (json_int_t)st.manifests,
		    "manifest_bytes", (json_int_t)st.manifest_bytes,
		    "tags", (json_int_t)st.tags,
		    "budget", (json_int_t)st.budget,
		    "file_size", (json_int_t)st.file_size,
		    "map_size", (json_int_t)st.map_size));
		return 0;
	}
	printf("cache       %s\n", cc->cc_dir);
	printf("blobs       %" PRIu64 " (%s)\n", st.blobs,
	    cachecmd_human(st.blob_bytes, a, sizeof(a)));
	printf("manifests   %" PRIu64 " (%s)\n", st.manifests,
	    cachecmd_human(st.manifest_bytes, a, sizeof(a)));
	printf("tags        %" PRIu64 "\n", st.tags);
	printf("budget      %s (%.1f%% used)\n",
	    cachecmd_human(st.budget, a, sizeof(a)), st.budget == 0 ? 0.0 :
	    100.0 * (double)(st.blob_bytes + st.manifest_bytes) /
	    (double)st.budget);
	printf("data.mdb    %s, map size %s\n",
	    cachecmd_human(st.file_size, a, sizeof(a)),
	    cachecmd_human(st.map_size, b, sizeof(b)));
	return 0;
}

static int
cachecmd_ls_one(const struct cache_blob_info *info, void *arg)
{
	struct cachecmd *cc = arg;
	const char *refs[CACHECMD_IMAGES_MAX];
	char ct[32], at[32];
	json_t *images;
	size_t n, i;

	n = cache_images_of(cc->cc_images, info->digest, refs,
	    CACHECMD_IMAGES_MAX);
	cachecmd_time(info->created, ct, sizeof(ct));
	cachecmd_time(info->last_access, at, sizeof(at));
	if (cc->cc_json) {
		images = json_array();
		for (i = 0; i < n; i++)
			json_array_append_new(images, json_string(refs[i]));
		cachecmd_json(json_pack("{s:s, s:I, s:s, s:s, s:s, s:o}",
		    "digest", info->digest, "size", (json_int_t)info->size,
		    "media_type", info->media_type, "created", ct,
		    "last_access", at, "images", images));
		return 0;
	}
	printf("%s %12" PRIu64 " %s %s ", info->digest, info->size,
	    info->media_type[0] != '\0' ? info->media_type : "-", at);
	for (i = 0; i < n; i++)
		printf("%s%s", i > 0 ? "," : "", refs[i]);
	printf("%s\n", n == 0 ? "-" : "");
	return 0;
}

static int
cachecmd_ls(struct cachecmd *cc)
{
	enum cache_err ce = CACHE_OK;

	if ((cc->cc_images = cache_images_new(cc->cc_cache)) == NULL ||
	    (ce = cache_blob_foreach(cc->cc_cache, cachecmd_ls_one, cc)) !=
	    CACHE_OK) {
		fprintf(stderr, "pullproxy cache: %s\n", ce == CACHE_OK ?
		    strerror(ENOMEM) : cache_strerror(cc->cc_cache));
		cache_images_free(cc->cc_images);
		return 1;
	}
	cache_images_free(cc->cc_images);
	cc->cc_images = NULL;
	return 0;
}

struct cachecmd_list {
	char	(*l_digests)[CACHE_DIGEST_MAX];
	size_t	  l_n;
	size_t	  l_cap;
	int	  l_nomem;
};

static int
cachecmd_collect(const struct cache_blob_info *info, void *arg)
{
	struct cachecmd_list *l = arg;
	char (*p)[CACHE_DIGEST_MAX];
	size_t cap;

	if (l->l_n == l->l_cap) {
		cap = l->l_cap ? l->l_cap * 2 : 64;
		if ((p = reallocarray(l->l_digests, cap, sizeof(*p))) == NULL) {
			l->l_nomem = 1;
			return -1;
		}
		l->l_digests = p;
		l->l_cap = cap;
	}
	memcpy(l->l_digests[l->l_n++], info->digest, CACHE_DIGEST_MAX);
	return 0;
}

/* Verifies one blob; returns 1 when it counts against the exit status. */
static int
cachecmd_verify_one(struct cachecmd *cc, const char *digest, int given,
    uint64_t *verified, uint64_t *corrupt)
{
	char actual[CACHE_DIGEST_MAX];

	switch (cache_blob_verify(cc->cc_cache, digest, actual)) {
	case CACHE_OK:
		(*verified)++;
		return 0;
	case CACHE_CORRUPT:
		(*verified)++;
		(*corrupt)++;
		if (cc->cc_json)
			cachecmd_json(json_pack("{s:s, s:b, s:s?}", "digest",
			    digest, "corrupt", 1, "actual",
			    actual[0] != '\0' ? actual : NULL));
		else if (actual[0] != '\0')
			printf("%s: corrupt, stored bytes hash to %s\n",
			    digest, actual);
		else
			printf("%s: corrupt, chunks missing or of the wrong "
			    "size\n", digest);
		return 1;
	case CACHE_NOTFOUND:
		/* Blobs listed but evicted meanwhile are not an error. */
		if (!given)
			return 0;
		fprintf(stderr, "pullproxy cache: %s: not in the cache\n",
		    digest);
		return 1;
	default:
		fprintf(stderr, "pullproxy cache: %s: %s\n", digest,
		    cache_strerror(cc->cc_cache));
		return 1;
	}
}

static int
cachecmd_verify(struct cachecmd *cc, int argc, char **argv)
{
	struct cachecmd_list l;
	uint64_t verified = 0, corrupt = 0;
	size_t i;
	int status = 0;

	memset(&l, 0, sizeof(l));
	if (argc == 0 && (cache_blob_foreach(cc->cc_cache, cachecmd_collect,
	    &l) != CACHE_OK || l.l_nomem)) {
		fprintf(stderr, "pullproxy cache: %s\n", l.l_nomem ?
		    strerror(ENOMEM) : cache_strerror(cc->cc_cache));
		free(l.l_digests);
		return 1;
	}
	for (i = 0; i < (size_t)argc; i++)
		status |= cachecmd_verify_one(cc, argv[i], 1, &verified,
		    &corrupt);
	for (i = 0; i < l.l_n; i++)
		status |= cachecmd_verify_one(cc, l.l_digests[i], 0,
		    &verified, &corrupt);
	free(l.l_digests);
	if (cc->cc_json)
		cachecmd_json(json_pack("{s:I, s:I}", "verified",
		    (json_int_t)verified, "corrupt", (json_int_t)corrupt));
	else
		printf("verified %" PRIu64 " blobs, %" PRIu64 " corrupt\n",
		    verified, corrupt);
	return status;
}

static int
cachecmd_evict(struct cachecmd *cc, int argc, char **argv, const char *to)
{
	struct cache_stats st;
	uint64_t target, n;
	enum cache_err ce;
	char a[32];
	int i, status = 0;

	if (to != NULL) {
		if (cachecmd_size(to, &target) == -1)
			return cachecmd_usage_err("--to: expected a size such "
			    "as 512M or 20G, not '%s'", to);
		if (cache_evict_to(cc->cc_cache, target, &n) != CACHE_OK ||
		    cache_stats(cc->cc_cache, &st) != CACHE_OK) {
			fprintf(stderr, "pullproxy cache: %s\n",
			    cache_strerror(cc->cc_cache));
			return 1;
		}
		if (cc->cc_json)
			cachecmd_json(json_pack("{s:I, s:I, s:I}", "evicted",
			    (json_int_t)n, "blob_bytes",
			    (json_int_t)st.blob_bytes, "manifest_bytes",
			    (json_int_t)st.manifest_bytes));
		else
			printf("evicted %" PRIu64 " blobs and manifests; %s "
			    "left\n", n, cachecmd_human(st.blob_bytes +
			    st.manifest_bytes, a, sizeof(a)));
		return 0;
	}
	for (i = 0; i < argc; i++) {
		switch ((ce = cache_blob_evict(cc->cc_cache, argv[i]))) {
		case CACHE_OK:
			if (cc->cc_json)
				cachecmd_json(json_pack("{s:s, s:b}", "digest",
				    argv[i], "evicted", 1));
			else
				printf("evicted %s\n", argv[i]);
			break;
		case CACHE_NOTFOUND:
			fprintf(stderr, "pullproxy cache: %s: not in the "
			    "cache\n", argv[i]);
			status = 1;
			break;
		default:
			fprintf(stderr, "pullproxy cache: %s: %s\n", argv[i],
			    ce == CACHE_BUSY ? "in use" :
			    cache_strerror(cc->cc_cache));
			status = 1;
			break;
		}
	}
	return status;
}

static int
cachecmd_purge(struct cachecmd *cc)
{
	if (cache_purge(cc->cc_cache) != CACHE_OK) {
		fprintf(stderr, "pullproxy cache: %s\n",
		    cache_strerror(cc->cc_cache));
		return 1;
	}
	if (cc->cc_json)
		cachecmd_json(json_pack("{s:s, s:b}", "dir", cc->cc_dir,
		    "purged", 1));
	else
		printf("purged %s\n", cc->cc_dir);
	return 0;
}

/* The running server's answer to POST path?query, its body in *body. */
static int
cachecmd_ask(const struct cachecmd *cc, const char *pathq, char **body)
{
	struct timeval tv = { 60, 0 };
	struct sockaddr_un sun;
	char *req = NULL, *buf = NULL, *p, *nb;
	size_t len = 0, cap = 0;
	ssize_t n;
	int fd, status = -1;

	*body = NULL;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if ((size_t)snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/%s",
	    cc->cc_dir, ADMINAPI_SOCKET) >= sizeof(sun.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
		return -1;
	/* A hung server must not hang the command. */
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1 ||
	    asprintf(&req, "POST %s HTTP/1.0\r\nHost: pullproxy\r\n"
	    "Content-Length: 0\r\n\r\n", pathq) == -1) {
		req = NULL;
		goto out;
	}
	if (write(fd, req, strlen(req)) != (ssize_t)strlen(req))
		goto out;
	for (;;) {
		if (len + 4096 + 1 > cap) {
			cap = cap ? cap * 2 : 8192;
			if ((nb = realloc(buf, cap)) == NULL)
				goto out;
			buf = nb;
		}
		if ((n = read(fd, buf + len, cap - len - 1)) <= 0)
			break;
		len += (size_t)n;
	}
	if (n < 0 || buf == NULL)
		goto out;
	buf[len] = '\0';
	if (sscanf(buf, "HTTP/1.%*c %d", &status) != 1 ||
	    (p = strstr(buf, "\r\n\r\n")) == NULL) {
		status = -1;
		errno = EPROTO;
		goto out;
	}
	if ((*body = strdup(p + 4)) == NULL)
		status = -1;
out:
	free(req);
	free(buf);
	close(fd);
	return status;
}

/* evict or purge through the running server; the exit status. */
static int
cachecmd_online(struct cachecmd *cc, const char *cmd, int argc, char **argv,
    const char *to)
{
	json_t *o, *d;
	char *pathq = NULL, *next, *body, *line, *enc, a[32];
	uint64_t target;
	int i, status = 0, http;

	if (strcmp(cmd, "purge") == 0)
		pathq = strdup("/cache/purge");
	else if (to != NULL) {
		if (cachecmd_size(to, &target) == -1)
			return cachecmd_usage_err("--to: expected a size such "
			    "as 512M or 20G, not '%s'", to);
		if (asprintf(&pathq, "/cache/evict?to=%" PRIu64, target) == -1)
			pathq = NULL;
	} else {
		pathq = strdup("/cache/evict?");
		for (i = 0; pathq != NULL && i < argc; i++) {
			enc = evhttp_uriencode(argv[i], -1, 0);
			if (enc == NULL || asprintf(&next, "%s%sdigest=%s",
			    pathq, i > 0 ? "&" : "", enc) == -1)
				next = NULL;
			free(enc);
			free(pathq);
			pathq = next;
		}
	}
	if (pathq == NULL) {
		fprintf(stderr, "pullproxy cache: %s\n", strerror(ENOMEM));
		return 1;
	}
	http = cachecmd_ask(cc, pathq, &body);
	free(pathq);
	if (http == -1) {
		fprintf(stderr, "pullproxy cache: the cache is locked (a "
		    "running server, or another cache command) and %s/%s "
		    "does not answer: %s\n", cc->cc_dir, ADMINAPI_SOCKET,
		    strerror(errno));
		return 1;
	}
	for (line = strtok_r(body, "\n", &next); line != NULL;
	    line = strtok_r(NULL, "\n", &next)) {
		if ((o = json_loads(line, 0, NULL)) == NULL)
			continue;
		d = json_object_get(o, "digest");
		if (json_object_get(o, "error") != NULL) {
			fprintf(stderr, "pullproxy cache: %s%s%s\n", d != NULL ?
			    json_string_value(d) : "", d != NULL ? ": " : "",
			    json_string_value(json_object_get(o, "error")));
			status = 1;
		} else if (cc->cc_json)
			printf("%s\n", line);
		else if (d != NULL)
			printf("evicted %s\n", json_string_value(d));
		else
			printf("%s %" JSON_INTEGER_FORMAT " blobs and manifests"
			    "; %s left (%" JSON_INTEGER_FORMAT " blobs)%s\n",
			    strcmp(cmd, "purge") == 0 ? "purged: evicted" :
			    "evicted", json_integer_value(json_object_get(o,
			    "evicted")), cachecmd_human((uint64_t)(
			    json_integer_value(json_object_get(o, "blob_bytes")) +
			    json_integer_value(json_object_get(o,
			    "manifest_bytes"))), a, sizeof(a)),
			    json_integer_value(json_object_get(o, "blobs")),
			    strcmp(cmd, "purge") == 0 && json_integer_value(
			    json_object_get(o, "blobs")) > 0 ?
			    ", in use by transfers in flight" : "");
		json_decref(o);
	}
	free(body);
	return http == 200 ? status : 1;
}

static int
cachecmd_run(struct cachecmd *cc, const struct config *cfg, int argc,
    char **argv, const char *to)
{
	const char *cmd = argv[0];
	struct cache_opts opts;
	char err[512];
	enum cache_err ce;
	int status, nargs;

	nargs = strcmp(cmd, "verify") == 0 || strcmp(cmd, "evict") == 0;
	if (strcmp(cmd, "stats") != 0 && strcmp(cmd, "ls") != 0 &&
	    strcmp(cmd, "purge") != 0 && !nargs)
		return cachecmd_usage_err("unknown command '%s'", cmd);
	if (!nargs && argc > 1)
		return cachecmd_usage_err("%s takes no arguments", cmd);
	if (to != NULL && strcmp(cmd, "evict") != 0)
		return cachecmd_usage_err("--to is for evict, not %s", cmd);
	if (strcmp(cmd, "evict") == 0 && (to != NULL) == (argc > 1))
		return cachecmd_usage_err("%s needs DIGEST... or --to SIZE",
		    cmd);

	memset(&opts, 0, sizeof(opts));
	opts.dir = cc->cc_dir;
	opts.max_bytes = cfg->cache_max_bytes;
	opts.high_pct = cfg->cache_high_pct;
	opts.low_pct = cfg->cache_low_pct;
	opts.readonly = strcmp(cmd, "evict") != 0 && strcmp(cmd, "purge") != 0;
	if ((ce = cache_open(&cc->cc_cache, &opts, err, sizeof(err))) ==
	    CACHE_BUSY && !opts.readonly)
		return cachecmd_online(cc, cmd, argc - 1, argv + 1, to);
	if (ce != CACHE_OK) {
		fprintf(stderr, "pullproxy cache: %s\n", err);
		return 1;
	}
	if (strcmp(cmd, "stats") == 0)
		status = cachecmd_stats(cc);
	else if (strcmp(cmd, "ls") == 0)
		status = cachecmd_ls(cc);
	else if (strcmp(cmd, "verify") == 0)
		status = cachecmd_verify(cc, argc - 1, argv + 1);
	else if (strcmp(cmd, "evict") == 0)
		status = cachecmd_evict(cc, argc - 1, argv + 1, to);
	else
		status = cachecmd_purge(cc);
	cache_close(cc->cc_cache);
	cc->cc_cache = NULL;
	return status;
}

int
cachecmd_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "cache-dir",	required_argument,	NULL, 'd' },
		{ "config",	required_argument,	NULL, 'c' },
		{ "json",	no_argument,		NULL, 'j' },
		{ "to",		required_argument,	NULL, 't' },
		{ "help",	no_argument,		NULL, 'h' },
		{ NULL,		0,			NULL, 0 },
	};
	const char *dir = NULL, *file = NULL, *to = NULL;
	struct cachecmd cc;
	struct config cfg;
	char err[CONFIG_ERR_MAX];
	int ch, status;

	memset(&cc, 0, sizeof(cc));
	opterr = 0;
	optind = 0;	/* glibc: start over, even after an earlier getopt */
	while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'd':
			dir = optarg;
			break;
		case 'c':
			file = optarg;
			break;
		case 'j':
			cc.cc_json = 1;
			break;
		case 't':
			to = optarg;
			break;
		case 'h':
			cachecmd_usage(stdout);
			return 0;
		case ':':
			return cachecmd_usage_err("%s: needs a value",
			    argv[optind - 1]);
		default:
			return cachecmd_usage_err("%s: unknown option",
			    argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return cachecmd_usage_err("missing COMMAND");

	config_init(&cfg);
	if (file != NULL && config_load_file(&cfg, file, err,
	    sizeof(err)) == -1) {
		fprintf(stderr, "pullproxy cache: %s\n", err);
		config_free(&cfg);
		return 2;
	}
	cc.cc_dir = dir != NULL ? dir : cfg.cache_dir;
	status = cachecmd_run(&cc, &cfg, argc - optind, argv + optind, to);
	config_free(&cfg);
	return status;
}
