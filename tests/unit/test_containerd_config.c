#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"
#include "containerd_config.h"

/* ------------------------------------------------ containerd's config */

static void
scan_ok(const char *text, const char *path, int line, const char *table)
{
	struct containerd_config_ctd ctd;
	int bad;

	assert_int_equal(containerd_config_ctd_scan(text, &ctd, &bad), 0);
	assert_string_equal(ctd.config_path, path);
	assert_int_equal(ctd.line, line);
	if (table != NULL)
		assert_string_equal(ctd.table, table);
}

static void
test_scan_tables(void **state)
{
	struct containerd_config_ctd ctd;
	int bad;

	(void)state;
	/* containerd 1.6/1.7, config version 2: what AKS nodes have. */
	scan_ok("version = 2\n"
	    "[plugins.\"io.containerd.grpc.v1.cri\"]\n"
	    "  sandbox_image = \"mcr.microsoft.com/oss/kubernetes/pause:3.6\"\n"
	    "  [plugins.\"io.containerd.grpc.v1.cri\".registry]\n"
	    "    config_path = \"/etc/containerd/certs.d\"\n",
	    "/etc/containerd/certs.d", 5,
	    "plugins.\"io.containerd.grpc.v1.cri\".registry");
	/* containerd 2.x, version 3; blanks around dots, a literal string. */
	scan_ok("version = 3\n"
	    "[ plugins . 'io.containerd.cri.v1.images' . registry ]\n"
	    "config_path = '/etc/containerd/certs.d'   # comment\n",
	    "/etc/containerd/certs.d", 3,
	    "plugins.\"io.containerd.cri.v1.images\".registry");
	/* version 1 short names. */
	scan_ok("[plugins.cri.registry]\nconfig_path = \"/x\"\n", "/x", 2,
	    "plugins.cri.registry");
	/* Dotted keys under a parent table, and from the top. */
	scan_ok("[plugins.\"io.containerd.grpc.v1.cri\"]\n"
	    "registry.config_path = \"/a\"\n", "/a", 2, NULL);
	scan_ok("plugins.\"io.containerd.grpc.v1.cri\".registry.config_path"
	    " = \"/b\"\n", "/b", 1, NULL);
	/* Escapes a path can hold. */
	scan_ok("[plugins.cri.registry]\nconfig_path = \"/c\\\\d\"\n", "/c\\d",
	    2, NULL);

	/* Not set: mirrors only, another plugin, a comment, a sub-table. */
	assert_int_equal(containerd_config_ctd_scan(
	    "version = 2\n"
	    "[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors]\n"
	    "config_path = \"/no\"\n"
	    "[plugins.\"io.containerd.grpc.v1.cri\".registry]\n"
	    "# config_path = \"/etc/containerd/certs.d\"\n"
	    "  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors."
	    "\"docker.io\"]\n"
	    "    endpoint = [\"https://registry-1.docker.io\"]\n"
	    "[plugins.\"io.containerd.other\".registry]\n"
	    "config_path = \"/no\"\n", &ctd, &bad), 0);
	assert_int_equal(ctd.line, 0);
	assert_string_equal(ctd.config_path, "");
	assert_int_equal(ctd.version, 2);
	assert_int_equal(ctd.imports, 0);

	/* imports are noticed (not followed). */
	assert_int_equal(containerd_config_ctd_scan("version = 3\n"
	    "imports = [\"/etc/containerd/conf.d/*.toml\"]\n", &ctd, &bad), 0);
	assert_int_equal(ctd.version, 3);
	assert_int_equal(ctd.imports, 1);
	assert_int_equal(ctd.line, 0);
}

