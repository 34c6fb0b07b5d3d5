"""``start`` and ``restart``: a created or exited container's init started in its container.

``create`` (``Runtime.create``: ``run`` with ``launch=False``) makes everything ``run`` makes but the shim:
the record (status ``created``), the upper layer and overlay with /etc/hostname and /etc/hosts,
the cgroup, the network namespace with its link and address. ``start`` then does what ``run``
does last: publish the ports and launch the shim, whose starter (``init_starter``) plans the
init from the record. An exited container starts the same way, again (docker): same record,
writable layer, cgroup and address; its log grows on. ``restart_count`` counts only a restart
policy's starts (runtime/restart.py), as docker's RestartCount.

What ``start`` does not start:

- a running or paused container: nothing to do, success (docker);
- a checkpointed one (exited, ``state.checkpointed``): its processes are in the checkpoint and its
  mounts, cgroup and network went with it; a fresh start would throw that state away, so it is
  refused with the ``restore`` that resumes it (a migrated-away copy: ``rm``);
- a record a restore is building (``created`` with ``restored_from``, or ``id:<id>`` held): Busy.

Concurrency: the start decides and launches under ``remove:<id>``, as a restart policy's start
does, so ``rm``, an ``auto_remove`` shim and a policy restart each see either the old state or the
new ``running`` one. The starters are ``Starter`` records, so the daemon's launcher starts the
shim (fork is unsafe in the daemon: DEVELOPERS.md).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.container import Container
from runtime.errors import Busy, ContainerNotFound, InvalidState
from runtime.spec import ContainerInfo, ContainerSpec

if TYPE_CHECKING:  # pragma: no cover
    from runtime.runtime import Runtime

log = logging.getLogger(__name__)


def start(rt: Runtime, name: str) -> ContainerInfo:
    """Start container ``name`` (see the module doc); its info once its command was exec'd.

    Raises:
        ContainerNotFound: no such container. InvalidState: a checkpointed one (hint: restore).
        Busy: a restore builds it, or another remover holds it past the timeout.
        ContainerError: the start failed (``exit_code`` 127/126 as for ``run``); it stays as it was.
    """
    cid = rt.container(name).container_id
    with rt.removing(cid):
        _start_held(rt, cid, name)
    return rt.inspect(cid)


def restart(rt: Runtime, name: str, timeout_s: float = 10.0) -> ContainerInfo:
    """Stop a live container (its stop signal, SIGKILL after ``timeout_s``), then start it; a
    created or exited one just starts. ``remove:<id>`` is held throughout, so a ``--rm``
    container's shim does not remove it in between (it finds it running again and keeps it)."""
    c = rt.container(name)
    refuse_checkpointed(c, "restart")  # before stopping anything
    with rt.removing(c.container_id):
        if c.is_live:
            rt.stop(c.container_id, timeout_s=timeout_s)
        _start_held(rt, c.container_id, name)
    return rt.inspect(c.container_id)


def _start_held(rt: Runtime, cid: str, name: str) -> None:
    try:
        c = rt.container(cid)
    except ContainerNotFound:
        raise ContainerNotFound(name) from None  # removed while we waited
    if c.is_live:
        log.info("container=%s is %s already: nothing to start", cid, c.status)
        return
    refuse_checkpointed(c, "start")
    if c.status == "created" and c.state.restored_from is not None:
        raise Busy(f"container {c.name}", "start", hint="a restore builds it; it runs when the restore is done")
    c.require("start")
    with rt.store.hold(f"id:{cid}", "start container"):  # a restore of this id holds it while building
        launch(rt, c.spec)
    log.info("container=%s started (was %s)", cid, c.status)


def refuse_checkpointed(c: Container, operation: str) -> None:
    """A checkpointed container starts only through ``restore`` (see the module doc)."""
    checkpoint = c.state.checkpointed
    if checkpoint is None:
        return
    err = InvalidState(c.name, operation, "exited (checkpointed)", "created, or exited without a checkpoint")
    if checkpoint == "migrated":
        err.hint = "it was migrated and runs on the target host; remove this copy with pymigrate rm"
    else:
        err.hint = (f"its processes are saved in checkpoint {checkpoint}: pymigrate restore {checkpoint} resumes them "
                    "(a fresh start would lose them); or pymigrate rm it and run a new one")
    raise err


def launch(rt: Runtime, spec: ContainerSpec) -> None:
    """Publish ``spec``'s ports and launch its shim with ``init_starter``; what a host reboot took
    from the container (mounts, cgroup, netns) is made again first. A failure unpublishes."""
    from runtime.restart import rebuild
    from runtime.shim import Starter, launch_shim

    cid = spec.container_id
    rebuild(rt, spec)  # each part that exists is kept: a no-op unless the host rebooted
    if spec.ports:
        _check_ports(rt, spec)
    rt.store.update_state(cid, lambda s: dataclasses.replace(s, manually_stopped=False))
    root = str(rt.paths.root)
    parent = rt.cgroup_parent(spec.cgroup_parent)
    try:
        if spec.ports:
            from runtime.port_rules import publish

            publish(rt, spec)
        launch_shim(
            rt.store,
            cid,
            Starter("runtime.start:init_starter", {"root": root, "container_id": cid}),
            oom_killed=Starter("runtime.process:oom_killed", {"cgroup_parent": parent, "container_id": cid}),
            exited=rt.exit_action(spec),
            sys=rt.sys,
        )
    except BaseException:
        if spec.ports:
            from runtime.port_rules import unpublish

            unpublish(rt.paths.root, cid)
        raise


def _check_ports(rt: Runtime, spec: ContainerSpec) -> None:
    """Refuse host ports another live container or a host process took since it was created or
    exited (PortInUse); its own recorded ports are kept as they are."""
    from runtime.port_rules import claim, ports_lock

    with ports_lock(rt.paths):
        claim(rt, spec)


def init_starter(root: str, container_id: str) -> Any:
    """The shim's starter (picklable: the daemon's launcher runs it): the container's init as its
    record plans it, in its mounted root and network namespace; its pid, or with ``-t``/``-i``
    the terminal or stdin the shim serves (runtime/console.py)."""
    from runtime.process import start_container
    from runtime.runtime import Runtime

    rt = Runtime(Path(root))
    spec = rt.store.load_spec(container_id)
    plan = rt.init_plan(spec, rt.store.dir(container_id) / "merged", rt.network(spec.network).netns_path(container_id))
    return start_container(plan, rt.cgroup_parent(spec.cgroup_parent))
