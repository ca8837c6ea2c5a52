/*
 * check: one registry at a time, one step at a time, stopping at the
 * first failure. Network steps past TCP use the daemon's upstream engine
 * and auth on a private event loop; auth's last failure (auth_last_failure)
 * gives the cause and hint, so they are the daemon's own.
 */
#include <sys/socket.h>
#include <sys/time.h>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <jansson.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "auth.h"
#include "check.h"
#include "classify.h"
#include "config.h"
#include "log.h"
#include "oci.h"
#include "platform.h"
#include "reply.h"
#include "upstream.h"

#define CHECK_BODY_MAX	(4 * 1024 * 1024)
#define CHECK_ACCEPT	"application/vnd.oci.image.index.v1+json, " \
	"application/vnd.docker.distribution.manifest.list.v2+json, " \
	"application/vnd.oci.image.manifest.v1+json, " \
	"application/vnd.docker.distribution.manifest.v2+json"

enum check_outcome { CHECK_PASS, CHECK_FAIL, CHECK_SKIP };

struct check {
	struct config		*cfg;
	const struct config_registry *reg;
	const char		*repo;		/* NULL: no image */
	const char		*ref;
	int			 json;
	int			 failed;	/* a step of this registry */
	int			 nfailed;	/* steps, all registries */
	json_t			*steps;		/* --json */
	/* The engine, made for the network steps past TCP. */
	struct event_base	*base;
	struct upstream		*up;
	struct auth		*auth;
};

/* One transfer's answer, collected. */
struct check_resp {
	struct check		*c;
	int			 done;
	long			 status;
	struct upstream_result	 res;
	char			 error[CURL_ERROR_SIZE];
	char			 type[128];
	char			 digest[160];
	char			 challenge[512];
	struct evbuffer		*body;
};

static void
check_step(struct check *c, const char *name, enum check_outcome o,
    const char *detail, const char *cause, const char *hint)
{
	static const char *words[] = { "ok", "FAIL", "skip" };

	if (o == CHECK_FAIL) {
		c->failed = 1;
		c->nfailed++;
	}
	if (c->json) {
		json_array_append_new(c->steps, json_pack("{s:s,s:s,s:s,s:s,"
		    "s:s*,s:s*}", "registry", c->reg != NULL ? c->reg->name :
		    "", "step", name, "result", o == CHECK_PASS ? "pass" :
		    o == CHECK_FAIL ? "fail" : "skip", "detail", detail,
		    "cause", cause, "hint", hint));
		return;
	}
	printf("  %-5s %-9s %s\n", words[o], name, detail);
	if (cause != NULL)
		printf("        cause: %s\n", cause);
	if (hint != NULL)
		printf("        hint:  %s\n", hint);
}

/* A failure classify.h understands: its cause and hint go with it. */
static void
check_fail(struct check *c, const char *name, const char *detail,
    const struct classify_input *in)
{
	struct classify_result r;

	classify(in, &r);
	check_step(c, name, CHECK_FAIL, detail, r.cause != CLASSIFY_NONE ?
	    classify_cause_name(r.cause) : NULL, r.hint);
}

static void
check_fail_cause(struct check *c, const char *name, const char *detail,
    enum classify_cause cause)
{
	check_step(c, name, CHECK_FAIL, detail, classify_cause_name(cause),
	    classify_hint(cause));
}

/* ------------------------------------------------------------ the engine */

static void
check_on_headers(struct upstream_xfer *x, void *arg)
{
	struct check_resp *r = arg;
	const char *v;

	r->status = upstream_xfer_status(x);
	if ((v = upstream_xfer_header(x, "Content-Type")) != NULL)
		snprintf(r->type, sizeof(r->type), "%s", v);
	if ((v = upstream_xfer_header(x, "Docker-Content-Digest")) != NULL)
		snprintf(r->digest, sizeof(r->digest), "%s", v);
	if ((v = upstream_xfer_header(x, "WWW-Authenticate")) != NULL)
		snprintf(r->challenge, sizeof(r->challenge), "%s", v);
}

static void
check_on_data(struct upstream_xfer *x, const char *buf, size_t len,
    void *arg)
{
	struct check_resp *r = arg;

	(void)x;
	if (evbuffer_get_length(r->body) + len <= CHECK_BODY_MAX)
		evbuffer_add(r->body, buf, len);
}

