#!/usr/bin/env bash
# The main demo: live-migrate a running container between two "hosts" on this machine.
#
# What it changes on the host:
#   - runs scripts/setup.sh (packages, CRIU, sysctl fs.pipe-max-size, .venv — see its header)
#   - for the demo only, all removed again on exit (also after a failure or Ctrl-C):
#       a bridge pmdemo<N> with 10.250.<M>.1/24 in the root network namespace (M: a /24 with no
#       route or address on this machine yet); two network namespaces pmdemo<N>-a and -b, each
#       joined to that bridge by a veth and running one pymigrate daemon on <its address>:7070
#       (plain TCP: the link exists only inside this machine); two state roots in a fresh
#       directory under /tmp; the demo container, its cgroups, overlay mounts and veth.
#   Nothing is forwarded or routed off the machine. Safe to re-run: every run uses its own names.
#
# Steps: setup -> pymigrate check -> two hosts with daemons -> a counter container on host a ->
# checkpoint it (left running; stats) -> migrate it to host b (progress bar, stats table) ->
# its counter goes on, same address, on b.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PORT=7070
T0=$EPOCHREALTIME

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }
show_tail() { local n=$1; shift; printf '\033[2m$ %s | tail -n %s\033[0m\n' "$*" "$n"; "$@" | tail -n "$n"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "demo.sh: must run as root (setup installs packages; the demo creates namespaces)" >&2
    exit 1
fi

say "scripts/setup.sh"
scripts/setup.sh

PYMIGRATE="$REPO/.venv/bin/pymigrate"
say "pymigrate check"
show "$PYMIGRATE" check

# --- two hosts -------------------------------------------------------------------------------------
TAG=$$
BRIDGE="pmdemo$TAG"
BRIDGE=${BRIDGE:0:15}  # IFNAMSIZ
NS_A="pmdemo$TAG-a"
NS_B="pmdemo$TAG-b"
WORK=$(mktemp -d /tmp/pmdemo.XXXXXX)
ROOT_A="$WORK/a"
ROOT_B="$WORK/b"
DAEMON_PIDS=()

in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    printf '\n==> cleaning up\n'
    for pid in "${DAEMON_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${DAEMON_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    for pair in "$NS_A:$ROOT_A" "$NS_B:$ROOT_B"; do
        local ns=${pair%%:*} root=${pair#*:}
        [[ -e /run/netns/$ns && -d $root/containers ]] || continue
        for name in $("$PYMIGRATE" --root "$root" ps -a -q 2>/dev/null); do
            in_ns "$ns" "$PYMIGRATE" --root "$root" rm -f "$name" >/dev/null 2>&1
        done
    done
    for ns in "$NS_A" "$NS_B"; do
        [[ -e /run/netns/$ns ]] || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    ip link del "$BRIDGE" 2>/dev/null
    if [[ -d $WORK ]]; then
        # anything still mounted below the roots (overlays), deepest first
        awk -v w="$WORK/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
        for root in "$ROOT_A" "$ROOT_B"; do
            # the per-root parent cgroups the runtime made (pymigrate/<root tag>), now empty
            local parent
            parent=$("$REPO/.venv/bin/python" -c 'import sys; from runtime.config import default_cgroup_parent; print(default_cgroup_parent(sys.argv[1]))' "$root" 2>/dev/null) || continue
            find /sys/fs/cgroup -mindepth 2 -maxdepth 6 -type d -path "*/$parent" 2>/dev/null | while read -r d; do rmdir "$d" 2>/dev/null; done
        done
        rm -rf "$WORK"
    fi
    printf '    removed namespaces %s %s, bridge %s, %s\n' "$NS_A" "$NS_B" "$BRIDGE" "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A /24 in 10.250.0.0/16 that nothing on this machine uses yet.
used=$(ip -4 route show table all; ip -4 addr show)
SUBNET=""
for _ in $(seq 64); do
    n=$((RANDOM % 256))
    if ! grep -q "10\.250\.$n\." <<<"$used"; then SUBNET="10.250.$n"; break; fi
done
[[ -n $SUBNET ]] || { echo "demo.sh: no free /24 in 10.250.0.0/16" >&2; exit 1; }
ADDR_A="$SUBNET.2"
ADDR_B="$SUBNET.3"

say "two hosts: network namespaces $NS_A ($ADDR_A) and $NS_B ($ADDR_B) on bridge $BRIDGE"
ip link add "$BRIDGE" type bridge
ip addr add "$SUBNET.1/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
for host in a b; do
    ns="pmdemo$TAG-$host"
    addr=$([[ $host == a ]] && echo "$ADDR_A" || echo "$ADDR_B")
    root=$([[ $host == a ]] && echo "$ROOT_A" || echo "$ROOT_B")
    veth="${BRIDGE:0:13}$host"
    ip netns add "$ns"
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" master "$BRIDGE" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    mkdir -p "$root"
    # nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroup hierarchies.
    in_ns "$ns" "$PYMIGRATE" --root "$root" daemon --listen "$addr:$PORT" --insecure >"$WORK/daemon-$host.log" 2>&1 &
    DAEMON_PIDS+=($!)
done
for addr in "$ADDR_A" "$ADDR_B"; do
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/$addr/$PORT") 2>/dev/null && break
        sleep 0.05
    done
    (exec 3<>"/dev/tcp/$addr/$PORT") 2>/dev/null || { echo "demo.sh: no daemon on $addr:$PORT"; cat "$WORK"/daemon-*.log; exit 1; }
done
echo "    daemons: host a $ADDR_A:$PORT (root $ROOT_A), host b $ADDR_B:$PORT (root $ROOT_B)"

# The CLI talks to each host's daemon over gRPC, as a remote operator or a scheduler would.
A=("$PYMIGRATE" --host "$ADDR_A:$PORT" --insecure)
B=("$PYMIGRATE" --host "$ADDR_B:$PORT" --insecure)

say "a counter container on host a"
show "${A[@]}" image build-busybox busybox
show "${A[@]}" run -d --name counter busybox \
    sh -c 'i=0; while :; do i=$((i+1)); echo "count $i"; sleep 0.2; done'
sleep 2
show "${A[@]}" ps
show_tail 3 "${A[@]}" logs counter

say "checkpoint it on host a (CRIU dump of the frozen container; it keeps running)"
show "${A[@]}" checkpoint counter --leave-running --print-stats
show "${A[@]}" checkpoint ls

say "migrate it to host b (host a's daemon streams the checkpoint to host b's daemon)"
show "${A[@]}" migrate counter "$ADDR_B:$PORT"

say "the counter goes on on host b, with the same address; host a has nothing left"
sleep 1
show "${B[@]}" ps
show_tail 3 "${B[@]}" logs counter
show "${A[@]}" ps -a

printf '\ndemo done in %.1f s (setup included)\n' "$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN {print b - a}')"
