"""Restart policies (``run --restart``), kept by the container's shim, as docker keeps them.

Policies (the spec's ``restart``, normalised by ``parse_policy``):

- ``no`` (default): never restarted.
- ``on-failure[:N]``: restarted when it exits with a non-zero code, at most N times (no N: no cap);
  after the Nth restart it stays exited with its last exit code.
- ``always``: restarted whatever its exit code; again when the daemon starts (``on_daemon_start``),
  even after a ``stop`` (docker: "restarted only when the daemon restarts").
- ``unless-stopped``: as ``always``, but a container the user stopped stays stopped, also across a
  daemon start.

Who restarts: the shim (runtime/shim.py). After it recorded an exit and reaped what was left, it
calls its ``exited`` action, ``after_exit`` here; a positive pid returned is the new init it then
monitors. So the process starts again in the same container: same cgroup, network namespace (and
address), overlay and record; ``restart_count`` in the state counts the restarts.

What never triggers a restart: ``stop`` and ``kill`` record ``manually_stopped`` before they
signal; ``rm -f`` and a migration's source removal hold ``remove:<id>`` (``after_exit`` waits for it
and then finds the record gone); a checkpoint or migration records ``checkpointed`` before it kills
the tree (the record stays for the restore). The policy is in the spec, so a restored or migrated
copy keeps it.

Back-off (docker's restart manager): the first restart waits 100 ms, each next one twice as long,
capped at one minute; a run that lasted 10 s or more resets it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from runtime.errors import ContainerError, ContainerNotFound
from runtime.restart_policy import max_retries
from runtime.spec import ContainerSpec, ContainerState

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 60.0
BACKOFF_RESET_AFTER_S = 10.0  # a run this long resets the delay
CANCEL_POLL_S = 0.2  # how often a back-off sleep looks for a stop or rm
_delay_s: dict[str, float] = {}  # per container, in the shim that keeps it


def should_restart(policy: str, state: ContainerState) -> bool:
    """Whether the shim starts the container again after the exit ``state`` records."""
    if state.status != "exited" or state.checkpointed is not None or state.manually_stopped:
        return False
    name = policy.partition(":")[0]
    if name in ("always", "unless-stopped"):
        return True
    if name == "on-failure":
        cap = max_retries(policy)
        return state.exit_code not in (None, 0) and (cap == 0 or state.restart_count < cap)
    return False


def next_delay(container_id: str, ran_s: float) -> float:
    """Seconds to wait before the next restart (docker's back-off, see the module doc)."""
    previous = _delay_s.get(container_id, 0.0)
    if ran_s >= BACKOFF_RESET_AFTER_S or previous == 0.0:
        delay = BACKOFF_START_S
    else:
        delay = min(previous * 2, BACKOFF_MAX_S)
    _delay_s[container_id] = delay
    return delay


def after_exit(root: str, container_id: str) -> int:
    """The shim's exit action of a container with a policy: wait the back-off, then start its
    process again in the same container if the policy still says so; the new init's pid, else 0
    (then, as without a policy, its published ports' rules go: runtime/port_rules.py).

    Decides and starts under ``remove:<id>`` (``rm`` and a migration's removal hold it), so a
    removal never races the start; the back-off sleep holds nothing.
    """
    from runtime.runtime import Runtime

    rt = Runtime(Path(root))
    pid = _restart(rt, container_id)
    if pid == 0:
        try:
            ports = bool(rt.store.load_spec(container_id).ports)
        except ContainerNotFound:
            ports = False
        if ports:
            from runtime.port_rules import after_exit as unpublish_after_exit

            unpublish_after_exit(root, container_id)
    return pid


def _restart(rt: Any, container_id: str) -> int:
    try:
        c = rt.container(container_id)
    except ContainerNotFound:
        return 0
    if not should_restart(c.spec.restart, c.state):
        return 0
    ran_s = (c.state.finished_at or 0.0) - (c.state.started_at or 0.0)
    delay = next_delay(container_id, ran_s)
    log.info("container=%s exited code=%s: restarting in %.1fs (policy %s)", container_id,
             c.state.exit_code, delay, c.spec.restart)
    if not _sleep_unless_cancelled(rt, container_id, delay):
        return 0
    with rt.removing(container_id):
        try:
            c = rt.container(container_id)
        except ContainerNotFound:
            return 0
        if not should_restart(c.spec.restart, c.state):
            log.info("container=%s: not restarted (stopped=%s checkpointed=%s)", container_id,
                     c.state.manually_stopped, c.state.checkpointed)
            return 0
        pid = start_init(rt, c.spec)
        now = time.time()
        rt.store.update_state(container_id, lambda s: dataclasses.replace(
            s, status="running", pid=pid, started_at=now, finished_at=None, exit_code=None,
            oom_killed=False, restart_count=s.restart_count + 1))
    log.info("container=%s restarted (init pid %d)", container_id, pid)
    from runtime.events import emit_container

    emit_container(rt.paths.root, "start", c.spec, restartCount=c.state.restart_count + 1, policy=c.spec.restart)
    return pid


def _sleep_unless_cancelled(rt: Any, container_id: str, delay_s: float) -> bool:
    """Sleep the back-off (up to a minute), but give up as soon as a stop, rm or checkpoint
    cancelled the restart, so the shim does not linger; True: still to be restarted."""
    deadline = time.monotonic() + delay_s
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, CANCEL_POLL_S))
        try:
            c = rt.container(container_id)
        except ContainerNotFound:
            return False
        if not should_restart(c.spec.restart, c.state):
            return False
    return True


