"""The CLI through a zygote (migrate/zygote) on real containers: the same exit codes, stdout and
stderr (--json too) as the plain CLI for run -d / ps / inspect / rm; a zygote whose code changed is
not used; Ctrl-C reaches the command; and with no zygote (or an unsafe socket directory) the CLI
still works.

Each test has its own socket directory and stops its zygotes at the end. The route a command took
comes from ``PYMIGRATE_ZYGOTE=debug``'s stderr lines, which are removed before comparing.
"""

from __future__ import annotations

import difflib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from migrate.zygote.server import stop_all
from tests.integration.cli_helpers import unique
from tests.integration.conftest import PYMIGRATE, REPO

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]
ROUTE = "pymigrate: zygote "


class Cli:
    def __init__(self, root: Path, zdir: Path, site: Path) -> None:
        self.root, self.zdir = root, zdir
        base = {k: v for k, v in os.environ.items() if not k.startswith("PYMIGRATE_ZYGOTE")}
        base["PYTHONPATH"] = str(site)  # its sitecustomize is loaded by the CLI and the zygote: the test's "code"
        base.pop("PYTHONDONTWRITEBYTECODE", None)
        self.plain_env = base
        self.fast_env = {**base, "PYMIGRATE_ZYGOTE": "debug", "PYMIGRATE_ZYGOTE_DIR": str(zdir), "PYMIGRATE_ZYGOTE_IDLE_S": "120"}

    def argv(self, *args: str) -> list[str]:
        return [*PYMIGRATE, "--root", str(self.root), *args]

    def plain(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, cwd=REPO, env=self.plain_env, timeout=120)

    def fast(self, *args: str) -> tuple[str, subprocess.CompletedProcess[str]]:
        """(route, result with the route lines taken out of stderr)."""
        r = subprocess.run(self.argv(*args), capture_output=True, text=True, cwd=REPO, env=self.fast_env, timeout=120)
        lines = r.stderr.splitlines(keepends=True)
        routes = [ln.split()[2] for ln in lines if ln.startswith(ROUTE) and not ln.startswith(ROUTE + "worker")]
        r.stderr = "".join(ln for ln in lines if not ln.startswith(ROUTE))
        return (routes[0] if routes else ""), r

    def zygote_pids(self) -> set[int]:
        pids = set()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"migrate.zygote.server" in cmdline and str(self.zdir).encode() in cmdline:
                pids.add(int(pid))
        return pids

    def wait_served(self, timeout_s: float = 30) -> None:
        """Until a zygote answers (the first command started it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            route, r = self.fast("ps", "-q")
            assert r.returncode == 0, r.stderr
            if route == "served":
                return
            time.sleep(0.2)
        raise AssertionError("no zygote answered")


@pytest.fixture
def cli(pm_root: Path, tmp_path: Path) -> Iterator[Cli]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("VERSION = 1\n")
    c = Cli(pm_root, tmp_path / "zygotes", site)
    yield c
    stop_all(str(c.zdir))
    for pid in c.zygote_pids():  # one that had not bound its socket yet
        os.kill(pid, signal.SIGKILL)


def _same(fast: subprocess.CompletedProcess[str], plain: subprocess.CompletedProcess[str], names: tuple[str, str] = ("", "")) -> None:
    """Equal results (with ``names``: the fast one's container named names[0], the plain one's names[1])."""
    got = (fast.returncode, fast.stdout.replace(*names), fast.stderr.replace(*names)) if names[0] else (
        fast.returncode, fast.stdout, fast.stderr)
    want = (plain.returncode, plain.stdout, plain.stderr)
    assert got == want, "".join(difflib.unified_diff(want[1].splitlines(True), got[1].splitlines(True), "plain", "fast"))


def test_run_ps_inspect_rm_behave_as_the_plain_cli(cli: Cli) -> None:
    route, first = cli.fast("ps", "-a")
    assert route == "absent" and first.returncode == 0, first.stderr  # no zygote yet: ran here, started one
    cli.wait_served()
    a, b = unique("zy"), unique("zy")
    route, fast = cli.fast("run", "-d", "--name", a, "busybox", "sleep", "1000")
    assert route == "served" and fast.returncode == 0, fast.stderr
    _same(fast, cli.plain("run", "-d", "--name", b, "busybox", "sleep", "1000"), (a, b))
    assert fast.stdout.strip() == a
    for args in (["ps", "-a", "--json"], ["inspect", a, b], ["--json", "inspect", a],
                 ["run", "-d", "--name", a, "busybox", "true"],  # the name is taken: 125 and its message
                 ["run", "-d", "no-such-image", "true"], ["--json", "rm", "no-such-container"],
                 ["ps", "--no-such-flag"], ["rm", "no-such-container"]):
        before = cli.plain(*args)  # a state the containers' shims still record may change between calls:
        route, fast = cli.fast(*args)  # the fast answer must be the plain one from just before or after
        assert route == "served", (args, fast.stderr)
        after = cli.plain(*args)
        if (fast.returncode, fast.stdout, fast.stderr) != (before.returncode, before.stdout, before.stderr):
            _same(fast, after)
    assert json.loads(cli.fast("--json", "inspect", a)[1].stdout)[0]["state"]["status"] == "running"
    route, fast = cli.fast("rm", "-f", a)
    assert route == "served"
    _same(fast, cli.plain("rm", "-f", b), (a, b))
    assert fast.stdout.strip() == a
    assert a not in cli.plain("ps", "-a").stdout


def test_a_zygote_whose_code_changed_is_not_used(cli: Cli) -> None:
    cli.fast("ps")
    cli.wait_served()
    deadline = time.monotonic() + 10  # a second one started by a command that came before the first answered leaves
    while len(old := cli.zygote_pids()) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(old) == 1
    site = Path(cli.plain_env["PYTHONPATH"]) / "sitecustomize.py"
    site.write_text("VERSION = 2\n")
    st = site.stat()
    os.utime(site, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a different mtime even on a coarse clock
    route, r = cli.fast("ps", "-a", "--json")
    assert route == "declined:stale" and r.returncode == 0, r.stderr
    _same(r, cli.plain("ps", "-a", "--json"))
    deadline = time.monotonic() + 10
    while old & cli.zygote_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not old & cli.zygote_pids(), "the stale zygote stayed"
    cli.wait_served()  # its successor, started by the declined command, loaded the new code
    assert cli.zygote_pids() and not old & cli.zygote_pids()


def test_ctrl_c_reaches_the_command(cli: Cli) -> None:
    name = unique("zyint")
    assert cli.plain("run", "-d", "--name", name, "busybox", "sh", "-c", "trap '' TERM; sleep 1000").returncode == 0
    try:
        cli.fast("ps")
        cli.wait_served()
        p = subprocess.Popen(cli.argv("stop", "-t", "60", name), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=REPO, env=cli.fast_env)
        time.sleep(2)  # stop is waiting out its 60 s
        assert p.poll() is None
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
        assert p.returncode == 130, err
        assert "pymigrate: zygote served" in err and "pymigrate: interrupted" in err
    finally:
        assert cli.plain("rm", "-f", name).returncode == 0


def test_no_zygote_or_an_unsafe_directory_still_works(cli: Cli) -> None:
    # off: nothing is started
    r = cli.plain("ps", "-a", "--json")
    assert r.returncode == 0 and not cli.zdir.exists()
    # a socket directory others may write to is never used (nor made into one)
    cli.zdir.mkdir(mode=0o755)
    os.chmod(cli.zdir, 0o755)
    for _ in range(3):
        route, fast = cli.fast("ps", "-a", "--json")
        assert route == "absent"
        _same(fast, r)
        time.sleep(0.5)
    assert list(cli.zdir.iterdir()) == []


def test_a_container_started_through_it_does_not_keep_the_next_zygote_out(cli: Cli) -> None:
    """A zygote's successor starts while a container started through it runs (its shim, a child of
    the worker, holds nothing of the zygote's: not its lock, not its socket)."""
    name = unique("zylock")
    cli.fast("ps")
    cli.wait_served()
    route, r = cli.fast("run", "-d", "--name", name, "busybox", "sleep", "1000")
    assert route == "served" and r.returncode == 0, r.stderr
    try:
        assert stop_all(str(cli.zdir))
        route, r = cli.fast("ps")
        assert route == "absent" and name in r.stdout
        cli.wait_served(timeout_s=10)
    finally:
        assert cli.plain("rm", "-f", name).returncode == 0


