"""Interactive use on the real runtime (issue 13): ``run -it`` / ``-i``, ``attach``, ``exec -it``
and a terminal container across checkpoint + restore. The CLI runs on a real pty of the test's
(``pty.fork``), as under a user's terminal; resizes are TIOCSWINSZ on that pty + SIGWINCH."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import termios
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.integration.cli_helpers import ok, refused, unique
from tests.integration.conftest import PYMIGRATE, REPO
from tests.integration.test_runtime import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox", "netns")]

PROMPT = rb"[#$] "  # busybox then asks for the cursor position (ESC [6n)
CTRL_P_CTRL_Q = b"\x10\x11"


class Terminal:
    """The pymigrate CLI on a pty of ours: type into it, wait for its output, resize it."""

    def __init__(self, root: Path, *args: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # pragma: no cover - the CLI
            os.chdir(REPO)
            os.execv(PYMIGRATE[0], [*PYMIGRATE, "--root", str(root), *args])
        self.seen = b""
        self._unread = b""
        self.code: int | None = None

    def expect(self, pattern: bytes, timeout_s: float = 30.0) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout_s
        while True:
            match = re.search(pattern, self._unread, re.M)
            if match:
                self._unread = self._unread[match.end():]
                return match
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} within {timeout_s}s; output so far: {self.seen!r}"
            if select.select([self.fd], [], [], min(left, 0.5))[0]:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:  # EIO: the CLI is gone
                    data = b""
                assert data, f"the CLI ended before {pattern!r}; output: {self.seen!r}"
                self.seen += data
                self._unread += data

    def type(self, text: bytes) -> None:
        os.write(self.fd, text)

    def until(self, command: bytes, pattern: bytes, timeout_s: float = 30.0) -> re.Match[bytes]:
        """Type ``command`` again until its output matches ``pattern``: a resize travels
        asynchronously (SIGWINCH -> CLI -> shim -> TIOCSWINSZ), so no fixed sleep is enough."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.type(command)
            try:
                return self.expect(pattern, timeout_s=min(1.0, max(deadline - time.monotonic(), 0.01)))
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.kill(self.pid, signal.SIGWINCH)

    def wait(self, timeout_s: float = 30.0) -> int:
        deadline = time.monotonic() + timeout_s
        while self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
                break
            assert time.monotonic() < deadline, f"the CLI did not end; output: {self.seen!r}"
            if select.select([self.fd], [], [], 0.2)[0]:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:
                    pass
        os.close(self.fd)
        return self.code

    def kill(self) -> None:
        if self.code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait()


@pytest.fixture
def term(pm_root: Path) -> Callable[..., Terminal]:
    opened: list[Terminal] = []

    def start(*args: str) -> Terminal:
        t = Terminal(pm_root, *args)
        opened.append(t)
        return t

    yield start
    for t in opened:
        t.kill()


def _state(pm, name: str) -> dict:  # noqa: ANN001
    return json.loads(ok(pm("inspect", name)))[0]["state"]


def test_run_it_shell_resize_detach_attach_and_exit_code(pm, term) -> None:  # noqa: ANN001
    name = unique("tty")
    t = term("run", "-it", "--name", name, "--network", "none", "busybox", "sh")
    t.expect(PROMPT)
    t.type(b"echo $((6*7))\r")
    t.expect(rb"^42\r?$")  # computed by the shell (the echoed input says 6*7)
    t.resize(33, 111)
    t.until(b"stty size\r", rb"^33 111\r?$")
    t.type(b"tty\r")
    t.expect(rb"^/dev/pts/\d+\r?$")  # a terminal of the container's own devpts
    t.type(b"KEEP=kept-$((1+1))\r")
    t.expect(PROMPT)
    t.type(CTRL_P_CTRL_Q)
    assert t.wait() == 0
    assert _state(pm, name)["status"] == "running"  # detached, not ended

    t = term("attach", name)
    t.type(b"echo $KEEP\r")
    t.expect(rb"^kept-2\r?$")  # the same shell
    t.type(b"exit 3\r")
    assert t.wait() == 3
    state = _state(pm, name)
    assert (state["status"], state["exit_code"]) == ("exited", 3)
    assert b"kept-2" in ok(pm("logs", name)).encode()  # the shim copied the terminal to the log
    ok(pm("rm", name))


def test_run_i_pipes_stdin_and_run_t_needs_a_terminal_for_it(pm) -> None:  # noqa: ANN001
    r = pm("run", "-i", "--rm", "--network", "none", "busybox", "cat", input=b"hi\n")
    assert (r.returncode, r.stdout) == (0, b"hi\n"), r.stderr
    r = pm("run", "-i", "--rm", "--network", "none", "busybox", "sh", "-c", "read a; read b; echo $b$a; exit 4",
           input=b"x\ny\n")
    assert (r.returncode, r.stdout) == (4, b"yx\n"), r.stderr
    r = pm("--json", "run", "-it", "--rm", "busybox", "sh", input=b"")  # stdin is a pipe here
    assert refused(r, "InvalidArgument")["error"] == "the input device is not a TTY"


