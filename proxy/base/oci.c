/*
 * oci: request parsing and validation for the distribution-spec pull API.
 * Everything a client sends is checked here before the proxy acts on it.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oci.h"

static int
oci_alnum_lower(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/*
 * One path component of a name: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
 * Returns the number of bytes consumed, or 0 when it does not start one.
 */
static size_t
oci_name_component(const char *s, size_t len)
{
	size_t i = 0;

	while (i < len && oci_alnum_lower(s[i]))
		i++;
	if (i == 0)
		return 0;
	while (i < len && s[i] != '/') {
		if (s[i] == '.')
			i++;
		else if (s[i] == '_')
			i += (i + 1 < len && s[i + 1] == '_') ? 2 : 1;
		else if (s[i] == '-')
			while (i < len && s[i] == '-')
				i++;
		else
			return 0;
		if (i == len || !oci_alnum_lower(s[i]))
			return 0;
		while (i < len && oci_alnum_lower(s[i]))
			i++;
	}
	return i;
}

int
oci_name_valid(const char *name, size_t len)
{
	size_t i = 0, n;

	if (len == 0 || len > OCI_NAME_MAX)
		return 0;
	for (;;) {
		n = oci_name_component(name + i, len - i);
		if (n == 0)
			return 0;
		i += n;
		if (i == len)
			return 1;
		i++;	/* the '/' */
	}
}

static int
oci_tag_char(char c)
{
	return isascii((unsigned char)c) &&
	    (isalnum((unsigned char)c) || c == '_' || c == '.' || c == '-');
}

int
oci_tag_valid(const char *tag, size_t len)
{
	size_t i;

	if (len == 0 || len > 128 || tag[0] == '.' || tag[0] == '-')
		return 0;
	for (i = 0; i < len; i++)
		if (!oci_tag_char(tag[i]))
			return 0;
	return 1;
}

/*
 * Only the registered algorithms: anything else could not be verified, so a
 * mirror has no business serving it.
 */
int
oci_digest_valid(const char *digest, size_t len)
{
	static const struct { const char *alg; size_t hexlen; } algs[] = {
		{ "sha256:", 64 }, { "sha512:", 128 },
	};
	size_t i, j, alen;

	for (i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
		alen = strlen(algs[i].alg);
		if (len != alen + algs[i].hexlen ||
		    strncmp(digest, algs[i].alg, alen) != 0)
			continue;
		for (j = alen; j < len; j++)
			if (!((digest[j] >= '0' && digest[j] <= '9') ||
			    (digest[j] >= 'a' && digest[j] <= 'f')))
				return 0;
		return 1;
	}
	return 0;
}

static int
oci_copy(char *dst, size_t dstlen, const char *src, size_t len)
{
	if (len >= dstlen)
		return -1;
	memcpy(dst, src, len);
	dst[len] = '\0';
	return 0;
}

