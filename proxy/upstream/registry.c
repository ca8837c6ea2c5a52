/*
 * registry: the run-time side of a configured registry, and the one place
 * where a client's route becomes an upstream request.
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "circuit.h"
#include "config.h"
#include "fleet.h"
#include "log.h"
#include "ratelimit.h"
#include "rendezvous.h"
#include "registry.h"

struct registry {
	struct registry_set		*r_set;
	const struct config		*r_cfg;
	const struct config_registry	*r_conf;
	struct auth			*r_auth;
	struct ratelimit		*r_pace;
	struct circuit			*r_circuit;
	struct upstream_mirror		 r_mirrors[CONFIG_MIRROR_MAX];
	size_t				 r_nmirrors;
	char				*r_mirror_authorization;
};

struct registry_set {
	size_t			 rs_n;
	struct registry		*rs_regs[CONFIG_REGISTRY_MAX];
	long			 rs_held;	/* registry_hold()s not released */
	struct event		*rs_unused;	/* retired and not held */
	void			(*rs_unused_cb)(void *);
	void			*rs_unused_arg;
	/* With [fleet] members: */
	struct fleet		*rs_fleet;
	char			*rs_peer_authorization;	/* "Bearer <token>" */
	char			 rs_peer_header[16 + FLEET_ID_MAX];
};

/* "Bearer <token>", as asprintf'd, or NULL with err set. */
static char *
registry_bearer(const char *file, const char *what, char *err,
    size_t errlen)
{
	char why[512], *token, *value;

	if ((token = auth_read_secret(file, why, sizeof(why))) == NULL) {
		snprintf(err, errlen, "%s: %.300s", what, why);
		return NULL;
	}
	if (asprintf(&value, "Bearer %s", token) == -1) {
		value = NULL;
		snprintf(err, errlen, "out of memory");
	}
	auth_secret_free(token);
	return value;
}

/* "Bearer <token>" for the registry's mirrors, read once at start. */
static int
registry_mirror_token(struct registry *r, char *err, size_t errlen)
{
	const struct config_registry *conf = r->r_conf;
	char what[512];

	if (conf->mirror_token_file == NULL)
		return 0;
	snprintf(what, sizeof(what), "[registry %s] mirror_token_file",
	    conf->name);
	r->r_mirror_authorization = registry_bearer(conf->mirror_token_file,
	    what, err, errlen);
	return r->r_mirror_authorization != NULL ? 0 : -1;
}

static int registry_fleet_new(struct registry_set *, struct event_base *,
    const struct config *, char *, size_t);

static void
registry_close(struct registry *r)
{
	auth_free(r->r_auth);
	r->r_auth = NULL;
	auth_secret_free(r->r_mirror_authorization);
	r->r_mirror_authorization = NULL;
}

static void
registry_free(struct registry *r)
{
	size_t m;

	if (r == NULL)
		return;
	registry_close(r);
	ratelimit_free(r->r_pace);
	circuit_free(r->r_circuit);
	for (m = 0; m < r->r_nmirrors; m++)
		circuit_free(r->r_mirrors[m].circuit);
	free(r);
}

