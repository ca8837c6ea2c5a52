#!/bin/sh
# Installs what the benchmark drives on top of pullproxy's own build and
# run dependencies: nginx (the static-file and proxy_cache peers), wrk (the
# manifest load), docker-registry (upstream and proxy-mode peer), python3
# (the clients and the driver). One list, in scripts/install-deps.sh.
exec "$(cd "$(dirname "$0")" && pwd)/../scripts/install-deps.sh" --bench
