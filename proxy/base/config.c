/*
 * config: the INI file (inih) and the serve flags. Values are checked as
 * they are read, so every error can name the file line or the flag.
 */
#include <arpa/inet.h>
#include <netinet/in.h>

#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "log.h"
#include "oci.h"
#include "platform.h"

void
config_init(struct config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->listen_host = strdup("127.0.0.1");
	cfg->listen_port = 5000;
	cfg->cache_dir = strdup("/var/lib/pullproxy");
	cfg->cache_max_bytes = 10ULL << 30;
	cfg->cache_high_pct = 90;
	cfg->cache_low_pct = 80;
	cfg->tag_ttl_s = 60;
	cfg->log_level = LOG_LEVEL_INFO;
	cfg->connect_timeout_ms = 10000;
	cfg->stall_timeout_s = 30;
	cfg->shutdown_timeout_s = 30;
	cfg->header_timeout_s = 10;
	cfg->idle_timeout_s = 60;
	cfg->fleet.fanout = 4;
	cfg->fleet.resolve_s = 5;
	cfg->fleet.stale_s = 30;
}

static const char *config_auth_names[] = {
	[CONFIG_AUTH_ANONYMOUS] = "anonymous",
	[CONFIG_AUTH_BASIC] = "basic",
	[CONFIG_AUTH_ACR_REFRESH_TOKEN] = "acr-refresh-token",
	[CONFIG_AUTH_MANAGED_IDENTITY] = "managed-identity",
};

const char *
config_auth_name(enum config_auth kind)
{
	return config_auth_names[kind];
}

/*
 * Every string a setter replaces goes through here: the old value is freed
 * and its pointer cleared in one place, so a key given twice (or a list
 * emptied and filled again) never leaves a freed pointer behind.
 */
static const char *
config_replace(char **dst, char *value)
{
	free(*dst);
	*dst = value;
	return value != NULL ? NULL : "out of memory";
}

static void
config_mirrors_clear(struct config_registry *r)
{
	size_t i;

	for (i = 0; i < CONFIG_MIRROR_MAX; i++)
		config_replace(&r->mirrors[i].url, NULL);
	r->nmirrors = 0;
}

static void
config_registry_clear(struct config_registry *r)
{
	free(r->name);
	free(r->url);
	free(r->ca_file);
	free(r->username_file);
	free(r->password_file);
	free(r->refresh_token_file);
	free(r->client_id);
	free(r->tenant);
	free(r->imds_url);
	free(r->mirror_token_file);
	config_mirrors_clear(r);
	memset(r, 0, sizeof(*r));
}

static void
config_peers_clear(struct config_fleet *f)
{
	while (f->npeers > 0)
		free(f->peers[--f->npeers].host);
	free(f->peers);
	f->peers = NULL;
}

static void
config_peers_dns_clear(struct config_fleet *f)
{
	while (f->npeers_dns > 0)
		free(f->peers_dns[--f->npeers_dns]);
	free(f->peers_dns);
	f->peers_dns = NULL;
}

void
config_free(struct config *cfg)
{
	size_t i;

	config_peers_clear(&cfg->fleet);
	config_peers_dns_clear(&cfg->fleet);
	free(cfg->fleet.peers_dns_server);
	free(cfg->fleet.peer_listen_host);
	free(cfg->fleet.peer_token_file);

	free(cfg->listen_host);
	free(cfg->metrics_listen_host);
	free(cfg->cache_dir);
	free(cfg->log_file);
	free(cfg->platform);
	free(cfg->client_token_file);
	free(cfg->tls_cert_file);
	free(cfg->tls_key_file);
	free(cfg->client_ca_file);
	for (i = 0; i < cfg->nregistries; i++)
		config_registry_clear(&cfg->registries[i]);
	memset(cfg, 0, sizeof(*cfg));
}

static const char *
config_set_str(char **dst, const char *value)
{
	return config_replace(dst, strdup(value));
}

/* Each setter returns NULL, or what is wrong with the value. */

