/*
 * oci: the distribution-spec pull API, client side of the proxy.
 * Parses request paths into routes, validates names, tags and digests with
 * the spec's grammar, parses Range headers and writes OCI error bodies.
 * Pure functions: no I/O, no allocation except into caller buffers.
 */
#ifndef PP_OCI_H
#define PP_OCI_H

#include <stddef.h>
#include <stdint.h>

#define OCI_NAME_MAX	255	/* host/name cap from the spec */
#define OCI_REF_MAX	160	/* "sha512:" + 128 hex, or a 128-char tag */
#define OCI_MANIFEST_MAX (4 * 1024 * 1024)	/* containerd's limit */

enum oci_route_kind {
	OCI_ROUTE_NONE = 0,	/* path outside the API: 404 */
	OCI_ROUTE_BASE,		/* /v2/ */
	OCI_ROUTE_MANIFEST,	/* /v2/<name>/manifests/<reference> */
	OCI_ROUTE_BLOB,		/* /v2/<name>/blobs/<digest> */
	OCI_ROUTE_TAGS,		/* /v2/<name>/tags/list */
};

/* Error codes of the spec, plus the proxy's own upstream failures. */
enum oci_err {
	OCI_OK = 0,
	OCI_ERR_BLOB_UNKNOWN,
	OCI_ERR_MANIFEST_UNKNOWN,
	OCI_ERR_MANIFEST_INVALID,
	OCI_ERR_NAME_UNKNOWN,
	OCI_ERR_NAME_INVALID,
	OCI_ERR_DIGEST_INVALID,
	OCI_ERR_UNAUTHORIZED,
	OCI_ERR_DENIED,
	OCI_ERR_UNSUPPORTED,
	OCI_ERR_TOOMANYREQUESTS,
	OCI_ERR_RANGE_INVALID,	/* 416: "RANGE_INVALID" */
	OCI_ERR_METHOD,		/* 405: "UNSUPPORTED" with a method message */
	OCI_ERR_NOT_FOUND,	/* 404 for paths outside the API: "NOT_FOUND" */
	OCI_ERR_UPSTREAM,	/* 502: the registry failed; "UNAVAILABLE" */
	OCI_ERR_TIMEOUT,	/* 504: the registry did not answer in time */
	OCI_ERR_PAGINATION,	/* 400: tags/list n or last malformed */
};

struct oci_route {
	enum oci_route_kind kind;
	char name[OCI_NAME_MAX + 1];
	char reference[OCI_REF_MAX + 1];	/* tag or digest; empty for BASE/TAGS */
	int by_digest;				/* reference is a digest */
	/* tags/list paging (oci_query_tags): -1 and "" when not asked. */
	long tags_n;
	char tags_last[OCI_REF_MAX + 1];
};

/* Grammar checks from distribution-spec v1.1; return 1 when valid. */
int oci_name_valid(const char *name, size_t len);
int oci_tag_valid(const char *tag, size_t len);
int oci_digest_valid(const char *digest, size_t len);

/* host, host:port or [v6]:port: what a registry name (an ns) can be. */
int oci_host_valid(const char *host);

/*
 * Parse a request path (the raw, still percent-encoded path, without the
 * query) into a route. Returns OCI_OK, or the error to answer with:
 * OCI_ERR_NOT_FOUND for paths outside the API, OCI_ERR_NAME_INVALID,
 * OCI_ERR_DIGEST_INVALID (blob digest or manifest reference that starts like
 * a digest), OCI_ERR_MANIFEST_INVALID (a reference that is neither a tag nor
 * a digest). Percent-encoded or dot-segment paths never validate.
 */
enum oci_err oci_route_parse(const char *path, struct oci_route *route);

/*
 * The ns query parameter containerd adds for mirrors ("ns=<host>"), copied
 * into out. Returns 1 when present, 0 when absent, -1 when malformed
 * (too long, empty, or not a plausible host[:port]).
 */
int oci_query_ns(const char *query, char *out, size_t outlen);

/*
 * The paging parameters of a tags/list query, n (a count) and last (a
 * tag), into route. Returns 0, or -1 when either is malformed or given
 * twice: what is forwarded is written from these values, so nothing a
 * client smuggles into them reaches the registry.
 */
int oci_query_tags(const char *query, struct oci_route *route);

/* One byte range: "bytes=first-" or "bytes=first-last" (suffix ranges too). */
struct oci_range {
	int	 suffix;	/* "bytes=-N": the last N bytes */
	uint64_t first;
	uint64_t last;		/* inclusive; UINT64_MAX when open-ended */
};

/*
 * Parse a Range header value. Returns 1 for one valid byte range, 0 when the
 * header should be ignored (multiple ranges, other units: RFC 9110 lets a
 * server answer 200), -1 when it is syntactically invalid.
 */
int oci_range_parse(const char *value, struct oci_range *r);

/*
 * Resolve a parsed range against a known size. Returns 1 with [*off, *len)
 * set when satisfiable, 0 when not (answer 416 with "bytes * /size").
 */
int oci_range_resolve(const struct oci_range *r, uint64_t size,
    uint64_t *off, uint64_t *len);

/* HTTP status and spec code string for an error. */
int oci_err_status(enum oci_err err);
const char *oci_err_code(enum oci_err err);

/*
 * Write {"errors":[{"code":...,"message":...,"detail":...}]} into buf
 * (NUL-terminated, JSON-escaped). message NULL: the code's default text;
 * detail (a string) may be NULL. Returns the length, or
 * -1 if buf was too small.
 */
int oci_err_body(char *buf, size_t buflen, enum oci_err err,
    const char *message, const char *detail);

#endif
