/*
 * storage: the blob storage the registry redirects to. Only a URL the
 * registry signed, before its expiry, opens a blob; like Azure Storage,
 * a request that also carries an Authorization header is refused, which
 * is what a client that forwards the registry token across the 307 gets.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "fakeacr.h"

#define STORAGE_PREFIX		"/fakeacr/"
#define STORAGE_AUTH_MSG	"Server failed to authenticate the request. " \
				"Make sure the value of Authorization header " \
				"is formed correctly including the signature."

static void
storage_xml(struct fa_req *fr, int status, const char *code, const char *msg,
    const char *detail)
{
	char		 rid[37], now[64];
	struct tm	 tm;
	time_t		 t = time(NULL);

	auth_random_hex(rid, sizeof(rid));
	strftime(now, sizeof(now), "%Y-%m-%dT%H:%M:%S.0000000Z",
	    gmtime_r(&t, &tm));
	/* Azure Storage puts a UTF-8 byte order mark before its XML. */
	evbuffer_add_printf(fr->fr_body, "\xef\xbb\xbf<?xml version=\"1.0\" "
	    "encoding=\"utf-8\"?><Error><Code>%s</Code><Message>%s\n"
	    "RequestId:%s\nTime:%s</Message>", code, msg, rid, now);
	if (detail != NULL)
		evbuffer_add_printf(fr->fr_body, "<AuthenticationErrorDetail>"
		    "%s</AuthenticationErrorDetail>", detail);
	evbuffer_add_printf(fr->fr_body, "</Error>");
	req_set_header(fr, "Content-Type", "application/xml");
	req_set_header(fr, "x-ms-request-id", rid);
	req_set_header(fr, "x-ms-error-code", code);
	req_send(fr, status);
}

void
storage_error(struct fa_req *fr, int status, const char *code,
    const char *msg)
{
	storage_xml(fr, status, code, msg, NULL);
}

static void
storage_time(char *buf, size_t len, time_t t)
{
	struct tm	tm;

	strftime(buf, len, "%a, %d %b %Y %H:%M:%S GMT", gmtime_r(&t, &tm));
}

/* 1 if sig and se verify and se is ahead; else answered with a 403. */
static int
storage_signed(struct fa_req *fr, const char *path)
{
	struct evkeyvalq	 q;
	const char		*se, *sig;
	char			 exp[64], now[64], detail[256];
	struct tm		 tm;
	time_t			 t = time(NULL), e = 0;
	int			 ok = 0;

	req_params(fr, 0, &q);
	se = evhttp_find_header(&q, "se");
	sig = evhttp_find_header(&q, "sig");
	memset(&tm, 0, sizeof(tm));
	if (se != NULL && sig != NULL) {
		if (!auth_sas_check(path, se, sig))
			storage_xml(fr, 403, "AuthenticationFailed",
			    STORAGE_AUTH_MSG, "Signature did not match.");
		else if (strptime(se, "%Y-%m-%dT%H:%M:%SZ", &tm) == NULL ||
		    (e = timegm(&tm)) <= t) {
			storage_time(exp, sizeof(exp), e);
			storage_time(now, sizeof(now), t);
			snprintf(detail, sizeof(detail), "Signed expiry time "
			    "[%s] has to be after the current time [%s]",
			    exp, now);
			storage_xml(fr, 403, "AuthenticationFailed",
			    STORAGE_AUTH_MSG, detail);
		} else
			ok = 1;
	} else
		storage_xml(fr, 403, "AuthenticationFailed", STORAGE_AUTH_MSG,
		    "Signature fields not well formed.");
	evhttp_clear_headers(&q);
	return ok;
}

/*
 * "bytes=a-b", "bytes=a-" or "bytes=-n" into [*off, *off + *len);
 * 0 for no usable range (whole blob), 1 for a range, -1 unsatisfiable.
 */