/* HOST:PORT or [V6]:PORT into a new string and a port. */
static const char *
config_hostport(const char *value, char **hostp, int *portp)
{
	const char *colon = strrchr(value, ':');
	char host[256], *end;
	size_t hlen;
	long port;

	if (colon == NULL)
		return "expected HOST:PORT";
	hlen = (size_t)(colon - value);
	if (hlen >= 2 && value[0] == '[' && value[hlen - 1] == ']') {
		value++;
		hlen -= 2;
	}
	if (hlen == 0 || hlen >= sizeof(host) || memchr(value, '[', hlen) ||
	    memchr(value, ']', hlen))
		return "expected HOST:PORT";
	errno = 0;
	port = strtol(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end != '\0' || errno != 0 || port < 1 ||
	    port > 65535)
		return "port must be 1-65535";
	memcpy(host, value, hlen);
	host[hlen] = '\0';
	if ((*hostp = strdup(host)) == NULL)
		return "out of memory";
	*portp = (int)port;
	return NULL;
}

static const char *
config_set_listen(struct config *cfg, const char *value)
{
	const char *msg;
	char *host;
	int port;

	if ((msg = config_hostport(value, &host, &port)) != NULL)
		return msg;
	cfg->listen_port = port;
	return config_replace(&cfg->listen_host, host);
}

static const char *
config_set_long(long *dst, const char *value, long min, long max)
{
	static char msg[96];
	char *end;
	long v;

	errno = 0;
	v = strtol(value, &end, 10);
	if (*value == '\0' || *end != '\0' || errno != 0 || v < min ||
	    v > max) {
		snprintf(msg, sizeof(msg), "expected a whole number %ld-%ld",
		    min, max);
		return msg;
	}
	*dst = v;
	return NULL;
}

/* A byte count with an optional K, M, G or T suffix (powers of 1024). */
static const char *
config_set_size(unsigned long long *dst, const char *value)
{
	unsigned long long v;
	char *end;
	int shift = 0;

	errno = 0;
	v = strtoull(value, &end, 10);
	if (*value == '\0' || *value == '-' || errno != 0)
		return "expected a size such as 512M or 20G";
	switch (*end) {
	case 'K': case 'k': shift = 10; end++; break;
	case 'M': case 'm': shift = 20; end++; break;
	case 'G': case 'g': shift = 30; end++; break;
	case 'T': case 't': shift = 40; end++; break;
	}
	if (*end != '\0' || v > (ULLONG_MAX >> shift))
		return "expected a size such as 512M or 20G";
	v <<= shift;
	if (v < 16ULL << 20)
		return "must be at least 16M";
	*dst = v;
	return NULL;
}

/* Requests per second: a decimal, so a big cluster can give a node 0.5. */
static const char *
config_set_rate(double *dst, const char *value)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(value, &end);
	if (*value == '\0' || *end != '\0' || errno != 0 || !(v >= 0.01) ||
	    v > 100000)
		return "expected requests per second, 0.01-100000";
	*dst = v;
	return NULL;
}

static const char *
config_set_pct(int *dst, const char *value)
{
	long v;
	const char *msg = config_set_long(&v, value, 1, 99);

	if (msg == NULL)
		*dst = (int)v;
	return msg;
}

static const char *
config_set_bool(int *dst, const char *value)
{
	if (strcasecmp(value, "true") == 0 || strcasecmp(value, "yes") == 0 ||
	    strcmp(value, "1") == 0)
		*dst = 1;
	else if (strcasecmp(value, "false") == 0 ||
	    strcasecmp(value, "no") == 0 || strcmp(value, "0") == 0)
		*dst = 0;
	else
		return "expected true or false";
	return NULL;
}

static const char *
config_set_level(struct config *cfg, const char *value)
{
	int level = log_level_parse(value);

	if (level < 0)
		return "expected debug, info, warn or error";
	cfg->log_level = level;
	return NULL;
}

/* An http:// or https:// base URL, stored without its trailing slashes. */
static const char *
config_set_url(char **dst, const char *value)
{
	const char *host;
	size_t len = strlen(value);

	if (strncmp(value, "https://", 8) == 0)
		host = value + 8;
	else if (strncmp(value, "http://", 7) == 0)
		host = value + 7;
	else
		return "URL must start with http:// or https://";
	if (*host == '\0' || *host == '/')
		return "URL has no host";
	if (strpbrk(value, " \t?#") != NULL)
		return "URL must be a base URL (no spaces, query or fragment)";
	while (len > 0 && value[len - 1] == '/')
		len--;
	return config_replace(dst, strndup(value, len));
}

