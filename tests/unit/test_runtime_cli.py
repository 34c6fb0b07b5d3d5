"""CLI parsing for container commands (no engine calls) and the engine's argument plumbing."""

from __future__ import annotations

import signal

import pytest

from migrate.cli import build_parser
from migrate.cli.containers import resolve_env, run_options
from migrate.cli.lifecycle import parse_signal
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


def test_env_key_alone_comes_from_the_cli_environment(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("PYMIGRATE_T_SET", "from here")
    monkeypatch.delenv("PYMIGRATE_T_UNSET", raising=False)
    o = run_options(parse("run", "-e", "PYMIGRATE_T_SET", "-e", "PYMIGRATE_T_UNSET", "-e", "B=", "busybox", "env"))
    assert o.env == ("PYMIGRATE_T_SET=from here", "B=")  # unset: skipped silently, as docker does


def test_env_file_lines_and_values_are_literal(tmp_path) -> None:  # noqa: ANN001
    f = tmp_path / "env"
    f.write_text("\ufeff# a comment\n\nA=1\n  B=x y \"q\" $HOME\nFROM_ENV\nGONE\n  # indented comment\nC==2\nD=\n")
    assert resolve_env(["A=override"], [str(f)], {"FROM_ENV": "v"}) == (
        "A=1", "B=x y \"q\" $HOME", "FROM_ENV=v", "C==2", "D=", "A=override")


@pytest.mark.parametrize("line, match", [("=1", "line 2 .*no variable name"), ("MY KEY=1", "white space")])
def test_env_file_refuses_bad_lines(tmp_path, line: str, match: str) -> None:  # noqa: ANN001
    f = tmp_path / "env"
    f.write_text(f"A=1\n{line}\n")
    with pytest.raises(InvalidArgument, match=match):
        resolve_env([], [str(f)], {})


def test_env_file_missing_names_the_file(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(InvalidArgument, match="cannot read env file .*nope"):
        run_options(parse("run", "--env-file", str(tmp_path / "nope"), "busybox", "true"))


def test_env_without_a_name_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="'=x'"):
        resolve_env(["=x"], [], {})


def test_rm_is_recorded_for_a_detached_run_only() -> None:
    assert run_options(parse("run", "-d", "--rm", "busybox", "true")).auto_remove is True
    assert run_options(parse("run", "--rm", "busybox", "true")).auto_remove is False  # the CLI removes it
    assert run_options(parse("run", "-d", "busybox", "true")).auto_remove is False


def test_read_only_is_recorded() -> None:
    assert run_options(parse("run", "--read-only", "busybox", "true")).read_only is True
    assert run_options(parse("run", "busybox", "true")).read_only is False


def test_cap_names_with_or_without_cap_and_all() -> None:
    from runtime.capabilities import CAP_NET_RAW, CAP_SYS_ADMIN, DEFAULT_CAPS, container_caps, parse_cap

    assert [parse_cap(n) for n in ("net_raw", "NET_RAW", "CAP_NET_RAW", "all")] == ["CAP_NET_RAW"] * 3 + ["ALL"]
    with pytest.raises(InvalidArgument, match="unknown capability 'NET_RAWR'"):
        parse_cap("NET_RAWR")
    assert container_caps() == DEFAULT_CAPS
    assert container_caps(("CAP_SYS_ADMIN",), ("CAP_NET_RAW",)) == (DEFAULT_CAPS - {CAP_NET_RAW}) | {CAP_SYS_ADMIN}
    assert container_caps(("CAP_NET_RAW",), ("CAP_NET_RAW",)) == DEFAULT_CAPS  # an add wins (docker)
    assert container_caps(("CAP_SYS_ADMIN",), ("ALL",)) == {CAP_SYS_ADMIN}
    assert len(container_caps(("ALL",), ("CAP_NET_RAW",))) == 40 and CAP_NET_RAW not in container_caps(("ALL",), ("CAP_NET_RAW",))
    o = run_options(parse("run", "--cap-add", "sys_admin", "--cap-drop", "NET_RAW", "--cap-drop", "CAP_MKNOD", "busybox", "true"))
    assert (o.cap_add, o.cap_drop) == (("sys_admin",), ("NET_RAW", "CAP_MKNOD"))  # normalised by the runtime's check


def test_validate_fields_normalises_cap_names() -> None:
    from runtime.container import validate_fields

    checked = validate_fields(name=None, hostname=None, env=(), workdir="/", memory_bytes=None, cpus=None, pids_limit=None,
                              network="none", ip=None, volumes=(), cgroup_parent=None, cap_add=("sys_admin",), cap_drop=("all",))
    assert (checked["cap_add"], checked["cap_drop"]) == (("CAP_SYS_ADMIN",), ("ALL",))
    with pytest.raises(InvalidArgument, match="unknown capability"):
        validate_fields(name=None, hostname=None, env=(), workdir="/", memory_bytes=None, cpus=None, pids_limit=None,
                        network="none", ip=None, volumes=(), cgroup_parent=None, cap_add=("bogus",))


def test_an_old_record_without_auto_remove_loads() -> None:
    from runtime.spec import ContainerSpec

    old = {"container_id": "a" * 32, "name": "web", "image": "busybox", "image_digest": "sha256:" + "b" * 64,
           "command": ["true"]}
    assert ContainerSpec.from_dict(old).auto_remove is False
    assert ContainerSpec.from_dict(old).read_only is False
    assert ContainerSpec.from_dict({**old, "cap_add": ["CAP_SYS_ADMIN"]}).cap_add == ("CAP_SYS_ADMIN",)


def test_bad_memory_names_the_value() -> None:
    with pytest.raises(InvalidArgument, match="12XB"):
        run_options(parse("run", "--memory", "12XB", "busybox", "true"))


def test_unknown_network_mode_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        parse("run", "--network", "macvlan", "busybox", "true")


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
