/*
 * logs: `pullproxy logs`. One pass over the log, counting into small
 * tallies; the log's own fields (cause, hint, client_status) carry the
 * verdicts, so nothing is classified again here.
 *
 * A node's log comes in three shapes: pullproxy's own JSON lines, the
 * same behind `kubectl logs --timestamps`'s time, and the CRI log file
 * (/var/log/pods/...: "TIME STREAM F|P TEXT", where P marks a line the
 * runtime cut into parts). All three reduce to the JSON line.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "classify.h"
#include "logs.h"

#define LOGS_TOP	5	/* repositories listed per cause */
#define LOGS_TIME_MAX	32

/* A count per name: repositories, statuses, messages. */
struct logs_kv {
	char		*kv_key;
	unsigned long	 kv_n;
};

struct logs_tally {
	struct logs_kv *t_v;
	size_t		  t_n;
	size_t		  t_cap;
};

struct logs_cause {
	char		*c_name;
	char		*c_hint;	/* the first one seen */
	unsigned long	 c_count;
	long long	 c_first;	/* ms; 0 when no line had a time */
	long long	 c_last;
	struct logs_tally c_repos;
	struct logs_tally c_registries;
};

struct logs {
	long long	 ls_since;
	long long	 ls_first;
	long long	 ls_last;
	unsigned long	 ls_lines;	/* JSON lines kept */
	unsigned long	 ls_bad;	/* not JSON objects */
	unsigned long	 ls_old;	/* before --since */
	struct logs_cause *ls_causes;
	size_t		 ls_ncauses;
	struct logs_tally ls_clients;	/* client_status of failures */
	/* What the logged line opening a repeat window got, by that
	 * window's key, so that a repeat counts as what clients got. */
	struct logs_tally ls_windows;
	char		*ls_part[2];	/* CRI P lines not yet ended, per stream */
	size_t		 ls_partlen[2];
	struct logs_tally ls_served;	/* status of "request" lines */
	struct logs_tally ls_cache;	/* their "cache": hit, miss, stale */
	unsigned long	 ls_requests;
	struct logs_tally ls_other;	/* other warnings, by msg */
	struct logs_tally ls_retries;	/* requests sent again, by cause */
	struct logs_tally ls_degraded;	/* failures answered anyway */
};

/* ---------------------------------------------------------------- parsing */

int
logs_duration(const char *s, long long *secs)
{
	long long n, unit;
	char *end;

	if (s == NULL || !isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	n = strtoll(s, &end, 10);
	if (errno != 0 || end[0] == '\0' || end[1] != '\0')
		return -1;
	switch (*end) {
	case 's':
		unit = 1;
		break;
	case 'm':
		unit = 60;
		break;
	case 'h':
		unit = 3600;
		break;
	case 'd':
		unit = 86400;
		break;
	default:
		return -1;
	}
	/* Ten years is plenty; more could overflow milliseconds later. */
	if (n > 3650LL * 86400 / unit)
		return -1;
	*secs = n * unit;
	return 0;
}

int
logs_time(const char *s, long long *ms)
{
	struct tm tm;
	int y, mo, d, h, mi, sec, frac = 0, n = 0, fn = 0;
	time_t t;

	if (s == NULL || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d,
	    &h, &mi, &sec, &n) != 6 || n != 19)
		return -1;
	s += n;
	if (*s == '.') {
		if (sscanf(s, ".%3d%n", &frac, &fn) != 1 || fn != 4 ||
		    frac < 0)
			return -1;
		s += fn;
	}
	if (strcmp(s, "Z") != 0 || mo < 1 || mo > 12 || d < 1 || d > 31 ||
	    h > 23 || mi > 59 || sec > 60 || h < 0 || mi < 0 || sec < 0)
		return -1;
	memset(&tm, 0, sizeof(tm));
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec;
	if ((t = timegm(&tm)) == (time_t)-1)
		return -1;
	*ms = (long long)t * 1000 + frac;
	return 0;
}

