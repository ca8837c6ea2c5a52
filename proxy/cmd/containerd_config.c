/*
 * containerd_config: `pullproxy containerd-config`.
 *
 * containerd reads DIR/<registry>/hosts.toml on every pull (no restart
 * needed), tries its hosts in file order and the server last. pullproxy
 * owns only the files whose first line is its mark: everything else in
 * DIR belongs to someone else and is never rewritten or removed.
 *
 * containerd's config.toml is read with a line scanner rather than a TOML
 * library: one key in one of three tables is all that is needed, and
 * Debian 12 has no maintained C TOML library to depend on.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "containerd_config.h"

#define CONTAINERD_CONFIG_FILE_MAX	(64 * 1024)	/* ours are < 1 KiB */
#define CONTAINERD_CONFIG_CTD_MAX	(4 * 1024 * 1024)
#define CONTAINERD_CONFIG_KEYS_MAX	8
#define CONTAINERD_CONFIG_KEY_MAX	128
/* Room left in a PATH_MAX for "/hosts.toml.pullproxy-saved". */
#define CONTAINERD_CONFIG_DIR_MAX	(PATH_MAX - 64)

static int __attribute__((format(printf, 3, 4)))
containerd_config_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

/* ------------------------------------------------ containerd's config */

struct containerd_config_keys {
	int	n;
	char	k[CONTAINERD_CONFIG_KEYS_MAX][CONTAINERD_CONFIG_KEY_MAX];
};

/* The CRI plugin's name in config versions 2, 3 and 1. */
static const char *containerd_config_cri_names[] = {
	"io.containerd.grpc.v1.cri",
	"io.containerd.cri.v1.images",
	"cri",
};

/*
 * A one-line basic ("...") or literal ('...') string at *pp, moved past
 * it. Escapes a path can hold are decoded; others (\u...) are refused
 * rather than compared wrongly.
 */
static int
containerd_config_toml_string(const char **pp, char *out, size_t outlen)
{
	const char *p = *pp;
	char q = *p++, c;
	size_t n = 0;

	for (; *p != q; p++) {
		c = *p;
		if (c == '\0' || c == '\n')
			return -1;
		if (q == '"' && c == '\\') {
			switch (*++p) {
			case '"': case '\\': c = *p; break;
			case 't': c = '\t'; break;
			default: return -1;
			}
		}
		if (n + 1 >= outlen)
			return -1;
		out[n++] = c;
	}
	out[n] = '\0';
	*pp = p + 1;
	return 0;
}

/* A dotted key (a.b."c.d") at *pp, moved past it and trailing blanks. */
static int
containerd_config_toml_keys(const char **pp, struct containerd_config_keys *keys)
{
	const char *p = *pp;
	size_t n;

	keys->n = 0;
	for (;;) {
		p += strspn(p, " \t");
		if (keys->n == CONTAINERD_CONFIG_KEYS_MAX)
			return -1;
		if (*p == '"' || *p == '\'') {
			if (containerd_config_toml_string(&p, keys->k[keys->n],
			    CONTAINERD_CONFIG_KEY_MAX) == -1)
				return -1;
		} else {
			for (n = 0; isalnum((unsigned char)p[n]) ||
			    p[n] == '_' || p[n] == '-'; n++)
				;
			if (n == 0 || n >= CONTAINERD_CONFIG_KEY_MAX)
				return -1;
			memcpy(keys->k[keys->n], p, n);
			keys->k[keys->n][n] = '\0';
			p += n;
		}
		keys->n++;
		p += strspn(p, " \t");
		if (*p != '.')
			break;
		p++;
	}
	*pp = p;
	return 0;
}

/*
 * Past a value that may span lines: a multi-line string or array starting
 * at v. Returns the end of its last line; *line counts the lines crossed.
 */
