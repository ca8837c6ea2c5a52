/*
 * fleet and rendezvous: ranking that every node agrees on, keys that stay
 * put when the membership changes, members resolved off the loop.
 */
#include <sys/mount.h>
#include <sys/stat.h>

#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <event2/event.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include "circuit.h"
#include "config.h"
#include "fanout.h"
#include "fleet.h"
#include "log.h"
#include "rendezvous.h"

#define NKEYS	10000

/* ----------------------------------------------------------- ranking */

static void
test_hashes_are_pinned(void **state)
{
	char digest[80];

	(void)state;
	/* sha256("digest\0sha256:aaa...\0")[0..8], computed with Python. */
	snprintf(digest, sizeof(digest), "sha256:%064d", 0);
	memset(digest + 7, 'a', 64);
	assert_true(rendezvous_digest(digest) == 0x60dd1fc798075235ULL);
	assert_true(rendezvous_tag("registry.example", "library/alpine",
	    "3.20") == 0x540206e0de104c20ULL);
	assert_true(rendezvous_node("10.0.0.1:5001") == 0x01e7bdb4924ab803ULL);
	/* The parts are separated: moving a '/' makes another key. */
	assert_true(rendezvous_tag("r", "a/b", "c") !=
	    rendezvous_tag("r", "a", "b/c"));
}

static uint64_t
key_of(int i)
{
	char digest[80];

	snprintf(digest, sizeof(digest), "sha256:%064x", i);
	return rendezvous_digest(digest);
}

static void
nodes_of(uint64_t *nodes, size_t n, size_t first)
{
	char id[FLEET_ID_MAX];
	size_t i;

	for (i = 0; i < n; i++) {
		snprintf(id, sizeof(id), "10.0.%zu.%zu:5001", (first + i) / 250,
		    (first + i) % 250 + 1);
		nodes[i] = rendezvous_node(id);
	}
}

/* The owner (a node hash) of key among nodes. */
static uint64_t
owner(const uint64_t *nodes, size_t n, uint64_t key)
{
	size_t best;

	assert_int_equal(rendezvous_rank(nodes, n, key, &best, 1), 1);
	return nodes[best];
}

static void
test_rank_is_stable_and_ordered(void **state)
{
	uint64_t nodes[20], shuffled[20], key;
	size_t rank[20], top[3], i, k;

	(void)state;
	nodes_of(nodes, 20, 0);
	for (i = 0; i < 20; i++)
		shuffled[i] = nodes[(i * 7) % 20];
	for (k = 0; k < 500; k++) {
		key = key_of((int)k);
		/* The order the members are listed in does not matter. */
		assert_true(owner(nodes, 20, key) == owner(shuffled, 20, key));
		/* A full ranking is by weight, and its prefix is the top 3. */
		assert_int_equal(rendezvous_rank(nodes, 20, key, rank, 20), 20);
		for (i = 1; i < 20; i++)
			assert_true(rendezvous_weight(nodes[rank[i - 1]], key) >
			    rendezvous_weight(nodes[rank[i]], key));
		assert_int_equal(rendezvous_rank(nodes, 20, key, top, 3), 3);
		assert_memory_equal(top, rank, sizeof(top));
	}
	assert_int_equal(rendezvous_rank(nodes, 0, key, top, 3), 0);
	assert_int_equal(rendezvous_rank(nodes, 2, key, top, 3), 2);
}

/* Every node gets about 1/N of the keys. */
static void
test_keys_spread_evenly(void **state)
{
	uint64_t nodes[10], o;
	int count[10] = { 0 }, k;
	size_t i;

	(void)state;
	nodes_of(nodes, 10, 0);
	for (k = 0; k < NKEYS; k++) {
		o = owner(nodes, 10, key_of(k));
		for (i = 0; i < 10; i++)
			count[i] += nodes[i] == o;
	}
	/* Expected 1,000 each, standard deviation 30. */
	for (i = 0; i < 10; i++)
		assert_true(count[i] > 800 && count[i] < 1200);
}

/*
 * Adding an eleventh node moves only the keys it now wins (about 1/11);
 * removing a node moves only its own (about 1/10), to the others.
 */