static void
logs_time_format(long long ms, char *buf, size_t len)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	char date[LOGS_TIME_MAX];

	gmtime_r(&t, &tm);
	strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf, len, "%.19s.%03dZ", date, (int)(ms % 1000));
}

/* ----------------------------------------------------------------- tallies */

/* Out of memory loses the count, never the summary. */
static void
logs_tally_add(struct logs_tally *t, const char *key, unsigned long n)
{
	struct logs_kv *v;
	size_t i, cap;

	for (i = 0; i < t->t_n; i++)
		if (strcmp(t->t_v[i].kv_key, key) == 0) {
			t->t_v[i].kv_n += n;
			return;
		}
	if (t->t_n == t->t_cap) {
		cap = t->t_cap == 0 ? 8 : t->t_cap * 2;
		if ((v = reallocarray(t->t_v, cap, sizeof(*v))) == NULL)
			return;
		t->t_v = v;
		t->t_cap = cap;
	}
	if ((t->t_v[t->t_n].kv_key = strdup(key)) == NULL)
		return;
	t->t_v[t->t_n++].kv_n = n;
}

static unsigned long
logs_tally_get(const struct logs_tally *t, const char *key)
{
	size_t i;

	for (i = 0; i < t->t_n; i++)
		if (strcmp(t->t_v[i].kv_key, key) == 0)
			return t->t_v[i].kv_n;
	return 0;
}

/* Pointer to key's count, or NULL when key is not there. */
static unsigned long *
logs_tally_find(const struct logs_tally *t, const char *key)
{
	size_t i;

	for (i = 0; i < t->t_n; i++)
		if (strcmp(t->t_v[i].kv_key, key) == 0)
			return &t->t_v[i].kv_n;
	return NULL;
}

static void
logs_tally_int(struct logs_tally *t, json_int_t k, unsigned long n)
{
	char key[32];

	snprintf(key, sizeof(key), "%lld", (long long)k);
	logs_tally_add(t, key, n);
}

static void
logs_tally_free(struct logs_tally *t)
{
	size_t i;

	for (i = 0; i < t->t_n; i++)
		free(t->t_v[i].kv_key);
	free(t->t_v);
}

/* Biggest first, then by name, so that output is stable. */
static int
logs_kv_cmp(const void *a, const void *b)
{
	const struct logs_kv *x = a, *y = b;

	if (x->kv_n != y->kv_n)
		return x->kv_n > y->kv_n ? -1 : 1;
	return strcmp(x->kv_key, y->kv_key);
}

static void
logs_tally_sort(const struct logs_tally *t)
{
	if (t->t_n > 1)
		qsort(t->t_v, t->t_n, sizeof(*t->t_v), logs_kv_cmp);
}

/* ------------------------------------------------------------- summarising */

struct logs *
logs_new(long long since_ms)
{
	struct logs *ls;

	if ((ls = calloc(1, sizeof(*ls))) == NULL)
		return NULL;
	ls->ls_since = since_ms;
	return ls;
}

void
logs_free(struct logs *ls)
{
	size_t i;

	if (ls == NULL)
		return;
	for (i = 0; i < ls->ls_ncauses; i++) {
		free(ls->ls_causes[i].c_name);
		free(ls->ls_causes[i].c_hint);
		logs_tally_free(&ls->ls_causes[i].c_repos);
		logs_tally_free(&ls->ls_causes[i].c_registries);
	}
	free(ls->ls_causes);
	logs_tally_free(&ls->ls_clients);
	logs_tally_free(&ls->ls_windows);
	free(ls->ls_part[0]);
	free(ls->ls_part[1]);
	logs_tally_free(&ls->ls_served);
	logs_tally_free(&ls->ls_cache);
	logs_tally_free(&ls->ls_other);
	logs_tally_free(&ls->ls_retries);
	logs_tally_free(&ls->ls_degraded);
	free(ls);
}

