"""``checkpoint inspect FILE|REF``: what a checkpoint holds, whoever made it (like ``checkpointctl show``).

One summary (a dict, the ``--json`` answer) for every format:

- a **podman or CRI-O archive** (``foreign.sniff_format`` says "foreign"): read through the same
  whitelist and budgets as an import (``foreign.extract_with_report``), but only the small
  members are written, into a private temporary directory removed on the way out (JSON files,
  ``stats-dump``, ``dump.log``, ``descriptors.json``); the others are checked and counted. So
  inspecting a 4 GiB archive writes a few KB and reads it once;
- a **native archive** (``PYMGCKPT``): its manifest only (``migrate.archive.reader.read_manifest``);
- a **checkpoint image** by reference: found in this host's image store or pulled, and unpacked
  with the archive rules by migrate/interop/checkpoint_image.py ``open_checkpoint_image``; the
  manifest's annotations add what podman records there (CRIU version, runtime, host).

Shown: engine, container name and id, image name and id, CRIU version (``dump.log``'s
``Version:`` line, a checkpoint image's annotation, a native manifest), times, sizes (the CRIU
images, memory pages = ``pages-*.img``, ``rootfs-diff.tar``, volumes), network (``network.status``
for podman, CRI-O's IP annotation), mounts and namespaces (``spec.dump``), and CRIU's dump
statistics (``stats-dump``, a CRIU stats image, decoded with pycriu's ``stats_pb2`` through
runtime/criu.py, imported only here: ~75 ms). A FILE is always read on the caller's side.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from migrate.interop import foreign

# members worth writing to read them: small by nature (each still bounded by the archive rules)
SMALL_MEMBERS = foreign.JSON_FILES | {foreign.STATS_DUMP, "dump.log", f"{foreign.CHECKPOINT_DIR}/{foreign.DESCRIPTORS}"}
MAX_LOG_READ = 64 << 10  # CRIU writes its version in the first lines of dump.log
MAX_STATS_BYTES = 1 << 20  # a real stats-dump is ~50 bytes
_CRIU_VERSION = re.compile(rb"Version: (\d+\.\d+(?:\.\d+)?)")
_PODMAN_CRIU_VERSION = "io.podman.annotations.checkpoint.criu.version"
_PODMAN_RUNTIME = "io.podman.annotations.checkpoint.runtime.name"


def inspect_file(path: Path) -> dict[str, Any]:
    """The summary of the archive ``path`` (native, podman or CRI-O, by content).

    Raises: as ``foreign.sniff_format`` / ``extract_foreign`` / ``read_manifest``; nothing is left
    behind either way.
    """
    if foreign.sniff_format(path) == "native":
        return inspect_native(path)
    from runtime.fstree import remove_tree

    scratch = Path(tempfile.mkdtemp(prefix="pymigrate-inspect-"))
    try:
        fc, report = foreign.extract_with_report(path, scratch / "ck", keep=lambda name: name in SMALL_MEMBERS)
        summary = summarize_foreign(fc, report.sizes)
    finally:
        remove_tree(scratch)
    summary["source"] = {"kind": "file", "path": str(path), "bytes": path.stat().st_size,
                         "compression": report.compression}
    return summary


def inspect_image(store: Any, reference: str, *, options: Any = None) -> dict[str, Any]:
    """The summary of the checkpoint image ``reference`` (stored here, or pulled: D's
    ``open_checkpoint_image``, which unpacks it with the archive rules into scratch)."""
    from migrate.interop.checkpoint_image import open_checkpoint_image, store_name

    with open_checkpoint_image(store, reference, options=options) as fc:
        summary = summarize_foreign(fc, dir_sizes(fc.root))
    name = store_name(reference)
    annotations = dict(store.annotations(name))
    image = store.get(name)
    version = annotations.get(_PODMAN_CRIU_VERSION, "")
    if version and not summary["criu_version"]:
        summary["criu_version"] = _podman_version(version)
    summary["runtime"] = summary["runtime"] or annotations.get(_PODMAN_RUNTIME, "")
    summary["source"] = {"kind": "image", "reference": reference, "name": name, "digest": image.digest,
                         "annotations": annotations}
    return summary


def inspect_native(path: Path) -> dict[str, Any]:
    """A native archive's summary from its manifest (read without unpacking anything)."""
    from migrate.archive.reader import read_manifest

    m = read_manifest(path)
    container: dict[str, Any] = m["container"] if isinstance(m.get("container"), dict) else {}
    image: dict[str, Any] = m["image"] if isinstance(m.get("image"), dict) else {}
    return {
        "format": "native", "engine": "pymigrate",
        "container": {"name": str(container.get("name", "")), "id": str(container.get("container_id", ""))},
        "image": {"name": str(image.get("name", "")), "id": str(image.get("digest", m.get("image_digest", "")))},
        "criu_version": str(m.get("criu_version", "")), "runtime": "pymigrate",
        "checkpoint_id": str(m.get("checkpoint_id", "")),
        "created_at": None, "checkpointed_at": m.get("created_at") if isinstance(m.get("created_at"), (int, float)) else None,
        "sizes": {}, "network": [], "mounts": [], "namespaces": [], "dump_stats": {},
        "source": {"kind": "file", "path": str(path), "bytes": path.stat().st_size, "compression": ""},
        "manifest": m,
    }


