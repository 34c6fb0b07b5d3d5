"""Container labels: KEY=VALUE metadata given at run (``--label``, ``--label-file``), kept in the spec.

Labels change nothing in how a container runs; they are for the user's own bookkeeping
(``ps --filter label=...``). They travel with the spec through checkpoint archives and
migrations, so a label set read from an archive or a peer is checked by the same code as the
user's (``runtime.container.validate_spec``). Docker's rules, bounded: a key is non-empty and has
no white space or NUL; a value has no NUL; sizes are capped so a spec stays small.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from runtime.errors import InvalidArgument

MAX_KEY_CHARS = 256
MAX_VALUE_CHARS = 4096
MAX_LABELS = 256


def validate_labels(labels: object) -> dict[str, str]:
    """``labels`` as a plain ``dict[str, str]``, refused whole if one entry breaks the rules.

    Raises:
        InvalidArgument: not a mapping of strings, too many entries, an empty key or one with
            white space or NUL, a key or value too long, a value with NUL.
    """
    if not isinstance(labels, Mapping):
        raise InvalidArgument(f"invalid labels {str(labels)[:80]!r}: expected a mapping of KEY to VALUE")
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"too many labels: {len(labels)}, expected at most {MAX_LABELS}")
    out: dict[str, str] = {}
    for key, value in labels.items():
        _check_key(key)
        if not isinstance(value, str) or "\0" in value or len(value) > MAX_VALUE_CHARS:
            raise InvalidArgument(f"invalid value of label {key!r}: expected a string without NUL, "
                                  f"at most {MAX_VALUE_CHARS} characters")
        out[key] = value
    return out


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidArgument(f"invalid label key {key!r}: expected a non-empty string",
                              hint="labels are KEY=VALUE, e.g. --label tier=web")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidArgument(f"invalid label key {key[:40]!r}...: expected at most {MAX_KEY_CHARS} characters")
    if "\0" in key or any(c.isspace() for c in key):
        raise InvalidArgument(f"invalid label key {key!r}: expected no white space",
                              hint="labels are KEY=VALUE, e.g. --label tier=web")


def parse_labels(entries: Iterable[str], label_files: Iterable[str] = ()) -> dict[str, str]:
    """``run --label-file`` lines first, then ``--label`` entries; a later key wins (docker's order).

    ``KEY`` alone is a label with an empty value (docker's). Label files: one entry a line,
    blank lines and lines starting with ``#`` skipped, the value taken literally.

    Raises:
        InvalidArgument: an unreadable file, or a label ``validate_labels`` refuses.
    """
    out: dict[str, str] = {}
    for path in label_files:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise InvalidArgument(f"cannot read label file {path}: {reason.lower()}",
                                  hint="--label-file takes a file of KEY=VALUE lines") from exc
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                out[key] = value
    for entry in entries:
        key, _, value = entry.partition("=")
        out[key] = value
    return validate_labels(out)
