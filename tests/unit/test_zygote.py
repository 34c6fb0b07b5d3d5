"""The zygote's front and wire (migrate/zygote): which commands may go, what must match, staleness,
and one round trip through a real zygote (a `ps` on an empty root: no containers needed)."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrate.zygote import front, server, wire

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("argv", "ok"), [
    (["ps"], True),
    (["--root", "/r", "--json", "ps", "-a"], True),
    (["--root=/r", "rm", "-f", "x"], True),
    (["run", "-d", "--name", "x", "busybox", "sleep", "1"], True),
    (["run", "--detach", "busybox", "sh", "-c", "true"], True),
    (["checkpoint", "x", "--export", "-"], True),
    (["restore", "0123abcd"], True),
    (["start", "x"], True),
    (["run", "busybox", "true"], False),  # foreground
    (["run", "-d", "-t", "busybox", "sh"], False),
    (["run", "-dit", "busybox", "sh"], False),
    (["run", "-d", "--tty", "busybox", "sh"], False),
    (["start", "-a", "x"], False),
    (["start", "--attach", "x"], False),
    (["exec", "x", "true"], False),
    (["logs", "-f", "x"], False),
    (["migrate", "x", "host"], False),
    (["daemon"], False),
    (["--host", "unix:/s", "ps"], False),  # a global option the front does not know
    (["--debug", "ps"], True),
    (["--help"], False),
    ([], False),
])
def test_eligible(argv: list[str], ok: bool) -> None:
    assert front.eligible(argv) is ok


def test_the_match_leaves_out_what_shells_change_and_nothing_else() -> None:
    env = {b"PATH": b"/bin", b"PWD": b"/a", b"OLDPWD": b"/b", b"_": b"/x", b"SHLVL": b"2", b"PYMIGRATE_ZYGOTE": b"1"}
    assert wire.stable_env(env) == ((b"PATH", b"/bin"),)
    fp = wire.fingerprint()
    assert fp == wire.fingerprint()
    one = wire.socket_path(fp, wire.stable_env(env))
    assert one == wire.socket_path(fp, wire.stable_env({**env, b"PWD": b"/elsewhere"}))
    assert one != wire.socket_path(fp, wire.stable_env({**env, b"LANG": b"C"}))


def test_only_a_private_directory_is_trusted(tmp_path: Path) -> None:
    d = tmp_path / "z"
    d.mkdir(mode=0o700)
    os.chmod(d, 0o700)
    assert wire.dir_is_safe(str(d))
    os.chmod(d, 0o755)
    assert not wire.dir_is_safe(str(d))
    os.chmod(d, 0o700)
    (tmp_path / "link").symlink_to(d)
    assert not wire.dir_is_safe(str(tmp_path / "link"))
    assert not wire.dir_is_safe(str(tmp_path / "missing"))


def test_a_changed_or_added_source_file_makes_the_zygote_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "zstalepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    zygote = server.Zygote(str(tmp_path / "unused.sock"))
    try:
        zygote.preload(["zstalepkg.mod"])
        assert str(pkg / "mod.py") in zygote.files and str(pkg) in zygote.files
        # only ours: the shared checkout's files may change under this test
        zygote.files = {p: s for p, s in zygote.files.items() if p.startswith(str(tmp_path))}
        assert not zygote.stale()
        st = os.stat(pkg / "mod.py")
        os.utime(pkg / "mod.py", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert zygote.stale()
        os.utime(pkg / "mod.py", ns=(st.st_atime_ns, st.st_mtime_ns))
        assert not zygote.stale()
        time.sleep(0.01)
        (pkg / "shadow.py").write_text("")  # the package directory changed
        assert zygote.stale()
    finally:
        zygote.sel.close()
        for name in ("zstalepkg", "zstalepkg.mod"):
            sys.modules.pop(name, None)


def test_a_worker_reaped_earlier_in_a_batch_is_not_served_again(tmp_path: Path) -> None:
    """A worker's exit and its caller's close come in one select batch: after the reap closed the
    connection, the close's event must be skipped (it once made the zygote unregister fd -1 and
    die, ~1 in 8 round trips, and would SIGKILL a pid another process may have by then)."""
    zygote = server.Zygote(str(tmp_path / "unbound.sock"))  # not bound: serve returns once idle of workers
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    pidfd = os.pidfd_open(pid)
    modules_r, modules_w = os.pipe()
    os.close(modules_w)
    conn, caller = socket.socketpair()
    zygote.watch(server.Worker(pid, conn, pidfd, modules_r, ["ps"]))
    try:
        select.select([pidfd], [], [], 10)  # the exit is ready first, the close after it
        caller.close()
        zygote.serve()
        assert zygote.workers == {} and zygote.sel.get_map() == {}
    finally:
        zygote.sel.close()


def test_exit_codes_as_the_interpreter_makes_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert server._exit_code(SystemExit()) == 0
    assert server._exit_code(SystemExit(125)) == 125
    assert server._exit_code(SystemExit("bad")) == 1
    assert capsys.readouterr().err == "bad\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="the fast path is root's")
def test_round_trip_through_a_real_zygote(tmp_path: Path) -> None:
    zdir = tmp_path / "z"
    env = {**os.environ, "PYMIGRATE_ZYGOTE": "debug", "PYMIGRATE_ZYGOTE_DIR": str(zdir), "PYMIGRATE_ZYGOTE_IDLE_S": "60"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "migrate", "--root", str(tmp_path / "root"), *argv],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=60)

    def routed(r: subprocess.CompletedProcess[str]) -> tuple[str, str]:
        lines = r.stderr.splitlines(keepends=True)
        route = [ln for ln in lines if ln.startswith("pymigrate: zygote ") and not ln.startswith("pymigrate: zygote worker")]
        return route[0].split()[2] if route else "", "".join(ln for ln in lines if not ln.startswith("pymigrate: zygote "))

    try:
        first = cli("ps", "--json")
        assert routed(first)[0] == "absent" and first.returncode == 0
        deadline = time.monotonic() + 30
        while not list(zdir.glob("*.sock")) and time.monotonic() < deadline:
            time.sleep(0.05)
        for argv in (["ps", "--json"], ["ps", "--no-such-flag"], ["--json", "rm", "no-such-container"]):
            served = cli(*argv)
            route, err = routed(served)
            assert route == "served", served.stderr
            plain = subprocess.run([sys.executable, "-m", "migrate", "--root", str(tmp_path / "root"), *argv],
                                   capture_output=True, text=True, cwd=REPO, timeout=60,
                                   env={k: v for k, v in env.items() if k != "PYMIGRATE_ZYGOTE"})
            assert (served.returncode, served.stdout, err) == (plain.returncode, plain.stdout, plain.stderr)
        # a bad request is declined and the zygote goes on serving
        for junk in (b"", b"hello\n", wire.HEADER.pack(wire.MAGIC, 3) + b"\xff\xff\xff", wire.encode_request({"argv": 1})):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(next(zdir.glob("*.sock"))))
                sock.sendall(junk)
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(100) == b"Drequest\n", junk
        assert routed(cli("ps"))[0] == "served"
    finally:
        server.stop_all(str(zdir))


def test_the_front_imports_next_to_nothing() -> None:
    """Every command pays the front's imports, the fast path or not: builtins and tiny C modules only."""
    probe = "import sys; before = set(sys.modules); import migrate.zygote.front; print(' '.join(sorted(set(sys.modules) - before)))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert set(r.stdout.split()) <= {"migrate", "migrate.zygote", "migrate.zygote.front", "migrate.zygote.wire", "_socket",
                                     "_struct", "zlib", "marshal", "_signal", "time", "__future__"}, r.stdout


