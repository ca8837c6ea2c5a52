/*
 * prefetch: a blocking libcurl client of the local server, one request at
 * a time (the server fans out; a prefetch is not in a hurry). Progress
 * goes to stderr: a line that redraws on a terminal, a line per image
 * otherwise.
 */
#include <sys/time.h>

#include <curl/curl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "config.h"
#include "platform.h"
#include "prefetch.h"

#define PREFETCH_MANIFEST_MAX	(4 * 1024 * 1024)
#define PREFETCH_ACCEPT \
	"Accept: application/vnd.oci.image.index.v1+json, " \
	"application/vnd.docker.distribution.manifest.list.v2+json, " \
	"application/vnd.oci.image.manifest.v1+json, " \
	"application/vnd.docker.distribution.manifest.v2+json"

struct prefetch {
	CURL			*p_curl;
	char			 p_base[300];	/* http://host:port */
	struct curl_slist	*p_headers;
	struct platform		 p_platform;
	int			 p_tty;
	int			 p_quiet;
	/* The transfer under way. */
	char			*p_body;	/* manifests and errors */
	size_t			 p_len;
	int			 p_keep;	/* keep the body (else count) */
	uint64_t		 p_got;
	/* The image's progress. */
	const char		*p_image;
	size_t			 p_blob, p_nblobs;
	uint64_t		 p_done, p_total;
};

static void
prefetch_usage(FILE *f)
{
	fprintf(f,
	    "usage: pullproxy prefetch [--config FILE] [--listen HOST:PORT]\n"
	    "                          [--platform OS/ARCH[/VARIANT]] [--quiet]"
	    " IMAGE...\n"
	    "\n"
	    "Pull each IMAGE (registry/repository[:tag|@digest], the registry"
	    " as in\n"
	    "[registry NAME]) into the cache of the pullproxy serving on"
	    " --listen\n"
	    "(default: the config's listen): its manifest for this node's"
	    " platform\n"
	    "(or --platform, or [server] platform) and every layer. Exit 0"
	    " when\n"
	    "every image is cached, 1 when one failed, 2 for a usage error.\n");
}

static size_t
prefetch_write(char *buf, size_t size, size_t n, void *arg)
{
	struct prefetch *p = arg;
	size_t len = size * n;
	char *nb;

	p->p_got += len;
	if (!p->p_keep)
		return len;
	if (p->p_len + len > PREFETCH_MANIFEST_MAX)
		return 0;
	if ((nb = realloc(p->p_body, p->p_len + len + 1)) == NULL)
		return 0;
	p->p_body = nb;
	memcpy(p->p_body + p->p_len, buf, len);
	p->p_len += len;
	p->p_body[p->p_len] = '\0';
	return len;
}

static void
prefetch_mib(uint64_t n, char *buf, size_t len)
{
	snprintf(buf, len, "%.1f MiB", (double)n / (1024 * 1024));
}

static int
prefetch_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow,
    curl_off_t ultotal, curl_off_t ulnow)
{
	struct prefetch *p = arg;
	char a[32], b[32];

	(void)dltotal;
	(void)ultotal;
	(void)ulnow;
	if (!p->p_tty || p->p_quiet || p->p_keep)
		return 0;
	prefetch_mib(p->p_done + (uint64_t)dlnow, a, sizeof(a));
	prefetch_mib(p->p_total, b, sizeof(b));
	fprintf(stderr, "\r%s: blob %zu/%zu, %s of %s   ", p->p_image,
	    p->p_blob, p->p_nblobs, a, b);
	return 0;
}

/* The OCI error body's first code and message, for one line. */
static void
prefetch_oci_error(const struct prefetch *p, char *buf, size_t len)
{
	json_t *doc, *e;

	buf[0] = '\0';
	if (p->p_body == NULL ||
	    (doc = json_loadb(p->p_body, p->p_len, 0, NULL)) == NULL)
		return;
	e = json_array_get(json_object_get(doc, "errors"), 0);
	if (json_is_string(json_object_get(e, "code")))
		snprintf(buf, len, ": %s: %s", json_string_value(
		    json_object_get(e, "code")), json_string_value(
		    json_object_get(e, "message")) != NULL ? json_string_value(
		    json_object_get(e, "message")) : "");
	json_decref(doc);
}

/*
 * GET /v2/repo/kind/ref?ns=registry; 0 on a 200 (the body kept when keep),
 * else -1 with the reason printed.
 */
