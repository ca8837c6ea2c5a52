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

/* --peer-listen sets [fleet] peer_listen over the file's. */
static void
test_peer_listen_flag(void **state)
{
	struct config cfg;
	char err[CONFIG_ERR_MAX];

	(void)state;
	assert_int_equal(parse(&cfg, err, 2, "--peer-listen",
	    "10.240.0.4:5001"), 0);
	assert_string_equal(cfg.fleet.peer_listen_host, "10.240.0.4");
	assert_int_equal(cfg.fleet.peer_listen_port, 5001);
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
	expect_flag_error("--peer-listen", "10.0.0.1", "--peer-listen: expected");
	expect_flag_error("--bogus", "1", "--bogus: unknown option");
	/* Unknown before its value is looked for: not "needs a value". */
	expect_flag_error("--bogus", NULL, "--bogus: unknown option");
	expect_flag_error("--bogus=1", NULL, "--bogus: unknown option");
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
	    "2: [nope] x: unknown section (expected [server], [fleet] or "
	    "[registry HOST])");
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
test_auth(void **state)
{
	struct config cfg;
	char err[CONFIG_ERR_MAX];
	const struct config_registry *r;

	(void)state;
	config_init(&cfg);
	assert_int_equal(config_load_file(&cfg, write_file("auth.conf",
	    "[registry a.azurecr.io]\n"
	    "url = https://a.azurecr.io\n"
	    "auth = managed-identity\n"
	    "client_id = 6f2b3c4d-0000-4000-8000-00000000c1d1\n"
	    "tenant = a1b2c3d4\n"
	    "imds_url = http://127.0.0.1:8080/\n"
	    "imds_retry_s = 5\n"
	    "[registry b.io]\n"
	    "url = https://b.io\n"
	    "auth = basic\n"
	    "username_file = /run/secrets/user\n"
	    "password_file = /run/secrets/password\n"
	    "[registry c.azurecr.io]\n"
	    "url = https://c.azurecr.io\n"
	    "auth = acr-refresh-token\n"
	    "refresh_token_file = /run/secrets/token\n"
	    "[registry d.io]\n"
	    "url = https://d.io\n"), err, sizeof(err)), 0);
	assert_int_equal(config_check(&cfg, err, sizeof(err)), 0);
	r = &cfg.registries[0];
	assert_int_equal(r->auth_kind, CONFIG_AUTH_MANAGED_IDENTITY);
	assert_string_equal(r->client_id,
	    "6f2b3c4d-0000-4000-8000-00000000c1d1");
	assert_string_equal(r->tenant, "a1b2c3d4");
	assert_string_equal(r->imds_url, "http://127.0.0.1:8080");
	assert_int_equal(r->imds_retry_s, 5);
	r = &cfg.registries[1];
	assert_int_equal(r->auth_kind, CONFIG_AUTH_BASIC);
	assert_string_equal(r->username_file, "/run/secrets/user");
	assert_string_equal(r->password_file, "/run/secrets/password");
	r = &cfg.registries[2];
	assert_int_equal(r->auth_kind, CONFIG_AUTH_ACR_REFRESH_TOKEN);
	assert_string_equal(r->refresh_token_file, "/run/secrets/token");
	/* Defaults: anonymous, the real IMDS, 70 s of IMDS retries. */
	r = &cfg.registries[3];
	assert_int_equal(r->auth_kind, CONFIG_AUTH_ANONYMOUS);
	assert_null(r->imds_url);
	assert_int_equal(r->imds_retry_s, 70);
	assert_string_equal(config_auth_name(r->auth_kind), "anonymous");
	assert_string_equal(config_auth_name(CONFIG_AUTH_ACR_REFRESH_TOKEN),
	    "acr-refresh-token");
	config_free(&cfg);

	/* A registry added by flag pulls anonymously. */
	assert_int_equal(parse(&cfg, err, 2, "--registry", "e.io=https://e.io"),
	    0);
	assert_int_equal(cfg.registries[0].auth_kind, CONFIG_AUTH_ANONYMOUS);
	assert_int_equal(config_check(&cfg, err, sizeof(err)), 0);
	config_free(&cfg);
}