static void
check_on_done(struct upstream_xfer *x, const struct upstream_result *res,
    void *arg)
{
	struct check_resp *r = arg;

	(void)x;
	r->res = *res;
	snprintf(r->error, sizeof(r->error), "%s", res->error);
	r->res.error = r->error;
	r->status = res->status;
	r->done = 1;
	event_base_loopbreak(r->c->base);
}

/*
 * GET (or HEAD) url, of range when not NULL, and wait for the answer;
 * with_auth: as a pull would.
 */
static int
check_fetch(struct check *c, const char *url, int head, int with_auth,
    const char *range, struct check_resp *r)
{
	static const struct upstream_cbs cbs = { check_on_headers,
	    check_on_data, check_on_done };
	struct upstream_req req;
	char scope[AUTH_PARAM_MAX];

	memset(r, 0, sizeof(*r));
	r->c = c;
	if ((r->body = evbuffer_new()) == NULL)
		return -1;
	memset(&req, 0, sizeof(req));
	req.url = url;
	req.head = head;
	req.range = range;
	req.accept = CHECK_ACCEPT;
	if (with_auth) {
		req.auth = auth_upstream(c->auth);
		auth_scope_name(c->repo, scope, sizeof(scope));
		req.scope = scope;
		auth_forget_failure(c->auth);
	}
	req.ca_file = c->reg->ca_file;
	req.tls_verify = c->reg->tls_verify;
	req.connect_timeout_ms = c->cfg->connect_timeout_ms;
	req.stall_timeout_s = c->cfg->stall_timeout_s;
	if (upstream_xfer_start(c->up, &req, &cbs, r) == NULL) {
		evbuffer_free(r->body);
		return -1;
	}
	while (!r->done)
		event_base_loop(c->base, EVLOOP_ONCE);
	return 0;
}

static void
check_resp_free(struct check_resp *r)
{
	if (r->body != NULL)
		evbuffer_free(r->body);
	r->body = NULL;
}

/* A failed answer as classify.h's input; the body's codes are in *doc. */
static void
check_resp_input(const struct check_resp *r, struct classify_input *in,
    json_t **doc)
{
	memset(in, 0, sizeof(*in));
	in->phase = CLASSIFY_PHASE_REQUEST;
	in->status = r->status;
	reply_body_error(evbuffer_pullup(r->body, -1),
	    evbuffer_get_length(r->body), doc, &in->acr_code,
	    &in->acr_message);
	upstream_result_classify(in, &r->res);
}

/* An answer that is not the one wanted: say what came and why. */
static void
check_resp_fail(struct check *c, const char *step, const char *what,
    const struct check_resp *r)
{
	struct classify_input in;
	char detail[1024];
	json_t *doc;

	check_resp_input(r, &in, &doc);
	in.host = c->reg->name;
	if (r->res.curl != CURLE_OK)
		snprintf(detail, sizeof(detail), "%s: %s", what, r->error);
	else
		snprintf(detail, sizeof(detail), "%s: HTTP %ld%s%s%s%.200s",
		    what, r->status, in.acr_code != NULL ? " " : "",
		    in.acr_code != NULL ? in.acr_code : "",
		    in.acr_message != NULL ? ": " : "",
		    in.acr_message != NULL ? in.acr_message : "");
	check_fail(c, step, detail, &in);
	json_decref(doc);
}

/* ------------------------------------------------------------- the steps */

/* host and port of the registry URL. */
static int
check_url_host(const char *url, char *host, size_t hostlen, char *port,
    size_t portlen)
{
	const char *h = strstr(url, "://"), *end, *colon;
	int https = strncmp(url, "https", 5) == 0;

	if (h == NULL)
		return -1;
	h += 3;
	end = h + strcspn(h, "/?#");
	if (*h == '[') {	/* [v6]:port */
		if ((colon = memchr(h, ']', (size_t)(end - h))) == NULL)
			return -1;
		snprintf(host, hostlen, "%.*s", (int)(colon - h - 1), h + 1);
		colon = colon[1] == ':' ? colon + 1 : NULL;
	} else {
		colon = memchr(h, ':', (size_t)(end - h));
		snprintf(host, hostlen, "%.*s", (int)((colon != NULL ? colon :
		    end) - h), h);
	}
	if (colon != NULL)
		snprintf(port, portlen, "%.*s", (int)(end - colon - 1),
		    colon + 1);
	else
		snprintf(port, portlen, "%s", https ? "443" : "80");
	return 0;
}

