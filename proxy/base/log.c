/*
 * log: JSON lines. Every line is written with one write(2) so that lines
 * from a crash or a concurrent `pullproxy logs` reader are never torn.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static int log_fd = STDERR_FILENO;
static enum log_level log_min = LOG_LEVEL_INFO;

static const char *log_names[] = { "debug", "info", "warn", "error" };

int
log_open(const char *path, enum log_level level)
{
	int fd;

	log_min = level;
	if (path == NULL || strcmp(path, "-") == 0) {
		log_close();
		return 0;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
	if (fd == -1)
		return -1;
	log_close();
	log_fd = fd;
	return 0;
}

void
log_close(void)
{
	if (log_fd != STDERR_FILENO)
		close(log_fd);
	log_fd = STDERR_FILENO;
}

int
log_level_parse(const char *s)
{
	size_t i;

	for (i = 0; i < sizeof(log_names) / sizeof(log_names[0]); i++)
		if (strcmp(s, log_names[i]) == 0)
			return (int)i;
	return -1;
}

int
log_enabled(enum log_level level)
{
	return level >= log_min;
}

void
log_event(enum log_level level, const char *msg, json_t *fields)
{
	struct timeval tv;
	struct tm tm;
	char ts[64], date[32];
	char *line;
	size_t len;
	json_t *o;

	if (!log_enabled(level)) {
		json_decref(fields);
		return;
	}
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts, sizeof(ts), "%s.%03dZ", date, (int)(tv.tv_usec / 1000));

	/* time, level and msg first: easier for people reading raw lines. */
	o = json_object();
	json_object_set_new(o, "time", json_string(ts));
	json_object_set_new(o, "level", json_string(log_names[level]));
	json_object_set_new(o, "msg", json_string(msg));
	if (fields != NULL) {
		json_object_update_missing(o, fields);
		json_decref(fields);
	}
	line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (line == NULL)
		return;
	len = strlen(line);
	line[len] = '\n';	/* json_dumps leaves room: replace the NUL */
	(void)!write(log_fd, line, len + 1);
	free(line);
}

void
log_msg(enum log_level level, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	log_event(level, buf, NULL);
}

long
log_ms_since(const struct timeval *start)
{
	struct timeval now;

	gettimeofday(&now, NULL);
	return (now.tv_sec - start->tv_sec) * 1000 +
	    (now.tv_usec - start->tv_usec) / 1000;
}

double
log_seconds_since(const struct timeval *start)
{
	struct timeval now;

	gettimeofday(&now, NULL);
	return (double)(now.tv_sec - start->tv_sec) +
	    (double)(now.tv_usec - start->tv_usec) / 1e6;
}

void
log_request(unsigned long id, const char *method, const char *uri,
    const char *registry, const char *cache, int status,
    unsigned long long bytes, int cut, const struct timeval *start)
{
	json_t *o;

	if (!log_enabled(LOG_LEVEL_DEBUG))
		return;
	o = json_pack("{s:I,s:s,s:s,s:s?,s:s?,s:i,s:I,s:I}", "id",
	    (json_int_t)id, "method", method, "path", uri, "registry",
	    registry, "cache", cache, "status", status, "bytes",
	    (json_int_t)bytes, "ms",
	    (json_int_t)log_ms_since(start));
	if (o != NULL && cut)
		json_object_set_new(o, "cut", json_true());
	log_event(LOG_LEVEL_DEBUG, "request", o);
}
