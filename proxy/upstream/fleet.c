/*
 * fleet: a resolver thread that turns the sources into a sorted list of
 * member identities, a pipe that wakes the loop, and the loop's peers.
 *
 * The thread owns the sources; the loop owns the peers; they share one
 * pending answer under f_mtx, which neither holds while calling anything.
 */
#include <sys/socket.h>
#include <sys/types.h>

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netinet/in.h>

#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <pthread.h>
#include <resolv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "circuit.h"
#include "config.h"
#include "fleet.h"
#include "log.h"
#include "rendezvous.h"

/*
 * A peer is one of many places to get a blob: two failures in a row are
 * enough to go to the next candidate for a while.
 */
#define FLEET_CIRCUIT_FAILURES	2
#define FLEET_CIRCUIT_OPEN_S	10

struct fleet_peer {
	int		 p_refs;
	const struct fleet *p_fleet;	/* outlives its peers' transfers */
	char		 p_id[FLEET_ID_MAX];
	char		 p_url[7 + FLEET_ID_MAX];
	uint64_t	 p_hash;
	int		 p_self;
	struct circuit	*p_circuit;
};

/* One member in an answer. */
struct fleet_entry {
	char		 e_id[FLEET_ID_MAX];
	int		 e_self;
};

/* What one round of resolution found: sorted, without duplicates. */
struct fleet_answer {
	struct fleet_entry	*a_entries;
	size_t			 a_n;
	char			 a_err[256];	/* the first source that failed */
};

/* Resolver thread only. */
struct fleet_source {
	const char		*s_host;
	char			 s_port[8];
	struct sockaddr_in	 s_server;	/* peers_dns_server, or */
	int			 s_at_server;	/* 0: getaddrinfo */
	struct fleet_entry	*s_entries;
	size_t			 s_n;
	double			 s_ok_at;	/* last answer, 0: never */
};

struct fleet {
	struct event_base	*f_base;
	struct event		*f_wake;
	int			 f_pipe[2];
	pthread_t		 f_thread;
	int			 f_running;
	pthread_mutex_t		 f_mtx;
	pthread_cond_t		 f_cond;
	int			 f_stop;	/* under f_mtx */
	struct fleet_answer	*f_pending;	/* under f_mtx */

	/* The thread's. */
	struct fleet_source	*f_sources;
	size_t			 f_nsources;
	char			 f_self_host[FLEET_ID_MAX]; /* "": wildcard */
	char			 f_self_port[8];
	long			 f_resolve_s;
	long			 f_stale_s;

	/* The loop's. */
	struct fleet_peer	**f_peers;	/* by identity */
	uint64_t		*f_hashes;	/* f_peers' hashes, for ranking */
	size_t			 f_npeers;
	unsigned long		 f_answers;
	char			 f_last_err[256];
	fleet_change_fn		 f_fn;
	void			*f_arg;
};

static double
fleet_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ----------------------------------------------------------- the peers */

static struct fleet_peer *
fleet_peer_new(const struct fleet *f, const struct fleet_entry *e)
{
	struct fleet_peer *p;

	if ((p = calloc(1, sizeof(*p))) == NULL)
		return NULL;
	p->p_refs = 1;
	p->p_fleet = f;
	memcpy(p->p_id, e->e_id, sizeof(p->p_id));
	snprintf(p->p_url, sizeof(p->p_url), "http://%s", p->p_id);
	p->p_hash = rendezvous_node(p->p_id);
	p->p_self = e->e_self;
	if ((p->p_circuit = circuit_new_peer(p->p_id, FLEET_CIRCUIT_FAILURES,
	    FLEET_CIRCUIT_OPEN_S)) == NULL) {
		free(p);
		return NULL;
	}
	return p;
}

struct fleet_peer *
fleet_peer_ref(struct fleet_peer *p)
{
	p->p_refs++;
	return p;
}

void
fleet_peer_unref(struct fleet_peer *p)
{
	if (p == NULL || --p->p_refs > 0)
		return;
	circuit_free(p->p_circuit);
	free(p);
}

