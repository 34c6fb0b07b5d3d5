"""migrate.interop.foreign: detection by content, the whitelist, budgets, validation (issue 16).

Every hostile archive must end in a typed error that names the member (and the field) and leave
nothing in the destination's parent.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from migrate.errors import ArchiveError, ArchiveLimitExceeded, TruncatedArchive, UnsafeMember
from migrate.interop import dump_fields, foreign
from runtime.extract_limits import ExtractLimits
from tests.fakes.foreign_archives import IMAGE_ID, Member, podman_members, tar_bytes, write_archive


@pytest.fixture
def work(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


# --- detection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", ["none", "gzip", "zstd"])
def test_sniff_foreign_by_content_not_name(tmp_path: Path, compress: str) -> None:
    # podman writes tar+zstd even for a file called .tar.gz
    path = write_archive(tmp_path / "x.tar.gz", podman_members(), compress=compress)
    assert foreign.sniff_format(path) == "foreign"


def test_sniff_native_and_garbage(tmp_path: Path) -> None:
    native = tmp_path / "a.tar.gz"
    native.write_bytes(b"PYMGCKPT\x00\x01rest")
    assert foreign.sniff_format(native) == "native"
    junk = tmp_path / "j.tar"
    junk.write_bytes(b"#!/bin/sh\necho hi\n" * 40)
    with pytest.raises(ArchiveError, match="not a checkpoint archive"):
        foreign.sniff_format(junk)


# --- a good archive ---------------------------------------------------------------------------


def test_podman_archive_extracted_and_read(tmp_path: Path, work: Path) -> None:
    path = write_archive(tmp_path / "ck.tar.gz", podman_members())
    fc, report = foreign.extract_with_report(path, work / "ck")
    assert fc.engine == "podman"
    assert (fc.container_name, fc.image_name, fc.image_id) == ("web", "localhost/pma-base:1", IMAGE_ID)
    assert fc.has_rootfs_diff and fc.deleted_files == ("etc/motd",)
    assert fc.checkpointed_at is None  # podman 4.3's config.dump has no checkpointedTime
    assert fc.root == work / "ck" and (fc.root / "checkpoint" / "pages-1.img").stat().st_size == 8192
    assert report.compression == "zstd" and report.sizes["checkpoint/pages-1.img"] == 8192
    [iface] = foreign.network_interfaces(fc.network_status)
    assert (iface.ip, iface.mac, iface.interface) == ("10.88.0.5", "b2:4d:5c:b2:54:ab", "eth0")
    assert fc.spec["mounts"][1]["destination"] == "/etc/hosts"
    # the directory reads the same on its own (a checkpoint image's unpacked layer)
    assert foreign.load_foreign_dir(fc.root) == fc


def test_keep_writes_only_selected_members(tmp_path: Path, work: Path) -> None:
    path = write_archive(tmp_path / "ck.tar", podman_members(), compress="none")
    fc, report = foreign.extract_with_report(path, work / "ck", keep=lambda n: n.endswith((".dump", ".status")))
    assert not (fc.root / "checkpoint" / "pages-1.img").exists()
    assert not (fc.root / "rootfs-diff.tar").exists()
    assert fc.has_rootfs_diff  # counted from the archive, not the disk
    assert report.sizes["rootfs-diff.tar"] == 2048


def test_existing_empty_dest_is_emptied_on_failure(tmp_path: Path, work: Path) -> None:
    dest = work / "ck"
    dest.mkdir()
    path = write_archive(tmp_path / "bad.tar", [*podman_members(), Member("evil.sh", b"x")])
    with pytest.raises(UnsafeMember):
        foreign.extract_foreign(path, dest)
    assert dest.is_dir() and list(dest.iterdir()) == []


def test_non_empty_dest_refused(tmp_path: Path, work: Path) -> None:
    (work / "ck").mkdir()
    (work / "ck" / "mine").write_text("keep")
    path = write_archive(tmp_path / "ck.tar", podman_members())
    with pytest.raises(ArchiveError, match="not empty"):
        foreign.extract_foreign(path, work / "ck")
    assert (work / "ck" / "mine").read_text() == "keep"


# --- hostile archives --------------------------------------------------------------------------


def _hostile(extra: list[Member]) -> list[Member]:
    return [*podman_members(), *extra]


HOSTILE = {
    "dotdot": (_hostile([Member("checkpoint/../../escape", b"x")]), UnsafeMember, "'..'"),
    "absolute": (_hostile([Member("/etc/cron.d/evil", b"x")]), UnsafeMember, "absolute path"),
    "symlink out": (_hostile([Member("artifacts/passwd", type=tarfile.SYMTYPE, linkname="/etc/passwd")]),
                    UnsafeMember, "symlink"),
    "symlink spec.dump": ([m for m in podman_members() if m.name != "spec.dump"]
                          + [Member("spec.dump", type=tarfile.SYMTYPE, linkname="/etc/shadow")], UnsafeMember, "symlink"),
    "hard link": (_hostile([Member("artifacts/h", type=tarfile.LNKTYPE, linkname="etc/shadow")]), UnsafeMember, "hard link"),
    "char device": (_hostile([Member("artifacts/mem", type=tarfile.CHRTYPE)]), UnsafeMember, "device node"),
    "fifo": (_hostile([Member("checkpoint/fifo-1.img", type=tarfile.FIFOTYPE)]), UnsafeMember, "fifo"),
    "unknown member": (_hostile([Member("evil.sh", b"#!/bin/sh")]), UnsafeMember, "not a member"),
    "unknown dir": (_hostile([Member("etc/passwd", b"x")]), UnsafeMember, "'etc'"),
    "image subdir": (_hostile([Member("checkpoint/sub/core-1.img", b"x")]), UnsafeMember, "no subdirectories"),
    "not an image name": (_hostile([Member("checkpoint/run.sh", b"x")]), UnsafeMember, "not a CRIU image name"),
    "volume name": (_hostile([Member("volumes/../x.tar", b"x")]), UnsafeMember, "'..'"),
    "volume not a tar": (_hostile([Member("volumes/data/file", b"x")]), UnsafeMember, "VOLUME.tar"),
    "duplicate": (_hostile([Member("config.dump", b"{}")]), UnsafeMember, "twice"),
    "spec.dump a dir": ([m for m in podman_members() if m.name != "spec.dump"]
                        + [Member("spec.dump/", type=tarfile.DIRTYPE)], UnsafeMember, "regular file"),
    "bad JSON": (podman_members(**{"config.dump": None}) + [Member("config.dump", b"{not json")], UnsafeMember,
                 "not valid JSON"),
    "wrong type name": (podman_members(**{"config.dump": {"name": 5, "rootfsImageID": IMAGE_ID}}), UnsafeMember,
                        "'name' is int, expected a string"),
    "wrong type args": (podman_members(**{"spec.dump": {"process": {"args": "sh -c x"}}}), UnsafeMember,
                        "'process.args' is str, expected a list"),
    "wrong type uid": (podman_members(**{"spec.dump": {"process": {"user": {"uid": True}}}}), UnsafeMember,
                       "'process.user.uid' is bool"),
    "mount escapes": (podman_members(**{"spec.dump": {"mounts": [{"destination": "/../../etc", "type": "bind"}]}}),
                      UnsafeMember, "'mounts[0].destination'"),
    "deleted escapes": (podman_members(**{"deleted.files": ["/tmp/../../etc/passwd"]}), UnsafeMember,
                        "expected a path inside the container"),
    "deleted not list": (podman_members(**{"deleted.files": {"a": 1}}), UnsafeMember, "expected a list"),
    "network wrong type": (podman_members(**{"network.status": {"podman": {"interfaces": {"eth0": {"subnets": 3}}}}}),
                           UnsafeMember, "subnets"),
    "bad time": (podman_members(**{"config.dump": {"name": "x", "rootfsImageID": "i", "checkpointedTime": "yesterday"}}),
                 UnsafeMember, "RFC 3339"),
    "no spec.dump": (podman_members(**{"spec.dump": None}), UnsafeMember, "'spec.dump': missing"),
    "no checkpoint dir": ([m for m in podman_members() if not m.name.startswith("checkpoint")], UnsafeMember,
                          "CRIU images directory"),
    "not an engine": (podman_members(**{"config.dump": {"name": "x"}, "spec.dump": {}}), ArchiveError,
                      "neither podman's nor CRI-O's"),
    "long string": (podman_members(**{"config.dump": {"name": "x" * 70000, "rootfsImageID": "i"}}), UnsafeMember,
                    "at most"),
    "claims more than it has": (_hostile([Member("artifacts/big", b"abc", size=10 << 20)]), TruncatedArchive,
                                "artifacts/big"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_refused_and_nothing_left(case: str, tmp_path: Path, work: Path) -> None:
    members, error, text = HOSTILE[case]
    path = write_archive(tmp_path / "hostile.tar.gz", members)
    with pytest.raises(error) as info:
        foreign.extract_foreign(path, work / "ck")
    assert text in str(info.value)
    assert list(work.iterdir()) == []


def test_member_over_budget_names_the_limit(tmp_path: Path, work: Path) -> None:
    path = write_archive(tmp_path / "ck.tar", podman_members())
    with pytest.raises(ArchiveLimitExceeded) as info:
        foreign.extract_foreign(path, work / "ck", limits=ExtractLimits(max_member_bytes=4096))
    assert info.value.limit == "max_member_bytes" and "checkpoint/pages-1.img" in str(info.value)
    with pytest.raises(ArchiveLimitExceeded, match="max_total_bytes"):
        foreign.extract_foreign(path, work / "ck", limits=ExtractLimits(max_total_bytes=10000))
    with pytest.raises(ArchiveLimitExceeded, match="max_members"):
        foreign.extract_foreign(path, work / "ck", limits=ExtractLimits(max_members=5))
    assert list(work.iterdir()) == []


def test_json_member_over_its_bound_refused_before_writing(tmp_path: Path, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dump_fields, "MAX_JSON_BYTES", 100)
    path = write_archive(tmp_path / "ck.tar", podman_members())
    with pytest.raises(UnsafeMember, match="'config.dump'.*expected at most 100"):
        foreign.extract_foreign(path, work / "ck")
    assert list(work.iterdir()) == []


def test_truncated_zstd(tmp_path: Path, work: Path) -> None:
    good = write_archive(tmp_path / "ck.tar.zst", podman_members())
    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(TruncatedArchive, match="truncated"):
        foreign.extract_foreign(cut, work / "ck")
    assert list(work.iterdir()) == []


def test_zstd_cut_at_a_member_boundary(tmp_path: Path, work: Path) -> None:
    # the tar before the cut parses as a smaller archive: only the zstd framing tells
    import zstandard

    import io

    whole = tar_bytes(podman_members())
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        boundary = tar.getmember("checkpoint/pages-1.img").offset
    comp = zstandard.ZstdCompressor(write_checksum=True)
    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(comp.compress(whole[:boundary]) + comp.compress(whole[boundary:])[:6])
    with pytest.raises(TruncatedArchive, match="ends inside a frame"):
        foreign.extract_foreign(cut, work / "ck")
    assert list(work.iterdir()) == []


def test_corrupt_gzip_checksum(tmp_path: Path, work: Path) -> None:
    good = write_archive(tmp_path / "ck.tar.gz", podman_members(), compress="gzip")
    data = bytearray(good.read_bytes())
    data[-6] ^= 0xFF  # the CRC32 in gzip's trailer, checked after the tar's end
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises((TruncatedArchive, ArchiveError)):
        foreign.extract_foreign(bad, work / "ck")
    assert list(work.iterdir()) == []


def test_huge_pax_header_refused(tmp_path: Path, work: Path) -> None:
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("config.dump")
        info.pax_headers = {"comment": "x" * (2 << 20)}
        tar.addfile(info, io.BytesIO(b""))
    path = tmp_path / "pax.tar"
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafeMember, match="extended header"):
        foreign.extract_foreign(path, work / "ck")
    assert list(work.iterdir()) == []


def test_check_member_table() -> None:
    for ok, kind in [("config.dump", "file"), ("checkpoint", "dir"), ("checkpoint/core-1.img", "file"),
                     ("checkpoint/descriptors.json", "file"), ("volumes/data.tar", "file"), ("artifacts/a/b", "file"),
                     ("bind.mounts", "file"), ("io.kubernetes.cri-o.LogPath", "file"), ("pod.options", "file")]:
        foreign.check_member(ok, kind)
    for bad, kind in [("checkpoint", "file"), ("config.dump", "dir"), ("checkpoint/x.sh", "file"), ("rootfs", "dir")]:
        with pytest.raises(UnsafeMember):
            foreign.check_member(bad, kind)


def test_plain_tar_members_with_dot_slash(tmp_path: Path, work: Path) -> None:
    # podman's chrootarchive names members ./x when the source dir is included
    members = [Member("./" + m.name if not m.name.startswith("./") else m.name, m.data, m.type) for m in podman_members()]
    path = tmp_path / "ck.tar"
    path.write_bytes(tar_bytes(members))
    fc = foreign.extract_foreign(path, work / "ck")
    assert fc.container_name == "web"
    assert json.loads((fc.root / "network.status").read_text())["podman"]
