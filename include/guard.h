/*
 * guard: what stands between a client and the API. The server's
 * connections get a deadline for each request head (request line and
 * headers: evhttp's own timeout restarts with every byte, so a client
 * sending a byte a second would hold a connection for ever); accept(2)
 * failing for want of descriptors pauses the listener instead of letting
 * it spin on the connection left in the backlog; a connection holds
 * GUARD_INPUT_MAX bytes its client sent at most; requests whose framing
 * is oversized or ambiguous are refused before routing; with [server]
 * tls_cert_file clients speak TLS; and every request but the health
 * probes must carry the credentials configured: the client token, a
 * certificate from client_ca_file, or both.
 */
#ifndef PP_GUARD_H
#define PP_GUARD_H

#include <stddef.h>

#define GUARD_URI_MAX		8192	/* request target: else 414 */
#define GUARD_FIELDS_MAX	100	/* header fields: else 431 */
#define GUARD_HEADERS_MAX	16384	/* header section bytes: else 431 */
#define GUARD_TOKEN_MIN		16	/* shorter client tokens are refused */
#define GUARD_INPUT_MAX		(64 * 1024)	/* unread client bytes held */

struct bufferevent;
struct event_base;
struct evconnlistener;
struct evhttp_request;
struct evkeyvalq;
struct guard;

/* What one listener asks of its clients. */
struct guard_opts {
	const char	*token_file;	/* the token to carry, or NULL */
	const char	*token_key;	/* its setting, for errors */
	const char	*tls_cert_file;	/* NULL: plain HTTP */
	const char	*tls_key_file;
	const char	*client_ca_file;	/* NULL: no certificate asked */
	long		 head_timeout_s;
};

/*
 * Reads the token file (kept as its sha256 only) and the TLS files when
 * there are some. NULL with err set (one line naming the key) when it
 * cannot.
 */
struct guard *guard_new(struct event_base *base,
    const struct guard_opts *opts, char *err, size_t errlen);
/* After evhttp_free: the connections' records go with it. */
void guard_free(struct guard *g);

/* A client connection's bufferevent (evhttp_set_bevcb), watched. */
struct bufferevent *guard_bev_new(struct guard *g);
/* Pause this listener briefly whenever accept fails. One per process. */
void guard_listen(struct guard *g, struct evconnlistener *lev);

/*
 * 0 when a request head (its target, its header fields as evhttp parsed
 * them) is framed soundly, else the status to answer with the
 * connection closed, and why: 414 for a request target longer
 * than GUARD_URI_MAX; 431 for more than GUARD_FIELDS_MAX header fields
 * or GUARD_HEADERS_MAX bytes of them; 400 for a field name that is not
 * a token (a space before the colon), more than one Content-Length or one
 * that is not a number, or a Transfer-Encoding other than one "chunked"
 * alone: what an HTTP proxy in front could read differently (request
 * smuggling).
 */
int guard_head(const char *uri, const struct evkeyvalq *headers,
    const char **why);

/* 1 when req carries the credentials configured (or none is). */
int guard_authorized(const struct guard *g, struct evhttp_request *req);

/*
 * Whether an Authorization value carries the token whose sha256 is
 * want: "Bearer <token>", or Basic with the token as the password (any
 * user name). Compared in constant time. Pure, for the unit tests.
 */
int guard_token_match(const char *authorization,
    const unsigned char want[32]);

#endif