static const char *
config_set_auth(struct config_registry *r, const char *value)
{
	size_t i;

	for (i = 0; i < sizeof(config_auth_names) /
	    sizeof(config_auth_names[0]); i++)
		if (strcmp(value, config_auth_names[i]) == 0) {
			r->auth_kind = (enum config_auth)i;
			return NULL;
		}
	return "expected anonymous, basic, acr-refresh-token or "
	    "managed-identity";
}

static const char *
config_set_nonempty(char **dst, const char *value)
{
	if (*value == '\0')
		return "must not be empty";
	return config_set_str(dst, value);
}

/*
 * The registry called name, added when new. NULL when the table is full
 * (or its name cannot be copied).
 */
static struct config_registry *
config_registry_get(struct config *cfg, const char *name)
{
	struct config_registry *r;
	size_t i;

	for (i = 0; i < cfg->nregistries; i++)
		if (strcasecmp(cfg->registries[i].name, name) == 0)
			return &cfg->registries[i];
	if (cfg->nregistries == CONFIG_REGISTRY_MAX)
		return NULL;
	r = &cfg->registries[cfg->nregistries];
	if ((r->name = strdup(name)) == NULL)
		return NULL;
	cfg->nregistries++;
	r->tls_verify = 1;
	r->imds_retry_s = 70;
	r->rate = 10;
	r->burst = 20;
	r->max_wait_s = 30;
	r->circuit_failures = 5;
	r->circuit_open_s = 10;
	r->retries = 2;
	return r;
}

static const char *
config_set_server(struct config *cfg, const char *key, const char *value)
{
	if (strcmp(key, "listen") == 0)
		return config_set_listen(cfg, value);
	if (strcmp(key, "cache_dir") == 0) {
		if (*value == '\0')
			return "must not be empty";
		return config_set_str(&cfg->cache_dir, value);
	}
	if (strcmp(key, "cache_max_size") == 0)
		return config_set_size(&cfg->cache_max_bytes, value);
	if (strcmp(key, "platform") == 0) {
		struct platform p;

		if (platform_parse(value, &p) == -1)
			return "must be os/arch[/variant], e.g. linux/arm64";
		return config_set_str(&cfg->platform, value);
	}
	if (strcmp(key, "cache_high_pct") == 0)
		return config_set_pct(&cfg->cache_high_pct, value);
	if (strcmp(key, "cache_low_pct") == 0)
		return config_set_pct(&cfg->cache_low_pct, value);
	if (strcmp(key, "tag_ttl_s") == 0)
		return config_set_long(&cfg->tag_ttl_s, value, 0, 86400);
	if (strcmp(key, "log") == 0)
		return config_set_str(&cfg->log_file, value);
	if (strcmp(key, "log_level") == 0)
		return config_set_level(cfg, value);
	if (strcmp(key, "connect_timeout_ms") == 0)
		return config_set_long(&cfg->connect_timeout_ms, value, 100,
		    600000);
	if (strcmp(key, "stall_timeout_s") == 0)
		return config_set_long(&cfg->stall_timeout_s, value, 1, 3600);
	if (strcmp(key, "shutdown_timeout_s") == 0)
		return config_set_long(&cfg->shutdown_timeout_s, value, 0,
		    3600);
	if (strcmp(key, "client_token_file") == 0)
		return config_set_nonempty(&cfg->client_token_file, value);
	if (strcmp(key, "tls_cert_file") == 0)
		return config_set_nonempty(&cfg->tls_cert_file, value);
	if (strcmp(key, "tls_key_file") == 0)
		return config_set_nonempty(&cfg->tls_key_file, value);
	if (strcmp(key, "client_ca_file") == 0)
		return config_set_nonempty(&cfg->client_ca_file, value);
	if (strcmp(key, "header_timeout_s") == 0)
		return config_set_long(&cfg->header_timeout_s, value, 1, 300);
	if (strcmp(key, "metrics_listen") == 0) {
		free(cfg->metrics_listen_host);
		cfg->metrics_listen_host = NULL;
		return config_hostport(value, &cfg->metrics_listen_host,
		    &cfg->metrics_listen_port);
	}
	if (strcmp(key, "idle_timeout_s") == 0)
		return config_set_long(&cfg->idle_timeout_s, value, 1, 3600);
	return "unknown key";
}