static int
check_name(struct check *c, const char *host)
{
	if (classify_name_typo(c->reg->name) || classify_name_typo(host)) {
		check_fail_cause(c, "name", classify_name_typo(c->reg->name) ?
		    c->reg->name : host, CLASSIFY_NAME_TYPO);
		return -1;
	}
	check_step(c, "name", CHECK_PASS, c->reg->name, NULL, NULL);
	return 0;
}

static struct addrinfo *
check_dns(struct check *c, const char *host, const char *port)
{
	struct addrinfo hints, *res = NULL, *a;
	char detail[512], ip[INET6_ADDRSTRLEN];
	size_t used;
	int rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	if ((rc = getaddrinfo(host, port, &hints, &res)) != 0) {
		snprintf(detail, sizeof(detail), "%s: %s", host,
		    gai_strerror(rc));
		check_fail_cause(c, "dns", detail, CLASSIFY_DNS_FAILURE);
		return NULL;
	}
	used = (size_t)snprintf(detail, sizeof(detail), "%s ->", host);
	for (a = res; a != NULL && used < sizeof(detail); a = a->ai_next) {
		getnameinfo(a->ai_addr, a->ai_addrlen, ip, sizeof(ip), NULL, 0,
		    NI_NUMERICHOST);
		used += (size_t)snprintf(detail + used, sizeof(detail) - used,
		    " %s", ip);
	}
	check_step(c, "dns", CHECK_PASS, detail, NULL, NULL);
	return res;
}

/* Connect to the first address within the connect timeout. */
static int
check_tcp(struct check *c, const struct addrinfo *a, const char *port)
{
	struct pollfd pfd;
	struct timeval t0;
	socklen_t len = sizeof(int);
	char detail[256], ip[INET6_ADDRSTRLEN];
	int fd, err = 0, rc;

	getnameinfo(a->ai_addr, a->ai_addrlen, ip, sizeof(ip), NULL, 0,
	    NI_NUMERICHOST);
	gettimeofday(&t0, NULL);
	if ((fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK,
	    a->ai_protocol)) == -1) {
		err = errno;
	} else if (connect(fd, a->ai_addr, a->ai_addrlen) == -1) {
		err = errno;
		if (err == EINPROGRESS) {
			pfd.fd = fd;
			pfd.events = POLLOUT;
			rc = poll(&pfd, 1, (int)c->cfg->connect_timeout_ms);
			if (rc == 0)
				err = ETIMEDOUT;
			else if (rc < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR,
			    &err, &len) == -1)
				err = errno;
		}
	}
	if (fd != -1)
		close(fd);
	if (err != 0) {
		snprintf(detail, sizeof(detail), "%s port %s: %s", ip, port,
		    strerror(err));
		check_fail_cause(c, "tcp", detail, err == ETIMEDOUT ?
		    CLASSIFY_CONNECT_TIMEOUT : err == ECONNREFUSED ?
		    CLASSIFY_CONNECTION_REFUSED : CLASSIFY_CONNECTION_RESET);
		return -1;
	}
	snprintf(detail, sizeof(detail), "%s port %s in %ld ms", ip, port,
	    log_ms_since(&t0));
	check_step(c, "tcp", CHECK_PASS, detail, NULL, NULL);
	return 0;
}

/* The handshake alone, with the registry's CA settings. */
static int
check_tls(struct check *c, const char *host)
{
	struct classify_input in;
	char errbuf[CURL_ERROR_SIZE] = "", detail[CURL_ERROR_SIZE + 64];
	CURL *e;
	CURLcode rc;

	if (strncmp(c->reg->url, "https://", 8) != 0) {
		check_step(c, "tls", CHECK_SKIP, "plain http (no TLS)",
		    NULL, NULL);
		return 0;
	}
	if ((e = curl_easy_init()) == NULL)
		return -1;
	curl_easy_setopt(e, CURLOPT_URL, c->reg->url);
	curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->cfg->connect_timeout_ms);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, c->reg->tls_verify ? 1L : 0L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, c->reg->tls_verify ? 2L : 0L);
	if (c->reg->ca_file != NULL)
		curl_easy_setopt(e, CURLOPT_CAINFO, c->reg->ca_file);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	rc = curl_easy_perform(e);
	curl_easy_cleanup(e);
	if (rc != CURLE_OK) {
		memset(&in, 0, sizeof(in));
		in.phase = CLASSIFY_PHASE_TLS;
		in.curl = rc;
		in.connected = 1;
		snprintf(detail, sizeof(detail), "%s: %s", host, errbuf[0] !=
		    '\0' ? errbuf : curl_easy_strerror(rc));
		check_fail(c, "tls", detail, &in);
		return -1;
	}
	check_step(c, "tls", CHECK_PASS, c->reg->tls_verify ?
	    "handshake done, certificate verified" :
	    "handshake done, verification off (tls_verify = false)",
	    NULL, NULL);
	return 0;
}

