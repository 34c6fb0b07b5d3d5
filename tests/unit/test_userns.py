"""runtime/userns.py without the kernel: --userns parsing, the host pool of id ranges (claims,
stale claims, exhaustion), the ownership shift a new range needs, a manifest's userns fields."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from runtime import userns
from runtime.errors import InvalidArgument, InvalidSpec, Unsupported


@pytest.fixture
def pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "pool"
    monkeypatch.setenv(userns.POOL_DIR_ENV, str(directory))
    subuid = tmp_path / "subuid"
    subuid.write_text("someone:100000:65536\npymigrate:200000:196608\n")  # three ranges of 65536
    monkeypatch.setattr(userns, "SUBUID_FILE", str(subuid))
    return directory


def _record(root: Path, cid: str) -> None:
    (root / "containers" / cid).mkdir(parents=True)


@pytest.mark.parametrize("text, expected", [
    ("", ("", 0)), ("host", ("", 0)), ("auto", ("auto", 65536)), ("auto:size=4096", ("auto", 4096)),
])
def test_parse_mode(text: str, expected: tuple[str, int]) -> None:
    assert userns.parse_mode(text) == expected


@pytest.mark.parametrize("text", ["keep-id", "auto:size=100", "auto:size=", "auto:uidmapping=0:1:2", "host:x", "auto:size=99999999"])
def test_parse_mode_refuses_with_a_hint(text: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        userns.parse_mode(text)
    assert text in str(err.value) and err.value.hint


def test_pool_span_reads_the_pymigrate_line(pool: Path) -> None:
    assert userns.pool_span() == (200000, 196608)


def test_pool_span_default_without_a_line(tmp_path: Path) -> None:
    (tmp_path / "subuid").write_text("root:100000:65536\n")
    assert userns.pool_span(str(tmp_path / "subuid")) == (userns.DEFAULT_START, userns.DEFAULT_COUNT)


def test_ranges_are_disjoint_and_a_container_keeps_its_own(pool: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = userns.allocate(root, "a" * 32)
    b = userns.allocate(root, "b" * 32)
    assert {a.base, b.base} == {200000, 265536}
    assert userns.allocate(root, "a" * 32) == a  # asked again: the same claim
    other_root = tmp_path / "other"
    c = userns.allocate(other_root, "a" * 32)  # same id, another state root: another container
    assert c.base == 331072
    with pytest.raises(Unsupported) as err:
        userns.allocate(root, "d" * 32)
    assert "no free range" in str(err.value) and "pymigrate:START:COUNT" in (err.value.hint or "")


def test_release_frees_the_range_and_prefer_takes_it(pool: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = userns.allocate(root, "a" * 32)
    userns.release(root, "a" * 32)
    userns.release(root, "a" * 32)  # idempotent
    assert userns.allocate(root, "b" * 32, prefer=a.base).base == a.base
    taken = userns.allocate(root, "c" * 32, prefer=a.base)  # preferred but held: the next free one
    assert taken.base != a.base


def test_a_claim_whose_record_is_gone_is_reclaimed_once_old(pool: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    _record(root, "a" * 32)
    for cid in ("a", "b", "c"):
        userns.allocate(root, cid * 32)
    with pytest.raises(Unsupported):
        userns.allocate(root, "d" * 32)  # young claims hold even without a record (a run in progress)
    old = time.time() - userns.CLAIM_GRACE_S - 10
    for claim in pool.iterdir():
        os.utime(claim, (old, old))
    fresh = userns.allocate(root, "d" * 32)  # b's and c's records never came: their ranges are free
    assert fresh.base in (265536, 331072)
    assert [r.base for r in userns.claimed_ranges()] == sorted({200000, fresh.base})


def test_a_smaller_range_fits_the_span(pool: Path, tmp_path: Path) -> None:
    rng = userns.allocate(tmp_path / "root", "a" * 32, size=4096)
    assert rng.size == 4096 and rng.to_host(0) == rng.base and rng.to_host(4096) == 4096


def test_shift_tree_moves_only_the_old_range(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    top = tmp_path / "upper"
    (top / "d").mkdir(parents=True)
    (top / "d" / "f").write_text("x")
    os.symlink("/etc/passwd", top / "link")  # never followed
    os.chown(top, 200000, 200000)
    os.chown(top / "d", 200033, 200034)
    os.chown(top / "d" / "f", 1000, 1000)  # outside the range: kept
    os.lchown(top / "link", 200000, 200000)
    (top / "d" / "f").chmod(0o4755)
    passwd = os.stat("/etc/passwd")
    changed = userns.shift_tree(top, userns.Range(200000), userns.Range(500000))
    assert changed == 3
    assert (os.stat(top).st_uid, os.stat(top / "d").st_uid, os.stat(top / "d").st_gid) == (500000, 500033, 500034)
    assert os.stat(top / "d" / "f").st_uid == 1000 and os.lstat(top / "link").st_uid == 500000
    assert os.stat("/etc/passwd") == passwd
    assert userns.shift_tree(top, userns.Range(500000), None) == 3  # back to the container's own view
    assert os.stat(top / "d").st_uid == 33


@pytest.mark.parametrize("mode, base, size, field", [
    ("keep-id", 0, 0, "userns"), ("auto", -1, 65536, "userns_base"), ("auto", 1 << 32, 65536, "userns_base"),
    ("auto", 0, 0, "userns_size"), ("", 0, 65536, "userns_size"), ("auto", 0, 1000, "userns_size"),
    ("auto", 0, True, "userns_size"),
])
def test_manifest_fields_are_checked(mode: object, base: object, size: object, field: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        userns.validate_spec_fields(mode, base, size)
    assert err.value.field == field


def test_manifest_fields_accepted() -> None:
    userns.validate_spec_fields("", 0, 0)
    userns.validate_spec_fields("auto", 1_000_000_000, 65536)
