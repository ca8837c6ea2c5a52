/*
 * confdiff: what a reload changes, and which keys need a restart, on
 * configs parsed from text the way pullproxy reads them.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <jansson.h>

#include "confdiff.h"
#include "config.h"

static void
load(struct config *cfg, const char *text)
{
	char path[] = "/tmp/pp-confdiff-XXXXXX", err[CONFIG_ERR_MAX];
	FILE *f;
	int fd;

	assert_true((fd = mkstemp(path)) != -1);
	assert_non_null(f = fdopen(fd, "w"));
	fputs(text, f);
	fclose(f);
	config_init(cfg);
	if (config_load_file(cfg, path, err, sizeof(err)) == -1)
		fail_msg("%s", err);
	unlink(path);
}

#define BASE \
	"[registry a.example]\nurl = https://a.example\nrate = 10\n" \
	"[registry b.example]\nurl = https://b.example\n"

static char *
changes(const char *old, const char *new)
{
	struct config a, b;
	json_t *o;
	char *s;

	load(&a, old);
	load(&b, new);
	assert_null(confdiff_restart(&a, &b));
	assert_non_null(o = confdiff_changes(&a, &b));
	s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(o);
	config_free(&a);
	config_free(&b);
	return s;
}

static void
test_registry_changes(void **state)
{
	char *s;

	(void)state;
	s = changes(BASE, BASE);
	assert_string_equal(s, "{}");
	free(s);
	s = changes(BASE, "[server]\nstall_timeout_s = 5\n"
	    "[registry a.example]\nurl = https://a.example\nrate = 2\n"
	    "burst = 3\nmirrors = https://m.example\n"
	    "[registry c.example]\nurl = https://c.example\n");
	assert_string_equal(s, "{\"added\":[\"c.example\"],\"changed\":"
	    "{\"a.example\":[\"rate\",\"burst\",\"mirrors\"]},\"removed\":"
	    "[\"b.example\"],\"server\":[\"stall_timeout_s\"]}");
	free(s);
}

static void
test_restart_keys(void **state)
{
	static const struct {
		const char	*text;
		const char	*key;
	} cases[] = {
		{ "[server]\nlisten = 127.0.0.1:5001\n", "[server] listen" },
		{ "[server]\ncache_dir = /elsewhere\n", "[server] cache_dir" },
		{ "[server]\nmetrics_listen = 127.0.0.1:9090\n",
		    "[server] metrics_listen" },
		{ "[server]\ntag_ttl_s = 5\n", "[server] tag_ttl_s" },
		{ "[server]\nplatform = linux/arm64\n", "[server] platform" },
		{ "[fleet]\npeers = 10.0.0.1:5001, 10.0.0.2:5001\n"
		    "peer_listen = 10.0.0.1:5001\npeer_token_file = /t\n",
		    "[fleet] peer_listen" },
	};
	struct config a, b;
	char text[512];
	size_t i;

	(void)state;
	load(&a, BASE);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(text, sizeof(text), "%s%s", cases[i].text, BASE);
		load(&b, text);
		assert_non_null(confdiff_restart(&a, &b));
		assert_string_equal(confdiff_restart(&a, &b), cases[i].key);
		config_free(&b);
	}
	config_free(&a);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_registry_changes),
		cmocka_unit_test(test_restart_keys),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
