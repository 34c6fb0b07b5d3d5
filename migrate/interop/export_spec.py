"""The two descriptions podman reads from an exported checkpoint: ``spec.dump`` and ``config.dump``.

``spec.dump`` is an OCI runtime spec (runtime-spec config.md) of the container as pymigrate runs
it (runtime/rootfs.py ``plan``): /proc, a /dev tmpfs with devpts, a /dev/shm tmpfs and mqueue
below it, a read-only sysfs, runc's masked and read-only paths; the pid, network, ipc, uts,
mount (and cgroup) namespaces; the process (args, env, cwd, user, capabilities) and hostname.
podman 4.3 (libpod ``restore``, runc 1.1 ``Restore``) uses it as the new container's config.json:

- runc creates the mount points of mounts not below a tmpfs (``prepareCriuRestoreMounts``) and
  gives CRIU an ``ext-mount-map`` entry for each bind mount, keyed by its destination; CRIU
  restores every other mount from its images. /dev is a tmpfs here, so nothing is made below it.
- podman replaces the network namespace's path with the one it makes (``addNetworkNamespace``),
  the root path with the container's storage, the cgroups path, and adds its own binds of
  /etc/hosts, /etc/resolv.conf, /etc/hostname and /run/.containerenv (unused by CRIU: the images
  hold no mounts there) after removing any the spec names.
- ``process`` is what ``podman exec`` starts from; the restored tree keeps what CRIU restores
  (credentials, rlimits, seccomp filters), so no seccomp profile is written.

``config.dump`` is libpod's ContainerConfig as JSON (libpod/container_config.go); podman
(pkg/checkpoint ``CRImportCheckpoint``) needs ``name``, ``id``, ``rootfsImageID`` (an image in its
store: the image's config digest, which pymigrate records for every layered image) and
``rootfsImageName`` (pulled with policy "missing", so a local image is used as it is), and a
network mode; unknown fields are ignored and missing ones take podman's defaults.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

from runtime.capabilities import CAP_NAMES, container_caps
from runtime.rootfs import MASKED_PATHS, READONLY_PATHS
from runtime.spec import ContainerSpec
from runtime.users import Credentials

OCI_VERSION = "1.0.2-dev"  # what runc 1.1 writes and podman 4.3 reads
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ROOT_PLACEHOLDER = "rootfs"  # podman sets the real root (g.SetRootPath) for every imported checkpoint
ANNOTATION_CHECKPOINT = "io.pymigrate.checkpoint-id"
ANNOTATION_CONTAINER = "io.pymigrate.container-id"

_NOSUID_NOEXEC_NODEV = ["nosuid", "noexec", "nodev"]

# The mounts runtime/rootfs.py ``plan`` makes, in its order (bind volumes follow: ``_bind_volumes``).
_MOUNTS: tuple[dict[str, Any], ...] = (
    {"destination": "/proc", "type": "proc", "source": "proc", "options": _NOSUID_NOEXEC_NODEV},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": [*_NOSUID_NOEXEC_NODEV, "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": _NOSUID_NOEXEC_NODEV},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": [*_NOSUID_NOEXEC_NODEV, "ro"]},
)

_SIGNALS = {"SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGKILL": 9, "SIGUSR1": 10, "SIGUSR2": 12, "SIGTERM": 15,
            "SIGWINCH": 28, "SIGPWR": 30}


def podman_id(container_id: str) -> str:
    """A 64-hex container id for podman (ours have 32), the same for the same container."""
    return hashlib.sha256(f"pymigrate:{container_id}".encode()).hexdigest()


def stop_signal_number(text: str) -> int:
    """The container's stop signal as a number (podman's config keeps numbers); SIGTERM if unknown."""
    if not text:
        return 15
    if text.isdigit():
        return int(text)
    name = text.upper()
    return _SIGNALS.get(name if name.startswith("SIG") else f"SIG{name}", 15)


def _namespaces(netns_path: str, cgroupns: bool) -> list[dict[str, str]]:
    namespaces = [{"type": "pid"}, {"type": "network", "path": netns_path}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    if cgroupns:
        namespaces.append({"type": "cgroup"})
    return namespaces


def _resources(spec: ContainerSpec) -> dict[str, Any]:
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if spec.memory_bytes:
        resources["memory"] = {"limit": spec.memory_bytes}
    if spec.pids_limit:
        resources["pids"] = {"limit": spec.pids_limit}
    if spec.cpus:
        period = 100_000
        resources["cpu"] = {"quota": int(spec.cpus * period), "period": period}
    return resources


def _env(spec: ContainerSpec) -> list[str]:
    env = list(spec.env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    if spec.hostname and not any(e.startswith("HOSTNAME=") for e in env):
        env.append(f"HOSTNAME={spec.hostname}")
    return env


RLIMIT_NAMES = ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS",
                "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS", "RLIMIT_SIGPENDING",
                "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME")  # by resource number, getrlimit(2)


def oci_rlimits(limits: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """The init's (soft, hard) limits by resource number as OCI ``process.rlimits`` (what ``podman
    exec`` starts with). The restored tree keeps its own: CRIU restores them, and cannot raise a
    hard limit above its own without CAP_SYS_RESOURCE (runc's CRIU runs with conmon's limits)."""
    return [{"type": name, "soft": soft, "hard": hard} for name, (soft, hard) in zip(RLIMIT_NAMES, limits)]


CGROUP_ROOT = "/sys/fs/cgroup"
# runc's cgroup mount: on a v1 host, a tmpfs with one bind per hierarchy, each an external mount
# keyed by its destination (libcontainer getCgroupMounts), as a podman container's dump has them
_CGROUP_MOUNT = {"destination": CGROUP_ROOT, "type": "cgroup", "source": "cgroup",
                 "options": ["rprivate", "nosuid", "noexec", "nodev", "relatime", "ro"]}


def _bind_volumes(spec: ContainerSpec) -> list[dict[str, Any]]:
    """Bind volumes (-v HOST:TARGET) as runc's bind mounts: runc gives CRIU each one's HOST path
    under the key TARGET (the exported images' key: export_images.rekey_mounts). The path must
    exist where podman restores, as for podman's own exports of binds."""
    return [{"destination": v.target, "type": "bind", "source": v.source,
             "options": ["rbind", "rprivate", *(["ro"] if v.readonly else [])]} for v in spec.volumes if not v.name]


def engine_extras(engine_mounts: tuple[str, ...], masked: frozenset[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """For a container imported from podman (``ContainerSpec.engine_mounts``): the mounts the spec
    adds (runc's cgroup mount, whose binds its dump had) and the masked paths (runc's, keyed
    /dev/null). The engine's file binds (/etc/hosts ...) podman adds by itself on restore."""
    mounts = [dict(_CGROUP_MOUNT, options=list(_CGROUP_MOUNT["options"]))] \
        if any(m == CGROUP_ROOT or m.startswith(CGROUP_ROOT + "/") for m in engine_mounts) else []
    return mounts, sorted(masked)


def oci_spec(spec: ContainerSpec, creds: Credentials, *, checkpoint_id: str, netns_path: str,
             rlimits: list[tuple[int, int]] | None = None, masked: frozenset[str] = frozenset(),
             cgroupns: bool | None = None) -> dict[str, Any]:
    """``spec.dump`` for container ``spec`` (module docstring); ``creds``: its user, resolved in its
    root; ``rlimits``: its init's (soft, hard) limits by resource number (``oci_rlimits``);
    ``masked``: the masked files of a container imported from podman (``engine_extras``);
    ``cgroupns``: whether its tasks have a cgroup namespace (the images tell; default: its spec's)."""
    if cgroupns is None:
        cgroupns = spec.cgroupns_mode == "private"
    extra_mounts, extra_masked = engine_extras(spec.engine_mounts, masked)
    caps = [CAP_NAMES[i] for i in sorted(container_caps(spec.cap_add, spec.cap_drop))]
    user: dict[str, Any] = {"uid": creds.uid, "gid": creds.gid, "umask": 0o022}
    if creds.groups:
        user["additionalGids"] = list(creds.groups)
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": user,
            "args": list(spec.command),
            "env": _env(spec),
            "cwd": spec.workdir or "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            **({"rlimits": oci_rlimits(rlimits)} if rlimits else {}),
        },
        "root": {"path": ROOT_PLACEHOLDER, "readonly": spec.read_only},
        "hostname": spec.hostname,
        "mounts": [*(dict(m, options=list(m["options"])) for m in _MOUNTS), *extra_mounts, *_bind_volumes(spec)],
        "annotations": {
            "io.container.manager": "libpod",
            "io.kubernetes.cri-o.TTY": "false",
            "org.opencontainers.image.stopSignal": str(stop_signal_number(spec.stop_signal)),
            ANNOTATION_CHECKPOINT: checkpoint_id,
            ANNOTATION_CONTAINER: spec.container_id,
        },
        "linux": {
            "resources": _resources(spec),
            "namespaces": _namespaces(netns_path, cgroupns),
            "maskedPaths": list(dict.fromkeys((*MASKED_PATHS, *extra_masked))),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def _iso(unix_s: float) -> str:
    return datetime.datetime.fromtimestamp(unix_s, tz=datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def libpod_config(spec: ContainerSpec, oci: dict[str, Any], *, image_name: str, image_id: str,
                  created_at: float, checkpointed_at: float | None = None) -> dict[str, Any]:
    """``config.dump`` (module docstring): ``image_id`` is the 64-hex id podman knows the image by;
    ``checkpointed_at`` goes in as ``checkpointedTime`` (CRI-O's field; podman ignores it)."""
    config: dict[str, Any] = {
        "spec": oci,
        "id": podman_id(spec.container_id),
        "name": spec.name,
        "RawImageName": image_name,
        "rootfsImageID": image_id,
        "rootfsImageName": image_name,
        "Dependencies": None,
        "command": list(spec.command),
        "createNetNS": True,
        "networkMode": "bridge" if spec.network == "bridge" else "none",
        "UseImageResolvConf": False,
        "UseImageHosts": False,
        "stopSignal": stop_signal_number(spec.stop_signal),
        "stopTimeout": 10,
        "createdTime": _iso(created_at or 0.0),
        "cgroupsMode": "enabled",
        "logDriver": "k8s-file",
        "runtime": "runc",  # podman restores with the runtime named here (empty: refused)
        "umask": "0022",
        "labels": dict(spec.labels) or None,
    }
    if checkpointed_at:
        config["checkpointedTime"] = _iso(checkpointed_at)
    if spec.network == "bridge":
        config["newNetworks"] = {"podman": {"interface_name": "eth0"}}
        if spec.ports:  # podman forwards them again (its network's port mappings; restore --publish replaces them)
            config["newPortMappings"] = [{"host_ip": p.host_ip, "container_port": p.container_port, "host_port": p.host_port,
                                          "range": 1, "protocol": p.protocol} for p in spec.ports]
    if spec.workdir and spec.workdir != "/":
        config["createWorkingDir"] = True
    return config
