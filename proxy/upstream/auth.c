/*
 * auth: credentials, challenges, the token cache and token fetches.
 *
 * A fetch obtains one token: a scope's (from the challenge's realm), or
 * the ACR refresh token every scope's token comes from under managed
 * identity (IMDS, then /oauth2/exchange). A fetch starts on the next loop
 * turn, so whoever asks meanwhile queues behind it and no callback runs
 * inside auth_wait(). At any time one thing drives a fetch: its timer
 * (start, IMDS back-off), its transfer, or the refresh fetch it waits on;
 * auth_fetch_end() is its one end: it answers the waiters and frees it.
 *
 * Secrets (the files' contents, tokens) are held in struct auth_cred
 * values and in the forms built from them, and wiped when they go (as far
 * as this module can: curl and jansson keep copies of their own). None is
 * ever logged: failure lines carry URLs without their query and only the
 * code and message of a service's error body.
 */
#include <sys/queue.h>
#include <sys/time.h>

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "classify.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "upstream.h"

#define AUTH_DEFAULT_LIFETIME	60	/* s, when a token says nothing */
/*
 * Whatever a token claims, it is kept a day at most: a registry cannot
 * pin one for ever, and now + lifetime stays far from overflowing.
 */
#define AUTH_LIFETIME_MAX	86400
#define AUTH_MARGIN_MIN		30
#define AUTH_MARGIN_MAX		300
#define AUTH_BODY_MAX		(64 * 1024)	/* a token endpoint's answer */
#define AUTH_FILE_MAX		(64 * 1024)	/* a secret file */
#define AUTH_MESSAGE_MAX	200	/* of a service's error message */
#define AUTH_IMDS_PATH		"/metadata/identity/oauth2/token"
#define AUTH_IMDS_VERSION	"2018-02-01"
#define AUTH_ACR_RESOURCE	"https://containerregistry.azure.net"
#define AUTH_IMDS_BACKOFF_MAX	16	/* s between two IMDS attempts */

enum auth_phase {
	AUTH_PHASE_IMDS,
	AUTH_PHASE_EXCHANGE,
	AUTH_PHASE_TOKEN,
	AUTH_PHASE_CHALLENGE,
};

static const char *auth_phase_names[] = {
	[AUTH_PHASE_IMDS] = "imds",
	[AUTH_PHASE_EXCHANGE] = "exchange",
	[AUTH_PHASE_TOKEN] = "token",
	[AUTH_PHASE_CHALLENGE] = "challenge",
};

/* A secret with its lifetime. */
struct auth_cred {
	char		*c_value;
	time_t		 c_refresh;	/* fetch a new one from then */
	time_t		 c_expire;	/* stop using it then */
};

struct auth_wait {
	TAILQ_ENTRY(auth_wait)	 w_entry;
	struct auth_fetch	*w_fetch;
	auth_cb			 w_cb;
	void			*w_arg;
};

struct auth_scope {
	TAILQ_ENTRY(auth_scope)	 s_entry;
	char			*s_key;		/* the scope asked */
	char			*s_want;	/* asked for: the challenge's */
	struct auth_cred	 s_token;	/* "Bearer <token>" */
	int			 s_fetched;	/* tokens fetched so far */
	struct auth_fetch	*s_fetch;	/* in flight, or NULL */
};

struct auth_fetch {
	struct auth		*f_auth;
	struct auth_scope	*f_scope;	/* NULL: the refresh token */
	enum auth_phase		 f_phase;
	struct event		*f_timer;
	struct upstream_xfer	*f_xfer;
	struct auth_wait	*f_refresh;	/* waiting for a refresh token */
	struct evbuffer		*f_body;	/* the answer */
	long			 f_status;	/* its status, 0 if none */
	struct upstream_result	 f_res;	/* how it ended (error not kept) */
	char			*f_url;		/* asked, without its query */
	int			 f_attempts;	/* IMDS */
	long			 f_backoff_s;	/* IMDS: waited between attempts */
	long			 f_refresh_gen;	/* of the refresh token sent */
	int			 f_renewed;	/* got a new one after a refusal */
	struct timeval		 f_t0;
	TAILQ_HEAD(, auth_wait)	 f_waiters;
};

struct auth {
	struct event_base	*a_base;
	struct upstream		*a_up;
	struct ratelimit	*a_pace;	/* the registry's, or NULL */
	struct upstream_auth	 a_iface;	/* what transfers see */
	json_t			*a_failure;	/* the last failure's fields */
	const struct config	*a_cfg;
	const struct config_registry *a_reg;
	char			*a_realm;	/* last Bearer challenge, or NULL */
	char			*a_service;
	struct auth_cred	 a_basic;	/* the registry asked for Basic */
	struct auth_cred	 a_refresh;	/* managed-identity */
	long			 a_refresh_gen;	/* a_refresh values so far */
	struct auth_fetch	*a_rfetch;	/* getting a_refresh */
	TAILQ_HEAD(, auth_scope) a_scopes;
};

/* What an "auth failure" line says. */
struct auth_report {
	enum auth_phase	 phase;
	const char	*scope;
	const char	*url;		/* without query */
	long		 status;
	const char	*error;
	struct evbuffer	*body;		/* the service's answer, or NULL */
	int		 attempts;
	const struct timeval *t0;
	const struct upstream_result *res;	/* the transfer's end */
};

static void	auth_fetch_step(struct auth_fetch *);

/* ------------------------------------------------------------ pure parts */

