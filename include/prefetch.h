/*
 * prefetch: `pullproxy prefetch IMAGE...`, an image's manifest and blobs
 * for this node's platform pulled into the cache without containerd,
 * through the running server's pull API on its listen address: the
 * downloads share its single flight, pace and breakers, and land in the
 * cache the way a pull's would.
 */
#ifndef PP_PREFETCH_H
#define PP_PREFETCH_H

int prefetch_main(int argc, char **argv);

#endif
