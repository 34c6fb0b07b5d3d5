"""stats: cgroup v1/v2 counter parsing, /proc parsing, CPU % and the table (issue 14)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from runtime.cgroups import CgroupInfo, CgroupStats
from runtime.cgroups.stats import (
    BlockIo,
    block_io,
    inactive_file_bytes,
    parse_blkio_service_bytes,
    parse_io_stat,
)
from runtime.stats import ContainerStats, cpu_percent, parse_net_dev, parse_proc_io, sample

IO_STAT = """\
8:0 rbytes=1048576 wbytes=4096 rios=10 wios=1 dbytes=0 dios=0
253:1 rbytes=512 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0
"""

BLKIO = """\
8:0 Read 1048576
8:0 Write 4096
8:0 Sync 1052672
8:0 Async 0
8:0 Discard 0
8:0 Total 1052672
253:1 Read 512
253:1 Write 8192
253:1 Total 8704
Total 1061376
"""

NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    9999      10    0    0    0     0          0         0     9999      10    0    0    0     0       0          0
  eth0:    1500      12    0    0    0     0          0         0      700       7    0    0    0     0       0          0
  eth1:     100       1    0    0    0     0          0         0       50       1    0    0    0     0       0          0
"""


def test_io_stat_and_blkio_sum_read_and_write_over_devices() -> None:
    assert parse_io_stat(IO_STAT) == BlockIo(1048576 + 512, 4096 + 8192)
    assert parse_blkio_service_bytes(BLKIO) == BlockIo(1048576 + 512, 4096 + 8192)
    assert parse_io_stat("") == BlockIo(0, 0) and parse_blkio_service_bytes("Total 0\n") == BlockIo(0, 0)


def test_block_io_reads_the_hierarchies_the_container_has(tmp_path: Path) -> None:
    v2 = tmp_path / "unified" / "c1"
    v2.mkdir(parents=True)
    (v2 / "io.stat").write_text(IO_STAT)
    assert block_io(CgroupInfo("c1", {"unified": v2})) == BlockIo(1049088, 12288)
    blkio = tmp_path / "blkio" / "c1"
    blkio.mkdir(parents=True)
    (blkio / "blkio.throttle.io_service_bytes_recursive").write_text(BLKIO)
    bare = tmp_path / "bare"
    bare.mkdir()  # hybrid: cgroup2 without the io controller
    assert block_io(CgroupInfo("c1", {"unified": bare, "blkio": blkio})) == BlockIo(1049088, 12288)
    assert block_io(CgroupInfo("c1", {"unified": bare, "memory": tmp_path})) is None


def test_inactive_file_v1_total_and_v2(tmp_path: Path) -> None:
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.stat").write_text("cache 10\ninactive_file 5\ntotal_inactive_file 700\n")
    bare = tmp_path / "unified"
    bare.mkdir()
    assert inactive_file_bytes(CgroupInfo("c", {"unified": bare, "memory": v1})) == 700
    (bare / "memory.stat").write_text("anon 1\ninactive_file 300\n")
    assert inactive_file_bytes(CgroupInfo("c", {"unified": bare})) == 300
    assert inactive_file_bytes(CgroupInfo("c", {"pids": tmp_path})) == 0


def test_net_dev_skips_lo_and_proc_io() -> None:
    assert parse_net_dev(NET_DEV) == (1600, 750)
    assert parse_proc_io("rchar: 1\nwchar: 2\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n") == (4096, 8192)


def test_cpu_percent_is_per_core() -> None:
    prev = ContainerStats("a", "id", "running", read_at_s=10.0, cpu_usage_us=1_000_000)
    assert cpu_percent(prev, 1_500_000, 10.5) == pytest.approx(100.0)  # one core for 0.5 s
    assert cpu_percent(prev, 2_000_000, 10.5) == pytest.approx(200.0)
    assert cpu_percent(None, 2_000_000, 10.5) is None
    assert cpu_percent(prev, 2_000_000, 10.0) is None


