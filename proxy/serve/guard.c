/*
 * guard: head deadlines, accept back-off, request framing and the client
 * token, for the evhttp front.
 *
 * evhttp offers no hook at a connection's start or end. Each connection's
 * bufferevent is made here (evhttp_set_bevcb), with a record that holds a
 * reference on it: the bufferevent stays readable after evhttp let go of
 * it (its free clears the callbacks), and a sweep each second drops the
 * records of those, and closes the connections whose request head is
 * late. Until its record goes, a closed connection keeps its descriptor
 * (BEV_OPT_CLOSE_ON_FREE closes it with the last reference: closing it
 * earlier, with the bufferevent's events still registered, could let
 * them fire for the next socket given the same number). Which phase evhttp is in shows in public state: it reads a head
 * with its read callback set and reading enabled, and turns one or the
 * other off while it answers. A head's clock starts at the first byte
 * read while none is timed and stops when anything is written back.
 */
#include <sys/queue.h>
#include <sys/stat.h>

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "auth.h"
#include "guard.h"
#include "log.h"

#define GUARD_SWEEP_S		1
#define GUARD_ACCEPT_PAUSE_MS	200	/* between accepts when out of fds */
#define GUARD_SPELL_S		5	/* without a failure: the spell is over */

/* RFC 9110's tchar: what a field name is made of. */
static const char guard_tchars[] = "!#$%&'*+-.^_`|~0123456789"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

struct guard_conn {
	TAILQ_ENTRY(guard_conn)	 c_entry;
	struct bufferevent	*c_bev;		/* one reference is ours */
	struct evbuffer_cb_entry *c_incb;
	struct evbuffer_cb_entry *c_outcb;
	int			 c_timed;	/* a head is being read */
	time_t			 c_head;	/* since then (monotonic s) */
};

struct guard {
	struct event_base	*g_base;
	long			 g_head_timeout_s;
	struct event		*g_sweep;
	struct event		*g_resume;
	struct evconnlistener	*g_lev;
	unsigned long		 g_pauses;	/* accept failures, this spell */
	time_t			 g_failed;	/* the last one (monotonic s) */
	size_t			 g_nconns;
	int			 g_token;	/* requests need the token */
	unsigned char		 g_digest[32];	/* its sha256 */
	SSL_CTX			*g_tls;		/* NULL: plain HTTP */
	int			 g_certs;	/* requests need a certificate */
	TAILQ_HEAD(, guard_conn) g_conns;
};

/*
 * A listener's error callback gets evhttp's argument, not ours: the
 * guards listening, to find the one whose listener failed. One per
 * listener role (server.h's), so a few.
 */
#define GUARD_LISTENING_MAX	8
static struct guard *guard_listening[GUARD_LISTENING_MAX];

/* Remember g (on), or forget it. */
static void
guard_listening_set(struct guard *g, int on)
{
	size_t i, slot = GUARD_LISTENING_MAX;

	for (i = 0; i < GUARD_LISTENING_MAX; i++) {
		if (guard_listening[i] == g) {
			if (!on)
				guard_listening[i] = NULL;
			return;
		}
		if (guard_listening[i] == NULL && slot == GUARD_LISTENING_MAX)
			slot = i;
	}
	if (on && slot < GUARD_LISTENING_MAX)
		guard_listening[slot] = g;
}

static struct guard *
guard_of(const struct evconnlistener *lev)
{
	size_t i;

	for (i = 0; i < GUARD_LISTENING_MAX; i++)
		if (guard_listening[i] != NULL &&
		    guard_listening[i]->g_lev == lev)
			return guard_listening[i];
	return NULL;
}

static time_t
guard_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

/* ---------------------------------------------------------- connections */

static void
guard_input_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info,
    void *arg)
{
	struct guard_conn *c = arg;

	(void)buf;
	if (info->n_added > 0 && !c->c_timed) {
		c->c_timed = 1;
		c->c_head = guard_now();
	}
}

