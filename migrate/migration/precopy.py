"""Pre-copy migration: when to stop pre-dumping, and whether this kernel can pre-dump at all.

Pre-copy dumps memory while the container keeps running (``criu pre-dump``), several times, each
round sending only the pages written since the previous one, and freezes for a short final dump
once the rounds stop paying off. Finding the pages written since the last round needs the
kernel's soft-dirty bits (``/proc/PID/clear_refs`` writes ``4``; bit 55 of ``/proc/PID/pagemap``),
which exist only in kernels built with ``CONFIG_MEM_SOFT_DIRTY`` (Documentation/admin-guide/mm/
soft-dirty.rst). ``criu check --feature mem_dirty_track`` says "Dirty tracking is OFF" without
it. Kernel 6.18 on this project's machines is built without it, so ``--mode precopy`` is refused
here with that reason (``refusal``) rather than silently falling back to another mode.

The convergence rule (``next_step``) is a pure function of the page counts each round wrote, so it
is tested with recorded counts. A round is worth another when it still shrinks the dirty set:

    stop "converged"       the last round wrote at most ``min_dirty_pages`` pages: the final
                           frozen dump will be short
    stop "stalled"         the last ``stall_rounds`` rounds each shrank the dirty set by less than
                           ``min_shrink`` (the workload dirties memory about as fast as we send it)
    stop "iteration cap"   ``max_rounds`` rounds done
    stop "budget"          the rounds together sent more than ``max_sent_ratio`` times the first
                           (full) round: pre-copy is costing more than it saves
    otherwise "continue"

Where soft-dirty exists, ``migrate_precopy`` runs the real loop (the source half; the target
half is migrate/migration/precopy_target.py). It is the cold driver (migrate/migration/driver.py) with its
``pre_dump`` hook: after the preflight (the target reserves with mode "precopy"), the image and
the upper layer's staging, while the container still runs,

    round k     the target starts a page server for round k (``start_precopy_round``), its dir
                linked to round k-1's as CRIU's ``parent``; the source's CRIU pre-dumps
                (``SwrkCriu.pre_dump``: ``track_mem``, ``parent_img`` ../round<k-1>, the tree
                frozen only while its memory is drained, then thawed) into STAGING/round<k>
                (the small non-page images stay here: CRIU reads the parent's inventory.img for
                its pid-reuse check) and sends the pages over our own pre-connected socket
                (``connect_page_server``: TCP_USER_TIMEOUT, keepalive). CRIU's stats-dump says how
                many pages the round wrote; ``next_step`` decides whether to go on
    final       the target starts the final page server, chained to the last round; then the
                cold path as usual: freeze, dump with ``parent_img`` ../round<N> and ``track_mem``
                (only the pages dirtied since round N are written; the others are holes flagged
                "in parent"), the archive with the other images and the upper layer's changes,
                the target restores through the chain of parent links.

Nothing is frozen between rounds, so a failed round rolls back like an early cold failure: the
target aborts (stopping the round's page server and removing every round), the source removes
its staging dir and keeps running.
"""

from __future__ import annotations

import gzip
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from runtime.errors import Unsupported

if TYPE_CHECKING:
    from migrate.api import MigrateOptions, MigrateResult, ProgressFn
    from runtime.criu import Criu

log = logging.getLogger(__name__)

StopReason = Literal["continue", "converged", "stalled", "iteration cap", "budget"]

KERNEL_CONFIG = "config.gz"  # /proc/config.gz (CONFIG_IKCONFIG_PROC)
SOFT_DIRTY_OPTION = "CONFIG_MEM_SOFT_DIRTY"


@dataclass(frozen=True)
class ConvergencePolicy:
    """Tunables of the convergence rule (see the module docstring). Pages are 4 KiB pages."""

    min_dirty_pages: int = 2048  # 8 MiB left: the final dump is short
    min_shrink: float = 0.10  # a round must shrink the dirty set by more than 10 %
    stall_rounds: int = 2
    max_rounds: int = 8
    max_sent_ratio: float = 3.0

    def __post_init__(self) -> None:
        if self.max_rounds < 1 or self.stall_rounds < 1 or not 0 <= self.min_shrink < 1 or self.min_dirty_pages < 0:
            raise ValueError(f"invalid convergence policy {self}")


@dataclass(frozen=True)
class Decision:
    stop: bool
    reason: StopReason
    rounds: int  # pre-dump rounds done so far
    last_pages: int  # pages the last round wrote


