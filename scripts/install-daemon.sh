#!/usr/bin/env bash
# Install pymigrate's daemon as a systemd service. Changes on this host (below $DESTDIR, default /):
#   /etc/systemd/system/pymigrate.service          replaced by packaging/systemd/pymigrate.service
#                                                  (ExecStart pointed at $PYMIGRATE_BIN)
#   /etc/pymigrate/daemon.toml                     the commented example, only when missing
#   /etc/pymigrate/tls/                            created (0700) for `pymigrate tls` files
#   /usr/local/share/doc/pymigrate/operations.md   the operations guide the unit points to
# and, when systemd runs this machine and DESTDIR is empty, `systemctl daemon-reload`. It does not
# enable or start the service. Safe to re-run: an existing daemon.toml is never overwritten.
#
#   scripts/install-daemon.sh            PYMIGRATE_BIN=/opt/pm/bin/pymigrate scripts/install-daemon.sh
#   DESTDIR=/tmp/stage scripts/install-daemon.sh   (packaging, tests)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
destdir=${DESTDIR:-}
bin=${PYMIGRATE_BIN:-/usr/local/bin/pymigrate}
default_bin=/usr/local/bin/pymigrate

case "$bin" in
  /*) ;;
  *) echo "install-daemon: PYMIGRATE_BIN must be an absolute path, got $bin" >&2; exit 2 ;;
esac
if [ -z "$destdir" ] && [ ! -x "$bin" ]; then
  echo "install-daemon: warning: $bin is not executable yet (pip install . or set PYMIGRATE_BIN)" >&2
fi

unit_dir=$destdir/etc/systemd/system
conf_dir=$destdir/etc/pymigrate
doc_dir=$destdir/usr/local/share/doc/pymigrate

install -d -m 0755 "$unit_dir" "$conf_dir" "$doc_dir"
install -d -m 0700 "$conf_dir/tls"

# The unit: written whole each time (a changed ExecStart path is picked up), atomically.
tmp=$(mktemp "$unit_dir/.pymigrate.service.XXXXXX")
trap 'rm -f "$tmp"' EXIT
sed "s#^ExecStart=$default_bin #ExecStart=$bin #" "$repo/packaging/systemd/pymigrate.service" > "$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$unit_dir/pymigrate.service"
trap - EXIT

# The config: the admin's once it exists.
if [ ! -e "$conf_dir/daemon.toml" ]; then
  install -m 0644 "$repo/packaging/systemd/daemon.toml" "$conf_dir/daemon.toml"
  echo "install-daemon: wrote $conf_dir/daemon.toml (all settings commented out)"
else
  echo "install-daemon: kept $conf_dir/daemon.toml"
fi
install -m 0644 "$repo/docs/operations.md" "$doc_dir/operations.md"
echo "install-daemon: wrote $unit_dir/pymigrate.service (ExecStart $bin)"

if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  echo "install-daemon: start it with: systemctl enable --now pymigrate"
else
  echo "install-daemon: systemd is not running here (or DESTDIR is set): no daemon-reload"
fi
