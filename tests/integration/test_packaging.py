"""``pip install .`` into a fresh venv with the LOWEST versions pyproject.toml allows works.

The floors in ``[project] dependencies`` become a pip ``--constraint`` file (``name==floor``), so
a floor below what the checked-in generated code needs (protobuf's ValidateProtobufRuntimeVersion,
grpcio's GRPC_GENERATED_VERSION) fails here with the VersionError users would see. pip's
downloads are cached under /var/cache so reruns are fast.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
PIP_CACHE = Path(os.environ.get("PYMIGRATE_PIP_CACHE", "/var/cache/pymigrate-tests/pip"))
_FLOOR = re.compile(r"^([A-Za-z0-9_.-]+)\s*(?:\[[^]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)")


def floors() -> dict[str, str]:
    """Each dependency's lowest allowed version; every dependency must have one. Those whose
    marker leaves them out on this Python (backports.zstd from 3.14 on) are not listed."""
    from packaging.requirements import Requirement

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    found = {}
    for requirement in dependencies:
        match = _FLOOR.match(requirement)
        assert match, f"dependency {requirement!r} has no >= floor"
        marker = Requirement(requirement).marker
        if marker is None or marker.evaluate():
            found[match.group(1).lower()] = match.group(2)
    return found


def test_every_dependency_has_a_floor_and_the_generated_code_fits_them() -> None:
    found = floors()
    grpc_code = (REPO / "migrate/_proto/pymigrate/v1/host_pb2_grpc.py").read_text()
    generated_grpc = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", grpc_code)
    pb_code = (REPO / "migrate/_proto/pymigrate/v1/host_pb2.py").read_text()
    generated_pb = re.search(r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),", pb_code)
    assert generated_grpc and generated_pb

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in text.split("."))

    assert version(found["grpcio"]) >= version(generated_grpc.group(1))
    assert version(found["protobuf"]) >= tuple(int(g) for g in generated_pb.groups())


def test_install_with_the_lowest_allowed_versions(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in floors().items()))
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PIP_CACHE_DIR": str(PIP_CACHE), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    install = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--constraint", str(constraints), str(REPO)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    frozen = subprocess.run([str(venv / "bin/python"), "-m", "pip", "freeze"], capture_output=True, text=True, check=True,
                            env=env).stdout.lower()
    for name, version in floors().items():
        assert f"{name.replace('_', '-')}=={version}" in frozen.replace("_", "-"), f"{name} is not at its floor {version}"

    python = str(venv / "bin/python")
    # the generated code checks its runtimes at import: this is where a too-low floor fails
    # ... and the page relay's bounded decompressor needs its own (backports.zstd before 3.14)
    imports = ("import migrate.cli, migrate.remote.server, migrate.remote.client, migrate.remote.rpc_status; "
               "import migrate.migration.page_relay as r; r.Decompress()")
    run = subprocess.run([python, "-c", imports], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    typed = subprocess.run([python, "-c", "import migrate, runtime, pathlib as p; "
                            "print(all((p.Path(m.__file__).parent / 'py.typed').is_file() for m in (migrate, runtime)))"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert typed.stdout.strip() == "True", typed.stderr
    version = subprocess.run([str(venv / "bin/pymigrate"), "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert version.returncode == 0 and re.search(r"\d+\.\d+", version.stdout), version.stderr
    helped = subprocess.run([str(venv / "bin/pymigrate"), "ps", "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert helped.returncode == 0 and "ps" in helped.stdout, helped.stderr
