"""podman export (migrate/interop/podman_export.py, export_*.py): the spec and config writers, the
upper layer's whiteouts as deleted.files, the CRIU images re-keyed for runc. No root, no CRIU: the
two golden images in tests/data/interop come from a real pymigrate dump on the project's machine."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from migrate.interop import export_images, export_rootfs
from migrate.interop.export_spec import libpod_config, oci_rlimits, oci_spec, podman_id, stop_signal_number
from migrate.interop.podman_export import check_exportable, image_identity, pack_dir
from runtime.errors import InvalidArgument, Unsupported
from runtime.spec import ContainerSpec, Volume
from runtime.users import Credentials

DATA = Path(__file__).resolve().parents[1] / "data" / "interop"
CID = "3a6ea9c126bfe8d9949cec5a1f9b1f56"
IMAGE_ID = "8ff4f838a504e092b606dbeba5d8a46cd9a8acd4120440feeaa1874e0d596c3a"


def _spec(**kw: object) -> ContainerSpec:
    base = dict(container_id=CID, name="web-1", image="pmt-base:1", image_digest="sha256:" + "ab" * 32,
                command=("sh", "-c", "sleep 1000"), hostname="3a6ea9c126bf", env=("A=1",), workdir="/srv")
    base.update(kw)
    return ContainerSpec(**base)  # type: ignore[arg-type]


# -- spec.dump / config.dump ----------------------------------------------------------------------


def test_oci_spec_describes_the_container_as_pymigrate_runs_it() -> None:
    oci = oci_spec(_spec(), Credentials(uid=1000, gid=100, groups=(27,)), checkpoint_id="c1", netns_path="/run/netns/x",
                   rlimits=[(1, 2)] * 16)
    proc = oci["process"]
    assert proc["args"] == ["sh", "-c", "sleep 1000"]
    assert proc["cwd"] == "/srv"
    assert proc["env"][0].startswith("PATH=") and "A=1" in proc["env"] and "HOSTNAME=3a6ea9c126bf" in proc["env"]
    assert proc["user"] == {"uid": 1000, "gid": 100, "umask": 0o22, "additionalGids": [27]}
    assert "CAP_CHOWN" in proc["capabilities"]["bounding"] and "CAP_SYS_ADMIN" not in proc["capabilities"]["bounding"]
    assert proc["rlimits"][7] == {"type": "RLIMIT_NOFILE", "soft": 1, "hard": 2}
    assert oci["hostname"] == "3a6ea9c126bf"
    mounts = {m["destination"]: m for m in oci["mounts"]}
    # /dev is a tmpfs: runc makes no mount point below it, CRIU restores its content
    assert mounts["/dev"]["type"] == "tmpfs" and mounts["/dev/shm"]["type"] == "tmpfs"
    assert [m["type"] for m in oci["mounts"]] == ["proc", "tmpfs", "devpts", "tmpfs", "mqueue", "sysfs"]
    assert not any(m["type"] == "bind" for m in oci["mounts"])  # runc would give CRIU an external mount for each
    namespaces = oci["linux"]["namespaces"]
    assert {"type": "network", "path": "/run/netns/x"} in namespaces
    assert [n["type"] for n in namespaces] == ["pid", "network", "ipc", "uts", "mount", "cgroup"]
    assert "/proc/kcore" in oci["linux"]["maskedPaths"] and "/proc/sys" in oci["linux"]["readonlyPaths"]
    assert "seccomp" not in oci["linux"]  # CRIU restores the dumped filters
    assert oci["annotations"]["io.pymigrate.checkpoint-id"] == "c1"


def test_oci_spec_host_cgroupns_and_limits() -> None:
    oci = oci_spec(_spec(cgroupns_mode="host", memory_bytes=64 << 20, pids_limit=50, cpus=0.5), Credentials(),
                   checkpoint_id="c1", netns_path="/run/netns/x")
    assert "cgroup" not in [n["type"] for n in oci["linux"]["namespaces"]]
    res = oci["linux"]["resources"]
    assert res["memory"] == {"limit": 64 << 20} and res["pids"] == {"limit": 50}
    assert res["cpu"] == {"quota": 50_000, "period": 100_000}
    assert "rlimits" not in oci["process"]


def test_libpod_config_has_what_podman_restore_reads() -> None:
    oci = oci_spec(_spec(stop_signal="SIGINT", labels={"tier": "web"}), Credentials(), checkpoint_id="c1", netns_path="/n")
    config = libpod_config(_spec(stop_signal="SIGINT", labels={"tier": "web"}), oci, image_name="localhost/pmt-base:1",
                           image_id=IMAGE_ID, created_at=0.0)
    assert config["spec"] is oci
    assert config["name"] == "web-1"
    assert config["id"] == podman_id(CID) and len(config["id"]) == 64
    assert config["rootfsImageID"] == IMAGE_ID and config["rootfsImageName"] == "localhost/pmt-base:1"
    assert config["runtime"] == "runc"  # podman refuses an empty one ("must provide a valid path")
    assert config["createNetNS"] is True and config["networkMode"] == "bridge"
    assert config["newNetworks"] == {"podman": {"interface_name": "eth0"}}
    assert config["stopSignal"] == 2 and config["labels"] == {"tier": "web"}
    assert config["createdTime"] == "1970-01-01T00:00:00Z" and "checkpointedTime" not in config
    assert libpod_config(_spec(), oci, image_name="n", image_id=IMAGE_ID, created_at=0.0,
                         checkpointed_at=1.5)["checkpointedTime"] == "1970-01-01T00:00:01.500000Z"
    json.dumps(config)  # all JSON


def test_libpod_config_forwards_published_ports() -> None:
    from runtime.ports import PortMapping

    spec = _spec(ports=(PortMapping(80, "tcp", 18080), PortMapping(53, "udp", 5353, "127.0.0.1")))
    config = libpod_config(spec, {}, image_name="n", image_id=IMAGE_ID, created_at=1.0)
    assert config["newPortMappings"] == [
        {"host_ip": "", "container_port": 80, "host_port": 18080, "range": 1, "protocol": "tcp"},
        {"host_ip": "127.0.0.1", "container_port": 53, "host_port": 5353, "range": 1, "protocol": "udp"}]


def test_libpod_config_network_none() -> None:
    spec = _spec(network="none", ip=None)
    config = libpod_config(spec, {}, image_name="n", image_id=IMAGE_ID, created_at=1.0)
    assert config["networkMode"] == "none" and "newNetworks" not in config


def test_podman_id_is_stable_and_distinct() -> None:
    assert podman_id(CID) == podman_id(CID) != podman_id("0" * 32)


@pytest.mark.parametrize(("text", "number"), [("", 15), ("SIGINT", 2), ("int", 2), ("9", 9), ("SIGNOPE", 15)])
def test_stop_signal_number(text: str, number: int) -> None:
    assert stop_signal_number(text) == number


def test_oci_rlimits_names_by_resource_number() -> None:
    limits = oci_rlimits([(0, 0)] * 6 + [(4096, 4096), (1024, 2048)])
    assert limits[6] == {"type": "RLIMIT_NPROC", "soft": 4096, "hard": 4096}
    assert limits[7] == {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048}


# -- what is refused ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "word"), [
    ({"volumes": (Volume("/srv/data", "/data"), Volume("/v/pg/_data", "/pg", name="pg"))}, "named volumes (/pg)"),
    ({"init": True}, "--init"),
    ({"userns": "auto", "userns_size": 65536}, "user namespace"),
    ({"tty": True}, "-t/-i"),
    ({"interactive": True}, "-t/-i"),
])
def test_check_exportable_refuses_what_podman_cannot_restore(kw: dict[str, object], word: str) -> None:
    with pytest.raises(Unsupported) as err:
        check_exportable(_spec(**kw))
    assert word in err.value.message and "web-1" in err.value.message
    assert "--format native" in (err.value.hint or "")


def test_check_exportable_accepts_a_plain_container() -> None:
    check_exportable(_spec())
    check_exportable(_spec(volumes=(Volume("/srv/data", "/data"),)))  # a bind volume: runc binds it again


def test_bind_volumes_are_runcs_binds() -> None:
    from migrate.interop.export_convert import bind_keys

    spec = _spec(volumes=(Volume("/srv/data", "/data"), Volume("/srv/conf", "/etc/app", readonly=True)))
    oci = oci_spec(spec, Credentials(), checkpoint_id="c1", netns_path="/n")
    binds = [m for m in oci["mounts"] if m["type"] == "bind"]
    assert binds == [{"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "rprivate"]},
                     {"destination": "/etc/app", "type": "bind", "source": "/srv/conf", "options": ["rbind", "rprivate", "ro"]}]
    assert bind_keys(spec) == {"vol0": "/data", "vol1": "/etc/app"}  # pymigrate's keys -> runc's


def test_image_identity_from_the_config_digest_or_given() -> None:
    manifest = {"image": {"name": "pmt-base:1", "config_digest": "sha256:" + IMAGE_ID}}
    assert image_identity(manifest, None, None) == ("pmt-base:1", IMAGE_ID)
    assert image_identity(manifest, "localhost/pmt-base:1", None) == ("localhost/pmt-base:1", IMAGE_ID)
    assert image_identity({"image": {"name": "x"}}, None, "c" * 64) == ("x", "c" * 64)
    with pytest.raises(Unsupported, match="no config digest"):
        image_identity({"image": {"name": "busybox", "digest": "sha256:" + "a" * 64}}, None, None)
    with pytest.raises(Unsupported):
        image_identity(manifest, None, "sha256:short")
    with pytest.raises(InvalidArgument):
        image_identity({"image": {"config_digest": "sha256:" + IMAGE_ID}}, None, None)


# -- upper layer -> rootfs-diff.tar + deleted.files -----------------------------------------------


def _layer(entries: list[tuple[str, str, bytes]]) -> io.BytesIO:
    """An OCI layer as write_layer makes one: (name, 'f'|'d', content)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            if kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o640
                info.pax_headers = {"SCHILY.xattr.user.note": "kept"}
                tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def test_split_layer_whiteouts_become_deleted_files() -> None:
    layer = _layer([
        (".pymigrate", "d", b""), (".pymigrate/log", "f", b"tick 1\n"),
        ("etc", "d", b""), ("etc/.wh.motd", "f", b""), ("etc/hosts", "f", b"127.0.0.1 localhost\n"),
        (".wh.oldfile", "f", b""), ("./.profile", "f", b"x"),
        ("sbin", "d", b""), ("sbin/.wh..wh..opq", "f", b""), ("sbin/only", "f", b"new"),
    ])
    listing = {"/sbin": ["init", "only", "reboot"], "/etc": ["motd", "hosts"]}
    diff = io.BytesIO()
    split = export_rootfs.split_layer(layer, diff, lambda d: listing.get(d, []))
    assert split.deleted == ["/etc/motd", "/oldfile", "/sbin/init", "/sbin/reboot"]
    assert split.opaque_dirs == ["/sbin"]
    diff.seek(0)
    with tarfile.open(fileobj=diff) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == [".profile", ".pymigrate", ".pymigrate/log", "etc", "etc/hosts", "sbin", "sbin/only"]
        assert tar.extractfile(members[".pymigrate/log"]).read() == b"tick 1\n"  # type: ignore[union-attr]
        assert members["etc/hosts"].mode == 0o640
        assert members["etc/hosts"].pax_headers.get("SCHILY.xattr.user.note") == "kept"
    assert split.members == 7


