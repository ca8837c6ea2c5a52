#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"
#include "log.h"

static char tmpdir[] = "/tmp/pp-test-config-XXXXXX";

static const char *
write_file(const char *name, const char *text)
{
	static char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	return path;
}

/* Parse flags (argv[0] is "serve"); returns config_parse_args' result. */
static int
parse(struct config *cfg, char *err, int argc, ...)
{
	char *argv[16];
	va_list ap;
	int i;

	assert_true(argc < 16);
	argv[0] = "serve";
	va_start(ap, argc);
	for (i = 1; i <= argc; i++)
		argv[i] = va_arg(ap, char *);
	va_end(ap);
	config_init(cfg);
	return config_parse_args(cfg, argc + 1, argv, err, CONFIG_ERR_MAX);
}

static void
test_defaults_and_flags(void **state)
{
	struct config cfg;
	char err[CONFIG_ERR_MAX];

	(void)state;
	assert_int_equal(parse(&cfg, err, 0), 0);
	assert_string_equal(cfg.listen_host, "127.0.0.1");
	assert_int_equal(cfg.listen_port, 5000);
	assert_int_equal(config_check(&cfg, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "no registry"));
	config_free(&cfg);

	assert_int_equal(parse(&cfg, err, 8, "--listen", "127.0.0.1:5999",
	    "--cache-dir=/tmp/c", "--registry", "a.io=https://a.io/",
	    "--registry", "127.0.0.1:5001=http://127.0.0.1:5001",
	    "--log-level=debug"), 0);
	assert_int_equal(cfg.listen_port, 5999);
	assert_string_equal(cfg.cache_dir, "/tmp/c");
	assert_int_equal(cfg.log_level, LOG_LEVEL_DEBUG);
	assert_int_equal(cfg.nregistries, 2);
	assert_string_equal(cfg.registries[0].url, "https://a.io");
	assert_int_equal(config_check(&cfg, err, sizeof(err)), 0);
	assert_ptr_equal(config_registry_find(&cfg, NULL), &cfg.registries[0]);
	assert_ptr_equal(config_registry_find(&cfg, "A.IO"),
	    &cfg.registries[0]);
	assert_ptr_equal(config_registry_find(&cfg, "127.0.0.1:5001"),
	    &cfg.registries[1]);
	assert_null(config_registry_find(&cfg, "127.0.0.1:5002"));
	assert_null(config_registry_find(&cfg, "169.254.169.254"));
	config_free(&cfg);

	assert_int_equal(parse(&cfg, err, 2, "--listen", "[::1]:80"), 0);
	assert_string_equal(cfg.listen_host, "::1");
	config_free(&cfg);

	assert_int_equal(parse(&cfg, err, 3, "--registry", "a=b", "--help"),
	    1);
	config_free(&cfg);
}

static void
expect_flag_error(const char *a1, const char *a2, const char *want)
{
	struct config cfg;
	char err[CONFIG_ERR_MAX];

	assert_int_equal(a2 != NULL ?
	    parse(&cfg, err, 2, a1, a2) : parse(&cfg, err, 1, a1), -1);
	if (strstr(err, want) == NULL)
		fail_msg("error \"%s\" lacks \"%s\"", err, want);
	assert_null(strchr(err, '\n'));
	config_free(&cfg);
}

static void
test_bad_flags(void **state)
{
	(void)state;
	expect_flag_error("--listen", "nonsense", "--listen: expected HOST:PORT");
	expect_flag_error("--listen", "127.0.0.1:0", "--listen: port");
	expect_flag_error("--listen", "127.0.0.1:70000", "--listen: port");
	expect_flag_error("--listen", NULL, "--listen: needs a value");
	expect_flag_error("--registry", "noequals", "--registry: expected");
	expect_flag_error("--registry", "a=ftp://x", "--registry: URL");
	expect_flag_error("--registry", "a/b=http://x", "--registry: HOST");
	expect_flag_error("--registry", "a=http://", "--registry: URL has no");
	expect_flag_error("--log-level", "loud", "--log-level: expected");
	expect_flag_error("--bogus", "1", "--bogus: unknown flag");
	expect_flag_error("stray", NULL, "stray: unexpected argument");
	expect_flag_error("--config", "/nonexistent/pp.conf",
	    "/nonexistent/pp.conf: No such file");
}