static void
test_scan_multiline(void **state)
{
	struct containerd_config_ctd ctd;
	int bad;

	(void)state;
	/*
	 * A multi-line array whose items look like a table header and a
	 * key must not be read as either, and lines stay counted.
	 */
	scan_ok("disabled_plugins = [\n"
	    "  \"a]\",  # ] in a comment\n"
	    "  [\"x\"],\n"
	    "config_path = \"/no\",\n"
	    "]\n"
	    "[plugins.\"io.containerd.grpc.v1.cri\".registry]\n"
	    "config_path = \"/yes\"\n", "/yes", 7, NULL);
	scan_ok("[plugins.cri.registry]\n"
	    "note = \"\"\"\n"
	    "[plugins.cri]\n"
	    "config_path = \"/no\"\n"
	    "\"\"\"\n"
	    "config_path = \"/yes\"\n", "/yes", 6, NULL);
	/* CRLF line ends and no final newline. */
	scan_ok("[plugins.cri.registry]\r\nconfig_path = \"/crlf\"", "/crlf",
	    2, NULL);

	/* Present but not a one-line string: refused with its line. */
	assert_int_equal(containerd_config_ctd_scan("\n[plugins.cri.registry]\n"
	    "config_path = [\"/a\"]\n", &ctd, &bad), -1);
	assert_int_equal(bad, 3);
	assert_int_equal(containerd_config_ctd_scan("[plugins.cri.registry]\n"
	    "config_path = \"/unterminated\n", &ctd, &bad), -1);
	assert_int_equal(bad, 2);
	assert_int_equal(containerd_config_ctd_scan("[plugins.cri.registry]\n"
	    "config_path = \"\"\"/x\"\"\"\n", &ctd, &bad), -1);
	/* Nonsense is stepped over, never read past its end. */
	assert_int_equal(containerd_config_ctd_scan("[[[\n= = =\n\"\n'\n[a.\"b\n"
	    "x = [\"\n", &ctd, &bad), 0);
	assert_int_equal(ctd.line, 0);
	assert_int_equal(containerd_config_ctd_scan("", &ctd, &bad), 0);
	assert_int_equal(ctd.line, 0);
}

static void
test_path_listed(void **state)
{
	(void)state;
	assert_true(containerd_config_path_listed("/etc/containerd/certs.d",
	    "/etc/containerd/certs.d"));
	assert_true(containerd_config_path_listed("/etc/containerd/certs.d/",
	    "/etc/containerd/certs.d"));
	assert_true(containerd_config_path_listed("/etc/containerd/certs.d",
	    "/etc/containerd/certs.d//"));
	assert_true(containerd_config_path_listed(
	    "/etc/containerd/certs.d:/etc/docker/certs.d",
	    "/etc/docker/certs.d"));
	assert_false(containerd_config_path_listed("/etc/containerd/certs.d",
	    "/etc/containerd/certs"));
	assert_false(containerd_config_path_listed("/etc/containerd/certs",
	    "/etc/containerd/certs.d"));
	assert_false(containerd_config_path_listed("", "/etc/containerd/certs.d"));
	assert_false(containerd_config_path_listed("::", "/x"));
	assert_true(containerd_config_path_listed("/", "/"));
}

/* ---------------------------------------------------------- hosts.toml */

static void
test_render(void **state)
{
	struct config_registry r = { .name = "myacr.azurecr.io",
	    .url = "https://myacr.azurecr.io" };
	char buf[2048], small[64];
	int created = -1, n;

	(void)state;
	n = containerd_config_render(&r, "127.0.0.1", 5000, 0, buf, sizeof(buf));
	assert_true(n > 0);
	assert_int_equal((size_t)n, strlen(buf));
	assert_int_equal(strncmp(buf, CONTAINERD_CONFIG_MARK, strlen(CONTAINERD_CONFIG_MARK)),
	    0);
	assert_non_null(strstr(buf,
	    "\nserver = \"https://myacr.azurecr.io\"\n"));
	assert_non_null(strstr(buf, "\n[host.\"http://127.0.0.1:5000\"]\n"
	    "  capabilities = [\"pull\", \"resolve\"]\n"));
	/* The host comes before nothing else: server is the fallback. */
	assert_true(strstr(buf, "server =") < strstr(buf, "[host."));
	assert_null(strstr(buf, CONTAINERD_CONFIG_MARK_DIR));
	assert_true(containerd_config_is_ours(buf, &created));
	assert_int_equal(created, 0);

	n = containerd_config_render(&r, "0.0.0.0", 5001, 1, buf, sizeof(buf));
	assert_true(n > 0);
	assert_non_null(strstr(buf, "[host.\"http://127.0.0.1:5001\"]"));
	assert_true(containerd_config_is_ours(buf, &created));
	assert_int_equal(created, 1);

	assert_true(containerd_config_render(&r, "::", 5000, 0, buf, sizeof(buf)) > 0);
	assert_non_null(strstr(buf, "[host.\"http://[::1]:5000\"]"));
	assert_true(containerd_config_render(&r, "fd00::1", 80, 0, buf,
	    sizeof(buf)) > 0);
	assert_non_null(strstr(buf, "[host.\"http://[fd00::1]:80\"]"));

	/* Quotes are escaped, control characters refused, small buffers too. */
	r.url = "https://x/a\"b";
	assert_true(containerd_config_render(&r, "127.0.0.1", 5000, 0, buf,
	    sizeof(buf)) > 0);
	assert_non_null(strstr(buf, "server = \"https://x/a\\\"b\"\n"));
	r.url = "https://x/\n[host.\"http://evil\"]";
	assert_int_equal(containerd_config_render(&r, "127.0.0.1", 5000, 0, buf,
	    sizeof(buf)), -1);
	r.url = "https://myacr.azurecr.io";
	assert_int_equal(containerd_config_render(&r, "127.0.0.1", 5000, 0, small,
	    sizeof(small)), -1);

	assert_false(containerd_config_is_ours("server = \"https://x\"\n", NULL));
	assert_false(containerd_config_is_ours("", NULL));
	assert_false(containerd_config_is_ours("\n" CONTAINERD_CONFIG_MARK, NULL));
}