static const char *
containerd_config_toml_skip(const char *v, int *line)
{
	const char *p, *close;
	int depth = 0;
	char q;

	if (strncmp(v, "\"\"\"", 3) == 0 || strncmp(v, "'''", 3) == 0) {
		close = strstr(v + 3, v[0] == '"' ? "\"\"\"" : "'''");
		p = close != NULL ? close : v + strlen(v);
		for (close = v; close < p; close++)
			if (*close == '\n')
				(*line)++;
		return p + strcspn(p, "\n");
	}
	if (*v != '[')
		return v + strcspn(v, "\n");
	for (p = v; *p != '\0'; p++) {
		switch (*p) {
		case '[':
			depth++;
			break;
		case ']':
			if (--depth == 0)
				return p + strcspn(p, "\n");
			break;
		case '#':
			p += strcspn(p, "\n");
			if (*p == '\0')
				return p;
			(*line)++;
			break;
		case '\n':
			(*line)++;
			break;
		case '"': case '\'':
			q = *p;
			for (p++; *p != q && *p != '\0' && *p != '\n'; p++)
				if (q == '"' && *p == '\\' && p[1] != '\0' &&
				    p[1] != '\n')
					p++;
			if (*p == '\0')
				return p;
			if (*p == '\n')
				(*line)++;
			break;
		}
	}
	return p;
}

/* 1 when table + key is plugins.<cri>.registry.config_path. */
static int
containerd_config_is_config_path(const struct containerd_config_keys *table,
    const struct containerd_config_keys *key, const char **cri)
{
	const char *k[2 * CONTAINERD_CONFIG_KEYS_MAX];
	size_t i;
	int n = 0;

	for (i = 0; i < (size_t)table->n; i++)
		k[n++] = table->k[i];
	for (i = 0; i < (size_t)key->n; i++)
		k[n++] = key->k[i];
	if (n != 4 || strcmp(k[0], "plugins") != 0 ||
	    strcmp(k[2], "registry") != 0 || strcmp(k[3], "config_path") != 0)
		return 0;
	for (i = 0; i < sizeof(containerd_config_cri_names) /
	    sizeof(containerd_config_cri_names[0]); i++)
		if (strcmp(k[1], containerd_config_cri_names[i]) == 0) {
			*cri = containerd_config_cri_names[i];
			return 1;
		}
	return 0;
}

static int
containerd_config_ctd_key(struct containerd_config_ctd *ctd, const struct containerd_config_keys *table,
    const struct containerd_config_keys *key, const char *v, int line)
{
	const char *cri;

	if (table->n == 0 && key->n == 1 && strcmp(key->k[0], "version") == 0)
		ctd->version = strtol(v, NULL, 10);
	else if (table->n == 0 && key->n == 1 &&
	    strcmp(key->k[0], "imports") == 0)
		ctd->imports = 1;
	else if (containerd_config_is_config_path(table, key, &cri)) {
		if ((*v != '"' && *v != '\'') || strncmp(v, "\"\"\"", 3) == 0 ||
		    strncmp(v, "'''", 3) == 0 ||
		    containerd_config_toml_string(&v, ctd->config_path,
		    sizeof(ctd->config_path)) == -1)
			return -1;
		snprintf(ctd->table, sizeof(ctd->table),
		    strchr(cri, '.') != NULL ? "plugins.\"%s\".registry" :
		    "plugins.%s.registry", cri);
		ctd->line = line;
	}
	return 0;
}

int
containerd_config_ctd_scan(const char *text, struct containerd_config_ctd *ctd, int *bad_line)
{
	struct containerd_config_keys table, key;
	const char *p = text, *q, *v, *eol;
	int line = 1, kline, brackets;

	memset(ctd, 0, sizeof(*ctd));
	memset(&table, 0, sizeof(table));
	*bad_line = 0;
	while (*p != '\0') {
		eol = p + strcspn(p, "\n");
		kline = line;
		p += strspn(p, " \t\r");
		if (*p == '[') {
			/* [table] or [[array of tables]] */
			brackets = p[1] == '[' ? 2 : 1;
			q = p + brackets;
			/* A table it cannot read matches nothing. */
			if (containerd_config_toml_keys(&q, &table) == -1 || *q != ']')
				table.n = CONTAINERD_CONFIG_KEYS_MAX;
		} else if (*p != '#' && p < eol) {
			q = p;
			if (containerd_config_toml_keys(&q, &key) == 0 && *q == '=') {
				v = q + 1 + strspn(q + 1, " \t");
				eol = containerd_config_toml_skip(v, &line);
				if (containerd_config_ctd_key(ctd, &table, &key, v,
				    kline) == -1) {
					*bad_line = kline;
					return -1;
				}
			}
		}
		if (*eol == '\0')
			break;
		p = eol + 1;
		line++;
	}
	return 0;
}

