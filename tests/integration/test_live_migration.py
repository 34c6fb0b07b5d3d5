"""Live migration between two hosts (network namespaces with their own state roots and daemons):
post-copy with lazy pages, its rollback and its "container lost" path, pre-copy's refusal, auto.

Real kernel, real CRIU, real gRPC between real daemons. The memhog workload fills its memory with
/dev/urandom bytes and reports an FNV-64 of it on SIGUSR1, so a restored process cannot fake its
data. Faults are injected from outside the code under test:

- before the resume: an nftables rule in the target host's namespace rejects every TCP
  connection to the source host except the daemon's port, so the target's lazy-pages daemon cannot
  reach the source's page server;
- after the resume: the source host's egress is slowed with ``tc tbf`` so the page transfer lasts
  seconds, and the test SIGKILLs the target's ``criu lazy-pages`` process once the target has
  recorded the container as restored.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.hosts import Host, Hosts, pymigrate_command

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "criu", "netns")]

DAEMON_PORT = 7443
MEMHOG = "/bin/memhog"
MEMHOG_OUT = "/tmp/memhog.out"
REPO = Path(__file__).resolve().parents[2]


# --- lab ----------------------------------------------------------------------------------------


class Lab:
    def __init__(self, hosts: Hosts, workdir: Path) -> None:
        self.hosts = hosts
        self.a, self.b = hosts.hosts[:2]
        self.workdir = workdir

    def addr(self, host: Host) -> str:
        return f"{host.address}:{DAEMON_PORT}"

    def remote(self, host: Host, args: list[str], *, timeout: float = 300) -> subprocess.CompletedProcess:
        return host.run([*pymigrate_command(), "--host", self.addr(host), "--insecure", *args], check=False, timeout=timeout)

    def migrate(self, source: Host, target: Host, name: str, *extra: str, timeout: float = 300) -> tuple[int, dict | None, str]:
        r = self.remote(source, ["migrate", name, self.addr(target), "--json", *extra], timeout=timeout)
        data = None
        if r.returncode == 0:
            data = json.loads(r.stdout)
        # errors: one line on stderr, or a JSON error object on stdout with --json
        return r.returncode, data, r.stderr.decode(errors="replace") + r.stdout.decode(errors="replace")

    def migrate_popen(self, source: Host, target: Host, name: str, *extra: str) -> subprocess.Popen:
        return source.popen(
            [*pymigrate_command(), "--host", self.addr(source), "--insecure", "migrate", name, self.addr(target), "--json", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def run(self, host: Host, name: str, image: str, *cmd: str) -> None:
        r = host.cli(["run", "-d", "--name", name, image, *cmd])
        assert r.returncode == 0, r.stderr.decode()

    def remove(self, host: Host, name: str) -> None:
        host.cli(["rm", "-f", name])


def info(host: Host, name: str):  # noqa: ANN201
    from runtime.runtime import Runtime

    return Runtime(host.root).inspect(name)


def status(host: Host, name: str) -> str | None:
    from runtime.errors import ContainerError

    try:
        return info(host, name).state.status
    except ContainerError:
        return None


def memhog_report(host: Host, name: str, timeout_s: float = 20.0) -> tuple[str, int] | None:
    """(fnv64 of memhog's memory, its counter) or None when it does not answer in time."""
    i = info(host, name)
    out = Path(i.bundle_dir) / "merged" / MEMHOG_OUT.lstrip("/")
    out.unlink(missing_ok=True)
    os.kill(i.state.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            text = out.read_text()
        except OSError:
            text = ""
        if text.endswith("\n"):
            digest, counter = text.split()
            return digest, int(counter)
        time.sleep(0.02)
    return None


def wait_memhog(host: Host, name: str, timeout_s: float = 120.0) -> tuple[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = memhog_report(host, name, timeout_s=3.0)
        if got is not None:
            return got
    raise AssertionError(f"memhog {name} on host {host.letter} never reported")


def incoming_records(host: Host) -> list[dict]:
    d = host.root / "run" / "incoming"
    return [json.loads(p.read_text()) for p in d.glob("*.json")] if d.is_dir() else []


def lazy_pages_pids(host: Host) -> list[int]:
    pids = []
    for pid in host.pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(cmdline) > 1 and cmdline[0].endswith(b"criu") and cmdline[1] == b"lazy-pages":
            pids.append(pid)
    return pids


def make_memhog_image(root: Path, workdir: Path) -> Path:
    from runtime.config import Paths
    from runtime.image_store import ImageStore

    binary = workdir / "memhog"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(binary), str(REPO / "tests/workloads/memhog.c")], check=True, capture_output=True, timeout=120)
    tar_path = workdir / "memhog.tar"
    with open(tar_path, "wb") as f:
        ImageStore(Paths(root)).export_stream("busybox", f)
    with tarfile.open(tar_path, "a", format=tarfile.PAX_FORMAT) as tar:
        ti = tar.gettarinfo(str(binary), arcname="bin/memhog")
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        ti.mtime = 0
        with open(binary, "rb") as f:
            tar.addfile(ti, f)
    return tar_path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if subprocess.run(["which", "gcc"], capture_output=True).returncode != 0:
        pytest.skip("the memhog workload needs gcc")
    workdir = tmp_path_factory.mktemp("live")
    with Hosts(2) as hosts:
        lab = Lab(hosts, workdir)
        for h in (lab.a, lab.b):
            h.start_daemon(lab.addr(h), extra_args=["--insecure"])
        r = lab.a.cli(["image", "build-busybox", "busybox"])
        assert r.returncode == 0, r.stderr.decode()
        tar_path = make_memhog_image(lab.a.root, workdir)
        r = lab.a.cli(["image", "import", "memhog", str(tar_path)])
        assert r.returncode == 0, r.stderr.decode()
        yield lab


# --- tests --------------------------------------------------------------------------------------


def test_postcopy_512_mib_is_intact_and_pauses_far_less_than_cold(lab: Lab) -> None:
    """The same 512 MiB container: cold a -> b, then postcopy b -> a; data intact after each."""
    name = "hog512"
    lab.run(lab.a, name, "memhog", MEMHOG, "512", MEMHOG_OUT)
    try:
        digest, _ = wait_memhog(lab.a, name)
        rc, cold, err = lab.migrate(lab.a, lab.b, name, "--mode", "cold")
        assert rc == 0, err
        assert cold is not None and cold["mode"] == "cold"
        assert status(lab.a, name) is None
        after_cold = memhog_report(lab.b, name)
        assert after_cold is not None and after_cold[0] == digest

        rc, post, err = lab.migrate(lab.b, lab.a, name, "--mode", "postcopy")
        assert rc == 0, err
        assert post is not None and post["mode"] == "postcopy"
        assert status(lab.b, name) is None, "the source copy must be gone after the commit"
        assert status(lab.a, name) == "running"
        after_post = memhog_report(lab.a, name)
        assert after_post is not None and after_post[0] == digest, "memory changed across the post-copy migration"
        assert after_post[1] > after_cold[1], "the counter must go on from where it was"

        cold_ms, post_ms = cold["stats"]["frozen_ms"], post["stats"]["frozen_ms"]
        print(f"\n512 MiB pause: cold {cold_ms:.0f} ms, postcopy {post_ms:.0f} ms; "
              f"postcopy last page {post['stats']['phases_ms']['last_page']:.0f} ms after the resume, "
              f"total cold {cold['stats']['total_ms']:.0f} ms postcopy {post['stats']['total_ms']:.0f} ms")
        # A property, not a benchmark (scripts/bench.py migrate --mode measures the ratio, ~4x
        # here): post-copy's pause does not carry the 512 MiB, so it stays below cold's even on a
        # loaded machine. Not half of it: since the cold target restores lazily from its own disk
        # (cold_lazy.py) cold's pause is mostly the dump, and at load 4+ the ratio was 0.55-0.59
        # (275 vs 495, 327 vs 557 ms); a post-copy that carried the pages would pause as long as cold.
        assert post_ms < cold_ms * 0.75, f"postcopy pause {post_ms} ms is not well below the cold pause {cold_ms} ms"
        # every page crossed the wire (CRIU's page server, uncompressible random data)
        assert post["stats"]["bytes_on_wire"] >= 512 * 2**20
        assert post["stats"]["phases_ms"]["last_page"] > 0
        assert not incoming_records(lab.a) and not incoming_records(lab.b)
    finally:
        lab.remove(lab.a, name)
        lab.remove(lab.b, name)


def test_auto_picks_postcopy_when_both_hosts_have_lazy_pages(lab: Lab) -> None:
    name = "auto1"
    lab.run(lab.a, name, "memhog", MEMHOG, "32", MEMHOG_OUT)
    try:
        digest, _ = wait_memhog(lab.a, name)
        rc, result, err = lab.migrate(lab.a, lab.b, name, "--mode", "auto")
        assert rc == 0, err
        assert result is not None and result["mode"] == "postcopy"
        got = memhog_report(lab.b, name)
        assert got is not None and got[0] == digest
    finally:
        lab.remove(lab.a, name)
        lab.remove(lab.b, name)


def _nft(host: Host, *args: str) -> None:
    host.run(["nft", *args])


def test_page_server_unreachable_before_the_resume_rolls_back(lab: Lab) -> None:
    """The target cannot reach the source's page server: the source keeps running, intact."""
    name = "rollback1"
    lab.run(lab.a, name, "memhog", MEMHOG, "64", MEMHOG_OUT)
    table = "pmlivetest"
    try:
        digest, counter = wait_memhog(lab.a, name)
        _nft(lab.b, "add", "table", "inet", table)
        _nft(lab.b, "add", "chain", "inet", table, "out", "{ type filter hook output priority 0 ; }")
        _nft(lab.b, "add", "rule", "inet", table, "out", "ip", "daddr", lab.a.address, "tcp", "dport", "!=", str(DAEMON_PORT), "ct", "state", "new",
             "reject", "with", "tcp", "reset")
        rc, _, err = lab.migrate(lab.a, lab.b, name, "--mode", "postcopy")
        assert rc != 0, "the migration must fail when the page server cannot be reached"
        print(f"\nrolled back: {err.strip()}")
        assert "lazy-pages" in err, err
        # a rollback, not ContainerLost (CRIU's quoted log may say "...may have been lost")
        assert "ContainerLost" not in err and "container is lost" not in err.lower(), err
        assert status(lab.a, name) == "running"
        assert status(lab.b, name) is None
        got = memhog_report(lab.a, name)
        assert got is not None and got[0] == digest and got[1] > counter, "the source must run on, with its memory intact"
        assert not incoming_records(lab.b)
        assert not lazy_pages_pids(lab.b)
    finally:
        lab.b.run(["nft", "delete", "table", "inet", table], check=False)
        lab.remove(lab.a, name)
        lab.remove(lab.b, name)
    # and the link is usable again: the same container migrates fine afterwards
    lab.run(lab.a, name, "memhog", MEMHOG, "16", MEMHOG_OUT)
    try:
        wait_memhog(lab.a, name)
        rc, _, err = lab.migrate(lab.a, lab.b, name, "--mode", "postcopy")
        assert rc == 0, err
    finally:
        lab.remove(lab.a, name)
        lab.remove(lab.b, name)


def test_page_transfer_killed_after_the_resume_reports_container_lost(lab: Lab) -> None:
    name = "lost1"
    lab.run(lab.a, name, "memhog", MEMHOG, "128", MEMHOG_OUT)
    slowed = False
    try:
        digest, _ = wait_memhog(lab.a, name)
        # ~128 MiB at 100 Mbit/s: the background transfer lasts about ten seconds
        lab.a.run(["tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "100mbit", "burst", "64kb", "latency", "400ms"])
        slowed = True
        proc = lab.migrate_popen(lab.a, lab.b, name, "--mode", "postcopy")
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if any(r.get("phase") == "restored" for r in incoming_records(lab.b)):
                    break
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.01)
            else:
                raise AssertionError("the target never recorded the container as restored")
            assert status(lab.b, name) == "running"
            pids = lazy_pages_pids(lab.b)
            assert len(pids) == 1, pids
            os.kill(pids[0], signal.SIGKILL)
            out, err_b = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err = err_b.decode(errors="replace") + out.decode(errors="replace")
        assert proc.returncode != 0, out
        print(f"\nlost: {err.strip()}")
        assert "is lost" in err, err
        assert "frozen copy" in err or "unpause" in err, err
        # the target's copy (missing memory) is gone; nothing claims the container runs there
        assert status(lab.b, name) is None
        assert not incoming_records(lab.b)
        # the source still holds the frozen pre-migration copy, which the operator may resume
        assert status(lab.a, name) in ("paused", "running"), status(lab.a, name)
        r = lab.a.cli(["unpause", name])
        assert r.returncode == 0, r.stderr.decode()
        got = memhog_report(lab.a, name)
        assert got is not None and got[0] == digest
    finally:
        if slowed:
            lab.a.run(["tc", "qdisc", "del", "dev", "eth0", "root"], check=False)
        lab.remove(lab.a, name)
        lab.remove(lab.b, name)


def test_precopy_is_refused_with_the_kernel_reason(lab: Lab) -> None:
    from runtime.host import supports_dirty_tracking

    if supports_dirty_tracking():
        pytest.skip("this kernel has soft-dirty tracking: pre-copy is not refused here")
    name = "pre1"
    lab.run(lab.a, name, "busybox", "sleep", "1000")
    try:
        rc, _, err = lab.migrate(lab.a, lab.b, name, "--mode", "precopy")
        assert rc != 0
        print(f"\nrefused: {err.strip()}")
        assert "precopy" in err and "soft-dirty" in err, err
        from migrate.migration.precopy import kernel_soft_dirty

        if kernel_soft_dirty() is False:
            assert "CONFIG_MEM_SOFT_DIRTY" in err, err
        assert status(lab.a, name) == "running"
        assert not incoming_records(lab.b)
    finally:
        lab.remove(lab.a, name)