/* ------------------------------------------------------ on a directory */

struct fixture {
	char		 dir[64];
	struct config	 cfg;
	char		*out;
	size_t		 outlen;
	FILE		*f;
};

static void
add_registry(struct config *cfg, const char *name, const char *url)
{
	struct config_registry *r = &cfg->registries[cfg->nregistries++];

	r->name = strdup(name);
	r->url = strdup(url);
}

static int
setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));

	assert_non_null(fx);
	strcpy(fx->dir, "/tmp/pp-hostsconf-XXXXXX");
	assert_non_null(mkdtemp(fx->dir));
	config_init(&fx->cfg);
	add_registry(&fx->cfg, "myacr.azurecr.io", "https://myacr.azurecr.io");
	add_registry(&fx->cfg, "127.0.0.1:5001", "http://127.0.0.1:5001");
	*state = fx;
	return 0;
}

static void
rm_tree(const char *path)
{
	struct dirent *d;
	struct stat st;
	char sub[512];
	DIR *dp;

	if (lstat(path, &st) == -1)
		return;
	if (S_ISDIR(st.st_mode) && (dp = opendir(path)) != NULL) {
		while ((d = readdir(dp)) != NULL) {
			if (strcmp(d->d_name, ".") == 0 ||
			    strcmp(d->d_name, "..") == 0)
				continue;
			snprintf(sub, sizeof(sub), "%s/%s", path, d->d_name);
			rm_tree(sub);
		}
		closedir(dp);
		rmdir(path);
	} else
		unlink(path);
}

static int
teardown(void **state)
{
	struct fixture *fx = *state;

	rm_tree(fx->dir);
	config_free(&fx->cfg);
	if (fx->f != NULL)
		fclose(fx->f);
	free(fx->out);
	free(fx);
	return 0;
}

/* A fresh output stream; the previous one's text is dropped. */
static FILE *
out_reset(struct fixture *fx)
{
	if (fx->f != NULL)
		fclose(fx->f);
	free(fx->out);
	fx->out = NULL;
	fx->f = open_memstream(&fx->out, &fx->outlen);
	assert_non_null(fx->f);
	return fx->f;
}

static const char *
out_text(struct fixture *fx)
{
	fflush(fx->f);
	return fx->out;
}

static char *
path_of(struct fixture *fx, const char *rel)
{
	static char buf[512];

	snprintf(buf, sizeof(buf), "%s/%s", fx->dir, rel);
	return buf;
}

static char *
read_text(const char *path)
{
	static char buf[8192];
	size_t n;
	FILE *f = fopen(path, "r");

	if (f == NULL)
		return NULL;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return buf;
}

static void
write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

/* Names in dir (sorted, one per line), for before/after comparisons. */
static char *
listing(const char *dir)
{
	struct dirent **names;
	static char buf[4096];
	int i, n;

	buf[0] = '\0';
	n = scandir(dir, &names, NULL, alphasort);
	assert_true(n >= 0);
	for (i = 0; i < n; i++) {
		strcat(buf, names[i]->d_name);
		strcat(buf, "\n");
		free(names[i]);
	}
	free(names);
	return buf;
}