def start_init(rt: Any, spec: ContainerSpec) -> int:
    """Start ``spec``'s init again in its existing container (mounted overlay, cgroup, netns)."""
    from runtime.console import init_pid_of
    from runtime.process import start_container

    plan = rt.init_plan(spec, rt.store.dir(spec.container_id) / "merged", rt.network(spec.network).netns_path(spec.container_id))
    # a bare pid: -t/-i are refused with a restart policy (runtime.container.validate_fields)
    return init_pid_of(start_container(plan, rt.cgroup_parent(spec.cgroup_parent)))


def restart_starter(root: str, container_id: str) -> int:
    """A fresh shim's starter for a container restarted on the daemon's start (``on_daemon_start``)."""
    from runtime.runtime import Runtime

    rt = Runtime(Path(root))
    return start_init(rt, rt.store.load_spec(container_id))


def wants_daemon_start(spec: ContainerSpec, state: ContainerState) -> bool:
    """``always`` (even after a stop, as docker) and ``unless-stopped`` (unless stopped) containers
    that exited by themselves, not by a checkpoint or migration."""
    if state.status != "exited" or state.checkpointed is not None:
        return False
    policy = spec.restart.partition(":")[0]
    return policy == "always" or (policy == "unless-stopped" and not state.manually_stopped)


