/*
 * digest: streaming sha256 in the OCI "sha256:<hex>" form (sha512 too,
 * for checking content against a digest).
 */
#ifndef PP_DIGEST_H
#define PP_DIGEST_H

#include <stddef.h>

#define DIGEST_STR_LEN	(7 + 64)	/* "sha256:" + hex */

struct digest;

struct digest *digest_new(void);
void digest_free(struct digest *d);
void digest_update(struct digest *d, const void *buf, size_t len);
/* Writes "sha256:<hex>" and a NUL into out (DIGEST_STR_LEN + 1 bytes). */
void digest_final(struct digest *d, char out[DIGEST_STR_LEN + 1]);

/*
 * For checking content against an OCI digest of any algorithm the spec
 * names (sha256, sha512): a digest for ref's algorithm, or NULL when it
 * has another (or memory ran out).
 */
struct digest *digest_new_for(const char *ref);
/* Ends d: 1 when the content hashed to ref, else 0. */
int digest_matches(struct digest *d, const char *ref);

#endif
