/*
 * pullproxy: a node-local pull-through mirror for OCI registries.
 */
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cachecmd.h"
#include "check.h"
#include "fleetcmd.h"
#include "config.h"
#include "containerd_config.h"
#include "log.h"
#include "logs.h"
#include "prefetch.h"
#include "server.h"

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: pullproxy serve [--listen HOST:PORT] [--cache-dir DIR]\n"
	    "                       [--registry HOST=URL ...] [--config FILE]\n"
	    "                       [--log FILE] [--log-level LEVEL]\n"
	    "                       [--peer-listen IP:PORT]\n"
	    "       pullproxy cache [--cache-dir DIR] [--config FILE] [--json]\n"
	    "                       stats|ls|verify [DIGEST...]|evict DIGEST...|\n"
	    "                       evict --to SIZE|purge\n"
	    "       pullproxy logs [--since DURATION] [--json] [FILE|-]\n"
	    "       pullproxy containerd-config [--config FILE] [--hosts-dir DIR]\n"
	    "                       [--containerd-config FILE] [--force]\n"
	    "                       [--dry-run] [--remove]\n"
	    "       pullproxy check [--config FILE] [--registry HOST[=URL]]\n"
	    "                       [--json] [IMAGE]\n"
	    "       pullproxy fleet [--config FILE] [--for SECONDS] [KEY ...]\n"
	    "       pullproxy prefetch [--config FILE] [--listen HOST:PORT]\n"
	    "                       [--platform OS/ARCH] [--quiet] IMAGE...\n"
	    "       pullproxy --version | --help\n"
	    "\n"
	    "  serve         run the mirror (containerd points hosts.toml at it)\n"
	    "  --listen      address to serve on (default 127.0.0.1:5000)\n"
	    "  --cache-dir   cache directory (default /var/lib/pullproxy)\n"
	    "  --registry    HOST=URL: serve registry HOST (the ns containerd\n"
	    "                sends) from URL; repeat for more; the first is the\n"
	    "                default when a client sends no ns\n"
	    "  --config      INI file (see config/pullproxy.conf); flags win\n"
	    "  --log         JSON log file (default stderr, - for stderr)\n"
	    "  --log-level   debug|info|warn|error (debug logs every request)\n"
	    "  --cache-max-size SIZE  cache budget, e.g. 20G (default 10G)\n"
	    "  --tag-ttl SECONDS      how long a tag is trusted (default 60)\n"
	    "  --peer-listen IP:PORT  [fleet] peer_listen: this node's peer\n"
	    "                         address (a DaemonSet's node IP)\n"
	    "\n"
	    "  cache         inspect the cache: stats, ls (with each blob's\n"
	    "                images), verify (re-hash every blob), evict, purge;\n"
	    "                evict and purge ask a running server\n"
	    "  logs          incident summary of a JSON log (also as kubectl\n"
	    "                logs --timestamps or the CRI log file prints it):\n"
	    "                failures per cause and registry with hints, what\n"
	    "                clients got, what was served\n"
	    "  containerd-config  write containerd's hosts.toml for each\n"
	    "                registry (pullproxy first, the registry as\n"
	    "                fallback); --remove takes back what it wrote\n"
	    "  check         can this node pull? config, name, DNS, TCP, TLS,\n"
	    "                /v2/, identity, manifest, platform and a blob,\n"
	    "                each with the cause and hint of a failure; exit 0\n"
	    "                only when a pull would work (default config\n"
	    "                " CHECK_DEFAULT_CONFIG ")\n"
	    "  fleet         the [fleet] members this node resolves, and the\n"
	    "                owner of each KEY (sha256:... or REGISTRY/REPO:TAG),\n"
	    "                one JSON line per change for --for SECONDS\n"
	    "  prefetch      pull images (this node's platform) into the\n"
	    "                running server's cache, without containerd\n"
	    "\n"
	    "  SIGHUP to serve reloads the registries (auth, pace, mirrors);\n"
	    "  listeners and the cache need a restart.\n");
}

struct cmd_serve_args {
	int	 argc;
	char	**argv;
};

/* SIGHUP: the same flags and file again, checked the same way. */
static struct config *
cmd_serve_load(void *arg, char *err, size_t errlen)
{
	const struct cmd_serve_args *a = arg;
	struct config *cfg;

	if ((cfg = malloc(sizeof(*cfg))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	config_init(cfg);
	if (config_parse_args(cfg, a->argc, a->argv, err, errlen) != 0 ||
	    config_check(cfg, err, errlen) == -1) {
		config_free(cfg);
		free(cfg);
		return NULL;
	}
	return cfg;
}

static int
cmd_serve(int argc, char **argv)
{
	struct cmd_serve_args args = { argc, argv };
	struct config cfg;
	char err[CONFIG_ERR_MAX];
	int rc;

	config_init(&cfg);
	rc = config_parse_args(&cfg, argc, argv, err, sizeof(err));
	if (rc == 1) {
		usage(stdout);
		config_free(&cfg);
		return 0;
	}
	if (rc == -1 || config_check(&cfg, err, sizeof(err)) == -1) {
		fprintf(stderr, "pullproxy: %s\n", err);
		config_free(&cfg);
		return 2;
	}
	if (log_open(cfg.log_file, (enum log_level)cfg.log_level) == -1) {
		fprintf(stderr, "pullproxy: --log: cannot open %s: %s\n",
		    cfg.log_file, strerror(errno));
		config_free(&cfg);
		return 2;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		fprintf(stderr, "pullproxy: cannot initialise libcurl\n");
		config_free(&cfg);
		return 1;
	}
	rc = server_run(&cfg, cmd_serve_load, &args);
	curl_global_cleanup();
	log_close();
	config_free(&cfg);
	return rc;
}

int
main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
		printf("pullproxy %s (libcurl %s)\n", PULLPROXY_VERSION,
		    curl_version_info(CURLVERSION_NOW)->version);
		return 0;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(argv[1], "serve") == 0)
		return cmd_serve(argc - 1, argv + 1);
	if (strcmp(argv[1], "cache") == 0)
		return cachecmd_main(argc - 1, argv + 1);
	if (strcmp(argv[1], "logs") == 0)
		return logs_main(argc - 1, argv + 1);
	if (strcmp(argv[1], "containerd-config") == 0)
		return containerd_config_main(argc - 1, argv + 1);
	if (strcmp(argv[1], "check") == 0)
		return check_main(argc - 1, argv + 1);
	if (strcmp(argv[1], "fleet") == 0)
		return fleetcmd_main(argc - 1, argv + 1);
	if (strcmp(argv[1], "prefetch") == 0)
		return prefetch_main(argc - 1, argv + 1);
	fprintf(stderr, "pullproxy: unknown command '%s' (try --help)\n",
	    argv[1]);
	return 2;
}