static struct logs_cause *
logs_cause(struct logs *ls, const char *name)
{
	struct logs_cause *c;
	size_t i;

	for (i = 0; i < ls->ls_ncauses; i++)
		if (strcmp(ls->ls_causes[i].c_name, name) == 0)
			return &ls->ls_causes[i];
	c = reallocarray(ls->ls_causes, ls->ls_ncauses + 1, sizeof(*c));
	if (c == NULL)
		return NULL;
	ls->ls_causes = c;
	c = &c[ls->ls_ncauses];
	memset(c, 0, sizeof(*c));
	if ((c->c_name = strdup(name)) == NULL)
		return NULL;
	ls->ls_ncauses++;
	return c;
}

/* A failure with a cause: count it (n times for a repeated line). */
static void
logs_failure(struct logs *ls, json_t *o, const char *cause,
    unsigned long n, long long t)
{
	struct logs_cause *c;
	const char *hint, *where;

	if ((c = logs_cause(ls, cause)) == NULL)
		return;
	c->c_count += n;
	if (t != 0 && (c->c_first == 0 || t < c->c_first))
		c->c_first = t;
	if (t > c->c_last)
		c->c_last = t;
	hint = json_string_value(json_object_get(o, "hint"));
	if (c->c_hint == NULL && hint != NULL)
		c->c_hint = strdup(hint);
	/* Auth failures have no repository: the registry stands in. */
	where = json_string_value(json_object_get(o, "repository"));
	if (where == NULL || *where == '\0')
		where = json_string_value(json_object_get(o, "registry"));
	if (where != NULL)
		logs_tally_add(&c->c_repos, where, n);
	if ((where = json_string_value(json_object_get(o, "registry"))) != NULL)
		logs_tally_add(&c->c_registries, where, n);
}

/*
 * What clients got, counted once per failure. A "repeated" line stands
 * for count failures of the window that the logged line with the same
 * registry, repository, cause and served opened: they got what it got.
 * One whose opening line is not in the log (cut, or before --since)
 * counts as "unknown".
 */
static void
logs_clients(struct logs *ls, json_t *o, const char *cause, int repeat,
    unsigned long n)
{
	const char *served = json_string_value(json_object_get(o, "served"));
	const char *reg = json_string_value(json_object_get(o, "registry"));
	const char *repo = json_string_value(json_object_get(o, "repository"));
	json_t *st = json_object_get(o, "client_status");
	unsigned long *got, status;
	char key[1024];

	snprintf(key, sizeof(key), "%s\x1f%s\x1f%s\x1f%s",
	    reg != NULL ? reg : "", repo != NULL ? repo : "", cause,
	    served != NULL ? served : "");
	if (!repeat) {
		status = json_is_integer(st) && json_integer_value(st) > 0 ?
		    (unsigned long)json_integer_value(st) : 0;
		if ((got = logs_tally_find(&ls->ls_windows, key)) != NULL)
			*got = status;
		else
			logs_tally_add(&ls->ls_windows, key, status);
		if (status != 0)
			logs_tally_int(&ls->ls_clients, (json_int_t)status, n);
		return;
	}
	if ((got = logs_tally_find(&ls->ls_windows, key)) == NULL) {
		/* Served anyway: clients got no error to count. */
		if (served == NULL)
			logs_tally_add(&ls->ls_clients, "unknown", n);
	} else if (*got != 0)
		logs_tally_int(&ls->ls_clients, (json_int_t)*got, n);
}

