"""``Runtime``: the library API of the embedded container runtime (run, ps, stop, rm, exec, ...).

One ``Runtime`` works on one state root (see runtime/config.py). It composes the facilities:
the state store (records and locking), the image store (lower dirs), overlay (root filesystem),
cgroups (limits, freezing, killing), network (netns, veth, address), the shim (process
monitoring) and process.py (the init and exec). Lifecycle legality is decided by ``Container``.

Creation order (and the reverse for rollback and ``remove``): validate every input -> lease the
address -> state record (reserves the name) -> overlay mount + /etc files -> cgroup -> network
namespace (+ veth) -> shim + init. A failure at any step undoes the steps before it, so bad
input or a failing start leaves no record, mount, cgroup, veth or lease behind.

``auto_remove`` (``run -d --rm``): the container's shim removes it after its exit record
(``auto_remove`` below), so it goes even when whoever started it is gone. Only an exit of its
own counts: a checkpoint records ``checkpointed`` before it kills the tree (the record must stay
for the restore), and ``remove`` (also a migration's removal of its source copy) holds
``remove:<id>``, which the shim waits for and then finds the record gone.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import logging
import os
import signal as _signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from runtime import overlay, upperfs
from runtime.config import Paths, default_root
from runtime.container import Container, limits_of, validate_env, validate_fields, validate_workdir
from runtime.errors import Busy, ContainerError, ContainerExists, ContainerNotFound, InvalidArgument, InvalidState
from runtime.ports import PortMapping
from runtime.spec import ContainerInfo, ContainerSpec, ContainerState, Volume
from runtime.state import StateStore, new_container_id, validate_name
from runtime.syscalls import LINUX, Syscalls

if TYPE_CHECKING:  # pragma: no cover - runtime/logs.py is imported when logs are read
    from runtime.logs import LogEntry

log = logging.getLogger(__name__)

LOG_DIR_MODE = 0o700
POLL_S = 0.02


@dataclasses.dataclass(frozen=True)
class _RunPlan:
    """What ``Runtime.run`` checked before creating anything: the spec's fields (normalised), the image."""

    image: str
    command: tuple[str, ...]
    image_digest: str
    lowers: tuple[Path, ...]
    fields: dict[str, Any]  # ContainerSpec keyword arguments (ip: the one asked for, or None)
    userns_mode: str
    userns_size: int
    seccomp_bpf: Any