static void
expect_check_error(const char *text, const char *want)
{
	struct config cfg;
	char err[CONFIG_ERR_MAX];

	config_init(&cfg);
	assert_int_equal(config_load_file(&cfg, write_file("check.conf", text),
	    err, sizeof(err)), 0);
	assert_int_equal(config_check(&cfg, err, sizeof(err)), -1);
	if (strcmp(err, want) != 0)
		fail_msg("got \"%s\", want \"%s\"", err, want);
	config_free(&cfg);
}

static void
test_bad_auth(void **state)
{
	(void)state;
	expect_file_error("[registry a]\nauth = token\n",
	    "2: [registry a] auth: expected anonymous, basic, "
	    "acr-refresh-token or managed-identity");
	expect_file_error("[registry a]\nauth = Basic\n",
	    "2: [registry a] auth: expected anonymous, basic, "
	    "acr-refresh-token or managed-identity");
	expect_file_error("[registry a]\npassword_file =\n",
	    "2: [registry a] password_file: must not be empty");
	expect_file_error("[registry a]\nimds_url = 169.254.169.254\n",
	    "2: [registry a] imds_url: URL must start with http:// or "
	    "https://");
	expect_file_error("[registry a]\nimds_retry_s = 9999\n",
	    "2: [registry a] imds_retry_s: expected a whole number 0-600");
	expect_file_error("[registry a]\npassword = hunter2\n",
	    "2: [registry a] password: unknown key");
	expect_check_error("[registry a]\nurl = https://a\nauth = basic\n"
	    "password_file = /p\n",
	    "[registry a] username_file: missing (auth = basic)");
	expect_check_error("[registry a]\nurl = https://a\nauth = basic\n"
	    "username_file = /u\n",
	    "[registry a] password_file: missing (auth = basic)");
	expect_check_error("[registry a]\nurl = https://a\n"
	    "auth = acr-refresh-token\n",
	    "[registry a] refresh_token_file: missing "
	    "(auth = acr-refresh-token)");
	/* Another auth's settings: likely a typo in auth, never ignored. */
	expect_check_error("[registry a]\nurl = https://a\n"
	    "client_id = x\n",
	    "[registry a] client_id: only used with auth = managed-identity");
	expect_check_error("[registry a]\nurl = https://a\n"
	    "auth = managed-identity\nusername_file = /u\n",
	    "[registry a] username_file: only used with auth = basic");
	expect_check_error("[registry a]\nurl = https://a\nauth = basic\n"
	    "username_file = /u\npassword_file = /p\n"
	    "refresh_token_file = /t\n",
	    "[registry a] refresh_token_file: only used with "
	    "auth = acr-refresh-token");
	expect_check_error("[registry a]\nurl = https://a\n"
	    "auth = acr-refresh-token\nrefresh_token_file = /t\n"
	    "imds_url = http://x\n",
	    "[registry a] imds_url: only used with auth = managed-identity");
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

static void
test_ratelimit(void **state)
{
	struct config cfg;
	char err[CONFIG_ERR_MAX];
	const char *path;

	(void)state;
	path = write_file("rate.conf",
	    "[registry a.example]\n"
	    "url = https://a.example\n"
	    "rate = 0.5\n"
	    "burst = 3\n"
	    "max_wait_s = 0\n"
	    "fleet_rate = 45\n"
	    "fleet_nodes = 12\n"
	    "[registry b.example]\n"
	    "url = https://b.example\n");
	config_init(&cfg);
	assert_int_equal(config_load_file(&cfg, path, err, sizeof(err)), 0);
	assert_true(cfg.registries[0].rate == 0.5);
	assert_int_equal(cfg.registries[0].burst, 3);
	assert_int_equal(cfg.registries[0].max_wait_s, 0);
	assert_true(cfg.registries[0].fleet_rate == 45);
	assert_int_equal(cfg.registries[0].fleet_nodes, 12);
	/* Defaults: one node well under a Basic registry's 1,000/min. */
	assert_true(cfg.registries[1].rate == 10);
	assert_int_equal(cfg.registries[1].burst, 20);
	assert_int_equal(cfg.registries[1].max_wait_s, 30);
	/* No fleet budget unless given: the ceiling is rate. */
	assert_true(cfg.registries[1].fleet_rate == 0);
	assert_int_equal(cfg.registries[1].fleet_nodes, 0);
	config_free(&cfg);

	expect_file_error("[registry a.example]\nrate = 0\n",
	    "2: [registry a.example] rate: expected requests per second, "
	    "0.01-100000");
	expect_file_error("[registry a.example]\nrate = fast\n",
	    "2: [registry a.example] rate: expected requests per second, "
	    "0.01-100000");
	expect_file_error("[registry a.example]\nburst = 0\n",
	    "2: [registry a.example] burst: expected a whole number 1-100000");
	expect_file_error("[registry a.example]\nburst = 2.5\n",
	    "2: [registry a.example] burst: expected a whole number 1-100000");
	expect_file_error("[registry a.example]\nfleet_rate = 0\n",
	    "2: [registry a.example] fleet_rate: expected requests per "
	    "second, 0.01-100000");
	expect_file_error("[registry a.example]\nfleet_nodes = 0\n",
	    "2: [registry a.example] fleet_nodes: expected a whole number "
	    "1-100000");
	expect_file_error("[registry a.example]\nmax_wait_s = -1\n",
	    "2: [registry a.example] max_wait_s: expected a whole number "
	    "0-3600");
}

/* Off loopback only with a client token; one line naming the key. */
static void
test_listen_security(void **state)
{
	static const char *open[] = { "0.0.0.0:5000", "[::]:5000",
	    "10.1.2.3:5000", "node.example:5000", "[::ffff:10.0.0.1]:5000" };
	static const char *loopback[] = { "127.0.0.1:5000", "127.9.8.7:5000",
	    "[::1]:5000", "localhost:5000", "[::ffff:127.0.0.1]:5000" };
	struct config cfg;
	char err[CONFIG_ERR_MAX];
	const char *path;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(open) / sizeof(open[0]); i++) {
		assert_int_equal(parse(&cfg, err, 4, "--listen", open[i],
		    "--registry", "a.io=https://a.io"), 0);
		assert_int_equal(config_check(&cfg, err, sizeof(err)), -1);
		if (strncmp(err, "[server] listen: ", 17) != 0 ||
		    strstr(err, "client_token_file") == NULL)
			fail_msg("%s: %s", open[i], err);
		assert_null(strchr(err, '\n'));
		config_free(&cfg);
	}
	for (i = 0; i < sizeof(loopback) / sizeof(loopback[0]); i++) {
		assert_int_equal(parse(&cfg, err, 4, "--listen", loopback[i],
		    "--registry", "a.io=https://a.io"), 0);
		if (config_check(&cfg, err, sizeof(err)) != 0)
			fail_msg("%s: %s", loopback[i], err);
		config_free(&cfg);
	}
	path = write_file("token.conf", "[server]\nlisten = 0.0.0.0:5000\n"
	    "client_token_file = /etc/pullproxy/token\nheader_timeout_s = 3\n"
	    "[registry a.io]\nurl = https://a.io\n");
	config_init(&cfg);
	assert_int_equal(config_load_file(&cfg, path, err, sizeof(err)), 0);
	assert_int_equal(config_check(&cfg, err, sizeof(err)), 0);
	assert_string_equal(cfg.client_token_file, "/etc/pullproxy/token");
	assert_int_equal(cfg.header_timeout_s, 3);
	config_free(&cfg);
	config_init(&cfg);
	assert_int_equal(cfg.header_timeout_s, 10);
	assert_null(cfg.client_token_file);
	config_free(&cfg);

	/* A client CA is a credential too; TLS files come in pairs. */
	assert_int_equal(parse(&cfg, err, 4, "--listen", "0.0.0.0:5000",
	    "--registry", "a.io=https://a.io"), 0);
	cfg.tls_cert_file = strdup("/c.pem");
	cfg.tls_key_file = strdup("/k.pem");
	cfg.client_ca_file = strdup("/ca.pem");
	assert_int_equal(config_check(&cfg, err, sizeof(err)), 0);
	free(cfg.tls_key_file);
	cfg.tls_key_file = NULL;
	assert_int_equal(config_check(&cfg, err, sizeof(err)), -1);
	assert_string_equal(err, "[server] tls_key_file: missing (TLS needs "
	    "tls_cert_file and tls_key_file)");
	free(cfg.tls_cert_file);
	cfg.tls_cert_file = NULL;
	assert_int_equal(config_check(&cfg, err, sizeof(err)), -1);
	assert_string_equal(err, "[server] client_ca_file: only used with "
	    "TLS (tls_cert_file and tls_key_file)");
	config_free(&cfg);

	expect_file_error("[server]\nclient_token_file =\n",
	    "2: [server] client_token_file: must not be empty");
	expect_file_error("[server]\nheader_timeout_s = 0\n",
	    "2: [server] header_timeout_s: expected a whole number 1-300");
}