static int
auth_tchar(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9') || (c != '\0' && strchr("!#$%&'*+-.^_`|~",
	    c) != NULL);
}

static const char *
auth_ows(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

/* A token or quoted-string into out; NULL when malformed or too long. */
static const char *
auth_param_value(const char *p, char *out, size_t outlen)
{
	size_t n = 0;

	if (*p != '"') {
		while (auth_tchar(*p) || *p == '/' || *p == ':' || *p == '=') {
			if (n + 1 >= outlen)
				return NULL;
			out[n++] = *p++;
		}
		out[n] = '\0';
		return n > 0 ? p : NULL;
	}
	for (p++; *p != '"'; p++) {
		if (*p == '\\' && p[1] != '\0')
			p++;
		if (*p == '\0' || n + 1 >= outlen)
			return NULL;
		out[n++] = *p;
	}
	out[n] = '\0';
	return p + 1;
}

int
auth_challenge_parse(const char *value, struct auth_challenge *c)
{
	char name[64], v[AUTH_PARAM_MAX], *dst;
	const char *p = value, *start;
	enum auth_scheme cur = 0;
	size_t n;
	int inside = 0, take = 0;

	memset(c, 0, sizeof(*c));
	for (;;) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		if (*p == '\0')
			break;
		for (start = p; auth_tchar(*p); p++)
			;
		if ((n = (size_t)(p - start)) == 0 || n >= sizeof(name))
			return -1;
		memcpy(name, start, n);
		name[n] = '\0';
		p = auth_ows(p);
		if (*p != '=') {	/* a new challenge: its scheme */
			inside = 1;
			cur = strcasecmp(name, "Bearer") == 0 ?
			    AUTH_SCHEME_BEARER : strcasecmp(name, "Basic") == 0 ?
			    AUTH_SCHEME_BASIC : 0;
			take = cur != 0 && (c->scheme == 0 ||
			    (c->scheme == AUTH_SCHEME_BASIC &&
			    cur == AUTH_SCHEME_BEARER));
			if (take) {
				memset(c, 0, sizeof(*c));
				c->scheme = cur;
			}
			continue;
		}
		if (!inside)
			return -1;	/* a parameter before any scheme */
		if ((p = auth_param_value(auth_ows(p + 1), v, sizeof(v))) ==
		    NULL)
			return -1;
		p = auth_ows(p);
		if (*p != ',' && *p != '\0')
			return -1;
		if (!take)
			continue;
		dst = strcasecmp(name, "realm") == 0 ? c->realm :
		    strcasecmp(name, "service") == 0 ? c->service :
		    strcasecmp(name, "scope") == 0 ? c->scope : NULL;
		if (dst != NULL)
			memcpy(dst, v, strlen(v) + 1);
	}
	return c->scheme != 0 ? 0 : -1;
}

/* base64url, padded or not; NUL-terminated. NULL when malformed. */
static char *
auth_unbase64url(const char *s, size_t len, size_t *outlen)
{
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "abcdefghijklmnopqrstuvwxyz0123456789-_";
	unsigned long acc = 0;
	const char *c;
	char *out;
	size_t i, n = 0;
	int bits = 0;

	while (len > 0 && s[len - 1] == '=')
		len--;
	if (len % 4 == 1 || (out = malloc(len * 3 / 4 + 1)) == NULL)
		return NULL;
	for (i = 0; i < len; i++) {
		if (s[i] == '\0' || (c = strchr(alphabet, s[i])) == NULL) {
			free(out);
			return NULL;
		}
		acc = (acc << 6 | (unsigned long)(c - alphabet)) & 0xffffff;
		if ((bits += 6) >= 8) {
			bits -= 8;
			out[n++] = (char)(acc >> bits & 0xff);
		}
	}
	out[n] = '\0';
	*outlen = n;
	return out;
}

int
auth_jwt_exp(const char *jwt, long long *exp)
{
	const char *dot1, *dot2;
	json_t *claims, *v;
	size_t len;
	char *payload;
	int rc = -1;

	if ((dot1 = strchr(jwt, '.')) == NULL ||
	    (dot2 = strchr(dot1 + 1, '.')) == NULL)
		return -1;
	if ((payload = auth_unbase64url(dot1 + 1, (size_t)(dot2 - dot1 - 1),
	    &len)) == NULL)
		return -1;
	claims = json_loadb(payload, len, 0, NULL);
	free(payload);
	v = json_object_get(claims, "exp");
	if (json_is_integer(v)) {
		*exp = json_integer_value(v);
		rc = 0;
	} else if (json_is_real(v) && json_real_value(v) > -1e18 &&
	    json_real_value(v) < 1e18) {	/* else no long long */
		*exp = (long long)json_real_value(v);
		rc = 0;
	}
	json_decref(claims);
	return rc;
}

long
auth_lifetime(const char *token, long expires_in, time_t now)
{
	long long exp, left;

	if (auth_jwt_exp(token, &exp) == 0)
		left = exp < (long long)now - AUTH_LIFETIME_MAX ?
		    -AUTH_LIFETIME_MAX : exp - (long long)now;
	else
		left = expires_in >= 0 ? expires_in : AUTH_DEFAULT_LIFETIME;
	return left < AUTH_LIFETIME_MAX ? (long)left : AUTH_LIFETIME_MAX;
}

long
auth_margin(long lifetime)
{
	long m = lifetime / 10;

	if (m < AUTH_MARGIN_MIN)
		m = AUTH_MARGIN_MIN;
	if (m > AUTH_MARGIN_MAX)
		m = AUTH_MARGIN_MAX;
	/* A short-lived token is still worth using for half its life. */
	return m > lifetime / 2 ? lifetime / 2 : m;
}

int
auth_scope_name(const char *repository, char *out, size_t outlen)
{
	int n;

	out[0] = '\0';
	if (repository == NULL || repository[0] == '\0')
		return -1;
	n = snprintf(out, outlen, "repository:%s:pull", repository);
	if (n < 0 || (size_t)n >= outlen) {
		out[0] = '\0';
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------- secrets */

/* asprintf that returns NULL when it fails. */
static char *
auth_printf(const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	return n == -1 ? NULL : s;
}

void
auth_secret_free(char *s)
{
	if (s == NULL)
		return;
	explicit_bzero(s, strlen(s));
	free(s);
}

static void
auth_cred_clear(struct auth_cred *c)
{
	auth_secret_free(c->c_value);
	memset(c, 0, sizeof(*c));
}

/* Takes value. */
static void
auth_cred_set(struct auth_cred *c, char *value, long lifetime, time_t now)
{
	auth_cred_clear(c);
	c->c_value = value;
	c->c_expire = now + lifetime;
	c->c_refresh = now + lifetime - auth_margin(lifetime);
}

static int
auth_cred_fresh(const struct auth_cred *c, time_t now)
{
	return c->c_value != NULL && now < c->c_refresh;
}

char *
auth_read_secret(const char *path, char *err, size_t errlen)
{
	FILE *f;
	char *buf;
	size_t n;

	err[0] = '\0';
	if ((f = fopen(path, "re")) == NULL) {
		snprintf(err, errlen, "cannot read %s: %s", path,
		    strerror(errno));
		return NULL;
	}
	if ((buf = malloc(AUTH_FILE_MAX + 1)) == NULL) {
		fclose(f);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	n = fread(buf, 1, AUTH_FILE_MAX + 1, f);
	if (ferror(f) || n > AUTH_FILE_MAX) {
		snprintf(err, errlen, "cannot read %s: %s", path, ferror(f) ?
		    "read error" : "larger than 64K");
		n = 0;
	}
	fclose(f);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	buf[n] = '\0';
	if (n == 0) {
		if (err[0] == '\0')
			snprintf(err, errlen, "%s is empty", path);
		auth_secret_free(buf);
		return NULL;
	}
	return buf;
}

/* "Basic base64(user:password)" from the registry's files. */
static char *
auth_basic_value(const struct config_registry *reg, char *err, size_t errlen)
{
	char *user, *pass = NULL, *plain = NULL, *out = NULL;
	size_t len;

	if ((user = auth_read_secret(reg->username_file, err, errlen)) ==
	    NULL || (pass = auth_read_secret(reg->password_file, err,
	    errlen)) == NULL)
		goto done;
	if ((plain = auth_printf("%s:%s", user, pass)) == NULL) {
		snprintf(err, errlen, "out of memory");
		goto done;
	}
	len = strlen(plain);
	if ((out = calloc(1, 6 + 4 * ((len + 2) / 3) + 1)) == NULL) {
		snprintf(err, errlen, "out of memory");
		goto done;
	}
	memcpy(out, "Basic ", 6);
	EVP_EncodeBlock((unsigned char *)out + 6, (unsigned char *)plain,
	    (int)len);
done:
	auth_secret_free(user);
	auth_secret_free(pass);
	auth_secret_free(plain);
	return out;
}

/* "k1=v1&k2=v2" from name, value pairs ending with NULL; NULL values are
 * left out. The result may hold secrets: auth_secret_free it. */
static char *
auth_form(const char *name, ...)
{
	struct evbuffer *b;
	const char *v;
	char *e, *s = NULL;
	size_t len;
	va_list ap;

	if ((b = evbuffer_new()) == NULL)
		return NULL;
	va_start(ap, name);
	for (; name != NULL; name = va_arg(ap, const char *)) {
		if ((v = va_arg(ap, const char *)) == NULL)
			continue;
		if ((e = evhttp_uriencode(v, -1, 1)) == NULL)
			goto out;
		evbuffer_add_printf(b, "%s%s=%s", evbuffer_get_length(b) > 0 ?
		    "&" : "", name, e);
		auth_secret_free(e);
	}
	len = evbuffer_get_length(b);
	if ((s = malloc(len + 1)) != NULL) {
		evbuffer_remove(b, s, len);
		s[len] = '\0';
	}
out:
	va_end(ap);
	evbuffer_free(b);
	return s;
}

/* ------------------------------------------------------------- logging */

/* The code and message of an ACR, OAuth or IMDS error body. */
static void
auth_error_fields(json_t *o, struct evbuffer *body)
{
	json_t *doc, *e;
	const char *code, *msg;
	size_t n;

	if (body == NULL || evbuffer_get_length(body) == 0 ||
	    (doc = json_loadb((const char *)evbuffer_pullup(body, -1),
	    evbuffer_get_length(body), 0, NULL)) == NULL)
		return;
	if ((e = json_array_get(json_object_get(doc, "errors"), 0)) != NULL) {
		code = json_string_value(json_object_get(e, "code"));
		msg = json_string_value(json_object_get(e, "message"));
	} else {
		code = json_string_value(json_object_get(doc, "error"));
		msg = json_string_value(json_object_get(doc,
		    "error_description"));
	}
	if (code != NULL)
		json_object_set_new(o, "code", json_string(code));
	if (msg != NULL) {
		/* Cut on a character boundary: jansson wants valid UTF-8. */
		n = strnlen(msg, AUTH_MESSAGE_MAX);
		while (n > 0 && msg[n] != '\0' && (msg[n] & 0xc0) == 0x80)
			n--;
		json_object_set_new(o, "message", json_stringn(msg, n));
	}
	json_decref(doc);
}

/* The cause and hint of a failure (classify.h), onto its line o. */
static void
auth_classify(const struct auth *a, const struct auth_report *r, json_t *o)
{
	static const enum classify_phase phases[] = {
		[AUTH_PHASE_IMDS] = CLASSIFY_PHASE_IMDS,
		[AUTH_PHASE_EXCHANGE] = CLASSIFY_PHASE_EXCHANGE,
		[AUTH_PHASE_TOKEN] = CLASSIFY_PHASE_TOKEN,
		/* The realm is unusable: no token can come from it. */
		[AUTH_PHASE_CHALLENGE] = CLASSIFY_PHASE_TOKEN,
	};
	struct classify_input in;
	struct classify_result c;

	memset(&in, 0, sizeof(in));
	in.phase = phases[r->phase];
	in.status = r->status;
	in.acr_code = json_string_value(json_object_get(o, "code"));
	in.acr_message = json_string_value(json_object_get(o, "message"));
	in.host = a->a_reg->name;
	upstream_result_classify(&in, r->res);
	classify(&in, &c);
	if (c.cause == CLASSIFY_NONE)
		return;
	metrics_failure(metrics_registry(a->a_reg->name), c.cause);
	json_object_set_new(o, "cause", json_string(
	    classify_cause_name(c.cause)));
	json_object_set_new(o, "hint", json_string(c.hint));
}

static void
auth_log_failure(struct auth *a, const struct auth_report *r)
{
	json_t *o;

	o = json_pack("{s:s,s:s,s:s}", "registry", a->a_reg->name,
	    "provider", config_auth_name(a->a_reg->auth_kind), "phase",
	    auth_phase_names[r->phase]);
	if (o == NULL)
		return;
	if (r->scope != NULL)
		json_object_set_new(o, "scope", json_string(r->scope));
	if (r->url != NULL)
		json_object_set_new(o, "url", json_string(r->url));
	json_object_set_new(o, "status", json_integer(r->status));
	if (r->error != NULL)
		json_object_set_new(o, "error", json_string(r->error));
	auth_error_fields(o, r->body);
	auth_classify(a, r, o);
	if (r->attempts > 0)
		json_object_set_new(o, "imds_attempts",
		    json_integer(r->attempts));
	if (r->t0 != NULL)
		json_object_set_new(o, "ms", json_integer(log_ms_since(r->t0)));
	json_decref(a->a_failure);
	a->a_failure = json_deep_copy(o);
	log_event(LOG_LEVEL_ERROR, "auth failure", o);
}

/* -------------------------------------------------------------- scopes */

static struct auth_scope *
auth_scope_find(struct auth *a, const char *key)
{
	struct auth_scope *s;

	TAILQ_FOREACH(s, &a->a_scopes, s_entry)
		if (strcmp(s->s_key, key) == 0)
			return s;
	return NULL;
}

static void
auth_scope_free(struct auth *a, struct auth_scope *s)
{
	TAILQ_REMOVE(&a->a_scopes, s, s_entry);
	auth_cred_clear(&s->s_token);
	free(s->s_key);
	free(s->s_want);
	free(s);
}

/* The scope called key, made when new; expired idle ones go meanwhile. */
static struct auth_scope *
auth_scope_get(struct auth *a, const char *key)
{
	struct auth_scope *s, *next;
	time_t now = time(NULL);

	if ((s = auth_scope_find(a, key)) != NULL)
		return s;
	for (s = TAILQ_FIRST(&a->a_scopes); s != NULL; s = next) {
		next = TAILQ_NEXT(s, s_entry);
		if (s->s_fetch == NULL && now >= s->s_token.c_expire)
			auth_scope_free(a, s);
	}
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return NULL;
	if ((s->s_key = strdup(key)) == NULL ||
	    (s->s_want = strdup(key)) == NULL) {
		free(s->s_key);
		free(s);
		return NULL;
	}
	TAILQ_INSERT_TAIL(&a->a_scopes, s, s_entry);
	return s;
}

/* -------------------------------------------------------------- fetches */

static struct auth_wait *
auth_wait_on(struct auth_fetch *f, auth_cb cb, void *arg)
{
	struct auth_wait *w;

	if ((w = calloc(1, sizeof(*w))) == NULL)
		return NULL;
	w->w_fetch = f;
	w->w_cb = cb;
	w->w_arg = arg;
	TAILQ_INSERT_TAIL(&f->f_waiters, w, w_entry);
	return w;
}

void
auth_wait_cancel(struct auth_wait *w)
{
	if (w == NULL)
		return;
	TAILQ_REMOVE(&w->w_fetch->f_waiters, w, w_entry);
	free(w);
}

/* Waiters still queued are dropped unanswered (auth_free). */
static void
auth_fetch_free(struct auth_fetch *f)
{
	struct auth_wait *w;

	if (f->f_scope != NULL)
		f->f_scope->s_fetch = NULL;
	else
		f->f_auth->a_rfetch = NULL;
	upstream_xfer_cancel(f->f_xfer);
	auth_wait_cancel(f->f_refresh);
	while ((w = TAILQ_FIRST(&f->f_waiters)) != NULL)
		auth_wait_cancel(w);
	if (f->f_timer != NULL)
		event_free(f->f_timer);
	if (f->f_body != NULL)
		evbuffer_free(f->f_body);
	free(f->f_url);
	free(f);
}

/*
 * The one end of a fetch: every waiter gets the outcome, then it goes.
 * It stays linked meanwhile, so a callback that asks again for the same
 * token joins it and is answered in this loop, and its scope is kept.
 */
static void
auth_fetch_end(struct auth_fetch *f, int ok)
{
	struct auth_cred *c = f->f_scope != NULL ? &f->f_scope->s_token :
	    &f->f_auth->a_refresh;
	struct auth_wait *w;
	auth_cb cb;
	void *arg;

	while ((w = TAILQ_FIRST(&f->f_waiters)) != NULL) {
		TAILQ_REMOVE(&f->f_waiters, w, w_entry);
		cb = w->w_cb;
		arg = w->w_arg;
		free(w);
		cb(arg, ok ? c->c_value : NULL);
	}
	auth_fetch_free(f);
}

static void
auth_fetch_fail(struct auth_fetch *f, const char *error)
{
	struct auth_report r = { f->f_phase, f->f_scope != NULL ?
	    f->f_scope->s_want : NULL, f->f_url, f->f_status, error,
	    f->f_body, f->f_attempts, &f->f_t0, &f->f_res };

	auth_log_failure(f->f_auth, &r);
	auth_fetch_end(f, 0);
}

static void
auth_fetch_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	auth_fetch_step(arg);
}

/* A fetch for scope s (NULL: the refresh token), started next turn. */
static struct auth_fetch *
auth_fetch_new(struct auth *a, struct auth_scope *s)
{
	struct auth_fetch *f;

	if ((f = calloc(1, sizeof(*f))) == NULL)
		return NULL;
	f->f_auth = a;
	f->f_scope = s;
	f->f_phase = s != NULL ? AUTH_PHASE_TOKEN : AUTH_PHASE_IMDS;
	TAILQ_INIT(&f->f_waiters);
	gettimeofday(&f->f_t0, NULL);
	f->f_timer = evtimer_new(a->a_base, auth_fetch_timer, f);
	f->f_body = evbuffer_new();
	if (f->f_timer == NULL || f->f_body == NULL) {
		auth_fetch_free(f);
		return NULL;
	}
	if (s != NULL)
		s->s_fetch = f;
	else
		a->a_rfetch = f;
	event_active(f->f_timer, EV_TIMEOUT, 0);
	return f;
}

/* The status is read with on_done, the body as it comes. */
static void
auth_fetch_on_headers(struct upstream_xfer *x, void *arg)
{
	(void)x;
	(void)arg;
}

static void
auth_fetch_on_data(struct upstream_xfer *x, const char *buf, size_t len,
    void *arg)
{
	struct auth_fetch *f = arg;

	(void)x;
	if (evbuffer_get_length(f->f_body) + len <= AUTH_BODY_MAX)
		evbuffer_add(f->f_body, buf, len);
}

static void auth_fetch_on_done(struct upstream_xfer *,
    const struct upstream_result *, void *);

/* The length of "scheme://host[:port]" at the start of an http(s) URL. */
static size_t
auth_origin_len(const char *url)
{
	const char *host = strstr(url, "://") + 3;

	return (size_t)(host - url) + strcspn(host, "/?#");
}

/* Whether an http(s) URL is on the registry's own scheme, host and port. */
static int
auth_on_registry(const struct auth *a, const char *url)
{
	size_t len = auth_origin_len(a->a_reg->url);

	return auth_origin_len(url) == len &&
	    strncasecmp(url, a->a_reg->url, len) == 0;
}

/*
 * Send one request of the fetch: GET url, or POST form when not NULL,
 * with one more header line (or NULL). Fails the fetch when it cannot.
 */
static void
auth_fetch_send(struct auth_fetch *f, enum auth_phase phase, const char *url,
    const char *form, const char *header)
{
	const struct config_registry *reg = f->f_auth->a_reg;
	const char *headers[] = { header, NULL };
	struct upstream_cbs cbs = { auth_fetch_on_headers, auth_fetch_on_data,
	    auth_fetch_on_done };
	struct upstream_req req;

	f->f_phase = phase;
	f->f_status = 0;
	memset(&f->f_res, 0, sizeof(f->f_res));
	evbuffer_drain(f->f_body, evbuffer_get_length(f->f_body));
	free(f->f_url);
	if ((f->f_url = strndup(url, strcspn(url, "?"))) == NULL) {
		auth_fetch_fail(f, "out of memory");
		return;
	}
	memset(&req, 0, sizeof(req));
	req.url = url;
	req.accept = "application/json";
	req.body = form;
	req.bodylen = form != NULL ? strlen(form) : 0;
	req.headers = headers;
	/* A realm elsewhere is the registry's word: not further into the
	 * node than the registry is. */
	req.named_by = phase == AUTH_PHASE_TOKEN &&
	    !auth_on_registry(f->f_auth, url) ? reg->url : NULL;
	/* A secret in the form or the header goes where it was sent only. */
	req.no_redirect = phase != AUTH_PHASE_IMDS && (form != NULL ||
	    header != NULL);
	req.ca_file = reg->ca_file;
	req.tls_verify = reg->tls_verify;
	/* Token requests count against the registry, first in line; IMDS is
	 * another host. */
	req.ratelimit = phase != AUTH_PHASE_IMDS ? f->f_auth->a_pace : NULL;
	req.rlclass = RATELIMIT_HIGH;
	req.connect_timeout_ms = f->f_auth->a_cfg->connect_timeout_ms;
	req.stall_timeout_s = f->f_auth->a_cfg->stall_timeout_s;
	if ((f->f_xfer = upstream_xfer_start(f->f_auth->a_up, &req, &cbs,
	    f)) == NULL)
		auth_fetch_fail(f, "cannot start transfer");
}

static void
auth_fetch_imds(struct auth_fetch *f)
{
	const struct config_registry *reg = f->f_auth->a_reg;
	char *query, *url = NULL;

	f->f_attempts++;
	query = auth_form("api-version", AUTH_IMDS_VERSION, "resource",
	    AUTH_ACR_RESOURCE, "client_id", reg->client_id, NULL);
	if (query == NULL || (url = auth_printf("%s" AUTH_IMDS_PATH "?%s",
	    reg->imds_url != NULL ? reg->imds_url : CONFIG_IMDS_URL,
	    query)) == NULL) {
		free(query);
		auth_fetch_fail(f, "out of memory");
		return;
	}
	free(query);
	/* IMDS refuses requests without it (and so anything proxied). */
	auth_fetch_send(f, AUTH_PHASE_IMDS, url, NULL, "Metadata: true");
	free(url);
}

/* Where scope tokens come from, if the challenge is usable; else why not. */
static const char *
auth_realm_problem(const struct auth *a)
{
	const char *realm = a->a_realm;

	if (realm == NULL || *realm == '\0')
		return "the challenge names no realm";
	if (strncmp(realm, "https://", 8) != 0 &&
	    strncmp(realm, "http://", 7) != 0)
		return "the realm is not an http(s) URL";
	if (a->a_reg->auth_kind == CONFIG_AUTH_ANONYMOUS)
		return NULL;
	/* Credentials go to the registry itself, nowhere else. */
	if (!auth_on_registry(a, realm))
		return "the realm is not on the registry's host";
	return NULL;
}

static void
auth_fetch_exchange(struct auth_fetch *f, const char *entra)
{
	struct auth *a = f->f_auth;
	const char *problem;
	char *form, *url;

	f->f_phase = AUTH_PHASE_CHALLENGE;
	if ((problem = auth_realm_problem(a)) != NULL) {
		auth_fetch_fail(f, problem);
		return;
	}
	url = auth_printf("%s/oauth2/exchange", a->a_reg->url);
	form = auth_form("grant_type", "access_token", "service",
	    a->a_service, "tenant", a->a_reg->tenant, "access_token", entra,
	    NULL);
	if (url == NULL || form == NULL)
		auth_fetch_fail(f, "out of memory");
	else
		auth_fetch_send(f, AUTH_PHASE_EXCHANGE, url, form, NULL);
	auth_secret_free(form);
	free(url);
}

/* Docker's token GET: realm?service=&scope=, with Basic credentials or none. */
static void
auth_fetch_token_get(struct auth_fetch *f, const char *scope,
    const char *basic)
{
	const char *realm = f->f_auth->a_realm;
	char *query, *url = NULL, *header = NULL;

	query = auth_form("service", f->f_auth->a_service, "scope", scope,
	    NULL);
	if (query == NULL || (url = auth_printf("%s%c%s", realm,
	    strchr(realm, '?') != NULL ? '&' : '?', query)) == NULL ||
	    (basic != NULL && (header = auth_printf("Authorization: %s",
	    basic)) == NULL))
		auth_fetch_fail(f, "out of memory");
	else
		auth_fetch_send(f, AUTH_PHASE_TOKEN, url, NULL, header);
	auth_secret_free(header);
	free(url);
	free(query);
}

/* ACR's token POST with a refresh token. */
static void
auth_fetch_token_post(struct auth_fetch *f, const char *scope,
    const char *refresh)
{
	char *form;

	form = auth_form("grant_type", "refresh_token", "service",
	    f->f_auth->a_service, "scope", scope, "refresh_token", refresh,
	    NULL);
	if (form == NULL)
		auth_fetch_fail(f, "out of memory");
	else
		auth_fetch_send(f, AUTH_PHASE_TOKEN, f->f_auth->a_realm, form,
		    NULL);
	auth_secret_free(form);
}

/* The token request for a scope, as the registry's auth kind makes it. */
static void
auth_fetch_token(struct auth_fetch *f)
{
	struct auth *a = f->f_auth;
	const struct config_registry *reg = a->a_reg;
	const char *problem, *scope = f->f_scope->s_want;
	char err[512], *secret = NULL;

	f->f_phase = AUTH_PHASE_CHALLENGE;
	if ((problem = auth_realm_problem(a)) != NULL) {
		auth_fetch_fail(f, problem);
		return;
	}
	f->f_phase = AUTH_PHASE_TOKEN;
	if (*scope == '\0')
		scope = NULL;
	/* Secret files are read on every fetch: rotation needs no restart. */
	switch (reg->auth_kind) {
	case CONFIG_AUTH_ANONYMOUS:
		auth_fetch_token_get(f, scope, NULL);
		return;
	case CONFIG_AUTH_BASIC:
		secret = auth_basic_value(reg, err, sizeof(err));
		break;
	case CONFIG_AUTH_ACR_REFRESH_TOKEN:
		secret = auth_read_secret(reg->refresh_token_file, err,
		    sizeof(err));
		break;
	case CONFIG_AUTH_MANAGED_IDENTITY:
		f->f_refresh_gen = a->a_refresh_gen;
		auth_fetch_token_post(f, scope, a->a_refresh.c_value);
		return;
	}
	if (secret == NULL)
		auth_fetch_fail(f, err);
	else if (reg->auth_kind == CONFIG_AUTH_BASIC)
		auth_fetch_token_get(f, scope, secret);
	else
		auth_fetch_token_post(f, scope, secret);
	auth_secret_free(secret);
}

/* expires_in may be a number or a string. */
char *
auth_token_parse(const void *body, size_t len, const char *key,
    const char *alt, long *expires)
{
	json_t *doc, *e;
	const char *v;
	char *tok;

	doc = json_loadb(body, len, 0, NULL);
	v = json_string_value(json_object_get(doc, key));
	e = json_object_get(doc, "expires_in");
	if (v == NULL && alt != NULL)
		v = json_string_value(json_object_get(doc, alt));
	*expires = json_is_integer(e) ? (long)json_integer_value(e) :
	    json_is_string(e) ? strtol(json_string_value(e), NULL, 10) : -1;
	tok = v != NULL && *v != '\0' ? strdup(v) : NULL;
	json_decref(doc);
	return tok;
}

static void
auth_log_token(const struct auth_fetch *f, long lifetime, int refresh)
{
	const struct auth *a = f->f_auth;
	json_t *o;

	o = json_pack("{s:s,s:s,s:s,s:s*,s:I,s:b,s:I}", "registry",
	    a->a_reg->name, "provider", config_auth_name(a->a_reg->auth_kind),
	    "phase", auth_phase_names[f->f_phase], "scope", f->f_scope != NULL ?
	    f->f_scope->s_want : NULL, "lifetime_s", (json_int_t)lifetime,
	    "refresh", refresh, "ms", (json_int_t)log_ms_since(&f->f_t0));
	if (o != NULL && f->f_attempts > 0)
		json_object_set_new(o, "imds_attempts",
		    json_integer(f->f_attempts));
	log_event(LOG_LEVEL_INFO, "auth token", o);
}

/* A 200 from IMDS, the exchange or the token endpoint. */
static void
auth_fetch_answer(struct auth_fetch *f)
{
	struct auth_scope *s = f->f_scope;
	struct auth_cred *c;
	time_t now = time(NULL);
	char *tok, *value;
	long expires, lifetime;
	int refresh;

	tok = auth_token_parse(evbuffer_pullup(f->f_body, -1),
	    evbuffer_get_length(f->f_body), f->f_phase == AUTH_PHASE_TOKEN ?
	    "token" : f->f_phase == AUTH_PHASE_EXCHANGE ? "refresh_token" :
	    "access_token", f->f_phase == AUTH_PHASE_TOKEN ? "access_token" :
	    NULL, &expires);
	if (tok == NULL) {
		auth_fetch_fail(f, "no token in the answer");
		return;
	}
	if (f->f_phase == AUTH_PHASE_IMDS) {
		auth_fetch_exchange(f, tok);
		auth_secret_free(tok);
		return;
	}
	lifetime = auth_lifetime(tok, expires, now);
	value = s != NULL ? auth_printf("Bearer %s", tok) : strdup(tok);
	auth_secret_free(tok);
	if (value == NULL) {
		auth_fetch_fail(f, "out of memory");
		return;
	}
	c = s != NULL ? &s->s_token : &f->f_auth->a_refresh;
	refresh = s != NULL ? s->s_fetched++ > 0 : c->c_value != NULL;
	if (s == NULL)
		f->f_auth->a_refresh_gen++;
	auth_cred_set(c, value, lifetime, now);
	auth_log_token(f, lifetime, refresh);
	auth_fetch_end(f, 1);
}

/*
 * IMDS asks to be retried on 404 (identity not there yet), 410 (updating,
 * up to 70 s), 429 and 5xx, with back-off, within imds_retry_s.
 */
static int
auth_imds_retry(struct auth_fetch *f)
{
	long st = f->f_status, delay;
	struct timeval tv = { 0, 0 };

	if (st != 404 && st != 410 && st != 429 && st < 500)
		return 0;
	delay = f->f_attempts > 4 ? AUTH_IMDS_BACKOFF_MAX :
	    1L << (f->f_attempts - 1);
	/*
	 * The back-off waited, not the clock: the attempts a given
	 * imds_retry_s allows do not depend on how fast IMDS answers.
	 */
	if (f->f_backoff_s + delay > f->f_auth->a_reg->imds_retry_s)
		return 0;
	f->f_backoff_s += delay;
	tv.tv_sec = delay;
	evtimer_add(f->f_timer, &tv);
	return 1;
}

/*
 * The registry refused the refresh token before its expiry (the role was
 * removed and granted back, the registry rotated its keys): it is not
 * offered again, and this fetch gets a new one through IMDS and the
 * exchange, once, then asks for its token again. 1 when it went back.
 */
static int
auth_fetch_refused(struct auth_fetch *f)
{
	struct auth *a = f->f_auth;
	json_t *o;

	if (f->f_scope == NULL || f->f_phase != AUTH_PHASE_TOKEN ||
	    f->f_res.curl != CURLE_OK || f->f_status != 401 ||
	    a->a_reg->auth_kind != CONFIG_AUTH_MANAGED_IDENTITY)
		return 0;
	/* Unless another fetch has replaced it meanwhile. */
	if (f->f_refresh_gen == a->a_refresh_gen)
		auth_cred_clear(&a->a_refresh);
	if (f->f_renewed)
		return 0;
	f->f_renewed = 1;
	o = json_pack("{s:s,s:s,s:s,s:I}", "registry", a->a_reg->name,
	    "provider", config_auth_name(a->a_reg->auth_kind), "scope",
	    f->f_scope->s_want, "status", (json_int_t)f->f_status);
	if (o != NULL)
		auth_error_fields(o, f->f_body);
	log_event(LOG_LEVEL_WARN, "auth refresh refused", o);
	auth_fetch_step(f);
	return 1;
}

static void
auth_fetch_on_done(struct upstream_xfer *x, const struct upstream_result *res,
    void *arg)
{
	struct auth_fetch *f = arg;

	(void)x;
	f->f_xfer = NULL;
	f->f_status = res->status;
	f->f_res = *res;
	f->f_res.error = NULL;
	if (auth_fetch_refused(f))
		return;
	if (res->curl != CURLE_OK)
		auth_fetch_fail(f, res->error);
	else if (res->status >= 300 && res->status < 400 &&
	    f->f_phase != AUTH_PHASE_IMDS)
		auth_fetch_fail(f, "redirected: a request with credentials "
		    "is not sent on");
	else if (res->status == 200)
		auth_fetch_answer(f);
	else if (f->f_phase != AUTH_PHASE_IMDS || !auth_imds_retry(f))
		auth_fetch_fail(f, NULL);
}

/* auth_cb: the refresh token a scope fetch waited for. */
static void
auth_fetch_refreshed(void *arg, const char *refresh)
{
	struct auth_fetch *f = arg;

	f->f_refresh = NULL;
	if (refresh == NULL)
		auth_fetch_end(f, 0);	/* the refresh fetch logged why */
	else
		auth_fetch_token(f);
}

static void
auth_fetch_step(struct auth_fetch *f)
{
	struct auth *a = f->f_auth;
	const char *problem;

	if (f->f_scope == NULL) {
		auth_fetch_imds(f);
		return;
	}
	if (a->a_reg->auth_kind != CONFIG_AUTH_MANAGED_IDENTITY ||
	    auth_cred_fresh(&a->a_refresh, time(NULL))) {
		auth_fetch_token(f);
		return;
	}
	/* No identity token is worth getting for a realm that won't get it. */
	f->f_phase = AUTH_PHASE_CHALLENGE;
	if ((problem = auth_realm_problem(a)) != NULL) {
		auth_fetch_fail(f, problem);
		return;
	}
	f->f_phase = AUTH_PHASE_TOKEN;
	if ((a->a_rfetch == NULL && auth_fetch_new(a, NULL) == NULL) ||
	    (f->f_refresh = auth_wait_on(a->a_rfetch, auth_fetch_refreshed,
	    f)) == NULL)
		auth_fetch_fail(f, "out of memory");
}

/* ----------------------------------------------------------- interface */

/* The transport's view of auth_header, auth_challenge and auth_wait. */
static const char *
auth_iface_header(void *ctx, const char *scope)
{
	return auth_header(ctx, scope);
}

static int
auth_iface_challenge(void *ctx, const char *scope, const char *challenge,
    const char *refused)
{
	return auth_challenge(ctx, scope, challenge, refused);
}

static void *
auth_iface_wait(void *ctx, const char *scope, auth_cb cb, void *arg)
{
	return auth_wait(ctx, scope, cb, arg);
}

static void
auth_iface_wait_cancel(void *w)
{
	auth_wait_cancel(w);
}

struct auth *
auth_new(struct event_base *base, struct upstream *up,
    struct ratelimit *pace, const struct config *cfg,
    const struct config_registry *reg, char *err, size_t errlen)
{
	struct auth *a;
	char why[512], *secret = NULL;

	why[0] = '\0';
	if (reg->auth_kind == CONFIG_AUTH_BASIC)
		secret = auth_basic_value(reg, why, sizeof(why));
	else if (reg->auth_kind == CONFIG_AUTH_ACR_REFRESH_TOKEN)
		secret = auth_read_secret(reg->refresh_token_file, why,
		    sizeof(why));
	auth_secret_free(secret);
	if (why[0] != '\0') {
		snprintf(err, errlen, "[registry %s] %s", reg->name, why);
		return NULL;
	}
	if ((a = calloc(1, sizeof(*a))) == NULL) {
		snprintf(err, errlen, "[registry %s] out of memory", reg->name);
		return NULL;
	}
	a->a_base = base;
	a->a_up = up;
	a->a_pace = pace;
	a->a_iface = (struct upstream_auth){ a, auth_iface_header,
	    auth_iface_challenge, auth_iface_wait, auth_iface_wait_cancel };
	a->a_cfg = cfg;
	a->a_reg = reg;
	TAILQ_INIT(&a->a_scopes);
	return a;
}

void
auth_free(struct auth *a)
{
	struct auth_scope *s;

	if (a == NULL)
		return;
	/* Scope fetches first: they may wait on the refresh fetch. */
	TAILQ_FOREACH(s, &a->a_scopes, s_entry)
		if (s->s_fetch != NULL)
			auth_fetch_free(s->s_fetch);
	if (a->a_rfetch != NULL)
		auth_fetch_free(a->a_rfetch);
	while ((s = TAILQ_FIRST(&a->a_scopes)) != NULL)
		auth_scope_free(a, s);
	auth_cred_clear(&a->a_basic);
	auth_cred_clear(&a->a_refresh);
	free(a->a_realm);
	free(a->a_service);
	json_decref(a->a_failure);
	free(a);
}

const struct upstream_auth *
auth_upstream(struct auth *a)
{
	return &a->a_iface;
}

const json_t *
auth_last_failure(const struct auth *a)
{
	return a->a_failure;
}

void
auth_forget_failure(struct auth *a)
{
	json_decref(a->a_failure);
	a->a_failure = NULL;
}

const char *
auth_header(struct auth *a, const char *scope)
{
	struct auth_scope *s;
	time_t now = time(NULL);

	if (a->a_basic.c_value != NULL)
		return a->a_basic.c_value;
	if ((s = auth_scope_find(a, scope)) == NULL ||
	    s->s_token.c_value == NULL)
		return NULL;
	if (now >= s->s_token.c_expire) {
		auth_cred_clear(&s->s_token);
		return NULL;
	}
	/* Inside its margin: still good, and its successor is on the way. */
	if (!auth_cred_fresh(&s->s_token, now) && s->s_fetch == NULL)
		auth_fetch_new(a, s);
	return s->s_token.c_value;
}

/* A Basic challenge: the configured credentials, unless just refused. */
static int
auth_challenge_basic(struct auth *a, const char *refused)
{
	struct auth_report r = { AUTH_PHASE_CHALLENGE, NULL, a->a_reg->url,
	    401, NULL, NULL, 0, NULL, NULL };
	char err[512], *value;

	if (a->a_reg->auth_kind != CONFIG_AUTH_BASIC)
		return -1;
	if ((value = auth_basic_value(a->a_reg, err, sizeof(err))) == NULL ||
	    (refused != NULL && strcmp(value, refused) == 0)) {
		r.error = value == NULL ? err :
		    "the registry refused the basic credentials";
		auth_log_failure(a, &r);
		auth_secret_free(value);
		return -1;
	}
	/* Basic credentials do not expire. */
	auth_cred_clear(&a->a_basic);
	a->a_basic.c_value = value;
	return 0;
}

int
auth_challenge(struct auth *a, const char *scope, const char *challenge,
    const char *refused)
{
	struct auth_challenge c;
	struct auth_scope *s;
	char *realm, *service, *want;

	if (auth_challenge_parse(challenge, &c) == -1)
		return -1;
	if (c.scheme == AUTH_SCHEME_BASIC)
		return auth_challenge_basic(a, refused);
	if ((s = auth_scope_get(a, scope)) == NULL ||
	    (realm = strdup(c.realm)) == NULL)
		return -1;
	service = c.service[0] != '\0' ? strdup(c.service) : NULL;
	auth_cred_clear(&a->a_basic);
	free(a->a_realm);
	free(a->a_service);
	a->a_realm = realm;
	a->a_service = service;
	if (c.scope[0] != '\0' && strcmp(c.scope, s->s_want) != 0 &&
	    (want = strdup(c.scope)) != NULL) {
		free(s->s_want);
		s->s_want = want;
	}
	if (refused != NULL && s->s_token.c_value != NULL &&
	    strcmp(s->s_token.c_value, refused) == 0)
		auth_cred_clear(&s->s_token);
	return 0;
}

struct auth_wait *
auth_wait(struct auth *a, const char *scope, auth_cb cb, void *arg)
{
	struct auth_scope *s;

	if (a->a_realm == NULL)
		return NULL;	/* no Bearer challenge: nowhere to ask */
	if ((s = auth_scope_get(a, scope)) == NULL ||
	    (s->s_fetch == NULL && auth_fetch_new(a, s) == NULL))
		return NULL;
	return auth_wait_on(s->s_fetch, cb, arg);
}