static void
test_membership_change_moves_about_one_nth(void **state)
{
	uint64_t nodes[11], rest[9], before, after, key;
	int moved_add = 0, moved_rm = 0, k;

	(void)state;
	nodes_of(nodes, 11, 0);
	/* The first ten without node 3. */
	memcpy(rest, nodes, 3 * sizeof(*rest));
	memcpy(rest + 3, nodes + 4, 6 * sizeof(*rest));
	for (k = 0; k < NKEYS; k++) {
		key = key_of(k);
		before = owner(nodes, 10, key);
		after = owner(nodes, 11, key);
		if (before != after) {
			assert_true(after == nodes[10]);
			moved_add++;
		}
		after = owner(rest, 9, key);
		if (before != after) {
			assert_true(before == nodes[3]);
			moved_rm++;
		}
	}
	/* 909 and 1,000 expected; standard deviations about 29 and 30. */
	print_message("# moved: %d of %d keys on add, %d on remove\n",
	    moved_add, NKEYS, moved_rm);
	assert_true(moved_add > NKEYS / 11 * 7 / 10 &&
	    moved_add < NKEYS / 11 * 13 / 10);
	assert_true(moved_rm > NKEYS / 10 * 7 / 10 &&
	    moved_rm < NKEYS / 10 * 13 / 10);
}

/* ---------------------------------------------------------- the fleet */

struct run {
	struct event_base	*base;
	struct fleet		*fleet;
	unsigned long		 want;	/* answers to wait for */
	int			 changes;
};

static void
on_change(struct fleet *f, void *arg)
{
	struct run *r = arg;

	(void)f;
	r->changes++;
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	struct run *r = arg;

	(void)fd;
	(void)what;
	if (fleet_answers(r->fleet) >= r->want)
		event_base_loopbreak(r->base);
}

/*
 * Run the loop until the fleet has applied want answers in all; bounded
 * (60 s) so that a broken resolver fails the test instead of hanging it.
 */
static void
run_until(struct run *r, unsigned long want)
{
	struct timeval tick = { 0, 20000 };
	struct event *ev;
	int i;

	r->want = want;
	ev = event_new(r->base, -1, EV_PERSIST, on_tick, r);
	assert_non_null(ev);
	event_add(ev, &tick);
	for (i = 0; i < 3000 && fleet_answers(r->fleet) < want; i++)
		event_base_loop(r->base, EVLOOP_ONCE);
	event_free(ev);
	assert_true(fleet_answers(r->fleet) >= want);
}

static void
start(struct run *r, struct config_fleet *cfg)
{
	char err[256];

	memset(r, 0, sizeof(*r) - sizeof(r->changes));
	r->changes = 0;
	r->base = event_base_new();
	assert_non_null(r->base);
	r->fleet = fleet_new(r->base, cfg, err, sizeof(err));
	if (r->fleet == NULL)
		fail_msg("fleet_new: %s", err);
	fleet_on_change(r->fleet, on_change, r);
}

static void
stop(struct run *r)
{
	fleet_free(r->fleet);
	event_base_free(r->base);
}

static void
config_of(struct config_fleet *cfg, struct config_peer *peers, size_t n,
    const char *listen_host, int listen_port)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->peers = peers;
	cfg->npeers = n;
	cfg->peer_listen_host = (char *)listen_host;
	cfg->peer_listen_port = listen_port;
	cfg->fanout = 4;
	cfg->resolve_s = 1;
	cfg->stale_s = 30;
}

static int
member(const struct fleet *f, const char *id, int *self)
{
	size_t i;

	for (i = 0; i < fleet_size(f); i++)
		if (strcmp(fleet_peer_id(fleet_member(f, i)), id) == 0) {
			*self = fleet_peer_self(fleet_member(f, i));
			return 1;
		}
	return 0;
}

