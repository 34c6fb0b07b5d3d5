"""Pre-copy migration between two hosts (network namespaces, each with its own state root and
daemon, real gRPC, real CRIU pre-dumps and page servers).

Needs a kernel with soft-dirty page tracking (CONFIG_MEM_SOFT_DIRTY=y): ``criu pre-dump`` refuses
``track_mem`` without it. This project's own machines (kernel 6.18) lack it, so here the module
skips with the kernel's reason (tests/integration/test_live_migration.py proves the refusal);
on a kernel that has it, it proves:

- a 256 MiB memhog moves with ``--mode precopy``: its memory checksum is the same on the target,
  its counter goes on, no piece is left on either host (records, rounds, scratch);
- the pause is shorter than a cold migration of the same container in the same test (the final
  dump writes only the pages dirtied since the last round; memhog dirties a few pages per second).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.hosts import Host
from tests.integration.migration_lab import Lab

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "criu", "netns")]

SIZE_MIB = 256


def _soft_dirty_reason() -> str | None:
    """Why this host cannot pre-dump (the kernel's reason), or None when it can."""
    from runtime.host import supports_dirty_tracking

    if supports_dirty_tracking():
        return None
    from migrate.migration.precopy import local_refusal

    refused = local_refusal()
    return refused.reason if refused is not None else "no soft-dirty page tracking"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = _soft_dirty_reason()
    if reason is not None:
        pytest.skip(f"pre-copy needs soft-dirty page tracking: {reason}")
    if subprocess.run(["which", "gcc"], capture_output=True).returncode != 0:
        pytest.skip("the memhog workload needs gcc")
    with Lab.create(Path(tmp_path_factory.mktemp("precopy"))) as made:
        yield made


def migrate(lab: Lab, source: Host, target: Host, name: str, mode: str) -> dict:
    r = lab.remote(source, ["migrate", name, lab.addr(target), "--json", "--mode", mode], timeout=600)
    assert r.returncode == 0, r.stderr.decode(errors="replace") + r.stdout.decode(errors="replace")
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_precopy_256_mib_is_intact_and_pauses_less_than_cold(lab: Lab) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    name = "pre256"
    info = lab.run_memhog(a, name, SIZE_MIB)
    container_id = str(info["spec"]["container_id"])
    try:
        before = lab.report(a, name)
        assert before is not None
        digest = before[0]

        cold = migrate(lab, a, b, name, "cold")
        assert cold["mode"] == "cold"
        after_cold = lab.report(b, name)
        assert after_cold is not None and after_cold[0] == digest

        pre = migrate(lab, b, a, name, "precopy")
        assert pre["mode"] == "precopy"
        assert name not in lab.running_names(b), "the source copy must be gone after the commit"
        after_pre = lab.report(a, name)
        assert after_pre is not None and after_pre[0] == digest, "memory changed across the pre-copy migration"
        assert after_pre[1] > after_cold[1], "the counter must go on from where it was"
        lab.assert_counting(a, name)

        phases = pre["stats"]["phases_ms"]
        rounds = sorted(k for k in phases if k.startswith("precopy_round"))
        assert rounds, f"no pre-dump round in {phases}"
        # the first round carries the memory; the final dump only what was dirtied since
        assert pre["stats"]["bytes_on_wire"] >= SIZE_MIB * 2**20
        cold_ms, pre_ms = cold["stats"]["frozen_ms"], pre["stats"]["frozen_ms"]
        print(f"\n{SIZE_MIB} MiB pause: cold {cold_ms:.0f} ms, precopy {pre_ms:.0f} ms after {len(rounds)} rounds "
              f"({', '.join(f'{phases[k]:.0f}' for k in rounds)} ms); total cold {cold['stats']['total_ms']:.0f} ms, "
              f"precopy {pre['stats']['total_ms']:.0f} ms")
        assert pre_ms < cold_ms, f"pre-copy pause {pre_ms} ms is not below the cold pause {cold_ms} ms"
        assert lab.leftovers(b, name, container_id) == []
        left = [x for x in lab.leftovers(a, name, container_id) if "incoming" in x or "scratch" in x]
        assert left == [], left
    finally:
        a.cli(["rm", "-f", name])
        b.cli(["rm", "-f", name])
