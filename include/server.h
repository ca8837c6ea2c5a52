/*
 * server: the client side. An evhttp server on the configured address that
 * routes the OCI pull API, refuses everything else with OCI error bodies,
 * and hands valid requests to relay.
 */
#ifndef PP_SERVER_H
#define PP_SERVER_H

#include <stddef.h>

struct event_base;
struct config;
struct server;

/*
 * The config read again, for a reload: a malloc'd config (the server
 * config_free()s and frees it), or NULL with err set to one line.
 */
typedef struct config *(*server_loader)(void *arg, char *err,
    size_t errlen);

/* Binds and starts listening. Returns NULL with a logged reason. */
struct server *server_new(struct event_base *base, const struct config *cfg);
/* Stop accepting; in-flight requests go on. */
void server_stop_accepting(struct server *srv);
int server_inflight(const struct server *srv);
void server_free(struct server *srv);
/*
 * Take cfg (see server_loader) for the requests that arrive from now on:
 * new registries (identity, pace, breakers) from its sections; requests
 * in flight finish with the ones they started with, freed when the last
 * ends. Refused, with cfg freed and the running config kept, when a key
 * bound at start changed (confdiff.h) or a registry cannot be made. The
 * outcome is logged ("config reloaded" with what changed, or "reload
 * refused" with why); -1 when refused.
 */
int server_reload(struct server *srv, struct config *cfg);

/*
 * Runs the daemon until SIGTERM/SIGINT and a drain; SIGHUP reloads with
 * load(arg). Returns the exit code.
 */
int server_run(const struct config *cfg, server_loader load, void *arg);

#endif
