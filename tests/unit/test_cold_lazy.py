"""When a cold target resumes with lazy pages from its own disk, and when it falls back (issue 17)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from migrate.migration import cold_lazy


class _Report:
    def __init__(self, **features: bool) -> None:
        self._features = features

    def features(self) -> dict[str, bool]:
        return dict(self._features)


@pytest.fixture
def features(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    found = {"lazy_pages": True, "lazy_pages_userns": True}
    monkeypatch.setattr("runtime.host.host_report", lambda: _Report(**found))
    return found


def _reason(mode: str = "cold", environ: dict[str, str] | None = None, **spec: Any) -> str | None:
    return cold_lazy.lazy_reason(mode, spec, environ or {})


ON = {"PYMIGRATE_COLD_LAZY": "1"}


def test_lazy_is_the_default(features: dict[str, bool]) -> None:
    assert _reason() is None
    assert _reason(environ=ON) is None
    assert _reason(environ=ON, volumes=[{"source": "/srv", "target": "/srv"}]) is None  # a bind mount: no volume to install


@pytest.mark.parametrize("value", ["0", "off", "no", "false", " OFF "])
def test_turned_off_by_the_environment(features: dict[str, bool], value: str) -> None:
    assert _reason(environ={"PYMIGRATE_COLD_LAZY": value}) == f"PYMIGRATE_COLD_LAZY={value}"


def test_only_cold_and_no_named_volumes(features: dict[str, bool]) -> None:
    assert _reason("precopy", environ=ON) == "a precopy migration"
    assert _reason(environ=ON, volumes=[{"name": "data", "target": "/data"}]) == "named volumes"


def test_falls_back_without_lazy_pages(features: dict[str, bool]) -> None:
    features["lazy_pages"] = False
    assert "no lazy pages on this host" in str(_reason(environ=ON))


def test_userns_needs_unprivileged_userfaultfd(features: dict[str, bool]) -> None:
    features["lazy_pages_userns"] = False
    assert _reason(environ=ON) is None  # no --userns: the restore's tasks are root on the host
    assert _reason(environ=ON, userns_size=65536) == "a --userns container and vm.unprivileged_userfaultfd is 0"


def test_a_full_restore_follows_a_failed_lazy_one_unless_it_would_fail_alike() -> None:
    from runtime.errors import Busy, ContainerError, ContainerExists, CriuError, CriuTimeout, InvalidSpec

    assert cold_lazy._retry_full(ContainerError("criu restore failed: Unable to map ANON_VMA: Cannot allocate memory"))
    assert cold_lazy._retry_full(CriuError("restore", "criu restore failed"))
    for same in (Busy("container web", "restore"), ContainerExists("name web is taken"), CriuTimeout("restore", 30.0),
                 InvalidSpec("name", "bad name")):
        assert not cold_lazy._retry_full(same), same


# --- the premap check: a lazy restore CRIU 4.1.1 cannot map is not tried ------------------------

GIB = 1 << 30
ANON = cold_lazy.VMA_AREA_REGULAR | cold_lazy.VMA_ANON_PRIVATE
FILE = cold_lazy.VMA_AREA_REGULAR | cold_lazy.VMA_FILE_PRIVATE
SHARED = cold_lazy.VMA_AREA_REGULAR | (1 << 8)  # VMA_ANON_SHARED: restored from its shmem, never premapped
MAP_PRIVATE_ANON = 0x22
HOST = {"ram_swap_bytes": 24 * GIB, "headroom_bytes": 11 * GIB}


def _vma(start_gib: float, size_gib: float, status: int = ANON, flags: int = MAP_PRIVATE_ANON) -> cold_lazy.Vma:
    start = int(start_gib * GIB)
    return cold_lazy.Vma(start=start, end=start + int(size_gib * GIB), flags=flags, status=status)


def _refusal(vmas: list[cold_lazy.Vma], mode: int) -> str | None:
    return cold_lazy.premap_refusal(vmas, cold_lazy.Overcommit(mode=mode, **HOST))


def test_the_heuristic_refuses_one_mapping_larger_than_ram_and_swap() -> None:
    """vm.overcommit_memory=0: each mmap on its own against MemTotal + SwapTotal (what mariadb's
    PROT_NONE reservation fails in the premap), however many smaller ones there are."""
    small = [_vma(i, 1) for i in range(1, 40)]  # 39 GiB in all, none above 24
    assert _refusal(small, 0) is None
    assert _refusal([_vma(100, 24)], 0) is None  # exactly RAM + swap passes, as the kernel's `pages > total`
    why = _refusal([*small, _vma(100, 8192)], 0)
    assert why is not None and "8192.0 GiB at 0x1900000000" in why and "vm.overcommit_memory=0" in why
    assert _refusal([_vma(100, 30, status=FILE)], 0) is not None  # a private file mapping is premapped too


def test_what_the_kernel_does_not_account_is_not_counted() -> None:
    assert _refusal([_vma(100, 8192, flags=MAP_PRIVATE_ANON | cold_lazy.MAP_NORESERVE)], 0) is None
    assert _refusal([_vma(100, 8192, flags=MAP_PRIVATE_ANON | cold_lazy.MAP_HUGETLB)], 0) is None
    assert _refusal([_vma(100, 8192, status=SHARED)], 0) is None
    assert _refusal([_vma(100, 8192, status=ANON | cold_lazy.VMA_EXT_PLUGIN)], 0) is None
    assert _refusal([_vma(100, 8192, status=cold_lazy.VMA_ANON_PRIVATE)], 0) is None  # not a regular area (vvar, ...)
    above = cold_lazy.Vma(start=cold_lazy.USER_SPACE_END, end=cold_lazy.USER_SPACE_END + 64 * GIB, flags=0, status=ANON)
    assert _refusal([above], 0) is None


def test_always_overcommit_refuses_nothing() -> None:
    assert _refusal([_vma(100, 8192), *(_vma(i, 1) for i in range(1, 40))], 1) is None


def test_strict_overcommit_counts_every_mapping_against_the_headroom() -> None:
    """vm.overcommit_memory=2: the premap commits all of them before any page is read; the
    commit limit's headroom decides, and MAP_NORESERVE does not exempt (the kernel ignores it)."""
    assert _refusal([_vma(i, 1) for i in range(1, 11)], 2) is None  # 10 GiB of 11
    why = _refusal([_vma(i, 1) for i in range(1, 13)], 2)  # 12 GiB
    assert why is not None and "12.0 GiB" in why and "11.0 GiB" in why and "vm.overcommit_memory=2" in why
    assert _refusal([_vma(100, 12, flags=MAP_PRIVATE_ANON | cold_lazy.MAP_NORESERVE)], 2) is not None


