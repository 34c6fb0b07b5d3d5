"""A target refuses a peer's names and ids that would become paths outside their place in the
state root, before it reserves anything (no record, no lease)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from migrate.api import IncomingRequest
from migrate.migration.target import IncomingMigrations
from runtime.errors import InvalidArgument

DIGEST = "sha256:" + "ab" * 32
GOOD = {"name": "web", "container_id": "0123456789abcdef0123456789abcdef", "image": "busybox", "image_digest": DIGEST, "ip": None}


class _NoCriu:
    def version(self) -> str:  # pragma: no cover - validation comes first
        raise AssertionError("validation must happen before anything else")


def _incoming(tmp_path: Path) -> IncomingMigrations:
    host = SimpleNamespace(paths=SimpleNamespace(run=tmp_path / "run"))
    return IncomingMigrations(host, _NoCriu())


@pytest.mark.parametrize(
    "field,value,expect",
    [
        ("name", "../../etc", "invalid container name"),
        ("name", "/etc", "invalid container name"),
        ("name", "a/b", "invalid container name"),
        ("container_id", "../../x", "invalid container id"),
        ("container_id", "/tmp/x", "invalid container id"),
        ("container_id", "..", "invalid container id"),
        ("image", "../../evil", "invalid image name"),
        ("image", "/abs", "invalid image name"),
    ],
)
def test_escaping_names_are_refused(tmp_path: Path, field: str, value: str, expect: str) -> None:
    spec = dict(GOOD, **{field: value})
    request = IncomingRequest(container_name=spec["name"], spec=spec, image_digest=DIGEST, criu_version="4.1", cpu_digest="", ip=None)
    with pytest.raises(InvalidArgument, match=expect):
        _incoming(tmp_path).prepare(request)
    assert not (tmp_path / "run").exists(), "nothing is created for a refused request"


def test_bad_digest_and_mismatched_name_are_refused(tmp_path: Path) -> None:
    bad_digest = IncomingRequest(container_name="web", spec=GOOD, image_digest="sha256:../../x", criu_version="4.1", cpu_digest="", ip=None)
    with pytest.raises(InvalidArgument, match="invalid image digest"):
        _incoming(tmp_path).prepare(bad_digest)
    bad_name = IncomingRequest(container_name="../web", spec=GOOD, image_digest=DIGEST, criu_version="4.1", cpu_digest="", ip=None)
    with pytest.raises(InvalidArgument, match="invalid container name"):
        _incoming(tmp_path).prepare(bad_name)