def next_step(pages_per_round: Sequence[int], policy: ConvergencePolicy = ConvergencePolicy()) -> Decision:
    """Whether to pre-dump once more, given the pages each round so far wrote (first = full copy).

    Raises:
        ValueError: no round done yet, or a negative count.
    """
    if not pages_per_round:
        raise ValueError("the convergence rule needs at least one pre-dump round")
    if any(p < 0 for p in pages_per_round):
        raise ValueError(f"negative page count in {list(pages_per_round)}")
    rounds = len(pages_per_round)
    last = pages_per_round[-1]

    def decide(reason: StopReason) -> Decision:
        return Decision(stop=reason != "continue", reason=reason, rounds=rounds, last_pages=last)

    if last <= policy.min_dirty_pages:
        return decide("converged")
    if rounds >= policy.max_rounds:
        return decide("iteration cap")
    if pages_per_round[0] and sum(pages_per_round) > policy.max_sent_ratio * pages_per_round[0]:
        return decide("budget")
    if rounds > policy.stall_rounds:
        recent = list(pages_per_round[-(policy.stall_rounds + 1):])
        shrinking = [
            prev > 0 and (prev - cur) / prev > policy.min_shrink for prev, cur in zip(recent, recent[1:])
        ]
        if not any(shrinking):
            return decide("stalled")
    return decide("continue")


def kernel_soft_dirty(proc_root: Path = Path("/proc")) -> bool | None:
    """Whether the running kernel was built with CONFIG_MEM_SOFT_DIRTY; None when /proc/config.gz is absent."""
    try:
        with gzip.open(proc_root / KERNEL_CONFIG, "rt") as f:
            for line in f:
                if line.startswith(f"{SOFT_DIRTY_OPTION}="):
                    return line.strip().endswith("=y")
    except OSError:
        return None
    return False


def refusal(
    features: Mapping[str, bool],
    *,
    criu_detail: str | None = None,
    kernel_option: bool | None = None,
    kernel_release: str | None = None,
    where: str = "this host",
) -> Unsupported | None:
    """The ``Unsupported`` error for ``--mode precopy`` on a host whose ``features`` (HostInfo.features)
    lack dirty tracking, with the kernel's reason; None when pre-copy is possible there."""
    if features.get("dirty_tracking"):
        return None
    kernel = f"kernel {kernel_release}" if kernel_release else "the kernel"
    if kernel_option is False:
        reason = f"{kernel} of {where} is built without soft-dirty page tracking ({SOFT_DIRTY_OPTION} is not set)"
    else:
        reason = f"{kernel} of {where} has no soft-dirty page tracking"
    if criu_detail:
        reason += f"; criu check says: {criu_detail.rstrip('.')}"
    return Unsupported(
        "--mode precopy",
        reason,
        hint="use --mode postcopy (lazy pages) or --mode cold; pre-copy needs a kernel with CONFIG_MEM_SOFT_DIRTY=y",
    )


def local_refusal() -> Unsupported | None:
    """``refusal`` for this host, from its probed facts."""
    from runtime.host import host_report

    report = host_report()
    feature = report.criu.feature("dirty_tracking")
    return refusal(
        report.features(),
        criu_detail=feature.detail if feature is not None else None,
        kernel_option=kernel_soft_dirty(),
        kernel_release=report.kernel_release,
    )


# --- the pre-copy loop (where the kernel has soft-dirty) ----------------------------------------

PAGE_SIZE = 4096


@dataclass(frozen=True)
class RoundResult:
    """One pre-dump round as CRIU reported it."""

    number: int
    pages_written: int
    frozen_ms: float  # CRIU froze the tree this long to drain its memory
    wall_ms: float


def round_dir_name(round_no: int) -> str:
    """``round<k>``: the same name on both hosts, so ``parent_img`` ../round<k-1> holds on each."""
    return f"round{round_no}"


def check_incoming(request: Any, *, page_servers: bool = True) -> None:
    """Target pre-flight of a pre-copy migration: this host pre-dumps nothing, but the source's
    rounds are only worth it where both kernels track dirty pages; and every round needs a page
    server here.

    Raises:
        Unsupported: no soft-dirty here (the kernel's reason), or this daemon runs no page servers.
        IncompatibleHost: the source named no address for the page servers.
    """
    from migrate.errors import IncompatibleHost

    refused = local_refusal()
    if refused is not None:
        raise refused
    if not page_servers:
        raise Unsupported("--mode precopy", "this daemon runs no CRIU page servers, and every pre-dump round needs one",
                          hint="use --mode cold")
    if not request.page_server_address:
        raise IncompatibleHost("a pre-copy migration needs the address its page servers listen on", phase="preflight",
                               hint="migrate to HOST:PORT (not unix: or ssh://), or use --mode cold")


def round_address(dest: str) -> str:
    """Where the target's page servers listen, as the source dials them: the host of ``HOST:PORT``
    (the daemon's own address), 127.0.0.1 for ``unix:`` (the same host).

    Raises:
        Unsupported: ``ssh://``: CRIU's page-server connection would bypass the tunnel's security.
    """
    if dest.startswith("unix:"):
        return "127.0.0.1"
    if dest.startswith("ssh://"):
        raise Unsupported("--mode precopy", f"the target {dest} is reached through ssh, and CRIU's page-server "
                          "connections of the pre-dump rounds would bypass the tunnel", hint="use --mode cold over ssh")
    host, sep, port = dest.rpartition(":")
    if not sep or not port.isdigit() or not host.strip("[]"):
        raise Unsupported("--mode precopy", f"cannot tell the target host of {dest}", hint="give the target as HOST:PORT")
    return host.strip("[]")