def adopt_starter(pid: int) -> int:
    """The starter of a shim that adopts a running init whose shim died (``on_daemon_start``): it
    starts nothing. Not the init's parent, the shim polls for its end (runtime.shim._reap_until:
    exit code 255, the real one is lost with the old shim), then applies the policy as ever."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise ContainerError(f"cannot adopt init {pid}: it is gone") from None
    return pid


def adopt(rt: Any, c: Any) -> None:
    """Give a running container whose shim died a new shim keeping its restart policy."""
    from runtime.shim import Starter, launch_shim

    parent = rt.cgroup_parent(c.spec.cgroup_parent)
    launch_shim(
        rt.store,
        c.container_id,
        Starter("runtime.restart:adopt_starter", {"pid": c.state.pid}),
        oom_killed=Starter("runtime.process:oom_killed", {"cgroup_parent": parent, "container_id": c.container_id}),
        exited=rt.exit_action(c.spec),
        sys=rt.sys,
    )
    log.info("container=%s: its shim was gone; a new one keeps restart policy %s", c.container_id, c.spec.restart)


def rebuild(rt: Any, spec: ContainerSpec) -> None:
    """Make again what a host reboot took from an exited container, as ``run`` makes it: the
    upper layer's and the overlay's mounts, the cgroup, the network namespace and its link with
    the recorded address and MAC (the record, the upper layer's files and the lease stayed). Each
    part that exists is kept; what this call made is undone if a later step fails."""
    from runtime import overlay, upperfs
    from runtime.container import limits_of
    from runtime.errors import ContainerExists

    cid = spec.container_id
    cdir = rt.store.dir(cid)
    undo: list[Any] = []
    try:
        upperfs.mount_existing(rt.sys, cdir)
        userns_path = _userns_again(rt, spec, undo)
        merged = cdir / "merged"
        if not overlay.is_mounted(merged):
            lowers = rt.images.get(spec.image_digest).lowers
            overlay.mount(rt.sys, overlay.OverlayDirs.for_container(cdir, lowers, userns_path, spec.userns_base))
            undo.append(lambda: overlay.unmount(rt.sys, merged))
        cg = rt.cgroups(spec.cgroup_parent)
        if not cg.exists(cid):
            cg.create(cid, limits_of(spec))
            undo.append(lambda: cg.destroy(cid))
        net = rt.network(spec.network)
        try:
            netns = net.create_netns(cid, userns_path)  # a plain file left where the reboot dropped its mount is replaced
        except ContainerExists:
            return  # the namespace (and so its link) survived: not a reboot
        undo.append(lambda: net.remove_netns(cid))
        if spec.network == "bridge":
            net.connect(cid, netns, ip=spec.ip, mac=spec.mac)
            undo.append(lambda: net.disconnect(cid))
    except BaseException:
        for step in reversed(undo):
            try:
                step()
            except Exception:  # rollback boundary: keep undoing
                log.warning("container=%s: undoing a rebuild step failed", cid, exc_info=True)
        raise
    log.info("container=%s: mounts, cgroup and network made again (after a reboot)", cid)


def _userns_again(rt: Any, spec: Any, undo: list[Any]) -> Path | None:
    """A --userns container's namespace file (None without one), made again with its recorded
    range after a reboot (which dropped the file's mount and the pool's claims)."""
    if not spec.userns_size:
        return None
    from runtime import _netns, userns

    path: Path = rt.paths.userns / spec.container_id
    if not _netns.is_netns_mount(path):
        rng = userns.Range(spec.userns_base, spec.userns_size)
        userns.reclaim(rt.paths.root, spec.container_id, rng)
        userns.remove(path)
        userns.create(path, rng)
        undo.append(lambda: userns.remove(path))
    return path


def on_daemon_start(rt: Any) -> list[str]:
    """When ``pymigrate daemon`` starts: start again the ``always``/``unless-stopped`` containers of
    this root that are exited (their shim and processes were killed, a crash); give a running
    container with a policy whose shim alone was killed a new shim (``adopt``). Their ids."""
    from runtime.shim import is_shim

    from runtime.ns_modes import start_order

    started = []
    for cid in start_order(rt.store.ids(), rt.specs()):  # a container after those whose namespaces it joins
        try:
            c = rt.container(cid)  # reconciled: a dead shim and init are "exited" now
            if c.spec.restart != "no" and c.status == "running" and not is_shim(c.state.shim_pid):
                adopt(rt, c)
                started.append(cid)
                continue
            if not wants_daemon_start(c.spec, c.state):
                continue
            rebuild(rt, c.spec)
            rt.start_existing(c.container_id)
            started.append(cid)
        except ContainerError as exc:  # one container's failure does not stop the others
            log.warning("container=%s: restart policy %s: cannot start it: %s", cid,
                        _policy_of(rt, cid), exc)
    return started


def _policy_of(rt: Any, cid: str) -> str:
    try:
        return str(rt.store.load_spec(cid).restart)
    except ContainerError:
        return "?"
