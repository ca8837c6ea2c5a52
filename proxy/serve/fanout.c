/*
 * fanout: per digest, the peers being served and the holders, kept while
 * either is not empty (holders of the FANOUT_DIGESTS digests served last).
 */
#include <sys/queue.h>

#include <stdlib.h>
#include <string.h>

#include "fanout.h"

/* Holders remembered per digest: K^2 of a 64-wide tree is plenty. */
#define FANOUT_HOLDERS		64
/* Digests whose holders are remembered once nobody is being served. */
#define FANOUT_DIGESTS		256
#define FANOUT_DIGEST_MAX	128

struct fanout_entry {
	TAILQ_ENTRY(fanout_entry) e_entry;	/* most recent first */
	char		 e_digest[FANOUT_DIGEST_MAX];
	long		 e_serving;
	char		 e_holders[FANOUT_HOLDERS][FLEET_ID_MAX];
	size_t		 e_nholders;
	size_t		 e_next;	/* round robin over the holders */
	size_t		 e_oldest;	/* replaced when the list is full */
};

struct fanout {
	long				 fo_k;
	TAILQ_HEAD(fanout_entries, fanout_entry) fo_entries;
	size_t				 fo_n;
};

struct fanout *
fanout_new(long k)
{
	struct fanout *fo;

	if ((fo = calloc(1, sizeof(*fo))) == NULL)
		return NULL;
	fo->fo_k = k > 0 ? k : 1;
	TAILQ_INIT(&fo->fo_entries);
	return fo;
}

void
fanout_free(struct fanout *fo)
{
	struct fanout_entry *e;

	if (fo == NULL)
		return;
	while ((e = TAILQ_FIRST(&fo->fo_entries)) != NULL) {
		TAILQ_REMOVE(&fo->fo_entries, e, e_entry);
		free(e);
	}
	free(fo);
}

static struct fanout_entry *
fanout_find(struct fanout *fo, const char *digest, int create)
{
	struct fanout_entry *e;

	TAILQ_FOREACH(e, &fo->fo_entries, e_entry)
		if (strcmp(e->e_digest, digest) == 0)
			break;
	if (e != NULL) {
		TAILQ_REMOVE(&fo->fo_entries, e, e_entry);
		TAILQ_INSERT_HEAD(&fo->fo_entries, e, e_entry);
		return e;
	}
	if (!create || strlen(digest) >= FANOUT_DIGEST_MAX ||
	    (e = calloc(1, sizeof(*e))) == NULL)
		return NULL;
	memcpy(e->e_digest, digest, strlen(digest) + 1);
	TAILQ_INSERT_HEAD(&fo->fo_entries, e, e_entry);
	fo->fo_n++;
	/* Forget the oldest idle digests' holders. */
	while (fo->fo_n > FANOUT_DIGESTS &&
	    (e = TAILQ_LAST(&fo->fo_entries, fanout_entries)) != NULL &&
	    e->e_serving == 0) {
		TAILQ_REMOVE(&fo->fo_entries, e, e_entry);
		free(e);
		fo->fo_n--;
	}
	return TAILQ_FIRST(&fo->fo_entries);
}

enum fanout_verdict
fanout_admit(struct fanout *fo, const struct fleet *f, const char *digest,
    const char *peer, char holder[FLEET_ID_MAX])
{
	struct fanout_entry *e;
	const char *h;
	size_t i;

	/* Out of memory: serve, as without a fleet. */
	if ((e = fanout_find(fo, digest, 1)) == NULL)
		return FANOUT_SERVE;
	if (e->e_serving < fo->fo_k) {
		e->e_serving++;
		return FANOUT_SERVE;
	}
	/* A holder that is still a member, and not the asker itself. */
	for (i = 0; i < e->e_nholders; i++) {
		h = e->e_holders[(e->e_next + i) % e->e_nholders];
		if (strcmp(h, peer) == 0 || fleet_find(f, h) == NULL)
			continue;
		e->e_next = (e->e_next + i + 1) % e->e_nholders;
		memcpy(holder, h, FLEET_ID_MAX);
		return FANOUT_REDIRECT;
	}
	return FANOUT_BUSY;
}

void
fanout_done(struct fanout *fo, const char *digest, const char *peer,
    int whole)
{
	struct fanout_entry *e;
	size_t i;

	if ((e = fanout_find(fo, digest, 0)) == NULL)
		return;
	if (e->e_serving > 0)
		e->e_serving--;
	if (!whole || strlen(peer) >= FLEET_ID_MAX)
		return;
	for (i = 0; i < e->e_nholders; i++)
		if (strcmp(e->e_holders[i], peer) == 0)
			return;
	/* Full: the newest replaces the oldest. */
	i = e->e_nholders < FANOUT_HOLDERS ? e->e_nholders++ :
	    e->e_oldest++ % FANOUT_HOLDERS;
	memcpy(e->e_holders[i], peer, strlen(peer) + 1);
}
