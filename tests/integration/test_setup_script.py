"""scripts/setup.sh on the real host: a re-run is fast and changes nothing, it never lowers
fs.pipe-max-size, a failure names its step, and the CRIU build path works from a bare cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup.sh"
CACHE = Path("/var/cache/pymigrate/criu")
PIPE_MAX = Path("/proc/sys/fs/pipe-max-size")
SYSCTL_CONF = Path("/etc/sysctl.d/60-pymigrate.conf")

# Files setup.sh manages; a re-run must leave them byte-identical.
WATCHED = (
    Path("/usr/local/sbin/criu"),
    Path("/etc/apt/sources.list.d/pymigrate-trixie-src.sources"),
    SYSCTL_CONF,
    REPO / ".venv" / ".pymigrate-setup",
    # shell completion and man pages (migrate/cli/completion.py)
    Path("/usr/share/bash-completion/completions/pymigrate"),
    Path("/usr/local/share/zsh/site-functions/_pymigrate"),
    Path("/usr/share/fish/vendor_completions.d/pymigrate.fish"),
    Path("/usr/local/share/man/man1/pymigrate.1"),
    Path("/usr/local/share/man/man1/pymigrate-run.1"),
)


def run_setup(env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run(
        ["bash", str(SETUP)], capture_output=True, text=True, timeout=timeout, env=full, stdin=subprocess.DEVNULL
    )


def fingerprint(path: Path) -> tuple[str, int] | None:
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.mark.requires("root", "criu")
def test_rerun_is_fast_and_changes_nothing() -> None:
    before = {p: fingerprint(p) for p in WATCHED}
    pipe_before = PIPE_MAX.read_text()
    start = time.monotonic()
    res = run_setup()
    elapsed = time.monotonic() - start
    assert res.returncode == 0, res.stdout + res.stderr
    assert elapsed < 15, f"second run took {elapsed:.1f}s"
    assert {p: fingerprint(p) for p in WATCHED} == before
    assert PIPE_MAX.read_text() == pipe_before
    for busy in ("apt-get", "make -j", "pip install", "generating", "writing", "raising"):
        assert busy not in res.stdout, f"re-run did work: {busy!r}\n{res.stdout}"
    steps = [line for line in res.stdout.splitlines() if line.startswith("==> ")]
    assert len(steps) >= 6  # every step announces itself


@pytest.mark.requires("root", "criu")
def test_installs_completion_and_man_pages_from_the_parser() -> None:
    """What setup writes is what the CLI prints now; a page it no longer makes goes, once."""
    stale = Path("/usr/local/share/man/man1/pymigrate-no-such-command.1")
    stale.write_text(".TH OLD 1\n")
    res = run_setup()
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"removing {stale}" in res.stdout and not stale.exists()
    for shell, path in (("bash", "/usr/share/bash-completion/completions/pymigrate"),
                        ("zsh", "/usr/local/share/zsh/site-functions/_pymigrate"),
                        ("fish", "/usr/share/fish/vendor_completions.d/pymigrate.fish")):
        printed = subprocess.run([str(REPO / ".venv" / "bin" / "pymigrate"), "completion", shell], capture_output=True,
                                 text=True, check=True).stdout
        assert Path(path).read_text() == printed, shell
    loaded = subprocess.run(["bash", "-c", "source /usr/share/bash-completion/bash_completion; _completion_loader pymigrate; "
                             "complete -p pymigrate"], capture_output=True, text=True)
    assert "-F _shtab_pymigrate pymigrate" in loaded.stdout, loaded.stderr  # bash-completion finds it by name
    page = subprocess.run(["man", "-P", "cat", "pymigrate-ps"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "MANWIDTH": "100"})
    assert page.returncode == 0 and "pymigrate ps" in page.stdout, page.stderr
    again = run_setup()
    assert again.returncode == 0 and "removing" not in again.stdout and "writing" not in again.stdout, again.stdout


@pytest.mark.requires("root", "criu")
def test_never_lowers_pipe_max_size() -> None:
    original = PIPE_MAX.read_text()
    conf = SYSCTL_CONF.read_text() if SYSCTL_CONF.exists() else None
    bigger = max(int(original), 4194304) * 2
    try:
        PIPE_MAX.write_text(str(bigger))
        res = run_setup()
        assert res.returncode == 0, res.stdout + res.stderr
        assert int(PIPE_MAX.read_text()) == bigger
        # and the persisted value does not lower it at boot either
        assert f"fs.pipe-max-size = {bigger}" in SYSCTL_CONF.read_text()
    finally:
        PIPE_MAX.write_text(original)
        if conf is None:
            SYSCTL_CONF.unlink(missing_ok=True)
        else:
            SYSCTL_CONF.write_text(conf)


@pytest.mark.requires("root", "criu")
def test_failure_names_the_step(tmp_path: Path) -> None:
    # A cache path that cannot be created makes the forced CRIU build fail early.
    res = run_setup(env={"FORCE_CRIU_BUILD": "1", "PYMIGRATE_CACHE": "/proc/pymigrate-cannot-exist",
                         "CRIU_PREFIX": str(tmp_path / "prefix")})
    assert res.returncode != 0
    assert 'FAILED in step "criu: source download"' in res.stderr
    assert res.stderr.count("FAILED in step") == 1
    assert not (tmp_path / "prefix").exists()


@pytest.mark.requires("root", "criu")
def test_criu_build_from_bare_cache(tmp_path: Path) -> None:
    """The fresh-machine path of the CRIU step: unpack, make criu, install, criu check."""
    tarballs = sorted(CACHE.glob("criu_*.orig.tar.*"))
    tarballs = [t for t in tarballs if not t.name.endswith(".asc")]
    if not tarballs:
        pytest.skip(f"no criu source tarball in {CACHE} (criu was not built by setup.sh here)")
    cache = tmp_path / "cache"
    (cache / "criu").mkdir(parents=True)
    shutil.copy2(tarballs[-1], cache / "criu")
    prefix = tmp_path / "prefix"
    res = run_setup(env={"FORCE_CRIU_BUILD": "1", "PYMIGRATE_CACHE": str(cache), "CRIU_PREFIX": str(prefix)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    built = prefix / "sbin" / "criu"
    assert f"installed {built}" in res.stdout
    check = subprocess.run([str(built), "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "Looks good" in check.stdout + check.stderr