class Rounds:
    """The ``pre_dump`` hook of migrate.migration.cold.migrate_cold: pre-dump rounds until
    ``next_step`` stops them, then the final page server. ``results`` keeps every round."""

    def __init__(self, criu: Any, target: Any, address: str, *, policy: ConvergencePolicy = ConvergencePolicy(),
                 progress: Any = None, started: float | None = None) -> None:
        self.criu = criu
        self.target = target
        self.address = address
        self.policy = policy
        self.progress = progress
        self.started = time.monotonic() if started is None else started
        self.results: list[RoundResult] = []
        self.decision: Decision | None = None

    def __call__(self, migration_id: str, staging: Path, dt: Any) -> Any:
        from migrate.checkpoint import dump_externals
        from migrate.migration.phases import PreDumped

        externals = dump_externals(dt)
        bytes_on_wire = 0
        phases: dict[str, float] = {}
        while True:
            number = len(self.results) + 1
            result = self._round(migration_id, staging, dt, number, externals)
            self.results.append(result)
            bytes_on_wire += result.pages_written * PAGE_SIZE
            phases[f"precopy_round{number}"] = round(result.wall_ms, 3)
            self.decision = next_step([r.pages_written for r in self.results], self.policy)
            log.info("migration=%s phase=precopy round=%d pages=%d frozen_ms=%.1f wall_ms=%.1f -> %s",
                     migration_id, number, result.pages_written, result.frozen_ms, result.wall_ms, self.decision.reason)
            self._emit(f"round {number}: {result.pages_written} pages, {self.decision.reason}", bytes_on_wire)
            if self.decision.stop:
                break
        port = self.target.start_precopy_round(migration_id, len(self.results) + 1, final=True)
        return PreDumped(
            parent_img=f"../{round_dir_name(len(self.results))}",
            page_server_port=int(port),
            bytes_on_wire=bytes_on_wire,
            phases_ms=phases,
        )

    def _round(self, migration_id: str, staging: Path, dt: Any, number: int, externals: tuple[str, ...]) -> RoundResult:
        from migrate.checkpoint import dump_empty_ns
        from migrate.errors import TransferError
        from migrate.migration.phases import connect_page_server
        from runtime.criu import DumpRequest, PageServer

        started = time.monotonic()
        images_dir = staging / round_dir_name(number)
        images_dir.mkdir(mode=0o700)
        port = int(self.target.start_precopy_round(migration_id, number))
        try:
            sock = connect_page_server(self.address, port)
        except TransferError as exc:
            exc.phase = "precopy"
            raise
        try:
            request = DumpRequest(
                pid=dt.init_pid,
                images_dir=images_dir,
                external=externals,
                empty_ns=dump_empty_ns(dt),
                freeze_cgroup=dt.freeze_cgroup,
                network_lock="skip",  # a pre-dump leaves the network alone (CRIU locks it only in a dump)
                page_server=PageServer(self.address, port, fd=sock.fileno()),
                parent_img=f"../{round_dir_name(number - 1)}" if number > 1 else None,
                track_mem=True,
            )
            stats = self.criu.pre_dump(request)
        finally:
            # CRIU (gone now) sent everything; the round's page server finishes at our EOF
            sock.close()
        return RoundResult(number=number, pages_written=stats.pages_written, frozen_ms=stats.frozen_ms,
                           wall_ms=(time.monotonic() - started) * 1000)

    def _emit(self, message: str, done: int) -> None:
        if self.progress is not None:
            from migrate.api import ProgressEvent

            self.progress(ProgressEvent("migrate", "precopy", bytes_done=done, elapsed_s=time.monotonic() - self.started,
                                        message=message))


def migrate_precopy(
    rt: Any,
    name: str,
    options: MigrateOptions,
    target: Any,
    *,
    criu: Criu | None = None,
    progress: ProgressFn | None = None,
    policy: ConvergencePolicy = ConvergencePolicy(),
    page_server_address: str | None = None,
) -> MigrateResult:
    """Move container ``name`` of ``rt`` (a CheckpointHost) to ``target`` with pre-dump rounds
    (module doc). The caller checked that both hosts track dirty pages (``refusal``).

    Raises:
        MigrationError and runtime errors, as migrate.migration.cold.migrate_cold: the source
        runs on, thawed, and the target removed every round.
    """
    from migrate.migration.cold import migrate_cold
    from runtime.criu import SwrkCriu

    criu = criu or SwrkCriu()
    address = page_server_address or round_address(options.dest)
    rounds = Rounds(criu, target, address, policy=policy, progress=progress)
    return migrate_cold(rt, name, options, target, criu=criu, progress=progress, page_server_address=address,
                        pre_dump=rounds)
