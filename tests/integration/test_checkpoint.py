"""Checkpoint and restore with real CRIU: what a process had is what it has after restore.

Each test runs a workload in a busybox (or memhog) container, checkpoints it through the CLI (or
LocalEngine for the 20-cycle loop), restores it, and checks state the process could not fake:
a shell variable counting on (not from zero), a file offset, a deleted-but-open file, a pipe's
two ends, every member of a process tree (same pids in the container's pid namespace, in the
container's cgroup), /dev/shm, a listening TCP socket, 256 MiB of random memory (checksum).
Files are read from the host through the container's overlay (merged dir; upper dir once the
tree is dead), so the checks do not depend on ``exec``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

from tests.integration.workloads import (  # noqa: F401  (fixtures)
    MEMHOG_IMAGE,
    container_file,
    import_image,
    init_pid,
    inspect,
    memhog_binary,
    memhog_command,
    memhog_image,
    memhog_report,
    memhog_tar,
    read_int,
    wait_for,
    wait_memhog_ready,
)
from tests.integration.hosts import make_hosts, two_hosts  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "criu", "pycriu", "busybox")]

# /tmp/cnt holds the latest value; /tmp/hist every value (appended), so a restart from zero or a
# lost step shows as a break in the sequence.
COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/cnt; echo $i >> /tmp/hist; sleep 0.02; done"


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr.decode(errors='replace')}"
    return r.stdout.decode()


def upper_file(root: Path, name: str, path: str) -> Path:
    """``path`` in the container's upper layer (readable after the tree was killed by a dump)."""
    from runtime.upperfs import Layout

    return Layout.of(Path(inspect(root, name).bundle_dir)).upper / path.lstrip("/")


def final_value(root: Path, name: str, hist: str = "/tmp/hist") -> int:
    """The last value a (now dead or frozen) workload appended to ``hist``. Not the /tmp/cnt
    file: the dump may catch the shell between its truncate and its write (an empty file)."""
    values = consecutive(upper_file(root, name, hist))
    assert values, f"{name}: nothing in {hist} at checkpoint time"
    return values[-1]


def counter(root: Path, name: str, path: str = "/tmp/cnt") -> Callable[[], int | None]:
    return lambda: read_int(container_file(root, name, path))


def checkpoint(pm, name: str, *flags: str) -> str:  # noqa: ANN001
    return ok(pm("checkpoint", name, *flags)).strip().splitlines()[0]


def status(pm, name: str) -> str:  # noqa: ANN001
    for c in json.loads(ok(pm("ps", "-a", "--json"))):
        if c["spec"]["name"] == name:
            return str(c["state"]["status"])
    return "absent"


def container_tree(root: Path, name: str) -> dict[int, tuple[str, int]]:
    """{pid in the container's pid namespace: (comm, parent's pid there)} of every process in the
    container's cgroup (read from the host: NSpid and PPid in /proc/PID/status)."""
    cg = Path(inspect(root, name).cgroup["unified"])
    host_to_ns: dict[int, int] = {}
    raw = {}
    for host_pid in map(int, (cg / "cgroup.procs").read_text().split()):
        try:
            status_text = Path(f"/proc/{host_pid}/status").read_text()
            comm = Path(f"/proc/{host_pid}/comm").read_text().strip()
        except OSError:
            continue  # a short-lived child that just exited
        fields = dict(line.split(":", 1) for line in status_text.splitlines() if ":" in line)
        host_to_ns[host_pid] = int(fields["NSpid"].split()[-1])
        raw[host_pid] = (comm, int(fields["PPid"]))
    return {host_to_ns[h]: (comm, host_to_ns.get(ppid, 0)) for h, (comm, ppid) in raw.items()}


def long_lived_shells(root: Path, name: str) -> set[int]:
    """The container's init and its direct ``sh`` children (their forks for ``sleep`` come and go)."""
    return {pid for pid, (comm, parent) in container_tree(root, name).items() if comm == "sh" and (pid == 1 or parent == 1)}


def consecutive(path: Path) -> list[int]:
    """The values a workload appended to ``path``; they must be 1, 2, 3, ... without a break."""
    lines = path.read_text().split("\n")[:-1]  # the last piece may still be being written
    values = [int(v) for v in lines]
    assert values == list(range(1, len(values) + 1)), f"{path.name}: the sequence breaks: {_first_break(values)}"
    return values


