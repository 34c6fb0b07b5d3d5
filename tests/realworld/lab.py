"""Two hosts on one L2 segment with the Debian image, a client namespace, and the four moves.

Topology (made once per session, all removed at the end)::

    host netns a (daemon :7443)                 host netns b (daemon :7443)
    pmbr0 ── server containers                  pmbr0 ── moved containers
      │  └── placeholder 10.77.9.8                │  └── placeholder 10.77.9.9
      ├── pmrw<tag>a ═════════ veth ═════════ pmrw<tag>b ──┘
      └── pmrw<tag>h ═══ veth ═══ client netns pmrw-<tag>: eth0 10.77.250.251/16

Both hosts' container bridges are joined by one veth pair, so a container keeps its address and
MAC wherever it runs and the client reaches it directly (same subnet, no gateway). The
placeholders keep each host's pmbr0 alive (the runtime makes the bridge with the first
container). Every server container gets an address of its own (``next_ip``), so no client
ARP entry outlives its container.

The moves (``MOVES``), each with ``--tcp-established`` (and ``--file-locks`` for servers that hold
file locks):

- ``ckpt-restore``: ``checkpoint NAME`` then ``restore ID`` on host a (the container stays on a);
- ``export-import``: ``checkpoint NAME --export FILE`` on a, ``restore --import FILE`` on b;
- ``cold``, ``postcopy``: ``migrate NAME B --mode cold|postcopy`` through host a's daemon.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tests.integration.hosts import Host, Hosts, pymigrate_command
from tests.realworld.servers import SQLITE_READER, Server

IMAGE = "debian-rw"
DAEMON_PORT = 7443
CLIENT_IP = "10.77.250.251"
PLACEHOLDER_IPS = ("10.77.9.8", "10.77.9.9")
CLIENT_SCRIPT = Path(__file__).with_name("client.py")
CLI_TIMEOUT_S = 180


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def check_client(result: dict, ready: dict, record: dict) -> None:
    """The client held its one connection through the move and read back everything it wrote."""
    assert not result["errors"], f"client: {result['errors'][0]}"
    assert result.get("conn_end") == ready["conn"], f"client's connection changed: {ready['conn']} -> {result.get('conn_end')}"
    assert "verified" in result, f"client could not read its data back: {result}"
    record["verified"] = result["verified"]


def first_error_line(text: str) -> str:
    """The line a reader wants first: the first one naming an error, else the first non-empty."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and obj.get("error"):
            err = obj["error"]
            return str(err.get("message", err) if isinstance(err, dict) else err)
    markers = ("error", "Error", "ERROR", "failed", "cannot", "can't", "Can't", "refuse", "Traceback")
    for line in lines:
        if any(m in line for m in markers) and not line.startswith("hint"):
            return line
    return lines[0] if lines else "(no output)"


class MoveFailed(AssertionError):
    """A pymigrate command of the move failed; the message is its first real error line."""


@dataclass
class Moved:
    host: Host  # where the container must run now
    stats: dict = field(default_factory=dict)
    move_ms: float = 0.0
    cleanup: list[Callable[[], object]] = field(default_factory=list)


