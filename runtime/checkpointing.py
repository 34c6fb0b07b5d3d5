"""The runtime's side of checkpoint, restore and migration.

``CheckpointHost`` wraps a ``Runtime`` and gives the migrate core (migrate/checkpoint.py,
restore.py, migration.py) exactly what it needs: where a running container's pieces are for a
dump, freeze/thaw, and building a container whose process tree comes from CRIU instead of a fresh
exec.

Restore builds the same pieces as ``run`` (record, address lease, upper layer, overlay, cgroup with
limits, network namespace with the recorded address and MAC) and then launches the container's
shim with a CRIU starter (runtime/restore_start.py): inside the shim, ``criu swrk`` is spawned,
moved into the new container's cgroup before the request is sent (so the restored tree lands
there, never in the old cgroup; CRIU runs with manage_cgroups_mode=IGNORE), and given the new
network namespace as the inherited fd for the namespace declared external at dump time. With ``rst_sibling`` the restored
init becomes the shim's child. Any failure undoes every piece in reverse order.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from runtime.container import Container
from runtime.errors import ContainerError, ContainerExists, ContainerNotFound, InvalidState, Unsupported
from runtime.fstree import remove_tree_quietly
from runtime.spec import ContainerInfo, ContainerSpec

if TYPE_CHECKING:
    from runtime.config import Paths

log = logging.getLogger(__name__)

UNIFIED = "unified"
FREEZER = "freezer"


@dataclasses.dataclass(frozen=True)
class DumpTarget:
    """What a dump needs to know about one running container."""

    spec: ContainerSpec
    init_pid: int
    upper_dir: Path
    netns_path: Path | None
    freeze_cgroup: str | None  # cgroup dir CRIU should treat as the (already frozen) freezer
    # the file system image holding upper_dir (runtime/upperfs.py); None: a plain directory
    upper_image: Path | None = None


@dataclasses.dataclass(frozen=True)
class NetworkCut:
    """How a frozen container's network is locked for its dump (``CheckpointHost.isolate``)."""

    criu_lock: str  # the DumpRequest.network_lock to use: "skip" when we cut the link ourselves
    veth: str | None  # the host-side veth set down (to set up again on rollback)


