#!/usr/bin/env bash
# Build a minimal busybox root filesystem as a tar: OUT.tar (plain; OUT.tar.gz / OUT.tar.zst
# compress with gzip / zstd). Changes nothing on the host except writing OUT; it needs Debian's
# busybox-static (/bin/busybox, statically linked). Safe to re-run: OUT is replaced atomically.
#
# The tree is the same as runtime.image_store.ImageStore.build_busybox builds (an integration test
# compares their digests): /bin/busybox, a symlink to /bin/busybox for every applet
# (busybox --list-full), /etc/{passwd,group,hostname,hosts}, empty /proc /sys /dev /run /var,
# /root (0700) and /tmp (1777), all owned by 0:0. Member order, owners and mtimes are fixed
# (SOURCE_DATE_EPOCH, default 0), so the same busybox gives the same bytes.
#
# Usage: scripts/make-busybox-image.sh OUT.tar[.gz|.zst]
set -euo pipefail

usage() { echo "usage: $0 OUT.tar[.gz|.zst]" >&2; exit 2; }
[[ $# -eq 1 ]] || usage
out=$1
busybox=${BUSYBOX:-/bin/busybox}

if [[ ! -x $busybox ]]; then
    echo "$0: $busybox not found (apt-get install busybox-static)" >&2
    exit 1
fi
if ! "$busybox" --list-full >/dev/null 2>&1; then
    echo "$0: $busybox does not run (apt-get install busybox-static)" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT
root=$work/rootfs
mkdir -m 0755 "$root"
cd "$root"

mkdir -m 0755 bin dev etc proc run sbin sys usr usr/bin usr/sbin var
mkdir -m 0700 root
mkdir -m 1777 tmp

install -m 0755 "$busybox" bin/busybox

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >etc/passwd
printf 'root:x:0:\nnogroup:x:65534:\n' >etc/group
printf 'busybox\n' >etc/hostname
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >etc/hosts
chmod 0644 etc/passwd etc/group etc/hostname etc/hosts

"$busybox" --list-full | sort -u | while IFS= read -r applet; do
    applet=${applet#/}
    [[ -n $applet && $applet != bin/busybox ]] || continue
    case /$applet/ in */../*) echo "$0: unexpected applet path $applet" >&2; exit 1 ;; esac
    dir=$(dirname -- "$applet")
    [[ -d $dir ]] || install -d -m 0755 -- "$dir"
    ln -s /bin/busybox "$applet"
done

compress=()
case $out in
    *.gz | *.tgz) compress=(gzip -n -6) ;;
    *.zst | *.zstd) compress=(zstd -q -3 --stdout) ;;
esac

tmp_out=$(mktemp "$(dirname -- "$out")/.$(basename -- "$out").XXXXXX")
if ! {
    tar --sort=name --numeric-owner --owner=0 --group=0 --mtime="@${SOURCE_DATE_EPOCH:-0}" \
        --format=gnu -C "$root" -cf - . |
        if ((${#compress[@]})); then "${compress[@]}"; else cat; fi
} >"$tmp_out"; then
    rm -f -- "$tmp_out"
    exit 1
fi
chmod 0644 "$tmp_out"
mv -f -- "$tmp_out" "$out"
echo "$out"