/* "URL, URL ...": comma or space separated; the key again replaces. */
static const char *
config_set_mirrors(struct config_registry *r, const char *value)
{
	char *copy, *url, *last;
	const char *msg = NULL;

	config_mirrors_clear(r);
	if ((copy = strdup(value)) == NULL)
		return "out of memory";
	for (url = strtok_r(copy, ", \t", &last); url != NULL && msg == NULL;
	    url = strtok_r(NULL, ", \t", &last)) {
		if (r->nmirrors == CONFIG_MIRROR_MAX)
			msg = "at most 4 mirrors";
		else if ((msg = config_set_url(&r->mirrors[r->nmirrors].url,
		    url)) == NULL)
			r->nmirrors++;
	}
	free(copy);
	if (msg == NULL && r->nmirrors == 0)
		msg = "needs at least one URL";
	return msg;
}

static const char *
config_set_registry(struct config_registry *r, const char *key,
    const char *value)
{
	if (strcmp(key, "url") == 0)
		return config_set_url(&r->url, value);
	if (strcmp(key, "ca_file") == 0)
		return config_set_nonempty(&r->ca_file, value);
	if (strcmp(key, "tls_verify") == 0)
		return config_set_bool(&r->tls_verify, value);
	if (strcmp(key, "auth") == 0)
		return config_set_auth(r, value);
	if (strcmp(key, "username_file") == 0)
		return config_set_nonempty(&r->username_file, value);
	if (strcmp(key, "password_file") == 0)
		return config_set_nonempty(&r->password_file, value);
	if (strcmp(key, "refresh_token_file") == 0)
		return config_set_nonempty(&r->refresh_token_file, value);
	if (strcmp(key, "client_id") == 0)
		return config_set_nonempty(&r->client_id, value);
	if (strcmp(key, "tenant") == 0)
		return config_set_nonempty(&r->tenant, value);
	if (strcmp(key, "imds_url") == 0)
		return config_set_url(&r->imds_url, value);
	if (strcmp(key, "imds_retry_s") == 0)
		return config_set_long(&r->imds_retry_s, value, 0, 600);
	if (strcmp(key, "rate") == 0)
		return config_set_rate(&r->rate, value);
	if (strcmp(key, "burst") == 0)
		return config_set_long(&r->burst, value, 1, 100000);
	if (strcmp(key, "max_wait_s") == 0)
		return config_set_long(&r->max_wait_s, value, 0, 3600);
	if (strcmp(key, "fleet_rate") == 0)
		return config_set_rate(&r->fleet_rate, value);
	if (strcmp(key, "fleet_nodes") == 0)
		return config_set_long(&r->fleet_nodes, value, 1, 100000);
	if (strcmp(key, "circuit_failures") == 0)
		return config_set_long(&r->circuit_failures, value, 0, 1000);
	if (strcmp(key, "circuit_open_s") == 0)
		return config_set_long(&r->circuit_open_s, value, 1, 3600);
	if (strcmp(key, "retries") == 0)
		return config_set_long(&r->retries, value, 0, 5);
	if (strcmp(key, "mirrors") == 0)
		return config_set_mirrors(r, value);
	if (strcmp(key, "mirror_token_file") == 0)
		return config_set_nonempty(&r->mirror_token_file, value);
	return "unknown key";
}

/* Items of a list: comma or space separated. */
#define CONFIG_LIST_SEP	", \t"

/* An upper bound on the items of a list, for one allocation. */
static size_t
config_list_count(const char *value)
{
	const char *tok;
	size_t n = 1;

	for (tok = strpbrk(value, CONFIG_LIST_SEP); tok != NULL;
	    tok = strpbrk(tok + 1, CONFIG_LIST_SEP))
		n++;
	return n;
}

/* "HOST:PORT, HOST:PORT ...": the key again replaces the list. */
static const char *
config_set_peers(struct config_fleet *f, const char *value)
{
	struct config_peer *p;
	char *copy, *tok, *last;
	const char *msg = NULL;

	config_peers_clear(f);
	if ((copy = strdup(value)) == NULL ||
	    (f->peers = calloc(config_list_count(value),
	    sizeof(*f->peers))) == NULL) {
		free(copy);
		return "out of memory";
	}
	for (tok = strtok_r(copy, CONFIG_LIST_SEP, &last); tok != NULL &&
	    msg == NULL; tok = strtok_r(NULL, CONFIG_LIST_SEP, &last)) {
		p = &f->peers[f->npeers];
		if ((msg = config_hostport(tok, &p->host, &p->port)) == NULL)
			f->npeers++;
	}
	free(copy);
	if (msg == NULL && f->npeers == 0)
		msg = "needs at least one HOST:PORT";
	return msg;
}

