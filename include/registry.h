/*
 * registry: a configured registry at run time. Built from its read-only
 * config section, it owns what pullproxy keeps about that registry while
 * it runs: the identity (auth.h), the pace (ratelimit.h), the breaker
 * (circuit.h), and the mirrors asked before it, each with its own breaker
 * and the mirrors' token.
 *
 * Every upstream request for a client's route is made here, by
 * registry_req_init: the URL, the repository scope the token needs and
 * the rate class come from the route itself, never from parsing a URL.
 *
 * A reload builds a new set and retires the old one, which lives on
 * while requests hold its registries (registry_hold/registry_release):
 * transfers in flight keep their identity, pace and breaker to the end.
 */
#ifndef PP_REGISTRY_H
#define PP_REGISTRY_H

#include <stddef.h>

#include "config.h"
#include "oci.h"
#include "upstream.h"

struct auth;
struct config;
struct config_registry;
struct event_base;
struct fleet;
struct fleet_peer;
struct registry;
struct registry_set;

/*
 * The run-time registries of cfg, in its order. NULL with err set (one
 * line naming the registry) when one cannot be made, such as a secret
 * file that cannot be read.
 */
struct registry_set *registry_set_new(struct event_base *base,
    struct upstream *up, const struct config *cfg, char *err,
    size_t errlen);
/*
 * Teardown in two steps around upstream_free: close drops the identities
 * (their token fetches are transfers: cancel them while the engine
 * lives); free comes after upstream_free, which takes the transfers still
 * queued out of the pace queues.
 */
void registry_set_close(struct registry_set *set);
void registry_set_free(struct registry_set *set);
/*
 * No new request will use set: once no registry of it is held, unused(arg)
 * is called from the loop (never from inside registry_release), where the
 * owner closes and frees it.
 */
void registry_set_retire(struct registry_set *set, void (*unused)(void *),
    void *arg);

/* A request keeps reg (and its set) alive until it lets go. */
void registry_hold(struct registry *reg);
void registry_release(struct registry *reg);

/* Each breaker's gauge set to its state now (before /metrics renders). */
void registry_set_sample(const struct registry_set *set);

/* The registry containerd names with ns (the first when ns is NULL). */
struct registry *registry_set_find(const struct registry_set *set,
    const char *ns);

const struct config_registry *registry_config(const struct registry *reg);
const char *registry_name(const struct registry *reg);
/* Its set's fleet (registry_set_fleet), or NULL. */
struct fleet *registry_fleet(const struct registry *reg);
struct auth *registry_auth(const struct registry *reg);
/*
 * Seconds a client told "too many requests" should wait before asking
 * again (the pause left, then the queue at the pace in force).
 */
long registry_retry_after_s(const struct registry *reg);

/* Fleet peers asked for a key before the mirrors: the owner, the next. */
#define REGISTRY_PEERS_ASK	2

/* One upstream request, ready for upstream_xfer_start(&rr->ureq, ...). */
struct registry_req {
	struct upstream_req	 ureq;
	char			*url;
	char			 scope[OCI_NAME_MAX + 32];
	/* With registry_req_fleet: the peers, then the registry's mirrors. */
	struct upstream_mirror	 origins[REGISTRY_PEERS_ASK + CONFIG_MIRROR_MAX];
	struct fleet_peer	*peers[REGISTRY_PEERS_ASK];	/* held */
	size_t			 npeers;
};

/*
 * The request for route at reg: GET of the route's URL at the registry
 * (tags/list with the route's paging), with the route's scope, blobs in
 * the low rate class, the registry's identity, pace, breaker, retries,
 * mirrors, TLS settings and timeouts. The caller sets head, range and
 * accept. -1 when out of memory.
 */
int registry_req_init(struct registry_req *rr, struct registry *reg,
    const struct oci_route *route);
/*
 * For a client's request, never a peer's (a request crosses at most one
 * peer hop): the fleet's owner of the route's key (a blob or manifest by
 * digest: the digest; a tag: registry, repository and tag), and the next
 * candidate, go in front of the mirrors when this node is not the owner.
 * They are asked as a mirror is (?ns=), with the peer token and this
 * node's identity (Pullproxy-Peer), a short stall timeout, their own
 * circuits; their redirects are followed to other peers only. Nothing
 * changes without a fleet, for tags/list, or when this node is the owner.
 */
void registry_req_fleet(struct registry_req *rr, struct registry *reg,
    const struct oci_route *route);
void registry_req_clear(struct registry_req *rr);

/*
 * The fleet of the set, or NULL without [fleet] members. Created with the
 * set, freed with it (after upstream_free: transfers hold its peers).
 */
struct fleet *registry_set_fleet(const struct registry_set *set);

#endif
