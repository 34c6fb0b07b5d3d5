"""create / start / restart / rename and the idempotent stop, kill and rm -f (issue 14): the
parser, the CLI over a fake engine, and the runtime's decisions over a real state store (no
container is started: the shim launch is replaced)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from migrate import cli
from migrate.cli import build_parser
from migrate.cli.containers import run_options
from runtime.errors import Busy, ContainerExists, ContainerNotFound, InvalidArgument, InvalidState
from runtime.rename import rename
from runtime.spec import ContainerInfo, ContainerSpec, ContainerState, FreezeRecord
from runtime.start import restart, start
from runtime.state import new_container_id


def parse(*argv: str) -> Any:
    return build_parser().parse_args(list(argv))


# -- parser -------------------------------------------------------------------------------------


def test_create_takes_runs_flags_but_not_detach() -> None:
    args = parse("create", "--name", "web", "-e", "A=1", "-p", "8080:80", "--rm", "-l", "tier=db", "-t", "-i",
                 "--restart", "no", "busybox", "sh", "-c", "echo hi")
    o = run_options(args)
    assert args.handler.__name__ == "cmd_create"
    assert (o.name, o.env, o.command, o.tty, o.interactive) == ("web", ("A=1",), ("sh", "-c", "echo hi"), True, True)
    assert o.ports[0].host_port == 8080 and o.labels == {"tier": "db"}
    assert o.auto_remove is True  # create --rm: removed by its shim after the exit it has once started
    with pytest.raises(SystemExit):
        parse("create", "-d", "busybox")


def test_run_keeps_its_flags_after_the_split() -> None:
    args = parse("run", "-d", "--rm", "--name", "x", "busybox", "true")
    assert args.handler.__name__ == "cmd_run" and run_options(args).auto_remove is True
    assert run_options(parse("run", "--rm", "busybox", "true")).auto_remove is False  # foreground: the CLI removes it


def test_start_restart_rename_parse() -> None:
    args = parse("start", "-a", "-i", "--detach-keys", "ctrl-x", "a")
    assert (args.attach, args.interactive, args.detach_keys, args.names) == (True, True, "ctrl-x", ["a"])
    assert parse("start", "a", "b").names == ["a", "b"]
    args = parse("restart", "-t", "3", "a", "b")
    assert (args.time, args.names) == (3.0, ["a", "b"])
    args = parse("rename", "old", "new")
    assert (args.name, args.new_name) == ("old", "new")
    for bad in (("start",), ("restart",), ("rename", "only-one"), ("rename", "a", "b", "c")):
        with pytest.raises(SystemExit):
            parse(*bad)


# -- the CLI over a fake engine -------------------------------------------------------------------


def _info(name: str, status: str = "running") -> ContainerInfo:
    spec = ContainerSpec(container_id="ab" * 16, name=name, image="busybox", image_digest="sha256:" + "0" * 64, command=("true",))
    return ContainerInfo(spec=spec, state=ContainerState(status=status))  # type: ignore[arg-type]


class Engine:
    """What the lifecycle commands call; ``missing`` names do not exist."""

    def __init__(self, missing: tuple[str, ...] = ()) -> None:
        self.missing = missing
        self.calls: list[tuple[Any, ...]] = []

    def _known(self, name: str) -> None:
        if name in self.missing:
            raise ContainerNotFound(name)

    def create(self, options: Any) -> ContainerInfo:
        self.calls.append(("create", options.name))
        return _info(options.name or "x", "created")

    def start(self, name: str) -> ContainerInfo:
        self._known(name)
        self.calls.append(("start", name))
        return _info(name)

    def restart(self, name: str, timeout_s: float = 10.0) -> ContainerInfo:
        self._known(name)
        self.calls.append(("restart", name, timeout_s))
        return _info(name)

    def rename(self, name: str, new_name: str) -> ContainerInfo:
        self._known(name)
        self.calls.append(("rename", name, new_name))
        return _info(new_name)

    def remove(self, name: str, force: bool = False) -> bool:
        if name in self.missing:
            if force:
                return False
            raise ContainerNotFound(name)
        self.calls.append(("remove", name, force))
        return True


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Engine:
    fake = Engine(missing=("ghost",))
    monkeypatch.setattr("migrate.engine.engine_for", lambda args: fake)
    return fake


def test_create_prints_the_full_id(engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["create", "--name", "web", "busybox", "true"]) == 0
    assert capsys.readouterr().out == "ab" * 16 + "\n"
    assert engine.calls == [("create", "web")]


def test_start_and_restart_print_each_name_and_fail_125_for_a_missing_one(engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["start", "a", "ghost", "b"]) == 125
    out = capsys.readouterr()
    assert out.out.split() == ["a", "b"] and "no such container: ghost" in out.err
    assert cli.main(["restart", "-t", "2", "a"]) == 0
    assert capsys.readouterr().out == "a\n" and engine.calls[-1] == ("restart", "a", 2.0)


def test_start_attach_refuses_several_containers(engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["start", "-a", "a", "b"]) == 125
    assert "cannot attach to 2 containers at once" in capsys.readouterr().err
    assert not any(c[0] == "start" for c in engine.calls)


def test_start_attach_of_a_terminal_container_without_attach_is_refused_before_it_starts(
        engine: Engine, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    info = _info("term", "created")
    monkeypatch.setattr(engine, "inspect", lambda name: dataclasses.replace(info, spec=dataclasses.replace(info.spec, tty=True)),
                        raising=False)  # a remote engine: no attach_socket
    assert cli.main(["start", "-a", "term"]) == 125
    assert "only on the container's own host" in capsys.readouterr().err
    assert engine.calls == []


def test_start_attach_returns_127_when_the_command_is_not_found(
        engine: Engine, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.errors import ContainerError

    def start(name: str) -> ContainerInfo:
        err = ContainerError("container command not found: nosuchcmd")
        err.exit_code = 127  # type: ignore[attr-defined]
        raise err

    monkeypatch.setattr(engine, "inspect", lambda name: _info(name, "created"), raising=False)
    monkeypatch.setattr(engine, "start", start)
    assert cli.main(["start", "-a", "bad"]) == 127  # as a foreground run (podman's convention)
    assert "command not found" in capsys.readouterr().err
    assert cli.main(["start", "bad"]) == 125  # without -a: pymigrate's failure, as docker start


def test_rename_prints_nothing_but_json(engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["rename", "a", "b"]) == 0
    assert capsys.readouterr().out == "" and engine.calls == [("rename", "a", "b")]
    assert cli.main(["rename", "--json", "a", "c"]) == 0
    assert json.loads(capsys.readouterr().out)["spec"]["name"] == "c"


def test_rm_force_of_a_missing_container_is_silent_success(engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["rm", "-f", "ghost", "a"]) == 0
    out = capsys.readouterr()
    assert out.out == "a\n" and out.err == ""  # docker: nothing printed for the missing one
    assert cli.main(["rm", "ghost"]) == 125
    assert "no such container: ghost" in capsys.readouterr().err


# -- the runtime's decisions (real state store, no processes) -------------------------------------


@pytest.fixture
def rt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from runtime.runtime import Runtime

    runtime = Runtime(tmp_path)

    def record(name: str) -> ContainerInfo:  # no cgroups in unit tests: the info is the record
        c = runtime.container(name)
        return ContainerInfo(spec=c.spec, state=c.state)

    monkeypatch.setattr(runtime, "inspect", record)
    return runtime


def _add(rt: Any, name: str, **state: Any) -> str:
    spec = ContainerSpec(container_id=new_container_id(), name=name, image="busybox", image_digest="sha256:" + "0" * 64,
                         command=("true",))
    rt.store.create(spec, ContainerState(**state))
    return spec.container_id


def test_stop_and_kill_of_a_created_or_exited_container_succeed(rt: Any) -> None:
    cid = _add(rt, "done", status="exited", exit_code=0)
    _add(rt, "new")
    assert rt.stop("done").state.status == "exited"
    assert rt.store.load_state(cid).manually_stopped  # a policy restart pending is cancelled
    assert rt.stop("new").state.status == "created"
    rt.kill("done")
    rt.kill("new", 15)
    with pytest.raises(ContainerNotFound):
        rt.stop("ghost")
    with pytest.raises(ContainerNotFound):
        rt.kill("ghost")


def test_remove_force_of_a_missing_container_is_false_plain_remove_raises(rt: Any) -> None:
    assert rt.remove("ghost", force=True) is False
    with pytest.raises(ContainerNotFound):
        rt.remove("ghost")


def test_start_refuses_a_checkpointed_container_with_the_restore_hint(rt: Any) -> None:
    _add(rt, "saved", status="exited", exit_code=137, checkpointed="c0ffee")
    _add(rt, "moved", status="exited", exit_code=137, checkpointed="migrated")
    with pytest.raises(InvalidState) as err:
        start(rt, "saved")
    assert "exited (checkpointed)" in err.value.message and "pymigrate restore c0ffee" in (err.value.hint or "")
    with pytest.raises(InvalidState) as err:
        restart(rt, "moved")
    assert "migrated" in (err.value.hint or "")


def test_start_of_a_running_container_does_nothing_of_a_restore_in_progress_is_busy(rt: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import runtime.start

    launched: list[str] = []
    monkeypatch.setattr(runtime.start, "launch", lambda rt_, spec: launched.append(spec.name))
    monkeypatch.setattr(rt, "_reconcile", lambda c: c)  # "running" without a process: as recorded
    _add(rt, "up", status="running", pid=os.getpid())
    _add(rt, "half", restored_from="c0ffee")
    _add(rt, "fresh")
    _add(rt, "old", status="exited", exit_code=1)
    assert start(rt, "up").state.status == "running"
    with pytest.raises(Busy, match="half"):
        start(rt, "half")
    start(rt, "fresh")
    start(rt, "old")
    assert launched == ["fresh", "old"]


def test_start_is_refused_while_a_restore_holds_the_id(rt: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import runtime.start

    monkeypatch.setattr(runtime.start, "launch", lambda rt_, spec: None)
    cid = _add(rt, "c")
    with rt.store.hold(f"id:{cid}", "restore container"), pytest.raises(Busy):
        start(rt, "c")


def test_rename(rt: Any) -> None:
    cid = _add(rt, "web", status="exited", exit_code=0)  # names that are no hex id prefix
    _add(rt, "db")
    assert rename(rt, "web", "web2").spec.name == "web2"
    assert rt.store.resolve("web2") == cid
    with pytest.raises(ContainerNotFound):
        rt.store.resolve("web")
    with pytest.raises(ContainerExists, match="already in use"):
        rename(rt, "web2", "db")
    with pytest.raises(InvalidArgument, match="invalid container name"):
        rename(rt, "web2", "bad name")
    with pytest.raises(InvalidArgument, match="named web2 already"):
        rename(rt, "web2", "web2")
    with rt.store.hold("name:queue", "restore container"), pytest.raises(Busy):
        rename(rt, "web2", "queue")  # a restore builds a container named queue
    record = FreezeRecord(pid=os.getpid(), pid_start=0, operation="checkpoint", since=0.0)
    rt.store.update_state(cid, lambda s: dataclasses.replace(s, frozen_by=record))
    with pytest.raises(Busy, match="rename"):
        rename(rt, "web2", "web3")


# -- over gRPC: CreateContainer, StartContainer, RenameContainer, and restart as stop + start ------


def test_remote_engine_reaches_the_new_rpcs(tmp_path: Path) -> None:
    import shutil
    import tempfile

    from migrate.api import RunOptions
    from migrate.remote.client import RemoteEngine
    from migrate.remote.server import create_server

    class Served(Engine):
        def stop(self, name: str, timeout_s: float = 10.0) -> ContainerInfo:
            self.calls.append(("stop", name, timeout_s))
            return _info(name, "exited")

    fake = Served(missing=("ghost",))
    d = Path(tempfile.mkdtemp(prefix="pm-lc-", dir="/tmp"))
    server, path = create_server(fake, f"unix:{d}/s.sock", token="t0ken")
    server.start()
    try:
        remote = RemoteEngine(f"unix:{path}", token="t0ken")
        created = remote.create(RunOptions(image="busybox", command=("true",), name="web"))
        assert created.state.status == "created" and created.spec.container_id == "ab" * 16
        assert remote.start("web").state.status == "running"
        assert remote.rename("web", "w2").spec.name == "w2"
        remote.restart("w2", timeout_s=2.0)
        with pytest.raises(ContainerNotFound):
            remote.start("ghost")
        remote.remove("ghost", force=True)  # no error over the wire either
        assert fake.calls == [("create", "web"), ("start", "web"), ("rename", "web", "w2"), ("stop", "w2", 2.0),
                              ("start", "w2")]
    finally:
        server.stop(0)
        shutil.rmtree(d, ignore_errors=True)