static int
prefetch_get(struct prefetch *p, const char *registry, const char *repo,
    const char *kind, const char *ref, int keep)
{
	char url[2048], why[512];
	long status = 0;
	CURLcode rc;

	free(p->p_body);
	p->p_body = NULL;
	p->p_len = 0;
	p->p_got = 0;
	p->p_keep = 1;	/* an error's body is kept, whatever the kind */
	snprintf(url, sizeof(url), "%s/v2/%s/%s/%s?ns=%s", p->p_base, repo,
	    kind, ref, registry);
	curl_easy_setopt(p->p_curl, CURLOPT_URL, url);
	p->p_keep = keep;
	rc = curl_easy_perform(p->p_curl);
	curl_easy_getinfo(p->p_curl, CURLINFO_RESPONSE_CODE, &status);
	if (rc == CURLE_OK && status == 200)
		return 0;
	if (p->p_tty && !p->p_quiet)
		fputc('\n', stderr);
	if (rc != CURLE_OK)
		snprintf(why, sizeof(why), ": %s", curl_easy_strerror(rc));
	else
		prefetch_oci_error(p, why, sizeof(why));
	fprintf(stderr, "pullproxy prefetch: %s: GET %s: %ld%s\n", p->p_image,
	    url + strlen(p->p_base), status, why);
	return -1;
}

/* Splits registry/repository[:tag|@digest]; -1 when malformed. */
static int
prefetch_parse(char *image, char **registry, char **repo, char **ref)
{
	char *slash, *at, *colon;

	if ((slash = strchr(image, '/')) == NULL || slash == image ||
	    slash[1] == '\0')
		return -1;
	*slash = '\0';
	*registry = image;
	*repo = slash + 1;
	if ((at = strchr(*repo, '@')) != NULL) {
		*at = '\0';
		*ref = at + 1;
	} else if ((colon = strrchr(*repo, ':')) != NULL &&
	    strchr(colon, '/') == NULL) {
		*colon = '\0';
		*ref = colon + 1;
	} else
		*ref = "latest";
	return **repo != '\0' && **ref != '\0' ? 0 : -1;
}

static int
prefetch_image(struct prefetch *p, const char *arg)
{
	char *image, *registry, *repo, *ref, digest[160], have[256], a[32];
	json_t *doc = NULL, *layers, *e;
	const char *d, *blobs[1 + 512];
	struct timeval t0, t1;
	size_t i, n = 0;
	int rc = -1;

	p->p_image = arg;
	gettimeofday(&t0, NULL);
	if ((image = strdup(arg)) == NULL)
		return -1;
	if (prefetch_parse(image, &registry, &repo, &ref) == -1) {
		fprintf(stderr, "pullproxy prefetch: %s: expected "
		    "registry/repository[:tag|@digest]\n", arg);
		goto out;
	}
	if (prefetch_get(p, registry, repo, "manifests", ref, 1) == -1)
		goto out;
	switch (platform_index_pick(p->p_body, p->p_len, &p->p_platform,
	    digest, sizeof(digest), have, sizeof(have))) {
	case 0:
		platform_format(&p->p_platform, a, sizeof(a));
		fprintf(stderr, "pullproxy prefetch: %s: no manifest for %s "
		    "(the image has %s)\n", arg, a, have);
		goto out;
	case 1:
		if (prefetch_get(p, registry, repo, "manifests", digest,
		    1) == -1)
			goto out;
		break;
	default:
		snprintf(digest, sizeof(digest), "%s", ref);
		break;
	}
	if ((doc = json_loadb(p->p_body, p->p_len, 0, NULL)) == NULL ||
	    (d = json_string_value(json_object_get(json_object_get(doc,
	    "config"), "digest"))) == NULL) {
		fprintf(stderr, "pullproxy prefetch: %s: the manifest names "
		    "no config\n", arg);
		goto out;
	}
	blobs[n++] = d;
	p->p_total = (uint64_t)json_integer_value(json_object_get(
	    json_object_get(doc, "config"), "size"));
	layers = json_object_get(doc, "layers");
	json_array_foreach(layers, i, e) {
		if ((d = json_string_value(json_object_get(e, "digest"))) ==
		    NULL || n == sizeof(blobs) / sizeof(blobs[0]))
			continue;
		blobs[n++] = d;
		p->p_total += (uint64_t)json_integer_value(json_object_get(e,
		    "size"));
	}
	p->p_nblobs = n;
	p->p_done = 0;
	for (i = 0; i < n; i++) {
		p->p_blob = i + 1;
		if (prefetch_get(p, registry, repo, "blobs", blobs[i], 0) == -1)
			goto out;
		p->p_done += p->p_got;
	}
	gettimeofday(&t1, NULL);
	prefetch_mib(p->p_done, a, sizeof(a));
	if (!p->p_quiet)
		fprintf(stderr, "%s%s: %zu blobs, %s, manifest %s, %.1f s\n",
		    p->p_tty ? "\r" : "", arg, n, a, digest,
		    (double)(t1.tv_sec - t0.tv_sec) +
		    (double)(t1.tv_usec - t0.tv_usec) / 1e6);
	rc = 0;
out:
	json_decref(doc);
	free(image);
	return rc;
}

/* Where the server listens, as a URL; -1 when it speaks TLS. */
static int
prefetch_base(struct prefetch *p, const struct config *cfg)
{
	const char *host = cfg->listen_host;

	if (cfg->tls_cert_file != NULL) {
		fprintf(stderr, "pullproxy prefetch: the listener speaks TLS "
		    "(tls_cert_file): prefetch talks plain HTTP to a loopback "
		    "listener only\n");
		return -1;
	}
	/* A wildcard listener answers on loopback too. */
	if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0)
		host = "127.0.0.1";
	snprintf(p->p_base, sizeof(p->p_base), strchr(host, ':') != NULL ?
	    "http://[%s]:%d" : "http://%s:%d", host, cfg->listen_port);
	return 0;
}

