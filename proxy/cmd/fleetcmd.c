/*
 * fleetcmd: a private event loop with a fleet on it, printing what the
 * loop is handed. Keys are digests ("sha256:...") or tags
 * ("REGISTRY/REPOSITORY:TAG").
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "check.h"
#include "config.h"
#include "fleet.h"
#include "fleetcmd.h"
#include "log.h"
#include "rendezvous.h"

struct fleetcmd {
	struct event_base	*base;
	struct fleet		*fleet;
	char			**keys;
	uint64_t		*hashes;
	int			 nkeys;
	unsigned long		 seen;	/* answers printed or passed over */
	int			 changed;
	int			 watch;	/* --for: keep printing changes */
};

static void
fleetcmd_usage(FILE *f)
{
	fprintf(f, "usage: pullproxy fleet [--config FILE] [--for SECONDS] "
	    "[KEY ...]\n"
	    "  prints the fleet's members (one JSON line per change) and the\n"
	    "  owner of each KEY: a digest (sha256:...) or REGISTRY/REPO:TAG\n");
}

/* A key's hash; -1 when it is neither a digest nor a tag. */
static int
fleetcmd_key(const char *key, uint64_t *hash)
{
	char *copy, *slash, *colon;

	if (strncmp(key, "sha256:", 7) == 0) {
		*hash = rendezvous_digest(key);
		return 0;
	}
	if ((copy = strdup(key)) == NULL)
		return -1;
	slash = strchr(copy, '/');
	colon = strrchr(copy, ':');
	if (slash == NULL || colon == NULL || colon < strrchr(copy, '/') ||
	    slash == copy || colon[1] == '\0') {
		free(copy);
		return -1;
	}
	*slash = *colon = '\0';
	*hash = rendezvous_tag(copy, slash + 1, colon + 1);
	free(copy);
	return 0;
}

static void
fleetcmd_print(struct fleetcmd *c)
{
	json_t *out, *members, *owners;
	struct fleet_peer *p, *best;
	size_t i;
	char *line;
	int k, mine;

	members = json_array();
	for (i = 0; i < fleet_size(c->fleet); i++) {
		p = fleet_member(c->fleet, i);
		json_array_append_new(members, json_pack("{s:s,s:b}", "id",
		    fleet_peer_id(p), "self", fleet_peer_self(p)));
	}
	owners = json_object();
	for (k = 0; k < c->nkeys; k++) {
		size_t n = fleet_candidates(c->fleet, c->hashes[k], &best, 1,
		    &mine);

		json_object_set_new(owners, c->keys[k], mine ?
		    json_string("self") : n > 0 ?
		    json_string(fleet_peer_id(best)) : json_null());
	}
	out = json_pack("{s:o,s:o}", "members", members, "owners", owners);
	if (out != NULL && (line = json_dumps(out, JSON_COMPACT)) != NULL) {
		printf("%s\n", line);
		fflush(stdout);
		free(line);
	}
	json_decref(out);
}

static void
fleetcmd_changed(struct fleet *f, void *arg)
{
	struct fleetcmd *c = arg;

	(void)f;
	c->changed = 1;
}

/* Print the first answer and every change after. */
static void
fleetcmd_tick(evutil_socket_t fd, short what, void *arg)
{
	struct fleetcmd *c = arg;

	(void)fd;
	(void)what;
	if (fleet_answers(c->fleet) == c->seen)
		return;
	if (c->seen == 0 || c->changed)
		fleetcmd_print(c);
	c->seen = fleet_answers(c->fleet);
	c->changed = 0;
	if (!c->watch)
		event_base_loopbreak(c->base);
}

static void
fleetcmd_stop(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	event_base_loopbreak(arg);
}

