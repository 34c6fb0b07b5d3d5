#!/usr/bin/env bash
# Host setup for pymigrate: idempotent, run as root; a second run checks and changes nothing.
#
# What it changes on the host:
#   - installs Debian (bookworm) packages: build tools, CRIU's build dependencies, busybox-static,
#     nftables, iproute2, zstd, runc, openssh-server (sshd is left stopped and disabled),
#     libseccomp2 and golang-github-containers-common (podman's default seccomp profile,
#     /usr/share/containers/seccomp.json, which every container gets unless told otherwise);
#     bash-completion, zsh and fish (pymigrate's completion scripts: loaded, syntax-checked);
#     podman, skopeo, attr and libcap2-bin for the image tests (real docker/OCI archives with
#     file capabilities and xattrs); docker-registry and apache2-utils (htpasswd) for the registry
#     pull/push tests (its packaged service is left stopped and disabled; the tests start their
#     own on 127.0.0.1); runs `apt-get update` only when something has to be fetched
#   - adds a source-only apt entry for Debian trixie
#     (/etc/apt/sources.list.d/pymigrate-trixie-src.sources: Types deb-src only, never binaries)
#   - builds CRIU >= 4 from trixie's source tarball in /var/cache/pymigrate/criu and installs the
#     binary as /usr/local/sbin/criu (only if no working criu >= 4 is found first on PATH)
#   - mounts a 1 MiB tmpfs on /run/pymigrate-criu (unless it is on a tmpfs already), where that
#     CRIU keeps its kernel-feature cache: ~30 ms less per CRIU run (runtime/criu_kdat.py)
#   - raises sysctl fs.pipe-max-size to at least 4194304 (never lowers it) and persists that in
#     /etc/sysctl.d/60-pymigrate.conf (CRIU lazy pages need ~3.3 MiB pipes without CAP_SYS_RESOURCE)
#   - creates <repo>/.venv, installs pymigrate editable with its test extras, and installs pycriu
#     generated from the same CRIU source tree; compiles the project and the venv to bytecode
#   - writes pymigrate's shell completion (/usr/share/bash-completion/completions/pymigrate,
#     /usr/local/share/zsh/site-functions/_pymigrate, /usr/share/fish/vendor_completions.d/pymigrate.fish)
#     and man pages (/usr/local/share/man/man1/pymigrate.1, pymigrate-COMMAND.1), generated from
#     the CLI's parser; only files whose text changed are rewritten
#
# Environment: PYTHON (interpreter for the venv, default python3), PYMIGRATE_CACHE
# (default /var/cache/pymigrate), CRIU_PREFIX (default /usr/local), FORCE_CRIU_BUILD=1.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PYMIGRATE_CACHE:-/var/cache/pymigrate}
CRIU_PREFIX=${CRIU_PREFIX:-/usr/local}
CRIU_BIN="$CRIU_PREFIX/sbin/criu"
CRIU_MIN_MAJOR=4
# Where the CRIU built here keeps its kernel-feature cache (criu.kdat). CRIU keeps it only on a
# tmpfs; /run is not one on every host, so the directory gets its own small tmpfs (runtime/criu_kdat.py).
CRIU_RUNDIR=/run/pymigrate-criu
PIPE_MAX_MIN=4194304
PYTHON=${PYTHON:-python3}
VENV="$REPO/.venv"
TRIXIE_SOURCES=/etc/apt/sources.list.d/pymigrate-trixie-src.sources
SYSCTL_CONF=/etc/sysctl.d/60-pymigrate.conf
export DEBIAN_FRONTEND=noninteractive
# $CRIU_PREFIX/sbin first so the CRIU built here wins over any distribution criu; the caller's PATH
# (e.g. its python3) comes next, the system directories last.
export PATH="$CRIU_PREFIX/sbin:/usr/local/sbin:$PATH:/usr/sbin:/usr/bin:/sbin:/bin"