/* Only a whole head is answered: its clock stops. */
static void
guard_output_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info,
    void *arg)
{
	struct guard_conn *c = arg;

	(void)buf;
	if (info->n_added > 0)
		c->c_timed = 0;
}

/* Once evhttp let go of the connection. */
static void
guard_conn_free(struct guard *g, struct guard_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->c_bev);
	struct evbuffer *out = bufferevent_get_output(c->c_bev);

	TAILQ_REMOVE(&g->g_conns, c, c_entry);
	g->g_nconns--;
	evbuffer_remove_cb_entry(in, c->c_incb);
	evbuffer_remove_cb_entry(out, c->c_outcb);
	/*
	 * An answer cut short pins cache pages: unpinned now, not when the
	 * loop next runs the bufferevent's finalizer (at shutdown, that is
	 * after the cache closed). A failed write leaves it frozen.
	 */
	evbuffer_unfreeze(out, 1);
	evbuffer_drain(out, evbuffer_get_length(out));
	evbuffer_unfreeze(in, 1);
	evbuffer_drain(in, evbuffer_get_length(in));
	bufferevent_decref(c->c_bev);
	free(c);
}

/* Drops the records evhttp is done with; cuts the heads that are late. */
static void
guard_sweep(struct guard *g)
{
	struct guard_conn *c, *next;
	bufferevent_data_cb readcb, writecb;
	bufferevent_event_cb eventcb;
	void *evcon;
	time_t now = guard_now();
	int cut = 0;

	for (c = TAILQ_FIRST(&g->g_conns); c != NULL; c = next) {
		next = TAILQ_NEXT(c, c_entry);
		bufferevent_getcb(c->c_bev, &readcb, &writecb, &eventcb, &evcon);
		if (eventcb != NULL && c->c_timed &&
		    now - c->c_head >= g->g_head_timeout_s && readcb != NULL &&
		    (bufferevent_get_enabled(c->c_bev) & EV_READ)) {
			evhttp_connection_free(evcon);
			cut++;
			eventcb = NULL;
		}
		if (eventcb == NULL)	/* evhttp is done with it */
			guard_conn_free(g, c);
	}
	if (g->g_pauses > 0 && now - g->g_failed >= GUARD_SPELL_S) {
		log_event(LOG_LEVEL_INFO, "accept resumed", json_pack("{s:I}",
		    "paused", (json_int_t)g->g_pauses));
		g->g_pauses = 0;
	}
	/* One line a second at most, however many trickle. */
	if (cut > 0)
		log_event(LOG_LEVEL_INFO, "slow clients cut off", json_pack(
		    "{s:i,s:I}", "connections", cut, "header_timeout_s",
		    (json_int_t)g->g_head_timeout_s));
	if (TAILQ_EMPTY(&g->g_conns) && g->g_pauses == 0)
		event_del(g->g_sweep);
}

/* The sweep runs while there are records, or a spell to end. */
static void
guard_sweep_arm(struct guard *g)
{
	struct timeval every = { GUARD_SWEEP_S, 0 };

	if (!evtimer_pending(g->g_sweep, NULL))
		evtimer_add(g->g_sweep, &every);
}

static void
guard_sweep_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	guard_sweep(arg);
}

