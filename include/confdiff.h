/*
 * confdiff: what differs between the running config and one loaded again
 * (a reload, SIGHUP). The registries' sections, and connect_timeout_ms and
 * stall_timeout_s that their requests read, can change at run time; the
 * rest (listeners, cache, logging, clients' credentials, the fleet) is
 * bound at start and needs a restart.
 */
#ifndef PP_CONFDIFF_H
#define PP_CONFDIFF_H

#include <jansson.h>

struct config;

/* The first key whose change needs a restart ("[server] listen"), or NULL. */
const char *confdiff_restart(const struct config *old,
    const struct config *new);
/*
 * What a reload changes: {"added": [name...], "removed": [name...],
 * "changed": {name: [key...]}, "server": [key...]}, empty members left
 * out; NULL when out of memory.
 */
json_t *confdiff_changes(const struct config *old, const struct config *new);

#endif