class ClientProc:
    """client.py in the client namespace (see its docstring for the line protocol)."""

    def __init__(self, netns: str, kind: str, ip: str, port: int) -> None:
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{netns}", sys.executable, str(CLIENT_SCRIPT), kind, ip, str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def wait_ready(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"client exited before it was ready: {first_error_line(self._stderr())}")
        ready = json.loads(line)
        if not ready.get("ready"):
            raise AssertionError(f"client not ready: {ready.get('error')}")
        return ready  # type: ignore[no-any-return]

    def stop(self, timeout_s: float = 120) -> dict:
        """Ask the client to stop and read its result."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        out, err = self.proc.communicate(timeout=timeout_s)
        lines = [line for line in out.splitlines() if line.strip()]
        if not lines:
            raise AssertionError(f"client printed no result (exit {self.proc.returncode}): {first_error_line(err)}")
        return json.loads(lines[-1])  # type: ignore[no-any-return]

    def _stderr(self) -> str:
        self.proc.wait(10)
        return self.proc.stderr.read() if self.proc.stderr else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


class RealLab:
    """The session's hosts, segment and client namespace (see the module docstring)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tag = secrets.token_hex(2)
        self.client_ns = f"pmrw-{self.tag}"
        self.hosts = Hosts(2)
        self.a, self.b = self.hosts.hosts
        self._ip_counter = 0
        self._links: list[tuple[str, str]] = []
        self._ns_made = False

    # --- setup ---------------------------------------------------------------------------------
    def setup(self, image_tar: Path) -> dict[str, float]:
        """Import the image, start daemons and placeholders, join the segment; seconds per step."""
        timings = {}
        for host, ip in zip((self.a, self.b), PLACEHOLDER_IPS):
            started = time.monotonic()
            r = host.cli(["image", "import", IMAGE, str(image_tar)], timeout=600)
            assert r.returncode == 0, f"image import on host {host.letter}: {first_error_line(r.stderr.decode())}"
            timings[f"image import {host.letter} (s)"] = round(time.monotonic() - started, 1)
            host.start_daemon(self.addr(host), extra_args=["--insecure"])
            r = host.cli(["run", "-d", "--name", "placeholder", "--ip", ip, IMAGE, "sleep", "infinity"])
            assert r.returncode == 0, f"placeholder on host {host.letter}: {first_error_line(r.stderr.decode())}"
        self._join_segment()
        return timings

    def _join_segment(self) -> None:
        seg_a, seg_b = f"pmrw{self.tag}a", f"pmrw{self.tag}b"
        _ip("link", "add", seg_a, "type", "veth", "peer", "name", seg_b)
        self._links.append(("", seg_a))
        _ip("link", "set", seg_a, "netns", self.a.netns)
        self._links[-1] = (self.a.netns, seg_a)
        _ip("link", "set", seg_b, "netns", self.b.netns)
        for host, link in ((self.a, seg_a), (self.b, seg_b)):
            _ip("-n", host.netns, "link", "set", link, "master", "pmbr0")
            _ip("-n", host.netns, "link", "set", link, "up")
        _ip("netns", "add", self.client_ns)
        self._ns_made = True
        outer, inner = f"pmrw{self.tag}h", f"pmrw{self.tag}c"
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        self._links.append(("", outer))
        _ip("link", "set", inner, "netns", self.client_ns)
        _ip("link", "set", outer, "netns", self.a.netns)
        self._links[-1] = (self.a.netns, outer)
        _ip("-n", self.a.netns, "link", "set", outer, "master", "pmbr0")
        _ip("-n", self.a.netns, "link", "set", outer, "up")
        _ip("-n", self.client_ns, "link", "set", "lo", "up")
        _ip("-n", self.client_ns, "addr", "add", f"{CLIENT_IP}/16", "dev", inner)
        _ip("-n", self.client_ns, "link", "set", inner, "up")

    def close(self) -> None:
        for netns, link in self._links:
            _ip(*(["-n", netns] if netns else []), "link", "del", link, check=False)
        if self._ns_made:
            for pid in _ip("netns", "pids", self.client_ns, check=False).stdout.split():
                subprocess.run(["kill", "-9", pid], check=False)
            _ip("netns", "del", self.client_ns, check=False)
        self.hosts.close()

    # --- helpers -------------------------------------------------------------------------------
    @staticmethod
    def addr(host: Host) -> str:
        return f"{host.address}:{DAEMON_PORT}"

    def next_ip(self) -> str:
        self._ip_counter += 1
        return f"10.77.{40 + self._ip_counter // 200}.{10 + self._ip_counter % 200}"

    def run_server(self, host: Host, name: str, ip: str, server: Server, extra: Sequence[str] = ()) -> None:
        env = [arg for kv in server.env for arg in ("-e", kv)]
        r = host.cli(["run", "-d", "--name", name, "--ip", ip, *env, *extra, IMAGE, *server.argv])
        if r.returncode != 0:
            raise AssertionError(f"run {server.name} on host {host.letter}: {first_error_line(r.stderr.decode())}")

    def client(self, kind: str, ip: str, port: int) -> ClientProc:
        return ClientProc(self.client_ns, kind, ip, port)

    def remote(self, host: Host, args: list[str]) -> subprocess.CompletedProcess:
        return host.run([*pymigrate_command(), "--host", self.addr(host), "--insecure", *args], check=False, timeout=CLI_TIMEOUT_S)

    def remove(self, name: str) -> None:
        for host in (self.a, self.b):
            host.cli(["rm", "-f", name])

    def logs(self, host: Host, name: str) -> str:
        r = host.cli(["logs", name])  # a server's complaints are on its stderr, which logs keeps apart
        return (r.stdout + r.stderr).decode(errors="replace")

    def exec(self, host: Host, name: str, *cmd: str) -> subprocess.CompletedProcess:
        return host.cli(["exec", name, *cmd], timeout=60)

    def process_users(self, host: Host, name: str) -> set[str]:
        r = self.exec(host, name, "ps", "-eo", "user=,comm=")
        assert r.returncode == 0, f"exec ps in {name} on host {host.letter}: {first_error_line(r.stderr.decode())}"
        users = set()
        for line in r.stdout.decode().splitlines():
            user, _, comm = line.strip().partition(" ")
            if comm.strip() != "ps":
                users.add(user)
        return users

    def sqlite_rows(self, host: Host, name: str) -> dict:
        r = self.exec(host, name, "python3", "-c", SQLITE_READER)
        assert r.returncode == 0, f"sqlite reader in {name} on host {host.letter}: {first_error_line(r.stderr.decode())}"
        return json.loads(r.stdout)  # type: ignore[no-any-return]