static void
test_apply_idempotent(void **state)
{
	struct fixture *fx = *state;
	struct containerd_config_opts o = { .hosts_dir = fx->dir };
	struct stat st1, st2;
	char err[CONTAINERD_CONFIG_ERR_MAX], *t;
	int created;

	assert_int_equal(containerd_config_apply(&fx->cfg, &o, out_reset(fx), err,
	    sizeof(err)), 0);
	assert_non_null(strstr(out_text(fx), "wrote "));
	t = read_text(path_of(fx, "myacr.azurecr.io/hosts.toml"));
	assert_non_null(t);
	assert_true(containerd_config_is_ours(t, &created));
	assert_int_equal(created, 1);
	assert_non_null(strstr(t, "server = \"https://myacr.azurecr.io\"\n"));
	assert_non_null(strstr(t, "[host.\"http://127.0.0.1:5000\"]"));
	t = read_text(path_of(fx, "127.0.0.1:5001/hosts.toml"));
	assert_non_null(t);
	assert_non_null(strstr(t, "server = \"http://127.0.0.1:5001\"\n"));
	/* No temporary file left behind. */
	assert_string_equal(listing(path_of(fx, "myacr.azurecr.io")),
	    ".\n..\nhosts.toml\n");
	assert_int_equal(stat(path_of(fx, "myacr.azurecr.io/hosts.toml"),
	    &st1), 0);

	/* Again: nothing changes, not even the inode. */
	assert_int_equal(containerd_config_apply(&fx->cfg, &o, out_reset(fx), err,
	    sizeof(err)), 0);
	assert_null(strstr(out_text(fx), "wrote "));
	assert_non_null(strstr(out_text(fx), "unchanged "));
	assert_int_equal(stat(path_of(fx, "myacr.azurecr.io/hosts.toml"),
	    &st2), 0);
	assert_int_equal(st1.st_ino, st2.st_ino);

	/* A new listen address rewrites the file, keeping its mark. */
	fx->cfg.listen_port = 5005;
	assert_int_equal(containerd_config_apply(&fx->cfg, &o, out_reset(fx), err,
	    sizeof(err)), 0);
	t = read_text(path_of(fx, "myacr.azurecr.io/hosts.toml"));
	assert_non_null(strstr(t, "[host.\"http://127.0.0.1:5005\"]"));
	assert_true(containerd_config_is_ours(t, &created));
	assert_int_equal(created, 1);

	/* A registry dropped from the config: its file goes too. */
	free(fx->cfg.registries[1].name);
	free(fx->cfg.registries[1].url);
	memset(&fx->cfg.registries[1], 0, sizeof(fx->cfg.registries[1]));
	fx->cfg.nregistries = 1;
	assert_int_equal(containerd_config_apply(&fx->cfg, &o, out_reset(fx), err,
	    sizeof(err)), 0);
	assert_string_equal(listing(fx->dir), ".\n..\nmyacr.azurecr.io\n");

	/* --remove: back to the empty directory. */
	assert_int_equal(containerd_config_remove(&o, out_reset(fx), err,
	    sizeof(err)), 0);
	assert_string_equal(listing(fx->dir), ".\n..\n");
}

