#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "logs.h"

static void
test_duration(void **state)
{
	long long s;

	(void)state;
	assert_int_equal(logs_duration("30s", &s), 0);
	assert_int_equal(s, 30);
	assert_int_equal(logs_duration("15m", &s), 0);
	assert_int_equal(s, 900);
	assert_int_equal(logs_duration("2h", &s), 0);
	assert_int_equal(s, 7200);
	assert_int_equal(logs_duration("1d", &s), 0);
	assert_int_equal(s, 86400);
	assert_int_equal(logs_duration("0s", &s), 0);
	assert_int_equal(s, 0);
	assert_int_equal(logs_duration("15", &s), -1);
	assert_int_equal(logs_duration("m", &s), -1);
	assert_int_equal(logs_duration("-5m", &s), -1);
	assert_int_equal(logs_duration("5mm", &s), -1);
	assert_int_equal(logs_duration("5w", &s), -1);
	assert_int_equal(logs_duration("", &s), -1);
	assert_int_equal(logs_duration("99999999999999999999d", &s), -1);
	assert_int_equal(logs_duration("999999999d", &s), -1);
}

static void
test_time(void **state)
{
	long long ms;

	(void)state;
	assert_int_equal(logs_time("1970-01-01T00:00:00.000Z", &ms), 0);
	assert_int_equal(ms, 0);
	assert_int_equal(logs_time("2026-11-23T16:02:11.204Z", &ms), 0);
	assert_int_equal(ms, 1795449731204LL);
	assert_int_equal(logs_time("2026-11-23T16:02:11Z", &ms), 0);
	assert_int_equal(ms, 1795449731000LL);
	assert_int_equal(logs_time("2026-11-23T16:02:11.204", &ms), -1);
	assert_int_equal(logs_time("2026-11-23T16:02:11.2Z", &ms), -1);
	assert_int_equal(logs_time("2026-13-23T16:02:11.204Z", &ms), -1);
	assert_int_equal(logs_time("2026-11-23 16:02:11.204Z", &ms), -1);
	assert_int_equal(logs_time("2026-11-23T16:02:11.204+01:00", &ms),
	    -1);
	assert_int_equal(logs_time("yesterday", &ms), -1);
	assert_int_equal(logs_time(NULL, &ms), -1);
}

#define T(s)	"{\"time\":\"2026-11-23T16:0" s "Z\","

static const char *lines[] = {
	T("0:00.000") "\"level\":\"info\",\"msg\":\"listening\"}",
	T("1:00.000") "\"level\":\"warn\",\"msg\":\"upstream failure\","
	    "\"registry\":\"r\",\"repository\":\"team/api\","
	    "\"cause\":\"connection_refused\",\"hint\":\"fix the port\","
	    "\"client_status\":502}",
	T("1:30.000") "\"level\":\"warn\",\"msg\":\"upstream failure\","
	    "\"registry\":\"r\",\"repository\":\"team/web\","
	    "\"cause\":\"connection_refused\",\"hint\":\"fix the port\","
	    "\"client_status\":502}",
	T("2:00.000") "\"level\":\"warn\",\"msg\":\"upstream failure "
	    "repeated\",\"registry\":\"r\",\"repository\":\"team/api\","
	    "\"cause\":\"connection_refused\",\"count\":7}",
	T("2:10.000") "\"level\":\"info\",\"msg\":\"upstream not found\","
	    "\"registry\":\"r\",\"repository\":\"team/db\","
	    "\"cause\":\"not_found\",\"hint\":\"check the tag\","
	    "\"client_status\":404}",
	T("2:20.000") "\"level\":\"error\",\"msg\":\"auth failure\","
	    "\"registry\":\"r\",\"phase\":\"token\","
	    "\"cause\":\"auth_unauthorized\",\"hint\":\"AcrPull\"}",
	T("2:30.000") "\"level\":\"debug\",\"msg\":\"request\","
	    "\"status\":200,\"bytes\":10}",
	T("2:31.000") "\"level\":\"debug\",\"msg\":\"request\","
	    "\"status\":200,\"bytes\":10}",
	T("2:32.000") "\"level\":\"debug\",\"msg\":\"request\","
	    "\"status\":502,\"bytes\":10}",
	T("2:40.000") "\"level\":\"warn\",\"msg\":\"cache bypassed\"}",
	"not json at all\n",
	"{\"truncated\":",
	"[1,2,3]",
	"",
	"\n",
};

