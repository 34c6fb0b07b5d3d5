"""runtime/dataclass_cache.py: dataclasses built from cached code are the ones built without it."""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import dataclass_cache
from runtime.dataclass_cache import MethodCache

REPO = Path(__file__).resolve().parents[2]


def _make_classes() -> tuple[type, type]:
    @dataclasses.dataclass(frozen=True)
    class Point:
        x: int
        y: int = 2
        tags: tuple[str, ...] = ()
        extra: dict[str, int] = dataclasses.field(default_factory=dict, compare=False)

    @dataclasses.dataclass
    class Box:
        size: int
        label: str = "box"

    return Point, Box


def _behaviour(point: type, box: type) -> tuple[object, ...]:
    p = point(1, tags=("a",))
    q = point(1, tags=("a",), extra={"k": 1})
    try:
        p.x = 5  # type: ignore[attr-defined]
        frozen = False
    except dataclasses.FrozenInstanceError:
        frozen = True
    b = box(3)
    b.size = 4
    return (repr(p), p == q, hash(p) == hash(q), frozen, repr(b), b == box(4), str(inspect.signature(point)),
            str(inspect.signature(box)), point.__init__.__code__.co_filename)


def _built_with(cache: MethodCache, monkeypatch: pytest.MonkeyPatch) -> tuple[type, type]:
    with monkeypatch.context() as m:
        m.setattr(dataclasses, "exec", cache.exec, raising=False)
        return _make_classes()


def test_classes_from_the_cache_behave_as_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    plain = _behaviour(*_make_classes())
    path = tmp_path / "cache.marshal"

    first = MethodCache(path)
    assert _behaviour(*_built_with(first, monkeypatch)) == plain
    assert first.new, "the first build compiles"
    assert first.save() and path.exists()

    second = MethodCache(path)  # another process: everything comes from the file
    assert _behaviour(*_built_with(second, monkeypatch)) == plain
    assert second.new == {} and second.used and second.used <= set(second.stored)
    assert not second.save(), "nothing new: the file is not written again"


def test_each_class_gets_its_own_functions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = MethodCache(tmp_path / "c.marshal")
    a, _ = _built_with(cache, monkeypatch)
    b, _ = _built_with(cache, monkeypatch)
    assert a.__init__ is not b.__init__  # type: ignore[misc]
    assert a(1) != b(1)  # different classes, as without the cache


def test_a_file_others_could_write_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = tmp_path / "c.marshal"
    cache = MethodCache(path)
    _built_with(cache, monkeypatch)
    assert cache.save()
    assert MethodCache(path).stored
    os.chmod(path, 0o664)
    assert MethodCache(path).stored == {}


def test_torn_or_foreign_files_are_ignored(tmp_path: Path) -> None:
    import marshal

    path = tmp_path / "c.marshal"
    path.write_bytes(b"\x00garbage")
    assert dataclass_cache.load(path) == {}
    path.write_bytes(marshal.dumps(("cpython-99 0", {"def f(): pass": b""})))
    assert dataclass_cache.load(path) == {}
    assert dataclass_cache.load(tmp_path / "missing") == {}


def test_nothing_is_written_when_bytecode_writing_is_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    path = tmp_path / "c.marshal"
    cache = MethodCache(path)
    _built_with(cache, monkeypatch)
    assert not cache.save() and not path.exists()


def test_the_cli_program_installs_it_and_main_called_by_code_does_not(tmp_path: Path) -> None:
    code = (
        "import dataclasses, sys\n"
        "from migrate.cli import main\n"
        "main(['--root', sys.argv[1], 'ps'])\n"
        "print('by-code', hasattr(dataclasses, 'exec'))\n"
        "sys.argv = ['pymigrate', '--root', sys.argv[1], 'ps']\n"
        "main()\n"
        "print('program', hasattr(dataclasses, 'exec'))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "root")], capture_output=True, text=True, cwd=REPO,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "by-code False" in r.stdout and "program True" in r.stdout