def test_opaque_root_lists_the_image_root(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "keep").write_text("")
    layer = _layer([(".wh..wh..opq", "f", b""), ("keep", "f", b"new")])
    split = export_rootfs.split_layer(layer, io.BytesIO(), export_rootfs.lower_lister(tmp_path))
    assert split.deleted == ["/bin"]


def test_lower_lister(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "a").write_text("")
    (tmp_path / "file").write_text("")
    lister = export_rootfs.lower_lister(tmp_path)
    assert lister("/etc") == ["a"]
    assert lister("/missing") == [] and lister("/file") == [] and lister("/../..") == ["etc", "file"]
    assert export_rootfs.lower_lister(None)("/etc") == []


def test_lower_lister_follows_no_symlink(tmp_path: Path) -> None:
    host = tmp_path / "host-etc"
    host.mkdir()
    (host / "shadow").write_text("")
    lower = tmp_path / "lower"
    (lower / "real").mkdir(parents=True)
    (lower / "real" / "x").write_text("")
    (lower / "opt").symlink_to(host)  # an image's absolute symlink names a host path
    (lower / "rel").symlink_to("real")
    lister = export_rootfs.lower_lister(lower)
    assert lister("/opt") == [] and lister("/rel") == [] and lister("/opt/..") == ["opt", "real", "rel"]
    assert lister("/real") == ["x"]