enum oci_err
oci_route_parse(const char *path, struct oci_route *route)
{
	static const char tags_suffix[] = "/tags/list";
	size_t len, slen = sizeof(tags_suffix) - 1, namelen;
	const char *rest, *refslash, *kindslash, *ref;

	memset(route, 0, sizeof(*route));
	route->tags_n = -1;
	if (strcmp(path, "/v2") == 0 || strcmp(path, "/v2/") == 0) {
		route->kind = OCI_ROUTE_BASE;
		return OCI_OK;
	}
	if (strncmp(path, "/v2/", 4) != 0)
		return OCI_ERR_NOT_FOUND;
	rest = path + 4;
	len = strlen(rest);

	if (len > slen && strcmp(rest + len - slen, tags_suffix) == 0) {
		namelen = len - slen;
		if (!oci_name_valid(rest, namelen))
			return OCI_ERR_NAME_INVALID;
		oci_copy(route->name, sizeof(route->name), rest, namelen);
		route->kind = OCI_ROUTE_TAGS;
		return OCI_OK;
	}

	/* <name>/(manifests|blobs)/<reference>: the kind is the next-to-last
	 * component, so names may themselves contain "blobs" or "manifests". */
	if ((refslash = strrchr(rest, '/')) == NULL || refslash == rest)
		return OCI_ERR_NOT_FOUND;
	for (kindslash = refslash - 1; kindslash > rest && *kindslash != '/';
	    kindslash--)
		;
	if (*kindslash != '/')
		return OCI_ERR_NOT_FOUND;
	ref = refslash + 1;
	if ((size_t)(refslash - kindslash) == sizeof("/manifests") - 1 &&
	    strncmp(kindslash, "/manifests", refslash - kindslash) == 0)
		route->kind = OCI_ROUTE_MANIFEST;
	else if ((size_t)(refslash - kindslash) == sizeof("/blobs") - 1 &&
	    strncmp(kindslash, "/blobs", refslash - kindslash) == 0)
		route->kind = OCI_ROUTE_BLOB;
	else
		return OCI_ERR_NOT_FOUND;

	namelen = (size_t)(kindslash - rest);
	if (!oci_name_valid(rest, namelen)) {
		route->kind = OCI_ROUTE_NONE;
		return OCI_ERR_NAME_INVALID;
	}
	oci_copy(route->name, sizeof(route->name), rest, namelen);

	len = strlen(ref);
	if (route->kind == OCI_ROUTE_BLOB || strchr(ref, ':') != NULL) {
		if (!oci_digest_valid(ref, len)) {
			route->kind = OCI_ROUTE_NONE;
			return OCI_ERR_DIGEST_INVALID;
		}
		route->by_digest = 1;
	} else if (!oci_tag_valid(ref, len)) {
		route->kind = OCI_ROUTE_NONE;
		return OCI_ERR_MANIFEST_INVALID;
	}
	oci_copy(route->reference, sizeof(route->reference), ref, len);
	return OCI_OK;
}