static void
logs_object(struct logs *ls, json_t *o)
{
	const char *msg, *level, *cause, *served;
	json_t *cnt, *st;
	long long t = 0;
	unsigned long n = 1;
	int repeat;

	if (logs_time(json_string_value(json_object_get(o, "time")),
	    &t) == -1)
		t = 0;
	/* A line with no time cannot be said to be recent. */
	if (ls->ls_since != 0 && (t == 0 || t < ls->ls_since)) {
		ls->ls_old++;
		return;
	}
	ls->ls_lines++;
	if (t != 0 && (ls->ls_first == 0 || t < ls->ls_first))
		ls->ls_first = t;
	if (t > ls->ls_last)
		ls->ls_last = t;
	msg = json_string_value(json_object_get(o, "msg"));
	level = json_string_value(json_object_get(o, "level"));
	cause = json_string_value(json_object_get(o, "cause"));
	if (msg == NULL)
		return;
	if (strcmp(msg, "request") == 0) {
		st = json_object_get(o, "status");
		ls->ls_requests++;
		if (json_is_integer(st))
			logs_tally_int(&ls->ls_served,
			    json_integer_value(st), 1);
		if (json_is_string(json_object_get(o, "cache")))
			logs_tally_add(&ls->ls_cache, json_string_value(
			    json_object_get(o, "cache")), 1);
		return;
	}
	/* Transient: the request went again, and its end is logged apart. */
	if (strcmp(msg, "upstream retry") == 0) {
		if (cause != NULL)
			logs_tally_add(&ls->ls_retries, cause, 1);
		return;
	}
	if (cause != NULL && strcmp(cause, "none") != 0 &&
	    strncmp(msg, "circuit ", 8) != 0) {
		cnt = json_object_get(o, "count");
		repeat = strcmp(msg, "upstream failure repeated") == 0;
		if (repeat && json_is_integer(cnt) &&
		    json_integer_value(cnt) > 0)
			n = (unsigned long)json_integer_value(cnt);
		logs_failure(ls, o, cause, n, t);
		/* Served stale, or a download resumed: clients saw no error. */
		if ((served = json_string_value(json_object_get(o,
		    "served"))) != NULL)
			logs_tally_add(&ls->ls_degraded, served, n);
		logs_clients(ls, o, cause, repeat, n);
		return;
	}
	/* Other trouble ("cache bypassed"...), by message. */
	if (level != NULL && (strcmp(level, "warn") == 0 ||
	    strcmp(level, "error") == 0))
		logs_tally_add(&ls->ls_other, msg, 1);
}

static void
logs_json_line(struct logs *ls, const char *line, size_t len)
{
	json_error_t err;
	json_t *o;

	if (len == 0)
		return;
	o = json_loadb(line, len, 0, &err);
	if (!json_is_object(o))
		ls->ls_bad++;
	else
		logs_object(ls, o);
	json_decref(o);
}

/* Length of an RFC 3339 time at p ("2026-12-03T06:49:01.123456789Z",
 * any offset) ended by a blank, or 0. */
static size_t
logs_prefix_time(const char *p, size_t len)
{
	size_t n;

	if (len < 20 || !isdigit((unsigned char)p[0]) || p[4] != '-' ||
	    p[10] != 'T')
		return 0;
	for (n = 0; n < len && p[n] != ' '; n++)
		if (!isdigit((unsigned char)p[n]) && strchr("-T:.Z+", p[n]) == NULL)
			return 0;
	return n < len ? n : 0;
}

/* Append the text of a CRI "P" line to its stream's pending line. */
static void
logs_part(struct logs *ls, int stream, const char *p, size_t len)
{
	char *buf;

	if ((buf = realloc(ls->ls_part[stream], ls->ls_partlen[stream] + len +
	    1)) == NULL)
		return;
	memcpy(buf + ls->ls_partlen[stream], p, len);
	ls->ls_part[stream] = buf;
	ls->ls_partlen[stream] += len;
}

void
logs_line(struct logs *ls, const char *line, size_t len)
{
	size_t n;
	int stream;

	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		len--;
	if (len == 0)
		return;
	if ((n = logs_prefix_time(line, len)) == 0) {
		logs_json_line(ls, line, len);
		return;
	}
	line += n + 1;
	len -= n + 1;
	/* kubectl logs --timestamps: the time, then the line. */
	if (len < 9 || (strncmp(line, "stdout ", 7) != 0 &&
	    strncmp(line, "stderr ", 7) != 0) || (line[7] != 'F' &&
	    line[7] != 'P') || line[8] != ' ') {
		logs_json_line(ls, line, len);
		return;
	}
	/* The CRI log file: stream, F (full) or P (partial), the text. */
	stream = line[3] == 'e';
	if (line[7] == 'P') {
		logs_part(ls, stream, line + 9, len - 9);
		return;
	}
	if (ls->ls_partlen[stream] == 0) {
		logs_json_line(ls, line + 9, len - 9);
		return;
	}
	logs_part(ls, stream, line + 9, len - 9);
	logs_json_line(ls, ls->ls_part[stream], ls->ls_partlen[stream]);
	ls->ls_partlen[stream] = 0;
}