struct bufferevent *
guard_bev_new(struct guard *g)
{
	struct guard_conn *c;

	SSL *ssl = NULL;

	if ((c = calloc(1, sizeof(*c))) == NULL)
		return NULL;
	if (g->g_tls != NULL && (ssl = SSL_new(g->g_tls)) == NULL) {
		free(c);
		return NULL;
	}
	c->c_bev = ssl != NULL ? bufferevent_openssl_socket_new(g->g_base, -1,
	    ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE) :
	    bufferevent_socket_new(g->g_base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (c->c_bev == NULL) {
		SSL_free(ssl);
		free(c);
		return NULL;
	}
	if (ssl != NULL) {
		/* A client that just closes is no error worth a log line. */
		bufferevent_openssl_set_allow_dirty_shutdown(c->c_bev, 1);
		/* The handshake counts as part of the first head. */
		c->c_timed = 1;
		c->c_head = guard_now();
	}
	if ((c->c_incb = evbuffer_add_cb(bufferevent_get_input(c->c_bev),
	    guard_input_cb, c)) == NULL ||
	    (c->c_outcb = evbuffer_add_cb(bufferevent_get_output(c->c_bev),
	    guard_output_cb, c)) == NULL) {
		bufferevent_free(c->c_bev);
		free(c);
		return NULL;
	}
	/*
	 * evhttp keeps reading while it writes an answer (to see a close)
	 * and buffers whatever comes: a client that sends without reading
	 * would grow memory without end. Past this, reading waits.
	 */
	bufferevent_setwatermark(c->c_bev, EV_READ, 0, GUARD_INPUT_MAX);
	bufferevent_incref(c->c_bev);
	TAILQ_INSERT_TAIL(&g->g_conns, c, c_entry);
	g->g_nconns++;
	guard_sweep_arm(g);
	return c->c_bev;
}

/* ------------------------------------------------------------- accept */

/*
 * Out of descriptors (or memory), accept fails and leaves the connection
 * in the backlog: the listener would fire again at once, for ever. It
 * pauses instead. Logged once per spell: the spell ends (logged by the
 * sweep) when accept has not failed for GUARD_SPELL_S.
 */
static void
guard_accept_error(struct evconnlistener *lev, void *arg)
{
	struct guard *g = guard_of(lev);
	struct timeval pause = { 0, GUARD_ACCEPT_PAUSE_MS * 1000 };
	int err = EVUTIL_SOCKET_ERROR();

	(void)arg;
	if (g == NULL) {	/* not one of ours: stop it spinning */
		evconnlistener_disable(lev);
		return;
	}
	/* Records of closed connections still hold their descriptors. */
	guard_sweep(g);
	evconnlistener_disable(lev);
	evtimer_add(g->g_resume, &pause);
	g->g_failed = guard_now();
	guard_sweep_arm(g);
	if (g->g_pauses++ == 0)
		log_event(LOG_LEVEL_WARN, "accept paused", json_pack(
		    "{s:s,s:I,s:i}", "error", strerror(err), "connections",
		    (json_int_t)g->g_nconns, "retry_ms",
		    GUARD_ACCEPT_PAUSE_MS));
}

static void
guard_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct guard *g = arg;

	(void)fd;
	(void)what;
	if (g->g_lev != NULL)
		evconnlistener_enable(g->g_lev);
}

void
guard_listen(struct guard *g, struct evconnlistener *lev)
{
	g->g_lev = lev;
	if (lev == NULL) {
		event_del(g->g_resume);
		guard_listening_set(g, 0);
		return;
	}
	guard_listening_set(g, 1);
	evconnlistener_set_error_cb(lev, guard_accept_error);
}

/* ------------------------------------------------------------ requests */

int
guard_head(const char *uri, const struct evkeyvalq *h, const char **why)
{
	struct evkeyval *kv;
	size_t fields = 0, bytes = 0;
	int length = 0, chunked = 0, status = 0;

	if (strlen(uri) > GUARD_URI_MAX) {
		*why = "request target longer than 8 KiB";
		return 414;
	}
	TAILQ_FOREACH(kv, h, next) {
		fields++;
		bytes += strlen(kv->key) + strlen(kv->value) + 4;
		if (status != 0)
			continue;
		status = 400;
		if (kv->key[0] == '\0' ||
		    kv->key[strspn(kv->key, guard_tchars)] != '\0')
			*why = "malformed header field name";
		else if (strcasecmp(kv->key, "Content-Length") == 0 &&
		    (length++ > 0 || kv->value[0] == '\0' ||
		    kv->value[strspn(kv->value, "0123456789")] != '\0'))
			*why = "Content-Length repeated or not a number";
		else if (strcasecmp(kv->key, "Transfer-Encoding") == 0 &&
		    (chunked++ > 0 || strcasecmp(kv->value, "chunked") != 0))
			*why = "Transfer-Encoding other than chunked";
		else if (length > 0 && chunked > 0)
			*why = "both Content-Length and Transfer-Encoding";
		else
			status = 0;
	}
	if (fields > GUARD_FIELDS_MAX || bytes > GUARD_HEADERS_MAX) {
		*why = "header section larger than 16 KiB or 100 fields";
		return 431;
	}
	return status;
}

