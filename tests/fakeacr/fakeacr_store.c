/*
 * store: the content directory, one OCI image layout per repository as
 * `skopeo copy ... oci:DIR/<repo>:<tag>` writes it: DIR/<repo>/index.json
 * with tags in org.opencontainers.image.ref.name, and blobs/<alg>/<hex>.
 * Read again on every request so that tests may change content under a
 * running fake.
 */
#include <sys/stat.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fakeacr.h"

/* Past ACR's 4 MiB: tests serve oversized manifests on purpose. */
#define STORE_MANIFEST_MAX	(64 << 20)
#define STORE_REF_NAME		"org.opencontainers.image.ref.name"

static int
store_alnum(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* distribution-spec: components of [a-z0-9]+ joined by . _ __ or -+. */
int
store_valid_name(const char *s)
{
	const char	*p = s;

	if (strlen(s) > 255)
		return 0;
	for (;;) {
		if (!store_alnum(*p))
			return 0;
		while (store_alnum(*p))
			p++;
		if (*p == '\0')
			return 1;
		if (*p == '/') {
			p++;
			continue;
		}
		if (*p == '.')
			p++;
		else if (*p == '_')
			p += p[1] == '_' ? 2 : 1;
		else if (*p == '-')
			while (*p == '-')
				p++;
		else
			return 0;
		if (!store_alnum(*p))
			return 0;
	}
}

int
store_valid_tag(const char *s)
{
	size_t	i, n = strlen(s);

	if (n == 0 || n > 128 || s[0] == '.' || s[0] == '-')
		return 0;
	for (i = 0; i < n; i++)
		if (!store_alnum(s[i]) && !(s[i] >= 'A' && s[i] <= 'Z') &&
		    strchr("._-", s[i]) == NULL)
			return 0;
	return 1;
}

int
store_valid_digest(const char *s)
{
	size_t	n;

	if (strncmp(s, "sha256:", 7) == 0)
		n = 64;
	else if (strncmp(s, "sha512:", 7) == 0)
		n = 128;
	else
		return 0;
	s += 7;
	return strlen(s) == n && strspn(s, "0123456789abcdef") == n;
}

/* DIR/<repo>/<rest>, or DIR/<repo>/blobs/<alg>/<hex> for a digest. */
static char *
store_path(const char *repo, const char *rest, int digest)
{
	char	*p;
	int	 n;

	if (digest)
		n = asprintf(&p, "%s/%s/blobs/%.6s/%s", fa_conf.content, repo,
		    rest, rest + 7);
	else
		n = asprintf(&p, "%s/%s/%s", fa_conf.content, repo, rest);
	return n == -1 ? NULL : p;
}

static json_t *
store_index(const char *repo)
{
	json_t	*index;
	char	*path;

	if ((path = store_path(repo, "index.json", 0)) == NULL)
		return NULL;
	index = json_load_file(path, 0, NULL);
	free(path);
	if (!json_is_array(json_object_get(index, "manifests"))) {
		json_decref(index);
		return NULL;
	}
	return index;
}

int
store_repo_exists(const char *repo)
{
	json_t	*index;

	if ((index = store_index(repo)) == NULL)
		return 0;
	json_decref(index);
	return 1;
}

int
store_blob_open(const char *repo, const char *digest, long long *size)
{
	struct stat	 st;
	char		*path;
	int		 fd;

	if ((path = store_path(repo, digest, 1)) == NULL)
		return -1;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	free(path);
	if (fd == -1)
		return -1;
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		close(fd);
		return -1;
	}
	*size = (long long)st.st_size;
	return fd;
}

static char *
store_read(const char *repo, const char *digest, size_t *len)
{
	long long	 size;
	ssize_t		 n;
	char		*data;
	int		 fd;

	if ((fd = store_blob_open(repo, digest, &size)) == -1)
		return NULL;
	if (size > STORE_MANIFEST_MAX ||
	    (data = malloc((size_t)size + 1)) == NULL) {
		close(fd);
		return NULL;
	}
	n = read(fd, data, (size_t)size);
	close(fd);
	if (n != size) {
		free(data);
		return NULL;
	}
	data[size] = '\0';
	*len = (size_t)size;
	return data;
}

/*
 * A manifest by tag or digest. The media type comes from the index
 * descriptor, else from the manifest itself; a blob that is not a JSON
 * document with schemaVersion is no manifest.
 */
int
store_manifest(const char *repo, const char *ref, struct store_manifest *m)
{
	json_t		*index, *d, *desc = NULL, *doc;
	const char	*digest = ref, *type, *key;
	size_t		 i;
	int		 bydigest = store_valid_digest(ref);

	memset(m, 0, sizeof(*m));
	if ((index = store_index(repo)) == NULL)
		return -1;
	json_array_foreach(json_object_get(index, "manifests"), i, d) {
		key = json_string_value(bydigest ? json_object_get(d,
		    "digest") : json_object_get(json_object_get(d,
		    "annotations"), STORE_REF_NAME));
		if (key != NULL && strcmp(key, ref) == 0)
			desc = d;
	}
	if (desc != NULL)
		digest = json_string_value(json_object_get(desc, "digest"));
	if (digest == NULL || !store_valid_digest(digest) ||
	    (m->sm_data = store_read(repo, digest, &m->sm_len)) == NULL) {
		json_decref(index);
		return -1;
	}
	doc = json_loadb(m->sm_data, m->sm_len, 0, NULL);
	if ((type = json_string_value(json_object_get(desc, "mediaType"))) ==
	    NULL && (type = json_string_value(json_object_get(doc,
	    "mediaType"))) == NULL)
		type = json_object_get(doc, "manifests") != NULL ?
		    "application/vnd.oci.image.index.v1+json" :
		    "application/vnd.oci.image.manifest.v1+json";
	m->sm_type = strdup(type);
	m->sm_digest = strdup(digest);
	i = json_object_get(doc, "schemaVersion") != NULL;
	json_decref(doc);
	json_decref(index);
	if (!i || m->sm_type == NULL || m->sm_digest == NULL) {
		store_manifest_free(m);
		return -1;
	}
	return 0;
}

void
store_manifest_free(struct store_manifest *m)
{
	free(m->sm_digest);
	free(m->sm_type);
	free(m->sm_data);
	memset(m, 0, sizeof(*m));
}

static int
store_strcmp(const void *a, const void *b)
{
	return strcmp(json_string_value(*(json_t *const *)a),
	    json_string_value(*(json_t *const *)b));
}

/* The repository's tags, sorted, each once; NULL if no repository. */
json_t *
store_tags(const char *repo)
{
	json_t		*index, *d, *name, **v, *tags;
	size_t		 i, n = 0;

	if ((index = store_index(repo)) == NULL)
		return NULL;
	d = json_object_get(index, "manifests");
	if ((v = calloc(json_array_size(d) + 1, sizeof(*v))) == NULL) {
		json_decref(index);
		return NULL;
	}
	json_array_foreach(json_object_get(index, "manifests"), i, d) {
		name = json_object_get(json_object_get(d, "annotations"),
		    STORE_REF_NAME);
		if (json_is_string(name))
			v[n++] = name;
	}
	qsort(v, n, sizeof(*v), store_strcmp);
	tags = json_array();
	for (i = 0; i < n && tags != NULL; i++)
		if (i == 0 || !json_equal(v[i], v[i - 1]))
			json_array_append(tags, v[i]);
	free(v);
	json_decref(index);
	return tags;
}