/* ------------------------------------------------------------------ output */

static int
logs_cause_cmp(const void *a, const void *b)
{
	const struct logs_cause *x = a, *y = b;

	if (x->c_count != y->c_count)
		return x->c_count > y->c_count ? -1 : 1;
	return strcmp(x->c_name, y->c_name);
}

/* Sorting in place is no change to what was counted. */
static void
logs_sort(const struct logs *ls)
{
	size_t i;

	if (ls->ls_ncauses > 1)
		qsort(ls->ls_causes, ls->ls_ncauses, sizeof(*ls->ls_causes),
		    logs_cause_cmp);
	for (i = 0; i < ls->ls_ncauses; i++) {
		logs_tally_sort(&ls->ls_causes[i].c_repos);
		logs_tally_sort(&ls->ls_causes[i].c_registries);
	}
	logs_tally_sort(&ls->ls_clients);
	logs_tally_sort(&ls->ls_served);
	logs_tally_sort(&ls->ls_cache);
	logs_tally_sort(&ls->ls_other);
	logs_tally_sort(&ls->ls_retries);
	logs_tally_sort(&ls->ls_degraded);
}

/* Lines not JSON, a CRI line whose last part never came included. */
static unsigned long
logs_bad(const struct logs *ls)
{
	return ls->ls_bad + (ls->ls_partlen[0] > 0) + (ls->ls_partlen[1] > 0);
}

/* The log's hint, else the cause's general one. */
static const char *
logs_hint(const struct logs_cause *c)
{
	int i;

	if (c->c_hint != NULL)
		return c->c_hint;
	for (i = 1; i < CLASSIFY_NCAUSES; i++)
		if (strcmp(classify_cause_name(i), c->c_name) == 0)
			return classify_hint(i);
	return NULL;
}

static json_t *
logs_time_json(long long ms)
{
	char buf[LOGS_TIME_MAX];

	if (ms == 0)
		return json_null();
	logs_time_format(ms, buf, sizeof(buf));
	return json_string(buf);
}

static json_t *
logs_tally_json(const struct logs_tally *t)
{
	json_t *o = json_object();
	size_t i;

	for (i = 0; i < t->t_n; i++)
		json_object_set_new(o, t->t_v[i].kv_key,
		    json_integer((json_int_t)t->t_v[i].kv_n));
	return o;
}

