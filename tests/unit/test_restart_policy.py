"""Restart policies: parsing, the shim's decision and docker's back-off (runtime/restart.py)."""

from __future__ import annotations

import pytest

from runtime import restart
from runtime.errors import InvalidArgument
from runtime.restart_policy import max_retries, parse_policy
from runtime.spec import ContainerSpec, ContainerState


@pytest.mark.parametrize("text,policy", [("no", "no"), ("always", "always"), ("Unless-Stopped", "unless-stopped"),
                                         ("on-failure", "on-failure"), ("on-failure:3", "on-failure:3"),
                                         ("on-failure:0", "on-failure")])
def test_parse_policy(text: str, policy: str) -> None:
    assert parse_policy(text) == policy


@pytest.mark.parametrize("text", ["", "sometimes", "always:2", "on-failure:-1", "on-failure:x", "no:1"])
def test_bad_policies_are_refused_with_a_hint(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid restart policy") as err:
        parse_policy(text)
    assert "unless-stopped" in (err.value.hint or "")


def _exited(code: int, **kw: object) -> ContainerState:
    return ContainerState(status="exited", exit_code=code, **kw)  # type: ignore[arg-type]


def test_on_failure_restarts_failures_up_to_its_cap() -> None:
    assert max_retries("on-failure:3") == 3
    assert restart.should_restart("on-failure:3", _exited(1, restart_count=2))
    assert not restart.should_restart("on-failure:3", _exited(1, restart_count=3))
    assert not restart.should_restart("on-failure:3", _exited(0))
    assert restart.should_restart("on-failure", _exited(2, restart_count=1000))


def test_no_restart_after_a_stop_a_checkpoint_or_while_running() -> None:
    assert restart.should_restart("always", _exited(0))
    assert not restart.should_restart("always", _exited(137, manually_stopped=True))
    assert not restart.should_restart("unless-stopped", _exited(0, manually_stopped=True))
    assert not restart.should_restart("always", _exited(137, checkpointed="ck1"))
    assert not restart.should_restart("always", ContainerState(status="running"))
    assert not restart.should_restart("no", _exited(1))


def test_daemon_start_restarts_always_even_after_a_stop_but_not_unless_stopped() -> None:
    spec = ContainerSpec(container_id="a" * 32, name="n", image="i", image_digest="sha256:" + "b" * 64, command=("true",))
    stopped = _exited(137, manually_stopped=True)
    assert restart.wants_daemon_start(spec.__class__(**{**spec.__dict__, "restart": "always"}), stopped)
    assert not restart.wants_daemon_start(spec.__class__(**{**spec.__dict__, "restart": "unless-stopped"}), stopped)
    assert restart.wants_daemon_start(spec.__class__(**{**spec.__dict__, "restart": "unless-stopped"}), _exited(0))
    assert not restart.wants_daemon_start(spec.__class__(**{**spec.__dict__, "restart": "on-failure"}), _exited(1))
    assert not restart.wants_daemon_start(spec.__class__(**{**spec.__dict__, "restart": "always"}),
                                          _exited(137, checkpointed="migrated"))


def test_backoff_doubles_from_100ms_capped_at_a_minute_and_resets_after_10s() -> None:
    cid = "c" * 32
    restart._delay_s.pop(cid, None)
    delays = [restart.next_delay(cid, 0.5) for _ in range(12)]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert delays[-1] == 60.0
    assert restart.next_delay(cid, 10.0) == 0.1


def test_old_records_load_with_no_policy() -> None:
    spec = ContainerSpec.from_dict({"container_id": "a" * 32, "name": "n", "image": "i", "image_digest": "d", "command": ["x"]})
    assert spec.restart == "no" and spec.init is False
    state = ContainerState.from_dict({"status": "exited"})
    assert state.restart_count == 0 and state.manually_stopped is False