int
containerd_config_path_listed(const char *config_path, const char *dir)
{
	const char *p = config_path;
	size_t dlen = strlen(dir), n, m;

	while (dlen > 1 && dir[dlen - 1] == '/')
		dlen--;
	for (;;) {
		n = strcspn(p, ":");
		for (m = n; m > 1 && p[m - 1] == '/'; m--)
			;
		if (m == dlen && m > 0 && strncmp(p, dir, dlen) == 0)
			return 1;
		if (p[n] == '\0')
			return 0;
		p += n + 1;
	}
}

/* ---------------------------------------------------------- hosts.toml */

int
containerd_config_is_ours(const char *text, int *created_dir)
{
	size_t ml = strlen(CONTAINERD_CONFIG_MARK);

	if (strncmp(text, CONTAINERD_CONFIG_MARK, ml) != 0)
		return 0;
	if (created_dir != NULL)
		*created_dir = strncmp(text + ml, CONTAINERD_CONFIG_MARK_DIR,
		    strlen(CONTAINERD_CONFIG_MARK_DIR)) == 0;
	return 1;
}

/* s as the inside of a TOML basic string; -1 for control characters. */
static int
containerd_config_quote(const char *s, char *buf, size_t len)
{
	size_t n = 0;

	for (; *s != '\0'; s++) {
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return -1;
		if (n + 3 > len)
			return -1;
		if (*s == '"' || *s == '\\')
			buf[n++] = '\\';
		buf[n++] = *s;
	}
	if (n + 1 > len)
		return -1;
	buf[n] = '\0';
	return 0;
}

int
containerd_config_render(const struct config_registry *r, const char *listen_host,
    int listen_port, int created_dir, char *buf, size_t len)
{
	char name[512], url[1024], host[300], hostq[620];
	const char *h = listen_host;
	int n;

	/* containerd runs on this node: a wildcard means loopback. */
	if (*h == '\0' || strcmp(h, "0.0.0.0") == 0)
		h = "127.0.0.1";
	else if (strcmp(h, "::") == 0)
		h = "::1";
	if (strchr(h, ':') != NULL)
		n = snprintf(host, sizeof(host), "[%s]", h);
	else
		n = snprintf(host, sizeof(host), "%s", h);
	if (n < 0 || (size_t)n >= sizeof(host) ||
	    containerd_config_quote(r->name, name, sizeof(name)) == -1 ||
	    containerd_config_quote(r->url, url, sizeof(url)) == -1 ||
	    containerd_config_quote(host, hostq, sizeof(hostq)) == -1)
		return -1;
	n = snprintf(buf, len,
	    "%s%s"
	    "#\n"
	    "# containerd pulls %s through this node's pullproxy;\n"
	    "# the registry (server) is the fallback when pullproxy fails.\n"
	    "server = \"%s\"\n"
	    "\n"
	    "[host.\"http://%s:%d\"]\n"
	    "  capabilities = [\"pull\", \"resolve\"]\n"
	    "  # Honoured from containerd 2.1; older versions ignore it.\n"
	    "  dial_timeout = \"200ms\"\n",
	    CONTAINERD_CONFIG_MARK, created_dir ? CONTAINERD_CONFIG_MARK_DIR : "", name, url,
	    hostq, listen_port);
	if (n < 0 || (size_t)n >= len)
		return -1;
	return n;
}

/* ------------------------------------------------------------ files */

/*
 * A whole file, NUL-terminated. -1 with errno set: EFBIG above max,
 * EINVAL when not a regular file, ELOOP for a symlink when nofollow.
 */