const char *
fleet_peer_id(const struct fleet_peer *p)
{
	return p->p_id;
}

const char *
fleet_peer_url(const struct fleet_peer *p)
{
	return p->p_url;
}

int
fleet_peer_hop_ok(void *peer, int family, const void *addr, int port)
{
	const struct fleet_peer *p = peer;
	char ip[INET6_ADDRSTRLEN], id[FLEET_ID_MAX];

	if (inet_ntop(family, addr, ip, sizeof(ip)) == NULL)
		return 0;
	snprintf(id, sizeof(id), family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip,
	    port);
	return fleet_find(p->p_fleet, id) != NULL;
}

int
fleet_peer_self(const struct fleet_peer *p)
{
	return p->p_self;
}

struct circuit *
fleet_peer_circuit(struct fleet_peer *p)
{
	return p->p_circuit;
}

/* ------------------------------------------------- the resolver thread */

static int
fleet_entry_cmp(const void *a, const void *b)
{
	const struct fleet_entry *ea = a, *eb = b;

	return strcmp(ea->e_id, eb->e_id);
}

/* Whether host (numeric) is one of this node's interface addresses. */
static int
fleet_local_addr(const struct ifaddrs *ifs, const char *host)
{
	char buf[NI_MAXHOST];
	socklen_t len;

	for (; ifs != NULL; ifs = ifs->ifa_next) {
		if (ifs->ifa_addr == NULL || (ifs->ifa_addr->sa_family !=
		    AF_INET && ifs->ifa_addr->sa_family != AF_INET6))
			continue;
		len = ifs->ifa_addr->sa_family == AF_INET ?
		    sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
		if (getnameinfo(ifs->ifa_addr, len, buf, sizeof(buf), NULL, 0,
		    NI_NUMERICHOST) == 0 && strcmp(buf, host) == 0)
			return 1;
	}
	return 0;
}

/*
 * One member found at host (numeric) and port: its identity, and whether
 * it is this node. Returns -1 when it cannot be one (too long).
 */
static int
fleet_entry_set(const struct fleet *f, struct fleet_entry *e, int family,
    const char *host, const char *port, const struct ifaddrs *ifs)
{
	if (snprintf(e->e_id, sizeof(e->e_id), family == AF_INET6 ?
	    "[%s]:%s" : "%s:%s", host, port) >= (int)sizeof(e->e_id))
		return -1;
	e->e_self = strcmp(port, f->f_self_port) == 0 &&
	    (f->f_self_host[0] != '\0' ? strcmp(host, f->f_self_host) == 0 :
	    fleet_local_addr(ifs, host));
	return 0;
}

/* Take entries as s's answer; none is a failure, as a failed lookup. */
static int
fleet_source_set(struct fleet_source *s, struct fleet_entry *e, size_t n,
    char *err, size_t errlen)
{
	if (n == 0) {
		free(e);
		snprintf(err, errlen, "%s: no addresses", s->s_host);
		return -1;
	}
	free(s->s_entries);
	s->s_entries = e;
	s->s_n = n;
	return 0;
}