def test_read_overcommit(tmp_path: Path) -> None:
    (tmp_path / "sys/vm").mkdir(parents=True)
    (tmp_path / "sys/vm/overcommit_memory").write_text("2\n")
    (tmp_path / "meminfo").write_text("MemTotal:       24683784 kB\nMemFree:  1 kB\nSwapTotal:  1024 kB\n"
                                      "CommitLimit:    12341892 kB\nCommitted_AS:    1263284 kB\nHugePages_Total:       0\n")
    assert cold_lazy.read_overcommit(tmp_path) == cold_lazy.Overcommit(
        mode=2, ram_swap_bytes=(24683784 + 1024) * 1024, headroom_bytes=(12341892 - 1263284) * 1024)


def _mm_image(path: Path, vmas: list[cold_lazy.Vma]) -> None:
    """An mm-N.img as CRIU writes it: IMG_COMMON, MM's magic, one length-prefixed mm_entry."""
    import struct

    from runtime.criu import _pycriu_module

    magic, mm_pb2 = _pycriu_module("images/magic"), _pycriu_module("images/mm_pb2")
    entry = mm_pb2.mm_entry(mm_start_code=0, mm_end_code=0, mm_start_data=0, mm_end_data=0, mm_start_stack=0,
                            mm_start_brk=0, mm_brk=0, mm_arg_start=0, mm_arg_end=0, mm_env_start=0, mm_env_end=0,
                            exe_file_id=1)
    for v in vmas:
        entry.vmas.add(start=v.start, end=v.end, pgoff=0, shmid=0, prot=0, flags=v.flags, status=v.status, fd=-1)
    data = entry.SerializeToString()
    path.write_bytes(struct.pack("<III", magic.by_name["IMG_COMMON"], magic.by_name["MM"], len(data)) + data)


