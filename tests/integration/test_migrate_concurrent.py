"""Ten cold migrations at once between two real daemons (issue 17: concurrent migrations).

Two hosts (network namespaces), daemons over TCP, real CRIU; ten memhogs (half text, half random
memory) on A, each migrated A -> B from its own thread and gRPC client, all started together.
Every call succeeds; each container then runs exactly once, on B, and nowhere on A; its memory
checksum is the one it had on A and its counter goes on; A keeps no pieces of them.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from migrate.api import MigrateOptions
from migrate.remote.client import RemoteEngine
from tests.integration.migration_lab import Lab, _name, _status

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay"),
]

COUNT = 10
SIZE_MIB = 16


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab.create(tmp_path) as made:
        yield made


def _migrate_all(lab: Lab, names: list[str]) -> tuple[dict[str, object], dict[str, BaseException]]:
    a, b = lab.hosts[0], lab.hosts[1]
    results: dict[str, object] = {}
    errors: dict[str, BaseException] = {}
    go = threading.Barrier(len(names))

    def one(name: str) -> None:
        with RemoteEngine(lab.addr(a), insecure=True) as client:
            go.wait(60)
            try:
                results[name] = client.migrate(name, MigrateOptions(dest=lab.addr(b)))
            except BaseException as exc:  # asserted below, with the others' outcome
                errors[name] = exc

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not any(t.is_alive() for t in threads), "a migration did not return within 10 minutes"
    return results, errors


def test_ten_concurrent_cold_migrations_all_land_once_with_their_memory(lab: Lab) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    names = [f"hog{i}" for i in range(COUNT)]
    before = {}
    for name in names:
        lab.run_memhog(a, name, SIZE_MIB, text_percent=50)
        before[name] = lab.report(a, name)
        assert before[name] is not None, f"{name} does not answer on A"
    ids = {name: lab.inspect(a, name)["spec"]["container_id"] for name in names}

    results, errors = _migrate_all(lab, names)
    assert not errors, f"failed migrations: {errors}"
    assert sorted(results) == names

    on_b = Counter(_name(c) for c in lab.ps(b))
    assert all(on_b[name] == 1 for name in names), f"records on B: {dict(on_b)}"
    assert all(_status(c) == "running" for c in lab.ps(b)), lab.ps(b)
    assert not [_name(c) for c in lab.ps(a)], f"still on A: {lab.ps(a)}"
    for name in names:
        after = lab.report(b, name)
        assert after is not None, f"{name} does not answer on B"
        assert after[0] == before[name][0], f"{name}: memory changed ({before[name][0]} -> {after[0]})"
        assert after[1] >= before[name][1], f"{name}: counter went back ({before[name][1]} -> {after[1]})"
        assert lab.leftovers(a, name, ids[name]) == [], f"{name} left pieces on A"
    lab.assert_counting(b, names[0])
    lab.assert_counting(b, names[-1])
