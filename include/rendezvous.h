/*
 * rendezvous: highest-random-weight hashing (Thaler and Ravishankar).
 * The owner of a key is the node with the largest weight(node, key), so
 * every node that sees the same members picks the same owner without
 * talking to the others, and adding or removing a node moves only the
 * keys that node wins or won: about 1/N of them.
 *
 * Hashes are sha256 of a labelled input, the first 8 bytes read big
 * endian: fixed by a published function rather than by this build, so
 * nodes of different versions and architectures agree. A node's hash is
 * computed once per membership change and a key's once per lookup; the
 * per-node weight is then a 64-bit mix of the two, so ranking N nodes
 * costs N multiplications, not N sha256 runs.
 */
#ifndef PP_RENDEZVOUS_H
#define PP_RENDEZVOUS_H

#include <stddef.h>
#include <stdint.h>

/* A blob or a manifest by digest ("sha256:..."). */
uint64_t rendezvous_digest(const char *digest);
/* A tag: by registry, repository and tag (the same tag elsewhere differs). */
uint64_t rendezvous_tag(const char *registry, const char *repository,
    const char *tag);
/* A node, by the identity every node knows it by ("IP:PORT"). */
uint64_t rendezvous_node(const char *id);

/* The weight of node for key. */
uint64_t rendezvous_weight(uint64_t node, uint64_t key);

/*
 * The max best of n nodes for key, highest weight first, as indexes into
 * nodes; returns how many were written (min(n, max)). O(n * max).
 */
size_t rendezvous_rank(const uint64_t *nodes, size_t n, uint64_t key,
    size_t *out, size_t max);

#endif
