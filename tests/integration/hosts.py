"""Several "hosts" on one machine for multi-host tests: network namespaces joined by a bridge.

Test files import the fixtures they use (``from tests.integration.hosts import make_hosts``;
pytest finds fixtures imported into a test module) or build ``Hosts`` themselves::

    root namespace                         host netns pmh-<tag>-a        host netns pmh-<tag>-b
    bridge pmhbr<tag> 10.251.N.1/24  ──veth pmh<tag>a ── eth0 10.251.N.2   ...  eth0 10.251.N.3
                                                        lo up, default via 10.251.N.1

- N is random per ``Hosts`` and checked against the routes already present, so two test
  sessions (or helpers) never share a subnet; 10.251/16 stays clear of the container pool
  (10.77.0.0/16) and of the integration fixtures' 10.100-10.249 subnets.
- Each host has its own state root (a fresh temporary directory) and can run a daemon
  (``start_daemon``; ``stop_daemon`` = SIGTERM, ``kill_daemon`` = SIGKILL for fault tests) and
  Debian's sshd (``start_sshd``) inside its namespace. Containers started by a host's daemon
  put their bridge (pmbr0) and veths inside that host's namespace, as on a real host.
- ``Hosts.close()`` (run by the fixture even when the test failed) kills every process left in
  each namespace, removes the containers and mounts below each root, deletes the namespaces
  (their veth ends go with them), the bridge and the temporary directories.

Commands enter a host with ``nsenter --net=/run/netns/NAME``, not ``ip netns exec``: the latter
also unshares the mount namespace and remounts /sys, which hides the cgroup hierarchies mounted
below /sys/fs/cgroup (the runtime then finds no cgroups). Only the network namespace differs
between hosts; /proc/sys/net follows the caller's namespace, while /sys/class/net still shows the
root namespace's devices (nothing here reads it). nsenter setns()es and then execs the command,
so a ``Popen`` pid is the pid of the program itself (daemon, sshd), not of a wrapper.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PYMIGRATE_BIN = VENV_BIN / "pymigrate"
SSHD = "/usr/sbin/sshd"
SUBNET_PREFIX = "10.251"
HOST_LETTERS = "abcdefgh"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def pymigrate_command() -> list[str]:
    """How to start this checkout's pymigrate (the venv's console script, else ``python -m migrate``)."""
    if PYMIGRATE_BIN.exists():
        return [str(PYMIGRATE_BIN)]
    return [sys.executable, "-m", "migrate"]


def _free_subnet() -> int:
    """A third octet N such that 10.251.N.0/24 has no route or address on this machine yet."""
    routes = _ip("-4", "route", "show", "table", "all").stdout + _ip("-4", "addr", "show").stdout
    for _ in range(64):
        n = secrets.randbelow(256)
        if f"{SUBNET_PREFIX}.{n}." not in routes:
            return n
    raise RuntimeError(f"no free /24 left in {SUBNET_PREFIX}.0.0/16")


def _wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{what}: process exited with status {proc.returncode}\n{tail}")
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{what}: not ready after {timeout_s}s\n{tail}")


def _terminate(proc: subprocess.Popen | None, timeout_s: float = 15.0) -> int | None:
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


@dataclass
class Host:
    """One host: a network namespace with an address on the hosts' bridge, and a state root."""

    letter: str
    netns: str
    address: str  # e.g. 10.251.17.2
    prefix_len: int
    gateway: str  # the bridge's address in the root namespace
    root: Path  # state root
    workdir: Path  # logs, sshd config and keys
    daemon: subprocess.Popen | None = field(default=None, repr=False)
    daemon_listen: str | None = None
    sshd: subprocess.Popen | None = field(default=None, repr=False)
    sshd_port: int = 22
    authorized_keys: Path | None = None

    # --- commands ----------------------------------------------------------------------------

    def command(self, cmd: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", *map(str, cmd)]

    def run(
        self, cmd: Sequence[str], *, check: bool = True, timeout: float = 60, input: bytes | None = None, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside this host's namespace; stdout/stderr captured as bytes."""
        return subprocess.run(self.command(cmd), capture_output=True, check=check, timeout=timeout, input=input, cwd=REPO, env=env)

    def popen(self, cmd: Sequence[str], **kwargs) -> subprocess.Popen:  # noqa: ANN003
        kwargs.setdefault("cwd", REPO)
        return subprocess.Popen(self.command(cmd), **kwargs)

    def cli(self, args: Sequence[str], *, check: bool = False, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        """``pymigrate --root ROOT ARGS`` inside this host's namespace."""
        return self.run([*pymigrate_command(), "--root", str(self.root), *args], check=check, timeout=timeout, env=env)

    def pids(self) -> list[int]:
        """Every process whose network namespace is this host's."""
        out = _ip("netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    # --- daemon ---------------------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        return self.root / "run" / "pymigrate.sock"

    def start_daemon(self, listen: str | None = None, *, extra_args: Sequence[str] = (), timeout_s: float = 20.0,
                     env: dict[str, str] | None = None) -> str:
        """Start ``pymigrate daemon`` in the namespace; returns an address dialable from the root namespace.

        ``listen`` defaults to ``unix:ROOT/run/pymigrate.sock``; ``"tcp"`` means
        ``ADDRESS:7443`` with ``--insecure``; any other value is passed as is (add TLS flags in
        ``extra_args``). ``env``: variables added to the daemon's environment (e.g. failpoints).
        """
        if self.daemon is not None and self.daemon.poll() is None:
            raise RuntimeError(f"host {self.letter} already runs a daemon (pid {self.daemon.pid})")
        extra = list(extra_args)
        if listen is None:
            listen = f"unix:{self.socket_path}"
        elif listen == "tcp":
            listen = f"{self.address}:7443"
            extra.append("--insecure")
        log = self.workdir / "daemon.log"
        with open(log, "ab") as out:
            self.daemon = self.popen(
                [*pymigrate_command(), "--root", str(self.root), "daemon", "--listen", listen, *extra],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env} if env else None,
            )
        self.daemon_listen = listen
        if listen.startswith("unix:"):
            path = listen[len("unix:") :]
            _wait_for(lambda: _connectable_unix(path), timeout_s, f"daemon on host {self.letter}", self.daemon, log)
            return listen
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        if host in ("0.0.0.0", "::", ""):
            host = self.address
        _wait_for(lambda: _connectable_tcp(host, int(port)), timeout_s, f"daemon on host {self.letter}", self.daemon, log)
        return f"{host}:{port}"

    def stop_daemon(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (graceful stop) and wait; the daemon's exit status."""
        status = _terminate(self.daemon, timeout_s)
        self.daemon = None
        return status

    def kill_daemon(self) -> None:
        """SIGKILL the daemon (fault tests): no graceful stop, its socket stays behind."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait(10)
        self.daemon = None

    # --- sshd -----------------------------------------------------------------------------------

    @property
    def sshd_dir(self) -> Path:
        return self.workdir / "sshd"

    @property
    def host_key(self) -> Path:
        return self.sshd_dir / "ssh_host_ed25519_key"

    def host_key_fingerprint(self) -> str:
        """``SHA256:...`` of the current host key (ssh-keygen's view, independent of our code)."""
        out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", f"{self.host_key}.pub"], capture_output=True, text=True, check=True)
        return out.stdout.split()[1]

    def regenerate_host_key(self) -> None:
        """A new ed25519 host key (takes effect at the next ``start_sshd``)."""
        self.host_key.unlink(missing_ok=True)
        Path(f"{self.host_key}.pub").unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"host-{self.letter}", "-f", str(self.host_key)], check=True)

    def start_sshd(self, authorized_key: str | Path, *, port: int = 22, timeout_s: float = 15.0) -> None:
        """Debian's sshd in the namespace on ADDRESS:port, root login by key only.

        ``authorized_key`` is a public key line or a ``.pub`` file. A host key is generated on
        first use and kept (so ``stop_sshd``/``start_sshd`` keeps the identity until
        ``regenerate_host_key``).
        """
        if not Path(SSHD).exists():
            pytest.skip("sshd not installed (apt-get install openssh-server)")
        if self.sshd is not None and self.sshd.poll() is None:
            raise RuntimeError(f"host {self.letter} already runs sshd (pid {self.sshd.pid})")
        self.sshd_dir.mkdir(mode=0o700, exist_ok=True)
        # sshd's compiled-in privilege separation directory; the openssh-server package normally
        # creates it at boot (tmpfiles.d), but sshd is left disabled by scripts/setup.sh.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        if not self.host_key.exists():
            self.regenerate_host_key()
        key_line = Path(authorized_key).read_text() if isinstance(authorized_key, Path) else str(authorized_key)
        self.authorized_keys = self.sshd_dir / "authorized_keys"
        self.authorized_keys.write_text(key_line.strip() + "\n")
        config = self.sshd_dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    f"ListenAddress {self.address}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.sshd_dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "StrictModes no",
                    "UsePAM no",
                    "AllowStreamLocalForwarding yes",
                    "PrintMotd no",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd rejects {config}: {check.stderr.strip()}")
        log = self.sshd_dir / "sshd.log"
        with open(log, "ab") as out:
            self.sshd = self.popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.sshd_port = port
        _wait_for(lambda: _connectable_tcp(self.address, port), timeout_s, f"sshd on host {self.letter}", self.sshd, log)

    def sshd_pids(self) -> list[int]:
        """The listening sshd and every per-connection sshd of this host."""
        return [pid for pid in self.pids() if _comm(pid) == "sshd"]

    def stop_sshd(self) -> None:
        """SIGTERM the listener and SIGKILL its session processes (ends every connection)."""
        _terminate(self.sshd, 10.0)
        self.sshd = None
        self.kill_sshd()

    def kill_sshd(self) -> None:
        """SIGKILL every sshd of this host: the link drops without an SSH goodbye."""
        for pid in self.sshd_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.sshd is not None:
            self.sshd.wait(10)
            self.sshd = None

    @property
    def sshd_log(self) -> str:
        path = self.sshd_dir / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def ssh_url(self, user: str = "root") -> str:
        port = "" if self.sshd_port == 22 else f":{self.sshd_port}"
        return f"ssh://{user}@{self.address}{port}"

    # --- teardown -------------------------------------------------------------------------------

    def _teardown(self) -> list[str]:
        problems: list[str] = []
        _terminate(self.daemon, 20.0)
        self.daemon = None
        _terminate(self.sshd, 5.0)
        self.sshd = None
        # Containers started by this host's daemon (their processes live in child namespaces).
        if (self.root / "containers").is_dir() and any((self.root / "containers").iterdir()):
            try:
                from runtime.runtime import Runtime

                rt = Runtime(self.root)
                for info in rt.list(all=True):
                    rt.remove(info.spec.container_id, force=True)
            except Exception as exc:  # teardown: report, keep cleaning
                problems.append(f"host {self.letter}: cannot remove containers: {exc}")
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        _unmount_below(self.root)
        r = _ip("netns", "del", self.netns, check=False)
        if r.returncode != 0 and "No such file" not in r.stderr:
            problems.append(f"host {self.letter}: ip netns del {self.netns}: {r.stderr.strip()}")
        return problems


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _connectable_unix(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _connectable_tcp(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
        return True
    except OSError:
        return False


def _unmount_below(root: Path) -> None:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


class Hosts:
    """``count`` hosts on one bridge; a context manager whose exit tears everything down."""

    def __init__(self, count: int = 2, *, base_dir: Path | None = None) -> None:
        if not 1 <= count <= len(HOST_LETTERS):
            raise ValueError(f"between 1 and {len(HOST_LETTERS)} hosts, not {count}")
        self.tag = secrets.token_hex(3)
        self.bridge = f"pmhbr{self.tag}"
        n = _free_subnet()
        self.subnet = ipaddress.ip_network(f"{SUBNET_PREFIX}.{n}.0/24")
        self.gateway = f"{SUBNET_PREFIX}.{n}.1"
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"pmh-{self.tag}-", dir=base_dir))
        self.hosts: list[Host] = []
        self._bridge_made = False
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._bridge_made = True
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i in range(count):
                self._add_host(HOST_LETTERS[i], n, i)
        except BaseException:
            self.close()
            raise

    def _add_host(self, letter: str, n: int, index: int) -> Host:
        netns = f"pmh-{self.tag}-{letter}"
        veth = f"pmh{self.tag}{letter}"
        address = f"{SUBNET_PREFIX}.{n}.{2 + index}"
        workdir = self.base_dir / letter
        root = workdir / "root"
        root.mkdir(parents=True)
        _ip("netns", "add", netns)
        host = Host(letter=letter, netns=netns, address=address, prefix_len=24, gateway=self.gateway, root=root, workdir=workdir)
        self.hosts.append(host)  # now, so close() removes the netns even if the next steps fail
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "route", "add", "default", "via", self.gateway)
        return host

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def close(self) -> None:
        problems: list[str] = []
        for host in reversed(self.hosts):
            problems.extend(host._teardown())
        self.hosts = []
        if self._bridge_made:
            r = _ip("link", "del", self.bridge, check=False)
            if r.returncode != 0 and "Cannot find device" not in r.stderr:
                problems.append(f"ip link del {self.bridge}: {r.stderr.strip()}")
            self._bridge_made = False
        shutil.rmtree(self.base_dir, ignore_errors=True)
        for problem in problems:
            print(f"hosts teardown: {problem}", file=sys.stderr)

    def __enter__(self) -> "Hosts":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _can_make_hosts() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "ip (iproute2) not installed"
    return None


@pytest.fixture
def make_hosts() -> Iterator:
    """``make_hosts(count=2) -> Hosts``; every ``Hosts`` made is torn down after the test."""
    reason = _can_make_hosts()
    if reason:
        pytest.skip(f"multi-host tests: {reason}")
    made: list[Hosts] = []

    def make(count: int = 2) -> Hosts:
        hosts = Hosts(count)
        made.append(hosts)
        return hosts

    yield make
    for hosts in reversed(made):
        hosts.close()


@pytest.fixture
def two_hosts(make_hosts) -> Hosts:  # noqa: ANN001
    return make_hosts(2)


@pytest.fixture
def three_hosts(make_hosts) -> Hosts:  # noqa: ANN001
    return make_hosts(3)