static void
test_foreign_left_alone(void **state)
{
	struct fixture *fx = *state;
	struct containerd_config_opts o = { .hosts_dir = fx->dir };
	char err[CONTAINERD_CONFIG_ERR_MAX], before[4096], line[600];
	const char *foreign = "server = \"https://myacr.azurecr.io\"\n"
	    "[host.\"https://mirror.example\"]\n";

	assert_int_equal(mkdir(path_of(fx, "myacr.azurecr.io"), 0755), 0);
	write_text(path_of(fx, "myacr.azurecr.io/hosts.toml"), foreign);
	write_text(path_of(fx, "myacr.azurecr.io/ca.crt"), "cert\n");
	strcpy(before, listing(fx->dir));

	/* That registry is skipped, with the file named; the other one is
	 * written all the same (AKS writes mcr.microsoft.com/hosts.toml). */
	assert_int_equal(containerd_config_apply(&fx->cfg, &o, out_reset(fx), err,
	    sizeof(err)), 1);
	snprintf(line, sizeof(line), "skip %s: not written by pullproxy",
	    path_of(fx, "myacr.azurecr.io/hosts.toml"));
	assert_non_null(strstr(out_text(fx), line));
	assert_string_equal(listing(path_of(fx, "myacr.azurecr.io")),
	    ".\n..\nca.crt\nhosts.toml\n");
	assert_string_equal(read_text(path_of(fx,
	    "myacr.azurecr.io/hosts.toml")), foreign);
	assert_true(containerd_config_is_ours(read_text(path_of(fx,
	    "127.0.0.1:5001/hosts.toml")), NULL));
	/* Again: still skipped, the other unchanged. */
	assert_int_equal(containerd_config_apply(&fx->cfg, &o, out_reset(fx), err,
	    sizeof(err)), 1);
	assert_non_null(strstr(out_text(fx), line));
	assert_non_null(strstr(out_text(fx), "unchanged "));
	assert_string_equal(read_text(path_of(fx,
	    "myacr.azurecr.io/hosts.toml")), foreign);
	/* Taking ours back leaves the directory as it was found. */
	assert_int_equal(containerd_config_remove(&o, out_reset(fx), err,
	    sizeof(err)), 0);
	assert_string_equal(listing(fx->dir), before);

	/* A plain file where a registry's directory should be: skipped too. */
	write_text(path_of(fx, "127.0.0.1:5001"), "not a directory\n");
	assert_int_equal(containerd_config_apply(&fx->cfg, &o, out_reset(fx), err,
	    sizeof(err)), 2);
	assert_non_null(strstr(out_text(fx), "not a directory"));
	assert_string_equal(read_text(path_of(fx, "127.0.0.1:5001")),
	    "not a directory\n");
	assert_int_equal(unlink(path_of(fx, "127.0.0.1:5001")), 0);

	/* --remove leaves it as well. */
	assert_int_equal(containerd_config_remove(&o, out_reset(fx), err,
	    sizeof(err)), 0);
	assert_string_equal(read_text(path_of(fx,
	    "myacr.azurecr.io/hosts.toml")), foreign);

	/* --force sets it aside; --remove puts it back, byte for byte. */
	o.force = 1;
	assert_int_equal(containerd_config_apply(&fx->cfg, &o, out_reset(fx), err,
	    sizeof(err)), 0);
	assert_true(containerd_config_is_ours(read_text(path_of(fx,
	    "myacr.azurecr.io/hosts.toml")), NULL));
	assert_string_equal(read_text(path_of(fx,
	    "myacr.azurecr.io/" CONTAINERD_CONFIG_SAVED)), foreign);
	/* A second --force run does not set aside its own file. */
	assert_int_equal(containerd_config_apply(&fx->cfg, &o, out_reset(fx), err,
	    sizeof(err)), 0);
	assert_string_equal(read_text(path_of(fx,
	    "myacr.azurecr.io/" CONTAINERD_CONFIG_SAVED)), foreign);
	assert_int_equal(containerd_config_remove(&o, out_reset(fx), err,
	    sizeof(err)), 0);
	assert_string_equal(read_text(path_of(fx,
	    "myacr.azurecr.io/hosts.toml")), foreign);
	assert_string_equal(listing(path_of(fx, "myacr.azurecr.io")),
	    ".\n..\nca.crt\nhosts.toml\n");
	assert_string_equal(listing(fx->dir), before);
}

static void
test_remove_keeps_others(void **state)
{
	struct fixture *fx = *state;
	struct containerd_config_opts o = { .hosts_dir = fx->dir };
	char err[CONTAINERD_CONFIG_ERR_MAX], before[4096];

	/* A directory that was there before (with a CA) stays. */
	assert_int_equal(mkdir(path_of(fx, "myacr.azurecr.io"), 0755), 0);
	write_text(path_of(fx, "myacr.azurecr.io/ca.crt"), "cert\n");
	assert_int_equal(mkdir(path_of(fx, "docker.io"), 0755), 0);
	write_text(path_of(fx, "docker.io/hosts.toml"), "server = \"x\"\n");
	write_text(path_of(fx, "stray-file"), "x\n");
	strcpy(before, listing(fx->dir));

	/* --dry-run changes nothing. */
	o.dry_run = 1;
	assert_int_equal(containerd_config_apply(&fx->cfg, &o, out_reset(fx), err,
	    sizeof(err)), 0);
	assert_non_null(strstr(out_text(fx), "would write "));
	assert_string_equal(listing(fx->dir), before);
	o.dry_run = 0;

	assert_int_equal(containerd_config_apply(&fx->cfg, &o, out_reset(fx), err,
	    sizeof(err)), 0);
	assert_true(containerd_config_is_ours(read_text(path_of(fx,
	    "127.0.0.1:5001/hosts.toml")), NULL));
	/* A file pullproxy made in a directory it did not make: no mark. */
	assert_null(strstr(read_text(path_of(fx,
	    "myacr.azurecr.io/hosts.toml")), CONTAINERD_CONFIG_MARK_DIR));

	/* Someone adds a file to a directory pullproxy made: it stays. */
	write_text(path_of(fx, "127.0.0.1:5001/ca.crt"), "cert\n");
	assert_int_equal(containerd_config_remove(&o, out_reset(fx), err,
	    sizeof(err)), 0);
	assert_non_null(strstr(out_text(fx), "keep "));
	assert_string_equal(listing(path_of(fx, "127.0.0.1:5001")),
	    ".\n..\nca.crt\n");
	unlink(path_of(fx, "127.0.0.1:5001/ca.crt"));
	rmdir(path_of(fx, "127.0.0.1:5001"));
	assert_string_equal(listing(fx->dir), before);
	assert_string_equal(listing(path_of(fx, "myacr.azurecr.io")),
	    ".\n..\nca.crt\n");
	assert_string_equal(read_text(path_of(fx, "docker.io/hosts.toml")),
	    "server = \"x\"\n");
}

