/*
 * platform: os/arch of the node and of image indexes.
 */
#include <sys/utsname.h>

#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

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

int
platform_index_match(const void *body, size_t len, const struct platform *p,
    char *have, size_t havelen)
{
	const char *os, *arch, *variant;
	json_t *doc, *list, *e, *pl;
	size_t i, used = 0;
	int match = 0;

	have[0] = '\0';
	doc = json_loadb(body, len, 0, NULL);
	list = json_object_get(doc, "manifests");
	if (!json_is_array(list)) {
		json_decref(doc);
		return -1;
	}
	json_array_foreach(list, i, e) {
		pl = json_object_get(e, "platform");
		os = json_string_value(json_object_get(pl, "os"));
		arch = json_string_value(json_object_get(pl, "architecture"));
		variant = json_string_value(json_object_get(pl, "variant"));
		/* Attestations and other artifacts say unknown/unknown. */
		if (os == NULL || arch == NULL || strcmp(os, "unknown") == 0)
			continue;
		if (strcmp(os, p->os) == 0 && strcmp(arch, p->arch) == 0 &&
		    (variant == NULL || p->variant[0] == '\0' ||
		    strcmp(variant, p->variant) == 0))
			match = 1;
		if (used < havelen)
			used += (size_t)snprintf(have + used, havelen - used,
			    "%s%s/%s%s%s", used > 0 ? ", " : "", os, arch,
			    variant != NULL ? "/" : "",
			    variant != NULL ? variant : "");
	}
	json_decref(doc);
	return match;
}
