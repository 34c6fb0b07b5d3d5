"""packaging/systemd (the unit and the example config) and scripts/install-daemon.sh, into a
DESTDIR: what the unit promises (Type=notify, only the daemon killed on stop, a delegated
cgroup), ``systemd-analyze verify`` of the installed unit, re-running keeps the admin's config,
and every key of the example config is one the daemon accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from migrate.cli import build_parser
from migrate.daemon_config import apply

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging/systemd/pymigrate.service"
EXAMPLE = REPO / "packaging/systemd/daemon.toml"
SCRIPT = REPO / "scripts/install-daemon.sh"
PYMIGRATE = Path(sys.executable).parent / "pymigrate"


def _install(destdir: Path, bin_path: Path = PYMIGRATE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT)], env={"PATH": "/usr/bin:/bin", "DESTDIR": str(destdir), "PYMIGRATE_BIN": str(bin_path)},
                          capture_output=True, text=True, check=True, timeout=60)


def _settings(unit: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+)=(.*)$", unit, flags=re.M))


def test_unit_settings() -> None:
    settings = _settings(UNIT.read_text())
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert settings["KillMode"] == "process"  # containers (shims) survive stop and restart
    assert settings["Delegate"] == "yes"  # the daemon manages the cgroups below its own
    assert settings["ExecStart"].startswith("/usr/local/bin/pymigrate daemon ")
    assert int(settings["TimeoutStopSec"]) > 30 + 60  # default --grace plus the rollback wait


def test_install_is_idempotent_and_keeps_the_config(tmp_path: Path) -> None:
    first = _install(tmp_path)
    unit = tmp_path / "etc/systemd/system/pymigrate.service"
    config = tmp_path / "etc/pymigrate/daemon.toml"
    assert _settings(unit.read_text())["ExecStart"] == f"{PYMIGRATE} daemon --config /etc/pymigrate/daemon.toml"
    assert config.read_text() == EXAMPLE.read_text() and "wrote" in first.stdout
    assert (tmp_path / "etc/pymigrate/tls").stat().st_mode & 0o777 == 0o700
    config.write_text('listen = "0.0.0.0:7443"\n')  # the admin's edit
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    second = _install(tmp_path)
    assert "kept" in second.stdout
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_install_refuses_a_relative_binary(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        _install(tmp_path, Path("pymigrate"))
    assert "absolute path" in info.value.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (apt-get install systemd)")
def test_systemd_analyze_verifies_the_installed_unit(tmp_path: Path) -> None:
    _install(tmp_path)  # ExecStart pointed at this venv's pymigrate: verify checks it is executable
    unit = tmp_path / "etc/systemd/system/pymigrate.service"
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pymigrate.service" not in result.stderr, result.stderr  # no warning about our unit


def test_example_config_keys_are_daemon_flags(tmp_path: Path) -> None:
    assert tomllib.loads(EXAMPLE.read_text()) == {}  # all commented out: the defaults apply
    uncommented = re.sub(r"^#(?=[a-z-]+ = )", "", EXAMPLE.read_text(), flags=re.M)
    values = tomllib.loads(uncommented)
    assert {"root", "listen", "tls-cert", "tls-key", "tls-ca", "token-file", "grace", "trusted-key"} <= set(values)
    parser = build_parser("daemon")
    args = parser.parse_args(["daemon"])
    daemon_parser = args._daemon_parser
    assert sorted(apply(daemon_parser, args, values, tmp_path / "daemon.toml")) == sorted(values)
    assert args.tls_ca == tmp_path / "tls/ca.crt"