def _first_break(values: list[int]) -> str:
    for i, v in enumerate(values):
        if v != i + 1:
            return f"value #{i + 1} is {v} (after {values[max(0, i - 3):i]})"
    return "no break"


def continues_after(get: Callable[[], int | None], final: int, what: str, hist: Path) -> int:
    """Wait for a value past ``final``; the history must run on from it (no restart, no gap)."""
    value = wait_for(lambda: (v := get()) is not None and v > final and v, 20, f"{what} to move past {final}")
    # the workload writes the counter file before it appends to the history: the value past
    # ``final`` may be seen before its history line (CI, load ~3: "history has 29 values" once)
    wait_for(lambda: len(consecutive(hist)) > final, 5, f"{what}: history to move past {final}")
    return value


@pytest.fixture
def drop_checkpoints(pm_root: Path):  # noqa: ANN201
    yield
    from migrate.archive.store import CheckpointStore
    from runtime.config import Paths

    store = CheckpointStore(Paths(pm_root))
    for c in store.list():
        store.remove(c.checkpoint_id)


pytestmark.append(pytest.mark.usefixtures("rt", "drop_checkpoints"))


# -- counters ---------------------------------------------------------------------------------------


def test_counter_continues_and_without_leave_running_the_container_exits(pm, pm_root: Path) -> None:  # noqa: ANN001
    name = unique("cnt")
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", COUNTER))
    wait_for(lambda: (counter(pm_root, name)() or 0) >= 30, 20, "counter to reach 30")

    cid = checkpoint(pm, name)
    assert status(pm, name) == "exited"
    final = final_value(pm_root, name)
    assert final >= 30
    assert cid in ok(pm("checkpoint", "ls"))

    assert ok(pm("restore", cid)).strip() == name
    assert status(pm, name) == "running"
    continues_after(counter(pm_root, name), final, "counter", container_file(pm_root, name, "/tmp/hist"))


def test_twenty_cycles_in_place_keep_counting(pm_root: Path) -> None:
    from migrate.api import CheckpointOptions, RestoreOptions, RunOptions
    from migrate.engine import LocalEngine

    engine = LocalEngine(pm_root)
    name = unique("cycles")
    engine.run(RunOptions(image="busybox", command=("sh", "-c", COUNTER), name=name))
    get = counter(pm_root, name)
    previous = wait_for(lambda: (v := get()) and v >= 5 and v, 20, "counter to start")
    container_id = engine.inspect(name).spec.container_id
    for cycle in range(20):
        result = engine.checkpoint(name, CheckpointOptions())
        assert engine.inspect(name).state.status == "exited"
        final = final_value(pm_root, name)
        assert final >= previous, f"cycle {cycle}: counter went back from {previous} to {final}"
        restored = engine.restore(RestoreOptions(checkpoint_id=result.checkpoint_id))
        assert restored.container.spec.container_id == container_id
        previous = continues_after(get, final, f"counter in cycle {cycle}", container_file(pm_root, name, "/tmp/hist"))
        engine.checkpoint_remove(result.checkpoint_id)
    assert previous >= 25


# -- what a process holds ------------------------------------------------------------------------------


def _fd_pos(pid: int, fd: int) -> int:
    for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("pos:"):
            return int(line.split()[1])
    raise AssertionError(f"no pos in /proc/{pid}/fdinfo/{fd}")


def test_file_open_for_writing_keeps_offset_and_content(pm, pm_root: Path) -> None:  # noqa: ANN001
    name = unique("offset")
    # O_WRONLY|O_TRUNC, not O_APPEND: a lost offset would overwrite the start or leave a hole.
    script = "i=0; exec 3>/tmp/log; while true; do i=$((i+1)); echo line$i >&3; sleep 0.02; done"
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", script))
    log_file = container_file(pm_root, name, "/tmp/log")
    wait_for(lambda: log_file.exists() and log_file.stat().st_size > 200, 20, "log to grow")

    checkpoint(pm, name)
    before = upper_file(pm_root, name, "/tmp/log").read_bytes()
    ok(pm("restore", name_checkpoint(pm, name)))
    wait_for(lambda: log_file.stat().st_size > len(before) + 50, 20, "log to grow after restore")

    pid = init_pid(pm_root, name)
    wait_for(lambda: _fd_pos(pid, 3) == log_file.stat().st_size, 5, "fd 3 offset == file size")
    after = log_file.read_bytes()
    assert after.startswith(before), "the restored file does not start with the checkpointed content"
    assert b"\0" not in after
    numbers = [int(line[4:]) for line in after.decode().splitlines()]
    assert numbers == list(range(1, len(numbers) + 1)), "lines are not consecutive: offset or counter lost"


