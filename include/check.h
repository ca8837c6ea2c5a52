/*
 * check: "can this node pull?" -- the node-side counterpart of
 * `az aks check-acr`. For each registry (or the one an image names) it
 * walks the path a pull takes: config, name, DNS, TCP, TLS, /v2/,
 * identity and token, the manifest (HEAD, then GET) and the platform,
 * with the daemon's own code (upstream, auth, classify, platform), and
 * says pass or fail for each with the cause and hint of a failure. Later
 * steps are skipped after a failure. Exit status 0 only when every step
 * passed: a pull would work.
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
