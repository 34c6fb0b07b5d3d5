"""Exec/Attach/Stats message bridging (migrate/remote/exec_stream.py, attach_stream.py,
stats_stream.py) with fakes for the engine and the gRPC call, and real helper processes
(sh on pipes or a pty) in place of the daemon's ``python -m migrate exec``."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from migrate._proto.pymigrate.v1 import host_pb2 as pb
from migrate.remote import convert as cv
from migrate.remote.attach_stream import DETACHED, relay
from migrate.remote.exec_stream import bridge, exec_argv, serve_exec, spawn
from migrate.remote.stats_stream import serve_stats
from runtime.errors import InvalidArgument, InvalidState
from runtime.stats import ContainerStats


def _collect(responses: Iterator[Any]) -> tuple[bytes, bytes, int | None]:
    out, err, code = b"", b"", None
    for r in responses:
        kind = r.WhichOneof("kind")
        if kind == "stdout":
            out += r.stdout
        elif kind == "stderr":
            err += r.stderr
        else:
            code = r.exit_code
    return out, err, code


class Held:
    """A request stream that stays open (as a live caller's) until ``release``."""

    def __init__(self, *messages: Any) -> None:
        self.messages = list(messages)
        self.done = threading.Event()

    def release(self) -> None:
        self.done.set()

    def __iter__(self) -> Iterator[Any]:
        yield from self.messages
        self.done.wait(10)


def test_pipes_keep_stdout_and_stderr_apart_and_close_stdin_ends_input() -> None:
    helper = spawn(["sh", "-c", "echo out; echo err >&2; cat; exit 3"], tty=False, stdin=True)
    requests = Held(pb.ExecRequest(stdin=b"typed\n"), pb.ExecRequest(close_stdin=True))
    try:
        out, err, code = _collect(bridge(helper, requests, None, pb.ExecResponse))
    finally:
        requests.release()
    assert (out, err, code) == (b"out\ntyped\n", b"err\n", 3)


def test_a_pty_helper_gets_the_size_and_a_resize_and_a_signal_becomes_128_plus_n() -> None:
    script = 'stty size; trap "stty size" WINCH; read x; echo "got $x"; kill -TERM $$'
    helper = spawn(["sh", "-c", script], tty=True, stdin=True, size=(12, 34))
    requests = Held(pb.ExecRequest(stdin=b"hi\n"))
    try:
        out, err, code = _collect(bridge(helper, requests, None, pb.ExecResponse))
    finally:
        requests.release()
    assert b"12 34" in out and b"got hi" in out and err == b""
    assert code == 128 + 15


def test_the_end_of_the_request_stream_kills_the_helper() -> None:
    helper = spawn(["sleep", "100"], tty=False, stdin=False)
    out, err, code = _collect(bridge(helper, iter([]), None, pb.ExecResponse))  # the caller went away
    assert code == 128 + 9


class FakeContainer:
    def __init__(self, running: bool) -> None:
        self.running = running

    def require(self, operation: str) -> None:
        if not self.running:
            raise InvalidState("c1", operation, "exited", ("running",))


class FakeRuntime:
    def __init__(self, running: bool = True) -> None:
        self.running = running

    def container(self, name: str) -> FakeContainer:
        return FakeContainer(self.running)


class FakeEngine:
    root = Path("/state")

    def __init__(self, running: bool = True) -> None:
        self.runtime = FakeRuntime(running)


def _start(**fields: Any) -> pb.ExecRequest:
    return pb.ExecRequest(start=pb.ExecStart(**fields))


def test_serve_exec_builds_the_helper_command_and_passes_the_size() -> None:
    seen: dict[str, Any] = {}

    def spawner(argv: list[str], **kw: Any) -> Any:
        seen.update(argv=argv, **kw)
        return spawn(["sh", "-c", "echo ran"], tty=False, stdin=False)

    start = _start(name="c1", command=["--", "-x"], env=["A=1"], workdir="/w", user="u:g", tty=True, interactive=True,
                   terminal_size=pb.TerminalSize(rows=5, cols=6))
    requests = Held(start)  # open until the end: a request stream's end would kill the helper
    try:
        out, _, code = _collect(serve_exec(FakeEngine(), iter(requests), None, spawner=spawner))
    finally:
        requests.release()
    assert (out, code) == (b"ran\n", 0)
    assert seen["argv"][-12:] == ["/state", "exec", "--interactive", "--tty", "--env=A=1", "--workdir=/w", "--user=u:g",
                                  "c1", "--", "--", "--", "-x"]
    assert (seen["tty"], seen["stdin"], seen["size"]) == (True, True, (5, 6))


@pytest.mark.parametrize("fields, message", [
    ({"name": "c1", "command": ["sh"], "env": ["HOME"]}, "expected KEY=VALUE"),  # would read the daemon's env
    ({"name": "-rf", "command": ["sh"]}, "invalid container name"),
    ({"name": "c1"}, "no command given"),
])
def test_serve_exec_refuses_bad_starts(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        list(serve_exec(FakeEngine(), iter([_start(**fields)]), None, spawner=None))  # type: ignore[arg-type]


def test_serve_exec_needs_a_running_container_and_a_start_first() -> None:
    with pytest.raises(InvalidState):
        list(serve_exec(FakeEngine(running=False), iter([_start(name="c1", command=["sh"])]), None))
    with pytest.raises(InvalidArgument, match="first Exec message must carry start"):
        list(serve_exec(FakeEngine(), iter([pb.ExecRequest(stdin=b"x")]), None))


def test_exec_argv_of_a_plain_command() -> None:
    argv = exec_argv(Path("/r"), pb.ExecStart(name="web", command=["ls", "-l"]))
    assert argv[-6:] == ["/r", "exec", "web", "--", "ls", "-l"]


# --- the caller's side ---------------------------------------------------------------------------


class FakeCall:
    """A bidirectional call: reads the requests in a thread; answers ``responses`` once the
    requests say close_stdin (or at once), or fails CANCELLED when cancelled first."""

    def __init__(self, requests: Iterator[Any], responses: list[Any], *, after_close: bool = True) -> None:
        self.seen: list[Any] = []
        self.responses = responses
        self.closed = threading.Event()
        self.cancelled = threading.Event()
        if not after_close:
            self.closed.set()
        threading.Thread(target=self._read, args=(requests,), daemon=True).start()

    def _read(self, requests: Iterator[Any]) -> None:
        for r in requests:
            self.seen.append(r)
            if r.WhichOneof("kind") == "close_stdin":
                self.closed.set()

    def cancel(self) -> None:
        self.cancelled.set()

    def __iter__(self) -> Iterator[Any]:
        while not self.closed.wait(0.02):
            if self.cancelled.is_set():
                raise Cancelled()
        yield from self.responses


class Cancelled(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED


def test_relay_without_a_tty_sends_stdin_then_its_end_and_splits_the_output(tmp_path: Path) -> None:
    stdin = tmp_path / "in"
    stdin.write_bytes(b"abc")  # a regular file: select(2) takes it, epoll would not
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    calls: list[FakeCall] = []
    responses = [pb.ExecResponse(stdout=b"o1"), pb.ExecResponse(stderr=b"e1"), pb.ExecResponse(exit_code=4)]

    def open_call(requests: Iterator[Any]) -> FakeCall:
        calls.append(FakeCall(requests, responses))
        return calls[0]

    with open(stdin, "rb") as f:
        code = relay(open_call, _start(name="c1", command=["cat"]), pb.ExecRequest, tty=False, interactive=True,
                     stdin_fd=f.fileno(), stdout_fd=out_w, stderr_fd=err_w)
    os.close(out_w)
    os.close(err_w)
    assert code == 4
    assert (os.read(out_r, 100), os.read(err_r, 100)) == (b"o1", b"e1")
    kinds = [(r.WhichOneof("kind"), getattr(r, r.WhichOneof("kind"))) for r in calls[0].seen]
    assert kinds[1:] == [("stdin", b"abc"), ("close_stdin", True)]


def test_relay_on_a_terminal_sends_its_size_and_detaches_on_the_keys() -> None:
    master, slave = os.openpty()
    out_r, out_w = os.pipe()
    calls: list[FakeCall] = []

    def open_call(requests: Iterator[Any]) -> FakeCall:
        calls.append(FakeCall(requests, [], after_close=True))
        os.write(master, b"ls\r\x10\x11")  # typed once the terminal is raw, then Ctrl-P Ctrl-Q
        return calls[0]

    from migrate.cli.attach import remote_terminal
    from runtime.console import set_size

    set_size(slave, 20, 70)
    try:
        code = relay(open_call, pb.AttachRequest(name="c1"), pb.AttachRequest, tty=True, interactive=True,
                     detach_keys=b"\x10\x11", send_size=True, terminal=remote_terminal(slave, out_w),
                     stdin_fd=slave, stdout_fd=out_w, stderr_fd=out_w)
    finally:
        for fd in (master, slave, out_r, out_w):
            os.close(fd)
    assert code is DETACHED and calls[0].cancelled.is_set()
    seen = calls[0].seen
    assert seen[0].name == "c1" and (seen[1].resize.rows, seen[1].resize.cols) == (20, 70)
    assert b"".join(r.stdin for r in seen if r.WhichOneof("kind") == "stdin") == b"ls\r"  # not the detach keys


# --- stats -----------------------------------------------------------------------------------------


def test_stats_round_trip_keeps_unknowns_unknown() -> None:
    s = ContainerStats(name="c1", container_id="ab", status="running", read_at_s=12.5, cpu_usage_us=900, online_cpus=2,
                       memory_usage_bytes=1 << 20, memory_limit_bytes=1 << 30, memory_percent=0.1, pids_current=3,
                       block_io_source="proc")
    back = cv.stats_from_pb(cv.stats_to_pb(s, 1.0))
    assert back == s and back.net_rx_bytes is None and back.cpu_percent is None


class StatsEngine:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def containers(self, all: bool = False) -> list[Any]:
        return []

    def stats(self, name: str, previous: Any = None) -> ContainerStats:
        self.calls.append((name, previous))
        return ContainerStats(name=name, container_id="id", status="running", read_at_s=float(len(self.calls)))


class Context:
    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def add_callback(self, fn: Any) -> None:
        self.callbacks.append(fn)


def test_stats_stream_passes_the_previous_sample_and_stops_when_the_call_ends() -> None:
    engine, context = StatsEngine(), Context()
    stream = serve_stats(engine, pb.StatsRequest(names=["c1"], stream=True, interval_s=0.1), context)
    first, second = next(stream), next(stream)
    for fn in context.callbacks:
        fn()
    assert list(stream) == []  # the loop notices the end at its next wait
    assert [r.samples[0].read_at_monotonic_s for r in (first, second)] == [1.0, 2.0]
    assert engine.calls[0][1] is None and engine.calls[1][1].read_at_s == 1.0
    one = list(serve_stats(StatsEngine(), pb.StatsRequest(names=["c1"]), Context()))
    assert len(one) == 1


def test_exec_and_attach_are_behind_the_token_like_every_call() -> None:
    from migrate.errors import AuthError
    from migrate.remote.client import RemoteEngine
    from migrate.remote.server import create_server
    from runtime.errors import Unsupported
    from tests.fakes.engine import FakeEngine

    sockdir = Path(tempfile.mkdtemp(prefix="pmx-", dir="/tmp"))  # short: a unix socket path
    server, _ = create_server(FakeEngine(), f"unix:{sockdir}/d.sock", token="s3cret")
    server.start()
    out_r, out_w = os.pipe()
    try:
        with RemoteEngine(server.target) as stranger, pytest.raises(AuthError):
            stranger.exec("c1", ("true",), stdout_fd=out_w, stderr_fd=out_w)
        with RemoteEngine(server.target, token="s3cret") as client:
            with pytest.raises(Unsupported, match="runs no containers of its own"):  # past the token check
                client.exec("c1", ("true",), stdout_fd=out_w, stderr_fd=out_w)
            with pytest.raises(Unsupported, match="runs no containers of its own"):
                client.attach("c1", tty=False, interactive=False, stdout_fd=out_w, stderr_fd=out_w)
    finally:
        server.stop(0)
        os.close(out_r)
        os.close(out_w)
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.parametrize("command", [["--", "-x"], ["sh", "-c", "x"], ["--"], ["-x", "--"]])
def test_the_helper_parses_back_the_very_command(command: list[str]) -> None:
    from migrate.cli import build_parser

    argv = exec_argv(Path("/r"), pb.ExecStart(name="c1", command=command))
    args = build_parser("exec").parse_args(argv[argv.index("exec"):])
    parsed = list(args.command)
    if parsed and parsed[0] == "--":  # what cmd_exec drops
        parsed = parsed[1:]
    assert (args.name, parsed) == ("c1", command)


def test_a_background_process_holding_the_pipes_does_not_hold_the_call() -> None:
    import time

    helper = spawn(["sh", "-c", "echo hi; sleep 3 & exit 0"], tty=False, stdin=False)
    requests = Held()
    started = time.monotonic()
    try:
        out, _, code = _collect(bridge(helper, requests, None, pb.ExecResponse))
    finally:
        requests.release()
    assert (out, code) == (b"hi\n", 0)
    assert time.monotonic() - started < 2.5