/* A DNS name (letters, digits, '-', '.'), as a headless Service's. */
static int
config_dns_name(const char *name)
{
	size_t i, len = strlen(name);

	if (len == 0 || len > 253)
		return 0;
	for (i = 0; i < len; i++)
		if (!(name[i] >= 'a' && name[i] <= 'z') &&
		    !(name[i] >= 'A' && name[i] <= 'Z') &&
		    !(name[i] >= '0' && name[i] <= '9') &&
		    name[i] != '-' && name[i] != '.')
			return 0;
	return 1;
}

/* "NAME, NAME ...": the key again replaces the list. */
static const char *
config_set_peers_dns(struct config_fleet *f, const char *value)
{
	char *copy, *tok, *last;
	const char *msg = NULL;

	config_peers_dns_clear(f);
	if ((copy = strdup(value)) == NULL ||
	    (f->peers_dns = calloc(config_list_count(value),
	    sizeof(*f->peers_dns))) == NULL) {
		free(copy);
		return "out of memory";
	}
	for (tok = strtok_r(copy, CONFIG_LIST_SEP, &last); tok != NULL &&
	    msg == NULL; tok = strtok_r(NULL, CONFIG_LIST_SEP, &last)) {
		if (!config_dns_name(tok))
			msg = "expected DNS names (no port: see peers_port)";
		else if ((f->peers_dns[f->npeers_dns] = strdup(tok)) == NULL)
			msg = "out of memory";
		else
			f->npeers_dns++;
	}
	free(copy);
	if (msg == NULL && f->npeers_dns == 0)
		msg = "needs at least one name";
	return msg;
}

/* IPv4[:PORT]: a DNS server by address (naming it would need DNS). */
static const char *
config_set_dns_server(struct config_fleet *f, const char *value)
{
	struct in_addr a;
	const char *msg;
	char *host;
	int port = 53;

	if (strchr(value, ':') != NULL) {
		if ((msg = config_hostport(value, &host, &port)) != NULL)
			return msg;
	} else if ((host = strdup(value)) == NULL)
		return "out of memory";
	if (inet_pton(AF_INET, host, &a) != 1) {
		free(host);
		return "expected an IPv4 address with an optional :PORT";
	}
	f->peers_dns_server_port = port;
	return config_replace(&f->peers_dns_server, host);
}

static const char *
config_set_fleet(struct config_fleet *f, const char *key, const char *value)
{
	const char *msg;
	long v;

	if (strcmp(key, "peers") == 0)
		return config_set_peers(f, value);
	if (strcmp(key, "peers_dns") == 0)
		return config_set_peers_dns(f, value);
	if (strcmp(key, "peers_dns_server") == 0)
		return config_set_dns_server(f, value);
	if (strcmp(key, "peers_port") == 0) {
		if ((msg = config_set_long(&v, value, 1, 65535)) == NULL)
			f->peers_port = (int)v;
		return msg;
	}
	if (strcmp(key, "peer_listen") == 0) {
		config_replace(&f->peer_listen_host, NULL);
		return config_hostport(value, &f->peer_listen_host,
		    &f->peer_listen_port);
	}
	if (strcmp(key, "peer_token_file") == 0)
		return config_set_nonempty(&f->peer_token_file, value);
	if (strcmp(key, "fanout") == 0)
		return config_set_long(&f->fanout, value, 1, 64);
	if (strcmp(key, "resolve_s") == 0)
		return config_set_long(&f->resolve_s, value, 1, 3600);
	if (strcmp(key, "stale_s") == 0)
		return config_set_long(&f->stale_s, value, 0, 86400);
	return "unknown key";
}

struct config_file_ctx {
	struct config	*cfg;
	char		 err[CONFIG_ERR_MAX];
};