static struct logs *
feed(long long since)
{
	struct logs *ls;
	size_t i;

	ls = logs_new(since);
	assert_non_null(ls);
	for (i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
		logs_line(ls, lines[i], strlen(lines[i]));
	return ls;
}

static json_int_t
geti(json_t *o, const char *path)
{
	json_t *v;

	v = json_object_get(o, path);
	assert_true(json_is_integer(v));
	return json_integer_value(v);
}

static void
test_summary(void **state)
{
	struct logs *ls;
	json_t *o, *causes, *c, *repos, *req;

	(void)state;
	ls = feed(0);
	o = logs_json(ls);
	assert_int_equal(geti(o, "lines"), 10);
	assert_int_equal(geti(o, "not_json"), 3);
	assert_string_equal(json_string_value(json_object_get(o, "first")),
	    "2026-11-23T16:00:00.000Z");
	assert_string_equal(json_string_value(json_object_get(o, "last")),
	    "2026-11-23T16:02:40.000Z");

	causes = json_object_get(o, "causes");
	assert_int_equal(json_array_size(causes), 3);
	/* Biggest first; the repeated line adds its count. */
	c = json_array_get(causes, 0);
	assert_string_equal(json_string_value(json_object_get(c, "cause")),
	    "connection_refused");
	assert_int_equal(geti(c, "count"), 9);
	assert_string_equal(json_string_value(json_object_get(c, "first")),
	    "2026-11-23T16:01:00.000Z");
	assert_string_equal(json_string_value(json_object_get(c, "last")),
	    "2026-11-23T16:02:00.000Z");
	assert_string_equal(json_string_value(json_object_get(c, "hint")),
	    "fix the port");
	repos = json_object_get(c, "repositories");
	assert_int_equal(json_array_size(repos), 2);
	assert_string_equal(json_string_value(json_object_get(
	    json_array_get(repos, 0), "repository")), "team/api");
	/* The registry is named per cause. */
	assert_int_equal(json_array_size(json_object_get(c, "registries")), 1);
	assert_string_equal(json_string_value(json_object_get(json_array_get(
	    json_object_get(c, "registries"), 0), "registry")), "r");
	assert_int_equal(geti(json_array_get(json_object_get(c, "registries"),
	    0), "count"), 9);
	assert_int_equal(geti(json_array_get(repos, 0), "count"), 8);
	/* Ties by name: auth_unauthorized before not_found. */
	c = json_array_get(causes, 1);
	assert_string_equal(json_string_value(json_object_get(c, "cause")),
	    "auth_unauthorized");
	repos = json_object_get(c, "repositories");
	assert_string_equal(json_string_value(json_object_get(
	    json_array_get(repos, 0), "repository")), "r");

	/* One failure, one client answer: the 7 repeats got what the line
	 * opening their window got. */
	assert_int_equal(geti(json_object_get(o, "client_status"), "502"), 9);
	assert_int_equal(geti(json_object_get(o, "client_status"), "404"), 1);
	req = json_object_get(o, "requests");
	assert_int_equal(geti(req, "total"), 3);
	assert_int_equal(geti(req, "ok"), 2);
	assert_int_equal(geti(json_object_get(req, "status"), "502"), 1);
	assert_int_equal(geti(json_object_get(o, "other"), "cache bypassed"),
	    1);
	json_decref(o);
	logs_free(ls);
}

static void
test_since(void **state)
{
	struct logs *ls;
	long long t;
	json_t *o;

	(void)state;
	assert_int_equal(logs_time("2026-11-23T16:02:05.000Z", &t), 0);
	ls = feed(t);
	o = logs_json(ls);
	assert_int_equal(geti(o, "lines"), 6);
	assert_int_equal(geti(o, "before_since"), 4);
	assert_int_equal(geti(o, "not_json"), 3);
	assert_int_equal(json_array_size(json_object_get(o, "causes")), 2);
	json_decref(o);
	logs_free(ls);
}

static void
test_print(void **state)
{
	struct logs *ls;
	char *buf = NULL;
	size_t len = 0;
	FILE *f;

	(void)state;
	ls = feed(0);
	f = open_memstream(&buf, &len);
	assert_non_null(f);
	logs_print(ls, f);
	fclose(f);
	assert_non_null(strstr(buf, "3 lines were not JSON"));
	assert_non_null(strstr(buf, "connection_refused: 9, "
	    "2026-11-23T16:01:00.000Z .. 2026-11-23T16:02:00.000Z"));
	assert_non_null(strstr(buf, "  hint: fix the port\n"));
	assert_non_null(strstr(buf, "repositories: team/api 8, team/web 1"));
	assert_non_null(strstr(buf, "clients got: 502 9, 404 1\n"));
	assert_non_null(strstr(buf, "  registries: r 9\n"));
	assert_non_null(strstr(buf, "served: 3 requests, 2 with 200"));
	free(buf);
	logs_free(ls);
}

/* The summary of lines fed one by one, as compact JSON (caller frees). */
static char *
summary_of(char **in, size_t n)
{
	struct logs *ls;
	json_t *o;
	char *text;
	size_t i;

	ls = logs_new(0);
	assert_non_null(ls);
	for (i = 0; i < n; i++)
		logs_line(ls, in[i], strlen(in[i]));
	o = logs_json(ls);
	text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	assert_non_null(text);
	json_decref(o);
	logs_free(ls);
	return text;
}

/*
 * The same log bare, behind `kubectl logs --timestamps`'s time, and as
 * the CRI log file with every line cut into P parts (16 bytes each) and
 * ended by an F part: the same summary.
 */
static void
test_formats(void **state)
{
	const char *ts = "2026-12-03T06:49:01.123456789Z";
	char *bare[64], *kubectl[64], *cri[256], *a, *b, *c;
	size_t i, nb = 0, nk = 0, nc = 0, len, off;

	(void)state;
	for (i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
		len = strcspn(lines[i], "\n");
		if (len == 0)
			continue;
		assert_true(asprintf(&bare[nb++], "%.*s\n", (int)len,
		    lines[i]) > 0);
		assert_true(asprintf(&kubectl[nk++], "%s %.*s\n", ts,
		    (int)len, lines[i]) > 0);
		for (off = 0; len - off > 16; off += 16) {
			assert_true(nc < 255);
			assert_true(asprintf(&cri[nc++], "%s stderr P %.16s\n",
			    ts, lines[i] + off) > 0);
		}
		assert_true(asprintf(&cri[nc++], "%s stderr F %.*s\n", ts,
		    (int)(len - off), lines[i] + off) > 0);
		/* A stdout line between the parts is a line of its own. */
		if (i == 1)
			assert_true(asprintf(&cri[nc++], "%s stdout F "
			    "not json\n", ts) > 0);
	}
	/* ... which the others have too, for the same count. */
	assert_true(asprintf(&bare[nb++], "not json\n") > 0);
	assert_true(asprintf(&kubectl[nk++], "%s not json\n", ts) > 0);
	a = summary_of(bare, nb);
	b = summary_of(kubectl, nk);
	c = summary_of(cri, nc);
	assert_non_null(strstr(a, "\"cause\":\"connection_refused\",\"count\":9"));
	assert_non_null(strstr(a, "\"not_json\":4"));
	assert_string_equal(a, b);
	assert_string_equal(a, c);
	/* A CRI line whose F part never came is not a line. */
	cri[nc] = "2026-12-03T06:49:01.1Z stderr P {\"time\":\"2026-11-23T1";
	free(c);
	c = summary_of(cri, nc + 1);
	assert_non_null(strstr(c, "\"not_json\":5"));
	free(a);
	free(b);
	free(c);
	for (i = 0; i < nb; i++)
		free(bare[i]);
	for (i = 0; i < nk; i++)
		free(kubectl[i]);
	for (i = 0; i < nc; i++)
		free(cri[i]);
}

/* A repeat whose opening line is not in the log: clients got "unknown". */
static void
test_repeat_without_opening(void **state)
{
	char *in[] = {
		T("2:00.000") "\"level\":\"warn\",\"msg\":\"upstream failure "
		    "repeated\",\"registry\":\"r\",\"repository\":\"a\","
		    "\"cause\":\"tls\",\"count\":3}",
		T("2:00.000") "\"level\":\"warn\",\"msg\":\"upstream failure "
		    "repeated\",\"registry\":\"r\",\"repository\":\"a\","
		    "\"cause\":\"tls\",\"served\":\"stale\",\"count\":2}",
	};
	char *s;

	(void)state;
	s = summary_of(in, 2);
	assert_non_null(strstr(s, "\"client_status\":{\"unknown\":3}"));
	free(s);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_duration),
		cmocka_unit_test(test_time),
		cmocka_unit_test(test_summary),
		cmocka_unit_test(test_since),
		cmocka_unit_test(test_print),
		cmocka_unit_test(test_formats),
		cmocka_unit_test(test_repeat_without_opening),
	};

	return cmocka_run_group_tests_name("logs", tests, NULL, NULL);
}