static int
containerd_config_slurp(const char *path, size_t max, int nofollow, char **out)
{
	struct stat st;
	ssize_t r;
	size_t n = 0;
	char *buf;
	int fd, saved;

	*out = NULL;
	/* O_NONBLOCK: a FIFO in its place must not hang us. */
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK |
	    (nofollow ? O_NOFOLLOW : 0))) == -1)
		return -1;
	if (fstat(fd, &st) == -1) {
		saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	if (!S_ISREG(st.st_mode) || (size_t)st.st_size > max) {
		close(fd);
		errno = S_ISREG(st.st_mode) ? EFBIG : EINVAL;
		return -1;
	}
	if ((buf = malloc((size_t)st.st_size + 1)) == NULL) {
		close(fd);
		return -1;
	}
	while (n < (size_t)st.st_size &&
	    (r = read(fd, buf + n, (size_t)st.st_size - n)) != 0) {
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1) {
			saved = errno;
			free(buf);
			close(fd);
			errno = saved;
			return -1;
		}
		n += (size_t)r;
	}
	close(fd);
	buf[n] = '\0';
	*out = buf;
	return 0;
}

enum containerd_config_state {
	CONTAINERD_CONFIG_ABSENT,
	CONTAINERD_CONFIG_OURS,
	CONTAINERD_CONFIG_FOREIGN,
};

/* One DIR/<name>/hosts.toml as found. */
struct containerd_config_file {
	char	dir[CONTAINERD_CONFIG_DIR_MAX];
	char	path[PATH_MAX];
	char	saved[PATH_MAX];
	int	dir_exists;
	int	notdir;		/* DIR/<name> is there but not a directory */
	int	saved_exists;
	enum containerd_config_state state;
	int	created_dir;	/* ours: its mark says pullproxy made dir */
	char	*text;		/* ours: what it holds */
};

static int
containerd_config_look(const char *hosts_dir, const char *name,
    struct containerd_config_file *f, char *err, size_t errlen)
{
	struct stat st;
	int n;

	memset(f, 0, sizeof(*f));
	/* A name is one path component: oci_host_valid allows "..". */
	if (name[0] == '.' || strchr(name, '/') != NULL)
		return containerd_config_err(err, errlen, "%s: not a registry host "
		    "name for a directory of %s", name, hosts_dir);
	n = snprintf(f->dir, sizeof(f->dir), "%s/%s", hosts_dir, name);
	if (n < 0 || (size_t)n >= sizeof(f->dir))
		return containerd_config_err(err, errlen, "%s/%s: path too long",
		    hosts_dir, name);
	snprintf(f->path, sizeof(f->path), "%s/hosts.toml", f->dir);
	snprintf(f->saved, sizeof(f->saved), "%s/" CONTAINERD_CONFIG_SAVED, f->dir);
	if (lstat(f->dir, &st) == -1) {
		if (errno == ENOENT)
			return 0;
		return containerd_config_err(err, errlen, "%s: %s", f->dir,
		    strerror(errno));
	}
	if (!S_ISDIR(st.st_mode)) {
		f->notdir = 1;
		f->state = CONTAINERD_CONFIG_FOREIGN;
		return 0;
	}
	f->dir_exists = 1;
	f->saved_exists = lstat(f->saved, &st) == 0;
	if (containerd_config_slurp(f->path, CONTAINERD_CONFIG_FILE_MAX, 1, &f->text) == -1) {
		if (errno == ENOENT)
			return 0;
		/* Too big, a symlink, not a file: not something we wrote. */
		if (errno == EFBIG || errno == EINVAL || errno == ELOOP) {
			f->state = CONTAINERD_CONFIG_FOREIGN;
			return 0;
		}
		return containerd_config_err(err, errlen, "%s: %s", f->path,
		    strerror(errno));
	}
	if (containerd_config_is_ours(f->text, &f->created_dir))
		f->state = CONTAINERD_CONFIG_OURS;
	else {
		f->state = CONTAINERD_CONFIG_FOREIGN;
		free(f->text);
		f->text = NULL;
	}
	return 0;
}

/* A rename or unlink in dir survives a crash only once dir is synced. */
static int
containerd_config_sync_dir(const char *dir, char *err, size_t errlen)
{
	int fd, rc;

	if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return containerd_config_err(err, errlen, "%s: %s", dir,
		    strerror(errno));
	rc = fsync(fd);
	close(fd);
	if (rc == -1)
		return containerd_config_err(err, errlen, "%s: fsync: %s", dir,
		    strerror(errno));
	return 0;
}

/*
 * Replace f->path with text: a temporary file in the same directory,
 * synced, then renamed over it, so containerd reads the old file or the
 * new one, never a part.
 */
