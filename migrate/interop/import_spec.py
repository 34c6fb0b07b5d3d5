"""The pymigrate container spec of a foreign checkpoint (``podman_import``).

Read from ``spec.dump`` (the OCI runtime spec the container ran with) and ``config.dump``:
args, env, cwd, user, hostname, the name; pids/memory/cpu limits; capabilities as
``cap_add``/``cap_drop`` against pymigrate's default set; the stop signal. Its bind mounts
other than the engine's own (``import_mounts``) become volumes, which an imported archive can
never source itself: each must be mapped with ``--volume HOST:TARGET`` (migrate/restore.py
``checked_spec``, the same validation as any import). The address is never podman's (10.88.x
does not travel): the restore leases one from this host's pool.

Refused before anything runs (``Unsupported``, naming what): a user namespace or id mappings,
a terminal (``-t``: its master was conmon's), pid, mount or cgroup namespaces shared with another
container or the host (a path), no network namespace at all or one without a network (podman
``--network none``: runc dumps it empty, not external). A pod's shared network, IPC and
UTS namespaces (a Kubernetes container's, from the kubelet) are made anew: they do not travel.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from migrate.interop.import_mounts import kind_of
from runtime.errors import Unsupported
from runtime.spec import ContainerSpec, Volume

OWN_NAMESPACES = frozenset({"pid", "network", "ipc", "uts", "mount", "cgroup"})
# namespaces a pod's containers join (the pause container's; a path in spec.dump) that a restore
# makes anew here: the network one is this host's (extRootNetNS), CRIU restores the IPC and UTS
# ones from the images (their content is the container's own view)
POD_NAMESPACES = frozenset({"network", "ipc", "uts"})


def _obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (absent and malformed read alike)."""
    return value if isinstance(value, dict) else {}


def check_supported(spec: dict[str, Any], name: str) -> None:
    """Refuse what a foreign container may have and pymigrate cannot restore (module docstring)."""
    what = f"import of container {name}"
    linux = _obj(spec.get("linux"))
    namespaces = [ns for ns in linux.get("namespaces") or () if isinstance(ns, dict)]
    kinds = {str(ns.get("type")) for ns in namespaces}
    if "user" in kinds or linux.get("uidMappings") or linux.get("gidMappings"):
        raise Unsupported(what, "it runs in a user namespace (podman --userns / rootless), which a foreign import does not map",
                          hint="checkpoint a container run without --userns as root")
    if kinds - OWN_NAMESPACES:
        raise Unsupported(what, f"it has namespaces pymigrate does not restore: {', '.join(sorted(kinds - OWN_NAMESPACES))}")
    if "network" not in kinds:
        raise Unsupported(what, "it uses the host's network namespace (--network host)",
                          hint="checkpoint a container with its own network namespace")
    if not any(ns.get("type") == "network" and ns.get("path") for ns in namespaces):
        # runc then dumps the namespace as empty (CRIU makes a new one without even loopback up),
        # not as the external one this host's network namespace replaces
        raise Unsupported(what, "it has a network namespace of its own with no network (podman --network none), "
                                "which runc does not dump as an external namespace",
                          hint="checkpoint a container on a podman network (the default)")
    shared = sorted(str(ns.get("type")) for ns in namespaces if ns.get("path") and ns.get("type") not in POD_NAMESPACES)
    if shared:
        raise Unsupported(what, f"it shares namespaces with another container or the host: {', '.join(shared)}",
                          hint="checkpoint a container whose pid, mount and cgroup namespaces are its own")
    process = _obj(spec.get("process"))
    if process.get("terminal"):
        raise Unsupported(what, "it has a terminal (-t), whose other end was podman's conmon",
                          hint="checkpoint a container run without -t")


def foreign_volumes(spec: dict[str, Any]) -> tuple[Volume, ...]:
    """Its bind mounts other than the engine's: the archive's source is kept only for messages
    (``checked_spec`` refuses it unless ``--volume`` maps the target)."""
    vols = []
    for m in spec.get("mounts") or ():
        if not isinstance(m, dict):
            continue
        opts = [o for o in m.get("options") or () if isinstance(o, str)]
        is_bind = m.get("type") == "bind" or "bind" in opts or "rbind" in opts
        dest = m.get("destination")
        if is_bind and isinstance(dest, str) and kind_of(dest) is None:
            vols.append(Volume(source=str(m.get("source") or ""), target=dest, readonly="ro" in opts))
    return tuple(vols)


def spec_from_foreign(fc: Any, *, image_name: str, image_digest: str, name: str, container_id: str) -> ContainerSpec:
    """``fc``'s container as a ``ContainerSpec`` (not validated yet: the restore's ``checked_spec`` does)."""
    spec, config = fc.spec, fc.config
    process = _obj(spec.get("process"))
    user = _obj(process.get("user"))
    cap_add, cap_drop = _caps(process)
    return ContainerSpec(
        container_id=container_id,
        name=name,
        image=image_name,
        image_digest=image_digest,
        command=tuple(str(a) for a in process.get("args") or ()),
        env=tuple(str(e) for e in process.get("env") or ()),
        workdir=str(process.get("cwd") or "/"),
        hostname=str(spec.get("hostname") or ""),
        network="bridge",
        volumes=foreign_volumes(spec),
        created_at=time.time(),
        user=f"{int(user.get('uid') or 0)}:{int(user.get('gid') or 0)}",
        stop_signal=_stop_signal(config.get("stopSignal")),
        cap_add=cap_add,
        cap_drop=cap_drop,
        **_limits(spec),
    )


def _caps(process: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The bounding set as cap_add/cap_drop against pymigrate's default (CRIU restores the
    images' sets; the spec's are what exec, a restart and the seccomp check use)."""
    from runtime.capabilities import names

    caps = _obj(process.get("capabilities"))
    bounding = caps.get("bounding")
    if not isinstance(bounding, list):
        return (), ()
    have, default = {str(c) for c in bounding}, set(names())
    return tuple(sorted(have - default)), tuple(sorted(default - have))


def _stop_signal(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return signal.Signals(value).name
        except ValueError:
            return ""
    return ""


def _limits(spec: dict[str, Any]) -> dict[str, Any]:
    """pids, memory and cpu limits of ``linux.resources`` (absent ones stay unset)."""
    linux = _obj(spec.get("linux"))
    res = _obj(linux.get("resources"))
    out: dict[str, Any] = {}
    pids = _obj(res.get("pids")).get("limit")
    if isinstance(pids, int) and pids > 0:
        out["pids_limit"] = pids
    mem = _obj(res.get("memory")).get("limit")
    if isinstance(mem, int) and mem > 0:
        out["memory_bytes"] = mem
    cpu = _obj(res.get("cpu"))
    quota, period = cpu.get("quota"), cpu.get("period")
    if isinstance(quota, int) and isinstance(period, int) and quota > 0 and period > 0:
        out["cpus"] = round(quota / period, 3)
    return out
