/*
 * log: JSON lines on stderr or a file. One object per line, always with
 * "time" (RFC 3339, UTC, milliseconds) and "level". Callers add fields with
 * jansson; nothing that could carry a secret is logged by this module.
 */
#ifndef PP_LOG_H
#define PP_LOG_H

#include <jansson.h>

enum log_level {
	LOG_LEVEL_DEBUG = 0,
	LOG_LEVEL_INFO,
	LOG_LEVEL_WARN,
	LOG_LEVEL_ERROR,
};

/* path NULL or "-": stderr. Returns -1 (errno set) if the file won't open. */
int log_open(const char *path, enum log_level level);
void log_close(void);
int log_level_parse(const char *s);	/* -1 when unknown */
int log_enabled(enum log_level level);

/* Writes fields plus time, level and msg as one line; takes the reference. */
void log_event(enum log_level level, const char *msg, json_t *fields);

/* printf-style message with no extra fields. */
void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

struct timeval;
/* Milliseconds since start (gettimeofday). */
long log_ms_since(const struct timeval *start);
/* The same in seconds, to the microsecond. */
double log_seconds_since(const struct timeval *start);

/*
 * The debug line for one client request, written when it ends; cache
 * (NULL: left out) says what the cache did for it.
 */
void log_request(unsigned long id, const char *method, const char *uri,
    const char *registry, const char *cache, int status,
    unsigned long long bytes, int cut, const struct timeval *start);

#endif