def test_a_user_owns_the_terminal_of_a_run_it_container(term) -> None:  # noqa: ANN001
    t = term("run", "-it", "--rm", "-u", "nobody", "--network", "none", "busybox", "sh", "-c",
             "stat -c 'owner=%U' $(tty); exit 2")
    t.expect(rb"^owner=nobody\r?$")  # runc's rule: the console belongs to the process's user
    assert t.wait() == 2


def test_attach_to_a_container_without_terminal_streams_new_output_and_stdin(pm) -> None:  # noqa: ANN001
    name = unique("noty")
    ok(pm("run", "-di", "--name", name, "--network", "none", "busybox", "sh", "-c",
          "echo early; read x; echo got $x; exit 3"))
    wait_for(lambda: ok(pm("logs", name)) == "early\n", 30, "the container's first line")
    # the container answers only what attach sends, after attach measured the log: deterministic
    r = pm("attach", name, input=b"hello\n")
    assert (r.returncode, r.stdout) == (3, b"got hello\n"), r.stderr
    assert ok(pm("logs", name)) == "early\ngot hello\n"
    ok(pm("rm", name))


def test_a_signal_to_a_foreground_run_i_reaches_the_container(pm_root) -> None:  # noqa: ANN001
    import subprocess

    cli = subprocess.Popen([*PYMIGRATE, "--root", str(pm_root), "run", "-i", "--rm", "--network", "none", "busybox", "sh",
                            "-c", "trap 'echo got-int; exit 9' INT; echo ready; while true; do sleep 0.1; done"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        assert cli.stdout is not None
        assert cli.stdout.readline() == b"ready\n"
        cli.send_signal(signal.SIGINT)  # as Ctrl-C in the user's shell: docker's sig-proxy
        out, err = cli.communicate(timeout=30)
        assert (cli.returncode, out) == (9, b"got-int\n"), err
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def test_exec_it_gets_a_terminal_that_follows_resizes(pm, term) -> None:  # noqa: ANN001
    name = unique("exe")
    ok(pm("run", "-d", "--name", name, "--network", "none", "busybox", "sleep", "1000"))
    t = term("exec", "-it", name, "sh")
    t.expect(PROMPT)
    t.type(b"tty; stty size\r")
    t.expect(rb"^/dev/pts/\d+\r?$")
    t.resize(21, 77)
    t.until(b"stty size\r", rb"^21 77\r?$")
    t.type(b"exit 5\r")
    assert t.wait() == 5
    assert _state(pm, name)["status"] == "running"
    ok(pm("rm", "-f", name))


@pytest.mark.requires("criu")
def test_a_terminal_container_keeps_its_shell_across_checkpoint_and_restore(pm, term) -> None:  # noqa: ANN001
    name = unique("ttycr")
    ok(pm("run", "-dit", "--name", name, "--network", "none", "busybox", "sh"))
    t = term("attach", name)
    t.expect(PROMPT)  # the first prompt, kept by the shim for the first client
    t.type(b"MARK=set-before-$((2*21))\r")
    t.expect(PROMPT)
    t.type(CTRL_P_CTRL_Q)
    assert t.wait() == 0
    checkpoint_id = json.loads(ok(pm("--json", "checkpoint", name)))["checkpoint_id"]
    assert _state(pm, name)["status"] == "exited"
    ok(pm("restore", checkpoint_id))
    assert _state(pm, name)["restored_from"] == checkpoint_id

    t = term("attach", name)
    t.type(b"echo $MARK-after; stty size\r")
    t.expect(rb"^set-before-42-after\r?$")  # the restored shell, driven through the new master
    t.resize(30, 90)
    t.until(b"stty size\r", rb"^30 90\r?$")
    t.type(b"exit 6\r")
    assert t.wait() == 6
    ok(pm("rm", name))


@pytest.mark.requires("criu")
def test_checkpoint_of_a_stdin_pipe_container_is_refused_before_the_freeze(pm) -> None:  # noqa: ANN001
    name = unique("pipe")
    ok(pm("run", "-di", "--name", name, "--network", "none", "busybox", "cat"))
    r = pm("--json", "checkpoint", name)
    answer = refused(r, "Unsupported")
    assert "run -i without -t" in answer["error"] and "-it" in answer["hint"]
    state = _state(pm, name)
    assert state["status"] == "running" and state["frozen_by"] is None  # never frozen
    ok(pm("rm", "-f", name))


def test_a_detached_client_of_a_busy_terminal_does_not_take_the_shim_down(pm, term) -> None:  # noqa: ANN001
    """The shim writes output to an attach client that just detached: an EPIPE for it, not a
    SIGPIPE that killed the shim and, with the terminal's master, the container."""
    name = unique("busy")
    ok(pm("run", "-dit", "--name", name, "--network", "none", "busybox", "sh", "-c",
          "while true; do echo tick; usleep 200; done"))
    try:
        for _ in range(8):
            t = term("attach", name)
            t.expect(rb"^tick\r?$")
            t.type(CTRL_P_CTRL_Q)
            assert t.wait() == 0
            time.sleep(0.2)  # output goes on while the client is gone
            assert _state(pm, name)["status"] == "running"
            assert os.path.exists(f"/proc/{_state(pm, name)['shim_pid']}"), "the shim died"
    finally:
        ok(pm("rm", "-f", name))
