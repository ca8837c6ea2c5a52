/*
 * containerd_config: `pullproxy containerd-config`, containerd's hosts.toml for
 * every configured registry (pullproxy first, the registry itself as
 * server, so containerd falls back when pullproxy is down), and --remove
 * to take back exactly those files. Files it did not write are never
 * touched. The scanning and rendering functions do no I/O so that tests
 * can feed them text.
 */
#ifndef PP_HOSTSCONF_H
#define PP_HOSTSCONF_H

#include <stddef.h>
#include <stdio.h>

#include "config.h"

#define CONTAINERD_CONFIG_DIR		"/etc/containerd/certs.d"
#define CONTAINERD_CONFIG_CONTAINERD	"/etc/containerd/config.toml"
#define CONTAINERD_CONFIG_CONFIG	"/etc/pullproxy/pullproxy.conf"
/* The first line of every file pullproxy writes: how --remove knows it. */
#define CONTAINERD_CONFIG_MARK		"# written by pullproxy containerd-config; " \
	"pullproxy containerd-config --remove takes it back\n"
/* The second line when pullproxy also made the directory. */
#define CONTAINERD_CONFIG_MARK_DIR	"# pullproxy containerd-config created this " \
	"directory: --remove removes it once empty\n"
/* Where --force keeps a foreign hosts.toml until --remove. */
#define CONTAINERD_CONFIG_SAVED		"hosts.toml.pullproxy-saved"
#define CONTAINERD_CONFIG_ERR_MAX	1024

/* What a containerd config.toml says about its registry hosts dir. */
struct containerd_config_ctd {
	char	config_path[1024];	/* the value, "" when not set */
	char	table[256];		/* where it was found, as a TOML table */
	int	line;			/* its line, 0 when not set */
	long	version;		/* the top-level "version", 0 when absent */
	int	imports;		/* 1: "imports" (not followed) */
};

/*
 * Scan a containerd config for the CRI registry's config_path, in any of
 * [plugins."io.containerd.grpc.v1.cri".registry] (containerd 1.x, config
 * version 2), [plugins."io.containerd.cri.v1.images".registry] (2.x) or
 * [plugins.cri.registry] (version 1), dotted keys included. A line scanner,
 * not a TOML parser: it follows tables, keys and strings, and steps over
 * multi-line arrays and strings. Returns 0, or -1 with *bad_line set when
 * config_path is there but is not a one-line string.
 */
int containerd_config_ctd_scan(const char *text, struct containerd_config_ctd *ctd,
    int *bad_line);

/* 1 when dir is one of config_path's ':'-separated directories. */
int containerd_config_path_listed(const char *config_path, const char *dir);

/* 1 when text is a hosts.toml pullproxy wrote; *created_dir says whether
 * pullproxy also made its directory. */
int containerd_config_is_ours(const char *text, int *created_dir);

/*
 * The hosts.toml for registry r with pullproxy at listen_host:listen_port
 * (a wildcard listen address becomes loopback). Returns the length, or -1
 * when it does not fit or a value cannot be written as a TOML string.
 */
int containerd_config_render(const struct config_registry *r, const char *listen_host,
    int listen_port, int created_dir, char *buf, size_t len);

struct containerd_config_opts {
	const char	*hosts_dir;
	int		 dry_run;	/* say what would change, change nothing */
	int		 force;		/* set foreign files aside, don't refuse */
};

/*
 * Write DIR/<registry>/hosts.toml for every registry of cfg (atomically:
 * a temporary file in the same directory, fsync, rename), leave identical
 * files as they are, and remove files of ours for registries no longer
 * configured. A registry whose hosts.toml pullproxy did not write (unless
 * force) or whose DIR/<registry> is not a directory is skipped, with a
 * "skip PATH: why" line; the others are written all the same. One line
 * per change goes to out. Returns the number of registries skipped, or -1
 * with err set to one line naming the file.
 */
int containerd_config_apply(const struct config *cfg, const struct containerd_config_opts *o,
    FILE *out, char *err, size_t errlen);

/*
 * Remove every DIR/<name>/hosts.toml pullproxy wrote, put back what
 * --force set aside, and remove the directories pullproxy made once
 * empty. Returns 0, or -1 with err set.
 */
int containerd_config_remove(const struct containerd_config_opts *o, FILE *out, char *err,
    size_t errlen);

/*
 * Read containerd's config at path and check that its config_path lists
 * dir. One line on what it found goes to out. Returns 0, or -1 with err
 * set to one line naming the file.
 */
int containerd_config_check_containerd(const char *path, const char *dir, FILE *out,
    char *err, size_t errlen);

/* argv[0] is "containerd-config". Returns the exit status: 0, skipped
 * registries included; 1 when a file could not be read or written; 2 for
 * usage, config and containerd config errors. */
int containerd_config_main(int argc, char **argv);

#endif