def summarize_foreign(fc: foreign.ForeignCheckpoint, sizes: Mapping[str, int]) -> dict[str, Any]:
    """The summary of an unpacked podman/CRI-O checkpoint; ``sizes``: every file's size by member name."""
    config = fc.config
    meta = fc.crio
    summary: dict[str, Any] = {
        "format": fc.engine, "engine": fc.engine,
        "container": {"name": fc.container_name, "id": str(config.get("id", "")) if isinstance(config.get("id"), str) else ""},
        "image": {"name": fc.image_name, "id": fc.image_id},
        "criu_version": criu_version(fc.root),
        "runtime": meta.runtime if meta else (config.get("runtime") if isinstance(config.get("runtime"), str) else ""),
        "created_at": meta.created_at if meta else _created(config),
        "checkpointed_at": fc.checkpointed_at,
        "sizes": checkpoint_sizes(sizes),
        "deleted_files": len(fc.deleted_files),
        "network": _network(fc),
        "mounts": [{"destination": m.get("destination", ""), "type": m.get("type", ""), "source": m.get("source", "")}
                   for m in fc.spec.get("mounts") or []],
        "namespaces": [{"type": ns.get("type", ""), "path": ns.get("path", "")}
                       for ns in (fc.spec.get("linux") or {}).get("namespaces") or []],
        "command": list((fc.spec.get("process") or {}).get("args") or []),
        "dump_stats": dump_stats(fc.root),
    }
    if meta is not None:
        summary["pod"] = {"name": meta.pod_name, "namespace": meta.pod_namespace}
        summary["bind_mounts"] = [{"destination": b.destination, "type": b.file_type, "source": b.source}
                                  for b in meta.bind_mounts]
    return summary


def _created(config: dict[str, Any]) -> float | None:
    from migrate.interop import dump_fields

    value = config.get("createdTime")
    return dump_fields.rfc3339(value, "config.dump: createdTime") if isinstance(value, str) else None


def _network(fc: foreign.ForeignCheckpoint) -> list[dict[str, str]]:
    out = [{"network": i.network, "interface": i.interface, "ip": i.ip, "prefix": i.prefix, "gateway": i.gateway,
            "mac": i.mac} for i in foreign.network_interfaces(fc.network_status)]
    if not out and fc.crio is not None and fc.crio.ip:  # CRI-O: the pod's address, from the annotation
        out.append({"network": "pod", "interface": "", "ip": fc.crio.ip, "prefix": "", "gateway": "", "mac": ""})
    return out


def checkpoint_sizes(sizes: Mapping[str, int]) -> dict[str, int]:
    """Bytes of the CRIU images, of their memory pages, of the root's diff, of volumes, and all."""
    prefix = f"{foreign.CHECKPOINT_DIR}/"
    return {
        "images_bytes": sum(v for k, v in sizes.items() if k.startswith(prefix)),
        "memory_pages_bytes": sum(v for k, v in sizes.items() if k.startswith(f"{prefix}pages-")),
        "rootfs_diff_bytes": sizes.get(foreign.ROOTFS_DIFF, 0),
        "volumes_bytes": sum(v for k, v in sizes.items() if k.startswith("volumes/")),
        "total_bytes": sum(sizes.values()),
    }


def dir_sizes(root: Path) -> dict[str, int]:
    """Every regular file's size under ``root`` by relative name (symlinks are not followed)."""
    out: dict[str, int] = {}
    for path in root.rglob("*"):
        st = path.lstat()
        if path.is_file() and not path.is_symlink():
            out[path.relative_to(root).as_posix()] = st.st_size
    return out


def criu_version(root: Path) -> str:
    """CRIU's version from ``dump.log`` (CRI-O keeps it; podman's export does not), else ""."""
    head = foreign.read_small(root, "dump.log", MAX_LOG_READ)
    m = _CRIU_VERSION.search(head or b"")
    return m.group(1).decode() if m else ""


def _podman_version(number: str) -> str:
    """podman's criu.version annotation (MAJOR*10000 + MINOR*100 + SUBLEVEL) as "4.1.1"."""
    if not number.isdigit():
        return number[:32]
    n = int(number)
    return f"{n // 10000}.{n // 100 % 100}.{n % 100}"


def dump_stats(root: Path) -> dict[str, Any]:
    """CRIU's dump statistics from ``stats-dump`` ({} when absent or not a stats image)."""
    data = foreign.read_small(root, foreign.STATS_DUMP, MAX_STATS_BYTES + 1)
    if not data or len(data) > MAX_STATS_BYTES:
        return {}
    import dataclasses
    import struct

    from google.protobuf.message import DecodeError

    from runtime.criu import read_dump_stats

    try:
        stats = read_dump_stats(root)
    except (DecodeError, struct.error, ValueError, OSError, ImportError):  # informative only
        return {}
    values = dataclasses.asdict(stats)
    return values if any(values.values()) else {}  # all zero: not a stats image (read_dump_stats' default)


