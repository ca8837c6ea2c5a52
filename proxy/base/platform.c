/*
 * platform: os/arch of the node, of image indexes and of image configs.
 */
#include <sys/utsname.h>

#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "classify.h"
#include "log.h"
#include "metrics.h"
#include "platform.h"

/* One part of "os/arch/variant": [a-z0-9._-]+ */
static const char *
platform_part(const char *s, char *out)
{
	size_t n = strcspn(s, "/");

	if (n == 0 || n >= PLATFORM_PART_MAX)
		return NULL;
	memcpy(out, s, n);
	out[n] = '\0';
	for (; *out != '\0'; out++)
		if (!islower((unsigned char)*out) &&
		    !isdigit((unsigned char)*out) && strchr("._-", *out) == NULL)
			return NULL;
	return s + n;
}

int
platform_parse(const char *s, struct platform *p)
{
	memset(p, 0, sizeof(*p));
	if ((s = platform_part(s, p->os)) == NULL || *s++ != '/' ||
	    (s = platform_part(s, p->arch)) == NULL)
		return -1;
	if (*s == '\0')
		return 0;
	if (*s++ != '/' || (s = platform_part(s, p->variant)) == NULL ||
	    *s != '\0')
		return -1;
	return 0;
}

void
platform_format(const struct platform *p, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s%s%s", p->os, p->arch,
	    p->variant[0] != '\0' ? "/" : "", p->variant);
}

void
platform_node(struct platform *p)
{
	/* uname's machine names where OCI's (Go's GOARCH) differ. */
	static const char *arches[][2] = { { "x86_64", "amd64" },
	    { "aarch64", "arm64" }, { "i686", "386" }, { "i386", "386" },
	    { "armv7l", "arm" }, { "ppc64le", "ppc64le" },
	    { "s390x", "s390x" } };
	struct utsname u;
	size_t i;

	memset(p, 0, sizeof(*p));
	snprintf(p->os, sizeof(p->os), "linux");
	if (uname(&u) == -1)
		return;
	snprintf(p->arch, sizeof(p->arch), "%.*s", (int)sizeof(p->arch) - 1,
	    u.machine);
	for (i = 0; i < sizeof(arches) / sizeof(arches[0]); i++)
		if (strcmp(u.machine, arches[i][0]) == 0)
			snprintf(p->arch, sizeof(p->arch), "%s", arches[i][1]);
}

void
platform_configured(const char *s, struct platform *p)
{
	if (s == NULL || platform_parse(s, p) == -1)
		platform_node(p);
}

/*
 * An object with os, architecture and variant (an index entry's platform,
 * or an image config): 1 when it is p. Appends it to have.
 */
static int
platform_entry(json_t *o, const struct platform *p, char *have,
    size_t havelen, size_t *used)
{
	const char *os = json_string_value(json_object_get(o, "os"));
	const char *arch = json_string_value(json_object_get(o,
	    "architecture"));
	const char *variant = json_string_value(json_object_get(o, "variant"));

	/* Attestations and other artifacts say unknown/unknown. */
	if (os == NULL || arch == NULL || strcmp(os, "unknown") == 0)
		return 0;
	if (*used < havelen)
		*used += (size_t)snprintf(have + *used, havelen - *used,
		    "%s%s/%s%s%s", *used > 0 ? ", " : "", os, arch,
		    variant != NULL ? "/" : "", variant != NULL ? variant : "");
	return strcmp(os, p->os) == 0 && strcmp(arch, p->arch) == 0 &&
	    (variant == NULL || p->variant[0] == '\0' ||
	    strcmp(variant, p->variant) == 0);
}

int
platform_index_match(const void *body, size_t len, const struct platform *p,
    char *have, size_t havelen)
{
	char digest[160];

	return platform_index_pick(body, len, p, digest, sizeof(digest), have,
	    havelen);
}

int
platform_index_pick(const void *body, size_t len, const struct platform *p,
    char *digest, size_t digestlen, char *have, size_t havelen)
{
	json_t *doc, *list, *e;
	const char *d;
	size_t i, used = 0;
	int match = 0;

	have[0] = '\0';
	digest[0] = '\0';
	doc = json_loadb(body, len, 0, NULL);
	list = json_object_get(doc, "manifests");
	if (!json_is_array(list)) {
		json_decref(doc);
		return -1;
	}
	json_array_foreach(list, i, e)
		if (platform_entry(json_object_get(e, "platform"), p, have,
		    havelen, &used) && !match) {
			match = 1;
			d = json_string_value(json_object_get(e, "digest"));
			snprintf(digest, digestlen, "%s", d != NULL ? d : "");
		}
	json_decref(doc);
	return match;
}

int
platform_config_match(const void *body, size_t len, const struct platform *p,
    char *have, size_t havelen)
{
	size_t used = 0;
	json_t *doc;
	int match = -1;

	have[0] = '\0';
	/* Most blobs are layers: gzip or zstd, not worth a JSON parse. */
	if (len == 0 || *(const char *)body != '{')
		return -1;
	doc = json_loadb(body, len, 0, NULL);
	if (json_is_object(json_object_get(doc, "rootfs")) &&
	    json_is_string(json_object_get(doc, "architecture")))
		match = platform_entry(doc, p, have, havelen, &used);
	json_decref(doc);
	return match;
}

void
platform_log_mismatch(const struct platform_mismatch *m)
{
	char node[3 * PLATFORM_PART_MAX];

	platform_format(m->node, node, sizeof(node));
	metrics_failure(metrics_registry(m->registry),
	    CLASSIFY_PLATFORM_MISMATCH);
	log_event(LOG_LEVEL_WARN, "platform mismatch", json_pack(
	    "{s:I,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s}", "id",
	    (json_int_t)m->id, "registry", m->registry, "repository",
	    m->repository, "reference", m->reference, "digest", m->digest,
	    "phase", classify_phase_name(CLASSIFY_PHASE_PLATFORM),
	    "node_platform", node, "platforms", m->have, "cause",
	    classify_cause_name(CLASSIFY_PLATFORM_MISMATCH), "hint",
	    classify_hint(CLASSIFY_PLATFORM_MISMATCH)));
}