static void
test_file(void **state)
{
	struct config cfg;
	char err[CONFIG_ERR_MAX];
	const char *path;

	(void)state;
	path = write_file("good.conf",
	    "# comment\n"
	    "[server]\n"
	    "listen = 127.0.0.1:6000\n"
	    "stall_timeout_s = 5\n"
	    "cache_max_size = 2G\n"
	    "[registry r.example]\n"
	    "url = https://r.example\n"
	    "ca_file = /etc/ca.pem\n"
	    "tls_verify = false\n");
	/* --config is read first wherever it stands: flags override it. */
	assert_int_equal(parse(&cfg, err, 4, "--listen", "127.0.0.1:7000",
	    "--config", path), 0);
	assert_int_equal(cfg.listen_port, 7000);
	assert_int_equal(cfg.stall_timeout_s, 5);
	assert_true(cfg.cache_max_bytes == 2ULL << 30);
	assert_int_equal(cfg.nregistries, 1);
	assert_string_equal(cfg.registries[0].ca_file, "/etc/ca.pem");
	assert_int_equal(cfg.registries[0].tls_verify, 0);
	assert_int_equal(config_check(&cfg, err, sizeof(err)), 0);
	config_free(&cfg);
}

static void
expect_file_error(const char *text, const char *want)
{
	struct config cfg;
	char err[CONFIG_ERR_MAX], expect[CONFIG_ERR_MAX];
	const char *path = write_file("bad.conf", text);

	config_init(&cfg);
	assert_int_equal(config_load_file(&cfg, path, err, sizeof(err)), -1);
	snprintf(expect, sizeof(expect), "%s:%s", path, want);
	if (strcmp(err, expect) != 0)
		fail_msg("got \"%s\", want \"%s\"", err, expect);
	config_free(&cfg);
}

static void
test_bad_files(void **state)
{
	(void)state;
	expect_file_error("[server]\nlisten = 127.0.0.1:1\nbogus = 1\n",
	    "3: [server] bogus: unknown key");
	expect_file_error("[server]\n\nstall_timeout_s = -1\n",
	    "3: [server] stall_timeout_s: expected a whole number 1-3600");
	expect_file_error("[nope]\nx = 1\n",
	    "2: [nope] x: unknown section (expected [server] or [registry HOST])");
	expect_file_error("[registry a]\ntls_verify = maybe\n",
	    "2: [registry a] tls_verify: expected true or false");
	expect_file_error("[registry a]\nurl = gopher://a\n",
	    "2: [registry a] url: URL must start with http:// or https://");
	expect_file_error("[server]\ncache_max_size = 10X\n",
	    "2: [server] cache_max_size: expected a size such as 512M or 20G");
	expect_file_error("[server]\ncache_max_size = 1M\n",
	    "2: [server] cache_max_size: must be at least 16M");
	expect_file_error("[server\n", "1: syntax error");
	expect_file_error("[server]\njust words\n", "2: syntax error");
}

static void
test_missing_url(void **state)
{
	struct config cfg;
	char err[CONFIG_ERR_MAX];

	(void)state;
	config_init(&cfg);
	assert_int_equal(config_load_file(&cfg,
	    write_file("nourl.conf", "[registry a.io]\ntls_verify = true\n"),
	    err, sizeof(err)), 0);
	assert_int_equal(config_check(&cfg, err, sizeof(err)), -1);
	assert_string_equal(err, "[registry a.io] url: missing");
	config_free(&cfg);
}

/* The example shipped in config/ must stay loadable. */
static void
test_example(void **state)
{
	struct config cfg;
	char err[CONFIG_ERR_MAX], path[512];
	const char *src = getenv("PP_SOURCE_DIR");

	(void)state;
	assert_non_null(src);
	snprintf(path, sizeof(path), "%s/config/pullproxy.conf", src);
	config_init(&cfg);
	if (config_load_file(&cfg, path, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	assert_int_equal(config_check(&cfg, err, sizeof(err)), 0);
	assert_string_equal(cfg.registries[0].name, "myregistry.azurecr.io");
	config_free(&cfg);
}

static int
setup(void **state)
{
	(void)state;
	return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int
teardown(void **state)
{
	char cmd[300];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults_and_flags),
		cmocka_unit_test(test_bad_flags),
		cmocka_unit_test(test_file),
		cmocka_unit_test(test_bad_files),
		cmocka_unit_test(test_missing_url),
		cmocka_unit_test(test_example),
	};

	return cmocka_run_group_tests_name("config", tests, setup, teardown);
}