@pytest.mark.requires("pycriu")
def test_the_check_reads_the_dumped_mm_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = tmp_path / "proc"
    (proc / "sys/vm").mkdir(parents=True)
    (proc / "sys/vm/overcommit_memory").write_text("0\n")
    (proc / "meminfo").write_text("MemTotal: 4194304 kB\nSwapTotal: 0 kB\nCommitLimit: 2097152 kB\nCommitted_AS: 0 kB\n")
    images = tmp_path / "images"
    images.mkdir()
    _mm_image(images / "mm-1.img", [_vma(1, 1)])
    assert cold_lazy.dumped_vmas(images) == [_vma(1, 1)]
    assert cold_lazy.lazy_refusal(images, {}, proc) is None
    _mm_image(images / "mm-7.img", [_vma(1, 1), _vma(64, 16)])  # a second process with a 16 GiB reservation
    why = cold_lazy.lazy_refusal(images, {}, proc)
    assert why is not None and "16.0 GiB" in why and "(4.0 GiB; vm.overcommit_memory=0)" in why
    assert cold_lazy.lazy_refusal(images, {"PYMIGRATE_COLD_LAZY": "always"}, proc) is None  # tries it anyway
    (images / "mm-9.img").write_bytes(b"\x00")  # undecodable: tried (the fallback still catches a failure)
    assert cold_lazy.lazy_refusal(images, {}, proc) is None
    (images / "mm-9.img").unlink()
    monkeypatch.setattr(cold_lazy, "read_overcommit", lambda proc: (_ for _ in ()).throw(OSError("no /proc")))
    assert cold_lazy.lazy_refusal(images, {}, proc) is None


@pytest.mark.requires("pycriu")
def test_the_status_bits_are_criu_s() -> None:
    from pycriu.images import pb2dict

    bits = dict(pb2dict.mmap_status_map)
    for name in ("VMA_AREA_REGULAR", "VMA_FILE_PRIVATE", "VMA_ANON_PRIVATE", "VMA_AREA_AIORING", "VMA_AREA_SHSTK"):
        assert getattr(cold_lazy, name) == bits[name], name


def test_dev_mounts_are_bound_where_cold_restores_go_through_this_module(features: dict[str, bool]) -> None:
    from runtime.spec import Volume

    assert cold_lazy.binds_dev({}) is True
    assert cold_lazy.binds_dev({"PYMIGRATE_COLD_LAZY": "0"}) is False  # restore_container: it binds nothing
    features["lazy_pages"] = False
    assert cold_lazy.binds_dev({}) is False

    class Spec:
        volumes = (Volume("/srv", "/srv"),)

    assert cold_lazy.dev_external(Spec())
    Spec.volumes = (Volume("/var/lib/pm/volumes/db/_data", "/db", name="db"),)  # restored the usual way
    assert not cold_lazy.dev_external(Spec())


def test_the_answer_counts_the_time_after_the_restore_returned_as_running() -> None:
    import time

    from migrate.api import ContainerInfo, RestoreResult, RestoreStats

    result = RestoreResult(container=object.__new__(ContainerInfo), stats=RestoreStats(since_resume_ms=120.0))
    answered = cold_lazy.answered(result, time.monotonic() - 0.05)  # returned 50 ms ago
    assert 170.0 <= answered.stats.since_resume_ms < 1000.0
    assert answered.container is result.container and result.stats.since_resume_ms == 120.0
