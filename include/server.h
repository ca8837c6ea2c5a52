/*
 * server: the client side. An evhttp server on the configured address that
 * routes the OCI pull API, refuses everything else with OCI error bodies,
 * and hands valid requests to relay.
 */
#ifndef PP_SERVER_H
#define PP_SERVER_H

struct event_base;
struct config;
struct server;

/* Binds and starts listening. Returns NULL with a logged reason. */
struct server *server_new(struct event_base *base, const struct config *cfg);
/* Stop accepting; in-flight requests go on. */
void server_stop_accepting(struct server *srv);
int server_inflight(const struct server *srv);
void server_free(struct server *srv);

/* Runs the daemon until SIGTERM/SIGINT and a drain. Returns the exit code. */
int server_run(const struct config *cfg);

#endif
