"""run --init's pieces (runtime/init_binary.py): the bind, the argv, CRIU's externals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runtime import init_binary
from runtime.errors import Unsupported
from runtime.rootfs import MakeFile, Mount
from runtime.spec import ContainerSpec
from runtime.syscalls import MS_BIND, MS_RDONLY, MS_REMOUNT

SPEC = ContainerSpec(container_id="a" * 32, name="n", image="i", image_digest="sha256:" + "b" * 64, command=("sleep", "9"))


@pytest.fixture
def tini(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "tini-static"
    path.write_bytes(b"\x7fELF")
    path.chmod(0o755)
    monkeypatch.setattr(init_binary, "HOST_PATH", path)
    return path


def test_the_hosts_tini_is_bound_read_only_on_an_empty_file(tini: Path) -> None:
    ops = init_binary.mount_ops()
    assert ops[0] == MakeFile(init_binary.TARGET, 0o755)
    assert ops[1] == Mount(init_binary.TARGET, None, str(tini), MS_BIND)
    assert ops[2].flags & (MS_BIND | MS_REMOUNT | MS_RDONLY) == MS_BIND | MS_REMOUNT | MS_RDONLY  # type: ignore[union-attr]


def test_tini_runs_the_command_as_its_child() -> None:
    assert init_binary.argv(("sh", "-c", "x")) == ("/.pymigrate/init", "--", "sh", "-c", "x")


def test_externals_name_the_bind_at_dump_and_map_it_to_this_hosts_tini(tini: Path) -> None:
    assert init_binary.dump_externals(SPEC) == () and init_binary.restore_externals(SPEC) == ()
    spec = dataclasses.replace(SPEC, init=True)
    assert init_binary.dump_externals(spec) == ("mnt[/.pymigrate/init]:pminit",)
    assert init_binary.restore_externals(spec) == (f"mnt[pminit]:{tini}",)


def test_a_host_without_tini_refuses_init_with_an_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(init_binary, "HOST_PATH", tmp_path / "missing")
    with pytest.raises(Unsupported, match="tini") as err:
        init_binary.restore_externals(dataclasses.replace(SPEC, init=True))
    assert "apt-get install tini" in (err.value.hint or "")
