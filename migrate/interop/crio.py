"""CRI-O's (and so the kubelet's) checkpoint archives: their metadata mapped to what we read.

The kubelet's checkpoint API (``POST /checkpoint/NS/POD/CONTAINER``) asks CRI-O to write an
archive to /var/lib/kubelet/checkpoints; its layout is podman's (the same ``checkpoint/``,
``spec.dump``, ``rootfs-diff.tar``, ``deleted.files``, ``stats-dump``) with three differences:

- ``config.dump`` is not libpod's container record but checkpointctl's reduced one
  (checkpointctl ``lib/metadata.go`` ``ContainerConfig``): ``id``, ``name`` (CRI-O's long name,
  ``k8s_CONTAINER_POD_NAMESPACE_UID_ATTEMPT``), ``rootfsImage`` (the image as the user asked for
  it), ``rootfsImageRef`` (the image ID), ``rootfsImageName`` (a name of it), ``runtime``,
  ``createdTime``, ``checkpointedTime``, ``restoredTime``, ``restored``;
- ``spec.dump`` carries CRI-O's annotations: ``io.container.manager: cri-o``,
  ``io.kubernetes.cri-o.Metadata`` (JSON ``{"name": CONTAINER, "attempt": N}``),
  ``io.kubernetes.pod.name``/``.namespace``, ``io.kubernetes.cri-o.IP.0``, ...;
- ``bind.mounts`` lists the external bind mounts with the type of their source (``file`` or
  ``directory``) and its permission bits, so a restore elsewhere can create missing sources of
  the right type; there is no ``network.status`` (the pod's sandbox owns the network) and the
  container's log is the member ``io.kubernetes.cri-o.LogPath`` (named after the annotation).

This module only reads: ``is_crio`` says whether a config/spec pair is CRI-O's, ``read_crio``
validates and maps it. CRI-O is not installable on the machine the tests run on: the unit tests
build archives from this schema, the integration test relabels a real podman export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from migrate.interop import dump_fields as f

ENGINE = "cri-o"
MANAGER_ANNOTATION = "io.container.manager"
METADATA_ANNOTATION = "io.kubernetes.cri-o.Metadata"
BIND_MOUNTS = "bind.mounts"
LOG_MEMBER = "io.kubernetes.cri-o.LogPath"


@dataclass(frozen=True)
class BindMount:
    """One entry of ``bind.mounts``. ``source`` is a path on the checkpointing host: shown, never opened."""

    source: str
    destination: str
    file_type: str  # "file" | "directory"
    permissions: int


@dataclass(frozen=True)
class CrioMetadata:
    container_id: str
    container_name: str  # the Kubernetes container name (io.kubernetes.cri-o.Metadata), else config.dump's
    full_name: str  # config.dump's name: CRI-O's k8s_... name
    pod_name: str
    pod_namespace: str
    ip: str
    image_name: str
    image_id: str
    image_requested: str
    runtime: str
    created_at: float | None
    checkpointed_at: float | None
    bind_mounts: tuple[BindMount, ...]


def is_crio(config: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether this config.dump/spec.dump pair was written by CRI-O: its manager annotation, or a
    config.dump with CRI-O's field ``rootfsImageRef`` and without libpod's embedded ``spec``."""
    annotations = spec.get("annotations")
    if isinstance(annotations, dict) and annotations.get(MANAGER_ANNOTATION) == ENGINE:
        return True
    return "rootfsImageRef" in config and "spec" not in config


def read_crio(config: dict[str, Any], spec: dict[str, Any], bind_mounts: Any) -> CrioMetadata:
    """Validate and map CRI-O's ``config.dump``, ``spec.dump`` annotations and ``bind.mounts``
    (parsed JSON, None when absent). Raises UnsafeMember naming the file and field."""
    where = "config.dump: "
    annotations = f.str_map(spec, "annotations", "spec.dump: ")
    full_name = f.get(config, "name", str, where, "")
    return CrioMetadata(
        container_id=f.get(config, "id", str, where, ""),
        container_name=_kube_name(annotations) or full_name,
        full_name=full_name,
        pod_name=annotations.get("io.kubernetes.pod.name", ""),
        pod_namespace=annotations.get("io.kubernetes.pod.namespace", ""),
        ip=annotations.get("io.kubernetes.cri-o.IP.0", ""),
        image_name=f.get(config, "rootfsImageName", str, where, ""),
        image_id=f.get(config, "rootfsImageRef", str, where, ""),
        image_requested=f.get(config, "rootfsImage", str, where, ""),
        runtime=f.get(config, "runtime", str, where, ""),
        created_at=f.rfc3339(f.get(config, "createdTime", str, where), f.field(where, "createdTime")),
        checkpointed_at=f.rfc3339(f.get(config, "checkpointedTime", str, where), f.field(where, "checkpointedTime")),
        bind_mounts=parse_bind_mounts(bind_mounts),
    )


def _kube_name(annotations: dict[str, str]) -> str:
    raw = annotations.get(METADATA_ANNOTATION)
    if not raw:
        return annotations.get("io.kubernetes.container.name", "")
    where = f"spec.dump: annotations[{METADATA_ANNOTATION!r}]"
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise f.invalid(where, f"is not valid JSON: {exc}") from None
    meta = f.as_kind(meta, dict, where)
    return str(f.get(meta, "name", str, where, ""))


def parse_bind_mounts(value: Any) -> tuple[BindMount, ...]:
    """``bind.mounts`` (a JSON list of {source, destination, file_type, permissions}) validated."""
    if value is None:
        return ()
    items = f.as_kind(value, list, f"{BIND_MOUNTS}: ")
    out = []
    for i, item in enumerate(items):
        where = f"{BIND_MOUNTS}: [{i}]"
        item = f.as_kind(item, dict, where)
        destination = f.get(item, "destination", str, where, "")
        f.container_path(destination, f.field(where, "destination"))
        file_type = f.get(item, "file_type", str, where, "")
        if file_type not in ("file", "directory"):
            raise f.invalid(f.field(where, "file_type"), f"is {file_type[:32]!r}, expected 'file' or 'directory'")
        permissions = f.get(item, "permissions", int, where, 0)
        if not 0 <= permissions <= 0o7777:
            raise f.invalid(f.field(where, "permissions"), f"is {permissions}, expected permission bits (0..0o7777)")
        out.append(BindMount(source=f.get(item, "source", str, where, ""), destination=destination,
                             file_type=file_type, permissions=permissions))
    return tuple(out)