def test_user_resolved_in_the_image_without_following_its_symlinks(tmp_path: Path) -> None:
    from migrate.interop.export_convert import _credentials

    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nweb:x:1000:1000::/srv:/bin/sh\n")
    (lower / "etc" / "group").write_text("web:x:1000:\nextra:x:27:web\n")
    creds = _credentials(_spec(user="web"), lower)
    assert (creds.uid, creds.gid, creds.groups) == (1000, 1000, (27,))
    host = tmp_path / "host-passwd"
    host.write_text("web:x:4242:4242::/:/bin/sh\n")
    (lower / "etc" / "passwd").unlink()
    (lower / "etc" / "passwd").symlink_to(host)
    with pytest.raises(InvalidArgument, match="unable to find user web"):
        _credentials(_spec(user="web"), lower)
    assert _credentials(_spec(user="7:8"), None).uid == 7  # numbers need no image
    with pytest.raises(Unsupported, match="is a name"):
        _credentials(_spec(user="web"), None)


def test_write_deleted(tmp_path: Path) -> None:
    export_rootfs.write_deleted(tmp_path, [])
    assert not (tmp_path / export_rootfs.DELETED_FILES).exists()
    export_rootfs.write_deleted(tmp_path, ["/etc/motd"])
    assert json.loads((tmp_path / export_rootfs.DELETED_FILES).read_text()) == ["/etc/motd"]


