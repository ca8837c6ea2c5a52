/*
 * config: pullproxy's settings, from an INI file and command-line flags.
 * Flags override the file. Every error names where it came from
 * ("FILE:LINE: ..." or "--flag: ...") in one line.
 */
#ifndef PP_CONFIG_H
#define PP_CONFIG_H

#include <stddef.h>

#define CONFIG_REGISTRY_MAX	32
#define CONFIG_MIRROR_MAX	4
#define CONFIG_ERR_MAX		512
#define CONFIG_IMDS_URL		"http://169.254.169.254"

/* Who pullproxy is to a registry (auth.h does the work). */
enum config_auth {
	CONFIG_AUTH_ANONYMOUS = 0,	/* Bearer challenges, no credentials */
	CONFIG_AUTH_BASIC,		/* username and password files */
	CONFIG_AUTH_ACR_REFRESH_TOKEN,	/* an ACR refresh token file */
	CONFIG_AUTH_MANAGED_IDENTITY,	/* IMDS, then ACR's token exchange */
};

/*
 * A mirror of a registry (an in-cluster pullproxy, a distribution or
 * Harbor proxy, an ACR connected registry), asked before it.
 */
struct config_mirror {
	char		*url;		/* base URL, as the registry's */
};

struct config_registry {
	char	*name;		/* the host containerd sends as ns */
	char	*url;		/* upstream base URL, http:// or https://, no trailing / */
	char	*ca_file;	/* extra CA bundle for this registry, or NULL */
	int	 tls_verify;	/* 1 unless the file says tls_verify = false */
	enum config_auth auth_kind;	/* the file's "auth"; anonymous */
	/* Paths, never the secrets: files are read when a token is fetched. */
	char	*username_file;		/* basic */
	char	*password_file;		/* basic */
	char	*refresh_token_file;	/* acr-refresh-token */
	char	*client_id;	/* managed-identity: NULL for the only one */
	char	*tenant;	/* managed-identity: sent to the exchange */
	char	*imds_url;	/* managed-identity: NULL: CONFIG_IMDS_URL */
	long	 imds_retry_s;	/* 70: the most back-off spent retrying IMDS */
	/*
	 * Upstream pace (ratelimit.h). ACR Basic allows 1,000 ReadOps/min
	 * (about 16/s) for the whole registry, one per manifest and layer:
	 * 10/s keeps one node well under it, and a burst of 20 lets a whole
	 * image (index, manifest, config, a dozen layers) start at once.
	 * Lower the rate when many nodes pull from a Basic registry together.
	 */
	double	 rate;		/* 10: requests per second */
	long	 burst;		/* 20: requests at once after a quiet spell */
	long	 max_wait_s;	/* 30: longest wait for a token, then 503 */
	/*
	 * The fleet's budget (ratelimit_fleet): requests per second the
	 * whole cluster may spend on this registry (ACR: ReadOps per minute
	 * / 60, less a margin; docs/pacing.md), shared by fleet_nodes nodes
	 * until the fleet counts the live ones. Each node's ceiling is then
	 * min(rate, fleet_rate / nodes).
	 */
	double	 fleet_rate;	/* 0: no budget, the ceiling is rate */
	long	 fleet_nodes;	/* 0: [fleet] peers' count, else 1 */
	/*
	 * Failing fast (circuit.h): after circuit_failures transfers in a row
	 * fail in transport or with a 5xx, refuse for circuit_open_s, then
	 * probe. retries: sends after a transient failure (upstream.h).
	 */
	long	 circuit_failures;	/* 5; 0: never open */
	long	 circuit_open_s;	/* 10 */
	long	 retries;		/* 2 */
	/*
	 * mirrors = URL, URL: tried in order before url, each with its own
	 * circuit. Asked without the registry's credentials, with
	 * ?ns=<name> as containerd asks a mirror.
	 */
	struct config_mirror mirrors[CONFIG_MIRROR_MAX];
	size_t	 nmirrors;
	/* A client token the mirrors want (a pullproxy off loopback does). */
	char	*mirror_token_file;
};

/* A peer as written in [fleet] peers: a name or an address, and a port. */
struct config_peer {
	char	*host;
	int	 port;
};

/*
 * [fleet]: other pullproxies of the cluster, asked before the registry
 * (docs/fleet.md). Members come from peers (a static list: write it the
 * same on every node) and from peers_dns (names whose A/AAAA records are
 * the members, e.g. a headless Service), resolved again every resolve_s
 * off the event loop. On when either is set.
 */
