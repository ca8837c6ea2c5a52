/*
 * auth: a registry's upstream identity. One handle per configured
 * registry, made at start-up from its config section. It holds where the
 * credentials are (files are read again on every fetch, so a rotated
 * secret is picked up), the registry's last challenge, a token cache per
 * scope, and the token fetches: IMDS, /oauth2/exchange, /oauth2/token or
 * any realm, each an upstream transfer on the loop, one in flight per
 * (registry, scope) with every waiter queued behind it.
 *
 * Transfers see it through auth_upstream() (struct upstream_auth): a
 * transfer started with it carries the cached token of its scope; a 401
 * with a challenge is kept from the caller while auth_wait() gets a fresh
 * token, and the transfer is sent once more with it. The scope is the
 * request's ("repository:<name>:pull", auth_scope_name), never dug out of
 * a URL.
 *
 * A token is kept until its JWT "exp", else "expires_in", else 60 s, and
 * a new one is fetched from a margin before that (auth_margin). Failures
 * are logged once per fetch as "auth failure" with what failed (phase
 * imds, exchange, token or challenge, status, error, the service's error
 * code and message). No secret is ever logged.
 */
#ifndef PP_AUTH_H
#define PP_AUTH_H

#include <stddef.h>
#include <time.h>

#include <jansson.h>

struct auth;
struct auth_wait;
struct config;
struct config_registry;
struct event_base;
struct ratelimit;
struct upstream;
struct upstream_auth;

/*
 * Reads the registry's secret files once, so that a missing one stops the
 * start rather than the first pull. NULL with err set (one line, naming
 * the registry) when it cannot.
 */
struct auth *auth_new(struct event_base *base, struct upstream *up,
    struct ratelimit *pace, const struct config *cfg,
    const struct config_registry *reg, char *err, size_t errlen);
/*
 * Cancels the fetches. Cancel the transfers that wait here first, and
 * free this before the upstream engine.
 */
void auth_free(struct auth *a);

/* This identity as transfers take it (upstream_req.auth). */
const struct upstream_auth *auth_upstream(struct auth *a);

/*
 * The fields of the last "auth failure" line (phase, cause, hint, status,
 * the service's code and message...), or NULL; auth_forget_failure
 * clears it. For `pullproxy check`, which reports the daemon's own
 * reading of a failure.
 */
const json_t *auth_last_failure(const struct auth *a);
void auth_forget_failure(struct auth *a);

/*
 * The Authorization value for a request in scope when one is known and
 * current, else NULL. Inside its margin a token is still returned and a
 * new one is fetched meanwhile. Valid until the loop runs again.
 */
const char *auth_header(struct auth *a, const char *scope);

/*
 * A request in scope was answered 401 with this WWW-Authenticate value
 * after sending refused (the Authorization value, or NULL). Learns the
 * challenge and forgets the refused token. Returns 0 when a token can
 * answer it (see auth_header, then auth_wait), -1 when the caller should
 * take the 401 as it is (malformed, unsupported scheme, no credentials).
 */
int auth_challenge(struct auth *a, const char *scope, const char *challenge,
    const char *refused);

/*
 * Wait for a token for scope: cb runs later from the loop, never
 * from inside this call, with the Authorization value (valid during the
 * call) or NULL when the fetch failed (already logged). Returns NULL when
 * no fetch can start (no challenge seen yet, out of memory).
 */
typedef void (*auth_cb)(void *arg, const char *authorization);
struct auth_wait *auth_wait(struct auth *a, const char *scope, auth_cb cb,
    void *arg);
/* cb will not run. */
void auth_wait_cancel(struct auth_wait *w);

/*
 * A secret file's contents without a trailing newline (64K at most);
 * NULL with err set ("cannot read PATH: why", "PATH is empty"). Free it
 * with auth_secret_free, which wipes it first.
 */
char *auth_read_secret(const char *path, char *err, size_t errlen);
void auth_secret_free(char *s);

/* The pieces below are pure, for the unit tests. */

#define AUTH_PARAM_MAX	1024

enum auth_scheme {
	AUTH_SCHEME_BASIC = 1,
	AUTH_SCHEME_BEARER,
};

struct auth_challenge {
	enum auth_scheme scheme;
	char	realm[AUTH_PARAM_MAX];		/* "" when absent */
	char	service[AUTH_PARAM_MAX];
	char	scope[AUTH_PARAM_MAX];
};

/*
 * Parse a WWW-Authenticate value (RFC 9110 11.6.1: challenges with
 * token or quoted-string parameters, comma-separated). The first Bearer
 * challenge wins, else the first Basic one. Returns -1 when the value is
 * malformed or offers neither.
 */
int auth_challenge_parse(const char *value, struct auth_challenge *c);

/*
 * The token in a JSON answer: the string under key, else under alt
 * (token endpoints: "token" or "access_token"; the exchange:
 * "refresh_token"; IMDS: "access_token"), with expires_in (-1 when
 * absent). NULL when there is none; the caller frees it.
 */
char *auth_token_parse(const void *body, size_t len, const char *key,
    const char *alt, long *expires_in);

/* The "exp" claim of a JWT (unverified: only its lifetime is wanted). */
int auth_jwt_exp(const char *jwt, long long *exp);

/*
 * Seconds a token lasts from now: its JWT exp, else expires_in (when
 * >= 0), else 60; a day at most. May be 0 or less for a token already
 * expired.
 */
long auth_lifetime(const char *token, long expires_in, time_t now);

/* Seconds before expiry to fetch anew: 10%, 30 s to 5 min, at most half. */
long auth_margin(long lifetime);

/*
 * "repository:<name>:pull", the scope of a request for repository; -1,
 * with out empty, when there is none or it does not fit.
 */
int auth_scope_name(const char *repository, char *out, size_t outlen);

#endif
