"""A cgroupfs emulation on a tmp_path tree, for unit tests of the real cgroup backends.

``FakeCgroupFs`` implements ``runtime.cgroups._files.CgroupFs`` and behaves like the kernel where
the backends depend on it:

- mkdir creates the interface files of the hierarchy (v2: only controllers the parent enabled in
  cgroup.subtree_control; v1: those of the bound controllers); the root of a hierarchy has no
  cgroup.freeze / cgroup.kill (v2) and no pids.max (v1);
- writing a pid to cgroup.procs moves it within the hierarchy (ESRCH for an unknown pid; v2
  refuses with EBUSY into a cgroup that enables controllers for children);
- cgroup.subtree_control: ``+ctrl`` needs ctrl in cgroup.controllers (ENOENT) and fails with
  EBUSY in a non-root cgroup that has processes;
- cgroup.freeze flips ``frozen`` in cgroup.events; freezer.state goes to FROZEN/THAWED; with
  ``stuck_freeze`` neither ever completes (FREEZING, frozen 0);
- cgroup.kill and ``kill(pid, SIGKILL)`` end processes; a task in a v1 FROZEN cgroup dies only
  when thawed;
- rmdir fails with EBUSY while the cgroup has processes or children, and removes the files;
- writes of files directly in a hierarchy root are recorded in ``root_writes``.
- v1 devices: ``devices.list`` starts ``a *:* rwm``; ``a`` written to devices.deny empties it
  (EINVAL once the cgroup has tasks or children), devices.allow appends a line; BPF device
  programs attached through ``attach_device_program`` are kept in ``device_programs``.

``fake_host(tmp_path, sample)`` lays out /proc/self/{cgroup,mountinfo} from tests/data/cgroup/<sample>
and builds every hierarchy and our own cgroups, with this "process" (``SELF_PID``) inside.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from runtime.cgroups._files import CgroupFs
from runtime.cgroups._layout import parse_mountinfo, parse_proc_cgroup, _own_dir, _rebase

DATA = Path(__file__).resolve().parent.parent / "data" / "cgroup"
SELF_PID = 4242
V1_UNLIMITED = "9223372036854771712"

V2_ROOT_CONTROLLERS = "cpuset cpu io memory hugetlb pids rdma misc"


def _err(code: int, path: Path) -> OSError:
    return OSError(code, os.strerror(code), str(path))


@dataclass
class _Mount:
    path: Path
    version: int
    controllers: tuple[str, ...]  # v1: bound controllers; v2: unused


class FakeCgroupFs(CgroupFs):
    def __init__(self, *, has_kill: bool = True, has_freeze: bool = True) -> None:
        self.mounts: list[_Mount] = []
        self.alive: set[int] = set()
        self.pending_kill: set[int] = set()
        self.writes: list[tuple[Path, str]] = []
        self.root_writes: list[tuple[Path, str]] = []
        self.killed: list[int] = []
        self.stuck_freeze = False
        self.has_kill = has_kill
        self.has_freeze = has_freeze
        self.device_programs: dict[Path, list[bytes]] = {}

    # --- set-up ------------------------------------------------------------------------

    def add_hierarchy(self, path: Path, version: int, controllers: tuple[str, ...] = ()) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.mounts.append(_Mount(path, version, controllers))
        files = {"cgroup.procs": ""}
        if version == 2:
            files |= {
                "cgroup.controllers": V2_ROOT_CONTROLLERS if controllers else "",
                "cgroup.subtree_control": "",
                "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
            }
        else:
            files |= {"tasks": ""}
            files |= self._v1_files(controllers, root=True)
        for n, v in files.items():
            (path / n).write_text(v)

    def attach_device_program(self, directory: Path, insns: bytes) -> None:
        if not (directory / "cgroup.procs").is_file() or self._mount_of(directory).version != 2:
            raise _err(errno.EBADF, directory)
        self.device_programs.setdefault(directory, []).append(insns)

    def spawn(self, pid: int, directory: Path | None = None) -> int:
        """A new fake process, placed in ``directory`` (its hierarchy only) if given."""
        self.alive.add(pid)
        if directory is not None:
            self._move(pid, directory)
        return pid

    # --- helpers -----------------------------------------------------------------------

    def _mount_of(self, path: Path) -> _Mount:
        best = None
        for m in self.mounts:
            if path == m.path or m.path in path.parents:
                if best is None or len(m.path.parts) > len(best.path.parts):
                    best = m
        if best is None:
            raise _err(errno.ENOENT, path)
        return best

    @staticmethod
    def _v1_files(controllers: tuple[str, ...], *, root: bool) -> dict[str, str]:
        files: dict[str, str] = {}
        if "memory" in controllers:
            files |= {
                "memory.limit_in_bytes": V1_UNLIMITED,
                "memory.usage_in_bytes": "0",
                "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
            }
        if "cpu" in controllers:
            files |= {"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000", "cpu.stat": "nr_periods 0\n"}
        if "cpuacct" in controllers:
            files |= {"cpuacct.usage": "0"}
        if "pids" in controllers:
            files |= {"pids.current": "0"} | ({} if root else {"pids.max": "max"})
        if "freezer" in controllers and not root:
            files |= {"freezer.state": "THAWED"}
        if "devices" in controllers:
            files |= {"devices.list": "a *:* rwm\n", "devices.allow": "", "devices.deny": ""}
        return files

    def _v2_files(self, enabled: set[str]) -> dict[str, str]:
        files = {
            "cgroup.procs": "",
            "cgroup.controllers": " ".join(sorted(enabled)),
            "cgroup.subtree_control": "",
            "cgroup.events": "populated 0\nfrozen 0\n",
            "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
        }
        if self.has_freeze:
            files["cgroup.freeze"] = "0"
        if self.has_kill:
            files["cgroup.kill"] = ""
        if "memory" in enabled:
            files |= {
                "memory.max": "max",
                "memory.current": "0",
                "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
            }
        if "cpu" in enabled:
            files |= {"cpu.max": "max 100000"}
        if "pids" in enabled:
            files |= {"pids.max": "max", "pids.current": "0"}
        return files

    @staticmethod
    def _procs(directory: Path) -> list[int]:
        p = directory / "cgroup.procs"
        return [int(x) for x in p.read_text().split()] if p.exists() else []

    @staticmethod
    def _set_procs(directory: Path, pids: list[int]) -> None:
        (directory / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
        if (directory / "cgroup.events").exists():
            ev = (directory / "cgroup.events").read_text().replace(
                "populated 1" if not pids else "populated 0", "populated 1" if pids else "populated 0"
            )
            (directory / "cgroup.events").write_text(ev)
        if (directory / "pids.current").exists():
            (directory / "pids.current").write_text(str(len(pids)))

    def _all_dirs(self, mount: _Mount) -> list[Path]:
        return [mount.path, *[p for p in mount.path.rglob("*") if p.is_dir()]]

    def _move(self, pid: int, directory: Path) -> None:
        mount = self._mount_of(directory)
        for d in self._all_dirs(mount):
            procs = self._procs(d)
            if pid in procs:
                self._set_procs(d, [p for p in procs if p != pid])
        self._set_procs(directory, [*self._procs(directory), pid])

    def _die(self, pid: int) -> None:
        self.alive.discard(pid)
        self.pending_kill.discard(pid)
        for m in self.mounts:
            for d in self._all_dirs(m):
                procs = self._procs(d)
                if pid in procs:
                    self._set_procs(d, [p for p in procs if p != pid])

    def _in_v1_frozen(self, pid: int) -> bool:
        for m in self.mounts:
            if m.version == 1 and "freezer" in m.controllers:
                for d in self._all_dirs(m):
                    state = d / "freezer.state"
                    if pid in self._procs(d) and state.exists() and state.read_text().strip() != "THAWED":
                        return True
        return False

    # --- CgroupFs ------------------------------------------------------------------------

    def mkdir(self, path: Path) -> None:
        mount = self._mount_of(path.parent)
        os.mkdir(path)
        if mount.version == 2:
            enabled = set((path.parent / "cgroup.subtree_control").read_text().split())
            files = self._v2_files(enabled)
        else:
            files = {"cgroup.procs": "", "tasks": ""} | self._v1_files(mount.controllers, root=False)
        for n, v in files.items():
            (path / n).write_text(v)

    def rmdir(self, path: Path) -> None:
        if not path.is_dir():
            raise _err(errno.ENOENT, path)
        if self._procs(path) or any(p.is_dir() for p in path.iterdir()):
            raise _err(errno.EBUSY, path)
        for f in path.iterdir():
            f.unlink()
        os.rmdir(path)

    def kill(self, pid: int, sig: int) -> None:
        if pid not in self.alive:
            raise ProcessLookupError(errno.ESRCH, os.strerror(errno.ESRCH))
        self.killed.append(pid)
        if self._in_v1_frozen(pid):
            self.pending_kill.add(pid)
        else:
            self._die(pid)

    def write(self, path: Path, value: str) -> None:
        if not path.is_file():
            raise _err(errno.ENOENT, path)
        mount = self._mount_of(path.parent)
        self.writes.append((path, value))
        if path.parent == mount.path:
            self.root_writes.append((path, value))
        d = path.parent
        name = path.name
        if name == "cgroup.procs":
            pid = int(value)
            if pid not in self.alive:
                raise _err(errno.ESRCH, path)
            if mount.version == 2 and d != mount.path and (d / "cgroup.subtree_control").read_text().split():
                raise _err(errno.EBUSY, path)
            self._move(pid, d)
        elif name == "devices.deny" and value == "a":
            if self._procs(d) or any(p.is_dir() for p in d.iterdir()):
                raise _err(errno.EINVAL, path)
            (d / "devices.list").write_text("")
        elif name == "devices.allow":
            listed = (d / "devices.list").read_text()
            (d / "devices.list").write_text(listed + value + "\n")
        elif name == "cgroup.subtree_control":
            current = set((d / "cgroup.subtree_control").read_text().split())
            available = set((d / "cgroup.controllers").read_text().split())
            for word in value.split():
                ctrl = word[1:]
                if word[0] == "+":
                    if ctrl not in available:
                        raise _err(errno.ENOENT, path)
                    if d != mount.path and self._procs(d):
                        raise _err(errno.EBUSY, path)
                    current.add(ctrl)
                elif word[0] == "-":
                    current.discard(ctrl)
                else:
                    raise _err(errno.EINVAL, path)
            path.write_text(" ".join(sorted(current)))
            for child in (c for c in d.iterdir() if c.is_dir()):
                (child / "cgroup.controllers").write_text(" ".join(sorted(current)))
                for n, v in self._v2_files(current).items():
                    if not (child / n).exists():
                        (child / n).write_text(v)
        elif name == "cgroup.freeze":
            if value not in ("0", "1"):
                raise _err(errno.EINVAL, path)
            path.write_text(value)
            if not self.stuck_freeze:
                ev = d / "cgroup.events"
                text = ev.read_text().replace("frozen 0", "frozen X").replace("frozen 1", "frozen X")
                ev.write_text(text.replace("frozen X", f"frozen {value}"))
        elif name == "cgroup.kill":
            if value != "1":
                raise _err(errno.EINVAL, path)
            for sub in [d, *[p for p in d.rglob("*") if p.is_dir()]]:
                for pid in self._procs(sub):
                    self.killed.append(pid)
                    self._die(pid)
        elif name == "freezer.state":
            if value not in ("FROZEN", "THAWED"):
                raise _err(errno.EINVAL, path)
            path.write_text("FREEZING" if (value == "FROZEN" and self.stuck_freeze) else value)
            if value == "THAWED":
                for pid in list(self.pending_kill):
                    if not self._in_v1_frozen(pid):
                        self._die(pid)
        elif name in ("memory.max", "pids.max"):
            if value != "max" and not value.isdigit():
                raise _err(errno.EINVAL, path)
            path.write_text(value)
        elif name == "cpu.max":
            parts = value.split()
            if len(parts) != 2 or not (parts[0] == "max" or parts[0].isdigit()) or not parts[1].isdigit():
                raise _err(errno.EINVAL, path)
            path.write_text(value)
        elif name in ("memory.limit_in_bytes", "cpu.cfs_quota_us", "cpu.cfs_period_us"):
            try:
                number = int(value)
            except ValueError:
                raise _err(errno.EINVAL, path) from None
            if name == "memory.limit_in_bytes" and number == -1:
                value = V1_UNLIMITED
            path.write_text(value)
        else:
            path.write_text(value)


def fake_host(
    tmp_path: Path, sample: str, *, proc_cgroup: str | None = None, **kwargs: bool
) -> tuple[FakeCgroupFs, Path, Path]:
    """Build a fake host from tests/data/cgroup/<sample>; return (fs, proc_root, sys_root).

    ``proc_cgroup`` replaces the sample's /proc/self/cgroup text.
    """
    proc_root = tmp_path / "proc"
    sys_root = tmp_path / "sys" / "fs" / "cgroup"
    (proc_root / "self").mkdir(parents=True)
    for n in ("cgroup", "mountinfo"):
        shutil.copy(DATA / sample / n, proc_root / "self" / n)
    if proc_cgroup is not None:
        (proc_root / "self" / "cgroup").write_text(proc_cgroup)
    fs = FakeCgroupFs(**kwargs)
    fs.alive.add(SELF_PID)
    own = {tuple(e.controllers): e.path for e in parse_proc_cgroup((proc_root / "self" / "cgroup").read_text())}
    for m in parse_mountinfo((DATA / sample / "mountinfo").read_text()):
        if m.mount_point.parts[:4] != ("/", "sys", "fs", "cgroup"):
            continue  # bind mounts elsewhere are not laid out
        path = _rebase(m.mount_point, sys_root)
        if m.fstype == "cgroup2":
            # a v2-only host has controllers at the top; the hybrid unified tree has none
            fs.add_hierarchy(path, 2, ("all",) if sample.startswith("v2") else ())
            key: tuple[str, ...] = ()
        else:
            ctrls = tuple(o for o in m.super_options if o not in ("rw", "ro", "xattr"))
            fs.add_hierarchy(path, 1, ctrls)
            key = next((k for k in own if k and set(k) <= set(m.super_options)), ctrls)
        own_path = own.get(key, "/")
        own_dir = _own_dir(path, m.root, own_path)
        current = path
        for part in own_dir.relative_to(path).parts:
            if fs._mount_of(current).version == 2:
                # what systemd does for its slices: pass every controller down
                sc = current / "cgroup.subtree_control"
                sc.write_text((current / "cgroup.controllers").read_text())
            current = current / part
            fs.mkdir(current)
        fs._move(SELF_PID, own_dir)
    return fs, proc_root, sys_root
