/*
 * fanout: the owner is not a bottleneck (docs/fleet.md). A node serves a
 * blob to at most K (fleet fanout) peers at once. A peer that got the
 * whole blob from it is one of its holders for that digest; a peer that
 * asks while the K slots are taken is redirected to a holder, and told
 * to come back shortly when there is none. Holders apply the same rule
 * with their own holders, so copies spread as a tree of verified whole
 * blobs; a holder's own K bounds what it sends, whoever redirected to it.
 *
 * Only peer GETs of a whole blob from a peer that names itself
 * (Pullproxy-Peer, a member now) take part; resumes (Range) are served.
 */
#ifndef PP_FANOUT_H
#define PP_FANOUT_H

#include <stddef.h>

#include "fleet.h"

struct fanout;

enum fanout_verdict {
	FANOUT_SERVE,		/* a slot is taken: fanout_done when it ends */
	FANOUT_REDIRECT,	/* to the holder written out */
	FANOUT_BUSY,		/* no slot, no holder: ask again shortly */
};

struct fanout *fanout_new(long k);
void fanout_free(struct fanout *fo);

/* May peer (a member of f) be served digest now? */
enum fanout_verdict fanout_admit(struct fanout *fo, const struct fleet *f,
    const char *digest, const char *peer, char holder[FLEET_ID_MAX]);
/* A served peer is done; whole: it got every byte of the verified blob. */
void fanout_done(struct fanout *fo, const char *digest, const char *peer,
    int whole);

#endif
