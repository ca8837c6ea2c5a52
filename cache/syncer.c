/*
 * cache syncer: the background thread that calls mdb_env_sync, so the
 * event loop never waits on a disk flush (the environment is MDB_NOSYNC).
 */
#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <time.h>

#include "cache.h"
#include "cache_int.h"

static void *
cache_sync_main(void *arg)
{
	struct cache *c = arg;
	struct timespec ts;

	pthread_mutex_lock(&c->c_mtx);
	while (!c->c_stop) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += c->c_sync_ms / 1000;
		ts.tv_nsec += (long)(c->c_sync_ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		while (!c->c_stop && pthread_cond_timedwait(&c->c_cond,
		    &c->c_mtx, &ts) != ETIMEDOUT)
			;
		if (c->c_stop)
			break;
		pthread_mutex_unlock(&c->c_mtx);
		/*
		 * An error here (EIO) is not reported: it only costs
		 * durability, and the next write or read hits it too.
		 */
		(void)mdb_env_sync(c->c_env, 1);
		pthread_mutex_lock(&c->c_mtx);
	}
	pthread_mutex_unlock(&c->c_mtx);
	return NULL;
}

int
cache_sync_start(struct cache *c)
{
	pthread_condattr_t attr;
	int rc;

	if ((rc = pthread_condattr_init(&attr)) != 0)
		return rc;
	if ((rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)) == 0)
		rc = pthread_cond_init(&c->c_cond, &attr);
	pthread_condattr_destroy(&attr);
	if (rc != 0)
		return rc;
	if ((rc = pthread_mutex_init(&c->c_mtx, NULL)) != 0) {
		pthread_cond_destroy(&c->c_cond);
		return rc;
	}
	if ((rc = pthread_create(&c->c_syncer, NULL, cache_sync_main, c)) !=
	    0) {
		pthread_mutex_destroy(&c->c_mtx);
		pthread_cond_destroy(&c->c_cond);
		return rc;
	}
	c->c_syncing = 1;
	return 0;
}

void
cache_sync_stop(struct cache *c)
{
	if (!c->c_syncing)
		return;
	pthread_mutex_lock(&c->c_mtx);
	c->c_stop = 1;
	pthread_cond_signal(&c->c_cond);
	pthread_mutex_unlock(&c->c_mtx);
	pthread_join(c->c_syncer, NULL);
	pthread_mutex_destroy(&c->c_mtx);
	pthread_cond_destroy(&c->c_cond);
	c->c_syncing = 0;
}
