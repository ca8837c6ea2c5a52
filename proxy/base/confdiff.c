/*
 * confdiff: the config's fields compared by tables of offsets. A key added
 * to config.h belongs in one of the tables: a registry's (applied by a
 * reload), the server's that requests read (applied), or the restart
 * ones (refused).
 */
#include <stddef.h>
#include <string.h>
#include <strings.h>

#include "confdiff.h"
#include "config.h"

enum confdiff_type { CD_STR, CD_INT, CD_LONG, CD_ULL, CD_DOUBLE };

struct confdiff_key {
	const char		*name;
	size_t			 off;
	enum confdiff_type	 type;
};

#define S(f, n)	{ n, offsetof(struct config, f), CD_STR }
#define I(f, n)	{ n, offsetof(struct config, f), CD_INT }
#define L(f, n)	{ n, offsetof(struct config, f), CD_LONG }

/* Bound at start: listeners, the cache, the log, clients, the fleet. */
static const struct confdiff_key confdiff_restart_keys[] = {
	S(listen_host, "[server] listen"), I(listen_port, "[server] listen"),
	S(cache_dir, "[server] cache_dir"),
	{ "[server] cache_max_size", offsetof(struct config, cache_max_bytes),
	    CD_ULL },
	I(cache_high_pct, "[server] cache_high_pct"),
	I(cache_low_pct, "[server] cache_low_pct"),
	L(tag_ttl_s, "[server] tag_ttl_s"),
	S(log_file, "[server] log"), I(log_level, "[server] log_level"),
	L(shutdown_timeout_s, "[server] shutdown_timeout_s"),
	S(platform, "[server] platform"),
	S(client_token_file, "[server] client_token_file"),
	S(tls_cert_file, "[server] tls_cert_file"),
	S(tls_key_file, "[server] tls_key_file"),
	S(client_ca_file, "[server] client_ca_file"),
	L(header_timeout_s, "[server] header_timeout_s"),
	S(metrics_listen_host, "[server] metrics_listen"),
	I(metrics_listen_port, "[server] metrics_listen"),
	L(idle_timeout_s, "[server] idle_timeout_s"),
	I(fleet.peers_port, "[fleet] peers_port"),
	S(fleet.peers_dns_server, "[fleet] peers_dns_server"),
	I(fleet.peers_dns_server_port, "[fleet] peers_dns_server"),
	S(fleet.peer_listen_host, "[fleet] peer_listen"),
	I(fleet.peer_listen_port, "[fleet] peer_listen"),
	S(fleet.peer_token_file, "[fleet] peer_token_file"),
	L(fleet.fanout, "[fleet] fanout"),
	L(fleet.resolve_s, "[fleet] resolve_s"),
	L(fleet.stale_s, "[fleet] stale_s"),
};

/* Read by each registry's requests: a new registry set takes them. */
static const struct confdiff_key confdiff_server_keys[] = {
	L(connect_timeout_ms, "connect_timeout_ms"),
	L(stall_timeout_s, "stall_timeout_s"),
};

#undef S
#undef I
#undef L
#define S(f)	{ #f, offsetof(struct config_registry, f), CD_STR }
#define I(f)	{ #f, offsetof(struct config_registry, f), CD_INT }
#define L(f)	{ #f, offsetof(struct config_registry, f), CD_LONG }

static const struct confdiff_key confdiff_registry_keys[] = {
	S(url), S(ca_file), I(tls_verify),
	{ "auth", offsetof(struct config_registry, auth_kind), CD_INT },
	S(username_file), S(password_file), S(refresh_token_file),
	S(client_id), S(tenant), S(imds_url), L(imds_retry_s),
	{ "rate", offsetof(struct config_registry, rate), CD_DOUBLE },
	L(burst), L(max_wait_s),
	{ "fleet_rate", offsetof(struct config_registry, fleet_rate),
	    CD_DOUBLE },
	L(fleet_nodes), L(circuit_failures), L(circuit_open_s),
	L(retries), S(mirror_token_file),
};

#undef S
#undef I
#undef L
#define NKEYS(t)	(sizeof(t) / sizeof((t)[0]))