static int
oci_hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (char)tolower((unsigned char)c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Percent-decode src[0..len) into out; -1 on bad escapes or overflow. */
static int
oci_unescape(const char *src, size_t len, char *out, size_t outlen)
{
	size_t i, o = 0;
	int hi, lo;

	for (i = 0; i < len; i++) {
		if (o + 1 >= outlen)
			return -1;
		if (src[i] != '%') {
			out[o++] = src[i];
			continue;
		}
		if (i + 2 >= len)
			return -1;
		if ((hi = oci_hexval(src[i + 1])) < 0 ||
		    (lo = oci_hexval(src[i + 2])) < 0)
			return -1;
		out[o++] = (char)(hi << 4 | lo);
		i += 2;
	}
	out[o] = '\0';
	return 0;
}

int
oci_host_valid(const char *s)
{
	const char *p = s, *port = NULL;

	if (*p == '[') {
		for (p++; *p != ']'; p++)
			if (!(isxdigit((unsigned char)*p) || *p == ':' ||
			    *p == '.'))
				return 0;
		if (p == s + 1)
			return 0;
		p++;
		if (*p != '\0' && *p != ':')
			return 0;
	} else {
		for (; *p != '\0' && *p != ':'; p++)
			if (!(isascii((unsigned char)*p) &&
			    (isalnum((unsigned char)*p) || *p == '.' ||
			    *p == '-')))
				return 0;
		if (p == s)
			return 0;
	}
	if (*p == ':') {
		port = ++p;
		for (; *p != '\0'; p++)
			if (!isdigit((unsigned char)*p))
				return 0;
		if (p == port || p - port > 5)
			return 0;
	}
	return 1;
}

/*
 * The value of key in query, percent-decoded into out: 1 when present, 0
 * when absent, -1 when empty, too long, badly escaped or given twice (two
 * values could route one way and log another).
 */
static int
oci_query_get(const char *query, const char *key, char *out, size_t outlen)
{
	const char *p, *amp;
	size_t len, klen = strlen(key);
	int found = 0;

	if (query == NULL)
		return 0;
	for (p = query; *p != '\0'; p = *amp == '&' ? amp + 1 : amp) {
		amp = strchr(p, '&');
		if (amp == NULL)
			amp = p + strlen(p);
		if (strncmp(p, key, klen) != 0 || p[klen] != '=')
			continue;
		if (found)
			return -1;
		found = 1;
		len = (size_t)(amp - p - klen - 1);
		if (len == 0 || oci_unescape(p + klen + 1, len, out,
		    outlen) == -1)
			return -1;
	}
	return found;
}

int
oci_query_ns(const char *query, char *out, size_t outlen)
{
	int rc = oci_query_get(query, "ns", out, outlen);

	return rc == 1 && !oci_host_valid(out) ? -1 : rc;
}

int
oci_query_tags(const char *query, struct oci_route *route)
{
	char n[16], *end;
	int rc;

	if ((rc = oci_query_get(query, "n", n, sizeof(n))) == -1)
		return -1;
	if (rc == 1) {
		if (n[strspn(n, "0123456789")] != '\0')
			return -1;
		route->tags_n = strtol(n, &end, 10);
	}
	if ((rc = oci_query_get(query, "last", route->tags_last,
	    sizeof(route->tags_last))) == -1 || (rc == 1 &&
	    !oci_tag_valid(route->tags_last, strlen(route->tags_last)))) {
		route->tags_last[0] = '\0';
		return -1;
	}
	return 0;
}

static int
oci_parse_u64(const char **pp, uint64_t *v)
{
	const char *p = *pp;
	uint64_t n = 0;

	if (!isdigit((unsigned char)*p))
		return -1;
	for (; isdigit((unsigned char)*p); p++) {
		if (n > (UINT64_MAX - 9) / 10)
			return -1;
		n = n * 10 + (uint64_t)(*p - '0');
	}
	*v = n;
	*pp = p;
	return 0;
}

int
oci_range_parse(const char *value, struct oci_range *r)
{
	const char *p = value;

	memset(r, 0, sizeof(*r));
	while (*p == ' ' || *p == '\t')
		p++;
	if (strncasecmp(p, "bytes=", 6) != 0)
		return strchr(p, '=') != NULL ? 0 : -1;
	p += 6;
	if (strchr(p, ',') != NULL)
		return 0;
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '-') {
		p++;
		r->suffix = 1;
		if (oci_parse_u64(&p, &r->last) == -1)
			return -1;
	} else {
		if (oci_parse_u64(&p, &r->first) == -1 || *p++ != '-')
			return -1;
		r->last = UINT64_MAX;
		if (isdigit((unsigned char)*p) &&
		    (oci_parse_u64(&p, &r->last) == -1 || r->last < r->first))
			return -1;
	}
	while (*p == ' ' || *p == '\t')
		p++;
	return *p == '\0' ? 1 : -1;
}

int
oci_range_resolve(const struct oci_range *r, uint64_t size, uint64_t *off,
    uint64_t *len)
{
	uint64_t last;

	if (r->suffix) {
		if (r->last == 0 || size == 0)
			return 0;
		*len = r->last < size ? r->last : size;
		*off = size - *len;
		return 1;
	}
	if (r->first >= size)
		return 0;
	last = r->last < size - 1 ? r->last : size - 1;
	*off = r->first;
	*len = last - r->first + 1;
	return 1;
}