@pytest.mark.requires("criu")
def test_a_zygote_started_by_a_checkpoint_serves_the_next_commands(cli: Cli) -> None:
    """A command changes its own process (pycriu's import appends to sys.path): the zygote it
    starts is started before that, as a fresh `pymigrate`, or it would never match a caller."""
    name = unique("zyck")
    assert cli.plain("run", "-d", "--name", name, "busybox", "sleep", "1000").returncode == 0
    try:
        route, r = cli.fast("checkpoint", "--leave-running", name)
        assert route == "absent" and r.returncode == 0, r.stderr
        deadline = time.monotonic() + 15
        while not list(cli.zdir.glob("*.sock")) and time.monotonic() < deadline:
            time.sleep(0.05)
        route, r = cli.fast("--json", "checkpoint", "ls")  # the first command after it bound: not declined
        assert route == "served" and r.returncode == 0, r.stderr
    finally:
        assert cli.plain("rm", "-f", name).returncode == 0


def test_a_killed_front_takes_its_command_with_it(cli: Cli) -> None:
    """kill -9 of a plain CLI ends its command; through the zygote the worker ends too."""
    name = unique("zykill")
    assert cli.plain("run", "-d", "--name", name, "busybox", "sh", "-c", "trap '' TERM; sleep 1000").returncode == 0
    try:
        cli.fast("ps")
        cli.wait_served()
        p = subprocess.Popen(cli.argv("stop", "-t", "60", name), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             cwd=REPO, env=cli.fast_env)
        deadline = time.monotonic() + 10
        workers: set[int] = set()
        while not workers and time.monotonic() < deadline:  # the zygote's child running our stop
            workers = {pid for z in cli.zygote_pids() for pid in _children(z)}
            time.sleep(0.05)
        assert workers and p.poll() is None
        p.kill()
        p.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "the worker outlived its front"
    finally:
        assert cli.plain("rm", "-f", name).returncode == 0


def _children(pid: int) -> set[int]:
    try:
        return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()