def name_checkpoint(pm, name: str) -> str:  # noqa: ANN001
    """The newest checkpoint of container ``name``."""
    items = [c for c in json.loads(ok(pm("checkpoint", "ls", "--json"))) if c["container_name"] == name]
    assert items, f"no checkpoint of {name}"
    return str(max(items, key=lambda c: c["created_at"])["checkpoint_id"])


def test_deleted_files_stay_deleted(pm, pm_root: Path) -> None:  # noqa: ANN001
    name = unique("deleted")
    script = (
        "rm /etc/group; echo u > /tmp/upper-file; rm /tmp/upper-file; "
        "echo ghost-data > /tmp/ghost; exec 4</tmp/ghost; rm /tmp/ghost; "
        "touch /tmp/ready; while true; do sleep 0.05; done"
    )
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", script))
    wait_for(lambda: container_file(pm_root, name, "/tmp/ready").exists(), 20, "workload ready")

    cid = checkpoint(pm, name)
    ok(pm("restore", cid))
    merged = container_file(pm_root, name, "/")
    assert not (merged / "etc/group").exists(), "a deleted lower-layer file came back"
    assert (merged / "etc/passwd").exists()
    whiteout = os.lstat(upper_file(pm_root, name, "/etc/group"))
    assert os.major(whiteout.st_rdev) == 0 and os.minor(whiteout.st_rdev) == 0, "no whiteout in the restored upper layer"
    assert not (merged / "tmp/upper-file").exists(), "a deleted upper file came back"
    assert not (merged / "tmp/ghost").exists(), "an open deleted file reappeared in the tree"
    pid = init_pid(pm_root, name)
    assert os.readlink(f"/proc/{pid}/fd/4").endswith("(deleted)")
    with open(f"/proc/{pid}/fd/4", "rb") as f:
        assert f.read() == b"ghost-data\n", "the open deleted file lost its content"


def test_pipe_between_two_processes_keeps_working(pm, pm_root: Path) -> None:  # noqa: ANN001
    name = unique("pipe")
    script = (
        "i=0; while true; do i=$((i+1)); echo $i; sleep 0.02; done | "
        "while read n; do echo $n > /tmp/last; echo $n >> /tmp/hist; done"
    )
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", script))
    get = counter(pm_root, name, "/tmp/last")
    wait_for(lambda: (get() or 0) >= 20, 20, "numbers through the pipe")

    cid = checkpoint(pm, name)
    final = final_value(pm_root, name)
    ok(pm("restore", cid))
    # Values reach /tmp/last only through the pipe; the next one proves both ends came back.
    continues_after(get, final, "numbers through the pipe", container_file(pm_root, name, "/tmp/hist"))


def test_process_tree_comes_back_whole_in_the_containers_cgroup(pm, pm_root: Path) -> None:  # noqa: ANN001
    name = unique("tree")
    children = 5
    script = (
        f"for k in $(seq {children}); do (i=0; while true; do i=$((i+1)); echo $i > /tmp/c$k; echo $i >> /tmp/h$k; sleep 0.03; done) & done; wait"
    )
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", script))
    for k in range(1, children + 1):
        wait_for(lambda k=k: (counter(pm_root, name, f"/tmp/c{k}")() or 0) >= 5, 20, f"child {k}")
    shells_before = long_lived_shells(pm_root, name)
    assert len(shells_before) == children + 1

    cid = checkpoint(pm, name)
    finals = {k: final_value(pm_root, name, f"/tmp/h{k}") for k in range(1, children + 1)}
    ok(pm("restore", cid))
    for k, final in finals.items():
        continues_after(counter(pm_root, name, f"/tmp/c{k}"), final, f"child {k}", container_file(pm_root, name, f"/tmp/h{k}"))
    # Same pids in the container's pid namespace, and every one of them in the container's cgroup.
    shells_after = long_lived_shells(pm_root, name)
    assert shells_after == shells_before