static int
containerd_config_write(const struct containerd_config_file *f, const char *text,
    char *err, size_t errlen)
{
	char tmp[PATH_MAX];
	size_t len = strlen(text), off = 0;
	ssize_t w;
	int fd;

	snprintf(tmp, sizeof(tmp), "%s/.hosts.toml.XXXXXX", f->dir);
	if ((fd = mkstemp(tmp)) == -1)
		return containerd_config_err(err, errlen, "%s: cannot create a "
		    "temporary file: %s", f->dir, strerror(errno));
	while (off < len) {
		if ((w = write(fd, text + off, len - off)) == -1) {
			if (errno == EINTR)
				continue;
			goto fail;
		}
		off += (size_t)w;
	}
	if (fchmod(fd, 0644) == -1 || fsync(fd) == -1)
		goto fail;
	if (close(fd) == -1) {
		fd = -1;
		goto fail;
	}
	fd = -1;
	if (rename(tmp, f->path) == -1)
		goto fail;
	return containerd_config_sync_dir(f->dir, err, errlen);
fail:
	containerd_config_err(err, errlen, "%s: %s", f->path, strerror(errno));
	if (fd != -1)
		close(fd);
	unlink(tmp);
	return -1;
}

/*
 * Take back DIR/name/hosts.toml when it is ours: put back what --force
 * set aside, or remove it and then the directory if pullproxy made it
 * and it is empty. Anything else is left as it is.
 */
static int
containerd_config_takeback(const struct containerd_config_opts *o, const char *name,
    FILE *out, char *err, size_t errlen)
{
	struct containerd_config_file f;
	const char *would = o->dry_run ? "would " : "";
	int rc = -1;

	if (containerd_config_look(o->hosts_dir, name, &f, err, errlen) == -1)
		return -1;
	if (f.state != CONTAINERD_CONFIG_OURS) {
		free(f.text);
		return 0;
	}
	if (f.saved_exists) {
		if (!o->dry_run && rename(f.saved, f.path) == -1) {
			containerd_config_err(err, errlen, "%s: %s", f.saved,
			    strerror(errno));
			goto done;
		}
		fprintf(out, "%sput back %s (set aside by --force)\n", would,
		    f.path);
	} else {
		if (!o->dry_run && unlink(f.path) == -1) {
			containerd_config_err(err, errlen, "%s: %s", f.path,
			    strerror(errno));
			goto done;
		}
		fprintf(out, "%sremove %s\n", would, f.path);
	}
	if (!o->dry_run && containerd_config_sync_dir(f.dir, err, errlen) == -1)
		goto done;
	if (f.created_dir && !f.saved_exists) {
		if (o->dry_run)
			fprintf(out, "would remove %s if empty\n", f.dir);
		else if (rmdir(f.dir) == 0) {
			fprintf(out, "remove %s\n", f.dir);
			if (containerd_config_sync_dir(o->hosts_dir, err, errlen) == -1)
				goto done;
		} else if (errno == ENOTEMPTY || errno == EEXIST)
			fprintf(out, "keep %s: it holds other files\n", f.dir);
		else {
			containerd_config_err(err, errlen, "%s: %s", f.dir,
			    strerror(errno));
			goto done;
		}
	}
	rc = 0;
done:
	free(f.text);
	return rc;
}

