/*
 * check: "can this node pull?" -- the node-side counterpart of
 * `az aks check-acr`. For each registry (or the one an image names) it
 * walks the path a pull takes: config, name, DNS, TCP, TLS, /v2/,
 * identity and token, the manifest (HEAD, then GET), the platform (for an
 * index, the node's manifest fetched from it) and the first byte of a
 * blob of that manifest through the registry's redirect to its storage,
 * with the daemon's own code (upstream, auth, classify, platform), and
 * says pass, fail or skip for each with the cause and hint of a failure.
 * An identity the registry never asked for is a skip ("not tried"), never
 * a pass. Later steps are not run after a failure. Exit status 0 only
 * when no step failed: a pull would work.
 *
 *   pullproxy check [--config FILE] [--registry HOST[=URL]] [--json]
 *                   [IMAGE]
 *
 * Without --config, /etc/pullproxy/pullproxy.conf (unless registries are
 * given as --registry HOST=URL). A blocking command: it runs its own
 * event loop, never inside the daemon.
 */
#ifndef PP_CHECK_H
#define PP_CHECK_H

#define CHECK_DEFAULT_CONFIG	"/etc/pullproxy/pullproxy.conf"

/* argv[0] is "check". Returns the exit status: 0, 1 (a step failed), 2. */
int check_main(int argc, char **argv);

#endif