STEP="start"
T0=$EPOCHREALTIME
T_STEP=$T0
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}'; }
step_done() { [[ $STEP == start ]] || printf '    (%s s)\n' "$(since "$T_STEP")"; T_STEP=$EPOCHREALTIME; }
step() { step_done; STEP="$1"; printf '==> %s\n' "$1"; }
note() { printf '    %s\n' "$*"; }
on_error() {
    local rc=$?
    # set -E hands the trap to command substitutions too: report once, from the main shell.
    [[ $BASHPID == "$$" ]] || exit "$rc"
    printf 'setup.sh: FAILED in step "%s" (exit %s)\n' "$STEP" "$rc" >&2
    exit "$rc"
}
trap on_error ERR

if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh: must run as root (it installs packages and sets sysctls)" >&2
    exit 1
fi

APT_UPDATED=0
apt_update_once() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        note "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
}

# ---------------------------------------------------------------------------------------------
step "debian packages"
PACKAGES=(
    gcc make pkg-config
    libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler libnl-3-dev libnet1-dev libcap-dev
    libbsd-dev libaio-dev libgnutls28-dev libnftables-dev uuid-dev python3-protobuf
    # libprotobuf-dev: images/google/protobuf/descriptor.proto in the CRIU tree links to it
    busybox-static patch nftables iproute2 zstd runc openssh-server python3-venv
    redis-server  # live-migration tests: a real server in a container (tests/integration/redis_image.py)
    debootstrap  # real-server suite: a Debian bookworm image built from packages (tests/realworld/debian_image.py)
    postgresql-client mariadb-client  # real-server suite: psql and mariadb, the clients held across each move
    # every container's seccomp filter: libseccomp compiles podman's default profile
    # (/usr/share/containers/seccomp.json; bookworm's name for containers-common), runtime/seccomp.py
    libseccomp2 golang-github-containers-common
    # image load tests (tests/integration/test_image_load.py): real docker/OCI archives built by
    # podman and skopeo, with file capabilities (setcap) and xattrs (getfattr)
    podman skopeo attr libcap2-bin
    # image pull/push (runtime/registry.py runs skopeo; tests/integration/test_image_registry.py):
    # Debian's registry (docker-registry, started by the tests on 127.0.0.1 only; its packaged
    # service is never started here) and htpasswd -B (apache2-utils) for its basic auth
    docker-registry apache2-utils
    # pymigrate's shell completion (installed below) is loaded by bash-completion; zsh and fish
    # check the generated scripts' syntax (tests/unit/test_cli_parser.py)
    bash-completion zsh fish
    # run --init (runtime/init_binary.py): /usr/bin/tini-static bound into the container as PID 1;
    # tini is small, well kept and what docker ships as docker-init
    tini
)
missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$pkg")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    note "all ${#PACKAGES[@]} packages present"
else
    note "installing: ${missing[*]}"
    apt_update_once
    # Keep package scripts from starting services (sshd above all) while installing.
    policy=/usr/sbin/policy-rc.d
    policy_created=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        policy_created=1
    fi
    apt_rc=0
    apt-get install -y -qq --no-install-recommends "${missing[@]}" || apt_rc=$?
    if [[ $policy_created -eq 1 ]]; then rm -f "$policy"; fi
    [[ $apt_rc -eq 0 ]] || { STEP="debian packages (apt-get install)"; false; }
    if [[ " ${missing[*]} " == *" openssh-server "* ]]; then
        note "leaving sshd stopped and disabled"
        # systemctl disable also works offline (no systemd running): it removes the symlinks.
        if command -v systemctl >/dev/null; then
            systemctl disable ssh.service ssh.socket >/dev/null 2>&1 || true
            if [[ -d /run/systemd/system ]]; then systemctl stop ssh.service ssh.socket || true; fi
        fi
        update-rc.d ssh disable >/dev/null 2>&1 || true
        if [[ -x /etc/init.d/ssh ]]; then /etc/init.d/ssh stop >/dev/null 2>&1 || true; fi
    fi
    if [[ " ${missing[*]} " == *" docker-registry "* ]]; then
        note "leaving the packaged docker-registry service stopped and disabled (tests start their own)"
        if command -v systemctl >/dev/null; then
            systemctl disable docker-registry.service >/dev/null 2>&1 || true
            if [[ -d /run/systemd/system ]]; then systemctl stop docker-registry.service || true; fi
        fi
        update-rc.d docker-registry disable >/dev/null 2>&1 || true
        if [[ -x /etc/init.d/docker-registry ]]; then /etc/init.d/docker-registry stop >/dev/null 2>&1 || true; fi
    fi
fi

# ---------------------------------------------------------------------------------------------
step "criu >= $CRIU_MIN_MAJOR"
criu_version() {  # prints "X.Y[.Z]" of the given binary, or nothing
    "$1" --version 2>/dev/null | sed -n 's/^Version: *\([0-9][0-9.]*\).*/\1/p' | head -n1
}
# Our fixes to CRIU's source (scripts/criu-patches/<version>-*.patch, applied in name order), e.g.
# inet sockets on Linux >= 6.16. The digest of the patch set is stamped into the source tree and
# next to the installed binary; a CRIU of a patched version without the matching stamp is rebuilt.
CRIU_PATCHES_DIR="$REPO/scripts/criu-patches"
criu_patches() {  # criu_patches VERSION: the patch files for that version, sorted
    compgen -G "$CRIU_PATCHES_DIR/$1-*.patch" | sort || true
}
criu_patch_digest() {  # criu_patch_digest VERSION: sha256 of the version's patch set and build flags ("none" if no patch)
    local files
    files=$(criu_patches "$1")
    if [[ -z $files ]]; then echo none; else { cat $files; echo "RUNDIR=$CRIU_RUNDIR"; } | sha256sum | cut -d' ' -f1; fi
}
CRIU_STAMP="$CRIU_PREFIX/share/pymigrate/criu-patches"
criu_ok() {  # criu_ok PATH: version >= CRIU_MIN_MAJOR, our patches in, and `criu check` passes
    local bin=$1 ver want
    [[ -x $bin ]] || return 1
    ver=$(criu_version "$bin")
    [[ -n $ver && ${ver%%.*} -ge $CRIU_MIN_MAJOR ]] || return 1
    want=$(criu_patch_digest "$ver")
    if [[ $want != none ]]; then
        [[ $bin == "$CRIU_BIN" && -f $CRIU_STAMP && $(cat "$CRIU_STAMP") == "$ver $want" ]] || return 1
    fi
    "$bin" check >/dev/null 2>&1
}
find_tarball() {  # find_tarball GLOB-PREFIX: newest matching source tarball in the cwd, or nothing
    local f found=()
    # $1 unquoted on purpose: it is a glob; unmatched patterns stay literal and fail -f.
    for f in $1.orig.tar.gz $1.orig.tar.xz $1.orig.tar.bz2; do
        [[ -f $f ]] && found+=("$f")
    done
    [[ ${#found[@]} -gt 0 ]] && printf '%s\n' "${found[@]}" | sort -V | tail -n1
    return 0
}
trixie_source_entry() {
    # Same mirror and keyring as the bookworm entry; deb-src only, so no trixie binaries.
    local uri="http://deb.debian.org/debian"
    local key="/usr/share/keyrings/debian-archive-keyring.gpg"
    local main=/etc/apt/sources.list.d/debian.sources
    if [[ -r $main ]]; then
        local stanza
        stanza=$(awk -v RS= '/Suites:[^\n]*bookworm([ \n]|$)/ && !/security/ {print; exit}' "$main")
        local u k
        u=$(sed -n 's/^URIs: *//p' <<<"$stanza" | awk '{print $1}' | head -n1)
        k=$(sed -n 's/^Signed-By: *//p' <<<"$stanza" | head -n1)
        [[ -n $u ]] && uri=$u
        [[ -n $k ]] && key=$k
    fi
    printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
        "$uri" "$key"
}
first_criu=$(command -v criu || true)
if [[ ${FORCE_CRIU_BUILD:-0} != 1 ]] && [[ -n $first_criu ]] && criu_ok "$first_criu"; then
    note "$first_criu $(criu_version "$first_criu"): criu check passes"
    CRIU_FOUND=$first_criu
else
    if [[ ${FORCE_CRIU_BUILD:-0} == 1 ]]; then
        note "FORCE_CRIU_BUILD=1: building"
    elif [[ -n $first_criu ]]; then
        note "$first_criu (version $(criu_version "$first_criu")) is not usable; building"
    else
        note "no criu on PATH; building"
    fi
    STEP="criu: trixie deb-src entry"
    want=$(trixie_source_entry)
    if [[ ! -f $TRIXIE_SOURCES ]] || [[ $(cat "$TRIXIE_SOURCES") != "$want" ]]; then
        note "writing $TRIXIE_SOURCES"
        printf '%s\n' "$want" >"$TRIXIE_SOURCES"
        APT_UPDATED=0
    fi
    STEP="criu: source download"
    mkdir -p "$CACHE/criu"
    # apt downloads as user _apt when it can write there (else it warns and uses root).
    if id _apt >/dev/null 2>&1; then chown _apt "$CACHE/criu"; fi
    cd "$CACHE/criu"
    tarball=$(find_tarball 'criu_*')
    if [[ -z $tarball ]]; then
        apt_update_once
        # `criu/trixie` rather than `-t trixie`: apt rejects -t for a release with no binaries.
        note "apt-get source --tar-only criu/trixie"
        apt-get source -qq --tar-only criu/trixie
        tarball=$(find_tarball 'criu_*')
        [[ -n $tarball ]] || { echo "setup.sh: apt-get source left no criu tarball" >&2; false; }
    fi
    version=${tarball#criu_}
    version=${version%%.orig.tar.*}
    src="$CACHE/criu/criu-$version"
    STEP="criu: unpack $tarball and apply scripts/criu-patches"
    patch_digest=$(criu_patch_digest "$version")
    if [[ ! -f $src/Makefile || $(cat "$src/.pymigrate-patches" 2>/dev/null) != "$patch_digest" ]]; then
        rm -rf "$src.tmp" "$src" && mkdir -p "$src.tmp"
        tar -xf "$tarball" -C "$src.tmp" --strip-components=1
        for p in $(criu_patches "$version"); do
            note "patch -p1 < ${p#"$REPO"/}"
            patch -d "$src.tmp" -p1 --quiet <"$p"
        done
        printf '%s\n' "$patch_digest" >"$src.tmp/.pymigrate-patches"
        mv "$src.tmp" "$src"
    fi
    STEP="criu: make criu ($src)"
    note "make -j$(nproc) criu in $src"
    rm -f "$src/criu/kerndat.o"  # RUNDIR is compiled into it; make does not track the flag
    make -C "$src" -j"$(nproc)" RUNDIR="$CRIU_RUNDIR" criu >"$CACHE/criu/build.log" 2>&1 || {
        tail -n 30 "$CACHE/criu/build.log" >&2
        false
    }
    STEP="criu: install $CRIU_BIN"
    install -D -m 0755 "$src/criu/criu" "$CRIU_BIN"
    mkdir -p "$(dirname "$CRIU_STAMP")"
    printf '%s %s\n' "$version" "$patch_digest" >"$CRIU_STAMP"
    printf '%s\n' "$src" >"$CACHE/criu/source-dir"
    STEP="criu: verify (criu check)"
    "$CRIU_BIN" check
    hash -r
    first_criu=$(command -v criu)
    if [[ $first_criu != "$CRIU_BIN" ]]; then
        echo "setup.sh: $first_criu shadows $CRIU_BIN on PATH; put $CRIU_PREFIX/sbin first" >&2
        false
    fi
    CRIU_FOUND=$CRIU_BIN
    note "installed $CRIU_BIN $(criu_version "$CRIU_BIN")"
fi
CRIU_VERSION=$(criu_version "$CRIU_FOUND")

# ---------------------------------------------------------------------------------------------
step "sysctl fs.pipe-max-size >= $PIPE_MAX_MIN"
current=$(cat /proc/sys/fs/pipe-max-size)
if [[ $current -lt $PIPE_MAX_MIN ]]; then
    note "raising from $current to $PIPE_MAX_MIN"
    sysctl -q -w fs.pipe-max-size="$PIPE_MAX_MIN"
    current=$(cat /proc/sys/fs/pipe-max-size)
else
    note "is $current"
fi
# Persist the larger of the current value and the minimum, so boot never lowers it either.
persisted=$(sed -n 's/^fs.pipe-max-size *= *//p' "$SYSCTL_CONF" 2>/dev/null | tail -n1 || true)
if [[ -z $persisted || $persisted -lt $current ]]; then
    note "persisting fs.pipe-max-size = $current in $SYSCTL_CONF"
    printf '# written by pymigrate scripts/setup.sh: CRIU lazy pages need pipes of ~3.3 MiB\n%s\n' \
        "fs.pipe-max-size = $current" >"$SYSCTL_CONF"
fi

# ---------------------------------------------------------------------------------------------
step "python venv $VENV"
if [[ ! -x $VENV/bin/python ]]; then
    note "$PYTHON -m venv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.pymigrate-setup"
# editable_mode=compat: a plain path entry in a .pth file. setuptools' default (strict) editable
# install puts an import hook in site-packages whose own imports (pathlib, importlib.util, ...)
# cost every interpreter start ~10 ms (python -c pass: 22 -> 10 ms); `pymigrate run -d` latency
# is benchmarked. Sources are still used in place (the dev loop needs no reinstall).
EDITABLE_MODE=compat
want_stamp="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1) editable_mode=$EDITABLE_MODE"
if [[ -f $stamp ]] && [[ $(cat "$stamp") == "$want_stamp" ]] \
    && "$VENV/bin/python" -c 'import migrate, runtime, pytest, grpc_tools' 2>/dev/null; then
    note "pymigrate[test] installed (pyproject.toml unchanged)"
else
    note "pip install -e '.[test]' (editable_mode=$EDITABLE_MODE)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO[test]" \
        --config-settings editable_mode="$EDITABLE_MODE"
    printf '%s\n' "$want_stamp" >"$stamp"
fi

# ---------------------------------------------------------------------------------------------
step "pycriu $CRIU_VERSION"
pycriu_ok() {
    "$VENV/bin/python" - "$CRIU_VERSION" <<'EOF' 2>/dev/null
import sys
import pycriu, pycriu.images, pycriu.version
from pycriu.images import pb
assert pycriu.version.__version__ == sys.argv[1], pycriu.version.__version__
pycriu.criu()
assert pb.inventory_entry is not None
EOF
}
if pycriu_ok; then
    note "pycriu $CRIU_VERSION importable"
else
    STEP="pycriu: find criu $CRIU_VERSION source tree"
    src="$CACHE/criu/criu-$CRIU_VERSION"
    if [[ ! -d $src/lib/pycriu ]]; then
        # criu came from elsewhere (not built by this script): fetch the matching source.
        mkdir -p "$CACHE/criu"
        cd "$CACHE/criu"
        tarball=$(find_tarball "criu_$CRIU_VERSION")
        if [[ -z $tarball ]]; then
            want=$(trixie_source_entry)
            [[ -f $TRIXIE_SOURCES ]] || { printf '%s\n' "$want" >"$TRIXIE_SOURCES"; APT_UPDATED=0; }
            apt_update_once
            apt-get source -qq --tar-only criu/trixie
            tarball=$(find_tarball "criu_$CRIU_VERSION")
            [[ -n $tarball ]] || { echo "setup.sh: trixie has no criu $CRIU_VERSION source for pycriu" >&2; false; }
        fi
        mkdir -p "$src"
        tar -xf "$tarball" -C "$src" --strip-components=1
    fi
    STEP="pycriu: generate modules in $src/lib/pycriu"
    note "generating _pb2 modules, magic.py, pb.py, version.py"
    "$VENV/bin/python" - "$src" "$CRIU_VERSION" <<'EOF'
import pathlib, subprocess, sys
src = pathlib.Path(sys.argv[1]); version = sys.argv[2]
py = sys.executable
lib = src / "lib" / "pycriu"
out = lib / "images"
out.mkdir(parents=True, exist_ok=True)
protoc = [py, "-m", "grpc_tools.protoc", "-I", str(src / "images")]
subprocess.run(protoc + [f"--python_out={lib}", str(src / "images" / "rpc.proto")], check=True)
protos = sorted(p for p in (src / "images").glob("*.proto") if p.name != "rpc.proto")
subprocess.run(protoc + [f"--python_out={out}"] + [str(p) for p in protos], check=True)
subprocess.run([py, str(src / "scripts" / "magic-gen.py"), str(src / "criu/include/magic.h"),
                str(out / "magic.py")], check=True)
names = sorted(p.stem for p in out.glob("*_pb2.py") if p.stem != "opts_pb2")
(out / "pb.py").write_text("".join(f"from .{n} import *\n" for n in names))
(lib / "version.py").write_text(f'__version__ = "{version}"\n')
EOF
    STEP="pycriu: install into $VENV"
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # Copy the package rather than pip-installing lib/: lib's build backend asks protobuf<4,
    # while the venv runs protobuf >= 5 (the generated modules import fine under it).
    rm -rf "$site/pycriu"
    cp -r "$src/lib/pycriu" "$site/pycriu"
    find "$site/pycriu" -name '__pycache__' -prune -exec rm -rf {} +
    STEP="pycriu: verify"
    pycriu_ok || {
        "$VENV/bin/python" -c 'import pycriu, pycriu.images; pycriu.criu()'
        false
    }
    note "pycriu $CRIU_VERSION installed in $site"
fi

# ---------------------------------------------------------------------------------------------
step "criu kernel-feature cache"
# Mounts the tmpfs when the directory compiled into $CRIU_FOUND is not on one (never over a
# directory in use); a host where it cannot only runs CRIU ~30 ms slower per run.
note "$("$VENV/bin/python" -m runtime.criu_kdat "$CRIU_FOUND" || true)"

# ---------------------------------------------------------------------------------------------
# Generated from the parser (migrate/cli/completion.py), so they follow the CLI as it changes.
step "shell completion and man pages"
installed=$("$VENV/bin/python" -m migrate.cli.completion install)
while IFS= read -r line; do note "$line"; done <<<"$installed"

# ---------------------------------------------------------------------------------------------
# Bytecode for the project and the venv (pycriu above is copied without it): shells that set
# PYTHONDONTWRITEBYTECODE would otherwise compile every module on every CLI start. Only stale or
# missing .pyc files are written, so a second run changes nothing.
step "bytecode"
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$VENV/bin/python" -m compileall -q -j 0 "$REPO/runtime" "$REPO/migrate" "$site"
note "compiled runtime/, migrate/ and $site"

step_done
STEP="done"
printf '==> setup done in %s s (criu %s at %s)\n' "$(since "$T0")" "$CRIU_VERSION" "$CRIU_FOUND"