/* Load text (with a registry added) and run the whole-config checks. */
static int
load_and_check(struct config *cfg, const char *text, char *err)
{
	char full[2048];

	snprintf(full, sizeof(full), "[registry r.example]\n"
	    "url = https://r.example\n%s", text);
	config_init(cfg);
	assert_int_equal(config_load_file(cfg, write_file("fleet.conf", full),
	    err, CONFIG_ERR_MAX), 0);
	return config_check(cfg, err, CONFIG_ERR_MAX);
}

static void
test_fleet(void **state)
{
	struct config cfg;
	char err[CONFIG_ERR_MAX];

	(void)state;
	/* Off by default, with the defaults the fleet uses when on. */
	config_init(&cfg);
	assert_false(config_fleet_on(&cfg));
	assert_int_equal(cfg.fleet.fanout, 4);
	assert_int_equal(cfg.fleet.resolve_s, 5);
	assert_int_equal(cfg.fleet.stale_s, 30);
	config_free(&cfg);

	assert_int_equal(load_and_check(&cfg, "[fleet]\n"
	    "peers = 10.0.0.1:5001, 10.0.0.2:5001 [fd00::3]:5001\n"
	    "peers_dns = pullproxy-peers.kube-system.svc.cluster.local,"
	    "pool2.kube-system.svc.cluster.local\n"
	    "peers_port = 5002\n"
	    "peers_dns_server = 10.0.0.10\n"
	    "peer_listen = 0.0.0.0:5001\n"
	    "peer_token_file = /etc/pullproxy/peer-token\n"
	    "fanout = 8\nresolve_s = 2\nstale_s = 60\n", err), 0);
	assert_true(config_fleet_on(&cfg));
	assert_int_equal(cfg.fleet.npeers, 3);
	assert_string_equal(cfg.fleet.peers[0].host, "10.0.0.1");
	assert_int_equal(cfg.fleet.peers[0].port, 5001);
	assert_string_equal(cfg.fleet.peers[2].host, "fd00::3");
	assert_int_equal(cfg.fleet.npeers_dns, 2);
	assert_string_equal(cfg.fleet.peers_dns[0],
	    "pullproxy-peers.kube-system.svc.cluster.local");
	assert_string_equal(cfg.fleet.peers_dns[1],
	    "pool2.kube-system.svc.cluster.local");
	assert_int_equal(cfg.fleet.peers_port, 5002);
	assert_string_equal(cfg.fleet.peers_dns_server, "10.0.0.10");
	assert_int_equal(cfg.fleet.peers_dns_server_port, 53);
	assert_string_equal(cfg.fleet.peer_listen_host, "0.0.0.0");
	assert_int_equal(cfg.fleet.peer_listen_port, 5001);
	assert_string_equal(cfg.fleet.peer_token_file,
	    "/etc/pullproxy/peer-token");
	assert_int_equal(cfg.fleet.fanout, 8);
	assert_int_equal(cfg.fleet.resolve_s, 2);
	assert_int_equal(cfg.fleet.stale_s, 60);
	config_free(&cfg);

	assert_int_equal(load_and_check(&cfg, "[fleet]\npeers_dns = p.test\n"
	    "peers_dns_server = 127.0.0.1:5353\n"
	    "peer_listen = 10.0.0.1:5001\npeer_token_file = t\n", err), 0);
	assert_string_equal(cfg.fleet.peers_dns_server, "127.0.0.1");
	assert_int_equal(cfg.fleet.peers_dns_server_port, 5353);
	config_free(&cfg);

	/* The key again replaces the list. */
	assert_int_equal(load_and_check(&cfg, "[fleet]\npeers = a:1, b:2\n"
	    "peers = c:3\npeer_listen = 10.0.0.1:5001\n"
	    "peer_token_file = t\n", err), 0);
	assert_int_equal(cfg.fleet.npeers, 1);
	assert_string_equal(cfg.fleet.peers[0].host, "c");
	config_free(&cfg);
}

