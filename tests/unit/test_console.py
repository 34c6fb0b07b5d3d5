"""The attach protocol, the shim's console server (on a real pty and unix socket, no root) and
the client's detach keys (runtime/console.py, migrate/cli/attach.py)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from migrate.cli.attach import DetachScanner, parse_detach_keys
from runtime import console
from runtime.container import validate_fields
from runtime.errors import InvalidArgument, InvalidSpec
from runtime.spec import ContainerSpec


def test_frames_split_and_join_across_reads() -> None:
    data = console.pack(console.DATA, b"hello") + console.pack_resize(24, 80) + console.pack_exit(-3)
    reader = console.FrameReader()
    frames = []
    for i in range(len(data)):  # one byte at a time
        frames += reader.feed(data[i:i + 1])
    assert frames[0] == (console.DATA, b"hello")
    assert console.unpack_resize(frames[1][1]) == (24, 80)
    assert console.unpack_exit(frames[2][1]) == -3


@pytest.mark.parametrize("raw, message", [
    (b"z\0\0\0\0", "unknown frame kind"),
    (b"d\xff\xff\xff\xff", "at most"),
])
def test_frame_reader_refuses_bad_frames(raw: bytes, message: str) -> None:
    with pytest.raises(console.FrameError, match=message):
        console.FrameReader().feed(raw)


def test_resize_and_exit_payloads_are_checked() -> None:
    with pytest.raises(console.FrameError):
        console.unpack_resize(b"\0")
    with pytest.raises(console.FrameError):
        console.unpack_exit(b"\0\0")


def test_detach_keys_parse_as_docker() -> None:
    assert parse_detach_keys("ctrl-p,ctrl-q") == b"\x10\x11"
    assert parse_detach_keys("ctrl-@,a") == b"\x00a"
    assert parse_detach_keys("") == b""
    with pytest.raises(InvalidArgument, match="ctrl-<key>"):
        parse_detach_keys("ctrl-pq")


def test_detach_scanner_holds_a_prefix_and_passes_it_on_when_it_breaks() -> None:
    scan = DetachScanner(b"\x10\x11")
    assert scan.feed(b"ls\x10") == (b"ls", False)  # ctrl-p held back
    assert scan.feed(b"x") == (b"\x10x", False)  # not the sequence: both go on
    assert scan.feed(b"\x10\x10") == (b"\x10", False)  # the second ctrl-p may start it
    assert scan.feed(b"\x11rest") == (b"", True)
    assert DetachScanner(b"").feed(b"\x10\x11") == (b"\x10\x11", False)


def test_old_records_have_no_terminal_and_fields_are_checked() -> None:
    spec = ContainerSpec.from_dict({"container_id": "a" * 32, "name": "n", "image": "i", "image_digest": "d", "command": ["sh"]})
    assert (spec.tty, spec.interactive) == (False, False)
    base = dict(name=None, hostname=None, env=(), workdir="/", memory_bytes=None, cpus=None, pids_limit=None,
                network="none", ip=None, volumes=(), cgroup_parent=None)
    with pytest.raises(InvalidSpec) as exc:
        validate_fields(**base, tty="yes")  # type: ignore[arg-type]
    assert exc.value.field == "tty"
    with pytest.raises(InvalidSpec) as exc:
        validate_fields(**base, interactive=1)  # type: ignore[arg-type]
    assert exc.value.field == "interactive"
    with pytest.raises(InvalidSpec, match="restart policy always cannot be combined with -t or -i"):
        validate_fields(**base, tty=True, restart="always")


def _connect(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(tmp_path / console.ATTACH_SOCKET))
    return sock


def _read_frames(sock: socket.socket, until: bytes, timeout_s: float = 5.0) -> list[tuple[bytes, bytes]]:
    reader = console.FrameReader()
    frames: list[tuple[bytes, bytes]] = []
    sock.settimeout(timeout_s)
    while not any(kind == until for kind, _ in frames):
        data = sock.recv(65536)
        assert data, f"closed before {until!r}: {frames}"
        frames += reader.feed(data)
    return frames


def _read_slave(fd: int, want: bytes, timeout_s: float = 5.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout_s
    while want not in got and time.monotonic() < deadline:
        got += os.read(fd, 1024)
    return got


def test_console_server_replays_relays_resizes_and_says_the_exit(tmp_path: Path) -> None:
    master, slave = os.openpty()
    log_fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    server = console.serve(tmp_path / console.ATTACH_SOCKET, console.Started(1, master_fd=master, log_fd=log_fd, interactive=True))
    assert server is not None
    try:
        assert (tmp_path / console.ATTACH_SOCKET).stat().st_mode & 0o777 == 0o600
        os.write(slave, b"prompt$ ")  # printed before anyone attached
        time.sleep(0.2)
        client = _connect(tmp_path)
        client.sendall(console.pack_resize(33, 111) + console.pack(console.DATA, b"typed\n"))
        assert _read_slave(slave, b"typed").startswith(b"typed")
        assert console.get_size(slave) == (33, 111)
        os.write(slave, b"output")
        frames = _read_frames(client, console.DATA)
        text = b"".join(p for k, p in frames if k == console.DATA)
        while b"output" not in text:
            text += b"".join(p for k, p in _read_frames(client, console.DATA) if k == console.DATA)
        assert text.startswith(b"prompt$ ")
        os.close(slave)
        slave = -1
        server.finish(3)
        frames = _read_frames(client, console.EXIT)
        assert console.unpack_exit(frames[-1][1]) == 3
        assert client.recv(1) == b""  # closed after the exit
        assert b"prompt$ " in (tmp_path / "log").read_bytes() and b"output" in (tmp_path / "log").read_bytes()
        assert not (tmp_path / console.ATTACH_SOCKET).exists()
        client.close()
    finally:
        if slave >= 0:
            os.close(slave)


def test_a_client_that_connects_as_the_init_exits_still_gets_the_output_and_the_exit(tmp_path: Path) -> None:
    # run -it of a command that ends at once: the CLI's connect lands in the listen backlog while
    # the shim is already finishing; it must not be dropped unanswered (it printed nothing: CI)
    master, slave = os.openpty()
    server = console.ConsoleServer(tmp_path / console.ATTACH_SOCKET, console.Started(1, master_fd=master))
    os.write(slave, b"owner=nobody\n")  # the terminal makes it \r\n
    os.close(slave)
    client = _connect(tmp_path)  # accepted by nobody yet
    try:
        server._exit_code = 2  # the init has exited before the serving thread looked at anything
        server._serve()
        frames = _read_frames(client, console.EXIT)
        assert b"".join(p for k, p in frames if k == console.DATA) == b"owner=nobody\r\n"
        assert console.unpack_exit(frames[-1][1]) == 2
        assert not (tmp_path / console.ATTACH_SOCKET).exists()
    finally:
        client.close()


def test_console_server_feeds_a_stdin_pipe_until_its_end(tmp_path: Path) -> None:
    r, w = os.pipe()
    server = console.serve(tmp_path / console.ATTACH_SOCKET, console.Started(1, stdin_fd=w, interactive=True))
    assert server is not None
    with _connect(tmp_path) as client:
        client.sendall(console.pack(console.DATA, b"hi\n") + console.pack(console.STDIN_EOF))
        with os.fdopen(r, "rb") as f:
            assert f.read() == b"hi\n"  # EOF: the shim closed its end
        server.finish(0)


def test_a_bad_client_is_dropped_and_the_server_goes_on(tmp_path: Path) -> None:
    r, w = os.pipe()
    server = console.serve(tmp_path / console.ATTACH_SOCKET, console.Started(1, stdin_fd=w, interactive=True))
    assert server is not None
    with _connect(tmp_path) as bad:
        bad.sendall(b"garbage!")
        bad.settimeout(5)
        assert bad.recv(1) == b""
    with _connect(tmp_path) as good:
        good.sendall(console.pack(console.DATA, b"ok") + console.pack(console.STDIN_EOF))
        with os.fdopen(r, "rb") as f:
            assert f.read() == b"ok"
        server.finish(0)


def test_no_server_without_terminal_or_stdin(tmp_path: Path) -> None:
    assert console.serve(tmp_path / "s", 42) is None
    assert console.init_pid_of(42) == 42
    assert console.init_pid_of(console.Started(7)) == 7


class _Ctx:
    def __init__(self, engine: object) -> None:
        self.engine = engine
        self.json = False


def test_foreground_run_it_is_refused_before_anything_is_created() -> None:
    import argparse

    from migrate.cli.containers import _check_attachable
    from runtime.errors import Unsupported

    args = argparse.Namespace(tty=True, interactive=True, detach_keys="ctrl-p,ctrl-q")
    with pytest.raises(Unsupported, match="no remote attach"):
        _check_attachable(args, _Ctx(object()))  # a RemoteEngine has no attach_socket

    class Local:
        def attach_socket(self, name: str) -> None: ...

    with pytest.raises(InvalidArgument, match="ctrl-<key>"):
        _check_attachable(argparse.Namespace(tty=True, interactive=False, detach_keys="ctrl-xx"), _Ctx(Local()))
    r, w = os.pipe()  # stdin that is not a terminal
    saved = os.dup(0)
    try:
        os.dup2(r, 0)
        with pytest.raises(InvalidArgument, match="not a TTY"):
            _check_attachable(args, _Ctx(Local()))
        _check_attachable(argparse.Namespace(tty=False, interactive=True, detach_keys=""), _Ctx(Local()))  # -i alone: fine
    finally:
        os.dup2(saved, 0)
        for fd in (saved, r, w):
            os.close(fd)


def test_a_socket_path_longer_than_sun_path_still_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / console.ATTACH_SOCKET
    assert len(str(path)) > 108
    r, w = os.pipe()
    server = console.serve(path, console.Started(1, stdin_fd=w, interactive=True))
    assert server is not None and path.exists() and path.stat().st_mode & 0o777 == 0o600
    with console.connect(path) as client:
        client.sendall(console.pack(console.DATA, b"deep") + console.pack(console.STDIN_EOF))
        with os.fdopen(r, "rb") as f:
            assert f.read() == b"deep"
        server.finish(0)
    assert not path.exists()