static void
test_static_members_and_self(void **state)
{
	struct config_peer peers[] = {
		{ "127.0.0.1", 7001 }, { "127.0.0.2", 7001 },
		{ "127.0.0.3", 7001 }, { "127.0.0.2", 7001 },
	};
	struct config_fleet cfg;
	struct fleet_peer *out[3];
	struct run r;
	int self, mine, nmine = 0, k;
	size_t n, i;

	(void)state;
	config_of(&cfg, peers, 4, "127.0.0.2", 7001);
	start(&r, &cfg);
	run_until(&r, 1);
	/* The duplicate counts once; this node is among the members. */
	assert_int_equal(fleet_size(r.fleet), 3);
	assert_int_equal(r.changes, 1);
	assert_true(member(r.fleet, "127.0.0.2:7001", &self) && self);
	assert_true(member(r.fleet, "127.0.0.1:7001", &self) && !self);
	for (k = 0; k < 3000; k++) {
		n = fleet_candidates(r.fleet, key_of(k), out, 3, &mine);
		nmine += mine;
		/* Never itself: the other two, whoever ranks first. */
		assert_int_equal(n, 2);
		for (i = 0; i < n; i++)
			assert_false(fleet_peer_self(out[i]));
	}
	/* This node owns about a third of the keys (1,000 expected). */
	assert_true(nmine > 800 && nmine < 1200);
	/* The same answer again changes nothing. */
	run_until(&r, 2);
	assert_int_equal(r.changes, 1);
	stop(&r);
}

/* peer_listen 0.0.0.0: the node is the member on its own address. */
static void
test_wildcard_listen_finds_self_by_interface(void **state)
{
	struct config_peer peers[] = {
		{ "127.0.0.1", 7001 }, { "127.0.0.1", 7002 },
		{ "192.0.2.1", 7001 },
	};
	struct config_fleet cfg;
	struct run r;
	int self;

	(void)state;
	config_of(&cfg, peers, 3, "0.0.0.0", 7001);
	/* Nothing kept past a failure: what answered this round counts. */
	cfg.stale_s = 0;
	start(&r, &cfg);
	run_until(&r, 1);
	assert_int_equal(fleet_size(r.fleet), 3);
	assert_true(member(r.fleet, "127.0.0.1:7001", &self) && self);
	assert_true(member(r.fleet, "127.0.0.1:7002", &self) && !self);
	assert_true(member(r.fleet, "192.0.2.1:7001", &self) && !self);
	stop(&r);
}

/* Nothing resolves: no owner at all, not "every key is mine". */
static void
test_no_members_means_no_owner(void **state)
{
	struct config_peer peers[] = { { "no-such-peer.invalid", 7001 } };
	struct config_fleet cfg;
	struct fleet_peer *out[3];
	struct run r;
	int mine = -1, k;

	(void)state;
	config_of(&cfg, peers, 1, "127.0.0.2", 7001);
	start(&r, &cfg);
	run_until(&r, 1);
	assert_int_equal(fleet_size(r.fleet), 0);
	assert_int_equal(r.changes, 0);
	for (k = 0; k < 100; k++) {
		assert_int_equal(fleet_candidates(r.fleet, key_of(k), out, 3,
		    &mine), 0);
		assert_int_equal(mine, 0);
	}
	stop(&r);
}

/* A peer whose circuit opened is skipped; the next one is the owner. */
static void
test_open_circuit_skips_peer(void **state)
{
	struct config_peer peers[] = {
		{ "127.0.0.1", 7001 }, { "127.0.0.2", 7001 },
		{ "127.0.0.3", 7001 }, { "127.0.0.4", 7001 },
	};
	struct config_fleet cfg;
	struct fleet_peer *out[4], *first, *second, *held;
	struct run r;
	int mine, k;
	size_t n, i;
	uint64_t key = 0;

	(void)state;
	config_of(&cfg, peers, 4, "127.0.0.4", 7001);
	start(&r, &cfg);
	run_until(&r, 1);
	/* A key some other node owns. */
	for (k = 0; ; k++) {
		key = key_of(k);
		n = fleet_candidates(r.fleet, key, out, 4, &mine);
		if (!mine)
			break;
	}
	assert_int_equal(n, 3);
	first = out[0];
	second = out[1];
	held = fleet_peer_ref(first);
	for (i = 0; i < 2; i++)
		circuit_observe(fleet_peer_circuit(first), 0,
		    CLASSIFY_CONNECTION_REFUSED);
	assert_int_equal(circuit_state(fleet_peer_circuit(first)),
	    CIRCUIT_OPEN);
	n = fleet_candidates(r.fleet, key, out, 4, &mine);
	assert_int_equal(n, 2);
	for (i = 0; i < n; i++)
		assert_ptr_not_equal(out[i], first);
	/* The next in the ranking: another node, or this one. */
	assert_true(out[0] == second || mine);
	/* A later answer keeps the peer, and its open circuit. */
	run_until(&r, 2);
	assert_int_equal(fleet_candidates(r.fleet, key, out, 4, &mine), 2);
	fleet_peer_unref(held);
	stop(&r);
}

