#!/bin/sh
# The quickstart: installs what pullproxy needs, builds it, starts a local
# registry (Debian's docker-registry, distribution 2.8) with a demo image in
# it, runs pullproxy in front of it and pulls the image through pullproxy
# with skopeo, then shows pullproxy's log of that pull.
#   demo.sh          pull once, stop everything
#   demo.sh --keep   leave pullproxy and the registry running until Ctrl-C
# Ports: PP_PORT (default 5000) for pullproxy, REG_PORT (5001) for the registry.
set -eu
cd "$(dirname "$0")/.."
pp_port=${PP_PORT:-5000}
reg_port=${REG_PORT:-5001}
keep=${1:-}

scripts/install-deps.sh
[ -f build/build.ninja ] || meson setup build --buildtype=release >/dev/null
ninja -C build >/dev/null

work=$(mktemp -d /tmp/pullproxy-demo.XXXXXX)
pids=""
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	[ -n "${PP_DEMO_KEEP_DIR:-}" ] || rm -rf "$work"
}
trap cleanup EXIT INT TERM

wait_http() {	# wait_http URL: up to 10 s
	i=0
	until curl -fsS -o /dev/null "$1" 2>/dev/null; do
		i=$((i + 1))
		[ $i -lt 100 ] || { echo "demo: $1 did not come up" >&2; exit 1; }
		sleep 0.1
	done
}

echo "== registry (docker-registry) on 127.0.0.1:$reg_port"
cat >"$work/registry.yml" <<CONF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$reg_port
CONF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids="$pids $!"
wait_http "http://127.0.0.1:$reg_port/v2/"

echo "== demo image demo/hello:1.0 built with umoci, pushed with skopeo"
(
	cd "$work"
	umoci init --layout image
	umoci new --image image:1.0
	echo "hello from a layer that came through pullproxy" >hello.txt
	tar -cf layer.tar hello.txt
	umoci raw add-layer --image image:1.0 layer.tar
	umoci config --image image:1.0 --config.cmd cat --config.cmd /hello.txt
) >/dev/null
skopeo copy -q --dest-tls-verify=false "oci:$work/image:1.0" \
	"docker://127.0.0.1:$reg_port/demo/hello:1.0"

echo "== pullproxy on 127.0.0.1:$pp_port in front of it"
build/pullproxy serve --listen "127.0.0.1:$pp_port" \
	--cache-dir "$work/cache" \
	--registry "127.0.0.1:$reg_port=http://127.0.0.1:$reg_port" \
	--log "$work/pullproxy.log" --log-level debug &
pids="$pids $!"
wait_http "http://127.0.0.1:$pp_port/v2/"

echo "== skopeo copy docker://127.0.0.1:$pp_port/demo/hello:1.0 (through pullproxy)"
skopeo copy -q --src-tls-verify=false \
	"docker://127.0.0.1:$pp_port/demo/hello:1.0" "oci:$work/pulled:1.0"
for blob in "$work"/pulled/blobs/sha256/*; do
	tar -xzOf "$blob" hello.txt 2>/dev/null | sed 's/^/the image says: /'
done

echo "== what pullproxy logged (JSON lines)"
cat "$work/pullproxy.log"

echo "== pullproxy check: can this node pull the image from the registry?"
build/pullproxy check --registry "127.0.0.1:$reg_port=http://127.0.0.1:$reg_port" \
	"127.0.0.1:$reg_port/demo/hello:1.0"

if [ "$keep" = "--keep" ]; then
	echo "== pullproxy serves 127.0.0.1:$pp_port (ns=127.0.0.1:$reg_port); Ctrl-C stops it"
	wait
fi
