"""The restore of a ``--userns`` container, inside its shim (runtime/restore_start.py calls it).

CRIU makes the restored container's user namespace itself (from the dumped ``userns`` image, its
map pointed at this host's range first: ``prepare_images``) and, as the network namespace was
dumped empty (migrate/checkpoint.py ``dump_empty_ns``), a new network namespace inside it: an
external one pymigrate prepared could not be joined from there. At CRIU's ``setup-namespaces``
notification (the restored init exists, in its namespaces; no socket or mount is restored yet)
``wire`` pins both namespaces at ROOT/netns/<id> and ROOT/userns/<id> (exec, ports, a restart and
the rest of the runtime find them there, as after a run) and connects the network namespace to the
bridge with its address, link down until the restored tasks resume (runtime/restore_start.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

SETUP_NAMESPACES = "setup-namespaces"


def prepare_images(images_dir: Path, wiring: dict[str, Any]) -> None:
    """Point the dumped id maps at this host's range (a no-op when it is the dump's)."""
    from runtime.criu import rewrite_userns_map

    rewrite_userns_map(Path(images_dir), int(wiring["base"]))


def wire(wiring: dict[str, Any], pid: int) -> None:
    """Pin the restored init's user and network namespaces and connect the network (see module doc).

    Raises:
        ContainerError / OSError: pinning or connecting failed (CRIU then fails the restore).
    """
    from runtime import _netns, userns
    from runtime.config import Paths
    from runtime.network import network_for

    paths = Paths(Path(wiring["root"]))
    cid = str(wiring["container_id"])
    user_file = paths.userns / cid
    userns.remove(user_file)  # the shell's: its map went into the idmapped layers already
    _netns.pin(f"/proc/{pid}/ns/user", user_file, loopback_up=False)
    netns = paths.netns / cid
    netns.parent.mkdir(parents=True, exist_ok=True)
    _netns.pin(f"/proc/{pid}/ns/net", netns)
    if wiring["network"] == "bridge":
        network_for(paths, "bridge").connect(cid, netns, ip=wiring["ip"], mac=wiring["mac"], up=False)


def on_setup(wiring: dict[str, Any], then: Callable[[str, int], bool] | None, *,
             lock_lo: bool = False) -> Callable[[str, int], bool]:
    """A CRIU notify handler: ``wire`` at setup-namespaces (then lock its loopback with
    ``lock_lo``: runtime/restore_lock.py), everything else to ``then``."""

    def on_notify(script: str, pid: int) -> bool:
        if script == SETUP_NAMESPACES:
            try:
                wire(wiring, pid)
                if lock_lo:
                    from runtime.config import Paths
                    from runtime.restore_lock import lock

                    lock(str(Paths(Path(wiring["root"])).netns / str(wiring["container_id"])))
            except Exception as exc:  # noqa: BLE001 - a failed answer fails the restore, as it must
                log.error("container=%s: cannot wire the restored namespaces: %s", wiring.get("container_id"), exc)
                return False
            return True
        return then(script, pid) if then is not None else True

    return on_notify