static int
config_ini_handler(void *user, const char *section, const char *key,
    const char *value)
{
	struct config_file_ctx *ctx = user;
	struct config_registry *r;
	const char *msg;

	if (strcmp(section, "server") == 0)
		msg = config_set_server(ctx->cfg, key, value);
	else if (strcmp(section, "fleet") == 0)
		msg = config_set_fleet(&ctx->cfg->fleet, key, value);
	else if (strncmp(section, "registry ", 9) == 0) {
		if (!oci_host_valid(section + 9))
			msg = "registry name must be HOST or HOST:PORT";
		else if ((r = config_registry_get(ctx->cfg, section + 9)) ==
		    NULL)
			msg = "too many registries";
		else
			msg = config_set_registry(r, key, value);
	} else
		msg = "unknown section (expected [server], [fleet] or "
		    "[registry HOST])";
	if (msg == NULL)
		return 1;
	/* inih reports only the first error's line: keep its message. */
	if (ctx->err[0] == '\0')
		snprintf(ctx->err, sizeof(ctx->err), "[%s] %s: %s", section,
		    key, msg);
	return 0;
}

int
config_load_file(struct config *cfg, const char *path, char *err,
    size_t errlen)
{
	struct config_file_ctx ctx = { .cfg = cfg };
	int rc;

	rc = ini_parse(path, config_ini_handler, &ctx);
	if (rc == 0)
		return 0;
	if (rc == -1)
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
	else if (rc == -2)
		snprintf(err, errlen, "%s: out of memory", path);
	else
		snprintf(err, errlen, "%s:%d: %s", path, rc,
		    ctx.err[0] != '\0' ? ctx.err : "syntax error");
	return -1;
}

static const char *
config_flag_registry(struct config *cfg, const char *value)
{
	const char *eq = strchr(value, '=');
	struct config_registry *r;
	char name[OCI_NAME_MAX + 1];
	size_t nlen;

	if (eq == NULL)
		return "expected HOST=URL";
	nlen = (size_t)(eq - value);
	if (nlen == 0 || nlen >= sizeof(name))
		return "expected HOST=URL";
	memcpy(name, value, nlen);
	name[nlen] = '\0';
	if (!oci_host_valid(name))
		return "HOST must be a registry host name, with an optional :PORT";
	if ((r = config_registry_get(cfg, name)) == NULL)
		return "too many registries";
	return config_set_url(&r->url, eq + 1);
}

/*
 * The flags of serve: most set the [server] key they name; --config and
 * --help are the parser's own. One table, so that an unknown flag is
 * known as such before its value is looked for.
 */
static const struct {
	const char	*f_flag;
	const char	*f_key;		/* [server] key, or NULL: special */
} config_flags[] = {
	{ "--listen", "listen" },
	{ "--metrics-listen", "metrics_listen" },
	{ "--cache-dir", "cache_dir" },
	{ "--cache-max-size", "cache_max_size" },
	{ "--tag-ttl", "tag_ttl_s" },
	{ "--log", "log" },
	{ "--log-level", "log_level" },
	{ "--registry", NULL },
	/* [fleet] peer_listen: a DaemonSet's node IP, from the downward API. */
	{ "--peer-listen", NULL },
	{ "--config", NULL },
	{ "--help", NULL },
};

static int
config_flag_known(const char *flag)
{
	size_t i;

	for (i = 0; i < sizeof(config_flags) / sizeof(config_flags[0]); i++)
		if (strcmp(flag, config_flags[i].f_flag) == 0)
			return 1;
	return 0;
}

/* Apply one flag; NULL when it was fine. */
static const char *
config_flag(struct config *cfg, const char *flag, const char *value)
{
	size_t i;

	if (strcmp(flag, "--registry") == 0)
		return config_flag_registry(cfg, value);
	if (strcmp(flag, "--peer-listen") == 0)
		return config_set_fleet(&cfg->fleet, "peer_listen", value);
	for (i = 0; i < sizeof(config_flags) / sizeof(config_flags[0]); i++)
		if (config_flags[i].f_key != NULL &&
		    strcmp(flag, config_flags[i].f_flag) == 0)
			return config_set_server(cfg, config_flags[i].f_key,
			    value);
	return "unknown option";
}

static int
config_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

/*
 * Split argv[i] into flag and value ("--flag value" or "--flag=value").
 * Returns the index of the last argument used, or -1.
 */