def test_the_installed_command_reaches_the_front_before_any_other_import() -> None:
    """packaging/bin/pymigrate (pyproject.toml's script-files), not pip's entry-point wrapper,
    which imports re first (~8 ms of every command): the front is the first thing it imports."""
    script = REPO / "packaging" / "bin" / "pymigrate"
    assert script.read_text().startswith("#!python\n")  # pip writes the venv's interpreter there
    assert 'script-files = ["packaging/bin/pymigrate"]' in (REPO / "pyproject.toml").read_text()
    env = {**os.environ, "PYMIGRATE_ZYGOTE": ""}
    r = subprocess.run([sys.executable, "-X", "importtime", str(script), "--version"], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("pymigrate version"), r.stderr[-2000:]
    lines = [line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")]
    site_done = lines.index("site")  # the interpreter's own start (its imports: site, encodings, ...)
    ours = lines[site_done + 1:lines.index("migrate.zygote.front") + 1]
    assert "re" not in ours and "enum" not in ours, ours  # the --version that follows may import anything


def test_a_prebuilt_parser_serves_its_command_only(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The zygote keeps the parser of each command a worker ran (migrate.cli.prebuild_parser); a
    worker parses with its copy. Other commands, --help and unknown words build their own."""
    import migrate.cli as cli

    monkeypatch.setattr(cli, "_PREBUILT", {})
    cli.prebuild_parser(["--root", "/r", "ps", "-a"])
    kept = cli._PREBUILT["ps"]
    assert cli._parser_for(["ps"]) is kept and cli._parser_for(["--json", "ps", "--all"]) is kept
    for other in (["inspect", "x"], ["--help"], ["nosuch"], []):
        assert cli._parser_for(other) is not kept and cli._parser_for(other) is not cli._PREBUILT[None]
    args = cli._parser_for(["--root", "/r", "ps", "-a"]).parse_args(["--root", "/r", "ps", "-a"])
    assert (args.command, str(args.root), args.all) == ("ps", "/r", True)
    cli.prebuild_parser(["ps"])
    assert cli._PREBUILT["ps"] is kept, "built once"
    with pytest.raises(SystemExit):  # a usage error through a kept parser: exit 125 with ps's usage
        cli._parser_for(["ps", "--nosuch"]).parse_args(["ps", "--nosuch"])
    assert "usage: pymigrate ps" in capsys.readouterr().err


def _learn(zygote: server.Zygote, names: list[str]) -> None:
    r, w = os.pipe()
    os.write(w, "\n".join(names).encode())
    os.close(w)
    zygote.learn(r)


def test_after_a_worker_talked_to_criu_the_zygote_warms_criu_and_watches_pycriu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime import criu

    if criu.__dict__.get("_rpc") is None:
        pytest.skip("runtime.criu without _rpc")
    try:
        criu._rpc()
    except Exception as exc:  # noqa: BLE001 - pycriu is installed by scripts/setup.sh
        pytest.skip(f"pycriu not importable: {exc}")
    warmed: list[str] = []
    binary = tmp_path / "criu"
    binary.write_text("")
    monkeypatch.setenv("PYMIGRATE_CRIU", str(binary))  # no CRIU run: warm and version are fakes
    monkeypatch.setattr(criu.SwrkCriu, "warm", lambda self: warmed.append("warm") or criu._rpc())
    monkeypatch.setattr(criu.SwrkCriu, "version", lambda self: "4.1.1")
    zygote = server.Zygote(str(tmp_path / "unused.sock"))
    try:
        monkeypatch.setattr(server.Zygote, "preload", lambda self, names: None)
        _learn(zygote, ["migrate.cli.listing"])  # a worker that did not talk to CRIU: nothing
        assert warmed == []
        _learn(zygote, ["google.protobuf", "google.protobuf.message"])
        assert warmed == ["warm"]
        rpc_file = criu._MODULES["rpc_pb2"].__file__
        assert rpc_file in zygote.files  # a pycriu upgrade makes the zygote stale, as a module's change would
        assert str(binary) in zygote.files  # and so does a new CRIU
        _learn(zygote, ["google.protobuf"])  # learned once: not again
        assert warmed == ["warm"]
    finally:
        zygote.sel.close()