/* The client token, when the server asks for one. */
static int
prefetch_token(struct prefetch *p, const struct config *cfg)
{
	char err[512], *token, *h;

	if (cfg->client_token_file == NULL)
		return 0;
	if ((token = auth_read_secret(cfg->client_token_file, err,
	    sizeof(err))) == NULL) {
		fprintf(stderr, "pullproxy prefetch: client_token_file: %s\n",
		    err);
		return -1;
	}
	if (asprintf(&h, "Authorization: Bearer %s", token) == -1)
		h = NULL;
	auth_secret_free(token);
	if (h == NULL)
		return -1;
	p->p_headers = curl_slist_append(p->p_headers, h);
	explicit_bzero(h, strlen(h));
	free(h);
	return 0;
}

int
prefetch_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config",	required_argument,	NULL, 'c' },
		{ "listen",	required_argument,	NULL, 'l' },
		{ "platform",	required_argument,	NULL, 'p' },
		{ "quiet",	no_argument,		NULL, 'q' },
		{ "help",	no_argument,		NULL, 'h' },
		{ NULL,		0,			NULL, 0 },
	};
	const char *file = NULL, *listen = NULL, *platform = NULL;
	char err[CONFIG_ERR_MAX], *largv[3];
	struct prefetch p;
	struct config cfg;
	int ch, i, status = 2;

	memset(&p, 0, sizeof(p));
	opterr = 0;
	optind = 0;
	while ((ch = getopt_long(argc, argv, ":hq", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': file = optarg; break;
		case 'l': listen = optarg; break;
		case 'p': platform = optarg; break;
		case 'q': p.p_quiet = 1; break;
		case 'h':
			prefetch_usage(stdout);
			return 0;
		default:
			fprintf(stderr, "pullproxy prefetch: %s: %s (try "
			    "--help)\n", argv[optind - 1], ch == ':' ?
			    "needs a value" : "unknown option");
			return 2;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "pullproxy prefetch: no IMAGE (try --help)\n");
		return 2;
	}
	config_init(&cfg);
	if (file != NULL && config_load_file(&cfg, file, err,
	    sizeof(err)) == -1) {
		fprintf(stderr, "pullproxy prefetch: %s\n", err);
		goto out;
	}
	/* --listen as serve reads it. */
	largv[0] = "serve";
	largv[1] = listen != NULL ? "--listen" : NULL;
	largv[2] = (char *)listen;
	if (listen != NULL && config_parse_args(&cfg, 3, largv, err,
	    sizeof(err)) == -1) {
		fprintf(stderr, "pullproxy prefetch: %s\n", err);
		goto out;
	}
	if (platform != NULL && platform_parse(platform, &p.p_platform) == -1) {
		fprintf(stderr, "pullproxy prefetch: --platform: expected "
		    "os/arch[/variant], not '%s'\n", platform);
		goto out;
	}
	if (platform == NULL)
		platform_configured(cfg.platform, &p.p_platform);
	status = 1;
	if (prefetch_base(&p, &cfg) == -1 || prefetch_token(&p, &cfg) == -1 ||
	    curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		goto out;
	p.p_tty = isatty(STDERR_FILENO);
	p.p_headers = curl_slist_append(p.p_headers, PREFETCH_ACCEPT);
	if ((p.p_curl = curl_easy_init()) == NULL || p.p_headers == NULL)
		goto cleanup;
	curl_easy_setopt(p.p_curl, CURLOPT_HTTPHEADER, p.p_headers);
	curl_easy_setopt(p.p_curl, CURLOPT_WRITEFUNCTION, prefetch_write);
	curl_easy_setopt(p.p_curl, CURLOPT_WRITEDATA, &p);
	curl_easy_setopt(p.p_curl, CURLOPT_XFERINFOFUNCTION, prefetch_progress);
	curl_easy_setopt(p.p_curl, CURLOPT_XFERINFODATA, &p);
	curl_easy_setopt(p.p_curl, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(p.p_curl, CURLOPT_CONNECTTIMEOUT, 5L);
	/* The server cuts a stalled upstream; this only bounds a hung one. */
	curl_easy_setopt(p.p_curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(p.p_curl, CURLOPT_LOW_SPEED_TIME, 300L);
	curl_easy_setopt(p.p_curl, CURLOPT_PROTOCOLS_STR, "http");
	status = 0;
	for (i = optind; i < argc; i++)
		if (prefetch_image(&p, argv[i]) == -1)
			status = 1;
cleanup:
	if (p.p_curl != NULL)
		curl_easy_cleanup(p.p_curl);
	curl_slist_free_all(p.p_headers);
	free(p.p_body);
	curl_global_cleanup();
out:
	config_free(&cfg);
	return status;
}
