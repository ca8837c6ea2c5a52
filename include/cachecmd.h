/*
 * cachecmd: `pullproxy cache ...`, inspecting and trimming the cache.
 */
#ifndef PP_CACHECMD_H
#define PP_CACHECMD_H

/*
 * argv[0] is "cache". Returns the exit status: 0; 1 when something failed,
 * a blob is corrupt or a running server holds the cache; 2 for usage errors.
 */
int cachecmd_main(int argc, char **argv);

#endif