json_t *
logs_json(const struct logs *ls)
{
	const struct logs_cause *c;
	json_t *o, *causes, *repos, *regs, *co;
	const char *hint;
	size_t i, j;

	logs_sort(ls);
	causes = json_array();
	for (i = 0; i < ls->ls_ncauses; i++) {
		c = &ls->ls_causes[i];
		repos = json_array();
		for (j = 0; j < c->c_repos.t_n && j < LOGS_TOP; j++)
			json_array_append_new(repos, json_pack("{s:s,s:I}",
			    "repository", c->c_repos.t_v[j].kv_key, "count",
			    (json_int_t)c->c_repos.t_v[j].kv_n));
		regs = json_array();
		for (j = 0; j < c->c_registries.t_n; j++)
			json_array_append_new(regs, json_pack("{s:s,s:I}",
			    "registry", c->c_registries.t_v[j].kv_key, "count",
			    (json_int_t)c->c_registries.t_v[j].kv_n));
		hint = logs_hint(c);
		co = json_pack("{s:s,s:I,s:o,s:o,s:o,s:o,s:o}", "cause",
		    c->c_name, "count", (json_int_t)c->c_count, "first",
		    logs_time_json(c->c_first), "last",
		    logs_time_json(c->c_last), "hint", hint != NULL ?
		    json_string(hint) : json_null(), "registries", regs,
		    "repositories", repos);
		json_array_append_new(causes, co);
	}
	o = json_pack("{s:o,s:o,s:I,s:I,s:I,s:o,s:o,s:{s:I,s:I,s:o,s:o},s:o,"
	    "s:o,s:o}",
	    "first", logs_time_json(ls->ls_first),
	    "last", logs_time_json(ls->ls_last),
	    "lines", (json_int_t)ls->ls_lines,
	    "not_json", (json_int_t)logs_bad(ls),
	    "before_since", (json_int_t)ls->ls_old,
	    "causes", causes,
	    "client_status", logs_tally_json(&ls->ls_clients),
	    "requests", "total", (json_int_t)ls->ls_requests,
	    "ok", (json_int_t)logs_tally_get(&ls->ls_served, "200"),
	    "status", logs_tally_json(&ls->ls_served),
	    "cache", logs_tally_json(&ls->ls_cache),
	    "other", logs_tally_json(&ls->ls_other),
	    "retries", logs_tally_json(&ls->ls_retries),
	    "degraded", logs_tally_json(&ls->ls_degraded));
	return o;
}

static void
logs_print_tally(FILE *f, const struct logs_tally *t, size_t max)
{
	size_t i;

	for (i = 0; i < t->t_n && i < max; i++)
		fprintf(f, "%s%s %lu", i > 0 ? ", " : "", t->t_v[i].kv_key,
		    t->t_v[i].kv_n);
	if (i < t->t_n)
		fprintf(f, ", %zu more", t->t_n - i);
	fprintf(f, "\n");
}

void
logs_print(const struct logs *ls, FILE *f)
{
	const struct logs_cause *c;
	char a[LOGS_TIME_MAX], b[LOGS_TIME_MAX];
	const char *hint;
	size_t i;

	logs_sort(ls);
	if (ls->ls_first != 0) {
		logs_time_format(ls->ls_first, a, sizeof(a));
		logs_time_format(ls->ls_last, b, sizeof(b));
		fprintf(f, "%s .. %s: %lu lines\n", a, b, ls->ls_lines);
	} else
		fprintf(f, "%lu lines\n", ls->ls_lines);
	if (ls->ls_old > 0)
		fprintf(f, "%lu older lines left out (--since)\n", ls->ls_old);
	if (logs_bad(ls) > 0)
		fprintf(f, "%lu lines were not JSON\n", logs_bad(ls));
	if (ls->ls_ncauses == 0)
		fprintf(f, "\nno failures\n");
	for (i = 0; i < ls->ls_ncauses; i++) {
		c = &ls->ls_causes[i];
		logs_time_format(c->c_first, a, sizeof(a));
		logs_time_format(c->c_last, b, sizeof(b));
		fprintf(f, "\n%s: %lu, %s .. %s\n", c->c_name, c->c_count,
		    c->c_first != 0 ? a : "?", c->c_last != 0 ? b : "?");
		if (c->c_registries.t_n > 0) {
			fprintf(f, "  registries: ");
			logs_print_tally(f, &c->c_registries, SIZE_MAX);
		}
		if ((hint = logs_hint(c)) != NULL)
			fprintf(f, "  hint: %s\n", hint);
		if (c->c_repos.t_n > 0) {
			fprintf(f, "  repositories: ");
			logs_print_tally(f, &c->c_repos, LOGS_TOP);
		}
	}
	if (ls->ls_clients.t_n > 0) {
		fprintf(f, "\nclients got: ");
		logs_print_tally(f, &ls->ls_clients, SIZE_MAX);
	}
	if (ls->ls_degraded.t_n > 0) {
		fprintf(f, "\nanswered despite the failure: ");
		logs_print_tally(f, &ls->ls_degraded, SIZE_MAX);
	}
	if (ls->ls_retries.t_n > 0) {
		fprintf(f, "\nsent again after a transient failure: ");
		logs_print_tally(f, &ls->ls_retries, SIZE_MAX);
	}
	if (ls->ls_requests > 0) {
		fprintf(f, "\nserved: %lu requests, %lu with 200; by status: ",
		    ls->ls_requests, logs_tally_get(&ls->ls_served, "200"));
		logs_print_tally(f, &ls->ls_served, SIZE_MAX);
		if (ls->ls_cache.t_n > 0) {
			fprintf(f, "; by cache: ");
			logs_print_tally(f, &ls->ls_cache, SIZE_MAX);
		}
	}
	if (ls->ls_other.t_n > 0) {
		fprintf(f, "\nother warnings: ");
		logs_print_tally(f, &ls->ls_other, SIZE_MAX);
	}
}

