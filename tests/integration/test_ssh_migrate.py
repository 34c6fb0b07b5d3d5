"""Migration over ``ssh://`` (issue 6): real CRIU, Debian's sshd inside each "host" namespace.

Each test builds hosts (tests/integration/hosts.py) that run sshd on ADDRESS:22 with one
authorized key and no pymigrate daemon. The source's CLI runs inside the source's namespace
(``pymigrate --root A --ssh-key K --ssh-known-hosts F ... migrate NAME ssh://root@B``) and dials
B's sshd; the ssh transport (migrate/remote/ssh.py) starts a daemon on B for the duration and stops it
after. Both hosts share this machine's filesystem, so ``--ssh-remote-pymigrate`` is the venv's
pymigrate and ``--ssh-remote-root`` is B's state root. HOME is an empty directory and
SSH_AUTH_SOCK is unset: nothing from the machine's own ~/.ssh or agent takes part.

The workload is memhog (tests/workloads/memhog.c, via migration_lab): it fills N MiB with random
bytes and answers SIGUSR1 with "<fnv64 of its memory> <counter>", so a hop proves the memory came
over intact (same checksum) and the process ran on (counter advances). ssh:// moves everything
through the tunnel (the pages over its page socket forward, migrate/migration/page_socket.py, no
TCP page server): bytes on the wire are the memory + small, and nothing but sshd listens on TCP in
the target while the migration runs.

- round trip A -> B -> A with on-demand daemons (and a third hop to a daemon B already runs,
  through the library with progress events): same address, same id, same memory, counting;
  no daemon left except the one that was already running; no leftovers.
- sshd SIGKILLed while a 512 MiB memhog streams: the migration fails naming the phase, the source
  is thawed and counting, the target holds nothing and its on-demand daemon is gone.
- unknown host key: refused before anything is frozen (the container's freezer is sampled every
  millisecond during the command), nothing happens on the target.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.hosts import PYMIGRATE_BIN, Host, Hosts, pymigrate_command
from tests.integration.migrate_helpers import leftovers, migrate_json, names_by_status, ping, route_client
from tests.integration.migration_lab import IMAGE, Lab, cgroup_dirs, memhog_image_tar

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "sshd", "criu", "pycriu", "busybox", "overlay"),
]

MIB = 1 << 20
ROUND_TRIP_MIB = 96  # over plain TCP these pages would go through a CRIU page server
SMALL_OVERHEAD_BYTES = 8 * MIB  # CRIU's other images, the upper layer, archive framing
PHASE_RE = re.compile(r"phase[: ]+([a-z_]+)")


@dataclass
class SshLab:
    """Hosts with sshd (no daemon), the memhog image, a client key and an empty HOME."""

    lab: Lab
    key: Path
    known_hosts: Path
    home: Path

    @property
    def hosts(self) -> Hosts:
        return self.lab.hosts

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env["HOME"] = str(self.home)
        return env

    def ssh_flags(self, target: Host, *, accept_new: bool = False, known_hosts: Path | None = None) -> list[str]:
        """The global --ssh-* flags for reaching ``target`` (placed before the subcommand)."""
        flags = [
            "--ssh-key", str(self.key),
            "--ssh-known-hosts", str(known_hosts or self.known_hosts),
            "--ssh-remote-pymigrate", str(PYMIGRATE_BIN),
            "--ssh-remote-root", str(target.root),
        ]  # fmt: skip
        return [*flags, "--ssh-accept-new"] if accept_new else flags

    def migrate_cli(self, source: Host, target: Host, name: str, *, accept_new: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
        """``pymigrate --root SOURCE --ssh-... migrate NAME ssh://root@TARGET --json`` in the source's namespace."""
        return source.cli(
            [*self.ssh_flags(target, accept_new=accept_new), "migrate", name, target.ssh_url(), "--json"], timeout=timeout, env=self.env()
        )

    def migrate_popen(self, source: Host, target: Host, name: str) -> subprocess.Popen:
        return source.popen(
            [*pymigrate_command(), "--root", str(source.root), *self.ssh_flags(target), "migrate", name, target.ssh_url(), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env(),
        )

    def record_host_key(self, host: Host) -> None:
        """Append ``host``'s key to known_hosts, as an operator copying it from the host would."""
        key_type, blob = Path(f"{host.host_key}.pub").read_text().split()[:2]
        with open(self.known_hosts, "a") as f:
            f.write(f"{host.address} {key_type} {blob}\n")


@pytest.fixture(scope="module")
def image_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return memhog_image_tar(Path(tmp_path_factory.mktemp("ssh-migrate")))


def _make_lab(image_tar: Path, tmp_path: Path, count: int, *, image_on: tuple[int, ...]) -> Iterator[SshLab]:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pymigrate-ssh-migrate", "-f", str(key)], check=True)
    hosts = Hosts(count)
    lab = Lab(hosts, image_tar)
    try:
        for i in image_on:
            hosts[i].cli(["image", "import", IMAGE, str(image_tar)], check=True)
        for host in hosts.hosts[:2]:
            host.start_sshd(Path(f"{key}.pub"))
        yield SshLab(lab=lab, key=key, known_hosts=tmp_path / "known_hosts", home=home)
    finally:
        lab.close()


@pytest.fixture
def ssh_lab(image_tar: Path, tmp_path: Path) -> Iterator[SshLab]:
    """Hosts A and B with sshd, a client namespace; the memhog image on A only (B gets it shipped)."""
    yield from _make_lab(image_tar, tmp_path, 3, image_on=(0,))


@pytest.fixture
def ssh_pair(image_tar: Path, tmp_path: Path) -> Iterator[SshLab]:
    """Hosts A and B with sshd and the memhog image on both."""
    yield from _make_lab(image_tar, tmp_path, 2, image_on=(0, 1))


# --- helpers ----------------------------------------------------------------------------------


def daemon_pids(host: Host) -> list[int]:
    """pymigrate daemons of ``host``'s state root running in its namespace (a daemon's launcher
    child counts only once orphaned). Container shims are forks of the daemon with the same command line: they are told
    apart by their comm (runtime.shim.SHIM_COMM) and stay, as the containers do."""
    from runtime.shim import SHIM_COMM

    found: dict[int, int] = {}  # pid -> parent pid
    for pid in host.pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if comm != SHIM_COMM and b"daemon" in argv and str(host.root).encode() in argv:
            found[pid] = ppid
    return sorted(pid for pid, ppid in found.items() if ppid not in found)  # a daemon's launcher child goes with it


def describe(pids: list[int]) -> str:
    out = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            ppid = next(line for line in status if line.startswith("PPid:"))
            state = next(line for line in status if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        out.append(f"{pid} [{state} {ppid}] {argv}")
    return "; ".join(out)


def wait_until(predicate, timeout_s: float, what) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    if not predicate():
        raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what() if callable(what) else what}")


def scratch_bytes(host: Host) -> int:
    """Bytes allocated under ROOT/tmp (a staged upper-layer image is a 16 GiB sparse file)."""
    total = 0
    tmp = host.root / "tmp"
    for p in tmp.rglob("*") if tmp.is_dir() else ():
        try:
            if p.is_file():
                total += p.stat().st_blocks * 512
        except OSError:
            continue
    return total


def _criu_check_listener(ss_line: str) -> bool:
    """Whether an `ss -p` line belongs to a `criu check` process (not a page server)."""
    import re

    for pid in re.findall(r"pid=(\d+)", ss_line):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 1 and argv[0].endswith(b"criu") and argv[1] == b"check":
            return True
    return False


class TcpListeners:
    """Samples the TCP ports listening in ``host``'s namespace until stopped (a CRIU page server
    would be one more)."""

    def __init__(self, host: Host, interval_s: float = 0.02) -> None:
        self.host = host
        self.ports: set[str] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._interval_s = interval_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = self.host.run(["ss", "-Htlnp"], check=False).stdout.decode()
            for line in out.splitlines():
                if _criu_check_listener(line):
                    continue  # the daemon's start-up probe (`criu check` listens briefly for its TCP test)
                local = line.split()[3]
                self.ports.add(local.rpartition(":")[2])
            self.samples += 1
            self._stop.wait(self._interval_s)

    def __enter__(self) -> "TcpListeners":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class FreezerWatch:
    """Reads the container's freezer files (cgroup2 ``cgroup.freeze``/``cgroup.events``, v1
    ``freezer.state``) every millisecond until stopped; ``frozen_seen`` is what it caught."""

    def __init__(self, root: Path, container_id: str) -> None:
        self.files: list[Path] = []
        for d in cgroup_dirs(root, container_id):
            for name in ("cgroup.freeze", "cgroup.events", "freezer.state"):
                if (d / name).exists():
                    self.files.append(d / name)
        self.frozen_seen: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _frozen(path: Path, text: str) -> bool:
        if path.name == "cgroup.freeze":
            return text.strip() == "1"
        if path.name == "cgroup.events":
            return "frozen 1" in text
        return text.strip() != "THAWED"

    def _run(self) -> None:
        while not self._stop.is_set():
            for path in self.files:
                try:
                    text = path.read_text()
                except OSError:
                    continue
                if self._frozen(path, text):
                    self.frozen_seen.append(f"{path}: {text.strip()}")
            self.samples += 1
            time.sleep(0.001)

    def __enter__(self) -> "FreezerWatch":
        assert self.files, "no freezer files found for the container"
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def container_spec(host: Host, name: str) -> dict:
    return json.loads(host.cli(["inspect", name], check=True).stdout)[0]["spec"]  # type: ignore[no-any-return]


def assert_hop(lab: Lab, source: Host, target: Host, name: str, ip: str, cid: str, before: tuple[str, int]) -> tuple[str, int]:
    """``name`` runs on ``target`` only, same address and id, same memory, counting on from ``before``."""
    assert names_by_status(target).get(name) == "running", names_by_status(target)
    assert name not in names_by_status(source), f"source {source.letter} still has {names_by_status(source)}"
    spec = container_spec(target, name)
    assert spec["ip"] == ip, f"address changed: {spec['ip']} != {ip}"
    assert spec["container_id"] == cid
    after = lab.report(target, name)
    assert after is not None, f"{name} does not answer on host {target.letter}"
    assert after[0] == before[0], f"memory checksum changed: {before[0]} -> {after[0]}"
    assert after[1] >= before[1], f"counter went back: {before[1]} -> {after[1]} (restarted?)"
    lab.assert_counting(target, name)
    return after


def assert_streamed(stats: dict, memory_bytes: int, extra_bytes: int = 0) -> None:
    """the bytes moved = the container's memory (+ a shipped image) + small, all through the tunnel;
    on the wire no more (less when the page relay chose zstd for the page socket's stream)."""
    raw, wire = stats["raw_bytes"], stats["bytes_on_wire"]
    low, high = memory_bytes + extra_bytes, memory_bytes + extra_bytes + SMALL_OVERHEAD_BYTES
    assert low <= raw <= high, f"raw_bytes {raw / MIB:.1f} MiB not within [{low / MIB:.1f}, {high / MIB:.1f}] MiB: {stats}"
    assert wire <= high, f"bytes_on_wire {wire / MIB:.1f} MiB above {high / MIB:.1f} MiB: {stats}"


# --- the round trip ---------------------------------------------------------------------------


def test_memhog_round_trip_over_ssh_with_on_demand_daemons(ssh_lab: SshLab) -> None:
    lab, (a, b, client) = ssh_lab.lab, ssh_lab.hosts.hosts
    name = "counter"
    lab.run_memhog(a, name, ROUND_TRIP_MIB)
    spec = container_spec(a, name)
    ip, cid = spec["ip"], spec["container_id"]
    route_client(client, a)
    assert ping(client, ip)
    assert daemon_pids(a) == [] and daemon_pids(b) == []
    memory = ROUND_TRIP_MIB * MIB
    image_tar_bytes = ssh_lab.lab.image_tar.stat().st_size
    timings: list[tuple[str, dict]] = []

    # Hop 1, A -> B: CLI on A, B's host key unknown and accepted (recorded), B lacks the image.
    before = lab.report(a, name)
    assert before is not None
    with TcpListeners(b) as listeners:
        r = ssh_lab.migrate_cli(a, b, name, accept_new=True)
    assert r.returncode == 0, r.stderr.decode()
    result = migrate_json(r.stdout)
    stats = result["stats"]
    assert result["dest"] == b.ssh_url()
    assert stats["phases_ms"].get("image", 0) > 0, "B lacked the image: it should have been shipped through the tunnel"
    assert_streamed(stats, memory, extra_bytes=int(image_tar_bytes * 0.9))
    assert stats["bytes_on_wire"] <= memory + image_tar_bytes + SMALL_OVERHEAD_BYTES
    assert listeners.samples > 3 and listeners.ports == {"22"}, f"TCP listeners in B during the migration: {listeners.ports}"
    found = subprocess.run(["ssh-keygen", "-F", b.address, "-f", str(ssh_lab.known_hosts)], capture_output=True, text=True)
    assert found.returncode == 0, "--ssh-accept-new recorded B's host key"
    timings.append(("A->B", stats))
    before = assert_hop(lab, a, b, name, ip, cid, before)
    route_client(client, b)
    assert ping(client, ip), f"{ip} does not answer on host B"
    wait_until(lambda: daemon_pids(b) == [], 15.0, lambda: f"the on-demand daemon on B to stop: {describe(daemon_pids(b))}; log: {(b.root / 'run' / 'ssh-daemon.log').read_text()[-3000:]}")
    assert daemon_pids(a) == []
    assert not b.socket_path.exists()
    assert leftovers(a) == [] and leftovers(b) == []

    # Hop 2, B -> A: CLI on B, A's host key recorded beforehand (no --ssh-accept-new), image on A.
    ssh_lab.record_host_key(a)
    with TcpListeners(a) as listeners:
        r = ssh_lab.migrate_cli(b, a, name)
    assert r.returncode == 0, r.stderr.decode()
    stats = migrate_json(r.stdout)["stats"]
    assert "image" not in stats["phases_ms"], "A has the image: nothing to ship"
    assert_streamed(stats, memory)
    assert listeners.ports == {"22"}, f"TCP listeners in A during the migration: {listeners.ports}"
    timings.append(("B->A", stats))
    before = assert_hop(lab, b, a, name, ip, cid, before)
    route_client(client, a)
    assert ping(client, ip), f"{ip} does not answer on host A"
    wait_until(lambda: daemon_pids(a) == [], 15.0, lambda: f"the on-demand daemon on A to stop: {daemon_pids(a)}")
    assert daemon_pids(b) == []
    assert leftovers(a) == [] and leftovers(b) == []

    # Hop 3, A -> B where B already runs a daemon (unix socket): it is used and left running.
    # Through the library in A's namespace, to see the progress events a scheduler would see.
    b.start_daemon()
    kept = b.daemon
    assert kept is not None and daemon_pids(b) == [kept.pid]
    ssh_options = {
        "key_file": str(ssh_lab.key),
        "known_hosts": str(ssh_lab.known_hosts),
        "remote_pymigrate": str(PYMIGRATE_BIN),
        "remote_root": str(b.root),
    }
    script = (
        "import json, sys\n"
        "from migrate.api import MigrateOptions\n"
        "from migrate.engine import LocalEngine, PeerConfig\n"
        "root, name, dest, ssh = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])\n"
        "events = []\n"
        "engine = LocalEngine(root, peer=PeerConfig(ssh=ssh))\n"
        "result = engine.migrate(name, MigrateOptions(dest=dest), progress=events.append)\n"
        "print(json.dumps({'phases': [e.phase for e in events], 'frozen_ms': result.stats.frozen_ms,\n"
        "                  'total_ms': result.stats.total_ms, 'bytes_on_wire': result.stats.bytes_on_wire,\n"
        "                  'raw_bytes': result.stats.raw_bytes,\n"
        "                  'phases_ms': result.stats.phases_ms}))\n"
    )
    r = a.run([sys.executable, "-c", script, str(a.root), name, b.ssh_url(), json.dumps(ssh_options)],
              check=False, timeout=300, env=ssh_lab.env())  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert out["phases"][0] == "preflight" and out["phases"][-1] == "done", out["phases"]
    assert {"freeze", "dump", "restore", "commit"} <= set(out["phases"]), out["phases"]
    assert_streamed(out, memory)
    timings.append(("A->B (running daemon)", out))
    assert_hop(lab, a, b, name, ip, cid, before)
    assert kept.poll() is None, "the daemon that was already running on B must be left running"
    assert daemon_pids(b) == [kept.pid] and daemon_pids(a) == []
    assert leftovers(a) == [] and leftovers(b) == []
    for hop, s in timings:
        print(f"{hop}: downtime {s['frozen_ms']:.0f} ms, total {s['total_ms']:.0f} ms, {s['bytes_on_wire'] / MIB:.1f} MiB on the wire")


# --- faults -------------------------------------------------------------------------------------


def test_sshd_killed_mid_transfer_rolls_back(ssh_pair: SshLab) -> None:
    lab, (a, b) = ssh_pair.lab, ssh_pair.hosts.hosts
    name = "victim"
    info = lab.run_memhog(a, name, 512)
    cid = info["spec"]["container_id"]
    before = lab.report(a, name)
    assert before is not None
    ssh_pair.record_host_key(b)
    proc = ssh_pair.migrate_popen(a, b, name)

    def landed() -> bool:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"migration ended before the fault ({proc.returncode}): {out.decode()} {err.decode()}")
        return scratch_bytes(b) >= 64 * MIB

    wait_until(landed, 120.0, "64 MiB of the checkpoint on host B")
    on_demand = daemon_pids(b)
    assert len(on_demand) == 1, on_demand
    b.kill_sshd()
    out, err = proc.communicate(timeout=180)
    text = err.decode() + out.decode()
    print(text)
    assert proc.returncode != 0, f"the migration was expected to fail: {text}"
    m = PHASE_RE.search(text)
    assert m, f"the error does not name the phase: {text}"
    assert m.group(1) in ("dump", "transfer", "restore"), text
    assert b.ssh_url() in text, f"the error names the target: {text}"
    assert f"the ssh connection to root@{b.address}:22 ended" in text, f"the hint says what broke: {text}"

    # The source rolled back: running, thawed (counting), same memory.
    assert names_by_status(a) == {name: "running"}
    lab.assert_counting(a, name)
    after = lab.report(a, name)
    assert after is not None and after[0] == before[0] and after[1] > before[1]
    # The target: its on-demand daemon stopped (the watcher saw the session end) and cleaned up.
    wait_until(lambda: daemon_pids(b) == [], 60.0, lambda: f"the on-demand daemon on B to stop: {describe(daemon_pids(b))}; log: {(b.root / 'run' / 'ssh-daemon.log').read_text()[-3000:]}")
    wait_until(lambda: not lab.leftovers(b, name, cid), 60.0, lambda: f"host B to be clean: {lab.leftovers(b, name, cid)}")
    assert leftovers(b) == []
    assert names_by_status(b) == {}
    # The source keeps no scratch and no outgoing record.
    assert leftovers(a) == []
    outgoing = a.root / "run" / "outgoing"
    assert not outgoing.is_dir() or not [p for p in outgoing.iterdir() if p.suffix == ".json"]