static struct registry *
registry_new(struct event_base *base, struct upstream *up,
    const struct config *cfg, const struct config_registry *conf,
    char *err, size_t errlen)
{
	struct registry *r;
	size_t m;

	snprintf(err, errlen, "[registry %s] out of memory", conf->name);
	if ((r = calloc(1, sizeof(*r))) == NULL)
		return NULL;
	r->r_cfg = cfg;
	r->r_conf = conf;
	/* A mirror's metrics go by its URL. */
	for (m = 0; m < conf->nmirrors; m++, r->r_nmirrors++) {
		r->r_mirrors[m].url = conf->mirrors[m].url;
		if ((r->r_mirrors[m].circuit = circuit_new(conf->mirrors[m].url,
		    conf->circuit_failures, conf->circuit_open_s)) == NULL)
			goto fail;
	}
	if ((r->r_pace = ratelimit_new(base, conf->name, conf->rate,
	    (double)conf->burst, conf->max_wait_s)) == NULL ||
	    (r->r_circuit = circuit_new(conf->name, conf->circuit_failures,
	    conf->circuit_open_s)) == NULL)
		goto fail;
	/*
	 * Until the fleet counts the live nodes (it calls this again):
	 * fleet_nodes, else [fleet] peers (the same list on every node).
	 */
	ratelimit_fleet(r->r_pace, conf->fleet_rate, (unsigned int)
	    (conf->fleet_nodes > 0 ? (size_t)conf->fleet_nodes :
	    cfg->fleet.npeers));
	if ((r->r_auth = auth_new(base, up, r->r_pace, cfg, conf, err,
	    errlen)) == NULL || registry_mirror_token(r, err, errlen) == -1)
		goto fail;
	return r;
fail:
	registry_free(r);
	return NULL;
}

static void
registry_set_unused(evutil_socket_t fd, short what, void *arg)
{
	struct registry_set *set = arg;

	(void)fd;
	(void)what;
	if (set->rs_held == 0)	/* else the last release comes back here */
		set->rs_unused_cb(set->rs_unused_arg);
}