/* -------------------------------------------------------------- command */

static void
logs_usage(FILE *f)
{
	fprintf(f,
	    "usage: pullproxy logs [--since DURATION] [--json] [FILE|-]\n"
	    "\n"
	    "  summarise pullproxy's JSON log (FILE, or stdin when - or none):\n"
	    "  its own lines, `kubectl logs --timestamps` or the node's CRI\n"
	    "  log file (/var/log/pods/...), partial lines joined;\n"
	    "  failures per cause with first and last time, hint and the\n"
	    "  repositories hit; what clients got; what was served meanwhile\n"
	    "  (request lines, at --log-level debug)\n"
	    "  --since  only lines newer than now minus DURATION (30s, 15m,\n"
	    "           2h, 1d)\n"
	    "  --json   one JSON object\n");
}

static int __attribute__((format(printf, 1, 2)))
logs_usage_err(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "pullproxy logs: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (try --help)\n");
	return 2;
}

int
logs_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "since", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct logs *ls;
	struct timeval now;
	long long since = 0, secs;
	const char *path = "-";
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	int ch, json = 0, rc = 0;
	FILE *in;
	json_t *o;

	optind = 1;
	opterr = 0;
	while ((ch = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
		switch (ch) {
		case 's':
			if (logs_duration(optarg, &secs) == -1)
				return logs_usage_err("--since: bad "
				    "duration '%s' (e.g. 30s, 15m, 2h, 1d)",
				    optarg);
			gettimeofday(&now, NULL);
			since = ((long long)now.tv_sec - secs) * 1000 +
			    now.tv_usec / 1000;
			/* 0 means "everything". */
			if (since <= 0)
				since = 1;
			break;
		case 'j':
			json = 1;
			break;
		case 'h':
			logs_usage(stdout);
			return 0;
		default:
			if (optopt == 's')
				return logs_usage_err("--since: needs a "
				    "value");
			return logs_usage_err("%s: unknown option",
			    argv[optind - 1]);
		}
	}
	if (argc - optind > 1)
		return logs_usage_err("one FILE at most");
	if (argc - optind == 1)
		path = argv[optind];
	if (strcmp(path, "-") == 0)
		in = stdin;
	else if ((in = fopen(path, "r")) == NULL) {
		fprintf(stderr, "pullproxy logs: %s: %s\n", path,
		    strerror(errno));
		return 1;
	}
	if ((ls = logs_new(since)) == NULL) {
		fprintf(stderr, "pullproxy logs: out of memory\n");
		if (in != stdin)
			fclose(in);
		return 1;
	}
	while ((len = getline(&line, &cap, in)) != -1)
		logs_line(ls, line, (size_t)len);
	if (ferror(in)) {
		fprintf(stderr, "pullproxy logs: %s: %s\n", path,
		    strerror(errno));
		rc = 1;
	}
	free(line);
	if (in != stdin)
		fclose(in);
	if (rc == 0 && json) {
		o = logs_json(ls);
		json_dumpf(o, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
		fputc('\n', stdout);
		json_decref(o);
	} else if (rc == 0)
		logs_print(ls, stdout);
	logs_free(ls);
	return rc;
}
