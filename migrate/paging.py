"""AIP-158 pagination for the List RPCs: page sizes, opaque page tokens, one page of a sorted list.

A list is sorted by a stable key (creation time, then id or name), so a page ends at a key and
the next page starts after it: items created or removed between two calls neither shift nor
repeat the others. A token is ``base64url(JSON)`` of that last key and a digest of the list's
scope and filters; a token handed back with other filters (or to another List) is refused with
``InvalidArgument``, as AIP-158 asks, instead of silently paging a different result.

Pure: no I/O, no gRPC; the servicer (migrate/remote/service.py) calls ``paginate``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, Sequence, TypeVar

from runtime.errors import InvalidArgument

T = TypeVar("T")
SortKey = tuple[float, str]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_TOKEN_VERSION = 1
_HINT = "pass the next_page_token of the previous page with the same filters, or no token for the first page"


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str  # "": this was the last page


def page_size(requested: int) -> int:
    """The page size to use: 0 is the default, more than the maximum is the maximum (AIP-158).

    Raises:
        InvalidArgument: a negative size.
    """
    if requested < 0:
        raise InvalidArgument(f"invalid page_size {requested}: expected 0 (the default, {DEFAULT_PAGE_SIZE}) or more")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def filter_digest(scope: str, filters: Iterable[str]) -> str:
    """A short digest of what a token is valid for; the order of the filters does not matter."""
    text = "\0".join([scope, *sorted(filters)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_token(key: SortKey, digest: str) -> str:
    raw = json.dumps({"v": _TOKEN_VERSION, "k": [key[0], key[1]], "f": digest}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, digest: str) -> SortKey:
    """The last key of the previous page.

    Raises:
        InvalidArgument: not a token of ours, or one made for other filters or another list.
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        when, ident = data["k"]
        if data.get("v") != _TOKEN_VERSION or not isinstance(ident, str) or not isinstance(when, (int, float)):
            raise ValueError("bad fields")
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InvalidArgument(f"invalid page_token {token[:40]!r}: not a token this list handed out",
                              hint=_HINT) from None
    if data.get("f") != digest:
        raise InvalidArgument("invalid page_token: it was made for other filters (or another list)", hint=_HINT)
    return float(when), ident


def paginate(items: Iterable[T], key: Callable[[T], SortKey], *, size: int, token: str,
             scope: str, filters: Sequence[str] = ()) -> Page[T]:
    """One page of ``items`` in ``key`` order, after the token's key (from the start without one).

    ``size`` is the request's page_size (0: the default); ``scope`` and ``filters`` bind the token.

    Raises:
        InvalidArgument: a negative size or a token ``decode_token`` refuses.
    """
    limit = page_size(size)
    digest = filter_digest(scope, filters)
    ordered = sorted(items, key=key)
    if token:
        after = decode_token(token, digest)
        ordered = [i for i in ordered if key(i) > after]
    page = ordered[:limit]
    more = len(ordered) > limit
    return Page(page, encode_token(key(page[-1]), digest) if more else "")
