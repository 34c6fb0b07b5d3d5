"""Two hosts with daemons over TCP and a memhog workload: shared by the migration fault tests
(tests/integration/test_migrate_faults.py) and the migration benchmark (scripts/bench_migrate.py).

- ``memhog_image_tar(workdir)``: the busybox rootfs plus a static ``/bin/memhog``
  (tests/workloads/memhog.c, built with ``gcc -O2 -static``), as a tar for ``image import``.
- ``Lab``: ``Hosts(n)`` with each host's daemon on ``ADDRESS:7443 --insecure``, the memhog
  image imported on every host, and helpers to start a memhog container, read its counter,
  and list every piece a container or an incoming migration can leave on a host
  (``leftovers``) — record, cgroup dirs, overlay mounts, host veth, address lease,
  ROOT/run/incoming records, ROOT/tmp scratch.

A memhog counts every 10 ms while it runs; ``counter`` sends SIGUSR1 to the container's init
through ``pymigrate exec`` and reads the line it writes (``<fnv64 of its memory> <counter>``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.hosts import REPO, Host, Hosts

MEMHOG_C = REPO / "tests" / "workloads" / "memhog.c"
IMAGE = "memhog"
DAEMON_PORT = 7443
OUT = "/tmp/memhog.out"


def build_memhog(workdir: Path) -> Path:
    out = workdir / "memhog"
    if not out.exists():
        subprocess.run(["gcc", "-O2", "-static", "-o", str(out), str(MEMHOG_C)], check=True, capture_output=True)
    return out


def memhog_image_tar(workdir: Path) -> Path:
    """busybox rootfs + /bin/memhog, as a plain tar (owners 0:0)."""
    tar = workdir / "memhog-image.tar"
    if tar.exists():
        return tar
    binary = build_memhog(workdir)
    subprocess.run([str(REPO / "scripts" / "make-busybox-image.sh"), str(tar)], check=True, capture_output=True)
    stage = workdir / "stage"
    (stage / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, stage / "bin" / "memhog")
    subprocess.run(
        ["tar", "-rf", str(tar), "--owner=0", "--group=0", "--numeric-owner", "-C", str(stage), "bin/memhog"],
        check=True,
        capture_output=True,
    )
    return tar


def cgroup_dirs(root: Path, container_id: str) -> list[Path]:
    """Every cgroup dir a container of state root ``root`` has (or would have) on this machine:
    <own cgroup in each hierarchy>/pymigrate/<root tag>/<container id> (runtime.config)."""
    from runtime.config import default_cgroup_parent

    parent = default_cgroup_parent(root)
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            mount = Path("/sys/fs/cgroup/unified")
        elif controllers.startswith("name="):
            mount = Path("/sys/fs/cgroup") / controllers[len("name=") :]
        else:
            mount = Path("/sys/fs/cgroup") / controllers.split(",")[0]
        d = mount / path.lstrip("/") / parent / container_id
        if d.exists():
            found.append(d)
    return found


@dataclass
class Lab:
    hosts: Hosts
    image_tar: Path
    mounts: list[Path] = field(default_factory=list)

    @classmethod
    def create(
        cls, workdir: Path, count: int = 2, *, image_on: tuple[int, ...] | None = None, tmpfs_mib: dict[int, int] | None = None
    ) -> "Lab":
        """``count`` hosts with daemons; the memhog image on the hosts ``image_on`` (default all);
        ``tmpfs_mib`` {host index: MiB}: that host's state root is a tmpfs of that size."""
        tar = memhog_image_tar(workdir)
        hosts = Hosts(count)
        lab = cls(hosts, tar)
        try:
            for i, mib in (tmpfs_mib or {}).items():
                root = hosts[i].root
                subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0711", "tmpfs", str(root)], check=True)
                lab.mounts.append(root)
            for i, host in enumerate(hosts):
                if image_on is None or i in image_on:
                    r = host.cli(["image", "import", IMAGE, str(tar)])
                    if r.returncode != 0:
                        raise RuntimeError(f"image import on host {host.letter}: {r.stderr.decode()}")
                lab.start_daemon(host)
        except BaseException:
            hosts.close()
            raise
        return lab

    def close(self) -> None:
        base = self.hosts.base_dir
        self.hosts.close()
        for root in self.mounts:
            subprocess.run(["umount", "-l", str(root)], check=False, capture_output=True)
        self.mounts.clear()
        shutil.rmtree(base, ignore_errors=True)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- daemons --------------------------------------------------------------------------------
    @staticmethod
    def addr(host: Host) -> str:
        return f"{host.address}:{DAEMON_PORT}"

    def start_daemon(self, host: Host, env: dict[str, str] | None = None) -> str:
        return host.start_daemon(self.addr(host), extra_args=["--insecure"], env=env)

    def remote(self, host: Host, args: list[str], *, timeout: float = 300) -> subprocess.CompletedProcess:
        """``pymigrate --host ADDR --insecure ARGS`` (the command runs in the host's daemon)."""
        return host.run(
            [*_pm(), "--host", self.addr(host), "--insecure", *args], check=False, timeout=timeout
        )

    def migrate_popen(self, source: Host, target: Host, name: str, *extra: str) -> subprocess.Popen:
        """Start ``migrate NAME TARGET --json`` on the source's daemon; stdout/stderr piped."""
        return source.popen(
            [*_pm(), "--host", self.addr(source), "--insecure", "migrate", name, self.addr(target), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    # --- containers -----------------------------------------------------------------------------
    def run_memhog(self, host: Host, name: str, size_mib: int, *, memory: str | None = None, text_percent: int = 0) -> dict:
        """A memhog of ``size_mib``; ``text_percent`` of its memory is text (compressible), the rest random."""
        args = ["run", "-d", "--name", name]
        if memory:
            args += ["--memory", memory]
        extra = [str(text_percent)] if text_percent else []
        r = host.cli([*args, IMAGE, "/bin/memhog", str(size_mib), OUT, *extra])
        if r.returncode != 0:
            raise RuntimeError(f"run {name} on host {host.letter}: {r.stderr.decode()}")
        self.wait_filled(host, name, size_mib)
        return self.inspect(host, name)

    def wait_filled(self, host: Host, name: str, size_mib: int, timeout_s: float = 120) -> None:
        """Until memhog has filled its memory (it answers SIGUSR1 only after that)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.counter(host, name, timeout_s=2.0) is not None:
                return
        raise RuntimeError(f"memhog {name} ({size_mib} MiB) on host {host.letter} did not report within {timeout_s}s")

    def inspect(self, host: Host, name: str) -> dict:
        r = host.cli(["inspect", name])
        if r.returncode != 0:
            raise RuntimeError(f"inspect {name} on host {host.letter}: {r.stderr.decode()}")
        data = json.loads(r.stdout)
        return data[0] if isinstance(data, list) else data

    def ps(self, host: Host) -> list[dict]:
        r = host.cli(["ps", "-a", "--json"])
        if r.returncode != 0:
            raise RuntimeError(f"ps on host {host.letter}: {r.stderr.decode()}")
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def running_names(self, host: Host) -> set[str]:
        out = set()
        for c in self.ps(host):
            if _status(c) == "running":
                out.add(_name(c))
        return out

    def report(self, host: Host, name: str, timeout_s: float = 10.0) -> tuple[str, int] | None:
        """(fnv64 of memhog's memory, its counter), or None if it does not answer in time (frozen,
        gone, still filling). SIGUSR1 goes from the test to the container's init (host pid), the
        answer is read through the container's merged overlay dir."""
        from runtime.runtime import Runtime

        try:
            info = Runtime(host.root).inspect(name)
        except Exception:  # not there (any more)
            return None
        if info.state.status != "running" or not info.state.pid:
            return None
        out = Path(info.bundle_dir) / "merged" / OUT.lstrip("/")
        out.unlink(missing_ok=True)
        try:
            os.kill(info.state.pid, signal.SIGUSR1)
        except ProcessLookupError:
            return None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                parts = out.read_text().split()
            except OSError:
                parts = []
            if len(parts) == 2 and parts[1].isdigit():
                return parts[0], int(parts[1])
            time.sleep(0.02)
        return None

    def counter(self, host: Host, name: str, timeout_s: float = 10.0) -> int | None:
        r = self.report(host, name, timeout_s)
        return None if r is None else r[1]

    def assert_counting(self, host: Host, name: str) -> None:
        """The container runs on ``host`` and its counter advances (it is not frozen)."""
        first = self.counter(host, name)
        assert first is not None, f"{name} on host {host.letter} does not answer (frozen or gone)"
        time.sleep(0.3)
        second = self.counter(host, name)
        assert second is not None and second > first, f"{name} on host {host.letter} stopped counting ({first} -> {second})"

    # --- what a host holds ----------------------------------------------------------------------
    def leftovers(self, host: Host, name: str, container_id: str) -> list[str]:
        """Every piece of container ``name``/``container_id`` or of an incoming migration on ``host``."""
        from runtime.network import host_veth_name

        root = host.root
        found: list[str] = []
        if (root / "containers" / container_id).exists():
            found.append(f"container dir {root / 'containers' / container_id}")
        for c in self.ps(host):
            if _name(c) == name or _cid(c) == container_id:
                found.append(f"container record {_name(c)} ({_status(c)})")
        for d in cgroup_dirs(root, container_id):
            found.append(f"cgroup {d}")
        prefix = str(root.resolve()) + "/"
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4]
                if point.startswith(prefix) and ("/containers/" in point or "/tmp/" in point or "/netns/" in point):
                    found.append(f"mount {point}")
        if (root / "netns" / container_id).exists():
            found.append(f"netns {root / 'netns' / container_id}")
        veth = host_veth_name(root, container_id)
        if host.run(["ip", "link", "show", veth], check=False).returncode == 0:
            found.append(f"veth {veth}")
        ipam = root / "network" / "ipam.json"
        if ipam.exists() and container_id in ipam.read_text():
            found.append(f"lease of {container_id} in {ipam}")
        incoming = root / "run" / "incoming"
        if incoming.is_dir():
            for p in incoming.iterdir():
                if p.name != ".lock":
                    found.append(f"incoming record {p}")
        tmp = root / "tmp"
        if tmp.is_dir():
            for p in tmp.iterdir():
                found.append(f"scratch {p}")
        return found


def _pm() -> list[str]:
    from tests.integration.hosts import pymigrate_command

    return pymigrate_command()


def _name(c: dict) -> str:
    return str(c.get("name") or c.get("spec", {}).get("name"))


def _cid(c: dict) -> str:
    return str(c.get("container_id") or c.get("id") or c.get("spec", {}).get("container_id"))


def _status(c: dict) -> str:
    return str(c.get("status") or c.get("state", {}).get("status"))