# -- CRIU images ----------------------------------------------------------------------------------


def test_netns_rekeyed_to_runcs_key_byte_for_byte() -> None:
    ours = (DATA / "export-netns.img").read_bytes()
    # what runc 1.1.5 + CRIU 4.1.1 wrote for a podman container here (xxd of its netns-10.img)
    podmans = bytes.fromhex("1943565452379355" "0e000000" "420c657874526f6f744e65744e53")
    assert export_images.rekey_netns(ours, "extnet", export_images.RUNC_NETNS_KEY) == podmans


def test_netns_without_the_key_is_left() -> None:
    ours = (DATA / "export-netns.img").read_bytes()
    assert export_images.rekey_netns(ours, "other", "x") is None
    with pytest.raises(ValueError):
        export_images.rekey_netns(ours[:-2], "extnet", "x")
    with pytest.raises(ValueError):
        export_images.rekey_netns(b"short", "extnet", "x")


def _cgroup_entries(path: Path) -> list:  # type: ignore[type-arg]
    from runtime.criu import read_image_entries

    entries = read_image_entries(path, "cgroup_entry", "cgroup_pb2")
    if not entries:
        pytest.skip("pycriu is not installed")
    return entries


def test_cgroups_point_at_one_dir_runc_maps(tmp_path: Path) -> None:
    _cgroup_entries(DATA / "export-cgroup.img")
    out = tmp_path / "cgroup.img"
    out.write_bytes(export_images.rekey_cgroups(DATA / "export-cgroup.img"))
    (entry,) = _cgroup_entries(out)
    root = "/" + export_images.CGROUP_DIR
    ctls = [ctl for s in entry.sets for ctl in s.ctls]
    assert ctls and all(ctl.path == root and ctl.cgns_prefix == len(root) for ctl in ctls)  # the cgroup namespace kept
    assert all([d.dir_name for d in c.dirs] == [export_images.CGROUP_DIR] for c in entry.controllers)
    assert len(entry.controllers) == 10