/* GET /v2/ as a stranger: 200, or 401 with a challenge, is a registry. */
static int
check_base(struct check *c, char *url, size_t urllen)
{
	struct check_resp r;
	char detail[2600];

	snprintf(url, urllen, "%s/v2/", c->reg->url);
	if (check_fetch(c, url, 0, 0, NULL, &r) == -1)
		return -1;
	if (r.res.curl != CURLE_OK ||
	    !(r.status == 200 || (r.status == 401 && r.challenge[0] != '\0'))) {
		check_resp_fail(c, "v2", url, &r);
		check_resp_free(&r);
		return -1;
	}
	if (r.status == 200)
		snprintf(detail, sizeof(detail), "%s: 200, no credentials "
		    "needed", url);
	else
		snprintf(detail, sizeof(detail), "%s: 401, challenge %.500s",
		    url, r.challenge);
	check_step(c, "v2", CHECK_PASS, detail, NULL, NULL);
	check_resp_free(&r);
	return 0;
}

/*
 * The request a pull starts with, sent as the daemon sends it (token
 * fetched on the 401): the identity step passes when no auth failure was
 * logged and the answer is not a 401.
 */
static int
check_identity(struct check *c, const char *url, int head,
    struct check_resp *r)
{
	const char *cause, *hint, *phase, *error;
	const json_t *failure;
	char detail[700], scope[AUTH_PARAM_MAX];

	if (check_fetch(c, url, head, 1, NULL, r) == -1)
		return -1;
	if ((failure = auth_last_failure(c->auth)) != NULL) {
		cause = json_string_value(json_object_get(failure, "cause"));
		hint = json_string_value(json_object_get(failure, "hint"));
		phase = json_string_value(json_object_get(failure, "phase"));
		error = json_string_value(json_object_get(failure, "error"));
		snprintf(detail, sizeof(detail), "%s (%s): %s failed%s%s",
		    config_auth_name(c->reg->auth_kind), c->repo != NULL ?
		    c->repo : "registry", phase != NULL ? phase : "token",
		    error != NULL ? ": " : "", error != NULL ? error : "");
		/* auth's own cause and hint for what failed. */
		check_step(c, "identity", CHECK_FAIL, detail, cause, hint);
		return -1;
	}
	if (r->res.curl == CURLE_OK && r->status == 401) {
		check_resp_fail(c, "identity", "still 401 with a token", r);
		return -1;
	}
	if (c->reg->auth_kind == CONFIG_AUTH_ANONYMOUS) {
		snprintf(detail, sizeof(detail), "%s: no credentials sent; "
		    "challenges followed", config_auth_name(c->reg->auth_kind));
		check_step(c, "identity", CHECK_PASS, detail, NULL, NULL);
		return 0;
	}
	/*
	 * The registry may answer without asking for credentials: then the
	 * identity was never tried (IMDS not even asked), and that is what
	 * is said, not that a token came.
	 */
	auth_scope_name(c->repo, scope, sizeof(scope));
	if (auth_header(c->auth, scope) == NULL) {
		snprintf(detail, sizeof(detail), "%s: not tried: the registry "
		    "answered without asking for credentials (no token was "
		    "needed)", config_auth_name(c->reg->auth_kind));
		check_step(c, "identity", CHECK_SKIP, detail, NULL, NULL);
		return 0;
	}
	snprintf(detail, sizeof(detail), "%s: token obtained",
	    config_auth_name(c->reg->auth_kind));
	check_step(c, "identity", CHECK_PASS, detail, NULL, NULL);
	return 0;
}

/* v as a digest to put in a URL, or NULL: the registry's JSON is input. */
static const char *
check_digest(const json_t *v)
{
	const char *d = json_string_value(v);

	return d != NULL && oci_digest_valid(d, strlen(d)) ? d : NULL;
}

