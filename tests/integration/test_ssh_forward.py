"""ssh:// bytes through OpenSSH's ``ssh -L`` (migrate/remote/ssh_forward.py, issue 17), with
paramiko's channel as the fallback. Debian's real sshd and ssh, real CRIU.

- a tunnel's connections run through one ``ssh -tt -L LOCAL:REMOTE_SOCKET`` of ours, pinned to
  the host key paramiko verified (a known_hosts of one key in the 0700 tunnel directory); it is
  gone after close, and after a SIGKILL of the process that started it; a forwarder pinned to
  another host key is refused by ssh itself; its session holds a pty (and runs only ``sleep``) so
  that both ends of its connection send with TCP_NODELAY;
- a memhog migration over ssh:// runs its bytes through such a process (sampled while it runs)
  and keeps the memory checksum;
- with a PATH that has no ``ssh`` the same migration goes through paramiko, saying so in the log;
- a cold migration's pages take the page socket (migrate/migration/page_socket.py): over ssh:// the
  ssh process's second forward, to a ``unix:`` daemon its socket directly; the source's stats and
  log and the target's log say so, and the memory checksum holds.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, Self

import paramiko
import pytest

from tests.integration.hosts import Host, Hosts, make_hosts  # noqa: F401 (fixture)
from tests.integration.migrate_helpers import migrate_json
from tests.integration.test_ssh_migrate import SshLab, _make_lab, assert_hop, container_spec, image_tar  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "netns", "sshd")]

MIB = 1 << 20
MIGRATE_MIB = 64


def ssh_forwarders(remote_socket: str) -> list[int]:
    """Pids of ``ssh ... -L LOCAL:remote_socket`` processes on this machine."""
    end = b":" + remote_socket.encode()
    return [pid for pid, argv in ssh_processes() if b"-L" in argv and any(arg.endswith(end) for arg in argv)]


def ssh_processes() -> list[tuple[int, list[bytes]]]:
    """(pid, argv) of every ``ssh`` process on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and Path(argv[0].decode(errors="replace")).name == "ssh":
            found.append((int(entry.name), argv))
    return found


class Sampler:
    """Calls ``sample()`` every ``interval_s`` on a thread, from ``with`` until its end."""

    interval_s = 0.02

    def __init__(self) -> None:
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class ForwarderWatch(Sampler):
    """Samples ``ssh_forwarders(remote_socket)`` every 20 ms until stopped."""

    def __init__(self, remote_socket: str) -> None:
        super().__init__()
        self.remote_socket = remote_socket
        self.seen: set[int] = set()

    def sample(self) -> None:
        self.seen.update(ssh_forwarders(self.remote_socket))


@pytest.fixture
def sshd_host(make_hosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Host, dict]]:  # noqa: ANN001
    from tests.integration.hosts import PYMIGRATE_BIN

    hosts: Hosts = make_hosts(1)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    host = hosts[0]
    host.start_sshd(Path(f"{key}.pub"))
    options = {
        "key_file": key, "known_hosts": tmp_path / "known_hosts", "accept_new": True,
        "remote_pymigrate": str(PYMIGRATE_BIN), "remote_root": str(host.root), "config_file": home / ".ssh" / "config",
    }  # fmt: skip
    yield host, options


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def test_tunnel_connections_run_through_a_pinned_ssh_process(sshd_host: tuple[Host, dict]) -> None:
    from migrate.remote.client import RemoteEngine
    from migrate.remote.ssh import open_ssh_target

    host, options = sshd_host
    remote_socket = str(host.socket_path)
    with open_ssh_target(host.ssh_url(), **options) as target:
        assert target.forwarder == "openssh"
        local = Path(target.address[len("unix:") :])
        assert local.stat().st_mode & 0o777 == 0o600 and local.parent.stat().st_mode & 0o777 == 0o700
        pinned = (local.parent / "known_hosts").read_text().split()
        host_pub = Path(f"{host.host_key}.pub").read_text().split()[:2]
        assert pinned[1:3] == host_pub and set(pinned) == {*host_pub, pinned[0], pinned[3]}, pinned  # only this key
        pids = ssh_forwarders(remote_socket)
        assert len(pids) == 1 and _ppid(_ppid(pids[0])) == os.getpid(), pids  # ours, under its watcher shell
        with RemoteEngine(target.address) as engine:
            assert engine.containers(all=True) == []
        # nothing listens on TCP in the host but sshd
        listening = host.run(["ss", "-Htln"]).stdout.decode()
        assert len(listening.strip().splitlines()) == 1 and ":22 " in listening, listening
    assert ssh_forwarders(remote_socket) == []
    assert not local.parent.exists()