static void
test_bad_fleet(void **state)
{
	struct config cfg;
	char err[CONFIG_ERR_MAX];

	(void)state;
	expect_file_error("[fleet]\npeers = 10.0.0.1\n",
	    "2: [fleet] peers: expected HOST:PORT");
	expect_file_error("[fleet]\npeers = 10.0.0.1:5001, 10.0.0.2:0\n",
	    "2: [fleet] peers: port must be 1-65535");
	expect_file_error("[fleet]\npeers = ,\n",
	    "2: [fleet] peers: needs at least one HOST:PORT");
	expect_file_error("[fleet]\npeers_dns = a.svc, peers.svc:5001\n",
	    "2: [fleet] peers_dns: expected DNS names (no port: see "
	    "peers_port)");
	expect_file_error("[fleet]\npeers_dns = ,\n",
	    "2: [fleet] peers_dns: needs at least one name");
	expect_file_error("[fleet]\npeers_dns_server = kube-dns\n",
	    "2: [fleet] peers_dns_server: expected an IPv4 address with an "
	    "optional :PORT");
	expect_file_error("[fleet]\npeers_dns_server = 10.0.0.10:0\n",
	    "2: [fleet] peers_dns_server: port must be 1-65535");
	expect_file_error("[fleet]\n\npeers_port = 70000\n",
	    "3: [fleet] peers_port: expected a whole number 1-65535");
	expect_file_error("[fleet]\npeer_listen = 5001\n",
	    "2: [fleet] peer_listen: expected HOST:PORT");
	expect_file_error("[fleet]\nfanout = 0\n",
	    "2: [fleet] fanout: expected a whole number 1-64");
	expect_file_error("[fleet]\npeer_token_file =\n",
	    "2: [fleet] peer_token_file: must not be empty");
	expect_file_error("[fleet]\nfleet_fanout = 4\n",
	    "2: [fleet] fleet_fanout: unknown key");

	/* Whole-config checks: what a fleet cannot go without. */
	assert_int_equal(load_and_check(&cfg, "[fleet]\npeers = a:1\n"
	    "peer_token_file = t\n", err), -1);
	assert_string_equal(err, "[fleet] peer_listen: missing (the address "
	    "peers reach this node on)");
	config_free(&cfg);
	assert_int_equal(load_and_check(&cfg, "[fleet]\npeers_dns = p\n"
	    "peer_listen = 10.0.0.1:5001\n", err), -1);
	assert_string_equal(err, "[fleet] peer_token_file: missing (peers "
	    "send and require the cluster's token)");
	config_free(&cfg);
	assert_int_equal(load_and_check(&cfg, "[server]\n"
	    "listen = 127.0.0.1:5000\n[fleet]\npeers = a:1\n"
	    "peer_listen = 0.0.0.0:5000\npeer_token_file = t\n", err), -1);
	assert_string_equal(err, "[fleet] peer_listen: must not share "
	    "[server] listen's address and port");
	config_free(&cfg);
	assert_int_equal(load_and_check(&cfg, "[fleet]\npeers = a:1\n"
	    "peers_dns_server = 10.0.0.10\npeer_listen = 10.0.0.1:5001\n"
	    "peer_token_file = t\n", err), -1);
	assert_string_equal(err, "[fleet] peers_dns_server: only used with "
	    "peers_dns");
	config_free(&cfg);
	assert_int_equal(load_and_check(&cfg, "[fleet]\n"
	    "peer_listen = 10.0.0.1:5001\n", err), -1);
	assert_string_equal(err, "[fleet] peer_listen: only used with peers "
	    "or peers_dns");
	config_free(&cfg);
}