/*
 * The digest of the node's manifest in an index: the first entry that
 * platform_index_match says offers node, asked one entry at a time so
 * that the matching rules stay platform's. NULL when none (free it).
 */
static char *
check_index_pick(const void *body, size_t len, const struct platform *node)
{
	json_t *doc, *list, *e, *one;
	char have[512], *text, *digest = NULL;
	size_t i;

	doc = json_loadb(body, len, 0, NULL);
	list = json_object_get(doc, "manifests");
	json_array_foreach(list, i, e) {
		one = json_pack("{s:[O]}", "manifests", e);
		text = one != NULL ? json_dumps(one, JSON_COMPACT) : NULL;
		json_decref(one);
		if (text != NULL && platform_index_match(text, strlen(text),
		    node, have, sizeof(have)) == 1 &&
		    check_digest(json_object_get(e, "digest")) != NULL)
			digest = strdup(check_digest(json_object_get(e,
			    "digest")));
		free(text);
		if (digest != NULL)
			break;
	}
	json_decref(doc);
	return digest;
}

/*
 * A blob of the image manifest in m, as a pull fetches it: the smallest
 * layer (the config when there is none), its first byte only, through
 * the registry's redirect to its storage (ACR's data endpoint, which a
 * firewall may block while the registry answers).
 */
static void
check_blob(struct check *c, struct check_resp *m)
{
	struct check_resp r;
	char url[2048], detail[2400];
	const char *digest = NULL, *what = "config";
	json_t *doc, *layers, *e;
	json_int_t size, best = -1;
	size_t i;

	doc = json_loadb((const char *)evbuffer_pullup(m->body, -1),
	    evbuffer_get_length(m->body), 0, NULL);
	layers = json_object_get(doc, "layers");
	json_array_foreach(layers, i, e) {
		size = json_integer_value(json_object_get(e, "size"));
		if (check_digest(json_object_get(e, "digest")) != NULL &&
		    (best == -1 || size < best)) {
			best = size;
			digest = check_digest(json_object_get(e, "digest"));
			what = "smallest layer";
		}
	}
	if (digest == NULL)
		digest = check_digest(json_object_get(json_object_get(doc,
		    "config"), "digest"));
	if (digest == NULL) {
		check_step(c, "blob", CHECK_SKIP, "the manifest names no blob",
		    NULL, NULL);
		json_decref(doc);
		return;
	}
	snprintf(url, sizeof(url), "%s/v2/%s/blobs/%s", c->reg->url, c->repo,
	    digest);
	snprintf(detail, sizeof(detail), "%s %s", what, digest);
	json_decref(doc);
	if (check_fetch(c, url, 0, 1, "bytes=0-0", &r) == -1)
		return;
	if (r.res.curl != CURLE_OK || (r.status != 206 && r.status != 200))
		check_resp_fail(c, "blob", detail, &r);
	else {
		snprintf(detail + strlen(detail), sizeof(detail) -
		    strlen(detail), ": %ld, first byte fetched", r.status);
		check_step(c, "blob", CHECK_PASS, detail, NULL, NULL);
	}
	check_resp_free(&r);
}

/*
 * The manifest GET's body: an index, or a manifest whose config says.
 * For an index, the node's manifest is fetched into *m (it replaces the
 * index) so that check_blob can take a blob of it. 0 when the blob step
 * should run.
 */
