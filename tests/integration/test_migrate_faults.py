"""Migration faults between two hosts (network namespaces, daemons over TCP, real CRIU).

Each fault must leave the container running on exactly one host — the source, since every fault
here strikes before the point of no return — with nothing left on the target (no container
record, cgroup, mount, veth, lease, ROOT/run/incoming record or ROOT/tmp scratch), the source
thawed (its counter advances), and the migrate command failing with an error that names the phase.

Faults: the target daemon SIGKILLed mid-transfer (its restart reconciles); the link cut
mid-transfer; the target's restore failing (its CRIU made to fail); the target's disk full (state
root on a small tmpfs); a byte flipped in transit (a man-in-the-middle TCP proxy that parses
HTTP/2 frames and flips one byte inside a DATA frame); the source daemon SIGKILLed mid-transfer
and restarted (migrate/migration/recovery.py thaws the frozen container at start).
"""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.hosts import Host, pymigrate_command
from tests.integration.migration_lab import Lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "criu", "pycriu", "netns", "busybox", "overlay"),
]

PHASE_RE = re.compile(r"phase[: ]+([a-z]+)")


@pytest.fixture(scope="module")
def lab_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("migrate-faults"))


@pytest.fixture
def lab(lab_workdir: Path) -> Iterator[Lab]:
    with Lab.create(lab_workdir) as made:
        yield made


# --- helpers ----------------------------------------------------------------------------------


def scratch_bytes(host: Host) -> int:
    """Bytes allocated under the host's ROOT/tmp (where an incoming archive is unpacked). Allocated,
    not apparent: a staged upper-layer image is a sparse file of 16 GiB (runtime/upperfs.py)."""
    total = 0
    # os.walk, not rglob: the stage dir is renamed and removed while we count, and rglob raises
    # on a directory that vanished between listing and opening it; os.walk skips it
    for dirpath, _dirs, files in os.walk(host.root / "tmp"):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_blocks * 512
    return total


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.05) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


def wait_transfer(target: Host, proc: subprocess.Popen, min_bytes: int, timeout_s: float = 120) -> None:
    """Until at least ``min_bytes`` of the archive have landed in the target's scratch dir."""

    def landed() -> bool:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"migration ended before the fault ({proc.returncode}): {out.decode()} {err.decode()}")
        return scratch_bytes(target) >= min_bytes

    wait_until(landed, timeout_s, f"{min_bytes} bytes on host {target.letter}", interval_s=0.02)


def finish_failed(proc: subprocess.Popen, timeout_s: float = 180) -> str:
    """The migrate command's stderr; asserts it failed and named a phase."""
    out, err = proc.communicate(timeout=timeout_s)
    text = err.decode() + out.decode()
    assert proc.returncode != 0, f"migration was expected to fail: {text}"
    assert PHASE_RE.search(text), f"the error does not name the phase: {text}"
    return text


def _daemon_log_tail(host: Host) -> str:
    for p in (host.root / "run" / "daemon.log", host.workdir / "daemon.log"):
        if p.exists():
            return "\n".join(p.read_text(errors="replace").splitlines()[-25:])
    return "(no daemon log)"


def failed_phase(text: str) -> str:
    m = PHASE_RE.search(text)
    assert m
    return m.group(1)


def assert_only_on(lab: Lab, here: Host, there: Host, name: str, container_id: str, *, settle_s: float = 60) -> None:
    """``name`` runs (and counts) on ``here`` only; ``there`` holds no piece of it; ``here``
    holds no scratch and no migration records."""
    assert name in lab.running_names(here), f"{name} is not running on host {here.letter}: {lab.ps(here)}"
    lab.assert_counting(here, name)
    wait_until(lambda: not lab.leftovers(there, name, container_id), settle_s, f"host {there.letter} to be clean: {lab.leftovers(there, name, container_id)} DAEMONLOG: {_daemon_log_tail(there)}")
    assert lab.leftovers(there, name, container_id) == []
    assert name not in lab.running_names(there)
    source_extra = [p for p in lab.leftovers(here, name, container_id) if p.startswith(("scratch", "incoming"))]
    assert source_extra == [], source_extra
    outgoing = here.root / "run" / "outgoing"
    assert not outgoing.is_dir() or not [p for p in outgoing.iterdir() if p.suffix == ".json"]


