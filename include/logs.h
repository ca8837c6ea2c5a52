/*
 * logs: `pullproxy logs`, an incident summary of pullproxy's JSON-lines
 * log: per cause how often, when, the registries, the hint and the
 * repositories hit; what clients got (one answer per failure, repeats
 * included); what was served meanwhile. Lines may come bare, behind
 * `kubectl logs --timestamps`'s time, or as the CRI log file's
 * "TIME STREAM F|P TEXT" (P parts joined). The summarising functions do
 * no I/O so that tests can feed them lines.
 */
#ifndef PP_LOGSUM_H
#define PP_LOGSUM_H

#include <stdio.h>
#include <jansson.h>

struct logs;

/* "30s", "15m", "2h", "1d" into seconds. -1 when malformed. */
int logs_duration(const char *s, long long *secs);
/* RFC 3339 UTC ("2026-11-23T16:02:11.204Z") into ms since the epoch. */
int logs_time(const char *s, long long *ms);

/* Lines older than since_ms are left out; 0 keeps every line. */
struct logs *logs_new(long long since_ms);
void logs_free(struct logs *ls);
/* One log line (one physical line of any of the shapes above), without
 * or with its newline. */
void logs_line(struct logs *ls, const char *line, size_t len);

/* The summary as one JSON object (new reference), or as text. */
json_t *logs_json(const struct logs *ls);
void logs_print(const struct logs *ls, FILE *f);

/* argv[0] is "logs". Returns the exit status: 0, 1 (I/O), 2 (usage). */
int logs_main(int argc, char **argv);

#endif