/* ------------------------------------------------------------- tokens */

int
guard_token_match(const char *authorization, const unsigned char want[32])
{
	unsigned char got[32], *plain = NULL, *pass;
	const char *cred;
	size_t len, blen, psize = 0;
	int n, ok;

	if (authorization == NULL)
		return 0;
	if (strncasecmp(authorization, "Bearer ", 7) == 0) {
		cred = authorization + 7 + strspn(authorization + 7, " ");
		len = strlen(cred);
	} else if (strncasecmp(authorization, "Basic ", 6) == 0) {
		/* base64("user:token"); the user name is not looked at. */
		cred = authorization + 6 + strspn(authorization + 6, " ");
		blen = strlen(cred);
		psize = blen / 4 * 3 + 1;
		if (blen == 0 || blen % 4 != 0 ||
		    (plain = malloc(psize)) == NULL)
			return 0;
		n = EVP_DecodeBlock(plain, (const unsigned char *)cred,
		    (int)blen);
		if (n > 0)
			n -= (cred[blen - 1] == '=') + (cred[blen - 2] == '=');
		if (n <= 0 || (pass = memchr(plain, ':', (size_t)n)) == NULL) {
			explicit_bzero(plain, psize);
			free(plain);
			return 0;
		}
		cred = (const char *)pass + 1;
		len = (size_t)n - (size_t)(pass + 1 - plain);
	} else
		return 0;
	/* Digests of equal length: no timing tells how much matched. */
	EVP_Digest(cred, len, got, NULL, EVP_sha256(), NULL);
	ok = CRYPTO_memcmp(got, want, sizeof(got)) == 0;
	explicit_bzero(got, sizeof(got));
	if (plain != NULL) {
		explicit_bzero(plain, psize);
		free(plain);
	}
	return ok;
}

int
guard_authorized(const struct guard *g, struct evhttp_request *req)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	SSL *ssl;

	if (g->g_token && !guard_token_match(evhttp_find_header(
	    evhttp_request_get_input_headers(req), "Authorization"),
	    g->g_digest))
		return 0;
	/* A certificate presented was verified in the handshake, or the
	 * handshake failed: it only has to be there. */
	return !g->g_certs || (evcon != NULL && (ssl =
	    bufferevent_openssl_get_ssl(evhttp_connection_get_bufferevent(
	    evcon))) != NULL && SSL_get0_peer_certificate(ssl) != NULL &&
	    SSL_get_verify_result(ssl) == X509_V_OK);
}

/* OpenSSL's last word, for a one-line error. */
static const char *
guard_tls_error(void)
{
	static char buf[256];
	unsigned long e = ERR_peek_last_error();

	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	return e != 0 ? buf : "unknown error";
}

/*
 * The server's certificate and key, and the CA client certificates must
 * come from. A certificate is asked for, not required in the handshake:
 * kubelet's probes present none, and /healthz and /readyz stay open to
 * them; the other paths answer 401 without one.
 */