class Runtime:
    """Containers of one state root.

    Args:
        root: the state root (default: runtime.config.default_root()).
        sys: kernel calls (tests may pass a recorder for the parts that allow it).
    """

    def __init__(self, root: Path | None = None, *, sys: Syscalls = LINUX) -> None:
        self.paths = Paths(Path(root) if root is not None else default_root())
        self.store = StateStore(self.paths)
        self.sys = sys
        self._cgroup_managers: dict[str | None, Any] = {}
        self._images: Any = None
        # what else holds image digests besides containers (LocalEngine adds its checkpoints): an
        # unnamed image one refers to is kept by prune and by a name moving away (runtime/image_store.py)
        self.image_references: list[Callable[[str], bool]] = []
        self._cap_last: int | None = None

    # -- facilities (built lazily: the CLI's start latency counts) ------------------------------
    @property
    def images(self) -> Any:
        if self._images is None:
            from runtime.image_store import ImageStore

            self._images = ImageStore(self.paths, in_use=self._image_in_use, referenced=self._image_referenced)
        return self._images

    @property
    def volumes(self) -> Any:
        """The named volumes of this root (runtime/volumes.py)."""
        from runtime.volumes import VolumeStore

        return VolumeStore(self.paths, users=self._volume_users, hold=self.store.hold)

    def _volume_users(self, name: str) -> builtins.list[str]:
        """Names of the containers (any state) whose spec mounts volume ``name``."""
        users = []
        for cid in self.store.ids():
            try:
                spec = self.store.load_spec(cid)
            except ContainerError:
                continue
            if any(v.name == name for v in spec.volumes):
                users.append(spec.name)
        return users

    def _image_referenced(self, digest: str) -> bool:
        return any(refers(digest) for refers in self.image_references)

    def _image_in_use(self, digest: str) -> bool:
        for cid in self.store.ids():
            try:
                if self.store.load_spec(cid).image_digest == digest:
                    return True
            except ContainerError:
                continue
        return False

    def cgroup_parent(self, parent: str | None) -> str:
        """The cgroup parent actually used for a container's ``cgroup_parent`` setting."""
        from runtime.config import default_cgroup_parent

        return parent if parent is not None else default_cgroup_parent(self.paths.root)

    def cgroups(self, parent: str | None) -> Any:
        """The CgroupManager for containers under ``parent`` (None: the default parent)."""
        manager = self._cgroup_managers.get(parent)
        if manager is None:
            from runtime.process import cgroup_manager

            manager = self._cgroup_managers[parent] = cgroup_manager(self.cgroup_parent(parent))
        return manager

    def network(self, mode: str) -> Any:
        from runtime.network import network_for

        return network_for(self.paths, mode)  # type: ignore[arg-type]

    def _caps_last(self) -> int:
        if self._cap_last is None:
            from runtime.capabilities import last_cap

            self._cap_last = last_cap()
        return self._cap_last

    # -- lookups --------------------------------------------------------------------------------
    def container(self, name_or_id: str) -> Container:
        """The container (state reconciled with the processes that really exist)."""
        cid = self.store.resolve(name_or_id)
        return self._reconcile(Container(self.store.load_spec(cid), self.store.load_state(cid)))

    def list(self, all: bool = False) -> list[ContainerInfo]:
        """Containers of this root; only running and paused ones unless ``all``."""
        out = []
        for cid in self.store.ids():
            try:
                c = self._reconcile(Container(self.store.load_spec(cid), self.store.load_state(cid)))
            except ContainerError:
                continue  # removed meanwhile
            if all or c.is_live:
                out.append(self._info(c, stats=False))
        out.sort(key=lambda i: i.spec.created_at)
        return out

    def inspect(self, name_or_id: str) -> ContainerInfo:
        return self._info(self.container(name_or_id), stats=True)

    def _info(self, c: Container, *, stats: bool) -> ContainerInfo:
        cgroup: dict[str, str] = {}
        mem = pids = None
        if stats:
            try:
                manager = self.cgroups(c.spec.cgroup_parent)
                cgroup = {k: str(v) for k, v in manager.info(c.container_id).dirs.items()}
                if c.is_live:
                    st = manager.stats(c.container_id)
                    mem, pids = st.memory_current_bytes, st.pids_current
            except ContainerError as exc:
                log.debug("no cgroup facts for %s: %s", c.container_id, exc)
        return ContainerInfo(
            spec=c.spec,
            state=self._with_namespaces(c, users=stats),
            bundle_dir=str(self.store.dir(c.container_id)),
            cgroup=cgroup,
            memory_current_bytes=mem,
            pids_current=pids,
        )

    def _with_namespaces(self, c: Container, *, users: bool) -> ContainerState:
        """Its state with the namespaces it shares named (and, with ``users``, who joins its own)."""
        from runtime import ns_modes

        names: dict[str, str] = {}
        for ref in set(ns_modes.joined(c.spec).values()):
            try:
                names[ref] = self.store.load_spec(ref).name
            except ContainerError:
                continue  # gone: shown by id
        shared = ns_modes.shown_modes(c.spec, names)
        joiners: dict[str, str] = {}
        if users:
            for name, kind in ns_modes.dependents(self.specs(), c.container_id):
                joiners[name] = ",".join(sorted({*filter(None, joiners.get(name, "").split(",")), kind}))
        if not shared and not joiners:
            return c.state
        return dataclasses.replace(c.state, shared_namespaces=shared, namespace_users=joiners)

    def _reconcile(self, c: Container) -> Container:
        """Notice a container whose processes are gone without a recorded exit (shim killed), and
        thaw one whose freezing operation died (runtime/freeze_record.py)."""
        if not c.is_live:
            return c
        if c.state.frozen_by is not None:
            c = self._settle_freeze(c)
        from runtime.shim import is_shim

        from runtime.ns_modes import joined_init_alive

        if is_shim(c.state.shim_pid) or _is_container_init(c.state.pid) or joined_init_alive(c.spec, c.state.pid):
            return c

        def settle(s: ContainerState) -> ContainerState:
            if s.status not in ("running", "paused"):
                return s  # the shim recorded the exit meanwhile
            return dataclasses.replace(s, status="exited", exit_code=-1 if s.exit_code is None else s.exit_code, finished_at=time.time())

        try:
            state = self.store.update_state(c.container_id, settle)
        except ContainerError:
            return c
        log.warning("container=%s processes are gone without a recorded exit", c.container_id)
        return Container(c.spec, state)

    # -- run ------------------------------------------------------------------------------------
    def run(
        self,
        image: str,
        command: tuple[str, ...] | builtins.list[str] = (),
        *,
        launch: bool = True,
        name: str | None = None,
        hostname: str | None = None,
        env: tuple[str, ...] | builtins.list[str] = (),
        workdir: str | None = None,
        memory_bytes: int | None = None,
        cpus: float | None = None,
        pids_limit: int | None = None,
        network: str = "bridge",
        ip: str | None = None,
        volumes: tuple[Volume, ...] | builtins.list[Volume] = (),
        ports: tuple[PortMapping, ...] | builtins.list[PortMapping] = (),
        cgroup_parent: str | None = None,
        seccomp: str = "default",
        seccomp_profile: str | None = None,
        user: str = "",
        stop_signal: str = "",
        auto_remove: bool = False,
        read_only: bool = False,
        cap_add: tuple[str, ...] | builtins.list[str] = (),
        cap_drop: tuple[str, ...] | builtins.list[str] = (),
        restart: str = "no",
        init: bool = False,
        tty: bool = False,
        interactive: bool = False,
        pid_mode: str = "private",
        ipc_mode: str = "private",
        uts_mode: str = "private",
        cgroupns_mode: str = "private",
        userns: str = "",
        labels: dict[str, str] | None = None,
    ) -> ContainerInfo:
        """Create and start a container; returns once its command was exec'd.

        ``seccomp`` is ``default`` (this host's default profile), ``unconfined`` or ``custom``
        with the profile's JSON text in ``seccomp_profile`` (runtime/seccomp.py). ``user`` is
        ``USER[:GROUP]`` (names or ids), looked up in the container's own /etc/passwd and
        /etc/group when it starts (runtime/users.py); empty: root. ``auto_remove``: its shim
        removes it once it exited by itself (see the module doc). ``read_only``: the root mount is
        read-only (runtime/rootfs.py, runtime/process.py). ``restart``: its policy, kept by its
        shim (runtime/restart.py; not with ``auto_remove``). ``init``: tini is PID 1
        (runtime/init_binary.py). ``pid_mode``, ``ipc_mode``, ``uts_mode`` (``private``, ``host``,
        ``container:NAME``), ``cgroupns_mode`` (``private``, ``host``) and ``network``
        ``container:NAME``: namespaces shared with the host or a running container (runtime/ns_modes.py).
        ``userns``: ``auto[:size=N]`` gives the container its own id range from the host's pool
        (runtime/userns.py); ""/``host``: the host's ids.

        Raises:
            InvalidArgument: bad name, hostname, env, workdir, limits, volumes, network, address,
                user syntax or a missing command (nothing was created); a user or group name the
                container's files do not have (everything created was removed again).
            ContainerExists: the name or address is taken.
            ImageNotFound: no such image.
            Unsupported: ``default`` seccomp on a host without a default profile, or no libseccomp.
            ContainerError: the start failed (``exit_code`` 127: command not found, 126: not
                executable); everything created was removed again.
        """
        options = {k: v for k, v in locals().items() if k not in ("self", "image", "command", "launch")}
        plan = self._plan_run(image, tuple(command), options)  # every refusal comes before anything is created
        container_id = new_container_id()
        undo: list[tuple[str, Callable[[], None]]] = []
        net = self.network(plan.fields["network"])
        try:
            spec = self._record(plan, container_id, net, undo)
            self._start(spec, plan.lowers, undo, plan.seccomp_bpf, net, launch=launch)
        except BaseException:
            self._undo(container_id, undo)
            raise
        log.info("container=%s name=%s %s", container_id, spec.name, "started" if launch else "created")
        return self._info(Container(self.store.load_spec(container_id), self.store.load_state(container_id)), stats=False)

    def _plan_run(self, image: str, command: tuple[str, ...], options: dict[str, Any]) -> _RunPlan:
        """``run``'s options checked and normalised into the spec's fields; refuses before anything exists."""
        from runtime.labels import validate_labels

        o = dict(options)
        o["labels"] = validate_labels(o["labels"] or {})
        from runtime.ns_modes import resolve_run

        # container:NAME -> container:<ID> (a rename keeps it), each of them running
        modes: dict[str, Any] = resolve_run(self.container, network=o["network"], pid_mode=o["pid_mode"], ipc_mode=o["ipc_mode"],
                            uts_mode=o["uts_mode"], cgroupns_mode=o["cgroupns_mode"])
        o["network"] = modes.pop("network")
        # the one validator: a checkpoint's manifest is checked by the same code (validate_spec)
        checked_keys = ("name", "hostname", "memory_bytes", "cpus", "pids_limit", "network", "ip", "cgroup_parent",
                        "user", "stop_signal", "restart", "init", "tty", "interactive")
        o.update(validate_fields(
            **{k: o[k] for k in checked_keys}, env=tuple(o["env"]), workdir=o["workdir"] or "/",
            volumes=tuple(o["volumes"]), cap_add=tuple(o["cap_add"]), cap_drop=tuple(o["cap_drop"]),
            ports=tuple(o["ports"]), auto_remove=bool(o["auto_remove"]), **modes,
        ))
        userns_mode, userns_size = userns_choice(o.pop("userns"), o["network"], modes)
        if o["init"]:
            from runtime.init_binary import host_path

            host_path()  # refused before anything is created
        if not command:
            raise InvalidArgument(f"no command given for image {image}: the image has no default command")
        from runtime.seccomp import validate_choice

        validate_choice(o["seccomp"], o["seccomp_profile"])
        # host ports 0 are chosen under the ports lock, with the record
        seccomp_bpf = self.seccomp_filter(o["seccomp"], o["seccomp_profile"], o["cap_add"], o["cap_drop"])
        img = self.images.get(image)
        self.paths.ensure()
        from runtime import teardown

        # a checkpoint's detached teardown may still hold an address, ports or a bridge this run
        # asks for: wait for it as a restore does (a listdir when none runs)
        teardown.wait_all(self.paths)
        if o["name"] is not None:
            self._check_name_free(o["name"])
        else:
            o["name"] = self.store.generate_name()
        o["volumes"] = self._named_volumes(image, o["volumes"])
        o["auto_remove"], o["read_only"], o["init"] = bool(o["auto_remove"]), bool(o["read_only"]), bool(o["init"])
        o.update(modes)
        return _RunPlan(image=image, command=command, image_digest=img.digest, lowers=img.lowers, fields=o,
                        userns_mode=userns_mode, userns_size=userns_size, seccomp_bpf=seccomp_bpf)

    def _record(self, plan: _RunPlan, container_id: str, net: Any, undo: builtins.list[tuple[str, Callable[[], None]]]) -> ContainerSpec:
        """The planned container's id range, address and record (ports claimed with it), and its create event."""
        fields = dict(plan.fields)
        id_range = self._claim_id_range(container_id, plan.userns_mode, plan.userns_size, undo)
        leased = None
        if fields["network"] == "bridge":
            # its ARP probe is answered in _start, before connect: the wait overlaps the mounts
            leased = net.lease(container_id, fields.pop("ip"), answer_later=True)
            undo.append(("release address", lambda: net.release(container_id)))
        else:
            fields.pop("ip")
        # a shared uts namespace has the host's or the other container's name
        fields["hostname"] = fields["hostname"] or (container_id[:12] if fields["uts_mode"] == "private" else "")
        spec = ContainerSpec(
            container_id=container_id, image=plan.image, image_digest=plan.image_digest, command=plan.command,
            ip=leased, mac=None, created_at=time.time(), userns=plan.userns_mode,
            userns_base=id_range.base if id_range else 0, userns_size=id_range.size if id_range else 0,
            **fields,
        )
        if leased is not None:
            from runtime.network import random_mac

            spec = dataclasses.replace(spec, mac=random_mac())
        from runtime.port_rules import claimed

        with claimed(self, spec) as claimed_spec:  # refuses a taken host port (PortInUse)
            self.store.create(claimed_spec)
        undo.append(("remove record", lambda: self._delete_record(container_id)))
        from runtime.events import emit_container  # before the shim: its start and die come after

        emit_container(self.paths.root, "create", claimed_spec)
        undo.append(("remove event", lambda: emit_container(self.paths.root, "remove", claimed_spec, reason="start failed")))
        out: ContainerSpec = claimed_spec
        return out

    def _claim_id_range(self, container_id: str, mode: str, size: int, undo: builtins.list[tuple[str, Callable[[], None]]]) -> Any:
        """``--userns auto``: a free range of the host's pool for the container (None without)."""
        if not mode:
            return None
        from runtime import userns

        root = self.paths.root
        rng = userns.allocate(root, container_id, size)
        undo.append(("release id range", lambda: userns.release(root, container_id)))
        return rng

    def make_userns(self, spec: ContainerSpec, undo: builtins.list[tuple[str, Callable[[], None]]]) -> Path | None:
        """Pin the user namespace of a ``--userns`` container at ROOT/userns/<id> (None without)."""
        if not spec.userns_size:
            return None
        from runtime import userns

        path = self.paths.userns / spec.container_id
        userns.remove(path)  # a leftover of a crash or of the container's previous run
        userns.create(path, userns.Range(spec.userns_base, spec.userns_size))
        undo.append(("remove user namespace", lambda: userns.remove(path)))
        return path

    def _named_volumes(self, image: str, vols: tuple[Volume, ...]) -> tuple[Volume, ...]:
        """``vols`` with named volumes resolved to their data dirs, made if missing (and kept if
        the run fails, as docker does); a new volume gets the image's content at its mount point."""
        from runtime.volumes import seed_from_tree

        resolved: tuple[Volume, ...]
        resolved, made = self.volumes.resolve(vols)
        for vol in resolved:
            if vol.name in made:
                with self.images.view(image) as tree:
                    seed_from_tree(Path(vol.source), Path(tree), vol.target)
        return resolved

    def _check_name_free(self, name: str) -> None:
        try:
            cid = self.store.resolve(name)
        except ContainerError:
            return
        if self.store.load_spec(cid).name == name:
            raise ContainerExists(f"container name {name} is already in use by {cid[:12]}", hint="choose another --name or remove the old container")

    def seccomp_filter(self, choice: str, profile: str | None, cap_add: tuple[str, ...] = (),
                       cap_drop: tuple[str, ...] = ()) -> bytes | None:
        """The BPF program a container process with this seccomp choice gets (None: unconfined),
        compiled for the container's capability set (the default one changed by ``cap_add`` and
        ``cap_drop``: a profile's rules keyed on capabilities follow it), cached under the state root."""
        from runtime.capabilities import spec_names
        from runtime.seccomp import filter_for

        return filter_for(choice, profile, spec_names(cap_add, cap_drop), self.paths.seccomp_cache)

    def _start(self, spec: ContainerSpec, lowers: tuple[Path, ...], undo: builtins.list[tuple[str, Callable[[], None]]],
               seccomp_bpf: bytes | None, net: Any, *, launch: bool = True) -> None:
        from runtime.cgroup_warmup import Warmup
        from runtime.shim import Starter, launch_shim

        cg = self.cgroups(spec.cgroup_parent)
        cg.create(spec.container_id, limits_of(spec))  # first: the warm-up's wait holds the kernel's cgroup_mutex, mkdir needs it
        undo.append(("destroy cgroup", lambda: cg.destroy(spec.container_id)))
        # the init's cgroup move in the shim would wait a grace period: it passes while we build
        warmup = Warmup().start() if launch else None
        try:
            spec, merged, netns = self._build(spec, lowers, undo, net)
            if not launch:  # ``create``: all made, nothing started; ``start`` publishes and launches (runtime/start.py)
                return
            if spec.ports:
                from runtime.port_rules import publish, unpublisher

                publish(self, spec)
                undo.append(("unpublish ports", unpublisher(self.paths.root, spec.container_id)))
            plan = self.init_plan(spec, merged, netns, seccomp_bpf)
            parent = self.cgroup_parent(spec.cgroup_parent)
            launch_shim(
                self.store,
                spec.container_id,
                Starter("runtime.process:start_container", {"plan": plan, "cgroup_parent": parent}),
                oom_killed=Starter("runtime.process:oom_killed", {"cgroup_parent": parent, "container_id": spec.container_id}),
                exited=self.exit_action(spec),
                sys=self.sys,
                warmup=warmup,
                idle=self._spares(),
            )
        finally:
            if warmup is not None:
                warmup.stop()

    def _spares(self) -> Any:
        """The shim's idle work after a run's start: upper-layer images copied ahead for the next
        runs (runtime/upperfs.py make_spares); None with plain upper directories."""
        from runtime.shim import Starter

        size = self._upper_size()
        if not size:
            return None
        return Starter("runtime.upperfs:make_spares", {"template_dir": str(self.paths.cache), "size_bytes": size})

    def _build(self, spec: ContainerSpec, lowers: tuple[Path, ...], undo: builtins.list[tuple[str, Callable[[], None]]],
               net: Any) -> tuple[ContainerSpec, Path, Path]:
        """The container's root (upper layer, overlay, /etc files), network namespace and link
        (its cgroup is made first, by ``_start``); (the spec as connected, the merged root, the netns path).

        The root's mounts are made in a thread while this one makes the network: both halves are
        mostly the kernel's work (a loop device and two mounts; a netns, a veth pair), so they
        overlap on a second core. /etc/hosts is written after both, with
        the address the link got (an answered ARP probe may have changed it)."""
        cid = spec.container_id
        self.paths.cache.mkdir(mode=0o700, exist_ok=True)
        userns_path = self.make_userns(spec, undo)
        root_undo: builtins.list[tuple[str, Callable[[], None]]] = []
        root = _Background(lambda: self._mount_root(cid, lowers, userns_path, spec.userns_base, root_undo))
        at = len(undo)
        try:
            spec, netns = self._host_side(spec, undo, net, userns_path)
        finally:
            error = root.wait()  # raised below unless this side's error is on its way
            undo[at:at] = root_undo  # undone after the host side, as when they were made one by one
        if error is not None:
            raise error
        merged = root.result
        from runtime.ns_modes import seen_hostname

        prepare_root(merged, spec, seen_hostname(spec, self.container))  # a shared uts: the other's name
        return spec, merged, netns

    def _mount_root(self, cid: str, lowers: tuple[Path, ...], userns_path: Path | None, userns_base: int,
                    undo: builtins.list[tuple[str, Callable[[], None]]]) -> Path:
        """The upper layer and the overlay mounted; the merged root (its undo steps in ``undo``)."""
        cdir = self.store.dir(cid)
        layout = upperfs.prepare(self.sys, cdir, self._upper_size(), template_dir=self.paths.cache)
        if layout.image is not None:
            undo.append(("unmount upper layer", lambda: upperfs.unmount(self.sys, layout.mountpoint)))
        dirs = overlay.OverlayDirs.for_container(cdir, lowers, userns_path, userns_base)
        overlay.mount(self.sys, dirs)
        undo.append(("unmount overlay", lambda: overlay.unmount(self.sys, dirs.merged)))
        return dirs.merged

    def _host_side(self, spec: ContainerSpec, undo: builtins.list[tuple[str, Callable[[], None]]], net: Any,
                   userns_path: Path | None) -> tuple[ContainerSpec, Path]:
        """The container's network namespace and (bridge) link; (the spec as connected, the netns)."""
        cid = spec.container_id
        netns = net.create_netns(cid, userns_path)
        undo.append(("remove netns", lambda: net.remove_netns(cid)))
        if spec.network == "bridge":
            ip = net.confirm_lease(cid)  # the answer to run's ARP probe: another address if someone else has it
            if ip != spec.ip:
                spec = dataclasses.replace(spec, ip=ip)
                self.store.write_spec(spec)
            net.connect(cid, netns, ip=spec.ip, mac=spec.mac)
            undo.append(("disconnect", lambda: net.disconnect(cid)))
        return spec, netns

    def init_plan(self, spec: ContainerSpec, merged: Path, netns: Path, seccomp_bpf: bytes | None | bool = True) -> Any:
        """The ``InitPlan`` of ``spec``'s init in its mounted ``merged`` root and ``netns`` (a fresh
        start and a restart policy's start alike); ``seccomp_bpf`` True: compile the spec's filter."""
        from runtime import rootfs
        from runtime.capabilities import container_caps
        from runtime.process import InitPlan, container_env

        if seccomp_bpf is True:
            seccomp_bpf = self.seccomp_filter(spec.seccomp, spec.seccomp_profile, spec.cap_add, spec.cap_drop)
        from runtime.ns_modes import runtime_plan

        ns, hostname = runtime_plan(self.container, spec)  # the containers it joins must run
        cid = spec.container_id
        ops, argv = rootfs.plan(spec.volumes, read_only=spec.read_only, userns=bool(spec.userns_size)), spec.command
        if spec.init:
            from runtime import init_binary

            ops, argv = ops + init_binary.mount_ops(), init_binary.argv(argv)
        return InitPlan(
            container_id=cid,
            merged=str(merged),
            netns=str(netns),
            hostname=spec.hostname,
            argv=argv,
            env=container_env(spec.env, hostname),
            workdir=spec.workdir,
            ops=tuple(ops),
            cap_last=self._caps_last(),
            cgroup=cid,
            seccomp_bpf=seccomp_bpf or None,
            user=spec.user,
            read_only=spec.read_only,
            caps=container_caps(spec.cap_add, spec.cap_drop),
            tty=spec.tty,
            interactive=spec.interactive,
            log_path=str(merged / overlay.LOG_PATH_IN_CONTAINER.lstrip("/")),
            ns=ns,
            userns=str(self.paths.userns / cid) if spec.userns_size else "",
        )

    def exit_action(self, spec: ContainerSpec) -> Any:
        """What the shim calls after the exit of ``spec``'s init (run and restore alike)."""
        from runtime.shim import Starter

        if spec.restart != "no":  # run refuses --rm with --restart
            return Starter("runtime.restart:after_exit", {"root": str(self.paths.root), "container_id": spec.container_id})
        if spec.ports and not spec.auto_remove:  # its rules go with its run (auto_remove: with it)
            return Starter("runtime.port_rules:after_exit", {"root": str(self.paths.root), "container_id": spec.container_id})
        if not spec.auto_remove:
            return None
        return Starter("runtime.runtime:auto_remove", {"root": str(self.paths.root), "container_id": spec.container_id})

    def start_existing(self, container_id: str) -> None:
        """Start an exited container's process again under a new shim, in its container as it is
        (overlay mounted, cgroup, netns): a restart policy's start when the daemon starts.

        Raises:
            InvalidState: it is not exited, or a checkpoint ended its run.
            ContainerError: its root or network namespace is gone (a host reboot).
        """
        from runtime.process import oom_killed  # noqa: F401 - the shim's probe below
        from runtime.shim import Starter, launch_shim

        c = self.container(container_id)
        if c.status != "exited" or c.state.checkpointed is not None:
            raise InvalidState(c.name, "start", c.status if c.state.checkpointed is None else "checkpointed", "exited")
        spec = c.spec
        gone = [p for p in (self.store.dir(spec.container_id) / "merged", self.network(spec.network).netns_path(spec.container_id))
                if not (overlay.is_mounted(p) if p.name == "merged" else p.exists())]
        if gone:
            raise ContainerError(f"cannot start container {c.name} again: {', '.join(map(str, gone))} gone",
                                 hint="a host reboot removed its mounts; remove it and run it again")
        self.store.update_state(spec.container_id, lambda s: dataclasses.replace(
            s, manually_stopped=False, restart_count=s.restart_count + 1))
        if spec.ports:  # its rules went with its exit (or a daemon start's sweep)
            from runtime.port_rules import publish

            publish(self, spec)
        parent = self.cgroup_parent(spec.cgroup_parent)
        launch_shim(
            self.store,
            spec.container_id,
            Starter("runtime.restart:restart_starter", {"root": str(self.paths.root), "container_id": spec.container_id}),
            oom_killed=Starter("runtime.process:oom_killed", {"cgroup_parent": parent, "container_id": spec.container_id}),
            exited=self.exit_action(spec),
            sys=self.sys,
        )
        log.info("container=%s started again (restart policy %s)", spec.container_id, spec.restart)

    # -- create (its start, restart and rename: runtime/start.py, runtime/rename.py) -------------
    def create(self, image: str, command: tuple[str, ...] | builtins.list[str] = (), **options: Any) -> ContainerInfo:
        """``run`` without the start (docker create): the record (status ``created``), its root,
        cgroup, network namespace and address are made, nothing runs; runtime.start.start runs it.
        Takes and checks ``run``'s options and raises what ``run`` raises before its start."""
        return self.run(image, command, launch=False, **options)

    def _upper_size(self) -> int:
        """Size of a new container's upper-layer image (runtime/upperfs.py); 0: plain directories,
        where the host has no loop devices (then restored files get new inode numbers)."""
        try:
            size = upperfs.configured_size()
        except ValueError as exc:
            raise InvalidArgument(str(exc), hint=f"unset {upperfs.ENV_SIZE} for the default (16G), or 0 for plain directories") from None
        if size:
            reason = upperfs.unavailable_reason()
            if reason is not None:
                log.warning("upper layers are plain directories (%s): a restore changes their inode numbers", reason)
                return 0
        return size

    def _undo(self, container_id: str, undo: builtins.list[tuple[str, Callable[[], None]]]) -> None:
        for what, step in reversed(undo):
            try:
                step()
            except Exception:  # rollback boundary: keep undoing, report each failure
                log.warning("container=%s rollback step %r failed", container_id, what, exc_info=True)

    # -- lifecycle ------------------------------------------------------------------------------
    def stop(self, name: str, timeout_s: float = 10.0) -> ContainerInfo:
        """Send the init its stop signal (the image's StopSignal or ``--stop-signal``; SIGTERM),
        wait up to ``timeout_s``, then kill the whole cgroup."""
        from runtime.container import parse_signal

        c = self.container(name)
        if not c.is_live:  # docker and podman: stopping a created or exited container succeeds
            if c.status == "exited":
                self._mark_stopped(c.container_id)  # one waiting for its restart policy's start stays exited
            return self.inspect(c.container_id)
        c.require("stop")
        self._mark_stopped(c.container_id)
        self._signal(c, parse_signal(c.spec.stop_signal) if c.spec.stop_signal else _signal.SIGTERM)
        if c.status == "paused":
            self.cgroups(c.spec.cgroup_parent).thaw(c.container_id)
        if not self._wait_exited(c.container_id, timeout_s):
            log.info("container=%s did not stop within %gs, killing it", c.container_id, timeout_s)
            self._kill_all(c)
            if not self._wait_exited(c.container_id, 10.0):
                raise ContainerError(f"container {c.name} did not exit after SIGKILL")
        if c.spec.ports:  # at once, not only when its shim gets to it
            from runtime.port_rules import after_exit

            after_exit(str(self.paths.root), c.container_id)
        try:
            return self.inspect(c.container_id)
        except ContainerNotFound:  # auto_remove: its shim removed it already
            return self._info(Container(c.spec, dataclasses.replace(c.state, status="exited", pid=0)), stats=False)

    def kill(self, name: str, signal: int = _signal.SIGKILL) -> None:
        """Signal the init (SIGKILL: the whole cgroup). A created or exited container: nothing to
        signal, success. Docker and podman refuse that ("is not running"); issue 14 asks for the
        same idempotency as ``stop``, so cleanup scripts need not ask first."""
        c = self.container(name)
        if not c.is_live:
            if c.status == "exited":
                self._mark_stopped(c.container_id)  # as for stop: a pending policy restart is cancelled
            return
        c.require("kill")
        self._mark_stopped(c.container_id)  # as docker: a killed container is not restarted
        if signal == _signal.SIGKILL:
            self._kill_all(c)
        else:
            self._signal(c, signal)

    def _mark_stopped(self, container_id: str) -> None:
        """Record that the user stopped it, before any signal: its restart policy leaves it exited
        (runtime/restart.py). A record removed meanwhile (``run -d --rm``) has nothing to restart."""
        with contextlib.suppress(ContainerNotFound):
            self.store.update_state(container_id, lambda s: dataclasses.replace(s, manually_stopped=True))

    def _signal(self, c: Container, sig: int) -> None:
        try:
            os.kill(c.state.pid, sig)
        except ProcessLookupError:
            pass

    def _kill_all(self, c: Container) -> None:
        cg = self.cgroups(c.spec.cgroup_parent)
        self._signal(c, _signal.SIGKILL)
        try:
            cg.kill(c.container_id)
        except ContainerError as exc:
            log.debug("cgroup kill of %s: %s", c.container_id, exc)
        if c.status == "paused":
            cg.thaw(c.container_id)

    def _wait_exited(self, container_id: str, timeout_s: float | None) -> bool:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                c = self._reconcile(Container(self.store.load_spec(container_id), self.store.load_state(container_id)))
            except ContainerNotFound:  # removed meanwhile (auto_remove): it exited
                return True
            if c.status == "exited":
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)

    def wait(self, name: str, timeout_s: float | None = None) -> int:
        """Block until the container exited; its exit code (-1 if unknown).

        Raises:
            ContainerError: ``timeout_s`` passed first.
        """
        c = self.container(name)
        if c.status == "created":
            c.require("stop")
        if not self._wait_exited(c.container_id, timeout_s):
            raise ContainerError(f"container {c.name} still running after {timeout_s:g}s")
        code = self.store.load_state(c.container_id).exit_code
        return -1 if code is None else code

    def pause(self, name: str) -> ContainerInfo:
        c = self.container(name)
        status = c.next_status("pause")
        self.cgroups(c.spec.cgroup_parent).freeze(c.container_id)
        self.store.update_state(c.container_id, lambda s: dataclasses.replace(s, status=status) if s.status == "running" else s)
        return self.inspect(c.container_id)

    def unpause(self, name: str) -> ContainerInfo:
        """Thaw a paused container, or one recorded running whose cgroup is frozen all the same
        (an operation that froze it died before the next command could settle it).

        Raises:
            Busy: a live operation (a checkpoint) froze it and will thaw it itself.
            InvalidState: neither paused nor frozen; or a migration froze it, whose outcome decides.
        """
        c = self.container(name)
        cg = self.cgroups(c.spec.cgroup_parent)
        record = c.state.frozen_by
        if c.status == "running" and cg.freezer_state(c.container_id) != "thawed":
            from runtime.freeze_record import holder_alive

            if record is not None and holder_alive(record):
                from runtime.errors import Busy

                raise Busy(f"container {c.name}", "unpause", holder_pid=record.pid,
                           hint=f"a {record.operation} froze it and thaws it when done")
            if record is not None and not record.recover:
                raise InvalidState(c.name, "unpause", f"frozen by a {record.operation}", "paused")
            log.warning("container=%s: frozen while recorded running, thawing it", c.container_id)
        else:
            c.next_status("unpause")
        cg.thaw(c.container_id)
        self.store.update_state(
            c.container_id,
            lambda s: dataclasses.replace(s, status="running" if s.status == "paused" else s.status, frozen_by=None),
        )
        return self.inspect(c.container_id)

    def _settle_freeze(self, c: Container, wait_s: float = 0.0) -> Container:
        from runtime.freeze_record import settle

        try:
            state = settle(self, c.container_id, c.spec.cgroup_parent, wait_s=wait_s)
        except ContainerError as exc:  # the record stays: the next look tries again
            log.warning("container=%s: cannot settle the freeze of a dead operation: %s", c.container_id, exc)
            return c
        return c if state is None else Container(c.spec, state)

    def settle_freezes(self, wait_s: float = 120.0) -> builtins.list[str]:
        """Settle every container whose freezing operation died (the daemon's start); their ids.
        ``wait_s``: per container, how long an orphaned CRIU may still hold the partial files
        (it finishes its dump and exits; a dump of a few GiB takes seconds)."""
        settled = []
        for cid in self.store.ids():
            try:
                state = self.store.load_state(cid)
                if state.frozen_by is not None and state.status in ("running", "paused"):
                    c = self._settle_freeze(Container(self.store.load_spec(cid), state), wait_s)
                    if c.state.frozen_by is None:
                        settled.append(cid)
            except ContainerError as exc:
                log.warning("container=%s: cannot settle its freeze: %s", cid, exc)
        return settled

    def remove(self, name: str, force: bool = False) -> bool:
        """Remove the container and everything it owns (cgroup, netns, veth, lease, mount, files).
        False: ``force`` and no such container (docker's ``rm -f``: nothing to do, no error).

        Raises:
            InvalidState: it is running or paused and ``force`` is false.
            ContainerNotFound: no such container and ``force`` is false.
        """
        try:
            c = self.container(name)
        except ContainerNotFound:
            if force:
                validate_name(name)  # a name no container can have is bad input, not "nothing to do"
                return False
            raise
        from runtime import teardown

        teardown.wait(self.paths, c.container_id)  # a checkpoint's teardown still releasing it
        c.require("force-remove" if force else "remove")
        self._refuse_dependents(c)
        with self.removing(c.container_id):
            try:
                c = self.container(c.container_id)
            except ContainerNotFound:
                return True  # its shim removed it (auto_remove) while we waited
            if c.is_live:
                self._kill_all(c)
                if not self._wait_exited(c.container_id, 10.0):
                    raise ContainerError(f"container {c.name} did not exit after SIGKILL")
            self.release(c.spec)
            self._delete_record(c.container_id)
        log.info("container=%s removed", c.container_id)
        return True

    def _refuse_dependents(self, c: Container) -> None:
        """podman's rule: no removal of a container whose namespaces others join (running or not:
        a stopped one could not start again without it), even with ``force``."""
        from runtime.ns_modes import dependents, dependents_error

        deps = dependents(self.specs(), c.container_id)
        if deps:
            raise dependents_error(c.name, deps)

    def specs(self) -> builtins.list[ContainerSpec]:
        """Every container's spec in this state root (records being written or removed skipped)."""
        out = []
        for cid in self.store.ids():
            try:
                out.append(self.store.load_spec(cid))
            except ContainerError:
                continue
        return out

    @contextlib.contextmanager
    def removing(self, container_id: str, timeout_s: float = 60.0) -> Iterator[None]:
        """Hold ``remove:<id>``, waiting for another remover (a shim's auto_remove, a ``rm``, a
        restore's rollback): whoever kills a container to delete it holds this, so its
        auto_remove shim never releases the same resources at the same time.

        Raises:
            Busy: still held by another after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        with contextlib.ExitStack() as stack:
            while True:
                try:
                    stack.enter_context(self.store.hold(f"remove:{container_id}", "remove container"))
                    break
                except Busy:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(POLL_S)
            yield

    def release(self, spec: ContainerSpec) -> None:
        """Undo everything ``run`` created on the host except the record itself. Idempotent.

        Each step runs even if an earlier one failed; the first failure is raised at the end.
        """
        cid = spec.container_id
        net = self.network(spec.network)
        steps: list[tuple[str, Callable[[], None]]] = []
        if spec.ports:
            from runtime.port_rules import unpublisher

            steps.append(("unpublish ports", unpublisher(self.paths.root, cid)))
        if spec.network == "bridge":
            steps.append(("disconnect", lambda: net.disconnect(cid)))
            steps.append(("release address", lambda: net.release(cid)))
        steps.append(("remove netns", lambda: net.remove_netns(cid)))
        steps.append(("destroy cgroup", lambda: self.cgroups(spec.cgroup_parent).destroy(cid)))
        steps.append(("unmount overlay", lambda: overlay.unmount(self.sys, self.store.dir(cid) / "merged")))
        if spec.userns_size:
            from runtime import userns

            steps.append(("remove user namespace", lambda: userns.remove(self.paths.userns / cid)))
        first: BaseException | None = None
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # keep cleaning; report the first failure
                log.warning("container=%s cleanup step %r failed: %s", cid, what, exc)
                first = first or exc
        if first is not None:
            raise first

    def _delete_record(self, container_id: str) -> None:
        cdir = self.store.dir(container_id)
        # The upper layer's file system stays mounted as long as the record (an exited container's
        # files and logs stay readable, as with a plain upper dir); it goes with the record.
        upperfs.unmount(self.sys, cdir / upperfs.MOUNT_DIR)
        for mounted in (cdir / "merged", cdir / upperfs.MOUNT_DIR):
            if overlay.is_mounted(mounted):
                # never rmtree through a live overlay or upper-layer file system
                from runtime.errors import MountError

                raise MountError(f"cannot remove container {container_id[:12]}: {mounted} is still mounted")
        self.store.delete(container_id)
        from runtime import userns

        userns.release(self.paths.root, container_id)  # after the record: a claim holds while it exists

    # -- logs and exec --------------------------------------------------------------------------
    def log_root(self, container_id: str) -> Path:
        """The root holding the container's /.pymigrate logs: its mounted overlay, else (a
        checkpointed container's layer is unmounted) its upper dir."""
        cdir = self.store.dir(container_id)
        merged = cdir / "merged"
        return merged if os.path.ismount(merged) else upperfs.Layout.of(cdir).upper

    def logs(self, name: str, follow: bool = False, *, tail: int | None = None, since: float | None = None,
             until: float | None = None) -> Iterator[LogEntry]:
        """The container's stdout and stderr lines in time order, filtered
        (runtime/logs.py); with ``follow``, until the container exited."""
        from runtime import logs

        c = self.container(name)
        cid = c.container_id

        def live() -> bool:
            return self._reconcile(Container(c.spec, self.store.load_state(cid))).is_live

        return logs.read(self.log_root(cid), logs.LogFilter(tail=tail, since=since, until=until), follow=follow, live=live)

    def attach_socket(self, name: str) -> tuple[ContainerSpec, Path]:
        """The spec of a live container and the path of its attach socket (runtime/console.py);
        the socket exists only for a ``-t`` or ``-i`` container.

        Raises:
            InvalidState: the container is not running or paused.
        """
        from runtime.console import ATTACH_SOCKET

        c = self._reconcile(self.container(name))
        c.require("attach")
        return c.spec, self.store.dir(c.container_id) / ATTACH_SOCKET

    def exec(
        self,
        name: str,
        argv: tuple[str, ...] | builtins.list[str],
        env: tuple[str, ...] | builtins.list[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        console: Any = None,
    ) -> int:
        """Run ``argv`` in every namespace and the cgroup of a running container; its exit code.

        The process uses this process's stdin/stdout/stderr and runs as ``user`` (``USER[:GROUP]``,
        runtime/users.py; None: the container's own user). With ``console`` (a
        runtime.console.ExecConsole, ``exec -t``) it gets a pty of the container's devpts as
        its controlling terminal and stdio, whose master ``console.relay`` serves here while it lives.

        Raises:
            InvalidState: the container is not running. InvalidArgument: empty argv, bad env, bad
                user syntax or a user or group name the container does not have.
            ContainerError: setup failed (``exit_code`` 127 command not found, 126 not executable).
        """
        from runtime.capabilities import container_caps
        from runtime.ns_modes import seen_hostname
        from runtime.process import container_env, exec_in

        argv = tuple(argv)
        if not argv:
            raise InvalidArgument("no command given to exec")
        env = validate_env(tuple(env))
        if user is not None:
            from runtime.users import validate_user

            validate_user(user)
        c = self.container(name)
        c.require("exec")
        cg = self.cgroups(c.spec.cgroup_parent)
        return exec_in(
            c.state.pid,
            argv,
            container_env(c.spec.env + env, seen_hostname(c.spec, self.container)),
            validate_workdir(workdir) if workdir else c.spec.workdir,
            lambda pid: cg.add_pid(c.container_id, pid),
            self.sys,
            self._caps_last(),
            self.seccomp_filter(c.spec.seccomp, c.spec.seccomp_profile, c.spec.cap_add, c.spec.cap_drop),
            user=c.spec.user if user is None else user,
            caps=container_caps(c.spec.cap_add, c.spec.cap_drop),
            console=console,
        )


def auto_remove(root: str, container_id: str) -> None:
    """Remove a ``run -d --rm`` container after its own exit; runs in its shim (module doc).

    Nothing happens when the record is gone (``rm``, a migration's source removal), when a
    checkpoint ended the run (``checkpointed``: the record stays for the restore) or when the
    state is not ``exited``.
    """
    rt = Runtime(Path(root))
    with rt.removing(container_id):
        try:
            c = rt.container(container_id)
        except ContainerNotFound:
            return
        if not c.spec.auto_remove or c.state.checkpointed is not None or c.status != "exited":
            log.info("container=%s exited; not removed (checkpointed=%s status=%s)", container_id,
                     c.state.checkpointed, c.status)
            return
        rt.release(c.spec)
        rt._delete_record(container_id)
    log.info("container=%s removed after its exit (auto_remove)", container_id)
    from runtime.events import emit_container

    emit_container(rt.paths.root, "remove", c.spec, auto_remove="true")


def userns_choice(text: str, network: str, modes: dict[str, str]) -> tuple[str, int]:
    """``run --userns`` → (mode, size) (runtime/userns.py), refused with what a user namespace of
    its own cannot share: the host's network (its sysfs and links belong to the host's root) and
    namespaces of the host or another container (owned by another user namespace)."""
    from runtime.userns import DEFAULT_ENV, parse_mode

    mode, size = parse_mode(text or os.environ.get(DEFAULT_ENV, ""))  # the host's default
    if not mode:
        return mode, size
    shared = [f"--network {network}"] if network in ("host", "container") else []
    shared += [f"--{k.removesuffix('_mode')} {v}" for k, v in sorted(modes.items()) if k.endswith("_mode") and v not in ("", "private")]
    if shared:
        raise InvalidArgument(f"cannot combine --userns auto with {', '.join(shared)}: a user namespace of its own "
                              "cannot share namespaces owned by the host or another container",
                              hint="drop --userns auto, or let the container keep its namespaces private")
    return mode, size


def prepare_root(merged: Path, spec: ContainerSpec, hostname: str | None = None) -> None:
    """Write /etc/hostname, /etc/hosts and the log directory through the mounted overlay;
    ``hostname``: the one its processes see, when not its own (runtime/ns_modes.py).

    Never follows a symlink planted in the image (it could point anywhere on the host).
    """
    from runtime.errors import MountError

    etc = merged / "etc"
    if etc.is_symlink():
        raise MountError(f"image of container {spec.name} has /etc as a symlink: refusing to write through it")
    etc.mkdir(mode=0o755, exist_ok=True)
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    hostname = hostname or spec.hostname
    hosts += f"{spec.ip or '127.0.1.1'}\t{hostname}\n"
    _write_nofollow(etc / "hostname", f"{hostname}\n".encode(), 0o644)
    _write_nofollow(etc / "hosts", hosts.encode(), 0o644)
    logdir = merged / overlay.LOG_DIR_IN_CONTAINER.lstrip("/")
    if logdir.is_symlink():
        raise MountError(f"image of container {spec.name} has {overlay.LOG_DIR_IN_CONTAINER} as a symlink")
    logdir.mkdir(mode=LOG_DIR_MODE, exist_ok=True)
    log_files = [merged / p.lstrip("/") for p in (overlay.LOG_PATH_IN_CONTAINER, overlay.ERR_LOG_PATH_IN_CONTAINER)]
    for path in log_files:
        _write_nofollow(path, b"", 0o600, truncate=False)
    if spec.userns_size:
        # written by the host's root: give them to the container's root (runtime/userns.py)
        from runtime.userns import Range, own

        rng = Range(spec.userns_base, spec.userns_size)
        for path in (etc, etc / "hostname", etc / "hosts", logdir, *log_files):
            if os.lstat(path).st_uid < rng.base:
                own(path, rng)


def _write_nofollow(path: Path, data: bytes, mode: int, truncate: bool = True) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if truncate else 0)
    try:
        if path.is_symlink():
            path.unlink()
        fd = os.open(path, flags, mode)
    except OSError as exc:
        from runtime.errors import MountError

        raise MountError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        if data:
            os.write(fd, data)
    finally:
        os.close(fd)


def _is_container_init(pid: int) -> bool:
    """Whether ``pid`` is alive and is PID 1 of a pid namespace below ours (NSpid ends in 1)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    parts = line.split()
                    return len(parts) > 2 and parts[-1] == b"1"
    except OSError:
        return False
    return False


class _Background:
    """``fn`` run in a thread at once; ``wait`` joins it (see ``_build``)."""

    def __init__(self, fn: Callable[[], Path]) -> None:
        import threading

        self._result: Path | None = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._result = fn()
            except BaseException as exc:  # handed to join's caller
                self._error = exc

        self._thread = threading.Thread(target=run, name="container-root", daemon=True)
        self._thread.start()

    def wait(self) -> BaseException | None:
        """Join the thread; the error ``fn`` raised, if any."""
        self._thread.join()
        return self._error

    @property
    def result(self) -> Path:
        assert self._result is not None, "wait() first; fn failed or is running"
        return self._result
