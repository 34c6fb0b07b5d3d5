"""Budgets for unpacking untrusted trees: checkpoint archives and image tarballs.

An archive is a few bytes that say how much to create: 13 KB of zstd frames can claim 384 MiB,
a 10 KB sparse tar 2 GiB, 12 KB of entries 3,000 nested directories. Every reader of outside
input checks what it is about to create against one ``ExtractLimits`` *before* creating it, and
refuses with an error naming the limit, its value and how to raise it.

The defaults fit any real container (see docs/security.md, "Limits"); one place changes them for
a process: the environment variable ``PYMIGRATE_EXTRACT_LIMITS`` (e.g.
``max_total_bytes=2T,max_depth=512``) read by ``current_limits()``, for the daemon and the CLI
alike. Tests pass an ``ExtractLimits`` directly.

Why the holes have their own budget: a file's sha256 covers its holes as zeros, so verifying a
member claiming a 2^62-byte hole means hashing that many zeros (~1 GB/s); nothing about SHA-256
lets that be skipped. ``max_hole_bytes`` bounds that work by what the archive may claim without
sending it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from runtime.errors import InvalidArgument

ENV_LIMITS = "PYMIGRATE_EXTRACT_LIMITS"
NAME_MAX = 255  # bytes in one path component (Linux, every filesystem we extract into)

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
_UNITS = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}


@dataclass(frozen=True)
class ExtractLimits:
    """What one archive or tarball may create. Sizes are apparent sizes (holes count)."""

    max_depth: int = 256  # components in one member path ("upper/a/b" is 3)
    max_name_bytes: int = 4096  # bytes in one member path (PATH_MAX)
    max_members: int = 1_000_000  # members of any kind
    max_member_bytes: int = 256 * GiB  # size of one regular file
    max_total_bytes: int = 1 * TiB  # sizes of all regular files together
    max_hole_bytes: int = 16 * GiB  # bytes of all files' holes (hashed as zeros, never sent)

    def exceeded(self, limit: str, actual: int, what: str) -> str:
        """The message for ``actual`` going over ``limit`` while reading ``what``."""
        return f"{what} exceeds the extraction limit {limit}={getattr(self, limit)} (needs {actual})"

    @staticmethod
    def hint(limit: str) -> str:
        return (f"if the input is trusted and really this large, raise the limit in the environment of the "
                f"daemon or CLI: {ENV_LIMITS}={limit}=N (K/M/G/T suffixes; see docs/security.md)")


def parse_limits(text: str, base: ExtractLimits | None = None) -> ExtractLimits:
    """``base`` (defaults) with ``name=value[,name=value]`` applied; ValueError naming a bad part."""
    fields = {f.name for f in dataclasses.fields(ExtractLimits)}
    changes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip().upper().removesuffix("B").removesuffix("I")
        if not sep or name not in fields:
            raise ValueError(f"invalid extraction limit {part!r}: expected NAME=VALUE with NAME one of {sorted(fields)}")
        unit = value[-1:] if value[-1:] in _UNITS else ""
        number = value[: len(value) - len(unit)]
        if not number.isdigit() or int(number) <= 0:
            raise ValueError(f"invalid extraction limit {part!r}: expected a positive integer with an optional K/M/G/T suffix")
        changes[name] = int(number) * _UNITS[unit]
    return dataclasses.replace(base or ExtractLimits(), **changes)


def current_limits() -> ExtractLimits:
    """The defaults with the overrides of ``PYMIGRATE_EXTRACT_LIMITS`` (read on every call, cheap)."""
    text = os.environ.get(ENV_LIMITS, "")
    if not text:
        return ExtractLimits()
    try:
        return parse_limits(text)
    except ValueError as exc:
        raise InvalidArgument(f"{ENV_LIMITS}: {exc}", hint="e.g. max_total_bytes=2T,max_depth=512") from None