def memhog(lab: Lab, host: Host, name: str, size_mib: int) -> str:
    info = lab.run_memhog(host, name, size_mib)
    return str(info["spec"]["container_id"])


class BitFlipProxy:
    """A TCP proxy in the root namespace (on the hosts' bridge address) between the source
    daemon and the target daemon. Client-to-server bytes are parsed as HTTP/2 frames (the
    24-byte preface, then 9-byte frame headers); once ``after_bytes`` have passed, one byte in
    the middle of the next large DATA frame is flipped — inside a chunk's payload, so the
    framing stays intact and only the data checks can notice. Server-to-client bytes pass as is.
    """

    PREFACE = 24

    def __init__(self, listen_host: str, upstream: tuple[str, int], after_bytes: int) -> None:
        self.upstream = upstream
        self.after_bytes = after_bytes
        self.flipped: tuple[int, int] | None = None  # (stream offset, frame length)
        self._sock = socket.create_server((listen_host, 0))
        self.address = f"{listen_host}:{self._sock.getsockname()[1]}"
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._conns += [client, server]
            for fn, args in ((self._up, (client, server)), (self._down, (server, client))):
                t = threading.Thread(target=fn, args=args, daemon=True)
                t.start()
                self._threads.append(t)

    @staticmethod
    def _recv_exact(sock: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            part = sock.recv(n - len(buf))
            if not part:
                raise EOFError
            buf += part
        return bytes(buf)

    def _up(self, src: socket.socket, dst: socket.socket) -> None:
        passed = 0
        try:
            dst.sendall(self._recv_exact(src, self.PREFACE))
            passed += self.PREFACE
            while True:
                header = self._recv_exact(src, 9)
                length = int.from_bytes(header[:3], "big")
                frame_type = header[3]
                payload = bytearray(self._recv_exact(src, length))
                if self.flipped is None and frame_type == 0 and length >= 4096 and passed >= self.after_bytes:
                    payload[length // 2] ^= 0x5A
                    self.flipped = (passed + 9 + length // 2, length)
                dst.sendall(header + payload)
                passed += 9 + length
        except (EOFError, OSError):
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _down(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closing = True
        self._sock.close()
        for s in self._conns:
            try:
                s.close()
            except OSError:
                pass


# --- faults -----------------------------------------------------------------------------------


def test_target_daemon_killed_mid_transfer(lab: Lab) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    cid = memhog(lab, a, "victim", 512)
    proc = lab.migrate_popen(a, b, "victim")
    wait_transfer(b, proc, 64 << 20)
    b.kill_daemon()
    text = finish_failed(proc)
    print(text)
    assert failed_phase(text) in ("dump", "transfer", "restore"), text
    # the source rolled back at once: thawed and counting, no copy anywhere else
    lab.assert_counting(a, "victim")
    lab.start_daemon(b)  # its reconcile removes what the killed daemon left
    assert_only_on(lab, a, b, "victim", cid)


def test_link_cut_mid_transfer(lab: Lab) -> None:
    cut_link_mid_transfer(lab)


def cut_link_mid_transfer(lab: Lab, *migrate_args: str, text_percent: int = 0) -> None:
    """A 512 MiB memhog's migration A -> B with the target's link cut once 64 MiB arrived: the
    migration fails in dump or restore, the source keeps counting, and the target lets go."""
    a, b = lab.hosts[0], lab.hosts[1]
    cid = str(lab.run_memhog(a, "victim", 512, text_percent=text_percent)["spec"]["container_id"])
    veth = f"pmh{lab.hosts.tag}{b.letter}"  # the target's cable, in the root namespace
    proc = lab.migrate_popen(a, b, "victim", *migrate_args)
    wait_transfer(b, proc, 64 << 20)
    subprocess.run(["ip", "link", "set", veth, "down"], check=True)
    try:
        text = finish_failed(proc, timeout_s=120)
        print(text)
        assert failed_phase(text) in ("dump", "restore"), text
        lab.assert_counting(a, "victim")
    finally:
        subprocess.run(["ip", "link", "set", veth, "up"], check=True)
    # the target notices the broken stream once its packets flow again, and drops the reservation
    assert_only_on(lab, a, b, "victim", cid, settle_s=60)


def test_target_restore_fails(lab: Lab, lab_workdir: Path) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    # the target's CRIU answers everything but a restore (swrk) with the real CRIU
    wrapper = lab_workdir / "criu-no-restore"
    wrapper.write_text('#!/bin/sh\nif [ "$1" = swrk ]; then echo "criu wrapper: restore refused" >&2; exit 1; fi\nexec /usr/local/sbin/criu "$@"\n')
    wrapper.chmod(0o755)
    b.stop_daemon()
    lab.start_daemon(b, env={"PYMIGRATE_CRIU": str(wrapper)})
    cid = memhog(lab, a, "victim", 64)
    proc = lab.migrate_popen(a, b, "victim")
    text = finish_failed(proc)
    print(text)
    assert failed_phase(text) == "restore", text
    assert_only_on(lab, a, b, "victim", cid, settle_s=10)


def test_target_disk_full(lab_workdir: Path) -> None:
    with Lab.create(lab_workdir, tmpfs_mib={1: 64}) as lab:
        a, b = lab.hosts[0], lab.hosts[1]
        cid = memhog(lab, a, "victim", 256)
        proc = lab.migrate_popen(a, b, "victim")
        text = finish_failed(proc)
        print(text)
        assert failed_phase(text) in ("dump", "restore"), text
        assert "space" in text, text
        assert_only_on(lab, a, b, "victim", cid, settle_s=10)


def test_corrupted_chunk_is_refused(lab: Lab) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    cid = memhog(lab, a, "victim", 64)
    proxy = BitFlipProxy(lab.hosts.gateway, (b.address, 7443), after_bytes=8 << 20)
    try:
        proc = a.popen(
            [*pymigrate_command(), "--host", lab.addr(a), "--insecure", "migrate", "victim", proxy.address],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        text = finish_failed(proc)
        print(text, proxy.flipped)
    finally:
        proxy.close()
    assert proxy.flipped is not None, "the proxy never saw a large DATA frame"
    assert "checksum mismatch" in text, text
    assert failed_phase(text) in ("dump", "restore"), text
    assert_only_on(lab, a, b, "victim", cid, settle_s=10)


def test_source_daemon_killed_mid_transfer_and_restarted(lab: Lab) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    cid = memhog(lab, a, "victim", 512)
    proc = lab.migrate_popen(a, b, "victim")
    wait_transfer(b, proc, 64 << 20)
    a.kill_daemon()
    out, err = proc.communicate(timeout=60)
    text = err.decode() + out.decode()
    print(text)
    assert proc.returncode != 0, text
    assert failed_phase(text) == "dump", text  # the last phase the client heard of
    # the daemon died with the container frozen: nothing answers until a restart reconciles
    records = list((a.root / "run" / "outgoing").glob("*.json"))
    assert len(records) == 1, records
    assert lab.counter(a, "victim", timeout_s=1.0) is None, "the container should still be frozen"
    lab.start_daemon(a)  # reconcile: wait for the orphaned CRIU, thaw, abort on the target
    assert_only_on(lab, a, b, "victim", cid, settle_s=30)
    log = (a.workdir / "daemon.log").read_text()
    assert "interrupted by a restart" in log and "thawed" in log, log[-3000:]
