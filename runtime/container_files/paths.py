"""What ``cp`` does with paths, docker's rules: pure functions, no file system access.

The tar stream between the two sides always names the copied thing by its source's base name
(``top``): ``/etc/hosts`` travels as ``hosts``, ``/etc`` as ``etc`` and ``etc/...``. The side
that writes decides where that goes (``plan_extraction``), from what the destination is:

=====================  ==========================  =====================================
source                 destination exists as dir   destination missing / a file
=====================  ==========================  =====================================
file                   DEST/top                    DEST (parent must exist; ``DEST/``
                                                   missing is an error)
directory              DEST/top                    DEST created with its contents;
                                                   an existing file is an error
directory ``SRC/.``    its contents into DEST      DEST created with its contents
=====================  ==========================  =====================================

Every member is then renamed (``rebase``): the top component replaced by the destination's name
or dropped, hard links' targets likewise; a member outside ``top`` is refused.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Literal

from runtime.errors import InvalidArgument, UnsafeArchive

DestKind = Literal["dir", "file", "missing"]


@dataclass(frozen=True)
class Source:
    """What is copied: ``path`` (absolute in its root), its tar name ``top``, and whether only a
    directory's contents go (``SRC/.``)."""

    path: str
    top: str
    contents_only: bool = False
    must_be_dir: bool = False  # SRC ended in "/": a file there is an error


@dataclass(frozen=True)
class Extraction:
    """Where a stream goes: into ``directory``, its top renamed to ``new_top`` or dropped (``strip``)."""

    directory: str
    new_top: str | None = None
    strip: bool = False


def source(path: str) -> Source:
    """The ``Source`` of an absolute path as the user wrote it (``/a/b``, ``/a/b/``, ``/a/b/.``)."""
    if not path.startswith("/"):
        raise InvalidArgument(f"invalid source path {path!r}: expected an absolute path")
    contents_only = path.endswith("/.") or path in ("/", "/.")
    must_be_dir = path.endswith("/") or contents_only
    norm = posixpath.normpath(path)
    norm = "/" if norm == "//" else norm
    top = posixpath.basename(norm) or "."
    return Source(path=norm, top=top, contents_only=contents_only, must_be_dir=must_be_dir)


def plan_extraction(dest: str, kind: DestKind, parent_is_dir: bool, src_is_dir: bool, src: Source) -> Extraction:
    """Where a copy of ``src`` goes for destination ``dest`` (as the user wrote it) of ``kind``.

    Raises:
        InvalidArgument: a directory onto a file, a file into a missing ``DEST/``, a missing parent.
    """
    norm = posixpath.normpath(dest)
    if kind == "dir":
        if src_is_dir and src.contents_only:
            return Extraction(norm, strip=True)
        return Extraction(norm)
    if kind == "file":
        if src_is_dir:
            raise InvalidArgument(f"cannot copy directory {src.path} onto file {dest}: expected a directory or a new path")
        if dest.endswith("/"):
            raise InvalidArgument(f"destination {dest} is not a directory: expected a directory (it ends in '/')")
        return Extraction(posixpath.dirname(norm) or "/", new_top=posixpath.basename(norm))
    if dest.endswith("/") and not src_is_dir:
        raise InvalidArgument(f"destination directory {dest} does not exist: expected an existing directory (it ends in '/')")
    if not parent_is_dir:
        raise InvalidArgument(f"cannot copy to {dest}: its parent {posixpath.dirname(norm)} is not an existing directory")
    if norm == "/":
        return Extraction("/", strip=True)
    return Extraction(posixpath.dirname(norm) or "/", new_top=posixpath.basename(norm))


def rebase(name: str, top: str, extraction: Extraction) -> str | None:
    """``name`` (a member of a stream whose top is ``top``) as it is written; None: skip it
    (the top directory itself when only its contents go).

    Raises:
        UnsafeArchive: the member is not ``top`` or below it, or climbs out with ``..``.
    """
    clean = posixpath.normpath(name.lstrip("/")) if name not in ("", ".") else "."
    if top == ".":
        rest = "" if clean == "." else clean
    elif clean == top:
        rest = ""
    elif clean.startswith(top + "/"):
        rest = clean[len(top) + 1:]
    else:
        raise UnsafeArchive(name, f"expected a member below {top!r}")
    if rest == ".." or rest.startswith("../"):
        raise UnsafeArchive(name, "a member climbing out of the copied tree")
    if extraction.strip:
        return rest or None
    head = extraction.new_top if extraction.new_top is not None else top
    return posixpath.join(head, rest) if rest else head


def container_path(path: str, workdir: str) -> str:
    """A path in a container: relative ones are below its working directory (docker's rule)."""
    if not path:
        raise InvalidArgument("empty container path: expected NAME:PATH with a path")
    if path.startswith("/"):
        return path
    joined = posixpath.join(workdir or "/", path)
    return joined + "/" if path.endswith("/") and not joined.endswith("/") else joined


def parse_location(text: str) -> tuple[str | None, str]:
    """``NAME:PATH`` -> (NAME, PATH); a local path (``-``, ``/x``, ``./a:b``, no colon) -> (None, text).

    As in docker, a colon before any slash names a container; write ``./a:b`` for a local file
    whose name has a colon.
    """
    if text == "-" or text.startswith(("/", ".")):
        return None, text
    name, colon, path = text.partition(":")
    if not colon or "/" in name:
        return None, text
    if not name:
        raise InvalidArgument(f"invalid copy location {text!r}: expected NAME:PATH")
    return name, path
