/*
 * adminapi: evict and purge on the running server's cache, asked on the
 * admin socket. Each action is logged.
 */
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "adminapi.h"
#include "cache.h"
#include "log.h"

static void
adminapi_line(struct evbuffer *out, json_t *o)
{
	char *s;

	if (o == NULL || (s = json_dumps(o, JSON_COMPACT)) == NULL) {
		json_decref(o);
		return;
	}
	evbuffer_add_printf(out, "%s\n", s);
	free(s);
	json_decref(o);
}

static int
adminapi_evict_digests(struct cache *c, struct evkeyvalq *q,
    struct evbuffer *out)
{
	struct evkeyval *kv;
	enum cache_err ce;
	int n = 0;

	TAILQ_FOREACH(kv, q, next) {
		if (strcmp(kv->key, "digest") != 0)
			continue;
		n++;
		ce = cache_blob_evict(c, kv->value);
		adminapi_line(out, ce == CACHE_OK ? json_pack("{s:s,s:b}",
		    "digest", kv->value, "evicted", 1) : json_pack("{s:s,s:s}",
		    "digest", kv->value, "error", ce == CACHE_NOTFOUND ?
		    "not in the cache" : ce == CACHE_BUSY ? "in use" :
		    cache_strerror(c)));
		log_event(LOG_LEVEL_INFO, "cache evict", json_pack(
		    "{s:s,s:s}", "digest", kv->value, "result", ce == CACHE_OK ?
		    "evicted" : ce == CACHE_NOTFOUND ? "not in the cache" :
		    ce == CACHE_BUSY ? "in use" : cache_strerror(c)));
	}
	return n > 0 ? 200 : 400;
}

/* Down to target bytes, least recently used first, what is not in use. */
static int
adminapi_evict_to(struct cache *c, uint64_t target, const char *what,
    struct evbuffer *out)
{
	struct cache_stats st;
	uint64_t n;

	if (cache_evict_to(c, target, &n) != CACHE_OK ||
	    cache_stats(c, &st) != CACHE_OK) {
		adminapi_line(out, json_pack("{s:s}", "error",
		    cache_strerror(c)));
		return 500;
	}
	adminapi_line(out, json_pack("{s:I,s:I,s:I,s:I,s:I}", "evicted",
	    (json_int_t)n, "blobs", (json_int_t)st.blobs, "manifests",
	    (json_int_t)st.manifests, "blob_bytes", (json_int_t)st.blob_bytes,
	    "manifest_bytes", (json_int_t)st.manifest_bytes));
	log_event(LOG_LEVEL_INFO, what, json_pack("{s:I,s:I,s:I}", "evicted",
	    (json_int_t)n, "blobs_left", (json_int_t)st.blobs, "bytes_left",
	    (json_int_t)(st.blob_bytes + st.manifest_bytes)));
	return 200;
}

int
adminapi_handle(struct cache *c, struct evhttp_request *req, const char *path)
{
	struct evkeyvalq q;
	struct evbuffer *out;
	const char *to, *query;
	unsigned long long target;
	char *end;
	int status;

	TAILQ_INIT(&q);
	query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
	if ((out = evbuffer_new()) == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return 500;
	}
	if (strcmp(path, "/cache/evict") != 0 &&
	    strcmp(path, "/cache/purge") != 0)
		status = 404;
	else if (evhttp_request_get_command(req) != EVHTTP_REQ_POST)
		status = 405;
	else if (query != NULL && evhttp_parse_query_str(query, &q) == -1)
		status = 400;
	else if (c == NULL)
		status = 500;
	else if (strcmp(path, "/cache/purge") == 0)
		status = adminapi_evict_to(c, 0, "cache purge", out);
	else if ((to = evhttp_find_header(&q, "to")) != NULL) {
		errno = 0;
		target = strtoull(to, &end, 10);
		status = *to < '0' || *to > '9' || *end != '\0' ||
		    errno != 0 ? 400 : adminapi_evict_to(c, target,
		    "cache evict", out);
	} else
		status = adminapi_evict_digests(c, &q, out);
	evhttp_clear_headers(&q);
	if (status >= 400 && evbuffer_get_length(out) == 0)
		adminapi_line(out, json_pack("{s:s}", "error", status == 404 ?
		    "no such admin path" : status == 405 ? "use POST" :
		    status == 400 ? "malformed request" : "no cache"));
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "application/x-ndjson");
	evhttp_send_reply(req, status, status == 200 ? "OK" : "Error", out);
	evbuffer_free(out);
	return status;
}