static int
fleetcmd_run(struct fleetcmd *c, const struct config *cfg, long for_s)
{
	struct timeval tick = { 0, 50000 }, limit = { for_s, 0 };
	struct event *ev_tick, *ev_limit, *ev_term, *ev_int;
	char err[256];
	int rc = 0;

	c->watch = for_s > 0;
	if ((c->base = event_base_new()) == NULL ||
	    (c->fleet = fleet_new(c->base, &cfg->fleet, err,
	    sizeof(err))) == NULL) {
		fprintf(stderr, "pullproxy fleet: %s\n", c->base == NULL ?
		    "no event loop" : err);
		if (c->base != NULL)
			event_base_free(c->base);
		return 1;
	}
	fleet_on_change(c->fleet, fleetcmd_changed, c);
	ev_tick = event_new(c->base, -1, EV_PERSIST, fleetcmd_tick, c);
	ev_limit = evtimer_new(c->base, fleetcmd_stop, c->base);
	ev_term = evsignal_new(c->base, SIGTERM, fleetcmd_stop, c->base);
	ev_int = evsignal_new(c->base, SIGINT, fleetcmd_stop, c->base);
	if (ev_tick == NULL || ev_limit == NULL || ev_term == NULL ||
	    ev_int == NULL) {
		fprintf(stderr, "pullproxy fleet: out of memory\n");
		rc = 1;
	} else {
		event_add(ev_tick, &tick);
		if (c->watch)
			event_add(ev_limit, &limit);
		event_add(ev_term, NULL);
		event_add(ev_int, NULL);
		event_base_dispatch(c->base);
	}
	if (ev_tick != NULL)
		event_free(ev_tick);
	if (ev_limit != NULL)
		event_free(ev_limit);
	if (ev_term != NULL)
		event_free(ev_term);
	if (ev_int != NULL)
		event_free(ev_int);
	fleet_free(c->fleet);
	event_base_free(c->base);
	return rc;
}

int
fleetcmd_main(int argc, char **argv)
{
	struct fleetcmd c;
	struct config cfg;
	const char *path = CHECK_DEFAULT_CONFIG;
	char err[CONFIG_ERR_MAX], *end;
	long for_s = 0;
	int i, rc;

	memset(&c, 0, sizeof(c));
	for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
		if (strcmp(argv[i], "--help") == 0) {
			fleetcmd_usage(stdout);
			return 0;
		}
		if (i + 1 >= argc) {
			fleetcmd_usage(stderr);
			return 2;
		}
		if (strcmp(argv[i], "--config") == 0)
			path = argv[++i];
		else if (strcmp(argv[i], "--for") == 0) {
			for_s = strtol(argv[++i], &end, 10);
			if (*argv[i] == '\0' || *end != '\0' || for_s < 0 ||
			    for_s > 86400) {
				fprintf(stderr, "pullproxy fleet: --for: "
				    "expected seconds, 0-86400\n");
				return 2;
			}
		} else {
			fleetcmd_usage(stderr);
			return 2;
		}
	}
	c.keys = argv + i;
	c.nkeys = argc - i;
	if ((c.hashes = calloc((size_t)c.nkeys + 1, sizeof(*c.hashes))) ==
	    NULL)
		return 1;
	for (i = 0; i < c.nkeys; i++)
		if (fleetcmd_key(c.keys[i], &c.hashes[i]) == -1) {
			fprintf(stderr, "pullproxy fleet: %s: expected a "
			    "digest (sha256:...) or REGISTRY/REPO:TAG\n",
			    c.keys[i]);
			free(c.hashes);
			return 2;
		}
	config_init(&cfg);
	if (config_load_file(&cfg, path, err, sizeof(err)) == -1 ||
	    config_check(&cfg, err, sizeof(err)) == -1) {
		fprintf(stderr, "pullproxy fleet: %s\n", err);
		rc = 1;
	} else if (!config_fleet_on(&cfg)) {
		fprintf(stderr, "pullproxy fleet: %s: no [fleet] peers or "
		    "peers_dns\n", path);
		rc = 1;
	} else {
		log_open(NULL, LOG_LEVEL_WARN);
		rc = fleetcmd_run(&c, &cfg, for_s);
		log_close();
	}
	config_free(&cfg);
	free(c.hashes);
	return rc;
}