/* ------------------------------------------- a name, for real (root) */

/* A peer's redirect may take the peer token to members only. */
static int
hop(struct fleet *f, const char *ip, int port)
{
	struct in_addr a;

	assert_int_equal(inet_pton(AF_INET, ip, &a), 1);
	return fleet_peer_hop_ok(fleet_member(f, 0), AF_INET, &a, port);
}

/*
 * fanout: K slots per digest, then redirects to holders (peers that got
 * the whole blob), never to the asker itself or a non-member, else busy.
 */
static void
test_fanout_slots_holders_and_redirects(void **state)
{
	struct config_peer peers[] = {
		{ "127.0.0.1", 7001 }, { "127.0.0.2", 7001 },
		{ "127.0.0.3", 7001 }, { "127.0.0.4", 7001 },
	};
	const char *d = "sha256:0123", *e = "sha256:4567";
	const char *p2 = "127.0.0.2:7001", *p3 = "127.0.0.3:7001",
	    *p4 = "127.0.0.4:7001";
	char holder[FLEET_ID_MAX];
	struct config_fleet cfg;
	struct fanout *fo;
	struct run r;

	(void)state;
	config_of(&cfg, peers, 4, "127.0.0.1", 7001);
	start(&r, &cfg);
	run_until(&r, 1);
	assert_string_equal(fleet_self_id(r.fleet), "127.0.0.1:7001");
	assert_non_null(fleet_find(r.fleet, p3));
	assert_null(fleet_find(r.fleet, "127.0.0.9:7001"));
	assert_true(hop(r.fleet, "127.0.0.3", 7001));
	assert_false(hop(r.fleet, "127.0.0.9", 7001));
	assert_false(hop(r.fleet, "127.0.0.3", 7002));

	assert_non_null(fo = fanout_new(2));
	assert_int_equal(fanout_admit(fo, r.fleet, d, p2, holder), FANOUT_SERVE);
	assert_int_equal(fanout_admit(fo, r.fleet, d, p3, holder), FANOUT_SERVE);
	/* K = 2 taken, nobody holds it yet: come back later. */
	assert_int_equal(fanout_admit(fo, r.fleet, d, p4, holder), FANOUT_BUSY);
	/* Another digest has slots of its own. */
	assert_int_equal(fanout_admit(fo, r.fleet, e, p4, holder), FANOUT_SERVE);
	/* p2 got all of it: a holder; p3 was cut: not one. */
	fanout_done(fo, d, p2, 1);
	fanout_done(fo, d, p3, 0);
	assert_int_equal(fanout_admit(fo, r.fleet, d, p4, holder), FANOUT_SERVE);
	assert_int_equal(fanout_admit(fo, r.fleet, d, p3, holder), FANOUT_SERVE);
	assert_int_equal(fanout_admit(fo, r.fleet, d, p4, holder),
	    FANOUT_REDIRECT);
	assert_string_equal(holder, p2);
	/* Never to the asker itself. */
	assert_int_equal(fanout_admit(fo, r.fleet, d, p2, holder), FANOUT_BUSY);
	/* A holder that is no member (any more) is never redirected to. */
	assert_int_equal(fanout_admit(fo, r.fleet, e, "127.0.0.9:7001", holder),
	    FANOUT_SERVE);
	fanout_done(fo, e, "127.0.0.9:7001", 1);
	assert_int_equal(fanout_admit(fo, r.fleet, e, p3, holder), FANOUT_SERVE);
	assert_int_equal(fanout_admit(fo, r.fleet, e, p2, holder), FANOUT_BUSY);
	fanout_free(fo);
	stop(&r);
}

static char hosts_path[] = "/tmp/pp-test-fleet-hosts-XXXXXX";