static void
test_missing_dir(void **state)
{
	struct fixture *fx = *state;
	struct containerd_config_opts o = { .hosts_dir = path_of(fx, "nope") };
	char err[CONTAINERD_CONFIG_ERR_MAX];

	assert_int_equal(containerd_config_apply(&fx->cfg, &o, out_reset(fx), err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, "/nope: "));
	assert_int_equal(containerd_config_remove(&o, out_reset(fx), err,
	    sizeof(err)), -1);
	/* A registry name that would leave the directory is refused. */
	o.hosts_dir = fx->dir;
	free(fx->cfg.registries[1].name);
	fx->cfg.registries[1].name = strdup("..");
	assert_int_equal(containerd_config_apply(&fx->cfg, &o, out_reset(fx), err,
	    sizeof(err)), -1);
	assert_string_equal(listing(fx->dir), ".\n..\n");
}

static void
test_check_containerd(void **state)
{
	struct fixture *fx = *state;
	char err[CONTAINERD_CONFIG_ERR_MAX], *cfgpath;

	cfgpath = strdup(path_of(fx, "config.toml"));
	write_text(cfgpath, "version = 2\n"
	    "[plugins.\"io.containerd.grpc.v1.cri\".registry]\n"
	    "  config_path = \"/etc/containerd/certs.d\"\n");
	assert_int_equal(containerd_config_check_containerd(cfgpath,
	    "/etc/containerd/certs.d", out_reset(fx), err, sizeof(err)), 0);
	assert_non_null(strstr(out_text(fx), "config.toml:3: "));

	/* Another directory: refused, naming the file and line. */
	assert_int_equal(containerd_config_check_containerd(cfgpath, "/srv/hosts",
	    out_reset(fx), err, sizeof(err)), -1);
	assert_int_equal(strncmp(err, cfgpath, strlen(cfgpath)), 0);
	assert_non_null(strstr(err, ":3: config_path = "));
	assert_null(strchr(err, '\n'));

	write_text(cfgpath,
	    "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n");
	assert_int_equal(containerd_config_check_containerd(cfgpath,
	    "/etc/containerd/certs.d", out_reset(fx), err, sizeof(err)), -1);
	assert_int_equal(strncmp(err, cfgpath, strlen(cfgpath)), 0);
	assert_non_null(strstr(err, "no config_path under "
	    "[plugins.\"io.containerd.grpc.v1.cri\".registry]"));

	unlink(cfgpath);
	assert_int_equal(containerd_config_check_containerd(cfgpath,
	    "/etc/containerd/certs.d", out_reset(fx), err, sizeof(err)), -1);
	assert_non_null(strstr(err, "No such file"));
	free(cfgpath);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scan_tables),
		cmocka_unit_test(test_scan_multiline),
		cmocka_unit_test(test_path_listed),
		cmocka_unit_test(test_render),
		cmocka_unit_test_setup_teardown(test_apply_idempotent, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_foreign_left_alone, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_remove_keeps_others, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_missing_dir, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_check_containerd, setup,
		    teardown),
	};

	return cmocka_run_group_tests_name("containerd_config", tests, NULL, NULL);
}