def test_copy_images(tmp_path: Path) -> None:
    _cgroup_entries(DATA / "export-cgroup.img")
    src = tmp_path / "images"
    src.mkdir()
    (src / "netns-10.img").write_bytes((DATA / "export-netns.img").read_bytes())
    (src / "cgroup.img").write_bytes((DATA / "export-cgroup.img").read_bytes())
    for name in ("pages-1.img", "dump.log", "cpuinfo.img", "stats-dump"):
        (src / name).write_bytes(b"x")
    assert export_images.copy_images(src, tmp_path / "checkpoint", netns_key="extnet") == 1
    out = tmp_path / "checkpoint"
    assert sorted(p.name for p in out.iterdir()) == ["cgroup.img", "descriptors.json", "netns-10.img", "pages-1.img"]
    assert json.loads((out / "descriptors.json").read_text()) == ["/dev/null", "/.pymigrate/log", "/.pymigrate/log.err"]
    assert b"extRootNetNS" in (out / "netns-10.img").read_bytes()
    assert (src / "netns-10.img").read_bytes() == (DATA / "export-netns.img").read_bytes()  # the checkpoint's own kept


@pytest.mark.parametrize(("compress", "magic"), [("zstd", b"\x28\xb5\x2f\xfd"), ("gzip", b"\x1f\x8b"), ("none", None)])
def test_pack_dir(tmp_path: Path, compress: str, magic: bytes | None) -> None:
    tree = tmp_path / "t"
    (tree / "checkpoint").mkdir(parents=True)
    (tree / "checkpoint" / "inventory.img").write_bytes(b"i")
    (tree / "spec.dump").write_text("{}")
    sink = io.BytesIO()
    pack_dir(tree, sink, compress)
    data = sink.getvalue()
    if magic:
        assert data.startswith(magic)
    if compress == "zstd":
        import zstandard

        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert sorted(tar.getnames()) == ["checkpoint", "checkpoint/inventory.img", "spec.dump"]


# -- a container pymigrate imported from podman, exported back --------------------------------------


def test_engine_mount_kinds() -> None:
    from migrate.interop.export_convert import engine_mount_kind

    assert [engine_mount_kind(m) for m in ("/etc/hosts", "/run/.containerenv", "/dev/shm", "/sys/fs/cgroup/cpu",
                                           "/proc/keys", "/srv/data")] == ["file", "file", "shm", "cgroup", "masked", "other"]
    with pytest.raises(Unsupported, match="/srv/data"):
        check_exportable(_spec(engine_mounts=("/etc/hosts", "/srv/data")))
    check_exportable(_spec(engine_mounts=("/etc/hosts", "/dev/shm", "/sys/fs/cgroup/pids", "/proc/keys")))


def test_oci_spec_of_an_imported_container() -> None:
    spec = _spec(engine_mounts=("/etc/hosts", "/sys/fs/cgroup/cpu", "/proc/keys", "/proc/extra_mask"))
    oci = oci_spec(spec, Credentials(), checkpoint_id="c1", netns_path="/n", masked=frozenset({"/proc/keys", "/proc/extra_mask"}),
                   cgroupns=False)
    mounts = {m["destination"]: m for m in oci["mounts"]}
    assert mounts["/sys/fs/cgroup"]["type"] == "cgroup"  # runc binds each hierarchy, keyed as the dump has them
    assert "/etc/hosts" not in mounts  # podman binds its own on restore
    assert "cgroup" not in [n["type"] for n in oci["linux"]["namespaces"]]  # the images have none: runc skips the binds with one
    masked = oci["linux"]["maskedPaths"]
    assert "/proc/extra_mask" in masked and masked.count("/proc/keys") == 1


def test_masked_files_keyed_dev_null_again(tmp_path: Path) -> None:
    from runtime.criu import read_image_entries

    src = DATA / "export-imported-mountpoints.img"
    if not read_image_entries(src, "mnt_entry", "mnt_pb2"):
        pytest.skip("pycriu is not installed")
    out = tmp_path / "mountpoints.img"
    out.write_bytes(export_images.rekey_mounts(src, frozenset({"/proc/keys", "/proc/timer_list"})) or b"")
    keys = {e.mountpoint: e.ext_key for e in read_image_entries(out, "mnt_entry", "mnt_pb2") if e.HasField("ext_key")}
    assert keys["/proc/keys"] == keys["/proc/timer_list"] == "/dev/null"  # runc's one key for masked files
    assert keys["/etc/hosts"] == "/etc/hosts" and keys["/sys/fs/cgroup/cpu"] == "/sys/fs/cgroup/cpu"  # runc's keys already
    assert len(read_image_entries(out, "mnt_entry", "mnt_pb2")) == len(read_image_entries(src, "mnt_entry", "mnt_pb2"))
    assert export_images.rekey_mounts(out, frozenset({"/proc/keys"})) is None  # nothing left to change