static int
config_next_flag(int argc, char **argv, int i, char *flag, size_t flaglen,
    const char **value, char *err, size_t errlen)
{
	const char *arg = argv[i], *eq;

	if (strncmp(arg, "--", 2) != 0)
		return config_err(err, errlen, "%s: unexpected argument", arg);
	eq = strchr(arg, '=');
	if (eq != NULL) {
		if ((size_t)(eq - arg) >= flaglen)
			return config_err(err, errlen, "%s: unknown option", arg);
		memcpy(flag, arg, (size_t)(eq - arg));
		flag[eq - arg] = '\0';
		*value = eq + 1;
		return i;
	}
	snprintf(flag, flaglen, "%s", arg);
	if (!config_flag_known(flag))
		return config_err(err, errlen, "%s: unknown option", flag);
	if (strcmp(flag, "--help") == 0) {
		*value = NULL;
		return i;
	}
	if (i + 1 >= argc)
		return config_err(err, errlen, "%s: needs a value", flag);
	*value = argv[i + 1];
	return i + 1;
}

int
config_parse_args(struct config *cfg, int argc, char **argv, char *err,
    size_t errlen)
{
	const char *value = NULL, *msg;
	char flag[32];
	int i, next, pass;

	/* Pass 0 reads --config (and --help) so that flags override it. */
	for (pass = 0; pass < 2; pass++) {
		for (i = 1; i < argc; i = next + 1) {
			next = config_next_flag(argc, argv, i, flag,
			    sizeof(flag), &value, err, errlen);
			if (next == -1)
				return -1;
			if (strcmp(flag, "--help") == 0)
				return 1;
			if (strcmp(flag, "--config") == 0) {
				if (pass == 0 &&
				    config_load_file(cfg, value, err, errlen))
					return -1;
				continue;
			}
			if (pass == 1 &&
			    (msg = config_flag(cfg, flag, value)) != NULL)
				return config_err(err, errlen, "%s: %s", flag,
				    msg);
		}
	}
	return 0;
}

/*
 * The settings each auth uses; another auth's settings are an error
 * rather than silently ignored (a typo in "auth" would otherwise pull
 * anonymously).
 */
static int
config_check_auth(const struct config_registry *r, char *err, size_t errlen)
{
	const struct {
		const char	*key;
		const char	*value;
		enum config_auth kind;
		int		 required;
	} keys[] = {
		{ "username_file", r->username_file, CONFIG_AUTH_BASIC, 1 },
		{ "password_file", r->password_file, CONFIG_AUTH_BASIC, 1 },
		{ "refresh_token_file", r->refresh_token_file,
		    CONFIG_AUTH_ACR_REFRESH_TOKEN, 1 },
		{ "client_id", r->client_id, CONFIG_AUTH_MANAGED_IDENTITY, 0 },
		{ "tenant", r->tenant, CONFIG_AUTH_MANAGED_IDENTITY, 0 },
		{ "imds_url", r->imds_url, CONFIG_AUTH_MANAGED_IDENTITY, 0 },
	};
	size_t i;

	for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		if (keys[i].value == NULL && keys[i].required &&
		    r->auth_kind == keys[i].kind)
			return config_err(err, errlen, "[registry %s] %s: "
			    "missing (auth = %s)", r->name, keys[i].key,
			    config_auth_name(keys[i].kind));
		if (keys[i].value != NULL && r->auth_kind != keys[i].kind)
			return config_err(err, errlen, "[registry %s] %s: only "
			    "used with auth = %s", r->name, keys[i].key,
			    config_auth_name(keys[i].kind));
	}
	return 0;
}