static int
containerd_config_subdir(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

/* 1 when name is one of cfg's registries (cfg may be NULL). */
static int
containerd_config_configured(const struct config *cfg, const char *name)
{
	size_t i;

	for (i = 0; cfg != NULL && i < cfg->nregistries; i++)
		if (strcmp(cfg->registries[i].name, name) == 0)
			return 1;
	return 0;
}

/* Take back our files for every registry that cfg does not name. */
static int
containerd_config_sweep(const struct containerd_config_opts *o, const struct config *cfg,
    FILE *out, char *err, size_t errlen)
{
	struct dirent **names;
	int i, n, rc = 0;

	if ((n = scandir(o->hosts_dir, &names, containerd_config_subdir,
	    alphasort)) == -1)
		return containerd_config_err(err, errlen, "%s: %s", o->hosts_dir,
		    strerror(errno));
	for (i = 0; i < n; i++) {
		if (rc == 0 && !containerd_config_configured(cfg, names[i]->d_name))
			rc = containerd_config_takeback(o, names[i]->d_name, out, err,
			    errlen);
		free(names[i]);
	}
	free(names);
	return rc;
}

static int
containerd_config_dir_check(const char *dir, char *err, size_t errlen)
{
	struct stat st;

	if (stat(dir, &st) == -1)
		return containerd_config_err(err, errlen, "%s: %s (containerd's "
		    "config_path; --hosts-dir names another)", dir,
		    strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return containerd_config_err(err, errlen, "%s: not a directory", dir);
	return 0;
}

static void
containerd_config_files_free(struct containerd_config_file *files, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		free(files[i].text);
	free(files);
}

/* Write one registry's file; f says what is there now. */
static int
containerd_config_put(const struct containerd_config_opts *o, struct containerd_config_file *f,
    const char *text, FILE *out, char *err, size_t errlen)
{
	if (f->state == CONTAINERD_CONFIG_OURS && strcmp(f->text, text) == 0) {
		fprintf(out, "unchanged %s\n", f->path);
		return 0;
	}
	if (o->dry_run) {
		if (f->state == CONTAINERD_CONFIG_FOREIGN)
			fprintf(out, "would set %s aside as %s\n", f->path,
			    CONTAINERD_CONFIG_SAVED);
		fprintf(out, "would write %s\n", f->path);
		return 0;
	}
	if (!f->dir_exists) {
		if (mkdir(f->dir, 0755) == -1)
			return containerd_config_err(err, errlen, "%s: %s", f->dir,
			    strerror(errno));
		if (containerd_config_sync_dir(o->hosts_dir, err, errlen) == -1)
			return -1;
	}
	if (f->state == CONTAINERD_CONFIG_FOREIGN) {
		if (rename(f->path, f->saved) == -1)
			return containerd_config_err(err, errlen, "%s: %s", f->path,
			    strerror(errno));
		fprintf(out, "set %s aside as %s\n", f->path, CONTAINERD_CONFIG_SAVED);
	}
	if (containerd_config_write(f, text, err, errlen) == -1) {
		/* Leave things as they were found. */
		if (f->state == CONTAINERD_CONFIG_FOREIGN)
			rename(f->saved, f->path);
		if (!f->dir_exists)
			rmdir(f->dir);
		return -1;
	}
	fprintf(out, "wrote %s\n", f->path);
	return 0;
}

/*
 * Why f, as looked at, is not pullproxy's to write, or NULL when it is.
 * Such a registry is skipped: someone else (AKS node bootstrap writes
 * mcr.microsoft.com/hosts.toml on network-isolated clusters) decides how
 * containerd reaches it, and the other registries are still written.
 */
static const char *
containerd_config_skip_why(const struct containerd_config_opts *o,
    const struct containerd_config_file *f)
{
	if (f->notdir)
		return "not a directory";
	if (f->state != CONTAINERD_CONFIG_FOREIGN)
		return NULL;
	if (!o->force)
		return "not written by pullproxy (merge it by hand, or --force "
		    "to set it aside as " CONTAINERD_CONFIG_SAVED " until "
		    "--remove)";
	if (f->saved_exists)
		return "not written by pullproxy, and " CONTAINERD_CONFIG_SAVED
		    " already holds one set aside";
	return NULL;
}

int
containerd_config_apply(const struct config *cfg, const struct containerd_config_opts *o,
    FILE *out, char *err, size_t errlen)
{
	const struct config_registry *r;
	struct containerd_config_file *files, *f;
	const char *why;
	char text[4096];
	size_t i;
	int rc = -1, created, skipped = 0;

	if (containerd_config_dir_check(o->hosts_dir, err, errlen) == -1)
		return -1;
	if ((files = calloc(cfg->nregistries + 1, sizeof(*files))) == NULL)
		return containerd_config_err(err, errlen, "out of memory");
	/* Look at every target first: one that cannot be read, nothing written. */
	for (i = 0; i < cfg->nregistries; i++)
		if (containerd_config_look(o->hosts_dir, cfg->registries[i].name,
		    &files[i], err, errlen) == -1)
			goto done;
	for (i = 0; i < cfg->nregistries; i++) {
		r = &cfg->registries[i];
		f = &files[i];
		if ((why = containerd_config_skip_why(o, f)) != NULL) {
			fprintf(out, "skip %s: %s: left alone, containerd pulls "
			    "%s without pullproxy\n", f->notdir ? f->dir :
			    f->path, why, r->name);
			skipped++;
			continue;
		}
		/* Whether pullproxy made the directory is kept across runs. */
		created = f->state == CONTAINERD_CONFIG_OURS ? f->created_dir :
		    !f->dir_exists;
		if (containerd_config_render(r, cfg->listen_host, cfg->listen_port,
		    created, text, sizeof(text)) == -1) {
			containerd_config_err(err, errlen, "%s: registry %s or its url "
			    "cannot be written as TOML", f->path, r->name);
			goto done;
		}
		if (containerd_config_put(o, f, text, out, err, errlen) == -1)
			goto done;
	}
	if (containerd_config_sweep(o, cfg, out, err, errlen) == 0)
		rc = skipped;
done:
	containerd_config_files_free(files, cfg->nregistries);
	return rc;
}

int
containerd_config_remove(const struct containerd_config_opts *o, FILE *out, char *err,
    size_t errlen)
{
	if (containerd_config_dir_check(o->hosts_dir, err, errlen) == -1)
		return -1;
	return containerd_config_sweep(o, NULL, out, err, errlen);
}

/* The same with symlinks and relative paths resolved, for what exists. */
static int
containerd_config_path_listed_real(const char *config_path, const char *dir)
{
	char want[PATH_MAX], entry[PATH_MAX], real[PATH_MAX];
	const char *p = config_path;
	size_t n;

	if (realpath(dir, want) == NULL)
		return 0;
	for (;;) {
		n = strcspn(p, ":");
		if (n > 0 && n < sizeof(entry)) {
			memcpy(entry, p, n);
			entry[n] = '\0';
			if (realpath(entry, real) != NULL &&
			    strcmp(real, want) == 0)
				return 1;
		}
		if (p[n] == '\0')
			return 0;
		p += n + 1;
	}
}

int
containerd_config_check_containerd(const char *path, const char *dir, FILE *out,
    char *err, size_t errlen)
{
	struct containerd_config_ctd ctd;
	char *text;
	int bad, rc;

	if (containerd_config_slurp(path, CONTAINERD_CONFIG_CTD_MAX, 0, &text) == -1)
		return containerd_config_err(err, errlen, "%s: %s (containerd's "
		    "config; --containerd-config names another)", path,
		    strerror(errno));
	rc = containerd_config_ctd_scan(text, &ctd, &bad);
	free(text);
	if (rc == -1)
		return containerd_config_err(err, errlen, "%s:%d: config_path is not "
		    "a one-line string", path, bad);
	if (ctd.line == 0)
		return containerd_config_err(err, errlen, "%s: no config_path under "
		    "[plugins.\"%s\".registry]: containerd would never read "
		    "hosts.toml files (set config_path = \"%s\" there and "
		    "restart containerd)%s", path, ctd.version >= 3 ?
		    containerd_config_cri_names[1] : containerd_config_cri_names[0], dir,
		    ctd.imports ? "; its imports are not read" : "");
	if (!containerd_config_path_listed(ctd.config_path, dir) &&
	    !containerd_config_path_listed_real(ctd.config_path, dir))
		return containerd_config_err(err, errlen, "%s:%d: config_path = \"%s\" "
		    "does not list %s: containerd would never read files "
		    "written there (--hosts-dir names its directory)", path,
		    ctd.line, ctd.config_path, dir);
	fprintf(out, "%s:%d: [%s] config_path = \"%s\"\n", path, ctd.line,
	    ctd.table, ctd.config_path);
	return 0;
}

/* ------------------------------------------------------------- command */

static void
containerd_config_usage(FILE *f)
{
	fprintf(f,
	    "usage: pullproxy containerd-config [--config FILE] "
	    "[--hosts-dir DIR]\n"
	    "           [--containerd-config FILE] [--force] [--dry-run]\n"
	    "       pullproxy containerd-config --remove [--hosts-dir DIR] "
	    "[--dry-run]\n"
	    "\n"
	    "Writes DIR/<registry>/hosts.toml for every registry in the "
	    "config:\n"
	    "containerd pulls through pullproxy first and falls back to the\n"
	    "registry. A registry whose hosts.toml pullproxy did not write is\n"
	    "skipped (a \"skip\" line says so) and the others are written;\n"
	    "exit status 0 all the same, 1 when a file could not be written.\n"
	    "\n"
	    "  --config             pullproxy's config (default "
	    CONTAINERD_CONFIG_CONFIG ")\n"
	    "  --hosts-dir          containerd's config_path (default "
	    CONTAINERD_CONFIG_DIR ")\n"
	    "  --containerd-config  checked to list DIR in config_path\n"
	    "                       (default " CONTAINERD_CONFIG_CONTAINERD ")\n"
	    "  --force              set a hosts.toml pullproxy did not write "
	    "aside as\n"
	    "                       " CONTAINERD_CONFIG_SAVED " (--remove puts it "
	    "back)\n"
	    "  --dry-run            say what would change, change nothing\n"
	    "  --remove             take back every file pullproxy wrote\n");
}

/* "ARG: what is wrong", as config's flag errors read. */
static int
containerd_config_usage_err(const char *arg, const char *what)
{
	fprintf(stderr, "pullproxy containerd-config: %s: %s (try --help)\n",
	    arg, what);
	return 2;
}

int
containerd_config_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config",		required_argument,	NULL, 'c' },
		{ "hosts-dir",		required_argument,	NULL, 'd' },
		{ "containerd-config",	required_argument,	NULL, 'C' },
		{ "remove",		no_argument,		NULL, 'r' },
		{ "dry-run",		no_argument,		NULL, 'n' },
		{ "force",		no_argument,		NULL, 'f' },
		{ "help",		no_argument,		NULL, 'h' },
		{ NULL,			0,			NULL, 0 },
	};
	const char *file = CONTAINERD_CONFIG_CONFIG, *ctd = CONTAINERD_CONFIG_CONTAINERD;
	struct containerd_config_opts o = { .hosts_dir = CONTAINERD_CONFIG_DIR };
	struct config cfg;
	char err[CONTAINERD_CONFIG_ERR_MAX];
	int ch, remove = 0, rc;

	opterr = 0;
	optind = 0;	/* glibc: start over, even after an earlier getopt */
	while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			file = optarg;
			break;
		case 'd':
			o.hosts_dir = optarg;
			break;
		case 'C':
			ctd = optarg;
			break;
		case 'r':
			remove = 1;
			break;
		case 'n':
			o.dry_run = 1;
			break;
		case 'f':
			o.force = 1;
			break;
		case 'h':
			containerd_config_usage(stdout);
			return 0;
		case ':':
			return containerd_config_usage_err(argv[optind - 1],
			    "needs a value");
		default:
			return containerd_config_usage_err(argv[optind - 1],
			    "unknown option");
		}
	}
	if (optind < argc)
		return containerd_config_usage_err(argv[optind],
		    "unexpected argument");
	if (*o.hosts_dir == '\0')
		return containerd_config_usage_err("--hosts-dir", "must not be empty");

	/* Taking files back works whatever the configs say now. */
	if (remove) {
		if (containerd_config_remove(&o, stdout, err, sizeof(err)) == -1) {
			fprintf(stderr, "pullproxy containerd-config: %s\n",
			    err);
			return 1;
		}
		return 0;
	}
	config_init(&cfg);
	if (config_load_file(&cfg, file, err, sizeof(err)) == -1 ||
	    config_check(&cfg, err, sizeof(err)) == -1 ||
	    containerd_config_check_containerd(ctd, o.hosts_dir, stdout, err,
	    sizeof(err)) == -1) {
		fprintf(stderr, "pullproxy containerd-config: %s\n", err);
		config_free(&cfg);
		return 2;
	}
	rc = containerd_config_apply(&cfg, &o, stdout, err, sizeof(err));
	if (rc == -1)
		fprintf(stderr, "pullproxy containerd-config: %s\n", err);
	else if (rc > 0)
		/* Not an error: the init container must not crash-loop on it. */
		fprintf(stderr, "pullproxy containerd-config: %d of %zu "
		    "registries left alone (skip lines on stdout)\n", rc,
		    cfg.nregistries);
	config_free(&cfg);
	return rc == -1 ? 1 : 0;
}
