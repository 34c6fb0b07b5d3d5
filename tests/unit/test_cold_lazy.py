"""When a cold target resumes with lazy pages from its own disk, and when it falls back (issue 17)."""

from __future__ import annotations

from typing import Any

import pytest

from migrate.migration import cold_lazy


class _Report:
    def __init__(self, **features: bool) -> None:
        self._features = features

    def features(self) -> dict[str, bool]:
        return dict(self._features)


@pytest.fixture
def features(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    found = {"lazy_pages": True, "lazy_pages_userns": True}
    monkeypatch.setattr("runtime.host.host_report", lambda: _Report(**found))
    return found


def _reason(mode: str = "cold", environ: dict[str, str] | None = None, **spec: Any) -> str | None:
    return cold_lazy.lazy_reason(mode, spec, environ or {})


ON = {"PYMIGRATE_COLD_LAZY": "1"}


def test_lazy_is_the_default(features: dict[str, bool]) -> None:
    assert _reason() is None
    assert _reason(environ=ON) is None
    assert _reason(environ=ON, volumes=[{"source": "/srv", "target": "/srv"}]) is None  # a bind mount: no volume to install


@pytest.mark.parametrize("value", ["0", "off", "no", "false", " OFF "])
def test_turned_off_by_the_environment(features: dict[str, bool], value: str) -> None:
    assert _reason(environ={"PYMIGRATE_COLD_LAZY": value}) == f"PYMIGRATE_COLD_LAZY={value}"


def test_only_cold_and_no_named_volumes(features: dict[str, bool]) -> None:
    assert _reason("precopy", environ=ON) == "a precopy migration"
    assert _reason(environ=ON, volumes=[{"name": "data", "target": "/data"}]) == "named volumes"


def test_falls_back_without_lazy_pages(features: dict[str, bool]) -> None:
    features["lazy_pages"] = False
    assert "no lazy pages on this host" in str(_reason(environ=ON))


def test_userns_needs_unprivileged_userfaultfd(features: dict[str, bool]) -> None:
    features["lazy_pages_userns"] = False
    assert _reason(environ=ON) is None  # no --userns: the restore's tasks are root on the host
    assert _reason(environ=ON, userns_size=65536) == "a --userns container and vm.unprivileged_userfaultfd is 0"


def test_a_full_restore_follows_a_failed_lazy_one_unless_it_would_fail_alike() -> None:
    from runtime.errors import Busy, ContainerError, ContainerExists, CriuError, CriuTimeout, InvalidSpec

    assert cold_lazy._retry_full(ContainerError("criu restore failed: Unable to map ANON_VMA: Cannot allocate memory"))
    assert cold_lazy._retry_full(CriuError("restore", "criu restore failed"))
    for same in (Busy("container web", "restore"), ContainerExists("name web is taken"), CriuTimeout("restore", 30.0),
                 InvalidSpec("name", "bad name")):
        assert not cold_lazy._retry_full(same), same