/*
 * A key given again replaces its value: the list and string setters free
 * the old value once (a double free here aborts under ASan), including a
 * mirror list refilled after a shorter or failed one.
 */
static void
test_repeated_keys(void **state)
{
	struct config cfg;
	struct config_registry *r;
	char err[CONFIG_ERR_MAX];
	const char *path;

	(void)state;
	path = write_file("again.conf", "[server]\n"
	    "listen = 127.0.0.1:1\nlisten = 127.0.0.2:2\n"
	    "cache_dir = /a\ncache_dir = /b\nlog = /a.log\nlog = /b.log\n"
	    "platform = linux/amd64\nplatform = linux/arm64\n"
	    "client_token_file = /a\nclient_token_file = /b\n"
	    "[registry a.io]\nurl = https://a.io\nurl = https://b.io/\n"
	    "mirrors = http://m1, http://m2, http://m3\n"
	    "mirrors = http://m4\n"
	    "mirrors = http://m5 http://m6\n"
	    "ca_file = /a\nca_file = /b\nclient_id = a\nclient_id = b\n"
	    "tenant = a\ntenant = b\nimds_url = http://a\n"
	    "imds_url = http://b\nusername_file = /a\nusername_file = /b\n"
	    "password_file = /a\npassword_file = /b\n"
	    "refresh_token_file = /a\nrefresh_token_file = /b\n"
	    "mirror_token_file = /a\nmirror_token_file = /b\n"
	    "[registry a.io]\nmirrors = http://m7\n"
	    "[fleet]\npeers = a:1, b:2\npeers = c:3\n"
	    "peers_dns = x.svc, y.svc\npeers_dns = z.svc\n"
	    "peers_dns_server = 10.0.0.1\npeers_dns_server = 10.0.0.2:54\n"
	    "peer_listen = 10.0.0.1:1\npeer_listen = 10.0.0.2:2\n"
	    "peer_token_file = /a\npeer_token_file = /b\n");
	config_init(&cfg);
	assert_int_equal(config_load_file(&cfg, path, err, sizeof(err)), 0);
	assert_string_equal(cfg.listen_host, "127.0.0.2");
	assert_string_equal(cfg.cache_dir, "/b");
	assert_string_equal(cfg.log_file, "/b.log");
	assert_string_equal(cfg.platform, "linux/arm64");
	assert_string_equal(cfg.client_token_file, "/b");
	assert_int_equal(cfg.nregistries, 1);
	r = &cfg.registries[0];
	assert_string_equal(r->url, "https://b.io");
	assert_int_equal(r->nmirrors, 1);
	assert_string_equal(r->mirrors[0].url, "http://m7");
	assert_null(r->mirrors[1].url);
	assert_string_equal(r->ca_file, "/b");
	assert_string_equal(r->client_id, "b");
	assert_string_equal(r->tenant, "b");
	assert_string_equal(r->imds_url, "http://b");
	assert_string_equal(r->username_file, "/b");
	assert_string_equal(r->password_file, "/b");
	assert_string_equal(r->refresh_token_file, "/b");
	assert_string_equal(r->mirror_token_file, "/b");
	assert_int_equal(cfg.fleet.npeers, 1);
	assert_string_equal(cfg.fleet.peers[0].host, "c");
	assert_int_equal(cfg.fleet.npeers_dns, 1);
	assert_string_equal(cfg.fleet.peers_dns[0], "z.svc");
	assert_string_equal(cfg.fleet.peers_dns_server, "10.0.0.2");
	assert_int_equal(cfg.fleet.peers_dns_server_port, 54);
	assert_string_equal(cfg.fleet.peer_listen_host, "10.0.0.2");
	assert_int_equal(cfg.fleet.peer_listen_port, 2);
	assert_string_equal(cfg.fleet.peer_token_file, "/b");
	config_free(&cfg);

	/* A list that failed half way, then given again. */
	expect_file_error("[registry a.io]\nurl = https://a.io\n"
	    "mirrors = http://m1 http://m2 http://m3 http://m4 http://m5\n"
	    "mirrors = http://m6\n",
	    "3: [registry a.io] mirrors: at most 4 mirrors");
	expect_file_error("[registry a.io]\nurl = https://a.io\n"
	    "mirrors = http://m1, ftp://m2\nmirrors = http://m3\n",
	    "3: [registry a.io] mirrors: URL must start with http:// or "
	    "https://");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_listen_security),
		cmocka_unit_test(test_defaults_and_flags),
		cmocka_unit_test(test_bad_flags),
		cmocka_unit_test(test_peer_listen_flag),
		cmocka_unit_test(test_file),
		cmocka_unit_test(test_bad_files),
		cmocka_unit_test(test_fleet),
		cmocka_unit_test(test_bad_fleet),
		cmocka_unit_test(test_auth),
		cmocka_unit_test(test_bad_auth),
		cmocka_unit_test(test_missing_url),
		cmocka_unit_test(test_example),
		cmocka_unit_test(test_ratelimit),
		cmocka_unit_test(test_repeated_keys),
	};

	return cmocka_run_group_tests_name("config", tests, setup, teardown);
}
