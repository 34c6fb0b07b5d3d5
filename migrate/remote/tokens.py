"""The daemon's bearer tokens: one, or several with names, so its access log says whose token a
call carried (by the name, never the token) and one of them can be revoked alone.

A token file (``--token-file``, 0600) holds either a single token (the whole file, surrounding
whitespace stripped; its name is ``token``) or one ``NAME TOKEN`` pair per line (blank lines and
``#`` comments skipped). Names are ``[A-Za-z0-9._@-]``, at most 64 characters; names and tokens
are unique. The first pair's token is the one this daemon presents when it dials its peers
(migration targets), and the one a client reading the file sends.
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path
from typing import Mapping

from runtime.errors import InvalidArgument

SINGLE = "token"  # the name of a file's only token
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def parse_tokens(text: str, source: str) -> dict[str, str]:
    """name -> token of a token file's ``text`` (``source`` names it in errors; no error shows a token).

    Raises:
        InvalidArgument: empty, a line that is not ``NAME TOKEN``, a bad or repeated name, a
            repeated token.
    """
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise InvalidArgument(f"token file {source} is empty")
    if len(lines) == 1 and len(lines[0][1].split()) == 1:
        return {SINGLE: lines[0][1]}
    tokens: dict[str, str] = {}
    for number, line in lines:
        fields = line.split()
        if len(fields) != 2:
            raise InvalidArgument(f"token file {source} line {number}: expected NAME TOKEN, got {len(fields)} fields",
                                  hint="one token alone, or one 'NAME TOKEN' pair per line")
        name, token = fields
        if not _NAME.fullmatch(name):
            raise InvalidArgument(f"token file {source} line {number}: invalid token name {name!r}, expected letters, "
                                  "digits, '.', '_', '@' or '-' (at most 64)")
        if name in tokens:
            raise InvalidArgument(f"token file {source} line {number}: token name {name!r} given twice")
        if token in tokens.values():
            raise InvalidArgument(f"token file {source} line {number}: the token of {name!r} is another name's too",
                                  hint="each name needs its own token, or the log cannot tell them apart")
        tokens[name] = token
    return tokens


def read_tokens(path: Path | None) -> dict[str, str] | None:
    """The tokens of file ``path`` (None without a path)."""
    if path is None:
        return None
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read token file {path}: {exc.strerror}") from exc
    return parse_tokens(text, str(path))


def name_of(tokens: Mapping[str, str], authorization: bytes | str | None) -> str | None:
    """The name of the token an ``authorization: Bearer TOKEN`` value carries; None: none of them.
    Every token is compared (compare_digest), so the time taken does not tell which nearly matched."""
    if authorization is None:
        return None
    presented = authorization.encode() if isinstance(authorization, str) else authorization
    found = None
    for name, token in tokens.items():
        if hmac.compare_digest(presented, f"Bearer {token}".encode()) and found is None:
            found = name
    return found
