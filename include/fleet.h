/*
 * fleet: the other pullproxies of the cluster, and which of them owns a
 * key (docs/fleet.md).
 *
 * Members come from [fleet] peers and peers_dns, resolved with the
 * system's resolver (getaddrinfo: /etc/hosts, resolv.conf's search list,
 * nsswitch, as every other name on the node) on a thread of their own,
 * again every resolve_s; the answer reaches the event loop through a
 * pipe, and the loop applies it. Each source (one static entry, or the
 * DNS name) keeps its last answer for stale_s after it last resolved: a
 * DNS blip does not shrink the fleet, a fleet that is gone is forgotten.
 * No members means no fleet, never "every key is mine".
 *
 * A member is known by "IP:PORT" ("[IPv6]:PORT"): every node must derive
 * the same identity for the same peer, or they disagree on owners. The
 * node finds itself among the members by peer_listen (or, when that is a
 * wildcard, by its interfaces' addresses and the port) and never asks
 * itself; it still takes part in the ranking, since the others count it.
 *
 * Every peer has a circuit (circuit.h) kept across membership changes, so
 * a dead or slow peer is skipped by the ranking until it may be probed.
 * Peers are reference counted: one held by a request outlives its removal.
 */
#ifndef PP_FLEET_H
#define PP_FLEET_H

#include <stddef.h>
#include <stdint.h>

struct circuit;
struct config_fleet;
struct event_base;
struct fleet;
struct fleet_peer;

/* Peers at most ever held: AKS's node limit, with room. */
#define FLEET_MEMBERS_MAX	8192
/* A peer that sends no byte for this long is skipped (seconds). */
#define FLEET_STALL_S		5
/* Longest member identity: "[" IPv6 "]:" port, and a NUL. */
#define FLEET_ID_MAX		(1 + 46 + 2 + 5 + 1)

/*
 * Start resolving (the first answer comes soon after, on base's loop).
 * NULL with err set when the settings cannot be used (a peer_listen host
 * that is not an address) or a thread or pipe cannot be had.
 */
struct fleet *fleet_new(struct event_base *base,
    const struct config_fleet *cfg, char *err, size_t errlen);
/* Stops the resolver (waits for a resolution under way) and drops peers. */
void fleet_free(struct fleet *f);

/* Called on the loop after every answer that changed the members. */
typedef void (*fleet_change_fn)(struct fleet *f, void *arg);
void fleet_on_change(struct fleet *f, fleet_change_fn fn, void *arg);

/* Members now, this node included when it is one; and answers applied. */
size_t fleet_size(const struct fleet *f);
unsigned long fleet_answers(const struct fleet *f);
/* Member i (0 <= i < fleet_size), in identity order. */
struct fleet_peer *fleet_member(const struct fleet *f, size_t i);

/*
 * The peers to ask for key (rendezvous.h), best first, at most max, this
 * node and peers whose circuit is open left out. *mine is 1 when this
 * node ranks first among all members (it fetches from the registry and
 * serves the others), 0 otherwise, also when there is no fleet: 0 peers
 * and not mine mean "no owner: go to the registry as without a fleet".
 */
size_t fleet_candidates(const struct fleet *f, uint64_t key,
    struct fleet_peer **out, size_t max, int *mine);

const char *fleet_peer_id(const struct fleet_peer *p);
/* "http://IP:PORT": where the peer listens. */
const char *fleet_peer_url(const struct fleet_peer *p);
/*
 * Whether family/addr and port (host order) is a member now: a redirect
 * from a peer may take the peer token there and nowhere else.
 */
int fleet_peer_hop_ok(void *peer, int family, const void *addr, int port);
/* This node's identity when it is a member, else NULL. */
const char *fleet_self_id(const struct fleet *f);
/* The member with identity id, or NULL. */
struct fleet_peer *fleet_find(const struct fleet *f, const char *id);
int fleet_peer_self(const struct fleet_peer *p);
/* The breaker: circuit_allow before asking, circuit_observe after. */
struct circuit *fleet_peer_circuit(struct fleet_peer *p);
struct fleet_peer *fleet_peer_ref(struct fleet_peer *p);
void fleet_peer_unref(struct fleet_peer *p);

#endif