static int
check_platform(struct check *c, struct check_resp *m)
{
	struct platform node;
	struct check_resp r;
	char have[512], nodes[3 * PLATFORM_PART_MAX], url[2048];
	char detail[1200], *digest;
	const char *cfgdigest;
	json_t *doc;
	int match;

	platform_configured(c->cfg->platform, &node);
	platform_format(&node, nodes, sizeof(nodes));
	match = platform_index_match(evbuffer_pullup(m->body, -1),
	    evbuffer_get_length(m->body), &node, have, sizeof(have));
	if (match == 1) {
		digest = check_index_pick(evbuffer_pullup(m->body, -1),
		    evbuffer_get_length(m->body), &node);
		snprintf(url, sizeof(url), "%s/v2/%s/manifests/%s",
		    c->reg->url, c->repo, digest != NULL ? digest : "");
		if (digest == NULL) {
			check_step(c, "platform", CHECK_FAIL, "the index entry "
			    "for the node has no valid digest", NULL, NULL);
			return -1;
		}
		if (check_fetch(c, url, 0, 1, NULL, &r) == -1) {
			free(digest);
			return -1;
		}
		if (r.res.curl != CURLE_OK || r.status != 200) {
			snprintf(detail, sizeof(detail), "%s manifest %s",
			    nodes, digest);
			free(digest);
			check_resp_fail(c, "platform", detail, &r);
			check_resp_free(&r);
			return -1;
		}
		snprintf(detail, sizeof(detail), "node %s among %s: %s", nodes,
		    have, digest);
		free(digest);
		check_step(c, "platform", CHECK_PASS, detail, NULL, NULL);
		check_resp_free(m);
		*m = r;
		return 0;
	}
	if (match == -1) {
		doc = json_loadb((const char *)evbuffer_pullup(m->body, -1),
		    evbuffer_get_length(m->body), 0, NULL);
		cfgdigest = check_digest(json_object_get(json_object_get(doc,
		    "config"), "digest"));
		snprintf(url, sizeof(url), "%s/v2/%s/blobs/%s", c->reg->url,
		    c->repo, cfgdigest != NULL ? cfgdigest : "");
		json_decref(doc);
		if (cfgdigest == NULL) {
			check_step(c, "platform", CHECK_SKIP, "not an image "
			    "manifest: nothing to compare", NULL,
			    NULL);
			return -1;
		}
		/* Blob GETs are redirected on ACR: the storage hop too. */
		if (check_fetch(c, url, 0, 1, NULL, &r) == -1)
			return -1;
		if (r.res.curl != CURLE_OK || r.status != 200) {
			check_resp_fail(c, "platform", "config blob", &r);
			check_resp_free(&r);
			return -1;
		}
		match = platform_config_match(evbuffer_pullup(r.body, -1),
		    evbuffer_get_length(r.body), &node, have, sizeof(have));
		check_resp_free(&r);
	}
	if (match == 0) {
		snprintf(detail, sizeof(detail), "node %s, image has %s",
		    nodes, have);
		check_fail_cause(c, "platform", detail,
		    CLASSIFY_PLATFORM_MISMATCH);
		return -1;
	}
	if (match == 1) {
		snprintf(detail, sizeof(detail), "node %s among %s", nodes,
		    have);
		check_step(c, "platform", CHECK_PASS, detail, NULL,
		    NULL);
	} else
		check_step(c, "platform", CHECK_SKIP, "no platform in the "
		    "image config", NULL, NULL);
	return 0;
}

static void
check_manifest(struct check *c)
{
	struct check_resp r;
	char url[2048], detail[2400];

	snprintf(url, sizeof(url), "%s/v2/%s/manifests/%s", c->reg->url,
	    c->repo, c->ref);
	if (check_identity(c, url, 1, &r) == -1) {
		check_resp_free(&r);
		return;
	}
	/* A HEAD has no error body: a GET brings the registry's code. */
	if (r.res.curl == CURLE_OK && r.status >= 400) {
		check_resp_free(&r);
		if (check_fetch(c, url, 0, 1, NULL, &r) == -1)
			return;
	}
	if (r.res.curl != CURLE_OK || r.status != 200) {
		check_resp_fail(c, "manifest", url, &r);
		check_resp_free(&r);
		return;
	}
	snprintf(detail, sizeof(detail), "%s:%s -> %s %s", c->repo, c->ref,
	    r.digest[0] != '\0' ? r.digest : "(no digest header)", r.type);
	check_step(c, "manifest", CHECK_PASS, detail, NULL, NULL);
	check_resp_free(&r);
	if (check_fetch(c, url, 0, 1, NULL, &r) == -1)
		return;
	if (r.res.curl != CURLE_OK || r.status != 200)
		check_resp_fail(c, "platform", "manifest GET", &r);
	else if (check_platform(c, &r) == 0)
		check_blob(c, &r);
	check_resp_free(&r);
}