def status(host: Host, name: str) -> str | None:
    from runtime.errors import ContainerError
    from runtime.runtime import Runtime

    try:
        return Runtime(host.root).inspect(name).state.status
    except ContainerError:
        return None


# --- the four moves --------------------------------------------------------------------------------


_INCIDENT = re.compile(r"incident ([0-9a-f]{12})")


def incident_cause(hosts: Sequence[Host], message: str) -> str:
    """For a daemon's "internal error (incident ID)": the exception line its log holds for ID."""
    m = _INCIDENT.search(message)
    if not m:
        return ""
    for host in hosts:
        log = host.workdir / "daemon.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        at = text.find(f"incident {m.group(1)}")
        if at < 0:
            continue
        tail = text[at:].splitlines()[1:200]
        # the traceback ends at the first unindented line after "Traceback"
        for i, line in enumerate(tail):
            if i > 0 and line and not line.startswith((" ", "Traceback", "The above", "During handling")) and ":" in line:
                return f"host {host.letter} daemon: {line.strip()}"
    return ""


def _check(r: subprocess.CompletedProcess, what: str, hosts: Sequence[Host] = ()) -> dict:
    out = r.stdout.decode(errors="replace")
    if r.returncode != 0:
        message = first_error_line(r.stderr.decode(errors="replace") + "\n" + out)
        cause = incident_cause(hosts, message)
        raise MoveFailed(f"{what}: {message}" + (f" [{cause}]" if cause else ""))
    try:
        return json.loads(out)  # type: ignore[no-any-return]
    except ValueError:
        return {}


def _flags(server: Server) -> list[str]:
    return ["--tcp-established", *(["--file-locks"] if server.file_locks else [])]


def move_ckpt_restore(lab: RealLab, name: str, server: Server) -> Moved:
    started = time.monotonic()
    ckpt = _check(lab.a.cli(["checkpoint", name, *_flags(server), "--json"], timeout=CLI_TIMEOUT_S), "checkpoint")
    moved = Moved(lab.a)
    checkpoint_id = ckpt.get("checkpoint_id")
    if checkpoint_id:
        moved.cleanup.append(lambda: lab.a.cli(["checkpoint", "rm", checkpoint_id]))
    restored = _check(lab.a.cli(["restore", str(checkpoint_id), "--tcp-established", "--json"], timeout=CLI_TIMEOUT_S), "restore")
    moved.move_ms = (time.monotonic() - started) * 1000
    moved.stats = {"checkpoint": ckpt.get("stats", {}), "restore": restored.get("stats", {})}
    return moved


def move_export_import(lab: RealLab, name: str, server: Server) -> Moved:
    archive = lab.workdir / f"{name}.tar.zst"
    started = time.monotonic()
    moved = Moved(lab.b, cleanup=[lambda: archive.unlink(missing_ok=True)])
    ckpt = _check(lab.a.cli(["checkpoint", name, *_flags(server), "--export", str(archive), "--json"], timeout=CLI_TIMEOUT_S),
                  "checkpoint --export")
    restored = _check(lab.b.cli(["restore", "--import", str(archive), "--tcp-established", "--json"], timeout=CLI_TIMEOUT_S),
                      "restore --import")
    moved.move_ms = (time.monotonic() - started) * 1000
    moved.stats = {"checkpoint": ckpt.get("stats", {}), "restore": restored.get("stats", {})}
    return moved


def _migrate(mode: str) -> Callable[[RealLab, str, Server], Moved]:
    def move(lab: RealLab, name: str, server: Server) -> Moved:
        started = time.monotonic()
        result = _check(lab.remote(lab.a, ["migrate", name, lab.addr(lab.b), "--mode", mode, *_flags(server), "--json"]),
                        f"migrate --mode {mode}", (lab.a, lab.b))
        return Moved(lab.b, stats=result.get("stats", {}), move_ms=(time.monotonic() - started) * 1000)

    return move


MOVES: dict[str, Callable[[RealLab, str, Server], Moved]] = {
    "ckpt-restore": move_ckpt_restore,
    "export-import": move_export_import,
    "cold": _migrate("cold"),
    "postcopy": _migrate("postcopy"),
}