/* The system's resolver: /etc/hosts, resolv.conf, nsswitch. */
static int
fleet_resolve_system(struct fleet *f, struct fleet_source *s,
    const struct ifaddrs *ifs, char *err, size_t errlen)
{
	struct addrinfo hints, *res, *ai;
	struct fleet_entry *e;
	char host[NI_MAXHOST], port[8];
	size_t n = 0;
	int rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	if ((rc = getaddrinfo(s->s_host, s->s_port, &hints, &res)) != 0) {
		snprintf(err, errlen, "%s: %s", s->s_host, gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next)
		n++;
	if ((e = calloc(n > 0 ? n : 1, sizeof(*e))) == NULL) {
		freeaddrinfo(res);
		snprintf(err, errlen, "%s: out of memory", s->s_host);
		return -1;
	}
	n = 0;
	for (ai = res; ai != NULL; ai = ai->ai_next)
		if ((ai->ai_family == AF_INET || ai->ai_family == AF_INET6) &&
		    getnameinfo(ai->ai_addr, ai->ai_addrlen, host, sizeof(host),
		    port, sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) == 0 &&
		    fleet_entry_set(f, &e[n], ai->ai_family, host, port,
		    ifs) == 0)
			n++;
	freeaddrinfo(res);
	return fleet_source_set(s, e, n, err, errlen);
}

/*
 * One server (peers_dns_server), A then AAAA, through libresolv: it
 * parses the answers and goes over TCP when one does not fit a datagram
 * (a Service with thousands of pods).
 */
static int
fleet_resolve_server(struct fleet *f, struct fleet_source *s,
    const struct ifaddrs *ifs, char *err, size_t errlen)
{
	static const int types[] = { ns_t_a, ns_t_aaaa };
	struct __res_state rs;
	struct fleet_entry *e = NULL, *grown;
	unsigned char *ans;
	char host[INET6_ADDRSTRLEN];
	size_t n = 0, cap = 0;
	ns_msg msg;
	ns_rr rr;
	int len, i, t, herr = 0;

	if ((ans = malloc(NS_MAXMSG)) == NULL) {
		snprintf(err, errlen, "%s: out of memory", s->s_host);
		return -1;
	}
	memset(&rs, 0, sizeof(rs));
	if (res_ninit(&rs) == -1) {
		free(ans);
		snprintf(err, errlen, "%s: resolver: cannot initialise",
		    s->s_host);
		return -1;
	}
	rs.nscount = 1;
	rs.nsaddr_list[0] = s->s_server;
	rs.retrans = 2;		/* seconds, then once more */
	rs.retry = 2;
	for (t = 0; t < 2; t++) {
		len = res_nquery(&rs, s->s_host, ns_c_in, types[t], ans,
		    NS_MAXMSG);
		if (len < 0 || ns_initparse(ans, len, &msg) == -1) {
			if (t == 0)
				herr = rs.res_h_errno;
			continue;
		}
		for (i = 0; i < ns_msg_count(msg, ns_s_an); i++) {
			if (ns_parserr(&msg, ns_s_an, i, &rr) == -1)
				break;
			if (!(ns_rr_type(rr) == ns_t_a && ns_rr_rdlen(rr) == 4) &&
			    !(ns_rr_type(rr) == ns_t_aaaa &&
			    ns_rr_rdlen(rr) == 16))
				continue;
			if (n == cap) {
				cap = cap > 0 ? cap * 2 : 16;
				if ((grown = reallocarray(e, cap,
				    sizeof(*e))) == NULL)
					break;
				e = grown;
			}
			if (inet_ntop(ns_rr_rdlen(rr) == 4 ? AF_INET : AF_INET6,
			    ns_rr_rdata(rr), host, sizeof(host)) != NULL &&
			    fleet_entry_set(f, &e[n], ns_rr_rdlen(rr) == 4 ?
			    AF_INET : AF_INET6, host, s->s_port, ifs) == 0)
				n++;
		}
	}
	res_nclose(&rs);
	free(ans);
	if (n == 0 && herr != 0) {
		free(e);
		snprintf(err, errlen, "%s: %s", s->s_host, hstrerror(herr));
		return -1;
	}
	return fleet_source_set(s, e, n, err, errlen);
}

/*
 * Resolve one source into s->s_entries. Returns 0, or -1 with err set
 * (a failure, or an answer without addresses: both mean "nothing new").
 */
static int
fleet_resolve(struct fleet *f, struct fleet_source *s,
    const struct ifaddrs *ifs, char *err, size_t errlen)
{
	return s->s_at_server ? fleet_resolve_server(f, s, ifs, err, errlen) :
	    fleet_resolve_system(f, s, ifs, err, errlen);
}

/* One round: every source, then the union of those not stale. */
static struct fleet_answer *
fleet_round(struct fleet *f)
{
	struct fleet_answer *a;
	struct ifaddrs *ifs = NULL;
	size_t i, j, n = 0;
	char err[256];
	double now;

	if ((a = calloc(1, sizeof(*a))) == NULL)
		return NULL;
	if (f->f_self_host[0] == '\0' && getifaddrs(&ifs) == -1)
		ifs = NULL;
	/* One time for the round: a source that answered in it is fresh. */
	now = fleet_now();
	for (i = 0; i < f->f_nsources; i++) {
		if (fleet_resolve(f, &f->f_sources[i], ifs, err,
		    sizeof(err)) == 0)
			f->f_sources[i].s_ok_at = now;
		else if (a->a_err[0] == '\0')
			snprintf(a->a_err, sizeof(a->a_err), "%s", err);
	}
	if (ifs != NULL)
		freeifaddrs(ifs);
	for (i = 0; i < f->f_nsources; i++)
		if (f->f_sources[i].s_ok_at > 0 &&
		    now - f->f_sources[i].s_ok_at <= (double)f->f_stale_s)
			n += f->f_sources[i].s_n;
	if (n > FLEET_MEMBERS_MAX)
		n = FLEET_MEMBERS_MAX;
	if ((a->a_entries = calloc(n > 0 ? n : 1, sizeof(*a->a_entries))) ==
	    NULL) {
		free(a);
		return NULL;
	}
	for (i = 0; i < f->f_nsources; i++) {
		if (f->f_sources[i].s_ok_at == 0 ||
		    now - f->f_sources[i].s_ok_at > (double)f->f_stale_s)
			continue;
		for (j = 0; j < f->f_sources[i].s_n && a->a_n < n; j++)
			a->a_entries[a->a_n++] = f->f_sources[i].s_entries[j];
	}
	qsort(a->a_entries, a->a_n, sizeof(*a->a_entries), fleet_entry_cmp);
	for (i = j = 0; i < a->a_n; i++)
		if (j == 0 || strcmp(a->a_entries[j - 1].e_id,
		    a->a_entries[i].e_id) != 0)
			a->a_entries[j++] = a->a_entries[i];
	a->a_n = j;
	return a;
}

static void
fleet_answer_free(struct fleet_answer *a)
{
	if (a == NULL)
		return;
	free(a->a_entries);
	free(a);
}

static void *
fleet_main(void *arg)
{
	struct fleet *f = arg;
	struct fleet_answer *a, *old;
	struct timespec ts;
	ssize_t woke = 0;
	char byte = 0;

	pthread_mutex_lock(&f->f_mtx);
	while (!f->f_stop) {
		pthread_mutex_unlock(&f->f_mtx);
		a = fleet_round(f);
		pthread_mutex_lock(&f->f_mtx);
		/* An answer the loop has not taken yet is simply replaced. */
		old = f->f_pending;
		if (a != NULL)
			f->f_pending = a;
		else
			old = NULL;
		pthread_mutex_unlock(&f->f_mtx);
		fleet_answer_free(old);
		/* A full pipe (EAGAIN) already wakes the loop. */
		if (a != NULL)
			woke = write(f->f_pipe[1], &byte, 1);
		(void)woke;
		pthread_mutex_lock(&f->f_mtx);
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += f->f_resolve_s;
		while (!f->f_stop && pthread_cond_timedwait(&f->f_cond,
		    &f->f_mtx, &ts) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&f->f_mtx);
	return NULL;
}

/* ----------------------------------------------------------- the loop */

/* Whether the answer holds exactly the members the loop has. */
static int
fleet_same(const struct fleet *f, const struct fleet_answer *a)
{
	size_t i;

	if (a->a_n != f->f_npeers)
		return 0;
	for (i = 0; i < a->a_n; i++)
		if (strcmp(a->a_entries[i].e_id, f->f_peers[i]->p_id) != 0 ||
		    a->a_entries[i].e_self != f->f_peers[i]->p_self)
			return 0;
	return 1;
}

/*
 * The new members, keeping the peers (and their circuits) that stay: both
 * lists are sorted, so one merge. Returns -1 when memory ran out (the old
 * members stay).
 */
static int
fleet_apply(struct fleet *f, const struct fleet_answer *a)
{
	struct fleet_peer **peers;
	uint64_t *hashes;
	size_t i, j = 0, added = 0;
	int cmp;

	peers = calloc(a->a_n > 0 ? a->a_n : 1, sizeof(*peers));
	hashes = calloc(a->a_n > 0 ? a->a_n : 1, sizeof(*hashes));
	if (peers == NULL || hashes == NULL)
		goto fail;
	for (i = 0; i < a->a_n; i++) {
		cmp = 1;
		while (j < f->f_npeers && (cmp = strcmp(f->f_peers[j]->p_id,
		    a->a_entries[i].e_id)) < 0)
			j++;
		if (cmp == 0 && f->f_peers[j]->p_self == a->a_entries[i].e_self)
			peers[i] = fleet_peer_ref(f->f_peers[j]);
		else if ((peers[i] = fleet_peer_new(f, &a->a_entries[i])) == NULL)
			goto fail;
		else
			added++;
		hashes[i] = peers[i]->p_hash;
	}
	log_event(LOG_LEVEL_INFO, "fleet members", json_pack("{s:I,s:I,s:I}",
	    "members", (json_int_t)a->a_n, "added", (json_int_t)added,
	    "removed", (json_int_t)(f->f_npeers + added - a->a_n)));
	for (j = 0; j < f->f_npeers; j++)
		fleet_peer_unref(f->f_peers[j]);
	free(f->f_peers);
	free(f->f_hashes);
	f->f_peers = peers;
	f->f_hashes = hashes;
	f->f_npeers = a->a_n;
	return 0;
fail:
	if (peers != NULL)
		for (i = 0; i < a->a_n; i++)
			fleet_peer_unref(peers[i]);
	free(peers);
	free(hashes);
	return -1;
}

static void
fleet_wake(evutil_socket_t fd, short what, void *arg)
{
	struct fleet *f = arg;
	struct fleet_answer *a;
	char buf[64];
	int changed = 0;

	(void)what;
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	pthread_mutex_lock(&f->f_mtx);
	a = f->f_pending;
	f->f_pending = NULL;
	pthread_mutex_unlock(&f->f_mtx);
	if (a == NULL)
		return;
	f->f_answers++;
	/* A failing source is told once, not every resolve_s. */
	if (a->a_err[0] != '\0' && strcmp(a->a_err, f->f_last_err) != 0)
		log_event(LOG_LEVEL_WARN, "fleet source failed", json_pack(
		    "{s:s,s:I}", "error", a->a_err, "members",
		    (json_int_t)a->a_n));
	snprintf(f->f_last_err, sizeof(f->f_last_err), "%s", a->a_err);
	if (!fleet_same(f, a))
		changed = fleet_apply(f, a) == 0;
	fleet_answer_free(a);
	if (changed && f->f_fn != NULL)
		f->f_fn(f, f->f_arg);
}

/* ------------------------------------------------------------ the API */

/* peer_listen's host as getnameinfo would print it; "" for a wildcard. */
static int
fleet_self(struct fleet *f, const struct config_fleet *cfg, char *err,
    size_t errlen)
{
	struct addrinfo hints, *res;
	int rc;

	snprintf(f->f_self_port, sizeof(f->f_self_port), "%d",
	    cfg->peer_listen_port);
	if (cfg->peer_listen_host == NULL)
		return 0;
	memset(&hints, 0, sizeof(hints));
	hints.ai_flags = AI_NUMERICHOST;
	hints.ai_socktype = SOCK_STREAM;
	if ((rc = getaddrinfo(cfg->peer_listen_host, NULL, &hints, &res)) !=
	    0) {
		snprintf(err, errlen, "[fleet] peer_listen: %s is not an IP "
		    "address (peers know this node by its address)",
		    cfg->peer_listen_host);
		return -1;
	}
	rc = getnameinfo(res->ai_addr, res->ai_addrlen, f->f_self_host,
	    sizeof(f->f_self_host), NULL, 0, NI_NUMERICHOST);
	if (rc == 0 && (strcmp(f->f_self_host, "0.0.0.0") == 0 ||
	    strcmp(f->f_self_host, "::") == 0))
		f->f_self_host[0] = '\0';
	freeaddrinfo(res);
	if (rc != 0) {
		snprintf(err, errlen, "[fleet] peer_listen: %s",
		    gai_strerror(rc));
		return -1;
	}
	return 0;
}

static int
fleet_sources(struct fleet *f, const struct config_fleet *cfg)
{
	struct fleet_source *src;
	size_t i, n = cfg->npeers + cfg->npeers_dns;

	if ((f->f_sources = calloc(n > 0 ? n : 1, sizeof(*f->f_sources))) ==
	    NULL)
		return -1;
	for (i = 0; i < cfg->npeers; i++) {
		src = &f->f_sources[i];
		src->s_host = cfg->peers[i].host;
		snprintf(src->s_port, sizeof(src->s_port), "%d",
		    cfg->peers[i].port);
	}
	for (i = 0; i < cfg->npeers_dns; i++) {
		src = &f->f_sources[cfg->npeers + i];
		src->s_host = cfg->peers_dns[i];
		snprintf(src->s_port, sizeof(src->s_port), "%d",
		    cfg->peers_port != 0 ? cfg->peers_port :
		    cfg->peer_listen_port);
		if (cfg->peers_dns_server == NULL)
			continue;
		src->s_server.sin_family = AF_INET;
		src->s_server.sin_port = htons((uint16_t)
		    cfg->peers_dns_server_port);
		/* Checked by config: an IPv4 address. */
		if (inet_pton(AF_INET, cfg->peers_dns_server,
		    &src->s_server.sin_addr) != 1) {
			errno = EINVAL;
			return -1;
		}
		src->s_at_server = 1;
	}
	f->f_nsources = n;
	return 0;
}

/* The thread's synchronisation, then the thread. */
static int
fleet_start(struct fleet *f)
{
	pthread_condattr_t attr;
	int rc;

	if ((rc = pthread_condattr_init(&attr)) != 0)
		return rc;
	if ((rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)) == 0)
		rc = pthread_cond_init(&f->f_cond, &attr);
	pthread_condattr_destroy(&attr);
	if (rc != 0)
		return rc;
	if ((rc = pthread_mutex_init(&f->f_mtx, NULL)) != 0) {
		pthread_cond_destroy(&f->f_cond);
		return rc;
	}
	if ((rc = pthread_create(&f->f_thread, NULL, fleet_main, f)) != 0) {
		pthread_mutex_destroy(&f->f_mtx);
		pthread_cond_destroy(&f->f_cond);
		return rc;
	}
	f->f_running = 1;
	return 0;
}

struct fleet *
fleet_new(struct event_base *base, const struct config_fleet *cfg,
    char *err, size_t errlen)
{
	struct fleet *f;
	int rc;

	if ((f = calloc(1, sizeof(*f))) == NULL) {
		snprintf(err, errlen, "fleet: out of memory");
		return NULL;
	}
	f->f_base = base;
	f->f_pipe[0] = f->f_pipe[1] = -1;
	f->f_resolve_s = cfg->resolve_s > 0 ? cfg->resolve_s : 1;
	f->f_stale_s = cfg->stale_s;
	if (fleet_self(f, cfg, err, errlen) == -1)
		goto fail;
	if (fleet_sources(f, cfg) == -1 ||
	    pipe2(f->f_pipe, O_NONBLOCK | O_CLOEXEC) == -1 ||
	    (f->f_wake = event_new(base, f->f_pipe[0], EV_READ | EV_PERSIST,
	    fleet_wake, f)) == NULL || event_add(f->f_wake, NULL) == -1) {
		snprintf(err, errlen, "fleet: %s", strerror(errno));
		goto fail;
	}
	if ((rc = fleet_start(f)) != 0) {
		snprintf(err, errlen, "fleet: resolver thread: %s",
		    strerror(rc));
		goto fail;
	}
	return f;
fail:
	fleet_free(f);
	return NULL;
}

void
fleet_free(struct fleet *f)
{
	size_t i;

	if (f == NULL)
		return;
	if (f->f_running) {
		pthread_mutex_lock(&f->f_mtx);
		f->f_stop = 1;
		pthread_cond_signal(&f->f_cond);
		pthread_mutex_unlock(&f->f_mtx);
		pthread_join(f->f_thread, NULL);
		pthread_mutex_destroy(&f->f_mtx);
		pthread_cond_destroy(&f->f_cond);
	}
	fleet_answer_free(f->f_pending);
	if (f->f_wake != NULL)
		event_free(f->f_wake);
	for (i = 0; i < 2; i++)
		if (f->f_pipe[i] != -1)
			close(f->f_pipe[i]);
	for (i = 0; i < f->f_nsources; i++)
		free(f->f_sources[i].s_entries);
	free(f->f_sources);
	for (i = 0; i < f->f_npeers; i++)
		fleet_peer_unref(f->f_peers[i]);
	free(f->f_peers);
	free(f->f_hashes);
	free(f);
}

void
fleet_on_change(struct fleet *f, fleet_change_fn fn, void *arg)
{
	f->f_fn = fn;
	f->f_arg = arg;
}

size_t
fleet_size(const struct fleet *f)
{
	return f->f_npeers;
}

unsigned long
fleet_answers(const struct fleet *f)
{
	return f->f_answers;
}

struct fleet_peer *
fleet_member(const struct fleet *f, size_t i)
{
	return i < f->f_npeers ? f->f_peers[i] : NULL;
}

/* Open and not yet due for a probe: others go to the next candidate. */
static int
fleet_skipped(const struct fleet_peer *p)
{
	return !p->p_self && circuit_state(p->p_circuit) == CIRCUIT_OPEN &&
	    circuit_retry_in(p->p_circuit) > 0;
}

size_t
fleet_candidates(const struct fleet *f, uint64_t key,
    struct fleet_peer **out, size_t max, int *mine)
{
	size_t *rank, nrank, nskip = 0, i, n = 0;
	int first = 1;

	*mine = 0;
	if (f->f_npeers == 0)
		return 0;
	for (i = 0; i < f->f_npeers; i++)
		nskip += fleet_skipped(f->f_peers[i]);
	/* Enough of the ranking for max peers past self and the skipped. */
	nrank = max + 1 + nskip;
	if (nrank > f->f_npeers)
		nrank = f->f_npeers;
	if ((rank = calloc(nrank, sizeof(*rank))) == NULL)
		return 0;
	nrank = rendezvous_rank(f->f_hashes, f->f_npeers, key, rank, nrank);
	for (i = 0; i < nrank && (n < max || first); i++) {
		struct fleet_peer *p = f->f_peers[rank[i]];

		if (fleet_skipped(p))
			continue;
		if (first && p->p_self)
			*mine = 1;
		first = 0;
		if (!p->p_self)
			out[n++] = p;
	}
	free(rank);
	return n;
}

struct fleet_peer *
fleet_find(const struct fleet *f, const char *id)
{
	size_t lo = 0, hi = f->f_npeers, mid;
	int cmp;

	/* f_peers is sorted by identity. */
	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if ((cmp = strcmp(f->f_peers[mid]->p_id, id)) == 0)
			return f->f_peers[mid];
		if (cmp < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

const char *
fleet_self_id(const struct fleet *f)
{
	size_t i;

	for (i = 0; i < f->f_npeers; i++)
		if (f->f_peers[i]->p_self)
			return f->f_peers[i]->p_id;
	return NULL;
}
