"""Which members a checkpoint archive may hold: one table, checked by the reader for every entry.

An archive's bytes come from outside (``restore --import``, ``UploadCheckpoint``, a peer's
``PushCheckpoint``/``PushUpper``), and what it unpacks is later handed to CRIU, which opens files
in the images dir by name and follows symlinks (``images/cpuinfo-check.log`` pointing at a host
file was a host-file overwrite). So the reader refuses any member no row below allows:

- ``images`` (a directory) and ``images/<name>``: flat, regular files only, with the names CRIU
  gives its images (criu/image-desc.c: ``<kind>[-<id>].img``, ``tmpfs[-dev]-<id>.tar.gz``,
  ``stats-dump``, ``irmap-cache``) and the logs our dumps keep beside them. No symlink, hardlink,
  fifo, device or subdirectory: CRIU's ``parent`` link of a pre-copy chain is made by the target
  itself (migrate.migration.target), never taken from an archive.
- ``upper`` and ``upper/<path>``: the container's overlay upper layer, any kind the format has,
  under the reader's tree rules (no escaping links, no path through a link, devices by policy).
- ``volumes``, ``volumes/<name>`` and ``volumes/<name>/<path>``: named volumes' contents
  (``checkpoint --export`` without ``--ignore-volumes``, a migration's volume stage and delta),
  under the upper layer's tree rules; ``<name>`` must be a volume name.
- ``upper.img.map``/``.data`` and ``upper.img.delta.map``/``.data``: the upper layer as a packed
  file-system image, whole or its changed blocks (regular files; migrate/archive/upper_image.py).

To carry another kind of member (e.g. a per-container filesystem image), add one ``MemberRule``
to ``CHECKPOINT_MEMBERS``; nothing else in the reader changes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from migrate.archive import format as fmt
from migrate.errors import UnsafeMember

__all__ = ["CHECKPOINT_MEMBERS", "CRIU_IMAGE_NAME", "MemberRule", "check_images_dir", "check_member"]

# Names CRIU 4.x writes into an images dir (criu/image-desc.c) plus our dump-side logs.
CRIU_IMAGE_NAME = re.compile(
    r"[a-z][a-z0-9-]*\.img"  # inventory.img, core-1.img, pages-1.img, ghost-file-1a.img, ...
    r"|tmpfs(-dev)?-[0-9]+\.tar\.gz(\.img)?"  # tmpfs contents (CRIU 4.1.1 names them tmpfs-dev-109.tar.gz.img)
    r"|stats-dump|irmap-cache"
    r"|(pre-)?dump\.log|cpuinfo-dump\.log"
)


@dataclass(frozen=True)
class MemberRule:
    """Members named ``top`` or ``top/<rest>``.

    Attributes:
        top: the first path component.
        top_kinds: kinds allowed for the member ``top`` itself.
        kinds: kinds allowed below ``top``.
        flat: only ``top/<name>``, no deeper paths.
        pattern: if set, the part below ``top`` must match it in full.
        what: how the rule is named in errors.
    """

    top: str
    top_kinds: frozenset[str]
    kinds: frozenset[str]
    flat: bool
    pattern: re.Pattern[str] | None
    what: str


CHECKPOINT_MEMBERS: tuple[MemberRule, ...] = (
    MemberRule(
        top="images",
        top_kinds=frozenset({fmt.KIND_DIR}),
        kinds=frozenset({fmt.KIND_FILE}),
        flat=True,
        pattern=CRIU_IMAGE_NAME,
        what="the CRIU images dir (regular files with CRIU image names)",
    ),
    MemberRule(
        top="upper",
        top_kinds=frozenset({fmt.KIND_DIR}),
        kinds=fmt.KINDS,
        flat=False,
        pattern=None,
        what="the overlay upper layer",
    ),
    # Named volumes' contents (runtime/volumes.py): volumes/<name>/<path>, a tree under the same
    # rules as the upper layer (no escaping links, devices by policy, the same extraction limits);
    # the first component must be a volume name, so it never names a path of its own
    MemberRule(
        top="volumes",
        top_kinds=frozenset({fmt.KIND_DIR}),
        kinds=fmt.KINDS,
        flat=False,
        pattern=re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}(/.+)?", re.DOTALL),
        what="the named volumes",
    ),
    # The upper layer as a file-system image (migrate/archive/upper_image.py), packed: its data extents
    # back to back (.data) and their offsets (.map, JSON), whole or only the blocks changed since
    # the staged copy (.delta.*); the map is checked before a byte is placed, the image by
    # runtime.upperfs before anything mounts it.
    *(
        MemberRule(top=name, top_kinds=frozenset({fmt.KIND_FILE}), kinds=frozenset(), flat=True, pattern=None, what=what)
        for name, what in (
            ("upper.img.map", "the upper-layer image's extent map"),
            ("upper.img.data", "the upper-layer image's data"),
            ("upper.img.delta.map", "the upper-layer image's changed-block map"),
            ("upper.img.delta.data", "the upper-layer image's changed blocks"),
        )
    ),
)

_BY_TOP = {rule.top: rule for rule in CHECKPOINT_MEMBERS}


def check_member(name: str, kind: str, rules: tuple[MemberRule, ...] = CHECKPOINT_MEMBERS) -> None:
    """Raise UnsafeMember unless a rule allows a member ``name`` of ``kind`` (name already clean)."""
    top, _, rest = name.partition("/")
    rule = _BY_TOP.get(top) if rules is CHECKPOINT_MEMBERS else next((r for r in rules if r.top == top), None)
    if rule is None:
        allowed = ", ".join(f"{r.top}/" for r in rules)
        raise UnsafeMember(name, f"not a member a checkpoint archive may hold (expected one under {allowed})")
    if not rest:
        if kind not in rule.top_kinds:
            raise UnsafeMember(name, f"{top} must be a {' or '.join(sorted(rule.top_kinds))}, not a {kind}")
        return
    if kind not in rule.kinds:
        raise UnsafeMember(name, f"a {kind} is not allowed in {rule.what}")
    if rule.flat and "/" in rest:
        raise UnsafeMember(name, f"subdirectories are not allowed in {rule.what}")
    if rule.pattern is not None and not rule.pattern.fullmatch(rest):
        raise UnsafeMember(name, f"{rest!r} is not a name allowed in {rule.what}")


def check_images_dir(images_dir: Path) -> None:
    """Raise UnsafeMember unless every entry of ``images_dir`` is a regular file.

    For images dirs that did not just come through the reader: a local checkpoint kept by an
    older pymigrate, whose ``UploadCheckpoint`` stored ``images/`` verbatim (symlinks included).
    Names are not checked: older restores left their logs (``cpuinfo-check.log``) there, and a
    regular file of any name is harmless now that CRIU's logs go to a work dir of their own."""
    with os.scandir(images_dir) as it:
        for entry in it:
            if not entry.is_file(follow_symlinks=False):
                raise UnsafeMember(f"images/{entry.name}", "not a regular file; a CRIU images dir holds nothing else")
