"""migrate/interop/remote_import.py: a foreign archive over --host as a temporary checkpoint image.

The engine is a recording stand-in for RemoteEngine; the archive's conversion is stubbed (the real
one, with podman, runs in tests/integration/test_interop_remote.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from migrate import api
from migrate.interop import remote_import
from runtime.errors import InvalidSpec, Unsupported


class Engine:
    def __init__(self, fail: BaseException | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = fail

    def image_load(self, path: Path, name: str | None = None) -> None:
        assert (path / "index.json").is_file()
        self.calls.append(("load", name))

    def restore(self, options: api.RestoreOptions, progress: Any = None) -> str:
        self.calls.append(("restore", options))
        if self.fail is not None:
            raise self.fail
        return "restored"

    def image_remove(self, name: str) -> None:
        self.calls.append(("remove", name))


@pytest.fixture
def layouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    made: list[Path] = []

    def fake(path: Path, scratch: Path) -> tuple[Path, int]:
        (scratch / "layout").mkdir()
        (scratch / "layout" / "index.json").write_text("{}")
        made.append(scratch)
        return scratch / "layout", 1

    monkeypatch.setattr(remote_import, "_layout", fake)
    return made


def _options(**kw: Any) -> api.RestoreOptions:
    return api.RestoreOptions(import_path=Path("/x/ctr.tar.gz"), name="web", seccomp="unconfined", **kw)


def test_restored_by_image_ref_with_the_callers_options_then_removed(layouts: list[Path]) -> None:
    engine = Engine()
    assert remote_import.restore_foreign_over_host(engine, _options()) == "restored"
    (load, name), (restore, sent), (remove, removed) = engine.calls
    assert (load, restore, remove) == ("load", "restore", "remove")
    assert name == removed == sent.image_ref and name.startswith(remote_import.TEMPORARY_PREFIX)
    assert sent.import_path is None and sent.seccomp == "unconfined" and sent.name == "web"
    assert not layouts[0].exists(), "the caller's scratch outlived the upload"


def test_a_failed_restore_still_removes_the_temporary_image(layouts: list[Path]) -> None:
    engine = Engine(fail=InvalidSpec("seccomp", "refused"))
    with pytest.raises(InvalidSpec):
        remote_import.restore_foreign_over_host(engine, _options())
    assert [c[0] for c in engine.calls] == ["load", "restore", "remove"]
    assert not layouts[0].exists()


def test_caller_only_options_refused_before_anything_is_sent(layouts: list[Path]) -> None:
    engine = Engine()
    with pytest.raises(Unsupported, match="--pull"):
        remote_import.restore_foreign_over_host(engine, _options(pull_image=True))
    with pytest.raises(Unsupported, match="--trusted-key"):
        remote_import.restore_foreign_over_host(engine, _options(trusted_keys=(Path("/k.pub"),)))
    assert engine.calls == [] and layouts == []


def test_temporary_names_differ_and_are_store_names() -> None:
    from runtime.image_store import validate_name

    names = {remote_import.temporary_name() for _ in range(50)}
    assert len(names) == 50 and all(validate_name(n) for n in names)