def test_dev_shm_contents_survive(pm, pm_root: Path) -> None:  # noqa: ANN001
    name = unique("shm")
    script = (
        "head -c 1048576 /dev/urandom > /dev/shm/blob; md5sum /dev/shm/blob | cut -d' ' -f1 > /tmp/sum; "
        "while true; do sleep 0.05; done"
    )
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", script))
    sum_file = container_file(pm_root, name, "/tmp/sum")
    wait_for(lambda: sum_file.exists() and len(sum_file.read_text().strip()) == 32, 20, "/dev/shm blob written")
    expected = sum_file.read_text().strip()

    cid = checkpoint(pm, name)
    ok(pm("restore", cid))
    out = ok(pm("exec", name, "md5sum", "/dev/shm/blob"))
    assert out.split()[0] == expected


def _http_get(ip: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{ip}:{port}/index.html", timeout=5) as resp:
        return resp.read().decode()


def test_tcp_listener_answers_after_restore(pm, pm_root: Path) -> None:  # noqa: ANN001
    name = unique("tcp")
    token = secrets.token_hex(8)
    script = f"mkdir -p /www && echo {token} > /www/index.html && exec httpd -f -p 8080 -h /www"
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", script))
    ip = inspect(pm_root, name).spec.ip
    assert wait_for(lambda: _try_get(ip, 8080), 20, "httpd to answer").strip() == token

    cid = checkpoint(pm, name)
    with pytest.raises(OSError):
        _http_get(ip, 8080)  # nobody listens while the container is checkpointed
    ok(pm("restore", cid))
    # The restored listening socket answers at once (no retry loop: the listener is restored, not re-made).
    assert _http_get(ip, 8080).strip() == token
    assert inspect(pm_root, name).spec.ip == ip


def _try_get(ip: str, port: int) -> str | None:
    try:
        return _http_get(ip, port)
    except OSError:
        return None


def test_memhog_256_mib_keeps_its_memory(pm, pm_root: Path, memhog_image: str) -> None:  # noqa: ANN001
    name = unique("memhog")
    ok(pm("run", "-d", "--name", name, memhog_image, *memhog_command(256)))
    checksum, count = wait_memhog_ready(pm_root, name)

    cid = checkpoint(pm, name)
    ok(pm("restore", cid, timeout=120))
    checksum_after, count_after = memhog_report(pm_root, name)
    assert checksum_after == checksum, "memory content changed across checkpoint/restore"
    assert count_after >= count, f"counter restarted: {count} before, {count_after} after"


# -- export, import, leave running, restore as a copy ----------------------------------------------------


def test_export_on_one_host_import_on_another(two_hosts, memhog_tar: Path, tmp_path: Path) -> None:  # noqa: ANN001
    a, b = two_hosts
    for h in (a, b):
        ok(h.cli(["image", "import", MEMHOG_IMAGE, str(memhog_tar)]))
    name = unique("moved")
    ok(a.cli(["run", "-d", "--name", name, MEMHOG_IMAGE, *memhog_command(64)]))
    checksum, count = wait_memhog_ready(a.root, name)
    ip = inspect(a.root, name).spec.ip

    archive = tmp_path / "moved.pma"
    assert ok(a.cli(["checkpoint", name, "--export", str(archive)])).strip() == str(archive)
    assert archive.stat().st_size > 16 << 20  # 64 MiB of random pages do not compress
    assert [p.name for p in archive.parent.iterdir()] == ["moved.pma"]  # no temp file left beside it
    assert not json.loads(ok(a.cli(["checkpoint", "ls", "--json"]))), "--export must not keep a local checkpoint"

    assert ok(b.cli(["restore", "--import", str(archive)])).strip() == name
    info = inspect(b.root, name)
    assert info.state.status == "running" and info.spec.ip == ip
    checksum_after, count_after = memhog_report(b.root, name)
    assert checksum_after == checksum
    assert count_after >= count
    assert not any((b.root / "tmp").iterdir()), "import scratch left in ROOT/tmp"


def test_leave_running_then_restore_a_second_independent_copy(pm, pm_root: Path) -> None:  # noqa: ANN001
    name, copy = unique("orig"), unique("copy")
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", COUNTER))
    get = counter(pm_root, name)
    wait_for(lambda: (get() or 0) >= 20, 20, "counter to reach 20")

    cid = checkpoint(pm, name, "--leave-running")
    assert status(pm, name) == "running"
    at_checkpoint = get() or 0
    wait_for(lambda: (get() or 0) > at_checkpoint + 5, 10, "original to keep counting after --leave-running")

    orig = inspect(pm_root, name)
    free_ip = orig.spec.ip.rsplit(".", 1)[0] + ".213"
    ok(pm("restore", cid, "--name", copy, "--ip", free_ip))
    dup = inspect(pm_root, copy)
    assert dup.state.status == "running"
    assert dup.spec.ip == free_ip and dup.spec.container_id != orig.spec.container_id
    assert dup.cgroup["unified"] != orig.cgroup["unified"]
    get_copy = counter(pm_root, copy)
    first = wait_for(lambda: get_copy(), 10, "copy's counter")
    original_now = wait_for(lambda: get(), 10, "original's counter")  # None while mid-rewrite
    assert first < original_now, "the copy must start from the checkpoint, not from the original's present"
    wait_for(lambda: (get_copy() or 0) > first + 5, 10, "copy to count")

    # Each tree lives in its own cgroup; no process of one shows up in the other's.
    procs = lambda info: set((Path(info.cgroup["unified"]) / "cgroup.procs").read_text().split())  # noqa: E731
    assert procs(orig).isdisjoint(procs(dup)) and procs(dup)
    # Independent: removing the original leaves the copy running and counting.
    ok(pm("rm", "-f", name))
    now = get_copy() or 0
    wait_for(lambda: (get_copy() or 0) > now + 5, 10, "copy to keep counting after the original is gone")
    assert status(pm, copy) == "running"


def _icmp_checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def _ping(ip: str, timeout_s: float = 3.0) -> bool:
    """One ICMP echo from the host (the bridge's gateway address) to ``ip``: answered in time?"""
    ident, body = secrets.randbelow(0xFFFF), b"pymigrate-mac-ping"
    head = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.sendto(struct.pack("!BBHHH", 8, 0, _icmp_checksum(head + body), ident, 1) + body, (ip, 0))
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                packet, (src, _) = s.recvfrom(2048)
            except socket.timeout:
                return False
            kind, _code, _sum, got_id, _seq = struct.unpack("!BBHHH", packet[(packet[0] & 0x0F) * 4:][:8])
            if kind == 0 and got_id == ident and src == ip:
                return True
    return False


def _eth0_mac(pm, name: str) -> str:  # noqa: ANN001
    return ok(pm("exec", name, "cat", "/sys/class/net/eth0/address")).strip()


def test_copy_under_another_address_gets_its_own_mac_and_both_answer(pm, pm_root: Path) -> None:  # noqa: ANN001
    name, copy = unique("macorig"), unique("maccopy")
    ok(pm("run", "-d", "--name", name, "busybox", "sh", "-c", COUNTER))
    ip = inspect(pm_root, name).spec.ip
    mac = _eth0_mac(pm, name)
    assert mac == inspect(pm_root, name).spec.mac  # a random one, recorded (runtime.network.random_mac)
    assert wait_for(lambda: _ping(ip), 10, "original to answer ping")

    cid = checkpoint(pm, name, "--leave-running")
    copy_ip = ip.rsplit(".", 1)[0] + ".214"
    ok(pm("restore", cid, "--name", copy, "--ip", copy_ip))
    copy_mac = _eth0_mac(pm, copy)
    assert copy_mac == inspect(pm_root, copy).spec.mac != mac
    assert _eth0_mac(pm, name) == mac
    # Both answer at their own address, again and again (a shared MAC sent the original's frames
    # to whichever port the bridge learnt it on last).
    for _ in range(5):
        assert _ping(ip), f"original {ip} does not answer beside its copy"
        assert _ping(copy_ip), f"copy {copy_ip} does not answer"
    ok(pm("rm", "-f", copy))

    # A restore at the same address keeps the MAC it was dumped with.
    cid = checkpoint(pm, name)
    ok(pm("restore", cid))
    assert inspect(pm_root, name).spec.mac == mac
    assert _eth0_mac(pm, name) == mac
    assert _ping(ip), f"restored {ip} does not answer"
