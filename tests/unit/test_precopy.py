"""Pre-copy: the convergence rule on recorded page counts, and the refusal where soft-dirty is missing."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from migrate.migration.precopy import ConvergencePolicy, kernel_soft_dirty, next_step, refusal
from runtime.errors import Unsupported

FULL = 131_072  # 512 MiB of 4 KiB pages: the first (full) round


@pytest.mark.parametrize(
    ("rounds", "stop", "reason"),
    [
        ([FULL], False, "continue"),
        ([FULL, 900], True, "converged"),  # an idle workload: almost nothing dirtied
        ([FULL, 60_000, 30_000, 15_000], False, "continue"),  # halving each round
        ([FULL, 60_000, 30_000, 15_000, 1_500], True, "converged"),
        ([FULL, 40_000, 38_000, 37_000], True, "stalled"),  # dirtied as fast as sent
        ([FULL, 40_000, 38_000, 20_000], False, "continue"),  # one slow round is not a stall
        ([FULL, 40_000, 40_000], False, "continue"),  # needs two flat rounds
        ([FULL, 40_000, 40_000, 40_000], True, "stalled"),
        ([FULL, 40_000, 41_000, 42_000], True, "stalled"),  # growing
        ([FULL, 2048], True, "converged"),  # the threshold is inclusive
        ([0], True, "converged"),  # an empty container
    ],
)
def test_recorded_page_counts(rounds: list[int], stop: bool, reason: str) -> None:
    decision = next_step(rounds)
    assert (decision.stop, decision.reason) == (stop, reason)
    assert decision.rounds == len(rounds)
    assert decision.last_pages == rounds[-1]


def test_iteration_cap() -> None:
    policy = ConvergencePolicy(max_rounds=3)
    assert next_step([FULL, 80_000], policy).reason == "continue"
    assert next_step([FULL, 80_000, 50_000], policy).reason == "iteration cap"


def test_budget_stops_a_workload_that_costs_more_than_it_saves() -> None:
    # each round shrinks by just over 10 % (no stall), but together they resend the memory 3x
    rounds = [10_000, 8_900, 7_900, 7_000]
    assert next_step(rounds[:3]).reason == "continue"  # 26 800 pages sent so far
    assert next_step(rounds).reason == "budget"  # 33 800 > 3 x 10 000


def test_exactly_ten_percent_is_not_shrinking() -> None:
    assert next_step([FULL, 10_000, 9_000, 8_100]).reason == "stalled"


def test_a_converged_last_round_wins_over_the_cap() -> None:
    assert next_step([FULL, 10, 5], ConvergencePolicy(max_rounds=2)).reason == "converged"


@pytest.mark.parametrize("rounds", [[], [FULL, -1]])
def test_bad_input(rounds: list[int]) -> None:
    with pytest.raises(ValueError):
        next_step(rounds)


@pytest.mark.parametrize("kwargs", [{"max_rounds": 0}, {"stall_rounds": 0}, {"min_shrink": 1.0}, {"min_dirty_pages": -1}])
def test_bad_policy(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ConvergencePolicy(**kwargs)


def test_refusal_names_the_kernel_reason() -> None:
    err = refusal(
        {"dirty_tracking": False, "lazy_pages": True},
        criu_detail="Dirty tracking is OFF. Memory snapshot will not work.",
        kernel_option=False,
        kernel_release="6.18.44",
    )
    assert isinstance(err, Unsupported)
    text = str(err)
    assert "--mode precopy is not supported here" in text
    assert "kernel 6.18.44" in text and "CONFIG_MEM_SOFT_DIRTY is not set" in text
    assert "Dirty tracking is OFF" in text
    assert err.hint and "postcopy" in err.hint


def test_refusal_without_kernel_config() -> None:
    err = refusal({"dirty_tracking": False}, where="the target t:1")
    assert err is not None and "the kernel of the target t:1 has no soft-dirty page tracking" in err.reason


def test_no_refusal_with_dirty_tracking() -> None:
    assert refusal({"dirty_tracking": True}) is None


def test_kernel_soft_dirty_reads_proc_config(tmp_path: Path) -> None:
    assert kernel_soft_dirty(tmp_path) is None
    with gzip.open(tmp_path / "config.gz", "wt") as f:
        f.write("CONFIG_HAVE_ARCH_SOFT_DIRTY=y\n# CONFIG_MEM_SOFT_DIRTY is not set\n")
    assert kernel_soft_dirty(tmp_path) is False
    with gzip.open(tmp_path / "config.gz", "wt") as f:
        f.write("CONFIG_MEM_SOFT_DIRTY=y\n")
    assert kernel_soft_dirty(tmp_path) is True