class CheckpointHost:
    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.paths: Paths = rt.paths
        self.store = rt.store
        self._cpu_digest: str | None = None
        # whether a migration peer's container may bring volumes (host paths) here: the target's
        # operator decides (pymigrate daemon --allow-peer-volumes); see docs/security.md
        self.allow_peer_volumes = False

    @property
    def images(self) -> Any:
        return self.rt.images

    @property
    def volumes(self) -> Any:
        """The named volumes of this root (runtime/volumes.py)."""
        return self.rt.volumes

    # -- the source side --------------------------------------------------------------------------
    def get(self, name: str) -> Container:
        return self.rt.container(name)  # type: ignore[no-any-return]

    def _cg(self, spec: ContainerSpec) -> Any:
        return self.rt.cgroups(spec.cgroup_parent)

    def dump_target(self, c: Container) -> DumpTarget:
        """What CRIU dumps for ``c``; refuses (Unsupported) a container CRIU cannot dump before
        anything is frozen."""
        cid = c.container_id
        self._check_init_root(c)
        _check_stdin(c)
        _check_host_network(c)
        self._check_shared_namespaces(c)
        dirs = self._cg(c.spec).info(cid).dirs
        freeze_dir = dirs.get(UNIFIED) or dirs.get(FREEZER)
        netns = self.paths.netns / cid
        from runtime.upperfs import Layout

        layout = Layout.of(self.store.dir(cid))
        return DumpTarget(
            spec=c.spec,
            init_pid=c.state.pid,
            upper_dir=layout.upper,
            upper_image=layout.image,
            netns_path=netns if netns.exists() else None,
            freeze_cgroup=str(freeze_dir) if freeze_dir else None,
        )

    def _check_shared_namespaces(self, c: Container) -> None:
        """A container sharing a namespace with the host or another container, or one whose
        namespaces others join, is refused before anything is frozen (runtime/ns_modes.py)."""
        from runtime import ns_modes

        specs = self.rt.specs()
        names = {s.container_id: s.name for s in specs}
        ns_modes.refuse_checkpoint(c.spec, ns_modes.dependents(specs, c.container_id), names)

    def _check_init_root(self, c: Container) -> None:
        """CRIU reads the mount namespace through its root task and requires that task's root to
        be the namespace's root (criu/mount.c: "The root task has another root than mntns"; its
        mountinfo is empty otherwise). A container whose init chrooted itself (HAProxy run as a
        single process with ``chroot`` in its config) would fail deep in the dump with "Can't parse
        mountinfo": say so first, with what to do instead."""
        pid = c.state.pid
        if not pid:
            return
        merged = self.store.dir(c.container_id) / "merged"
        try:
            same = os.path.samestat(os.stat(f"/proc/{pid}/root"), os.stat(merged))
        except OSError:  # the init is gone or the overlay is not mounted: CRIU will say what it finds
            return
        if not same:
            root = os.readlink(f"/proc/{pid}/root")
            inside = root[len(str(merged)):] if root.startswith(str(merged)) else root
            raise Unsupported(
                f"checkpoint of container {c.spec.name}",
                f"its init process (pid {pid}) has changed its root to {inside or '/'} (chroot); "
                "criu can only dump a container whose init keeps the container's root",
                hint="run the server so that its first process stays at / (e.g. haproxy -W, master-worker mode, "
                "or any init process that starts the server as its child)",
            )

    def host_veth(self, spec: ContainerSpec) -> str | None:
        """The host-side veth of a bridge-networked container (None for --network none)."""
        if spec.network != "bridge":
            return None
        from runtime.network import host_veth_name

        return host_veth_name(self.paths.root, spec.container_id)

    def freeze(self, c: Container, *, operation: str | None = None, partial: tuple[Path, ...] = ()) -> None:
        """Freeze ``c`` for a dump, so that CRIU can seize every task (runtime.freezer.freeze_seizable):
        a task caught in uninterruptible sleep (a vfork parent) gets a moment to leave it.

        With ``operation``, who freezes it and the ``partial`` files it writes are recorded first
        (runtime/freeze_record.py): if this process dies with the container frozen, the next
        command thaws it and removes them. A migration's freeze is not recorded here: its
        outgoing record decides whether the copy here may run again (migrate/migration/recovery.py)."""
        from runtime.freezer import freeze_seizable

        cg, cid = self._cg(c.spec), c.container_id
        if operation is not None:
            from runtime.freeze_record import new_record

            record = new_record(operation, was_paused=c.status == "paused", partial=partial)
            # fsynced although only this process dying needs it (the page cache outlives a process):
            # without it CRIU's dump right after took ~40 ms longer (median of 12 interleaved runs:
            # 152 vs 112 ms in CRIU's own log; likely its journal commit flushing what was pending first)
            self.store.update_state(cid, lambda s: dataclasses.replace(s, frozen_by=record))
        if c.status == "paused":  # the user froze it: it must not run, not even for a moment
            cg.freeze(cid)
            return
        freeze_seizable(lambda: cg.freeze(cid), lambda: cg.thaw(cid), lambda: cg.pids(cid))

    def thaw(self, c: Container) -> None:
        self._cg(c.spec).thaw(c.container_id)
        if self.store.load_state(c.container_id).frozen_by is not None:
            self.store.update_state(c.container_id, lambda s: dataclasses.replace(s, frozen_by=None))

    @staticmethod
    def network_lock() -> str:
        # CRIU's default iptables lock needs iptables-restore (not installed here); CRIU 4 links
        # libnftables, which setup.sh builds in, so nftables is the lock we use when CRIU locks.
        return "nftables"

    def isolate(self, spec: ContainerSpec) -> NetworkCut:
        """Lock a *frozen* container's network ourselves, for its dump: set its host-side veth
        down, so no packet reaches its network namespace or leaves it (its tasks are frozen, and
        its only link is that veth; loopback is silent while everything is frozen and TCP sockets
        are in repair mode). CRIU then dumps with network lock ``skip``: its nftables lock costs
        ~2 ms to take and ~25 ms to drop (a nftables commit waits for an RCU grace period),
        all inside the pause. ``rejoin`` undoes it (rollback); a migrated source copy just goes.

        Where nothing can be cut (a veth that is missing), CRIU's own lock is used instead."""
        from runtime.network import set_link_up

        if spec.network == "none":  # only loopback: nothing to lock
            return NetworkCut(criu_lock="skip", veth=None)
        veth = self.host_veth(spec)
        if veth is not None:
            try:
                if set_link_up(veth, False):
                    return NetworkCut(criu_lock="skip", veth=veth)
            except OSError as exc:
                log.warning("container=%s: cannot set %s down (%s): criu locks the network instead", spec.name, veth, exc)
        return NetworkCut(criu_lock=self.network_lock(), veth=None)

    @staticmethod
    def rejoin(cut: NetworkCut | None) -> None:
        """Undo ``isolate`` (the container stays here after all). Raises OSError from rtnetlink."""
        from runtime.network import set_link_up

        if cut is not None and cut.veth is not None:
            set_link_up(cut.veth, True)

    def cpu_digest(self) -> str:
        if self._cpu_digest is None:
            from runtime.host import read_cpu

            self._cpu_digest = read_cpu()[1] or ""
        return self._cpu_digest

    def stop_checkpointed(self, c: Container, checkpoint_id: str, timeout_s: float = 10.0, *, detach: bool = False,
                          before_teardown: Callable[[], None] | None = None) -> None:
        """After its checkpoint is committed: record it, kill the (still frozen) tree, wait for the
        shim's exit record and let go of what it ran in. SIGKILL reaches frozen tasks; thawing
        after makes sure v1 freezers let them die too.

        ``detach``: return once the tree is gone and recorded, the rest in a detached process
        (``_stop_detached``); ``before_teardown`` runs first there (a test's failpoint)."""
        if detach and self._stop_detached(c, checkpoint_id, timeout_s, before_teardown):
            return
        cid = c.container_id
        # Its checkpoint holds everything now: let go of mounts, netns, veth, cgroup and address,
        # so the record alone stays (a restore rebuilds the rest, here or on another host). The
        # veth goes in a thread from the start (its removal waits ~20 ms for the network's RCU
        # grace period, idle time): beside the record, the kill and the shim's exit record. Its
        # link is down since the freeze (isolate), so the tree tells its peers nothing either way.
        # The mounts go after the exit record: the shim's log indexer takes its last look at the
        # root before it (runtime/shim.py), and release's own disconnect then finds nothing to do.
        unlink = self._disconnect_beside(c.spec)
        try:
            # no fsync of our own: the shim's exit record (written as ours, fsynced before its
            # rename) carries ``checkpointed`` to the disk; without one, sync_state below
            self.store.update_state(cid, lambda s: dataclasses.replace(s, checkpointed=checkpoint_id, frozen_by=None), sync=False)
            self._kill_thawed(self._cg(c.spec), cid)
            if not self._wait_exited(cid, timeout_s):
                self.store.sync_state(cid)
        finally:
            if unlink is not None:
                unlink.join()
        self.rt.release(c.spec)

    def _stop_detached(self, c: Container, checkpoint_id: str, timeout_s: float,
                       before_teardown: Callable[[], None] | None) -> bool:
        """The command's answer without the teardown (25-35 ms: the shim's exit record, the veth's
        RCU wait, then the mounts, netns and cgroup): the tree killed (its cgroups empty: its
        processes are gone) and recorded ``exited`` with its checkpoint,
        fsynced (the shim's record, later, keeps both); the rest in a detached process holding the
        container's teardown lock, which a restore over it and ``rm`` wait for (runtime/teardown.py).
        False: this process runs other threads (a daemon), so nothing was done: stop it inline."""
        from runtime import teardown

        if threading.active_count() != 1:
            return False
        cid = c.container_id
        # recorded before the kill, as the inline stop does: a --rm container's shim, seeing the
        # exit, removes the container unless it finds the checkpoint in the record
        self.store.update_state(cid, lambda s: dataclasses.replace(s, checkpointed=checkpoint_id), sync=False)
        cg = self._cg(c.spec)
        self._kill_thawed(cg, cid)
        self._wait_empty(cg, c, timeout_s)
        now = time.time()
        state = self.store.update_state(cid, lambda s: dataclasses.replace(
            s, status="exited", exit_code=128 + 9, finished_at=now, checkpointed=checkpoint_id, frozen_by=None))

        def rest() -> None:
            if before_teardown is not None:
                before_teardown()
            self._teardown(c, state.shim_pid, timeout_s)

        if not teardown.detach(self.rt.paths, cid, rest):
            self._teardown(c, state.shim_pid, timeout_s)
        return True

    @staticmethod
    def _kill_thawed(cg: Any, cid: str) -> None:
        """SIGKILL to the (frozen) tree, then a thaw: a v1 freezer lets the killed tasks die only thawed."""
        cg.kill(cid)
        try:
            cg.thaw(cid)
        except ContainerError:
            pass

    @staticmethod
    def _wait_empty(cg: Any, c: Container, timeout_s: float) -> None:
        """Until the container's cgroups hold no process (cgroup.kill only signals them: an exit
        of 64 MiB took 2-5 ms here); a task leaves them after its memory is gone (at most a
        zombie its shim reaps)."""
        deadline = time.monotonic() + timeout_s
        while cg.pids(c.container_id):
            if time.monotonic() >= deadline:
                log.warning("container=%s: processes left %gs after SIGKILL", c.container_id, timeout_s)
                return
            time.sleep(0.001)

    def _teardown(self, c: Container, shim_pid: int, timeout_s: float) -> None:
        """After ``_stop_detached``: the veth in a thread beside the shim's exit (its exit record
        written, its log indexer's last look at the root taken), then the rest."""
        from runtime.shim import is_shim

        unlink = self._disconnect_beside(c.spec)
        try:
            deadline = time.monotonic() + timeout_s
            while shim_pid and is_shim(shim_pid):
                if time.monotonic() >= deadline:
                    log.warning("container=%s: its shim %d still runs after %gs", c.container_id, shim_pid, timeout_s)
                    break
                time.sleep(0.002)
        finally:
            if unlink is not None:
                unlink.join()
        self.rt.release(c.spec)

    def _disconnect_beside(self, spec: ContainerSpec) -> threading.Thread | None:
        """A bridge container's veth removed (and its lease released) in a thread; None otherwise.
        A failure is only logged: release's disconnect tries again and reports what still fails."""
        if spec.network != "bridge":
            return None
        net = self.rt.network(spec.network)

        def disconnect() -> None:
            try:
                net.disconnect(spec.container_id)
            except ContainerError as exc:
                log.debug("container=%s: disconnect beside its stop: %s", spec.container_id, exc)

        thread = threading.Thread(target=disconnect, name="veth-release", daemon=True)
        thread.start()
        return thread

    def _wait_exited(self, container_id: str, timeout_s: float) -> bool:
        """Whether the exit was recorded within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        rounds = 0
        while time.monotonic() < deadline:
            # the record every 2 ms (the shim writes it); reconciled with the processes every 20
            # ms (a shim that died without writing it): that check costs a few ms of a 2-core CPU
            # the shim needs now
            state = self.rt.container(container_id) if rounds % 10 == 9 else self.store.load_state(container_id)
            if state.status == "exited":
                return True
            rounds += 1
            time.sleep(0.002)
        log.warning("container=%s: no exit recorded within %gs", container_id, timeout_s)
        return False

    def finish_migration(self, c: Container, *, keep: bool) -> None:
        """After the target runs the container: kill the frozen source copy; remove it unless ``keep``."""
        if keep:
            self.stop_checkpointed(c, "migrated")  # an exited record stays, its resources go
        else:
            self.rt.remove(c.container_id, force=True)  # kill, release and delete in one pass
            self._remove_moved_volumes(c.spec)

    def _remove_moved_volumes(self, spec: ContainerSpec) -> None:
        """The target has the container's named volumes now: they go here too (exactly one live
        copy), unless another container of this host still uses one."""
        for name in dict.fromkeys(v.name for v in spec.volumes if v.name):
            try:
                self.rt.volumes.remove(name, force=True)
            except (ContainerError, OSError) as exc:
                log.warning("volume=%s stays on this host after its container moved: %s", name, exc)

    # -- the target side --------------------------------------------------------------------------
    @staticmethod
    def new_container_id() -> str:
        from runtime.state import new_container_id

        return new_container_id()

    def replaceable_id(self, spec: ContainerSpec) -> str | None:
        """The exited original of a checkpoint (same container id), which a restore replaces;
        once its teardown, if one still runs after its checkpoint answered, is done."""
        from runtime import teardown

        teardown.wait(self.rt.paths, spec.container_id)
        try:
            c: Container = self.rt.container(spec.container_id)
        except ContainerNotFound:
            return None
        if c.status != "exited":
            raise InvalidState(c.name, "restore over", c.status, "exited")
        return c.container_id

    def claim_ports(self, spec: ContainerSpec, *, replace_id: str | None = None) -> tuple[Any, ...]:
        """``spec.ports`` with free host ports chosen; PortInUse for a taken one (another live
        container's here, or a host process's). ``replace_id``'s ports do not count."""
        from runtime.port_rules import claim, ports_lock

        with ports_lock(self.rt.paths):
            return claim(self.rt, spec, exclude=[replace_id] if replace_id else ())

    def check_name_free(self, name: str, *, replace_id: str | None = None) -> None:
        """ContainerExists if another container has ``name``. First of a restore's checks: a
        checkpoint's teardown still running is waited for here, so the address, ports and name
        its container held are free again when the checks look (runtime/teardown.py)."""
        from runtime import teardown

        teardown.wait_all(self.rt.paths)
        try:
            cid = self.store.resolve(name)
        except ContainerError:
            return
        if cid == replace_id:
            return
        if self.store.load_spec(cid).name == name:
            raise ContainerExists(
                f"container name {name} is already in use by {cid[:12]}", hint="restore with --name NEW"
            )

    def ip_free(self, ip: str, *, replace_id: str | None = None, owner: str | None = None) -> bool:
        """Whether ``ip`` is unleased, or leased only to ``replace_id`` or ``owner`` (a reservation
        made for this very container by an incoming migration)."""
        holders = {cid for cid, leased in self.rt.network("bridge").leases().items() if leased == ip}
        return not (holders - {replace_id, owner})

    def _build_shell(self, spec: ContainerSpec, restored_from: str | None, undo: list[tuple[str, Callable[[], None]]]) -> tuple[ContainerSpec, Path]:
        """The parts of a restored container that do not depend on its images: the address lease,
        the record ("created"), the cgroup, the network namespace and its link. Appends to
        ``undo``; returns the spec (address and MAC as leased) and the netns path."""
        from runtime.container import limits_of
        from runtime.spec import ContainerState

        rt = self.rt
        cid = spec.container_id
        net = rt.network(spec.network)
        if spec.network == "bridge":
            leased = net.lease(cid, spec.ip)
            undo.append(("release address", lambda: net.release(cid)))
            if leased != spec.ip or not spec.mac:  # a new address (or restore --ignore-static-mac): a new MAC
                from runtime.network import random_mac

                spec = dataclasses.replace(spec, ip=leased, mac=random_mac())
        spec = self._userns_shell(spec, undo)
        rt.store.create(spec, ContainerState(status="created", restored_from=restored_from))
        undo.append(("remove record", lambda: rt._delete_record(cid)))
        cg = rt.cgroups(spec.cgroup_parent)
        cg.create(cid, limits_of(spec))
        undo.append(("destroy cgroup", lambda: cg.destroy(cid)))
        if spec.userns_size:  # CRIU makes it in the user namespace it restores (runtime/userns_restore.py)
            undo.append(("remove netns", lambda: net.remove_netns(cid)))
            if spec.network == "bridge":
                undo.append(("disconnect", lambda: net.disconnect(cid)))
            netns = net.netns_path(cid)
        else:
            netns = self._new_netns(spec, undo)
        if spec.ports:  # published by join_network; whatever failed after that removes them again
            from runtime.port_rules import unpublisher

            undo.append(("unpublish ports", unpublisher(rt.paths.root, cid)))
        return spec, netns

    def _new_netns(self, spec: ContainerSpec, undo: list[tuple[str, Callable[[], None]]]) -> Path:
        """The restored container's network namespace, with its link down (``join_network``)."""
        cid = spec.container_id
        net = self.rt.network(spec.network)
        netns: Path = net.create_netns(cid)
        undo.append(("remove netns", lambda: net.remove_netns(cid)))
        if spec.network == "bridge":
            # The host end stays down until CRIU has restored the sockets (``join_network``).
            net.connect(cid, netns, ip=spec.ip, mac=spec.mac, up=False)
            undo.append(("disconnect", lambda: net.disconnect(cid)))
        return netns

    def _userns_shell(self, spec: ContainerSpec, undo: list[tuple[str, Callable[[], None]]]) -> ContainerSpec:
        """--userns: a range of this host's pool (the dump's when it is free here), and the
        namespace pinned with it for the idmapped image layers; the spec with its range."""
        if not spec.userns_size:
            return spec
        from runtime import userns

        rt, cid = self.rt, spec.container_id
        rng = userns.allocate(rt.paths.root, cid, spec.userns_size, prefer=spec.userns_base)
        undo.append(("release id range", lambda: userns.release(rt.paths.root, cid)))
        spec = dataclasses.replace(spec, userns_base=rng.base)
        rt.make_userns(spec, undo)
        return spec

    def userns_wiring(self, spec: ContainerSpec) -> dict[str, Any] | None:
        """What a --userns container's restore shim needs to wire it (runtime/userns_restore.py)."""
        if not spec.userns_size:
            return None
        return {"root": str(self.rt.paths.root), "container_id": spec.container_id, "network": spec.network,
                "ip": spec.ip, "mac": spec.mac, "base": spec.userns_base, "size": spec.userns_size}

    def mount_root(self, spec: ContainerSpec, lowers: tuple[Path, ...], dumped: Any,
                   undo: list[tuple[str, Callable[[], None]]]) -> Path:
        """The restored container's overlay on its installed upper layer (its ids moved from the
        dump's range ``dumped`` to its own first, for a --userns container); merged/."""
        from runtime import overlay, upperfs

        rt, cid = self.rt, spec.container_id
        cdir = rt.store.dir(cid)
        userns_path = None
        if spec.userns_size:
            from runtime.userns import Range, shift_tree

            userns_path = rt.paths.userns / cid
            moved = shift_tree(upperfs.Layout.of(cdir).upper, dumped, Range(spec.userns_base, spec.userns_size))
            if moved:
                log.info("container=%s: %d upper-layer entries moved to ids from %d", cid, moved, spec.userns_base)
        dirs = overlay.OverlayDirs.for_container(cdir, lowers, userns_path, spec.userns_base)
        overlay.mount(rt.sys, dirs)
        undo.append(("unmount overlay", lambda: overlay.unmount(rt.sys, dirs.merged)))
        return dirs.merged

    def join_network(self, spec: ContainerSpec, netns: Path) -> None:
        """After CRIU restored the tree: set the host end of its veth up, then announce its address.

        Until now the link was down, so a peer's retransmission (every ~10-200 ms from a client
        holding a connection) could not reach the namespace while its TCP sockets did not exist
        yet: the kernel would have answered with a RST and broken the connection CRIU was about to
        restore. Raises OSError if the link cannot be set up (the container would be unreachable).
        """
        from runtime.network import set_link_up

        if spec.network != "bridge":
            return
        veth = self.host_veth(spec)
        if veth is not None:
            set_link_up(veth, True)
        if spec.ports:  # with the link up, so the first forwarded packet finds the container
            from runtime.port_rules import publish

            publish(self.rt, spec)
        try:
            self.rt.network(spec.network).announce(spec.container_id, netns)
        except ContainerError as exc:  # the container runs; neighbours learn it on first traffic
            log.warning("container=%s: gratuitous ARP failed: %s", spec.container_id, exc)

    def begin_restore(self, spec: ContainerSpec, *, netns_key: str, criu: Any, restored_from: str | None,
                      timeout_s: float = 300.0) -> RestoreShell | None:
        """Start building a restored container before its images are here (``RestoreShell``); None
        where that cannot be done safely (shims not launched through the fork server: launching one
        from a second thread would fork a multi-threaded process), and the caller restores with
        ``restore_from`` once the images are here."""
        from runtime import shim

        if not shim.uses_launcher():
            return None
        return RestoreShell(self, spec, netns_key=netns_key, criu=criu, restored_from=restored_from, timeout_s=timeout_s)

    def restore_from(
        self,
        spec: ContainerSpec,
        *,
        upper_src: Path,
        replace_id: str | None,
        request_for: Callable[[Path], Any],
        netns_key: str,
        criu: Any,
        restored_from: str | None,
    ) -> ContainerInfo:
        """Build a container from ``spec`` whose process tree CRIU restores (see module doc)."""
        from runtime.shim import Starter, launch_shim

        rt = self.rt
        img = rt.images.get(spec.image_digest)
        cid = spec.container_id
        undo: list[tuple[str, Callable[[], None]]] = []
        rt.network(spec.network)  # refuses an unknown network mode before anything is built
        set_aside: Path | None = None
        if replace_id is not None:
            # The exited original gives way, but is kept aside until the restore succeeded: a
            # failed attempt puts its record back (its stale mounts, netns and cgroup are gone).
            old = rt.container(replace_id)
            rt.release(old.spec)
            from runtime import upperfs

            upperfs.unmount(rt.sys, rt.store.dir(replace_id) / upperfs.MOUNT_DIR)  # never move or remove it mounted
            rt.paths.tmp.mkdir(parents=True, exist_ok=True)
            set_aside = rt.paths.tmp / f"replaced-{replace_id}-{os.getpid()}"
            os.rename(rt.store.dir(replace_id), set_aside)

            def put_back() -> None:
                os.rename(set_aside, rt.store.dir(replace_id))
                upperfs.mount_existing(rt.sys, rt.store.dir(replace_id))

            undo.append(("put the original back", put_back))
        dumped = dumped_range(spec)
        try:
            spec, netns = self._build_shell(spec, restored_from, undo)
            cdir = rt.store.dir(cid)
            install_upper(rt.sys, upper_src, cdir, undo)
            merged = self.mount_root(spec, img.lowers, dumped, undo)

            parent = rt.cgroup_parent(spec.cgroup_parent)
            starter = Starter(
                "runtime.restore_start:start_restore",
                {
                    "request": request_for(merged),
                    "netns": str(netns),
                    "netns_key": netns_key,
                    "cgroup_parent": parent,
                    "container_id": cid,
                    "criu": criu,
                    "veth": self.host_veth(spec),
                    "read_only": spec.read_only,
                    "tty": spec.tty,
                    "interactive": spec.interactive,
                    "userns": self.userns_wiring(spec),
                },
            )
            oom = Starter("runtime.process:oom_killed", {"cgroup_parent": parent, "container_id": cid})
            launch_shim(rt.store, cid, starter, oom_killed=oom, exited=rt.exit_action(spec), sys=rt.sys)
            self.join_network(spec, netns)
        except BaseException:
            # A restore that failed or timed out may have left tasks CRIU restored (partly) in the
            # cgroup; they hold the overlay and the upper layer, so they go before the unmounts.
            with rt.removing(cid):  # an auto_remove shim waits, then finds the record gone
                self._end_tree(spec)
                rt._undo(cid, undo)
            raise
        if set_aside is not None:
            remove_tree_quietly(set_aside)
        log.info("container=%s name=%s restored from=%s", cid, spec.name, restored_from)
        return rt.inspect(cid)  # type: ignore[no-any-return]


    def _end_tree(self, spec: ContainerSpec, timeout_s: float = 5.0) -> None:
        """SIGKILL whatever runs in the container's cgroup and wait (bounded) until it is empty.
        Rollback path: failures are logged, never raised."""
        cg, cid = self._cg(spec), spec.container_id
        try:
            cg.kill(cid)
            deadline = time.monotonic() + timeout_s
            while cg.pids(cid) and time.monotonic() < deadline:
                time.sleep(0.01)
        except Exception as exc:  # noqa: BLE001 - rollback: keep undoing
            log.debug("container=%s: ending the restored tree: %s", cid, exc)


