"""CRI-O / kubelet checkpoint archives read into the same ForeignCheckpoint (issue 16).

CRI-O is not installable here: the archives are built from the documented schema
(checkpointctl lib/metadata.go, CRI-O internal/lib/checkpoint.go) by tests/fakes/foreign_archives.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from migrate.errors import UnsafeMember
from migrate.interop import crio, foreign
from tests.fakes.foreign_archives import IMAGE_ID, crio_config, crio_members, crio_spec, write_archive


def test_crio_archive_mapped(tmp_path: Path) -> None:
    # CRI-O writes a plain tar (archive.Uncompressed)
    path = write_archive(tmp_path / "checkpoint-counters_default-counter.tar", crio_members(), compress="none")
    assert foreign.sniff_format(path) == "foreign"
    fc = foreign.extract_foreign(path, tmp_path / "ck")
    assert fc.engine == "cri-o"
    assert fc.container_name == "counter"  # the Kubernetes name, not k8s_counter_counters_...
    assert (fc.image_name, fc.image_id) == ("quay.io/x/counter:latest", IMAGE_ID)
    assert fc.checkpointed_at == pytest.approx(1796414400.123456)  # 21:00:00.123456 at +01:00
    assert fc.has_rootfs_diff and fc.deleted_files == ("tmp/gone",)
    assert fc.network_status is None  # the pod's sandbox owns the network: no network.status
    meta = fc.crio
    assert meta is not None
    assert (meta.pod_name, meta.pod_namespace, meta.ip, meta.runtime) == ("counters", "default", "10.85.0.7", "runc")
    assert meta.full_name == "k8s_counter_counters_default_0123_0"
    assert meta.created_at == pytest.approx(1796414400.5)
    assert [(b.destination, b.file_type, b.permissions) for b in meta.bind_mounts] == [
        ("/etc/hosts", "file", 0o644), ("/data", "directory", 0o755)]
    assert (fc.root / crio.LOG_MEMBER).is_file() and (fc.root / "dump.log").is_file()


def test_crio_told_by_config_shape_without_annotation(tmp_path: Path) -> None:
    spec = crio_spec()
    del spec["annotations"]["io.container.manager"]
    fc = foreign.extract_foreign(write_archive(tmp_path / "a.tar", crio_members(**{"spec.dump": spec})), tmp_path / "ck")
    assert fc.engine == "cri-o" and fc.container_name == "counter"


def test_crio_without_metadata_annotation_uses_config_name(tmp_path: Path) -> None:
    spec = crio_spec()
    del spec["annotations"]["io.kubernetes.cri-o.Metadata"]
    fc = foreign.extract_foreign(write_archive(tmp_path / "a.tar", crio_members(**{"spec.dump": spec})), tmp_path / "ck")
    assert fc.container_name == "k8s_counter_counters_default_0123_0"


def _refused(tmp_path: Path, text: str, **overrides: object) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path = write_archive(tmp_path / "bad.tar", crio_members(**overrides))
    with pytest.raises(UnsafeMember) as info:
        foreign.extract_foreign(path, work / "ck")
    assert text in str(info.value)
    assert list(work.iterdir()) == []


def test_bad_bind_mounts_refused(tmp_path: Path) -> None:
    _refused(tmp_path, "'bind.mounts'", **{"bind.mounts": {"source": "/x"}})


@pytest.mark.parametrize(("entry", "text"), [
    ({"destination": "/etc/hosts", "file_type": "socket", "permissions": 0}, "expected 'file' or 'directory'"),
    ({"destination": "/../../etc", "file_type": "file", "permissions": 0}, "expected a path inside the container"),
    ({"destination": "/x", "file_type": "file", "permissions": 0o100000}, "permission bits"),
    ({"destination": "/x", "file_type": "file", "permissions": "644"}, "expected an integer"),
])
def test_bad_bind_mount_entry_refused(tmp_path: Path, entry: dict[str, object], text: str) -> None:
    _refused(tmp_path, text, **{"bind.mounts": [entry]})


def test_bad_metadata_annotation_refused(tmp_path: Path) -> None:
    spec = crio_spec()
    spec["annotations"]["io.kubernetes.cri-o.Metadata"] = "{name: counter"
    _refused(tmp_path, "io.kubernetes.cri-o.Metadata", **{"spec.dump": spec})


def test_wrong_types_in_crio_config_refused(tmp_path: Path) -> None:
    config = crio_config()
    config["rootfsImageRef"] = ["sha256:x"]
    _refused(tmp_path, "'rootfsImageRef' is list", **{"config.dump": config})


def test_impossible_time_refused(tmp_path: Path) -> None:
    config = crio_config()
    config["checkpointedTime"] = "2026-13-40T99:00:00Z"
    _refused(tmp_path, "'checkpointedTime' is not a valid time", **{"config.dump": config})


def test_read_crio_directly() -> None:
    meta = crio.read_crio(crio_config(), crio_spec(), json.loads(json.dumps([])))
    assert meta.container_id == "f" * 64 and meta.bind_mounts == ()
    assert crio.is_crio(crio_config(), crio_spec())
    assert not crio.is_crio({"spec": {}, "rootfsImageID": "x"}, {"annotations": {"io.container.manager": "libpod"}})
