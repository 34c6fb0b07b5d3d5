"""CLI parsing for container commands (no engine calls) and the engine's argument plumbing."""

from __future__ import annotations

import signal

import pytest

from migrate.cli import build_parser
from migrate.cli.containers import parse_signal, run_options
from runtime.errors import InvalidArgument


def parse(*argv: str):  # noqa: ANN201
    return build_parser().parse_args(list(argv))


def test_run_options_full(tmp_path) -> None:  # noqa: ANN001
    args = parse(
        "run", "-d", "--name", "web", "--hostname", "h", "-e", "A=1", "-e", "B=2", "-w", "/srv", "--memory", "256M",
        "--cpus", "0.5", "--pids-limit", "64", "--network", "bridge", "--ip", "10.77.0.9", "-v", f"{tmp_path}:/data:ro",
        "--cgroup-parent", "ci", "busybox", "sh", "-c", "echo -e hi",
    )
    o = run_options(args)
    assert args.detach
    assert o.image == "busybox" and o.command == ("sh", "-c", "echo -e hi")
    assert (o.name, o.hostname, o.env, o.workdir) == ("web", "h", ("A=1", "B=2"), "/srv")
    assert (o.memory_bytes, o.cpus, o.pids_limit) == (256 << 20, 0.5, 64)
    assert (o.network, o.ip, o.cgroup_parent) == ("bridge", "10.77.0.9", "ci")
    assert o.volumes[0].target == "/data" and o.volumes[0].readonly


def test_options_after_the_image_belong_to_the_command() -> None:
    o = run_options(parse("run", "busybox", "ls", "-d", "--name", "x"))
    assert o.command == ("ls", "-d", "--name", "x") and o.name is None


def test_bad_memory_names_the_value() -> None:
    with pytest.raises(InvalidArgument, match="12XB"):
        run_options(parse("run", "--memory", "12XB", "busybox", "true"))


def test_unknown_network_mode_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        parse("run", "--network", "host", "busybox", "true")


@pytest.mark.parametrize("text,sig", [("KILL", signal.SIGKILL), ("term", signal.SIGTERM), ("SIGHUP", signal.SIGHUP), ("15", 15)])
def test_parse_signal(text: str, sig: int) -> None:
    assert parse_signal(text) == sig


@pytest.mark.parametrize("text", ["NOPE", "0", "999", "-9", ""])
def test_parse_signal_refuses(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid signal"):
        parse_signal(text)


def test_every_container_command_is_registered() -> None:
    for argv in (["ps", "-a", "--json"], ["inspect", "x"], ["logs", "-f", "x"], ["exec", "x", "ls"], ["stop", "-t", "3", "x"],
                 ["kill", "-s", "TERM", "x"], ["rm", "-f", "x", "y"], ["pause", "x"], ["unpause", "x"], ["wait", "x"]):
        assert callable(parse(*argv).handler)


def test_engine_for_picks_local(tmp_path) -> None:  # noqa: ANN001
    from migrate.engine import LocalEngine, engine_for

    args = parse("--root", str(tmp_path), "ps")
    engine = engine_for(args)
    assert isinstance(engine, LocalEngine) and engine.root == tmp_path


def test_local_engine_lists_no_checkpoints_in_an_empty_root(tmp_path) -> None:  # noqa: ANN001
    from migrate.engine import LocalEngine
    from migrate.errors import CheckpointNotFound

    engine = LocalEngine(tmp_path)
    assert engine.checkpoints() == []
    with pytest.raises(CheckpointNotFound):
        engine.checkpoint_inspect("abcdef01")
