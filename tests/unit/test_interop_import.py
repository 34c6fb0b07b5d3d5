"""The mapping of a foreign (podman/CRI-O) checkpoint onto pymigrate (migrate/interop/import_*.py,
podman_import.py): mounts, stdio, spec, image lookup, mountpoints. No root, no CRIU: the real
import is tests/integration/test_interop_import.py."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from migrate.interop import import_mounts as m
from migrate.interop.import_mounts import External, ImageMount
from migrate.interop.import_spec import check_supported, foreign_volumes, spec_from_foreign
from migrate.interop.import_stdio import ERR_LOG, LOG, stdio_targets
from migrate.interop.podman_import import find_image
from runtime.errors import ImageNotFound, InvalidSpec, Unsupported

CG = "/libpod_parent/libpod-x"


def _podman_mounts() -> list[ImageMount]:
    """What a podman 4 container on a cgroup-v1 host has (mountpoints image, abridged)."""
    root = ImageMount(98, 59, "/", None, False)
    out = [root, ImageMount(99, 98, "/proc", None, False), ImageMount(100, 98, "/dev", None, False),
           ImageMount(101, 98, "/sys", None, True), ImageMount(70, 99, "/proc/keys", "/dev/null", False),
           ImageMount(71, 99, "/proc/timer_list", "/dev/null", False), ImageMount(106, 100, "/dev/shm", "/dev/shm", False),
           ImageMount(109, 101, "/sys/fs/cgroup", None, False)]
    for i, name in enumerate(("cpu", "cpuacct", "memory", "systemd", "cpu,cpuacct")):
        out.append(ImageMount(110 + i, 109, f"/sys/fs/cgroup/{name}", f"/sys/fs/cgroup/{name}", True))
    for i, dest in enumerate(("/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/run/.containerenv")):
        out.append(ImageMount(104 + i * 100, 98, dest, dest, False))
    return out


def test_every_engine_bind_of_podman_gets_a_source_of_ours(tmp_path: Path) -> None:
    exts = m.plan(_podman_mounts())
    kinds = {e.dest: e.kind for e in exts}
    assert kinds["/etc/hosts"] == kinds["/run/.containerenv"] == "file"
    assert kinds["/dev/shm"] == "shm" and kinds["/sys/fs/cgroup/memory"] == "cgroup"
    assert [e.kind for e in exts if e.key == "/dev/null"] == ["null", "null"]  # two masked files, one key
    dirs = {"cpu": Path("/cg/cpu/c"), "cpuacct": Path("/cg/cpuacct/c"), "memory": Path("/cg/memory/c"), "unified": Path("/cg/u/c")}
    got = dict(x.split(":", 1) for x in m.externals_for(exts, tmp_path, dirs, {}))
    assert got["mnt[/etc/hosts]"] == str(tmp_path / m.ENGINE_DIR / "hosts")
    assert got["mnt[/dev/shm]"] == str(tmp_path / m.ENGINE_DIR / m.SHM_DIR)
    assert got["mnt[/dev/null]"] == "/dev/null"
    assert got["mnt[/sys/fs/cgroup/memory]"] == "/cg/memory/c"
    assert got["mnt[/sys/fs/cgroup/cpu,cpuacct]"] == "/cg/cpu/c"  # a combined hierarchy: its first controller here
    assert got["mnt[/sys/fs/cgroup/systemd]"] == str(tmp_path / m.ENGINE_DIR / m.EMPTY_DIR)  # not ours: empty
    v2 = External("/sys/fs/cgroup", "/sys/fs/cgroup", "cgroup")
    assert m.source_of(v2, tmp_path, dirs, {}) == "/cg/u/c"
    assert m.engine_mounts(exts) == tuple(sorted(m.engine_mounts(exts)))
    assert "/proc/keys" in m.engine_mounts(exts) and "/proc/timer_list" in m.engine_mounts(exts)


def test_an_unknown_external_mount_is_refused_by_name() -> None:
    mounts = [*_podman_mounts(), ImageMount(300, 98, "/srv/data", "/srv/data", False)]
    with pytest.raises(Unsupported, match="/srv/data") as err:
        m.plan(mounts)
    assert "--volume HOSTDIR:/srv/data" in (err.value.hint or "")
    exts = m.plan(mounts, ["/srv/data"])  # a volume the restore maps
    assert [e.kind for e in exts if e.dest == "/srv/data"] == ["volume"]
    assert m.source_of(next(e for e in exts if e.dest == "/srv/data"), Path("/c"), {}, {"/srv/data": "/host/d"}) == "/host/d"
    assert "/srv/data" not in m.engine_mounts(exts)


def test_writable_cgroup_binds_and_clashing_keys_are_refused() -> None:
    with pytest.raises(InvalidSpec, match="writable"):
        m.plan([ImageMount(1, 0, "/", None, False), ImageMount(2, 1, "/sys/fs/cgroup/memory", "/sys/fs/cgroup/memory", False)])
    with pytest.raises(Unsupported, match="both use the key"):
        m.plan([ImageMount(1, 0, "/", None, False), ImageMount(2, 1, "/etc/hosts", "k", False),
                ImageMount(3, 1, "/dev/shm", "k", False)])
    with pytest.raises(Unsupported, match="/proc/kcore"):  # a masked file bound from something else
        m.plan([ImageMount(1, 0, "/", None, False), ImageMount(2, 1, "/proc/kcore", "/etc/shadow", False)])


def test_stdio_pipes_become_the_logs() -> None:
    assert stdio_targets(["/dev/null", "pipe:[11]", "pipe:[12]"]) == {11: LOG, 12: ERR_LOG}
    assert stdio_targets(["/dev/null", "pipe:[11]", "pipe:[11]"]) == {11: LOG}
    assert stdio_targets([]) == {}
    with pytest.raises(Unsupported, match="stdin"):
        stdio_targets(["pipe:[10]", "pipe:[11]", "pipe:[12]"])
    with pytest.raises(Unsupported, match="socket"):
        stdio_targets(["/dev/null", "socket:[5]", "pipe:[12]"])


def _spec(**linux: object) -> dict:
    return {
        "hostname": "abc", "process": {"args": ["sh", "-c", "x"], "env": ["A=1"], "cwd": "/w", "user": {"uid": 5, "gid": 6},
                                       "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN"]}},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}, {"type": "mount"}],
                  "resources": {"pids": {"limit": 2048}, "memory": {"limit": 1 << 28}, "cpu": {"quota": 50000, "period": 100000}},
                  **linux},
        "mounts": [{"destination": "/etc/hosts", "type": "bind", "source": "/x/hosts", "options": ["bind"]},
                   {"destination": "/data", "type": "bind", "source": "/host/data", "options": ["rbind", "ro"]},
                   {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}],
    }


def test_spec_from_spec_dump() -> None:
    fc = SimpleNamespace(spec=_spec(), config={"stopSignal": 2}, container_name="web")
    spec = spec_from_foreign(fc, image_name="img:1", image_digest="sha256:" + "a" * 64, name="web", container_id="c" * 32)
    assert spec.command == ("sh", "-c", "x") and spec.env == ("A=1",)
    assert (spec.workdir, spec.user, spec.hostname, spec.stop_signal) == ("/w", "5:6", "abc", "SIGINT")
    assert (spec.pids_limit, spec.memory_bytes, spec.cpus) == (2048, 1 << 28, 0.5)
    assert spec.cap_add == ("CAP_SYS_ADMIN",) and "CAP_NET_RAW" in spec.cap_drop and "CAP_CHOWN" not in spec.cap_drop
    assert spec.ip is None and spec.network == "bridge"  # an address of this host's pool, never podman's
    assert [(v.target, v.source, v.readonly) for v in spec.volumes] == [("/data", "/host/data", True)]
    assert foreign_volumes(_spec()) == spec.volumes


@pytest.mark.parametrize(("change", "words"), [
    ({"namespaces": [{"type": "user"}, {"type": "network", "path": "/n"}]}, "user namespace"),
    ({"uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}, "user namespace"),
    ({"namespaces": [{"type": "pid"}]}, "host's network"),
    ({"namespaces": [{"type": "pid"}, {"type": "network"}]}, "--network none"),
    ({"namespaces": [{"type": "network", "path": "/n"}, {"type": "pid", "path": "/proc/1/ns/pid"}]}, "shares namespaces"),
    ({"namespaces": [{"type": "network", "path": "/n"}, {"type": "mount", "path": "/proc/1/ns/mnt"}]}, "shares namespaces"),
])
def test_unsupported_containers_are_refused(change: dict, words: str) -> None:
    with pytest.raises(Unsupported, match=words):
        check_supported(_spec(**change), "web")
    spec = _spec()
    spec["process"]["terminal"] = True
    with pytest.raises(Unsupported, match="terminal"):
        check_supported(spec, "web")
    check_supported(_spec(), "web")
    pod = [{"type": "network", "path": "/var/run/netns/p"}, {"type": "ipc", "path": "/var/run/ipcns/p"},
           {"type": "uts", "path": "/var/run/utsns/p"}, {"type": "pid"}, {"type": "mount"}]
    check_supported(_spec(namespaces=pod), "web")  # a Kubernetes pod's container: made anew here


class _Images:
    def __init__(self, images: list) -> None:
        self.images = images

    def list(self) -> list:
        return self.images

    def get(self, name: str) -> object:
        for img in self.images:
            if img.name == name:
                return img
        raise ImageNotFound(name)


def test_image_found_by_id_then_by_name() -> None:
    a = SimpleNamespace(name="pmt:1", digest="sha256:" + "1" * 64, config_digest="sha256:" + "2" * 64)
    b = SimpleNamespace(name="other:1", digest="sha256:" + "3" * 64, config_digest="")
    images = _Images([a, b])
    assert find_image(images, "localhost/whatever:9", "2" * 64) is a  # podman's id = a loaded image's config digest
    assert find_image(images, "localhost/other:1", "9" * 64) is b  # by name, without the registry part
    with pytest.raises(ImageNotFound, match="localhost/absent:1") as err:
        find_image(images, "localhost/absent:1", "9" * 64)
    assert "image pull localhost/absent:1" in (err.value.hint or "")


def test_mountpoints_are_made_and_never_through_a_symlink(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    m.make_mountpoints(root, _podman_mounts(), m.ENGINE_FILES)
    assert (root / "etc/hosts").is_file() and (root / "run/.containerenv").is_file() and (root / "proc").is_dir()
    assert not (root / "dev/shm").exists()  # on the /dev tmpfs: CRIU restores it with its content
    os.symlink("/etc", root / "run2")
    with pytest.raises(InvalidSpec, match="/run2"):
        m.ensure_path(root, "/run2/hosts", file=True)
    assert not Path("/etc/hosts.pymigrate-test").exists()
    (root / "proc2").write_text("")
    with pytest.raises(InvalidSpec, match="not a directory"):
        m.ensure_path(root, "/proc2", file=False)


def test_engine_files_name_the_new_address(tmp_path: Path) -> None:
    m.write_engine_files(tmp_path, hostname="abc", name="web", ip="10.77.0.9", container_id="c" * 32)
    base = tmp_path / m.ENGINE_DIR
    assert "10.77.0.9\tabc web" in (base / "hosts").read_text()
    assert (base / "hostname").read_text() == "abc\n"
    assert "127." not in "".join(ln for ln in (base / "resolv.conf").read_text().splitlines() if ln.startswith("nameserver"))
    assert (base / m.SHM_DIR).stat().st_mode & 0o7777 == 0o1777


def test_a_foreign_archive_over_host_is_checked_here_before_any_upload(tmp_path: Path) -> None:
    """Over --host a podman archive is unpacked by the archive rules on the caller's side
    (migrate/interop/remote_import.py): a bad one is refused before a byte is sent."""
    import tarfile

    from migrate.api import RestoreOptions
    from migrate.remote.client import RemoteEngine
    from migrate.errors import UnsafeMember

    archive = tmp_path / "podman.tar"
    (tmp_path / "spec.dump").write_text("{}")
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "spec.dump", arcname="spec.dump")
    client = RemoteEngine(f"unix:{tmp_path / 'no-daemon.sock'}")  # nothing listens: an upload would fail otherwise
    try:
        with pytest.raises(UnsafeMember, match="checkpoint/"):
            client.restore(RestoreOptions(import_path=archive))
    finally:
        client.close()


def _write_image(path: Path, entries: list) -> None:
    import struct

    body = b"".join(struct.pack("<I", len(raw)) + raw for raw in (e.SerializeToString() for e in entries))
    path.write_bytes(struct.pack("<I", 0x12345678) + body)  # an image's own magic, no common one before it


def test_conmons_pipes_become_regular_log_files_in_the_images(tmp_path: Path) -> None:
    fdinfo_pb2 = pytest.importorskip("pycriu.images.fdinfo_pb2")
    from migrate.interop.import_stdio import LOG_FLAGS, pipes_to_logs
    from runtime.criu import read_image_entries

    pipe_t, reg_t = fdinfo_pb2.PIPE, fdinfo_pb2.REG
    null = fdinfo_pb2.file_entry(type=reg_t, id=2)
    null.reg.id, null.reg.flags, null.reg.pos, null.reg.name, null.reg.mnt_id = 2, 2, 0, "/dev/null", 100
    null.reg.fown.uid = null.reg.fown.euid = null.reg.fown.signum = null.reg.fown.pid_type = null.reg.fown.pid = 0
    files = [null]
    for fid, pipe_id in ((3, 11), (4, 12), (5, 13)):
        e = fdinfo_pb2.file_entry(type=pipe_t, id=fid)
        e.pipe.id, e.pipe.pipe_id, e.pipe.flags = fid, pipe_id, os.O_WRONLY
        e.pipe.fown.uid = e.pipe.fown.euid = e.pipe.fown.signum = e.pipe.fown.pid_type = e.pipe.fown.pid = 0
        files.append(e)
    _write_image(tmp_path / "files.img", files)
    _write_image(tmp_path / "fdinfo-2.img", [fdinfo_pb2.fdinfo_entry(id=i, flags=0, type=t, fd=fd)
                                             for i, t, fd in ((2, reg_t, 0), (3, pipe_t, 1), (4, pipe_t, 2), (5, pipe_t, 7))])

    assert pipes_to_logs(tmp_path, {11: LOG, 12: ERR_LOG}, 98) == 2
    got = {e.id: e for e in read_image_entries(tmp_path / "files.img", "file_entry", "fdinfo_pb2")}
    assert got[3].type == reg_t and not got[3].HasField("pipe")
    assert (got[3].reg.name, got[3].reg.mnt_id, got[3].reg.flags, got[3].reg.id) == (LOG, 98, LOG_FLAGS, 3)
    assert got[4].reg.name == ERR_LOG and got[5].type == pipe_t and got[2].reg.name == "/dev/null"
    fds = {e.fd: e.type for e in read_image_entries(tmp_path / "fdinfo-2.img", "fdinfo_entry", "fdinfo_pb2")}
    assert fds == {0: reg_t, 1: reg_t, 2: reg_t, 7: pipe_t}  # the unrelated pipe (fd 7) stays a pipe

    reader = fdinfo_pb2.file_entry(type=pipe_t, id=6)
    reader.pipe.id, reader.pipe.pipe_id, reader.pipe.flags = 6, 14, os.O_RDONLY
    reader.pipe.fown.uid = reader.pipe.fown.euid = reader.pipe.fown.signum = reader.pipe.fown.pid_type = reader.pipe.fown.pid = 0
    _write_image(tmp_path / "files.img", [reader])
    with pytest.raises(Unsupported, match="reads pipe"):
        pipes_to_logs(tmp_path, {14: LOG}, 98)


def _mnt(mnt_pb2, mnt_id: int, parent: int, mountpoint: str, key: str | None = None, flags: int = 0):  # noqa: ANN001, ANN202
    e = mnt_pb2.mnt_entry(fstype=0, mnt_id=mnt_id, root_dev=1, parent_mnt_id=parent, flags=flags, root="/",
                          mountpoint=mountpoint, source="x", options="")
    if key is not None:
        e.ext_key = key
    return e


def test_mount_images_are_read_and_unclean_mountpoints_refused(tmp_path: Path) -> None:
    mnt_pb2 = pytest.importorskip("pycriu.images.mnt_pb2")
    image = tmp_path / "mountpoints-13.img"
    _write_image(image, [_mnt(mnt_pb2, 98, 59, "/"), _mnt(mnt_pb2, 105, 98, "/etc/hosts", "/etc/hosts"),
                         _mnt(mnt_pb2, 110, 109, "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu", flags=m.MS_RDONLY)])
    got = m.read_mounts(tmp_path)
    assert got == [ImageMount(98, 59, "/", None, False), ImageMount(105, 98, "/etc/hosts", "/etc/hosts", False),
                   ImageMount(110, 109, "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu", True)]
    _write_image(image, [_mnt(mnt_pb2, 98, 59, "/"), _mnt(mnt_pb2, 110, 98, "/sys/fs/cgroup/../../etc", "k", flags=1)])
    with pytest.raises(InvalidSpec, match="not a clean absolute path"):
        m.read_mounts(tmp_path)
    _write_image(image, [_mnt(mnt_pb2, 98, 59, "/")])
    _write_image(tmp_path / "mountpoints-14.img", [_mnt(mnt_pb2, 99, 59, "/")])
    with pytest.raises(InvalidSpec, match="exactly one mount namespace"):
        m.read_mounts(tmp_path)