class _Manager:
    def __init__(self, info: CgroupInfo) -> None:
        self._info = info

    def stats(self, name: str) -> CgroupStats:
        return CgroupStats(memory_current_bytes=10_000, memory_max_bytes=None, pids_current=2, cpu_usage_us=5_000)

    def info(self, name: str) -> CgroupInfo:
        return self._info

    def pids(self, name: str) -> list[int]:
        return [41, 42, 43]


def _rt(tmp_path: Path, status: str = "running", network: str = "bridge") -> SimpleNamespace:
    memory = tmp_path / "memory"
    memory.mkdir(exist_ok=True)
    (memory / "memory.stat").write_text("total_inactive_file 4000\n")
    c = SimpleNamespace(name="web", container_id="abc", status=status, is_live=status in ("running", "paused"),
                        spec=SimpleNamespace(cgroup_parent=None, network=network), state=SimpleNamespace(pid=41))
    manager = _Manager(CgroupInfo("abc", {"memory": memory}))
    return SimpleNamespace(container=lambda name: c, cgroups=lambda parent: manager)


def _proc(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    (proc / "41" / "net").mkdir(parents=True, exist_ok=True)
    (proc / "41" / "net" / "dev").write_text(NET_DEV)
    (proc / "41" / "io").write_text("read_bytes: 100\nwrite_bytes: 200\n")
    (proc / "42").mkdir(exist_ok=True)
    (proc / "42" / "io").write_text("read_bytes: 1\nwrite_bytes: 2\n")  # 43: exited meanwhile
    (proc / "meminfo").write_text("MemTotal:       1000 kB\nMemFree: 1 kB\n")
    return proc


def test_sample_from_a_hybrid_cgroup_falls_back_to_proc_io(tmp_path: Path) -> None:
    s = sample(_rt(tmp_path), "web", proc_root=_proc(tmp_path))
    assert (s.memory_usage_bytes, s.memory_limit_bytes) == (6000, 1_024_000)  # usage - inactive file; MemTotal
    assert s.memory_percent == pytest.approx(6000 / 1_024_000 * 100)
    assert (s.net_rx_bytes, s.net_tx_bytes, s.pids_current) == (1600, 750, 2)
    assert (s.block_read_bytes, s.block_write_bytes, s.block_io_source) == (101, 202, "proc")
    assert s.cpu_percent is None and s.cpu_usage_us == 5000


def test_sample_of_host_network_and_stopped_containers(tmp_path: Path) -> None:
    s = sample(_rt(tmp_path, network="host"), "web", proc_root=_proc(tmp_path))
    assert s.net_rx_bytes is None and s.memory_usage_bytes == 6000
    stopped = sample(_rt(tmp_path, status="exited"), "web", proc_root=_proc(tmp_path))
    assert (stopped.status, stopped.memory_usage_bytes, stopped.pids_current) == ("exited", None, None)


def test_stats_table_and_sizes() -> None:
    from migrate.cli.stats import binary_size, decimal_size, render_stats

    assert binary_size(1536) == "1.5KiB" and binary_size(32 << 20) == "32MiB" and binary_size(None) == "--"
    assert decimal_size(4096) == "4.1kB" and decimal_size(999) == "999B"
    s = ContainerStats("web", "0123456789abcdef", "running", 1.0, cpu_percent=12.345, memory_usage_bytes=1 << 20,
                       memory_limit_bytes=1 << 30, memory_percent=0.1, pids_current=3, net_rx_bytes=1000,
                       net_tx_bytes=0, block_read_bytes=0, block_write_bytes=0)
    lines = render_stats([s, ContainerStats("db", "fedcba9876543210", "exited", 1.0)]).splitlines()
    assert lines[0].startswith("CONTAINER ID   NAME   CPU %")
    assert lines[1].split()[:4] == ["0123456789ab", "web", "12.35%", "1MiB"] and lines[1].endswith("3")
    assert lines[2].split()[:3] == ["fedcba987654", "db", "--"]