static void
check_registry(struct check *c)
{
	struct addrinfo *ai;
	char host[256], port[16], url[2048], err[CONFIG_ERR_MAX];

	c->failed = 0;
	if (!c->json)
		printf("registry %s (%s, %s)%s%s%s%s\n", c->reg->name,
		    c->reg->url, config_auth_name(c->reg->auth_kind),
		    c->repo != NULL ? ", image " : "", c->repo != NULL ?
		    c->repo : "", c->repo != NULL ? ":" : "",
		    c->repo != NULL ? c->ref : "");
	if (check_url_host(c->reg->url, host, sizeof(host), port,
	    sizeof(port)) == -1 || check_name(c, host) == -1 ||
	    (ai = check_dns(c, host, port)) == NULL)
		return;
	if (check_tcp(c, ai, port) == -1) {
		freeaddrinfo(ai);
		return;
	}
	freeaddrinfo(ai);
	if (check_tls(c, host) == -1)
		return;
	c->base = event_base_new();
	c->up = c->base != NULL ? upstream_new(c->base) : NULL;
	if (c->up == NULL || (c->auth = auth_new(c->base, c->up, NULL,
	    c->cfg, c->reg, err, sizeof(err))) == NULL) {
		check_step(c, "identity", CHECK_FAIL, c->up == NULL ?
		    "out of memory" : err, NULL, NULL);
	} else if (check_base(c, url, sizeof(url)) == 0) {
		if (c->repo != NULL)
			check_manifest(c);
		else {
			struct check_resp r;

			if (check_identity(c, url, 0, &r) == 0 &&
			    (r.res.curl != CURLE_OK || r.status != 200))
				check_resp_fail(c, "v2", "with a token", &r);
			check_resp_free(&r);
		}
	}
	auth_free(c->auth);
	c->auth = NULL;
	upstream_free(c->up);
	c->up = NULL;
	if (c->base != NULL)
		event_base_free(c->base);
	c->base = NULL;
}

/* ---------------------------------------------------------- arguments */

/*
 * IMAGE: [host/]repo[:tag|@digest]. The first part is a host when it has
 * a dot or a colon or is localhost, as in docker and containerd.
 */
static int
check_image(char *image, const char **host, const char **repo,
    const char **ref)
{
	char *slash = strchr(image, '/'), *at, *colon;

	*host = NULL;
	if (slash != NULL && (memchr(image, '.', (size_t)(slash - image)) ||
	    memchr(image, ':', (size_t)(slash - image)) ||
	    strncmp(image, "localhost/", 10) == 0)) {
		*slash = '\0';
		*host = image;
		image = slash + 1;
	}
	*ref = "latest";
	if ((at = strchr(image, '@')) != NULL) {
		*at = '\0';
		*ref = at + 1;
	} else if ((colon = strrchr(image, ':')) != NULL) {
		*colon = '\0';
		*ref = colon + 1;
	}
	*repo = image;
	if (!oci_name_valid(*repo, strlen(*repo)) ||
	    !(oci_tag_valid(*ref, strlen(*ref)) ||
	    oci_digest_valid(*ref, strlen(*ref))))
		return -1;
	return 0;
}

static void
check_usage(FILE *f)
{
	fprintf(f,
	    "usage: pullproxy check [--config FILE] [--registry HOST[=URL]] "
	    "[--json] [IMAGE]\n"
	    "\n"
	    "Can this node pull? For each registry (or the one IMAGE names):\n"
	    "name, DNS, TCP, TLS, /v2/, identity, and with an IMAGE its\n"
	    "manifest, the node's platform and the first byte of a blob\n"
	    "through the registry's storage redirect. Each step says ok, FAIL\n"
	    "(with the cause and hint) or skip; exit 0 only when a pull would\n"
	    "work, 1 when a step failed, 2 for usage and config errors.\n"
	    "\n"
	    "  --config    pullproxy's config (default " CHECK_DEFAULT_CONFIG
	    ",\n"
	    "              unless --registry HOST=URL gives the registries)\n"
	    "  --registry  HOST: check only that registry; HOST=URL: check it\n"
	    "              at URL (as serve's flag)\n"
	    "  --json      one JSON object: the steps and \"ok\"\n");
}

/*
 * Split check's own arguments from the serve flags the config parser
 * takes: "--registry HOST" (no '=') selects, --json, and the IMAGE.
 * Returns 1 for --help, before any config is read.
 */