SYS_PIDFD_GETFD = 438  # x86_64 and the generic table: a copy of another process's fd (Linux 5.6)


def tcp_nodelay(pid: int) -> list[bool]:
    """TCP_NODELAY of each connected TCP socket ``pid`` holds (a copy of each through pidfd_getfd)."""
    import ctypes
    import socket

    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    found = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except OSError:
                continue
            copy = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0)
            if copy < 0:
                continue
            with socket.socket(fileno=copy) as sock:
                if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                    try:
                        sock.getpeername()
                    except OSError:
                        continue  # a listener
                    found.append(bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
    finally:
        os.close(pidfd)
    return found


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            children.setdefault(_ppid(int(entry.name)), []).append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # not a pid, or gone
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _tty_nr(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[4])


def test_forwarders_connection_sends_without_nagle_through_a_pty_session(sshd_host: tuple[Host, dict]) -> None:
    """OpenSSH sets TCP_NODELAY only for a session with a pty (ssh_forward.py's docstring): the
    forwarder's session holds one, running ``sleep`` and nothing else; both ends' sockets of the
    connection send without Nagle; the remote ``sleep`` ends with the tunnel."""
    from migrate.remote.ssh import open_ssh_target

    host, options = sshd_host
    assert host.sshd is not None
    with open_ssh_target(host.ssh_url(), **options) as target:
        assert target.forwarder == "openssh"
        [client] = ssh_forwarders(str(host.socket_path))
        assert tcp_nodelay(client) == [True]
        deadline = time.monotonic() + 10  # the forward listens before the session's command starts
        while True:
            server_side = _descendants(host.sshd.pid)
            sleeps = [pid for pid in server_side if _cmdline(pid) == [b"sleep", b"2147483647", b""]]
            if sleeps or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        held = [flag for pid in server_side if pid not in sleeps for flag in tcp_nodelay(pid)]
        assert held and all(held), held  # sshd's end of the connection (the client's has it with -N too)
        assert len(sleeps) == 1 and _tty_nr(sleeps[0]) != 0, [(pid, _cmdline(pid)) for pid in server_side]  # on a pty
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{sleeps[0]}").exists():
        time.sleep(0.05)
    assert not Path(f"/proc/{sleeps[0]}").exists(), "the remote sleep outlived the tunnel"


def test_an_sshd_that_refuses_ptys_gets_a_forward_without_a_session(sshd_host: tuple[Host, dict], tmp_path: Path) -> None:
    """``PermitTTY no``: ssh ends the forced-pty session (and its forwards); the forwarder runs a
    second ssh without a session, which forwards."""
    from migrate.remote.client import RemoteEngine
    from migrate.remote.ssh import open_ssh_target
    from tests.integration.hosts import SSHD, _connectable_tcp, _wait_for

    host, options = sshd_host
    host.stop_sshd()
    config = host.sshd_dir / "sshd_config"
    config.write_text(config.read_text() + "PermitTTY no\n")
    log = tmp_path / "sshd.log"
    with open(log, "ab") as out:
        host.sshd = host.popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    _wait_for(lambda: _connectable_tcp(host.address, 22), 15.0, "sshd", host.sshd, log)
    with open_ssh_target(host.ssh_url(), **options) as target:
        assert target.forwarder == "openssh"
        assert target._forward.openssh is not None and target._forward.openssh.pty is False
        [pid] = ssh_forwarders(str(host.socket_path))
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"-N" in argv and b"-tt" not in argv, argv
        with RemoteEngine(target.address) as engine:
            assert engine.containers(all=True) == []


def test_forwarder_ends_when_its_starter_is_killed(sshd_host: tuple[Host, dict], tmp_path: Path) -> None:
    """A process that opened a tunnel is SIGKILLed: no close(), no atexit; its ssh ends anyway."""
    import json
    import signal
    import sys

    host, options = sshd_host
    script = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from migrate.remote.ssh import open_ssh_target\n"
        "o = json.loads(sys.argv[2])\n"
        "t = open_ssh_target(sys.argv[1], **o)\n"
        "print(t.forwarder, flush=True)\n"
        "time.sleep(600)\n"
    )
    opts = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
    starter = subprocess.Popen([sys.executable, "-c", script, host.ssh_url(), json.dumps(opts)], stdout=subprocess.PIPE,
                               cwd=str(Path(__file__).resolve().parents[2]))  # fmt: skip
    try:
        assert starter.stdout is not None
        assert starter.stdout.readline().strip() == b"openssh"
        pids = ssh_forwarders(str(host.socket_path))
        assert len(pids) == 1 and _ppid(_ppid(pids[0])) == starter.pid, pids
        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
        deadline = time.monotonic() + 15
        while ssh_forwarders(str(host.socket_path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ssh_forwarders(str(host.socket_path)) == []
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait(10)
        if starter.stdout is not None:
            starter.stdout.close()


def test_forwarder_pinned_to_another_host_key_is_refused(sshd_host: tuple[Host, dict], tmp_path: Path) -> None:
    from migrate.remote.ssh_forward import Identity, OpenSshForwarder

    host, options = sshd_host
    host.start_daemon()
    key = Path(options["key_file"])
    workdir = tmp_path / "fwd"
    workdir.mkdir(mode=0o700)
    forwarder = OpenSshForwarder(
        "/usr/bin/ssh", workdir, hostname=host.address, port=22, user="root",
        host_key=paramiko.Ed25519Key.from_private_key_file(str(key)),  # not the host's key
        identity=Identity(key=paramiko.PKey.from_path(str(key)), path=key), connect_timeout_s=10,
    )  # fmt: skip
    reason = forwarder.start(workdir / "ssh.sock", str(host.socket_path), 15.0)
    assert reason is not None and "status 255" in reason and "host key verification failed" in reason.lower(), reason
    assert forwarder.pid is None and not (workdir / "ssh.sock").exists()
    assert ssh_forwarders(str(host.socket_path)) == []
    # the same forwarder pinned to the right key works, and reaches the daemon
    right = OpenSshForwarder(
        "/usr/bin/ssh", tmp_path, hostname=host.address, port=22, user="root",
        host_key=paramiko.PKey.from_path(str(host.host_key)),
        identity=Identity(key=paramiko.PKey.from_path(str(key)), path=key), connect_timeout_s=10,
    )  # fmt: skip
    try:
        assert right.start(tmp_path / "ssh.sock", str(host.socket_path), 15.0) is None
    finally:
        right.close()


def test_an_ssh_that_fails_leaves_the_tunnel_on_paramiko(sshd_host: tuple[Host, dict], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """An ``ssh`` on PATH that refuses (exit 255 with a message): logged, and paramiko carries the bytes."""
    import logging

    from migrate.remote.client import RemoteEngine
    from migrate.remote.ssh import open_ssh_target

    host, options = sshd_host
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text("#!/bin/sh\necho 'ssh: no route to host (a broken client)' >&2\nexit 255\n")
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with caplog.at_level(logging.WARNING, logger="migrate.remote.ssh"), open_ssh_target(host.ssh_url(), **options) as target:
        assert target.forwarder == "paramiko"
        with RemoteEngine(target.address) as engine:
            assert engine.containers(all=True) == []
    warnings = [r.getMessage() for r in caplog.records if "forwarding through paramiko" in r.getMessage()]
    assert warnings and "status 255: ssh: no route to host (a broken client)" in warnings[0], warnings


def _path_without_ssh(tmp_path: Path) -> str:
    """A PATH of one directory: links to every program on ours except ``ssh``."""
    bin_dir = tmp_path / "bin-without-ssh"
    bin_dir.mkdir()
    for directory in os.environ.get("PATH", "").split(":"):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            link = bin_dir / name
            if name != "ssh" and not link.exists() and os.access(os.path.join(directory, name), os.X_OK):
                link.symlink_to(os.path.join(directory, name))
    return str(bin_dir)


@pytest.fixture
def ssh_pair(image_tar: Path, tmp_path: Path) -> Iterator[SshLab]:  # noqa: F811
    yield from _make_lab(image_tar, tmp_path, 2, image_on=(0, 1))


@pytest.mark.requires("criu", "pycriu", "busybox", "overlay")
@pytest.mark.parametrize("with_ssh", [True, False], ids=["openssh", "no-ssh-on-path"])
def test_migration_over_ssh_moves_bytes_through_the_forwarder(ssh_pair: SshLab, tmp_path: Path, with_ssh: bool) -> None:
    lab, (a, b) = ssh_pair.lab, ssh_pair.hosts.hosts
    name = "fwd"
    lab.run_memhog(a, name, MIGRATE_MIB)
    spec = container_spec(a, name)
    before = lab.report(a, name)
    assert before is not None
    env = ssh_pair.env()
    if not with_ssh:
        env["PATH"] = _path_without_ssh(tmp_path)
    ssh_pair.record_host_key(b)
    with ForwarderWatch(str(b.root / "run" / "pymigrate.sock")) as watch:
        r = a.cli(["--debug", *ssh_pair.ssh_flags(b), "migrate", name, b.ssh_url(), "--json"], timeout=300, env=env)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    stats = migrate_json(r.stdout)["stats"]
    assert stats["raw_bytes"] >= MIGRATE_MIB * MIB, stats  # on the wire: less when the page relay chose zstd
    stderr = r.stderr.decode()
    assert watch.samples > 3
    if with_ssh:
        assert watch.seen, "no ssh -W process forwarded the migration"
        assert "ssh forward through" in stderr, stderr[-3000:]
    else:
        assert watch.seen == set(), f"ssh ran although not on PATH: {watch.seen}"
        assert "no ssh client on PATH: forwarding through paramiko" in stderr, stderr[-3000:]
    assert_hop(lab, a, b, name, spec["ip"], spec["container_id"], before)
    assert ssh_forwarders(str(b.root / "run" / "pymigrate.sock")) == []


class PageForwardWatch(Sampler):
    """Samples, every 10 ms until stopped, the ``-L LOCAL:REMOTE`` forwards of ssh processes whose
    REMOTE is in ``pages_dir`` (the page socket's forward, migrate/remote/ssh.py)."""

    interval_s = 0.01

    def __init__(self, pages_dir: Path) -> None:
        super().__init__()
        self.prefix = f":{pages_dir}/".encode()
        self.forwards: set[bytes] = set()

    def sample(self) -> None:
        for _pid, argv in ssh_processes():
            self.forwards.update(arg for arg in argv if self.prefix in arg)


def _page_socket_used(stats: dict, stderr: str, target_log: str, via: str) -> None:
    assert stats["phases_ms"].get("page_socket") == 1.0, f"the pages did not take a page socket: {stats}"
    assert f"page stream over {via} socket" in stderr, stderr[-3000:]
    # the target's page relay answered and its page server got the stream (zstd or raw, as the probe chose)
    assert re.search(r"page stream (raw|zstd): \d+ bytes on the wire", target_log), target_log[-3000:]


@pytest.mark.requires("criu", "pycriu", "busybox", "overlay")
@pytest.mark.parametrize("compress", ["auto", "on"])  # auto: CRIU's connection as it is; on: through the relay (zstd)
def test_cold_pages_go_through_the_tunnels_page_forward(ssh_pair: SshLab, compress: str) -> None:
    lab, (a, b) = ssh_pair.lab, ssh_pair.hosts.hosts
    name = "pages"
    lab.run_memhog(a, name, MIGRATE_MIB)
    spec = container_spec(a, name)
    before = lab.report(a, name)
    assert before is not None
    ssh_pair.record_host_key(b)
    pages_dir = b.root / "run" / "pages"
    with PageForwardWatch(pages_dir) as watch:
        r = a.cli(["--debug", *ssh_pair.ssh_flags(b), "migrate", name, b.ssh_url(), f"--compress={compress}", "--json"],
                  timeout=300, env=ssh_pair.env())
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    stats = migrate_json(r.stdout)["stats"]
    assert len(watch.forwards) == 1, f"one ssh -L to a page socket in {pages_dir}: {watch.forwards}"
    local = watch.forwards.pop().decode().partition(":")[0]
    assert local.endswith("/pages.sock"), local  # in the tunnel's 0700 directory, beside its other socket
    _page_socket_used(stats, r.stderr.decode(), (b.root / "run" / "ssh-daemon.log").read_text(), "ssh")
    assert ("page_probe" in stats["phases_ms"]) == (compress == "on"), stats
    assert stats["phases_ms"].get("page_compressed", 0.0) == (1.0 if compress == "on" else 0.0), stats
    assert stats["raw_bytes"] >= MIGRATE_MIB * MIB, stats
    assert_hop(lab, a, b, name, spec["ip"], spec["container_id"], before)
    assert list(pages_dir.iterdir()) == [], "the page socket goes with its migration"
    assert pages_dir.stat().st_mode & 0o777 == 0o700


@pytest.mark.requires("criu", "pycriu", "busybox", "overlay")
def test_cold_pages_to_a_local_unix_daemon_take_its_page_socket(ssh_pair: SshLab) -> None:
    lab, (a, b) = ssh_pair.lab, ssh_pair.hosts.hosts
    name = "local"
    lab.run_memhog(a, name, MIGRATE_MIB)
    spec = container_spec(a, name)
    before = lab.report(a, name)
    assert before is not None
    b.start_daemon()  # on B's unix socket, reachable from A's namespace on this one machine
    try:
        r = a.cli(["--debug", "migrate", name, f"unix:{b.socket_path}", "--json"], timeout=300)
    finally:
        b.stop_daemon()
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    stats = migrate_json(r.stdout)["stats"]
    _page_socket_used(stats, r.stderr.decode(), (b.workdir / "daemon.log").read_text(), "unix")
    assert_hop(lab, a, b, name, spec["ip"], spec["container_id"], before)
    assert list((b.root / "run" / "pages").iterdir()) == []