static int
storage_range(const char *h, long long size, long long *off, long long *len)
{
	long long	a, b;
	char		*end;

	if (h == NULL || strncmp(h, "bytes=", 6) != 0 || strchr(h, ',') != NULL)
		return 0;
	h += 6;
	if (*h == '-') {
		b = strtoll(h + 1, &end, 10);
		if (*end != '\0' || b <= 0)
			return b == 0 && *end == '\0' ? -1 : 0;
		*off = b < size ? size - b : 0;
		*len = size - *off;
		return size == 0 ? -1 : 1;
	}
	a = strtoll(h, &end, 10);
	if (end == h || *end != '-' || a < 0)
		return 0;
	h = end + 1;
	b = *h == '\0' ? a : strtoll(h, &end, 10);
	if ((*h != '\0' && *end != '\0') || b < a)
		return 0;
	if (a >= size)
		return -1;
	if (*h == '\0')
		b = size - 1;
	*off = a;
	*len = (b < size ? b + 1 : size) - a;
	return 1;
}

void
storage_handle(struct fa_req *fr)
{
	struct evbuffer_file_segment	*seg;
	const char			*path, *range;
	char				*repo = NULL, *digest = NULL, buf[96];
	long long			 size, off = 0, len;
	int				 fd, r;

	path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(fr->fr_req));
	if (path != NULL && strncmp(path, STORAGE_PREFIX,
	    strlen(STORAGE_PREFIX)) == 0 && (repo = strdup(path +
	    strlen(STORAGE_PREFIX))) != NULL &&
	    (digest = strrchr(repo, '/')) != NULL)
		*digest++ = '\0';
	r = req_route(fr, "storage", digest ? repo : NULL, digest);
	free(repo);
	if (r || !req_method(fr, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD))
		return;
	if (fr->fr_repo == NULL || fr->fr_ref == NULL ||
	    !store_valid_name(fr->fr_repo) || !store_valid_digest(fr->fr_ref)) {
		storage_error(fr, 404, "ResourceNotFound",
		    "The specified resource does not exist.");
		return;
	}
	if (req_header(fr, "Authorization") != NULL) {
		storage_error(fr, 400, "InvalidAuthenticationInfo",
		    "Authentication information is not given in the correct "
		    "format. Check the value of Authorization header.");
		return;
	}
	if (!storage_signed(fr, path))
		return;
	if ((fd = store_blob_open(fr->fr_repo, fr->fr_ref, &size)) == -1) {
		storage_error(fr, 404, "BlobNotFound",
		    "The specified blob does not exist.");
		return;
	}
	len = size;
	if ((range = req_header(fr, "x-ms-range")) == NULL)
		range = req_header(fr, "Range");
	if ((r = storage_range(range, size, &off, &len)) == -1) {
		close(fd);
		snprintf(buf, sizeof(buf), "bytes */%lld", size);
		req_set_header(fr, "Content-Range", buf);
		storage_error(fr, 416, "InvalidRange", "The range specified "
		    "is invalid for the current size of the resource.");
		return;
	}
	if (r == 1) {
		snprintf(buf, sizeof(buf), "bytes %lld-%lld/%lld", off,
		    off + len - 1, size);
		req_set_header(fr, "Content-Range", buf);
	}
	/* Mapped, not sendfile: a fault may need to cut or flip the bytes. */
	if (len > 0 && (seg = evbuffer_file_segment_new(fd, off, len,
	    EVBUF_FS_CLOSE_ON_FREE | EVBUF_FS_DISABLE_SENDFILE)) != NULL) {
		evbuffer_add_file_segment(fr->fr_body, seg, 0, len);
		evbuffer_file_segment_free(seg);
	} else
		close(fd);
	snprintf(buf, sizeof(buf), "\"0x8D%.13s\"", fr->fr_ref + 7);
	req_set_header(fr, "ETag", buf);
	req_set_header(fr, "Content-Type", "application/octet-stream");
	req_set_header(fr, "Accept-Ranges", "bytes");
	req_set_header(fr, "x-ms-blob-type", "BlockBlob");
	req_set_header(fr, "x-ms-version", "2021-08-06");
	auth_random_hex(buf, 37);
	req_set_header(fr, "x-ms-request-id", buf);
	req_send(fr, r == 1 ? 206 : 200);
}
