/*
 * fleetcmd: `pullproxy fleet`, the members this node sees and who owns a
 * key, resolved exactly as serve resolves them.
 */
#ifndef PP_FLEETCMD_H
#define PP_FLEETCMD_H

/*
 * argv[0] is "fleet". Prints one JSON line per membership answer that
 * changed something (the first always): the members, and the owner of
 * each KEY. Returns 0; 1 when the config has no fleet; 2 for usage errors.
 */
int fleetcmd_main(int argc, char **argv);

#endif