# --- text --------------------------------------------------------------------------------------


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _when(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t)) if isinstance(t, (int, float)) else "-"


def render(summary: Mapping[str, Any]) -> str:
    """The summary as ``checkpointctl show``-like text: one fact a line, then mounts and stats."""
    src = summary.get("source", {})
    where = src.get("path") or src.get("reference", "")
    container, image, sizes = summary["container"], summary["image"], summary.get("sizes", {})
    rows = [
        ("Checkpoint", f"{where} ({summary['format']}{', ' + src['compression'] if src.get('compression') else ''}"
                       f"{', ' + _bytes(src['bytes']) if src.get('bytes') else ''})"),
        ("Engine", summary["engine"] + (f" (runtime {summary['runtime']})" if summary.get("runtime") else "")),
        ("Container", f"{container['name'] or '-'}{' (' + container['id'][:12] + ')' if container.get('id') else ''}"),
        ("Image", f"{image['name'] or '-'}{' (' + image['id'][:12] + ')' if image.get('id') else ''}"),
        ("CRIU", summary.get("criu_version") or "not recorded"),
        ("Created", _when(summary.get("created_at"))),
        ("Checkpointed", _when(summary.get("checkpointed_at"))),
    ]
    if "pod" in summary:
        rows.append(("Pod", f"{summary['pod']['namespace']}/{summary['pod']['name']}"))
    if sizes:
        rows.append(("Sizes", f"images {_bytes(sizes['images_bytes'])} (memory pages {_bytes(sizes['memory_pages_bytes'])}), "
                              f"rootfs diff {_bytes(sizes['rootfs_diff_bytes'])}, volumes {_bytes(sizes['volumes_bytes'])}, "
                              f"deleted files {summary.get('deleted_files', 0)}"))
    for n in summary.get("network", []):
        rows.append(("Network", " ".join(x for x in (f"{n['network']}/{n['interface']}".strip("/"), n["prefix"] or n["ip"],
                                                     f"gw {n['gateway']}" if n["gateway"] else "",
                                                     f"mac {n['mac']}" if n["mac"] else "") if x)))
    stats = summary.get("dump_stats") or {}
    if stats:
        rows.append(("Dump", f"freezing {stats['freezing_ms']:.1f} ms, frozen {stats['frozen_ms']:.1f} ms, memdump "
                             f"{stats['memdump_ms']:.1f} ms, memwrite {stats['memwrite_ms']:.1f} ms, pages scanned "
                             f"{stats['pages_scanned']}, written {stats['pages_written']}"))
    width = max(len(k) for k, _ in rows) + 1
    lines = [f"{k + ':':<{width}} {v}" for k, v in rows]
    if summary.get("mounts"):
        lines.append("Mounts:")
        lines += [f"  {m['destination']:<24} {m['type']:<8} {m['source']}" for m in summary["mounts"]]
    return "\n".join(lines)


# --- what the argument names -------------------------------------------------------------------

_FILE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".pma")


def inspect_target(engine: Any, target: str) -> dict[str, Any] | None:
    """``checkpoint inspect TARGET``: the summary of the archive FILE or checkpoint image REF that
    ``target`` names, or None for a checkpoint id (the caller shows its manifest, as always).

    A checkpoint id (4-64 hex digits) wins over a file of that name in the working directory;
    else an existing file is read locally (also with ``--host``: files stay on the caller's
    side); else ``target`` must be an image reference (``checkpoint_image.looks_like_reference``:
    with ``/``, ``:`` or ``@``), looked up in (or pulled into) this host's store.

    Raises:
        InvalidArgument: a path that does not exist, or a bare word.
        Unsupported: an image reference with ``--host`` (the image store is the daemon's).
    """
    from migrate.interop.checkpoint_image import looks_like_checkpoint_id, looks_like_reference
    from runtime.errors import InvalidArgument, Unsupported

    if looks_like_checkpoint_id(target):
        return None
    path = Path(target)
    if path.is_file():
        return inspect_file(path)
    if target.startswith(("/", "./", "../")) or target.endswith(_FILE_SUFFIXES):
        raise InvalidArgument(f"cannot inspect {target}: no such file", hint="give an archive file, an image reference "
                                                                             "or a checkpoint id")
    if not looks_like_reference(target):  # a bare word (a container name?) is never pulled from Docker Hub
        raise InvalidArgument(f"cannot inspect {target}: not a checkpoint id (4-64 hex digits), a file or an image "
                              f"reference (with a registry, path, tag or digest)",
                              hint="checkpoint ls lists the checkpoint ids; give an image as NAME:TAG or HOST/NAME:TAG")
    runtime = getattr(engine, "runtime", None)
    if runtime is None:
        raise Unsupported("checkpoint inspect REF with --host", "the checkpoint image would be the daemon's",
                          hint="run pymigrate checkpoint inspect REF on that host, or inspect an archive file here")
    return inspect_image(runtime.images, target)
