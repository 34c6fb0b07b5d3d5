#!/usr/bin/env bash
# Build a Debian bookworm root filesystem with real servers, as a plain tar: OUT.tar (for
# `pymigrate image import`). Used by the real-server suite (tests/realworld/debian_image.py caches
# the result under /var/cache/pymigrate-tests/, keyed by a digest of this file).
#
# Changes nothing on the host except writing OUT (atomically: a temp file renamed at the end) and a
# temporary directory next to it (removed on exit, with the /proc mounted into it for apt). Needs
# root, debootstrap and network access to the Debian mirror apt already uses on this machine
# (the first URIs line of /etc/apt/sources.list.d/debian.sources, or DEBIAN_MIRROR).
#
# The image, made for containers:
# - debootstrap --variant=minbase, then apt-get install --no-install-recommends of PACKAGES below
#   inside the chroot, with /usr/sbin/policy-rc.d refusing every service start (kept in the image:
#   nothing in a container should start services behind the workload's back);
# - PostgreSQL's cluster 15/main is created at build time by the package's own postinst
#   (pg_createcluster), so a container starts the server at once; listen_addresses='*' and a
#   pg_hba line trusting every IPv4 peer (test image: the suite's clients connect without a
#   password);
# - MariaDB: the data dir made by the package's postinst, /etc/mysql/rw-init.sql run at every start
#   (--init-file: a user rw@'%' and a database rw for the suite's client);
# - nginx: one site on port 80 serving /var/www/html, keep-alive for as long as a test runs
#   (Debian's keepalive_requests 1000 would close a client's connection after 10 s at 100 req/s),
#   2 workers (the same process tree on every host);
# - HAProxy: /etc/haproxy/haproxy.cfg, frontend :8080 -> backend 127.0.0.1:8081, HTTP keep-alive on
#   both sides, in the foreground (-db), dropping to user haproxy in its chroot as Debian does;
# - /dev, /proc and /sys are left empty (the runtime makes them; image import refuses device
#   nodes); apt's lists and caches, documentation, manuals and message catalogues are removed.
#
# Usage: scripts/make-debian-image.sh OUT.tar
set -Eeuo pipefail

PACKAGES=(
    postgresql nginx memcached redis-server sqlite3 nodejs python3 haproxy mariadb-server
    util-linux procps iproute2 ca-certificates
)
SUITE=bookworm

usage() { echo "usage: $0 OUT.tar" >&2; exit 2; }
[[ $# -eq 1 ]] || usage
out=$(realpath -m -- "$1")
[[ $(id -u) -eq 0 ]] || { echo "$0: needs root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "$0: debootstrap not installed (scripts/setup.sh installs it)" >&2; exit 1; }

mirror=${DEBIAN_MIRROR:-}
if [[ -z $mirror && -r /etc/apt/sources.list.d/debian.sources ]]; then
    mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
fi
if [[ -z $mirror && -r /etc/apt/sources.list ]]; then
    mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list)
fi
[[ -n $mirror ]] || { echo "$0: no Debian mirror found in apt's sources; set DEBIAN_MIRROR" >&2; exit 1; }

mkdir -p -- "$(dirname -- "$out")"
work=$(mktemp -d -- "$(dirname -- "$out")/.debian-build.XXXXXX")
root=$work/rootfs
tmp_tar=
cleanup() {
    if [[ -n $tmp_tar ]]; then rm -f -- "$tmp_tar"; fi
    if mountpoint -q "$root/proc" 2>/dev/null; then umount -l "$root/proc" || true; fi
    rm -rf -- "$work"
}
trap cleanup EXIT

echo "==> debootstrap $SUITE (minbase) from $mirror"
debootstrap --variant=minbase "$SUITE" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
}

printf '#!/bin/sh\n# containers: no service starts at package install\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
mount -t proc proc "$root/proc"

echo "==> apt-get install ${PACKAGES[*]}"
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }
in_root apt-get update -qq >"$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; exit 1; }
in_root apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >>"$work/apt.log" 2>&1 || {
    tail -n 30 "$work/apt.log" >&2
    exit 1
}
in_root apt-get clean
umount "$root/proc"

echo "==> container configuration"
pg_conf=$root/etc/postgresql/15/main
[[ -f $pg_conf/postgresql.conf ]] || { echo "$0: postgresql's postinst made no cluster 15/main" >&2; exit 1; }
cat >>"$pg_conf/postgresql.conf" <<'EOF'

# pymigrate test image
listen_addresses = '*'
ssl = off
EOF
echo "host all all 0.0.0.0/0 trust" >>"$pg_conf/pg_hba.conf"
install -d -m 2775 -o "$(stat -c %u "$root/var/lib/postgresql")" -g "$(stat -c %g "$root/var/lib/postgresql")" "$root/var/run/postgresql"

# MariaDB: its postinst made /var/lib/mysql; the server runs an init file at start (a user the
# suite's client logs in as from any address, and its database), /run/mysqld for its socket.
cat >"$root/etc/mysql/rw-init.sql" <<'SQL'
CREATE USER IF NOT EXISTS 'rw'@'%' IDENTIFIED BY 'rw';
GRANT ALL ON *.* TO 'rw'@'%';
CREATE DATABASE IF NOT EXISTS rw;
SQL
install -d -m 755 -o "$(stat -c %u "$root/var/lib/mysql")" -g "$(stat -c %g "$root/var/lib/mysql")" "$root/run/mysqld"

rm -f "$root/etc/nginx/sites-enabled/default"
cat >"$root/etc/nginx/sites-enabled/realworld" <<'EOF'
server {
    listen 80 default_server;
    root /var/www/html;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    location / { try_files $uri =404; }
}
EOF
sed -i 's/^worker_processes .*/worker_processes 2;/' "$root/etc/nginx/nginx.conf"
printf 'pymigrate realworld nginx\n' >"$root/var/www/html/hello.txt"

cat >"$root/etc/haproxy/haproxy.cfg" <<'EOF'
global
    chroot /var/lib/haproxy
    user haproxy
    group haproxy

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s

frontend web
    bind 0.0.0.0:8080
    default_backend app

backend app
    http-reuse always
    server app1 127.0.0.1:8081
EOF

# Documentation, manuals and message catalogues: ~70 MiB no server here reads.
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log "$root"/var/log/apt/*
rm -rf "$root"/dev/* "$root"/proc/* "$root"/sys/*

echo "==> tar"
tmp_tar=$(mktemp -- "$out.XXXXXX")
tar --numeric-owner --xattrs-exclude='*' -C "$root" -cf "$tmp_tar" .
chmod 644 "$tmp_tar"
mv -f -- "$tmp_tar" "$out"
tmp_tar=
echo "==> $out ($(du -h -- "$out" | cut -f1))"
