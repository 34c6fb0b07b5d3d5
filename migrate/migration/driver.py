"""Move a container to another host: pick the mode, run it.

``migrate_container`` is the one entry point (the engine calls it). It checks the container,
chooses the mode for ``options.mode`` (``auto`` looks at both hosts' features) and hands over
to the mode's module:

    cold.py       freeze, dump while streaming, restore there, commit (every mode's fallback)
    precopy.py    pre-dump rounds while the container runs, then the cold path with the last
                  round as the final dump's parent
    postcopy.py   dump without memory, resume there at once, pages follow on demand

What the modes share (the pusher, the upper layer's staging, page-server connections, error
naming) is in phases.py, and the records that keep exactly one copy through crashes in
recovery.py; no mode imports this module or another mode's private names.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from migrate.api import MigrateOptions, MigrateResult, ProgressFn
from migrate.errors import IncompatibleHost
from migrate.migration.phases import PreDumpFn
from runtime.criu import Criu
from runtime.errors import InvalidArgument, InvalidState, Unsupported

log = logging.getLogger(__name__)


def migrate_container(
    rt: Any,
    name: str,
    options: MigrateOptions,
    target: Any,
    *,
    criu: Criu | None = None,
    progress: ProgressFn | None = None,
    page_server_address: str | None = None,
    pre_dump: PreDumpFn | None = None,
) -> MigrateResult:
    """Move container ``name`` of runtime ``rt`` to ``target`` (a MigrationTarget + host_info) in
    the mode ``options.mode`` asks for (see migrate.migration.cold.migrate_cold for the arguments;
    ``pre_dump`` forces the cold path with that hook)."""
    from migrate.migration.cold import migrate_cold

    if options.compress not in ("", "auto", "on", "off"):
        raise InvalidArgument(f"compress must be auto, on or off, not {options.compress!r}")
    container = rt.get(name)
    if container.status != "running":
        raise InvalidState(container.spec.name, "migrate", container.status, "running")
    # what no mode can take along (host network, shared namespaces, ...) is refused before the
    # target is asked anything (each mode checks it again right before its freeze)
    rt.dump_target(container)
    if pre_dump is None:
        live = dispatch(rt, name, options, target, criu=criu, progress=progress)
        if live is not None:
            return live
    return migrate_cold(rt, name, options, target, criu=criu, progress=progress, page_server_address=page_server_address,
                        pre_dump=pre_dump)


# --- mode choice ------------------------------------------------------------------------------


def choose_mode(options: MigrateOptions, local: Mapping[str, bool], remote: Mapping[str, bool], *, userns: bool = False) -> str:
    """The mode to run for ``options.mode`` given both hosts' ``HostInfo.features``.

    ``auto`` picks postcopy when both hosts support lazy pages (for a ``--userns`` container the
    target must also let its unprivileged tasks open a userfaultfd), else precopy when both
    track dirty pages (soft-dirty), else cold. An explicit live mode the hosts cannot do raises
    ``Unsupported``/``IncompatibleHost``.
    """
    mode = options.mode
    if userns and remote.get("lazy_pages") and not remote.get("lazy_pages_userns"):
        if mode == "postcopy":
            raise IncompatibleHost(
                f"the target {options.dest} cannot restore a --userns container with lazy pages: its restored tasks "
                "are unprivileged on the host and vm.unprivileged_userfaultfd is 0 there", phase="preflight",
                hint="sysctl -w vm.unprivileged_userfaultfd=1 on the target, or use --mode cold")
        remote = {**remote, "lazy_pages": False}
    if mode == "auto":
        if local.get("lazy_pages") and remote.get("lazy_pages"):
            return "postcopy"
        return "precopy" if local.get("dirty_tracking") and remote.get("dirty_tracking") else "cold"
    if mode == "postcopy":
        if not local.get("lazy_pages"):
            raise Unsupported(
                "--mode postcopy", "this host cannot serve lazy pages (criu uffd-noncoop, fs.pipe-max-size >= 4 MiB)",
                hint="run 'pymigrate check'; sysctl -w fs.pipe-max-size=4194304",
            )
        if not remote.get("lazy_pages"):
            raise IncompatibleHost(f"the target {options.dest} cannot restore with lazy pages", phase="preflight",
                                   hint="run 'pymigrate check' there, or use --mode cold")
    return mode


def dispatch(rt: Any, name: str, options: MigrateOptions, target: Any, *, criu: Criu | None = None,
             progress: ProgressFn | None = None) -> MigrateResult | None:
    """Run a live mode for ``options.mode`` (postcopy, precopy, auto); None means: do a cold migration."""
    if options.mode == "cold":
        return None
    if options.mode == "precopy":
        from migrate.migration.precopy import local_refusal, refusal

        refused = local_refusal()
        if refused is None:
            info = target.host_info()
            refused = refusal(info.features, kernel_release=info.kernel, where=f"the target {options.dest}")
        if refused is not None:
            raise refused
        from migrate.migration.precopy import migrate_precopy

        return migrate_precopy(rt, name, options, target, criu=criu, progress=progress)
    from runtime.host import host_report

    userns = bool(rt.get(name).spec.userns_size)
    mode = choose_mode(options, host_report().features(), target.host_info().features, userns=userns)
    log.info("container=%s mode %s -> %s", name, options.mode, mode)
    if mode == "cold":
        return None
    if mode == "precopy":
        from migrate.migration.precopy import migrate_precopy

        return migrate_precopy(rt, name, options, target, criu=criu, progress=progress)
    from migrate.migration.postcopy import migrate_postcopy

    return migrate_postcopy(rt, name, options, target, criu=criu, progress=progress)