/* Only this node can connect: 127.0.0.0/8, ::1 (or v4-mapped), localhost. */
static int
config_loopback(const char *host)
{
	struct in6_addr a6;
	struct in_addr a4;

	if (strcasecmp(host, "localhost") == 0)
		return 1;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return ntohl(a4.s_addr) >> 24 == 127;
	if (inet_pton(AF_INET6, host, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6) ||
		    (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
	return 0;
}

/* Every address of the node. */
static int
config_wildcard(const char *host)
{
	return strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0;
}

int
config_fleet_on(const struct config *cfg)
{
	return cfg->fleet.npeers > 0 || cfg->fleet.npeers_dns > 0;
}

/*
 * A fleet needs its own listener (peers never reach containerd's) and the
 * token that keeps the rest of the network off it.
 */
static int
config_check_fleet(const struct config *cfg, char *err, size_t errlen)
{
	const struct config_fleet *f = &cfg->fleet;

	if (f->peers_dns_server != NULL && f->npeers_dns == 0)
		return config_err(err, errlen, "[fleet] peers_dns_server: only "
		    "used with peers_dns");
	if (!config_fleet_on(cfg)) {
		if (f->peer_listen_host != NULL || f->peer_token_file != NULL ||
		    f->peers_port != 0)
			return config_err(err, errlen, "[fleet] %s: only used "
			    "with peers or peers_dns", f->peer_listen_host !=
			    NULL ? "peer_listen" : f->peer_token_file != NULL ?
			    "peer_token_file" : "peers_port");
		return 0;
	}
	if (f->peer_listen_host == NULL)
		return config_err(err, errlen, "[fleet] peer_listen: missing "
		    "(the address peers reach this node on)");
	if (f->peer_token_file == NULL)
		return config_err(err, errlen, "[fleet] peer_token_file: missing "
		    "(peers send and require the cluster's token)");
	if (f->peer_listen_port == cfg->listen_port &&
	    (strcmp(f->peer_listen_host, cfg->listen_host) == 0 ||
	    !config_loopback(cfg->listen_host) || config_wildcard(
	    f->peer_listen_host)))
		return config_err(err, errlen, "[fleet] peer_listen: must not "
		    "share [server] listen's address and port");
	return 0;
}

int
config_check(const struct config *cfg, char *err, size_t errlen)
{
	size_t i;

	/* Off loopback, any host on the network could pull as the node. */
	if (!config_loopback(cfg->listen_host) &&
	    cfg->client_token_file == NULL && cfg->client_ca_file == NULL)
		return config_err(err, errlen, "[server] listen: %s is not a "
		    "loopback address: set [server] client_token_file or "
		    "client_ca_file too (clients then prove who they are)",
		    cfg->listen_host);
	if ((cfg->tls_cert_file == NULL) != (cfg->tls_key_file == NULL))
		return config_err(err, errlen, "[server] %s: missing (TLS "
		    "needs tls_cert_file and tls_key_file)",
		    cfg->tls_cert_file == NULL ? "tls_cert_file" :
		    "tls_key_file");
	if (cfg->client_ca_file != NULL && cfg->tls_cert_file == NULL)
		return config_err(err, errlen, "[server] client_ca_file: only "
		    "used with TLS (tls_cert_file and tls_key_file)");

	if (cfg->metrics_listen_host != NULL &&
	    cfg->metrics_listen_port == cfg->listen_port &&
	    strcmp(cfg->metrics_listen_host, cfg->listen_host) == 0)
		return config_err(err, errlen, "[server] metrics_listen: must "
		    "differ from listen (it serves /metrics without the "
		    "client token)");
	if (config_check_fleet(cfg, err, errlen) == -1)
		return -1;
	if (cfg->cache_low_pct >= cfg->cache_high_pct)
		return config_err(err, errlen, "[server] cache_low_pct: must be "
		    "below cache_high_pct (%d)", cfg->cache_high_pct);
	if (cfg->nregistries == 0)
		return config_err(err, errlen, "no registry configured "
		    "(--registry HOST=URL or a [registry HOST] section)");
	for (i = 0; i < cfg->nregistries; i++) {
		if (cfg->registries[i].url == NULL)
			return config_err(err, errlen,
			    "[registry %s] url: missing",
			    cfg->registries[i].name);
		if (config_check_auth(&cfg->registries[i], err, errlen) == -1)
			return -1;
		if (cfg->registries[i].mirror_token_file != NULL &&
		    cfg->registries[i].nmirrors == 0)
			return config_err(err, errlen, "[registry %s] "
			    "mirror_token_file: only used with mirrors",
			    cfg->registries[i].name);
	}
	return 0;
}

const struct config_registry *
config_registry_find(const struct config *cfg, const char *ns)
{
	size_t i;

	if (ns == NULL)
		return cfg->nregistries > 0 ? &cfg->registries[0] : NULL;
	for (i = 0; i < cfg->nregistries; i++)
		if (strcasecmp(cfg->registries[i].name, ns) == 0)
			return &cfg->registries[i];
	return NULL;
}
