"""Container state machine and input validation."""

from __future__ import annotations

import os

import pytest

from runtime.container import (
    LEGAL,
    Container,
    parse_size,
    parse_volume,
    validate_cpus,
    validate_env,
    validate_hostname,
    validate_memory,
    validate_pids_limit,
    validate_workdir,
)
from runtime.errors import InvalidArgument, InvalidState
from runtime.spec import ContainerSpec, ContainerState

SPEC = ContainerSpec(container_id="0" * 32, name="web", image="busybox", image_digest="sha256:" + "0" * 64, command=("true",))


def c(status: str) -> Container:
    return Container(SPEC, ContainerState(status=status))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "status,op,ok",
    [
        ("created", "start", True),
        ("running", "start", False),
        ("running", "pause", True),
        ("paused", "pause", False),
        ("paused", "unpause", True),
        ("running", "unpause", False),
        ("running", "exec", True),
        ("paused", "exec", False),
        ("exited", "exec", False),
        ("running", "stop", True),
        ("paused", "stop", True),
        ("exited", "stop", False),
        ("exited", "remove", True),
        ("running", "remove", False),
        ("running", "force-remove", True),
        ("exited", "kill", False),
        ("running", "checkpoint", True),
        ("exited", "checkpoint", False),
    ],
)
def test_legal_operations(status: str, op: str, ok: bool) -> None:
    if ok:
        c(status).require(op)
    else:
        with pytest.raises(InvalidState) as info:
            c(status).require(op)
        assert info.value.actual == status
        assert info.value.expected == LEGAL[op]
        assert f"cannot {op} container web: state is {status}" in str(info.value)


def test_transitions() -> None:
    assert c("created").next_status("start") == "running"
    assert c("running").next_status("pause") == "paused"
    assert c("paused").next_status("unpause") == "running"
    with pytest.raises(InvalidState):
        c("exited").next_status("pause")


@pytest.mark.parametrize(
    "text,value",
    [("256M", 256 << 20), ("256m", 256 << 20), ("1g", 1 << 30), ("512KiB", 512 << 10), ("1048576", 1 << 20), ("1.5g", int(1.5 * (1 << 30))), ("64mb", 64 << 20), ("10b", 10)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["12XB", "", "m", "-1m", "1 2m", "abc", "1e3"])
def test_parse_size_refuses_naming_the_value(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_size(text)
    assert repr(text) in str(info.value)


def test_limits() -> None:
    assert validate_memory(None) is None
    with pytest.raises(InvalidArgument, match="too small"):
        validate_memory(1024)
    assert validate_cpus(0.5, ncpu=2) == 0.5
    assert validate_cpus(2, ncpu=2) == 2
    for bad in (0, -1, 2.5, float("nan")):
        with pytest.raises(InvalidArgument, match="--cpus"):
            validate_cpus(bad, ncpu=2)
    assert validate_pids_limit(5) == 5
    with pytest.raises(InvalidArgument, match="--pids-limit 0"):
        validate_pids_limit(0)


def test_parse_volume(tmp_path) -> None:  # noqa: ANN001
    v = parse_volume(f"{tmp_path}:/data:ro")
    assert (v.source, v.target, v.readonly) == (str(tmp_path), "/data", True)
    assert parse_volume(f"{tmp_path}:/data/").target == "/data"
    with pytest.raises(InvalidArgument, match="does not exist"):
        parse_volume("/no/such/dir:/data")
    with pytest.raises(InvalidArgument, match="'data'"):
        parse_volume(f"{tmp_path}:data")
    with pytest.raises(InvalidArgument, match="expected ro or rw"):
        parse_volume(f"{tmp_path}:/data:rx")
    with pytest.raises(InvalidArgument, match="HOSTDIR:CTRDIR"):
        parse_volume("justone")
    with pytest.raises(InvalidArgument, match="'..'"):
        parse_volume(f"{tmp_path}:/a/../../b")
    rel = os.path.relpath(tmp_path)
    assert parse_volume(f"{rel}:/d").source == str(tmp_path)


def test_env_workdir_hostname() -> None:
    assert validate_env(("A=1", "B=")) == ("A=1", "B=")
    with pytest.raises(InvalidArgument, match="'NOEQ'"):
        validate_env(("NOEQ",))
    with pytest.raises(InvalidArgument, match="'=x'"):
        validate_env(("=x",))
    assert validate_workdir("/srv/") == "/srv"
    with pytest.raises(InvalidArgument, match="'rel'"):
        validate_workdir("rel")
    assert validate_hostname("web-1") == "web-1"
    with pytest.raises(InvalidArgument, match="'bad host'"):
        validate_hostname("bad host")


def test_stop_signals_by_name_or_number() -> None:
    import signal

    from runtime.container import parse_signal
    from runtime.errors import InvalidArgument

    assert parse_signal("SIGQUIT") == parse_signal("quit") == parse_signal("3") == signal.SIGQUIT
    assert parse_signal("SIGRTMIN+3") == signal.SIGRTMIN + 3 and parse_signal("RTMAX-1") == signal.SIGRTMAX - 1
    for bad in ("SIGNOPE", "0", "65", "SIGRTMIN+99", ""):
        with pytest.raises(InvalidArgument):
            parse_signal(bad)