def test_unknown_host_key_is_refused_before_anything_is_frozen(ssh_pair: SshLab) -> None:
    lab, (a, b) = ssh_pair.lab, ssh_pair.hosts.hosts
    name = "guarded"
    info = lab.run_memhog(a, name, 16)
    cid = info["spec"]["container_id"]
    before = lab.report(a, name)
    assert before is not None
    assert not ssh_pair.known_hosts.exists()
    with FreezerWatch(a.root, cid) as watch:
        r = ssh_pair.migrate_cli(a, b, name)
    text = r.stderr.decode() + r.stdout.decode()
    assert r.returncode == 125, text
    assert f"host key of {b.address} is not known: ssh-ed25519 {b.host_key_fingerprint()}" in text, text
    assert "--ssh-accept-new" in text, "the hint says how to accept it"
    assert watch.samples > 20, watch.samples
    assert watch.frozen_seen == [], f"the container was frozen: {watch.frozen_seen[:3]}"
    # the source never left running; nothing was recorded or started anywhere
    assert names_by_status(a) == {name: "running"}
    lab.assert_counting(a, name)
    assert not ssh_pair.known_hosts.exists()
    assert "Accepted publickey" not in b.sshd_log, "we must not authenticate to an unverified host"
    assert daemon_pids(b) == [] and not (b.root / "run" / "ssh-daemon.log").exists()
    assert leftovers(a) == [] and leftovers(b) == []
    outgoing = a.root / "run" / "outgoing"
    assert not outgoing.is_dir() or not list(outgoing.iterdir())
