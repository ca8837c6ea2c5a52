/*
 * platform: the node's os/arch, and whether an image index or an image's
 * config offers it (containerd's "no match for platform in manifest",
 * cause 5 of the AKS pull troubleshooting). Pure functions but
 * platform_node (uname) and platform_log_mismatch.
 */
#ifndef PP_PLATFORM_H
#define PP_PLATFORM_H

#include <stddef.h>

#define PLATFORM_PART_MAX	32

struct platform {
	char	os[PLATFORM_PART_MAX];
	char	arch[PLATFORM_PART_MAX];
	char	variant[PLATFORM_PART_MAX];	/* "" when any */
};

/* "os/arch[/variant]", lowercase, as in OCI and [server] platform. */
int platform_parse(const char *s, struct platform *p);
/* "os/arch[/variant]" into buf. */
void platform_format(const struct platform *p, char *buf, size_t len);
/* This machine, in OCI's terms: Linux x86_64 is linux/amd64. */
void platform_node(struct platform *p);
/* s ([server] platform, already checked) or, when NULL, the node's. */
void platform_configured(const char *s, struct platform *p);

/*
 * Whether the image index (OCI or Docker manifest list) in body lists p:
 * 1 yes, 0 no (have: its platforms, "linux/amd64, linux/arm64/v8"), -1
 * when body is not an index. A variant counts only when both name one.
 */
int platform_index_match(const void *body, size_t len,
    const struct platform *p, char *have, size_t havelen);
/* The same, with the first matching entry's digest in digest (or ""). */
int platform_index_pick(const void *body, size_t len,
    const struct platform *p, char *digest, size_t digestlen, char *have,
    size_t havelen);
/*
 * The same for an image config blob (a single-platform image names its
 * platform there): -1 when body is not one.
 */
int platform_config_match(const void *body, size_t len,
    const struct platform *p, char *have, size_t havelen);

/* The "platform mismatch" line (cause platform_mismatch, with its hint). */
struct platform_mismatch {
	unsigned long		 id;
	const char		*registry;
	const char		*repository;
	const char		*reference;
	const char		*digest;	/* the index's, or the config's */
	const struct platform	*node;
	const char		*have;		/* what the image offers */
};
void platform_log_mismatch(const struct platform_mismatch *m);

#endif