static int
guard_load_tls(struct guard *g, const struct guard_opts *o, char *err,
    size_t errlen)
{
	STACK_OF(X509_NAME) *names;

	if ((g->g_tls = SSL_CTX_new(TLS_server_method())) == NULL ||
	    SSL_CTX_set_min_proto_version(g->g_tls, TLS1_2_VERSION) != 1) {
		snprintf(err, errlen, "[server] tls_cert_file: %s",
		    guard_tls_error());
		return -1;
	}
	if (SSL_CTX_use_certificate_chain_file(g->g_tls,
	    o->tls_cert_file) != 1) {
		snprintf(err, errlen, "[server] tls_cert_file: %s: %s",
		    o->tls_cert_file, guard_tls_error());
		return -1;
	}
	if (SSL_CTX_use_PrivateKey_file(g->g_tls, o->tls_key_file,
	    SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(g->g_tls) != 1) {
		snprintf(err, errlen, "[server] tls_key_file: %s: %s",
		    o->tls_key_file, guard_tls_error());
		return -1;
	}
	if (o->client_ca_file == NULL)
		return 0;
	if (SSL_CTX_load_verify_locations(g->g_tls, o->client_ca_file,
	    NULL) != 1 || (names = SSL_load_client_CA_file(
	    o->client_ca_file)) == NULL) {
		snprintf(err, errlen, "[server] client_ca_file: %s: %s",
		    o->client_ca_file, guard_tls_error());
		return -1;
	}
	SSL_CTX_set_client_CA_list(g->g_tls, names);
	SSL_CTX_set_verify(g->g_tls, SSL_VERIFY_PEER, NULL);
	/* Resumed sessions keep the certificate they were verified with. */
	SSL_CTX_set_session_id_context(g->g_tls,
	    (const unsigned char *)"pullproxy", 9);
	g->g_certs = 1;
	return 0;
}

/* The token's sha256; the token itself is wiped at once. */
static int
guard_load_token(struct guard *g, const char *path, const char *key,
    char *err, size_t errlen)
{
	char why[512], *tok;
	struct stat st;
	size_t len;

	if ((tok = auth_read_secret(path, why, sizeof(why))) == NULL) {
		snprintf(err, errlen, "%s: %s", key, why);
		return -1;
	}
	len = strlen(tok);
	if (len < GUARD_TOKEN_MIN || strcspn(tok, " \t\r\n") != len) {
		snprintf(err, errlen, "%s: %s must hold one token of %d "
		    "characters or more, without spaces (openssl rand -hex "
		    "32)", key, path, GUARD_TOKEN_MIN);
		auth_secret_free(tok);
		return -1;
	}
	EVP_Digest(tok, len, g->g_digest, NULL, EVP_sha256(), NULL);
	auth_secret_free(tok);
	g->g_token = 1;
	if (stat(path, &st) == 0 && (st.st_mode & S_IROTH))
		log_event(LOG_LEVEL_WARN, "client token file readable by "
		    "every user", json_pack("{s:s}", "file", path));
	return 0;
}

/* -------------------------------------------------------------- guard */

struct guard *
guard_new(struct event_base *base, const struct guard_opts *o,
    char *err, size_t errlen)
{
	struct guard *g;

	if ((g = calloc(1, sizeof(*g))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	g->g_base = base;
	g->g_head_timeout_s = o->head_timeout_s;
	TAILQ_INIT(&g->g_conns);
	g->g_sweep = event_new(base, -1, EV_PERSIST, guard_sweep_cb, g);
	g->g_resume = evtimer_new(base, guard_resume_cb, g);
	if (g->g_sweep == NULL || g->g_resume == NULL) {
		snprintf(err, errlen, "out of memory");
		guard_free(g);
		return NULL;
	}
	if ((o->token_file != NULL && guard_load_token(g, o->token_file,
	    o->token_key, err, errlen) == -1) ||
	    (o->tls_cert_file != NULL &&
	    guard_load_tls(g, o, err, errlen) == -1)) {
		guard_free(g);
		return NULL;
	}
	return g;
}

void
guard_free(struct guard *g)
{
	if (g == NULL)
		return;
	guard_listening_set(g, 0);
	while (!TAILQ_EMPTY(&g->g_conns))
		guard_conn_free(g, TAILQ_FIRST(&g->g_conns));
	if (g->g_sweep != NULL)
		event_free(g->g_sweep);
	if (g->g_resume != NULL)
		event_free(g->g_resume);
	explicit_bzero(g->g_digest, sizeof(g->g_digest));
	SSL_CTX_free(g->g_tls);
	free(g);
}
