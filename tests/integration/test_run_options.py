"""docker/podman habits of ``run`` on the real runtime (issue 13): -e KEY and --env-file."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]


def test_env_key_alone_and_env_file_reach_the_container(pm, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("PM_FROM_CLI", "cli value")
    monkeypatch.setenv("PM_IN_FILE", "file's key")
    monkeypatch.delenv("PM_UNSET", raising=False)
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n\nFILE_A=a b\nPM_IN_FILE\nPM_UNSET\nOVER=file\n")
    r = pm("run", "--rm", "--env-file", str(env_file), "-e", "PM_FROM_CLI", "-e", "PM_UNSET", "-e", "OVER=flag",
           "busybox", "env")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert "PM_FROM_CLI=cli value" in lines and "FILE_A=a b" in lines and "PM_IN_FILE=file's key" in lines
    assert not any(line.startswith("PM_UNSET") for line in lines)
    assert [line for line in lines if line.startswith("OVER=")] == ["OVER=flag"]