struct registry_set *
registry_set_new(struct event_base *base, struct upstream *up,
    const struct config *cfg, char *err, size_t errlen)
{
	struct registry_set *set;

	if ((set = calloc(1, sizeof(*set))) == NULL ||
	    (set->rs_unused = event_new(base, -1, 0, registry_set_unused,
	    set)) == NULL) {
		free(set);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	for (; set->rs_n < cfg->nregistries; set->rs_n++) {
		if ((set->rs_regs[set->rs_n] = registry_new(base, up, cfg,
		    &cfg->registries[set->rs_n], err, errlen)) == NULL)
			goto fail;
		set->rs_regs[set->rs_n]->r_set = set;
	}
	if (config_fleet_on(cfg) && registry_fleet_new(set, base, cfg, err,
	    errlen) == -1)
		goto fail;
	return set;
fail:
	registry_set_close(set);
	registry_set_free(set);
	return NULL;
}

/*
 * The members changed: each registry's share of its fleet_rate follows
 * the live count (none: the last count stays, rather than one node
 * taking the whole budget while DNS is out), and this node's identity,
 * which peers are told, may have come or gone.
 */
static void
registry_fleet_changed(struct fleet *f, void *arg)
{
	struct registry_set *set = arg;
	const char *self = fleet_self_id(f);
	size_t i;

	if (fleet_size(f) > 0)
		for (i = 0; i < set->rs_n; i++)
			ratelimit_fleet(set->rs_regs[i]->r_pace,
			    set->rs_regs[i]->r_conf->fleet_rate,
			    (unsigned int)fleet_size(f));

	snprintf(set->rs_peer_header, sizeof(set->rs_peer_header),
	    "Pullproxy-Peer: %s", self != NULL ? self : "");
}

/* Membership (on a resolver thread) and the peer token, read once. */
static int
registry_fleet_new(struct registry_set *set, struct event_base *base,
    const struct config *cfg, char *err, size_t errlen)
{
	if ((set->rs_peer_authorization = registry_bearer(
	    cfg->fleet.peer_token_file, "[fleet] peer_token_file", err,
	    errlen)) == NULL ||
	    (set->rs_fleet = fleet_new(base, &cfg->fleet, err, errlen)) ==
	    NULL)
		return -1;
	snprintf(set->rs_peer_header, sizeof(set->rs_peer_header),
	    "Pullproxy-Peer: ");
	fleet_on_change(set->rs_fleet, registry_fleet_changed, set);
	return 0;
}

struct fleet *
registry_set_fleet(const struct registry_set *set)
{
	return set->rs_fleet;
}

void
registry_set_retire(struct registry_set *set, void (*unused)(void *),
    void *arg)
{
	set->rs_unused_cb = unused;
	set->rs_unused_arg = arg;
	if (set->rs_held == 0)
		event_active(set->rs_unused, 0, 0);
}

void
registry_hold(struct registry *reg)
{
	reg->r_set->rs_held++;
}

void
registry_release(struct registry *reg)
{
	struct registry_set *set = reg->r_set;

	if (--set->rs_held == 0 && set->rs_unused_cb != NULL)
		event_active(set->rs_unused, 0, 0);
}

void
registry_set_close(struct registry_set *set)
{
	size_t i;

	if (set == NULL)
		return;
	for (i = 0; i < set->rs_n; i++)
		registry_close(set->rs_regs[i]);
}

void
registry_set_free(struct registry_set *set)
{
	size_t i;

	if (set == NULL)
		return;
	for (i = 0; i < set->rs_n; i++)
		registry_free(set->rs_regs[i]);
	if (set->rs_unused != NULL)
		event_free(set->rs_unused);
	fleet_free(set->rs_fleet);
	auth_secret_free(set->rs_peer_authorization);
	free(set);
}

void
registry_set_sample(const struct registry_set *set)
{
	const struct registry *r;
	size_t i, m;

	for (i = 0; i < set->rs_n; i++) {
		r = set->rs_regs[i];
		circuit_sample(r->r_circuit);
		for (m = 0; m < r->r_nmirrors; m++)
			circuit_sample(r->r_mirrors[m].circuit);
	}
}

struct registry *
registry_set_find(const struct registry_set *set, const char *ns)
{
	size_t i;

	if (ns == NULL)
		return set->rs_n > 0 ? set->rs_regs[0] : NULL;
	for (i = 0; i < set->rs_n; i++)
		if (strcasecmp(set->rs_regs[i]->r_conf->name, ns) == 0)
			return set->rs_regs[i];
	return NULL;
}

const struct config_registry *
registry_config(const struct registry *reg)
{
	return reg->r_conf;
}

const char *
registry_name(const struct registry *reg)
{
	return reg->r_conf->name;
}

struct fleet *
registry_fleet(const struct registry *reg)
{
	return reg->r_set->rs_fleet;
}

struct auth *
registry_auth(const struct registry *reg)
{
	return reg->r_auth;
}

long
registry_retry_after_s(const struct registry *reg)
{
	return ratelimit_retry_after_s(reg->r_pace);
}

/*
 * The route's URL at the registry. tags/list paging is written from the
 * route's parsed values (a number and a tag: nothing to escape), never
 * passed on as the client wrote it.
 */
static char *
registry_route_url(const struct registry *reg, const struct oci_route *rt)
{
	static const char *kinds[] = { [OCI_ROUTE_MANIFEST] = "manifests",
	    [OCI_ROUTE_BLOB] = "blobs" };
	const char *base = reg->r_conf->url;
	char n[32] = "", *url = NULL;
	int len;

	if (rt->kind == OCI_ROUTE_TAGS) {
		if (rt->tags_n >= 0)
			snprintf(n, sizeof(n), "n=%ld", rt->tags_n);
		len = asprintf(&url, "%s/v2/%s/tags/list%s%s%s%s%s", base,
		    rt->name, n[0] != '\0' || rt->tags_last[0] != '\0' ? "?" :
		    "", n, n[0] != '\0' && rt->tags_last[0] != '\0' ? "&" : "",
		    rt->tags_last[0] != '\0' ? "last=" : "", rt->tags_last);
	} else if (rt->kind == OCI_ROUTE_MANIFEST || rt->kind == OCI_ROUTE_BLOB)
		len = asprintf(&url, "%s/v2/%s/%s/%s", base, rt->name,
		    kinds[rt->kind], rt->reference);
	else
		len = asprintf(&url, "%s/v2/", base);
	return len < 0 ? NULL : url;
}

int
registry_req_init(struct registry_req *rr, struct registry *reg,
    const struct oci_route *route)
{
	const struct config_registry *conf = reg->r_conf;
	struct upstream_req *u = &rr->ureq;

	memset(rr, 0, sizeof(*rr));
	if ((rr->url = registry_route_url(reg, route)) == NULL)
		return -1;
	if (route->kind != OCI_ROUTE_BASE)
		auth_scope_name(route->name, rr->scope, sizeof(rr->scope));
	u->url = rr->url;
	u->scope = rr->scope;
	u->ca_file = conf->ca_file;
	u->tls_verify = conf->tls_verify;
	u->auth = auth_upstream(reg->r_auth);
	u->ratelimit = reg->r_pace;
	/* Blobs wait behind what unblocks pods: tags and manifests. */
	u->rlclass = route->kind == OCI_ROUTE_BLOB ? RATELIMIT_LOW :
	    RATELIMIT_HIGH;
	u->circuit = reg->r_circuit;
	u->retries = (int)conf->retries;	/* GET and HEAD only */
	u->registry = conf->name;
	u->path = rr->url + strlen(conf->url);
	u->mirrors = reg->r_mirrors;
	u->nmirrors = reg->r_nmirrors;
	u->mirror_authorization = reg->r_mirror_authorization;
	u->connect_timeout_ms = reg->r_cfg->connect_timeout_ms;
	u->stall_timeout_s = reg->r_cfg->stall_timeout_s;
	return 0;
}

static void
registry_peer_ref(void *hold)
{
	fleet_peer_ref(hold);
}

static void
registry_peer_unref(void *hold)
{
	fleet_peer_unref(hold);
}

void
registry_req_fleet(struct registry_req *rr, struct registry *reg,
    const struct oci_route *route)
{
	const struct registry_set *set = reg->r_set;
	struct upstream_req *u = &rr->ureq;
	struct upstream_mirror *o;
	uint64_t key;
	size_t i;
	int mine;

	if (set->rs_fleet == NULL || rr->npeers > 0)
		return;
	if (route->kind == OCI_ROUTE_BLOB || (route->kind ==
	    OCI_ROUTE_MANIFEST && oci_digest_valid(route->reference,
	    strlen(route->reference))))
		key = rendezvous_digest(route->reference);
	else if (route->kind == OCI_ROUTE_MANIFEST)
		key = rendezvous_tag(reg->r_conf->name, route->name,
		    route->reference);
	else
		return;
	/* The owner fetches from the registry; the others ask it. */
	if ((rr->npeers = fleet_candidates(set->rs_fleet, key, rr->peers,
	    REGISTRY_PEERS_ASK, &mine)) > 0 && mine)
		rr->npeers = 0;
	for (i = 0; i < rr->npeers; i++) {
		o = &rr->origins[i];
		fleet_peer_ref(rr->peers[i]);
		o->url = fleet_peer_url(rr->peers[i]);
		o->circuit = fleet_peer_circuit(rr->peers[i]);
		o->authorization = set->rs_peer_authorization;
		o->header = set->rs_peer_header;
		o->stall_timeout_s = reg->r_cfg->stall_timeout_s < FLEET_STALL_S ?
		    reg->r_cfg->stall_timeout_s : FLEET_STALL_S;
		o->hop_ok = fleet_peer_hop_ok;
		o->hold = rr->peers[i];
		o->ref = registry_peer_ref;
		o->unref = registry_peer_unref;
	}
	if (rr->npeers == 0)
		return;
	/* The mirrors' own Authorization stays theirs. */
	for (i = 0; i < u->nmirrors; i++)
		rr->origins[rr->npeers + i] = u->mirrors[i];
	u->mirrors = rr->origins;
	u->nmirrors += rr->npeers;
}

void
registry_req_clear(struct registry_req *rr)
{
	size_t i;

	free(rr->url);
	rr->url = NULL;
	for (i = 0; i < rr->npeers; i++)
		fleet_peer_unref(rr->peers[i]);
	rr->npeers = 0;
}
