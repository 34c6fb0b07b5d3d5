"""migrate/paging.py (AIP-158 pages and tokens) and migrate/list_filters.py."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import pytest

from migrate import list_filters, paging
from migrate.api import CheckpointInfo, ImageInfo, VolumeInfo
from runtime.errors import InvalidArgument


@dataclass(frozen=True)
class Item:
    created_at: float
    ident: str
    labels: dict[str, str] = field(default_factory=dict)


def key(i: Item) -> tuple[float, str]:
    return (i.created_at, i.ident)


def _all_pages(items: list[Item], size: int, filters: tuple[str, ...] = ()) -> list[list[Item]]:
    pages, token = [], ""
    while True:
        page = paging.paginate(items, key, size=size, token=token, scope="items", filters=filters)
        pages.append(page.items)
        if not page.next_page_token:
            return pages
        token = page.next_page_token


def test_every_item_once_in_creation_order() -> None:
    # equal creation times are ordered by id, so a page boundary inside a tie loses nothing
    items = [Item(float(n // 3), f"id{n:04d}") for n in range(250)]
    pages = _all_pages(list(reversed(items)), 100)
    assert [len(p) for p in pages] == [100, 100, 50]
    assert [i.ident for p in pages for i in p] == [i.ident for i in items]


def test_exact_multiple_has_no_empty_last_page() -> None:
    items = [Item(float(n), f"i{n}") for n in range(200)]
    assert [len(p) for p in _all_pages(items, 100)] == [100, 100]
    assert _all_pages([], 100) == [[]]


def test_items_added_or_removed_between_pages_do_not_shift_the_rest() -> None:
    items = [Item(float(n), f"i{n:03d}") for n in range(10)]
    first = paging.paginate(items, key, size=4, token="", scope="items")
    changed = [i for i in items if i.ident != "i001"] + [Item(0.5, "new")]  # removed before, added before
    second = paging.paginate(changed, key, size=4, token=first.next_page_token, scope="items")
    assert [i.ident for i in second.items] == ["i004", "i005", "i006", "i007"]


def test_page_sizes() -> None:
    assert paging.page_size(0) == paging.DEFAULT_PAGE_SIZE == 100
    assert paging.page_size(7) == 7
    assert paging.page_size(5000) == paging.MAX_PAGE_SIZE == 1000
    with pytest.raises(InvalidArgument, match="page_size -1"):
        paging.page_size(-1)


def test_token_bound_to_filters_and_scope() -> None:
    items = [Item(float(n), f"i{n}") for n in range(5)]
    token = paging.paginate(items, key, size=2, token="", scope="items", filters=("a=1", "b=2")).next_page_token
    # the order of the filters does not matter
    assert paging.paginate(items, key, size=2, token=token, scope="items", filters=("b=2", "a=1")).items
    with pytest.raises(InvalidArgument, match="other filters"):
        paging.paginate(items, key, size=2, token=token, scope="items", filters=("a=1",))
    with pytest.raises(InvalidArgument, match="other filters"):
        paging.paginate(items, key, size=2, token=token, scope="others", filters=("a=1", "b=2"))


@pytest.mark.parametrize("token", ["garbage!", "e30", base64.urlsafe_b64encode(b'{"v":1,"k":[1,2],"f":"x"}').decode(),
                                   base64.urlsafe_b64encode(b"\xff\xfe").decode(), "a"])
def test_forged_tokens_refused(token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        paging.decode_token(token, paging.filter_digest("items", ()))


def test_token_is_opaque_base64_of_the_last_key() -> None:
    token = paging.encode_token((12.5, "abc"), "d1")
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    assert data["k"] == [12.5, "abc"] and data["f"] == "d1"
    assert paging.decode_token(token, "d1") == (12.5, "abc")


def _ckpt(cid: str, name: str, labels: dict[str, str]) -> CheckpointInfo:
    return CheckpointInfo(cid, name, "cid", "sha256:aa", 1.0, 0, "4.0", labels=labels)


def test_checkpoint_filters() -> None:
    items = [_ckpt("aa1", "web", {"tier": "web", "keep": ""}), _ckpt("bb2", "db", {"tier": "db"}), _ckpt("aa3", "web", {})]

    def ids(*entries: str) -> list[str]:
        return [c.checkpoint_id for c in list_filters.select(items, entries, list_filters.CHECKPOINT_KEYS, "checkpoints")]

    assert ids() == ["aa1", "bb2", "aa3"]
    assert ids("container=web") == ["aa1", "aa3"]
    assert ids("container=web", "container=db") == ["aa1", "bb2", "aa3"]  # OR within a key
    assert ids("label=tier") == ["aa1", "bb2"]
    assert ids("label=tier=db") == ["bb2"]
    assert ids("label=tier=web", "label=keep") == ["aa1"]  # every label must hold
    assert ids("label=tier=web", "label=tier=db") == []
    assert ids("id=aa", "container=web") == ["aa1", "aa3"]
    with pytest.raises(InvalidArgument, match="unknown key 'status'"):
        ids("status=running")
    with pytest.raises(InvalidArgument, match="expected KEY=VALUE"):
        ids("container")


def test_image_and_volume_filters() -> None:
    images = [ImageInfo("busybox:latest", "sha256:abcdef", 1, 1.0), ImageInfo("alpine:3.19", "sha256:123456", 1, 2.0)]
    names = lambda *e: [i.name for i in list_filters.select(images, e, list_filters.IMAGE_KEYS, "images")]  # noqa: E731
    assert names("reference=busybox") == ["busybox:latest"]
    assert names("reference=alp*") == ["alpine:3.19"]
    assert names("digest=sha256:1234") == ["alpine:3.19"] and names("digest=abc") == ["busybox:latest"]
    vols = [VolumeInfo("data", "/v/data", 1.0, labels=("env=prod",), used_by=("web",)), VolumeInfo("tmp", "/v/tmp", 2.0)]
    vnames = lambda *e: [v.name for v in list_filters.select(vols, e, list_filters.VOLUME_KEYS, "volumes")]  # noqa: E731
    assert vnames("name=at") == ["data"] and vnames("label=env=prod") == ["data"]
    assert vnames("dangling=true") == ["tmp"] and vnames("dangling=false") == ["data"]
    with pytest.raises(InvalidArgument, match="dangling"):
        list_filters.select([], ["dangling=maybe"], list_filters.VOLUME_KEYS, "volumes")