struct config_fleet {
	struct config_peer *peers;	/* NULL */
	size_t	 npeers;
	/*
	 * One DNS answer holds at most 64 KiB, about 4,000 A records: a
	 * bigger fleet is several names (a Service per node pool).
	 */
	char	**peers_dns;		/* NULL */
	size_t	 npeers_dns;
	int	 peers_port;		/* 0: peer_listen's port */
	/*
	 * Ask peers_dns of this server (IPv4, e.g. kube-dns's ClusterIP)
	 * instead of the node's resolv.conf: a hostNetwork pod with
	 * dnsPolicy Default cannot resolve cluster names otherwise.
	 */
	char	*peers_dns_server;	/* NULL: the system's resolver */
	int	 peers_dns_server_port;	/* 53 */
	/*
	 * The peer listener, apart from containerd's; a wildcard host
	 * (0.0.0.0, ::) listens on every address, and the node then knows
	 * itself among the members by its interfaces' addresses.
	 */
	char	*peer_listen_host;	/* NULL */
	int	 peer_listen_port;
	char	*peer_token_file;	/* the cluster's token, sent and required */
	long	 fanout;	/* 4: peers an owner serves a blob to at once */
	long	 resolve_s;	/* 5: seconds between resolutions */
	long	 stale_s;	/* 30: a source's last answer is kept this long */
};

struct config {
	char	*listen_host;	/* 127.0.0.1 */
	int	 listen_port;	/* 5000 */
	char	*cache_dir;	/* /var/lib/pullproxy */
	unsigned long long cache_max_bytes;	/* 10 GiB: budget for cached content */
	int	 cache_high_pct;	/* 90: evict when above this % of the budget */
	int	 cache_low_pct;		/* 80: down to this % */
	long	 tag_ttl_s;	/* 60: a tag is trusted this long without asking */
	char	*log_file;	/* NULL: stderr */
	int	 log_level;	/* LOG_LEVEL_* from log.h */
	long	 connect_timeout_ms;	/* 10000 */
	long	 stall_timeout_s;	/* 30: no byte from upstream for this long */
	long	 shutdown_timeout_s;	/* 30: in-flight transfers on SIGTERM */
	char	*platform;	/* "os/arch[/variant]"; NULL: the node's (uname) */
	/*
	 * Clients (guard.h): the credentials every request but the health
	 * probes must carry (one is required to listen off loopback): a
	 * token, a certificate from client_ca_file (TLS, then mutual), or
	 * both; and how long a request's head (request line and headers)
	 * may take to arrive.
	 */
	char	*client_token_file;	/* NULL: none asked */
	char	*tls_cert_file;		/* NULL: plain HTTP */
	char	*tls_key_file;
	char	*client_ca_file;	/* NULL: no client certificate asked */
	long	 header_timeout_s;	/* 10 */
	/*
	 * A listener for Prometheus apart from containerd's: /metrics,
	 * /healthz and /readyz only, no credential asked (the node IP, so
	 * the cluster's scraper reaches it while pulls stay on loopback).
	 */
	char	*metrics_listen_host;	/* NULL: none */
	int	 metrics_listen_port;
	/* A connection with nothing to read or write for this long is
	 * closed: kept-alive idle ones, and clients that stopped reading. */
	long	 idle_timeout_s;	/* 60 */
	struct config_fleet fleet;
	size_t	 nregistries;
	struct config_registry registries[CONFIG_REGISTRY_MAX];
};

/* Defaults, no registries. */
void config_init(struct config *cfg);
void config_free(struct config *cfg);

/*
 * Read an INI file into cfg. On error returns -1 with err set to
 * "PATH:LINE: what is wrong". Unknown sections or keys are errors.
 */
int config_load_file(struct config *cfg, const char *path, char *err,
    size_t errlen);

/*
 * Parse "serve" flags (argv[0] is the subcommand). --config is read first,
 * wherever it stands, so that later flags override the file.
 * Returns 0, 1 when --help was given (usage printed by the caller), or -1 with
 * err set to "--flag: what is wrong" (or the file's error).
 */
int config_parse_args(struct config *cfg, int argc, char **argv, char *err,
    size_t errlen);

/*
 * Whole-config checks: at least one registry, each with a URL and with
 * the files its auth needs (and no settings another auth would use); a
 * listen address off loopback only with a client credential
 * (client_token_file or client_ca_file); TLS keys in pairs; a fleet
 * (peers or peers_dns) with a peer_listen apart from listen and a
 * peer_token_file.
 */
int config_check(const struct config *cfg, char *err, size_t errlen);

/* "anonymous", "basic", "acr-refresh-token" or "managed-identity". */
const char *config_auth_name(enum config_auth kind);

/* Whether [fleet] names any member source. */
int config_fleet_on(const struct config *cfg);

/* The registry containerd names with ns, or the first when ns is NULL. */
const struct config_registry *config_registry_find(const struct config *cfg,
    const char *ns);

#endif
