"""podman- and CRI-O-layout checkpoint archives built in memory for unit tests (issue 16).

The members and JSON fields follow what podman 4.3's exportCheckpoint and CRI-O's
prepareCheckpointExport write (docs/interop.md); the CRIU images are placeholders (nothing here
restores them). ``Member`` lets a test add hostile entries (links, devices, odd names).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_ID = "21c27723d3b3b6bac2c1502ee6e09323f96295c19682f7fe44ac096ea8aa13b4"


@dataclass
class Member:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    size: int | None = None  # a header claiming another size than the data


def podman_spec(manager: str = "libpod") -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2-dev",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "sleep 1000"], "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "/var/lib/containers/storage/overlay/abc/merged"},
        "hostname": "ctr1",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/run/ctr/hosts", "options": ["bind", "rprivate"]},
        ],
        "annotations": {"io.container.manager": manager},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/netns-1"}]},
    }


def podman_config() -> dict[str, Any]:
    return {"spec": podman_spec(), "id": "0" * 64, "name": "web", "rootfsImageID": IMAGE_ID,
            "rootfsImageName": "localhost/pma-base:1", "createdTime": "2026-12-04T23:10:48.896626883Z"}


NETWORK_STATUS = {"podman": {"interfaces": {"eth0": {"subnets": [{"ipnet": "10.88.0.5/16", "gateway": "10.88.0.1"}],
                                                      "mac_address": "b2:4d:5c:b2:54:ab"}}}}


def podman_members(**overrides: Any) -> list[Member]:
    """A podman export's members; ``overrides`` replace a JSON file's value (None drops the file)."""
    files: dict[str, Any] = {
        "config.dump": podman_config(),
        "spec.dump": podman_spec(),
        "network.status": NETWORK_STATUS,
        "deleted.files": ["/etc/motd"],
    }
    files.update(overrides)
    members = [Member("./", type=tarfile.DIRTYPE), Member("artifacts/", type=tarfile.DIRTYPE)]
    members += [Member(name, json.dumps(value).encode()) for name, value in files.items() if value is not None]
    members += [
        Member("stats-dump", b"\x00" * 48),
        Member("ctr.log", b""),
        Member("devshm-checkpoint.tar", b"\x00" * 1024),
        Member("checkpoint/", type=tarfile.DIRTYPE),
        Member("checkpoint/inventory.img", b"inv"),
        Member("checkpoint/pages-1.img", b"\x01" * 8192),
        Member("checkpoint/pagemap-1.img", b"pm"),
        Member("checkpoint/descriptors.json", b'["/dev/null","pipe:[1]","pipe:[2]"]'),
        Member("checkpoint/tmpfs-dev-44.tar.gz.img", b"t"),
        Member("rootfs-diff.tar", b"\x00" * 2048),
    ]
    return members


def crio_spec() -> dict[str, Any]:
    spec = podman_spec(manager="cri-o")
    spec["annotations"].update({
        "io.kubernetes.cri-o.Metadata": json.dumps({"name": "counter", "attempt": 0}),
        "io.kubernetes.pod.name": "counters",
        "io.kubernetes.pod.namespace": "default",
        "io.kubernetes.cri-o.IP.0": "10.85.0.7",
    })
    return spec


def crio_config() -> dict[str, Any]:
    # checkpointctl lib/metadata.go ContainerConfig, as CRI-O's prepareCheckpointExport fills it
    return {"id": "f" * 64, "name": "k8s_counter_counters_default_0123_0", "rootfsImage": "quay.io/x/counter:latest",
            "rootfsImageRef": IMAGE_ID, "rootfsImageName": "quay.io/x/counter:latest", "runtime": "runc",
            "createdTime": "2026-12-04T20:00:00.5Z", "checkpointedTime": "2026-12-04T21:00:00.123456789+01:00",
            "restoredTime": "0001-01-01T00:00:00Z", "restored": False}


BIND_MOUNTS = [{"source": "/var/lib/kubelet/pods/0123/etc-hosts", "destination": "/etc/hosts", "file_type": "file",
                "permissions": 0o644},
               {"source": "/var/lib/kubelet/pods/0123/volumes/data", "destination": "/data", "file_type": "directory",
                "permissions": 0o755}]


def crio_members(**overrides: Any) -> list[Member]:
    """A CRI-O (kubelet) checkpoint archive: no network.status, bind.mounts, the log member."""
    files: dict[str, Any] = {"config.dump": crio_config(), "spec.dump": crio_spec(), "bind.mounts": BIND_MOUNTS,
                             "deleted.files": ["/tmp/gone"]}
    files.update(overrides)
    members = [Member(name, json.dumps(value).encode()) for name, value in files.items() if value is not None]
    members += [
        Member("stats-dump", b"\x00" * 48),
        Member("dump.log", b"(00.000000) Version: 4.1.1 (gitid 0)\n"),
        Member("io.kubernetes.cri-o.LogPath", b"2026-12-04T20:00:01Z stdout F 1\n"),
        Member("checkpoint/inventory.img", b"inv"),
        Member("checkpoint/pages-1.img", b"\x01" * 4096),
        Member("rootfs-diff.tar", b"\x00" * 1024),
    ]
    return members


def tar_bytes(members: list[Member], *, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.type
            info.mode = 0o755 if m.type == tarfile.DIRTYPE else 0o600
            info.linkname = m.linkname
            info.mtime = 1764889848
            if m.type == tarfile.REGTYPE and m.size is not None:  # a header claiming more: the archive ends there
                info.size = m.size
                return buf.getvalue() + info.tobuf(fmt, tarfile.ENCODING, "surrogateescape") + m.data
            if m.type == tarfile.REGTYPE:
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def write_archive(path: Path, members: list[Member], *, compress: str = "zstd") -> Path:
    """Write ``members`` as a tar (compress "none"), tar.gz ("gzip") or tar.zst ("zstd") at ``path``."""
    data = tar_bytes(members)
    if compress == "zstd":
        import zstandard

        data = zstandard.ZstdCompressor(write_checksum=True).compress(data)
    elif compress == "gzip":
        import gzip

        data = gzip.compress(data)
    path.write_bytes(data)
    return path