/* Rewrite the file in place: the bind mount shows the same inode. */
static void
hosts_write(const char *text)
{
	FILE *f = fopen(hosts_path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

/*
 * This process gets a mount namespace of its own whose /etc/hosts is a
 * file of the test's, so getaddrinfo on the resolver thread answers with
 * what the test wrote. Skipped where namespaces are not allowed (not
 * root); tests/integration/test_fleet_dns.py also runs a DNS server.
 */
static int
hosts_mount(void)
{
	int fd;

	if ((fd = mkstemp(hosts_path)) == -1)
		return -1;
	close(fd);
	if (unshare(CLONE_NEWNS) == -1 ||
	    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == -1 ||
	    mount(hosts_path, "/etc/hosts", NULL, MS_BIND, NULL) == -1) {
		print_message("no mount namespace here (%s)\n",
		    strerror(errno));
		unlink(hosts_path);
		return -1;
	}
	return 0;
}

static void
test_dns_name_with_several_addresses(void **state)
{
	char *names[] = { "peers.fleet.test", "pool2.fleet.test" };
	struct config_fleet cfg;
	struct fleet_peer *out[4];
	struct run r;
	int self, mine, i;

	(void)state;
	if (hosts_mount() == -1)
		skip();
	/* Two names (two node pools' Services): their union. */
	hosts_write("127.0.0.1 localhost\n"
	    "127.0.0.11 peers.fleet.test\n"
	    "127.0.0.12 peers.fleet.test\n"
	    "127.0.0.13 peers.fleet.test\n"
	    "127.0.0.21 pool2.fleet.test\n");
	config_of(&cfg, NULL, 0, "127.0.0.12", 7001);
	cfg.peers_dns = names;
	cfg.npeers_dns = 2;
	cfg.stale_s = 4;
	start(&r, &cfg);
	run_until(&r, 1);
	assert_int_equal(fleet_size(r.fleet), 4);
	assert_true(member(r.fleet, "127.0.0.11:7001", &self) && !self);
	assert_true(member(r.fleet, "127.0.0.12:7001", &self) && self);
	assert_true(member(r.fleet, "127.0.0.13:7001", &self) && !self);
	assert_true(member(r.fleet, "127.0.0.21:7001", &self) && !self);

	/* A pod became ready, another went: the next resolution sees it. */
	hosts_write("127.0.0.12 peers.fleet.test\n"
	    "127.0.0.13 peers.fleet.test\n"
	    "127.0.0.14 peers.fleet.test\n"
	    "127.0.0.21 pool2.fleet.test\n");
	/* Bounded: 60 answers are a minute at resolve_s 1. */
	for (i = 0; i < 60 && !member(r.fleet, "127.0.0.14:7001", &self); i++)
		run_until(&r, fleet_answers(r.fleet) + 1);
	assert_true(member(r.fleet, "127.0.0.14:7001", &self));
	assert_int_equal(fleet_size(r.fleet), 4);
	assert_false(member(r.fleet, "127.0.0.11:7001", &self));

	/*
	 * The names stop resolving: the last members stay for stale_s, then
	 * there is no fleet (and no owner), not a fleet of one.
	 */
	hosts_write("127.0.0.1 localhost\n");
	for (i = 0; i < 60 && fleet_size(r.fleet) > 0; i++)
		run_until(&r, fleet_answers(r.fleet) + 1);
	/* Not at once: the first answer without the names kept them. */
	assert_true(i > 1);
	assert_int_equal(fleet_candidates(r.fleet, key_of(1), out, 4, &mine),
	    0);
	assert_int_equal(mine, 0);
	stop(&r);
	umount("/etc/hosts");
	unlink(hosts_path);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hashes_are_pinned),
		cmocka_unit_test(test_rank_is_stable_and_ordered),
		cmocka_unit_test(test_keys_spread_evenly),
		cmocka_unit_test(test_membership_change_moves_about_one_nth),
		cmocka_unit_test(test_static_members_and_self),
		cmocka_unit_test(test_wildcard_listen_finds_self_by_interface),
		cmocka_unit_test(test_no_members_means_no_owner),
		cmocka_unit_test(test_open_circuit_skips_peer),
		cmocka_unit_test(test_fanout_slots_holders_and_redirects),
		cmocka_unit_test(test_dns_name_with_several_addresses),
	};

	log_open(NULL, LOG_LEVEL_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
