#!/bin/sh
# Installs pullproxy as a systemd service on a containerd node (no
# Kubernetes DaemonSet), or takes it out again.
#
#   install.sh --config FILE [--binary FILE] [--restart-containerd] [--root DIR]
#   install.sh --uninstall [--purge] [--root DIR]
#
# Install: checks the config and containerd's config_path first (nothing
# is installed if `pullproxy containerd-config --dry-run` refuses), then
# puts the binary in /usr/local/bin, the config in /etc/pullproxy, the unit
# in /etc/systemd/system, and starts it; the unit's ExecStartPost writes
# containerd's hosts.toml. containerd reads hosts.toml on every pull: it is
# restarted only with --restart-containerd (needed only when its
# config_path was just set).
# Uninstall: `pullproxy containerd-config --remove` first (containerd goes
# straight to the registries again), then stops and removes the service.
# The config and the cache stay unless --purge.
# --root DIR installs into a staging tree (an image, a test): no systemctl,
# no containerd-config.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
binary="$src/build/pullproxy"
config=""
uninstall=0 purge=0 restart_containerd=0 root=""

die() { echo "install.sh: $*" >&2; exit 1; }
usage() { sed -n '2,20s/^# \{0,1\}//p' "$0"; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
	case $1 in
	--binary) [ $# -ge 2 ] || die "$1 needs a value"; binary=$2; shift ;;
	--config) [ $# -ge 2 ] || die "$1 needs a value"; config=$2; shift ;;
	--root) [ $# -ge 2 ] || die "$1 needs a value"; root=$2; shift ;;
	--restart-containerd) restart_containerd=1 ;;
	--uninstall) uninstall=1 ;;
	--purge) purge=1 ;;
	-h|--help) usage 0 ;;
	*) die "unknown argument '$1' (try --help)" ;;
	esac
	shift
done

bin_path=$root/usr/local/bin/pullproxy
conf_path=$root/etc/pullproxy/pullproxy.conf
unit_path=$root/etc/systemd/system/pullproxy.service
doc_dir=$root/usr/local/share/doc/pullproxy

[ -n "$root" ] || [ "$(id -u)" = 0 ] || die "run as root (or --root DIR to stage)"
live() { [ -z "$root" ]; }

if [ $uninstall = 1 ]; then
	# Hosts files first: from here on containerd pulls from the registries.
	if live && [ -x "$bin_path" ]; then
		"$bin_path" containerd-config --remove ||
			die "containerd-config --remove failed: fix the above, then run again"
	fi
	if live; then
		systemctl disable --now pullproxy.service 2>/dev/null || true
	fi
	rm -f "$unit_path" "$bin_path"
	rm -rf "$doc_dir"
	live && systemctl daemon-reload
	if [ $purge = 1 ]; then
		rm -rf "$root/etc/pullproxy" "$root/var/lib/pullproxy" \
			"$root/var/lib/private/pullproxy"
		echo "pullproxy removed, with its config and cache"
	else
		echo "pullproxy removed; kept $conf_path and the cache in /var/lib/pullproxy (--purge removes them)"
	fi
	exit 0
fi

[ -x "$binary" ] || die "$binary: no pullproxy binary (build it, or --binary FILE)"
if [ -z "$config" ]; then
	[ -f "$conf_path" ] ||
		die "no $conf_path yet: give --config FILE (config/pullproxy.conf is an example to edit)"
	config=$conf_path
fi
[ -f "$config" ] || die "$config: no such file"

# Refuse before installing anything: a bad config, or a containerd that
# would never read the hosts files.
if live; then
	"$binary" containerd-config --config "$config" --dry-run >/dev/null ||
		die "nothing installed: fix the above first"
fi

install -d -m 0755 "$root/usr/local/bin" "$root/etc/pullproxy" \
	"$root/etc/systemd/system" "$doc_dir"
install -m 0755 "$binary" "$bin_path"
[ "$config" = "$conf_path" ] || install -m 0644 "$config" "$conf_path"
install -m 0644 "$here/pullproxy.service" "$unit_path"
install -m 0644 "$src/docs/operator-guide.md" "$doc_dir/operator-guide.md"

if ! live; then
	echo "staged in $root"
	exit 0
fi
systemctl daemon-reload
systemctl enable pullproxy.service
systemctl restart pullproxy.service
if [ $restart_containerd = 1 ]; then
	systemctl restart containerd.service
fi

listen=$(sed -n 's/^[[:space:]]*listen[[:space:]]*=[[:space:]]*//p' "$conf_path" | tail -n 1)
listen=${listen:-127.0.0.1:5000}
i=0
until curl -fsS -o /dev/null "http://$listen/readyz"; do
	i=$((i + 1))
	[ $i -lt 30 ] || die "pullproxy is not ready on $listen: journalctl -u pullproxy"
	sleep 1
done
echo "pullproxy is ready on $listen; check a pull with: pullproxy check IMAGE"