def test_cgroup_namespace_told_by_the_images() -> None:
    _cgroup_entries(DATA / "export-cgroup.img")
    assert export_images.cgroup_namespaced(DATA / "export-cgroup.img") is True  # a pymigrate container's
    assert export_images.cgroup_namespaced(DATA / "export-imported-cgroup.img") is False  # podman's, imported


def test_cgroups_of_an_imported_container_stay_without_a_namespace(tmp_path: Path) -> None:
    _cgroup_entries(DATA / "export-imported-cgroup.img")
    out = tmp_path / "cgroup.img"
    out.write_bytes(export_images.rekey_cgroups(DATA / "export-imported-cgroup.img"))
    (entry,) = _cgroup_entries(out)
    ctls = [ctl for s in entry.sets for ctl in s.ctls]
    assert ctls and all(ctl.path == "/" + export_images.CGROUP_DIR and not ctl.HasField("cgns_prefix") for ctl in ctls)


def test_log_files_become_pipes_to_conmon(tmp_path: Path) -> None:
    """The init's fds 1 and 2 on /.pymigrate/log and log.err (a real dump's images) become pipes
    runc gives conmon's ends for; the child's fds share them; /dev/null on fd 0 stays."""
    import shutil

    from migrate.interop.export_stdio import PIPE_ID_BASE, logs_to_pipes
    from runtime.criu import read_image_entries

    images = tmp_path / "images"
    shutil.copytree(DATA / "stdio", images)
    if not read_image_entries(images / "files.img", "file_entry", "fdinfo_pb2"):
        pytest.skip("pycriu is not installed")
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    descriptors = logs_to_pipes(images, list(export_images.STDIO_PATHS))
    assert descriptors == ["/dev/null", f"pipe:[{PIPE_ID_BASE + 1}]", f"pipe:[{PIPE_ID_BASE + 2}]"]
    files = {e.id: e for e in read_image_entries(images / "files.img", "file_entry", "fdinfo_pb2")}
    pipes = [e for e in files.values() if e.HasField("pipe")]
    assert sorted(e.pipe.pipe_id for e in pipes) == [PIPE_ID_BASE + 1, PIPE_ID_BASE + 2]
    assert all(e.pipe.flags == os.O_WRONLY and not e.HasField("reg") for e in pipes)
    assert "/.pymigrate/log" not in {e.reg.name for e in files.values() if e.HasField("reg")}
    for fdinfo in images.glob("fdinfo-*.img"):  # the init's and its child's fds 1, 2: pipes now
        fds = {fd.fd: fd for fd in read_image_entries(fdinfo, "fdinfo_entry", "fdinfo_pb2")}
        assert files[fds[1].id].HasField("pipe") and files[fds[2].id].HasField("pipe")
        assert fds[1].type == files[fds[1].id].type and files[fds[0].id].reg.name == "/dev/null"
    assert logs_to_pipes(images, list(export_images.STDIO_PATHS)) == list(export_images.STDIO_PATHS)  # nothing left to turn
    assert before["pstree.img"] == (images / "pstree.img").read_bytes()


def test_a_dump_without_log_files_keeps_its_paths(tmp_path: Path) -> None:
    from migrate.interop.export_stdio import logs_to_pipes

    assert logs_to_pipes(tmp_path, ["/dev/null", "/a", "/b"]) == ["/dev/null", "/a", "/b"]


def test_check_options(tmp_path: Path) -> None:
    from migrate.api import CheckpointOptions
    from migrate.interop.podman_export import check_options

    check_options(CheckpointOptions(export_path=tmp_path / "x.tar", export_format="podman", compress="gzip"))
    for options, words in [
        (CheckpointOptions(export_format="podman"), "give --export FILE"),
        (CheckpointOptions(export_path=tmp_path / "no" / "x.tar", export_format="podman"), "is not a directory"),
        (CheckpointOptions(export_path=tmp_path / "x.tar", export_format="podman", sign_key=tmp_path / "k"), "no signature"),
    ]:
        with pytest.raises(InvalidArgument, match=words):
            check_options(options)