def _mark(container_id: str, what: str) -> None:
    """A debug line with the monotonic clock in ms (a migration's timeline: migrate/migration/postcopy.mark)."""
    log.debug("container=%s restore at_ms=%.1f %s", container_id[:12], time.monotonic() * 1000, what)


class RestoreShell:
    """A restored container built while its images are still on their way (a migration's pause).

    At construction: the address lease, the record ("created"), the cgroup, the network namespace
    and its link (``CheckpointHost._build_shell``), and the shim, launched in a thread: its starter
    (``runtime.restore_start.start_restore_on_go``) spawns CRIU, moves it into the container's
    cgroup (the first cgroup.procs write waits for an RCU grace period, 6-15 ms here) and waits on
    a FIFO in the container's dir. ``finish`` adds the upper layer and the overlay, writes the restore request
    into the FIFO and returns once the container runs; ``abort`` (or any failure) cancels the
    request (EOF on the FIFO; the swrk exits) and undoes everything."""

    GO = "restore.go"

    def __init__(self, host: CheckpointHost, spec: ContainerSpec, *, netns_key: str, criu: Any,
                 restored_from: str | None, timeout_s: float) -> None:
        import threading

        from runtime.shim import Starter, launch_shim

        self.host = host
        rt = host.rt
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._done = False
        self.restored_from = restored_from
        cid = spec.container_id
        self.dumped_range = dumped_range(spec)
        try:
            self.spec, netns = host._build_shell(spec, restored_from, self._undo)
            self.go = rt.store.dir(cid) / self.GO
            os.mkfifo(self.go, 0o600)
            self.netns = netns
            parent = rt.cgroup_parent(spec.cgroup_parent)
            starter = Starter(
                "runtime.restore_start:start_restore_on_go",
                {"go_path": str(self.go), "netns": str(netns), "netns_key": netns_key, "cgroup_parent": parent,
                 "container_id": cid, "criu": criu, "timeout_s": timeout_s, "veth": host.host_veth(spec),
                 "read_only": spec.read_only, "tty": spec.tty, "interactive": spec.interactive,
                 "userns": host.userns_wiring(self.spec)},
            )
            oom = Starter("runtime.process:oom_killed", {"cgroup_parent": parent, "container_id": cid})
        except BaseException:
            rt._undo(cid, self._undo)
            raise
        self._error: BaseException | None = None
        self._mounting: threading.Thread | None = None  # mount_ahead's
        self._merged: Path | None = None
        self._mount_error: BaseException | None = None

        def launch() -> None:
            try:
                launch_shim(rt.store, cid, starter, oom_killed=oom, exited=rt.exit_action(spec), sys=rt.sys)
            except BaseException as exc:  # handed to finish/abort
                self._error = exc

        self._thread = threading.Thread(target=launch, name=f"restore-shim-{cid[:12]}", daemon=True)
        self._thread.start()

    def finish(self, upper_src: Path, request_for: Callable[[Path], Any], *, restored_from: str | None = None,
               attached: Any = None) -> ContainerInfo:
        """Upper layer, overlay, the request to the waiting CRIU; the container once it runs.
        ``restored_from``: the checkpoint id to record (known only once the archive is here).
        ``attached``: the upper image's loop device bound ahead (runtime.upperfs.attach_ahead)."""
        import pickle


        rt = self.host.rt
        cid = self.spec.container_id
        try:
            merged = self._mounted(upper_src, attached)
            if restored_from is not None:
                self._record_restored_from(restored_from)
            self._send(pickle.dumps(request_for(merged)))
            _mark(cid, "request sent to the waiting criu")
            self._thread.join()
            _mark(cid, "shim started (criu restore done)")
            if self._error is not None:
                raise self._error
            self.host.join_network(self.spec, self.netns)
            _mark(cid, "network joined")
        except BaseException:
            self.abort()
            raise
        self._done = True
        self.go.unlink(missing_ok=True)
        log.info("container=%s name=%s restored from=%s (shell built ahead)", cid, self.spec.name, self.restored_from)
        return rt.inspect(cid)  # type: ignore[no-any-return]

    def mount_ahead(self, upper_src: Path, *, attached: Any = None) -> None:
        """Mount the root (upper layer, overlay) in a thread while the caller checks the images
        (spec, seccomp filters, pre-flight, its record: 2-7 ms of a post-copy pause); mostly
        syscalls, so the two overlap. ``finish`` and ``abort`` wait for it first."""
        import threading

        def mount() -> None:
            try:
                self._merged = self._mount(upper_src, attached)
            except BaseException as exc:  # handed to finish (abort undoes what it did)
                self._mount_error = exc

        self._mounting = threading.Thread(target=mount, name=f"restore-root-{self.spec.container_id[:12]}", daemon=True)
        self._mounting.start()

    def _mounted(self, upper_src: Path, attached: Any) -> Path:
        """merged/: mounted ahead (waited for here), or now."""
        if self._mounting is None:
            return self._mount(upper_src, attached)
        self._mounting.join()
        if self._mount_error is not None:
            raise self._mount_error
        assert self._merged is not None
        return self._merged

    def _mount(self, upper_src: Path, attached: Any) -> Path:
        rt, cid = self.host.rt, self.spec.container_id
        img = rt.images.get(self.spec.image_digest)
        install_upper(rt.sys, upper_src, rt.store.dir(cid), self._undo, attached=attached)
        _mark(cid, "upper layer mounted")
        merged = self.host.mount_root(self.spec, img.lowers, self.dumped_range, self._undo)
        _mark(cid, "root mounted")
        return merged

    def _record_restored_from(self, restored_from: str) -> None:
        """Record the checkpoint id before the request goes: written without an fsync of its own
        (4-13 ms of the pause when it came after the restore), as the shim's "running" record,
        written over it after the restore and fsynced right after its report, carries it to the
        disk; a failed restore removes the record anyway."""
        self.restored_from = restored_from
        try:
            self.host.rt.store.update_state(self.spec.container_id, lambda st: dataclasses.replace(st, restored_from=restored_from),
                                            sync=False)
        except ContainerError as exc:  # informative only
            log.warning("container=%s: cannot record restored_from: %s", self.spec.container_id, exc)

    def _send(self, payload: bytes, timeout_s: float = 30.0) -> None:
        """Write the request once the shim's starter has opened the FIFO (or failed)."""
        import errno

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fd = os.open(self.go, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
            if not self._thread.is_alive():  # the shim failed before it waited
                if self._error is not None:
                    raise self._error
                raise ContainerError(f"restore of container {self.spec.container_id[:12]}: the shim ended before its request")
            if time.monotonic() > deadline:
                raise ContainerError(f"restore of container {self.spec.container_id[:12]}: the shim did not wait for its request within {timeout_s:g}s")
            time.sleep(0.0005)
        try:
            os.set_blocking(fd, True)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def _cancel_go(self) -> None:
        """EOF without a request on the FIFO, whether the starter has opened it yet or not: the
        starter cancels its CRIU at once. A write-only open fails (ENXIO) while no reader is there,
        and a reader opened later would wait its whole ``timeout_s`` (300 s) for a writer: every
        refused migration push took 30 s (the join below). So: open it read-write (never waits,
        fifo(7)), unlink it (a starter not at its open yet fails there: cancelled), close (a reader
        that opened it sees its last writer go: POLLHUP)."""
        try:
            fd = os.open(self.go, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            fd = -1
        self.go.unlink(missing_ok=True)
        if fd >= 0:
            os.close(fd)

    def abort(self) -> None:
        """Cancel and undo everything (idempotent; never raises)."""
        if self._done:
            return
        self._done = True
        if self._mounting is not None:  # its undo entries are in before the undo runs
            self._mounting.join()
        cid = self.spec.container_id
        rt = self.host.rt
        if self._thread.is_alive():
            self._cancel_go()
            try:  # a starter that never reached the FIFO: its CRIU is in the cgroup
                rt.cgroups(self.spec.cgroup_parent).kill(cid)
            except Exception as exc:  # noqa: BLE001 - rollback: keep undoing
                log.debug("container=%s: killing the cgroup during abort: %s", cid, exc)
            self._thread.join(30)
            if self._thread.is_alive():
                log.warning("container=%s: the restore shim did not end within 30s", cid)
        with rt.removing(cid):  # an auto_remove shim waits, then finds the record gone
            try:  # a restore that got through before the abort: its tree goes too
                rt.cgroups(self.spec.cgroup_parent).kill(cid)
            except Exception as exc:  # noqa: BLE001
                log.debug("container=%s: killing the cgroup during abort: %s", cid, exc)
            rt._undo(cid, self._undo)


def _check_stdin(c: Container) -> None:
    """``run -i`` without ``-t``: the init's stdin is a pipe whose other end is the shim's, a
    resource outside the dumped tree that the restored shim could not give back (a ``-t``
    container's terminal can: CRIU makes its master anew, runtime/console.py). Refused before
    anything is frozen."""
    if c.spec.interactive and not c.spec.tty:
        raise Unsupported(
            f"checkpoint of container {c.spec.name}",
            "its stdin is a pipe held by its shim (run -i without -t), which criu cannot take along",
            hint="run it with -it (a terminal can be checkpointed), or without -i",
        )


def dumped_range(spec: ContainerSpec) -> Any:
    """The id range a --userns container's files and images were dumped with (None without one)."""
    if not spec.userns_size:
        return None
    from runtime.userns import Range

    return Range(spec.userns_base, spec.userns_size)


def _check_host_network(c: Container) -> None:
    """``run --network host``: the container has no network namespace of its own. CRIU would dump
    the host's (every interface, address, route and firewall rule of this machine) and a restore
    would make that anew or clash with the host's: refused before anything is frozen."""
    if c.spec.network == "host":
        raise Unsupported(
            f"checkpoint of container {c.spec.name}",
            "it uses the host's network namespace (--network host), which criu would dump and restore "
            "as the container's own: the host's interfaces, addresses and routes",
            hint="run it with --network bridge (or none) to checkpoint or migrate it",
        )


def install_upper(sys: Any, upper_src: Path, cdir: Path, undo: list[tuple[str, Callable[[], None]]], *,
                  attached: Any = None) -> None:
    """Move a restored upper layer (an image or a directory, from ROOT/tmp: same file system)
    into the container's dir and mount it if it is an image; registers in ``undo`` the unmount and
    the move back to ``upper_src``: a failed restore leaves the layer where it was, so the caller
    may try again (a cold migration's lazy restore falls back to a full one:
    migrate/migration/cold_lazy.py), else it goes with the caller's scratch dir as before.
    ``attached``: the image's loop device bound ahead (runtime.upperfs.attach_ahead), if any."""
    from runtime import upperfs

    layout = upperfs.install(sys, upper_src, cdir, attached=attached)
    moved = layout.image if layout.image is not None else layout.upper
    undo.append(("give the upper layer back", lambda: os.rename(moved, upper_src)))
    if layout.image is not None:
        undo.append(("unmount upper layer", lambda: upperfs.unmount(sys, layout.mountpoint)))


def keep_failed_log(paths: Paths, log_path: Path | None, kind: str) -> Path | None:
    """Copy a CRIU log out of a scratch dir that is about to be removed; the copy's path."""
    if log_path is None or not log_path.exists():
        return None
    dest_dir = paths.root / "logs"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{kind}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    shutil.copyfile(log_path, dest)
    return dest