static int
confdiff_differs(const void *a, const void *b, const struct confdiff_key *k)
{
	const char *pa = (const char *)a + k->off, *pb = (const char *)b + k->off;
	const char *sa, *sb;

	switch (k->type) {
	case CD_STR:
		memcpy(&sa, pa, sizeof(sa));
		memcpy(&sb, pb, sizeof(sb));
		return (sa == NULL) != (sb == NULL) ||
		    (sa != NULL && strcmp(sa, sb) != 0);
	case CD_INT:
		return memcmp(pa, pb, sizeof(int)) != 0;
	case CD_LONG:
		return memcmp(pa, pb, sizeof(long)) != 0;
	case CD_ULL:
		return memcmp(pa, pb, sizeof(unsigned long long)) != 0;
	case CD_DOUBLE:
		return memcmp(pa, pb, sizeof(double)) != 0;
	}
	return 1;
}

static int
confdiff_fleet_members(const struct config *a, const struct config *b)
{
	const struct config_fleet *fa = &a->fleet, *fb = &b->fleet;
	size_t i;

	if (fa->npeers != fb->npeers || fa->npeers_dns != fb->npeers_dns)
		return 1;
	for (i = 0; i < fa->npeers; i++)
		if (strcmp(fa->peers[i].host, fb->peers[i].host) != 0 ||
		    fa->peers[i].port != fb->peers[i].port)
			return 1;
	for (i = 0; i < fa->npeers_dns; i++)
		if (strcmp(fa->peers_dns[i], fb->peers_dns[i]) != 0)
			return 1;
	return 0;
}

const char *
confdiff_restart(const struct config *old, const struct config *new)
{
	size_t i;

	for (i = 0; i < NKEYS(confdiff_restart_keys); i++)
		if (confdiff_differs(old, new, &confdiff_restart_keys[i]))
			return confdiff_restart_keys[i].name;
	return confdiff_fleet_members(old, new) ? "[fleet] peers" : NULL;
}

/* The keys of a registry's section that differ; an empty array if none. */
static json_t *
confdiff_registry(const struct config_registry *a,
    const struct config_registry *b)
{
	json_t *keys = json_array();
	size_t i;
	int mirrors = a->nmirrors != b->nmirrors;

	for (i = 0; keys != NULL && i < NKEYS(confdiff_registry_keys); i++)
		if (confdiff_differs(a, b, &confdiff_registry_keys[i]))
			json_array_append_new(keys, json_string(
			    confdiff_registry_keys[i].name));
	for (i = 0; !mirrors && i < a->nmirrors; i++)
		mirrors = strcmp(a->mirrors[i].url, b->mirrors[i].url) != 0;
	if (keys != NULL && mirrors)
		json_array_append_new(keys, json_string("mirrors"));
	return keys;
}

static const struct config_registry *
confdiff_find(const struct config *cfg, const char *name)
{
	size_t i;

	for (i = 0; i < cfg->nregistries; i++)
		if (strcasecmp(cfg->registries[i].name, name) == 0)
			return &cfg->registries[i];
	return NULL;
}

/* Add key: v to o, unless v is an empty array or object. */
static void
confdiff_set(json_t *o, const char *key, json_t *v)
{
	if (v != NULL && json_is_array(v) && json_array_size(v) == 0)
		json_decref(v);
	else if (v != NULL && json_is_object(v) && json_object_size(v) == 0)
		json_decref(v);
	else
		json_object_set_new(o, key, v);
}

json_t *
confdiff_changes(const struct config *old, const struct config *new)
{
	json_t *o, *added, *removed, *changed, *server, *keys;
	const struct config_registry *r, *was;
	size_t i;

	o = json_object();
	added = json_array();
	removed = json_array();
	changed = json_object();
	server = json_array();
	if (o == NULL || added == NULL || removed == NULL || changed == NULL ||
	    server == NULL) {
		json_decref(o);
		json_decref(added);
		json_decref(removed);
		json_decref(changed);
		json_decref(server);
		return NULL;
	}
	for (i = 0; i < new->nregistries; i++) {
		r = &new->registries[i];
		if ((was = confdiff_find(old, r->name)) == NULL)
			json_array_append_new(added, json_string(r->name));
		else if ((keys = confdiff_registry(was, r)) != NULL)
			confdiff_set(changed, r->name, keys);
	}
	for (i = 0; i < old->nregistries; i++)
		if (confdiff_find(new, old->registries[i].name) == NULL)
			json_array_append_new(removed,
			    json_string(old->registries[i].name));
	for (i = 0; i < NKEYS(confdiff_server_keys); i++)
		if (confdiff_differs(old, new, &confdiff_server_keys[i]))
			json_array_append_new(server, json_string(
			    confdiff_server_keys[i].name));
	confdiff_set(o, "added", added);
	confdiff_set(o, "removed", removed);
	confdiff_set(o, "changed", changed);
	confdiff_set(o, "server", server);
	return o;
}
