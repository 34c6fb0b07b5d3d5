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
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

from runtime.errors import Unsupported

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