static int
check_args(int argc, char **argv, char **pass, int *npass,
    const char **select, char **image, int *json, int *has_config)
{
	int i;

	*npass = 0;
	pass[(*npass)++] = argv[0];
	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 ||
		    strncmp(argv[i], "--help=", 7) == 0 ||
		    strcmp(argv[i], "-h") == 0)
			return 1;
		if (strcmp(argv[i], "--json") == 0)
			*json = 1;
		else if (strcmp(argv[i], "--registry") == 0 && i + 1 < argc &&
		    strchr(argv[i + 1], '=') == NULL)
			*select = argv[++i];
		else if (strncmp(argv[i], "--", 2) != 0) {
			if (*image != NULL) {
				fprintf(stderr, "pullproxy check: %s: one "
				    "image at a time\n", argv[i]);
				return -1;
			}
			*image = argv[i];
		} else {
			if (strcmp(argv[i], "--config") == 0 ||
			    strncmp(argv[i], "--config=", 9) == 0 ||
			    strcmp(argv[i], "--registry") == 0 ||
			    strncmp(argv[i], "--registry=", 11) == 0)
				*has_config = 1;
			pass[(*npass)++] = argv[i];
			/* "--flag value": the value goes along. */
			if (strchr(argv[i], '=') == NULL && i + 1 < argc)
				pass[(*npass)++] = argv[++i];
		}
	}
	return 0;
}

static int
check_load(struct config *cfg, int argc, char **argv, int has_config)
{
	char err[CONFIG_ERR_MAX];
	int rc;

	config_init(cfg);
	if (!has_config &&
	    config_load_file(cfg, CHECK_DEFAULT_CONFIG, err, sizeof(err)) == -1) {
		fprintf(stderr, "pullproxy check: %s (give --config FILE)\n",
		    err);
		return -1;
	}
	rc = config_parse_args(cfg, argc, argv, err, sizeof(err));
	if (rc != 0 || config_check(cfg, err, sizeof(err)) == -1) {
		fprintf(stderr, "pullproxy check: %s\n", err);
		return -1;
	}
	return 0;
}

int
check_main(int argc, char **argv)
{
	struct check c;
	struct config cfg;
	json_t *report;
	const char *select = NULL, *host = NULL;
	char **pass, *image = NULL, imgbuf[1024];
	int npass, has_config = 0, rc;
	size_t i;

	memset(&c, 0, sizeof(c));
	if ((pass = calloc((size_t)argc + 1, sizeof(*pass))) == NULL)
		return 2;
	rc = check_args(argc, argv, pass, &npass, &select, &image, &c.json,
	    &has_config);
	if (rc != 0) {
		free(pass);
		if (rc == 1)
			check_usage(stdout);
		return rc == 1 ? 0 : 2;
	}
	rc = check_load(&cfg, npass, pass, has_config);
	free(pass);
	if (rc != 0) {
		config_free(&cfg);
		return 2;
	}
	c.cfg = &cfg;
	if (image != NULL) {
		snprintf(imgbuf, sizeof(imgbuf), "%s", image);
		if (check_image(imgbuf, &host, &c.repo, &c.ref) == -1) {
			fprintf(stderr, "pullproxy check: %s: not an image "
			    "reference ([host/]repo[:tag|@digest])\n", image);
			config_free(&cfg);
			return 2;
		}
		if (host != NULL)
			select = host;
	}
	if (select != NULL && config_registry_find(&cfg, select) == NULL) {
		fprintf(stderr, "pullproxy check: registry %s is not "
		    "configured on this mirror%s\n", select,
		    classify_name_typo(select) ? " (and its name looks like a "
		    "typo of azurecr.io)" : "");
		config_free(&cfg);
		return 1;
	}
	/* Quiet: what matters of the daemon's code comes back through APIs. */
	log_open("/dev/null", LOG_LEVEL_ERROR);
	c.steps = json_array();
	for (i = 0; i < cfg.nregistries; i++) {
		c.reg = &cfg.registries[i];
		if (select != NULL && c.reg != config_registry_find(&cfg,
		    select))
			continue;
		check_registry(&c);
		if (!c.json)
			printf("  => %s\n", c.failed ? "pulls from this "
			    "registry will fail" : c.repo != NULL ?
			    "a pull of this image should work" :
			    "the registry is reachable with this identity "
			    "(name an IMAGE to check a pull)");
	}
	if (c.json) {
		report = json_pack("{s:o,s:b}", "steps", c.steps, "ok",
		    c.nfailed == 0);
		json_dumpf(report, stdout, JSON_INDENT(2));
		printf("\n");
		json_decref(report);
	} else
		json_decref(c.steps);
	log_close();
	config_free(&cfg);
	return c.nfailed == 0 ? 0 : 1;
}