static const struct {
	int		 status;
	const char	*code;
	const char	*message;
} oci_errors[] = {
	[OCI_OK] =			{ 200, "", "" },
	[OCI_ERR_BLOB_UNKNOWN] =	{ 404, "BLOB_UNKNOWN",
	    "blob unknown to registry" },
	[OCI_ERR_MANIFEST_UNKNOWN] =	{ 404, "MANIFEST_UNKNOWN",
	    "manifest unknown" },
	[OCI_ERR_MANIFEST_INVALID] =	{ 400, "MANIFEST_INVALID",
	    "invalid manifest reference" },
	[OCI_ERR_NAME_UNKNOWN] =	{ 404, "NAME_UNKNOWN",
	    "repository name not known to registry" },
	[OCI_ERR_NAME_INVALID] =	{ 400, "NAME_INVALID",
	    "invalid repository name" },
	[OCI_ERR_DIGEST_INVALID] =	{ 400, "DIGEST_INVALID",
	    "provided digest did not match uploaded content" },
	[OCI_ERR_UNAUTHORIZED] =	{ 401, "UNAUTHORIZED",
	    "authentication required" },
	[OCI_ERR_DENIED] =		{ 403, "DENIED",
	    "requested access to the resource is denied" },
	[OCI_ERR_UNSUPPORTED] =		{ 400, "UNSUPPORTED",
	    "the operation is unsupported" },
	[OCI_ERR_TOOMANYREQUESTS] =	{ 429, "TOOMANYREQUESTS",
	    "too many requests" },
	[OCI_ERR_RANGE_INVALID] =	{ 416, "RANGE_INVALID",
	    "requested range not satisfiable" },
	[OCI_ERR_METHOD] =		{ 405, "UNSUPPORTED",
	    "method not allowed: a pull-through mirror serves GET and HEAD" },
	[OCI_ERR_NOT_FOUND] =		{ 404, "NOT_FOUND",
	    "not part of the registry API" },
	[OCI_ERR_UPSTREAM] =		{ 502, "UNAVAILABLE",
	    "upstream registry failed" },
	[OCI_ERR_TIMEOUT] =		{ 504, "UNAVAILABLE",
	    "upstream registry did not answer in time" },
	[OCI_ERR_PAGINATION] =		{ 400, "PAGINATION_NUMBER_INVALID",
	    "invalid n or last in the tags list query" },
};

int
oci_err_status(enum oci_err err)
{
	return oci_errors[err].status;
}

const char *
oci_err_code(enum oci_err err)
{
	return oci_errors[err].code;
}

/* Append s as a JSON string body (without quotes); -1 on overflow. */
static int
oci_json_escape(char *buf, size_t buflen, size_t *o, const char *s)
{
	char esc[8];
	size_t n;

	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			snprintf(esc, sizeof(esc), "\\%c", c);
		else if (c < 0x20)
			snprintf(esc, sizeof(esc), "\\u%04x", c);
		else {
			esc[0] = (char)c;
			esc[1] = '\0';
		}
		n = strlen(esc);
		if (*o + n >= buflen)
			return -1;
		memcpy(buf + *o, esc, n);
		*o += n;
	}
	return 0;
}

static int
oci_append(char *buf, size_t buflen, size_t *o, const char *s)
{
	size_t n = strlen(s);

	if (*o + n >= buflen)
		return -1;
	memcpy(buf + *o, s, n);
	*o += n;
	return 0;
}

int
oci_err_body(char *buf, size_t buflen, enum oci_err err, const char *message,
    const char *detail)
{
	size_t o = 0;

	if (buflen == 0)
		return -1;
	if (message == NULL)
		message = oci_errors[err].message;
	if (oci_append(buf, buflen, &o, "{\"errors\":[{\"code\":\"") == -1 ||
	    oci_append(buf, buflen, &o, oci_errors[err].code) == -1 ||
	    oci_append(buf, buflen, &o, "\",\"message\":\"") == -1 ||
	    oci_json_escape(buf, buflen, &o, message) == -1)
		return -1;
	if (detail != NULL &&
	    (oci_append(buf, buflen, &o, "\",\"detail\":\"") == -1 ||
	    oci_json_escape(buf, buflen, &o, detail) == -1))
		return -1;
	if (oci_append(buf, buflen, &o, "\"}]}") == -1)
		return -1;
	buf[o] = '\0';
	return (int)o;
}
