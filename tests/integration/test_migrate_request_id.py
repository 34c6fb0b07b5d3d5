"""Migrate's ``request_id`` end to end over real sockets (issue 15, docs/api.md "request_id"): two
daemons on TCP in their own network namespaces, a Migrate whose answer the caller loses, then the
same request again. Whatever the moment of the loss, the end is one migration: the retry gets the
first call's MigrateResult, the container runs once, on the target, and nothing of it is left on
the source.

The source daemon holds every migration at ``source.commit`` (the target runs the container, the
source has not told it to commit) for HOLD_S, so the caller can drop its call at an exact point:

- after the point of no return (the ``commit`` event arrived): the daemon finishes the move and
  records its answer for the id; a retry sent meanwhile waits for it and gets it;
- after the answer arrived (the caller cancels while reading it): the retry gets the record;
- before the freeze (the ``preflight`` event): the daemon rolls the move back (no record: a
  failed call's retry runs again) and the retry migrates the container.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Iterator

import grpc
import pytest

from migrate._proto.pymigrate.v1 import host_pb2 as pb
from migrate._proto.pymigrate.v1 import host_pb2_grpc as pb_grpc
from tests.integration.cli_helpers import LOOP
from tests.integration.hosts import Host, make_hosts  # noqa: F401  (fixture)
from tests.integration.migrate_helpers import names_by_status

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay")]

HOLD_S = 4.0


@pytest.fixture
def lab(make_hosts: Any) -> Iterator[tuple[Host, Host, pb_grpc.HostStub, str]]:  # noqa: F811
    a, b = make_hosts(2)
    source = a.start_daemon("tcp", env={"PYMIGRATE_FAILPOINTS": f"source.commit=sleep:{HOLD_S:g}"})
    target = b.start_daemon("tcp")
    a.cli(["image", "build-busybox", "busybox"], check=True)
    channel = grpc.insecure_channel(source)
    try:
        yield a, b, pb_grpc.HostStub(channel), target
    finally:
        channel.close()


def _run(host: Host, name: str) -> None:
    host.cli(["run", "-d", "--name", name, "busybox", "sh", "-c", LOOP], check=True)


def _drop_at(stub: pb_grpc.HostStub, request: pb.MigrateRequest, phase: str) -> list[str]:
    """Start the Migrate and cancel it once an event of ``phase`` (or the result) arrived; the
    phases seen, "result" last when the answer itself came."""
    call = stub.Migrate(request, timeout=300)
    seen: list[str] = []
    for response in call:
        seen.append(response.event.phase if response.HasField("event") else "result")
        if seen[-1] in (phase, "result"):
            call.cancel()
            break
    return seen


def _answer(stub: pb_grpc.HostStub, request: pb.MigrateRequest) -> tuple[pb.MigrateResult, list[str]]:
    """The retry's result and the event phases it streamed first (a recorded answer streams none)."""
    phases, result = [], None
    for response in stub.Migrate(request, timeout=300):
        if response.HasField("result"):
            result = response.result
        else:
            phases.append(response.event.phase)
    assert result is not None
    return result, phases


def _migration_events(stub: pb_grpc.HostStub, name: str) -> list[str]:
    """The source's journalled migration actions of ``name``, oldest first."""
    call = stub.WatchEvents(pb.WatchEventsRequest(since=0, filter=["type=migration", f"container={name}"]), timeout=60)
    actions = []
    for response in call:
        if not response.HasField("event"):  # a keep-alive: the history is read
            call.cancel()
            break
        actions.append(response.event.action)
    return actions


def _one_copy_on_target(a: Host, b: Host, name: str) -> None:
    assert name not in names_by_status(a), names_by_status(a)  # nothing left on the source
    assert names_by_status(b).get(name) == "running", names_by_status(b)
    counted = b.cli(["exec", name, "cat", "/tmp/cnt"], check=True).stdout
    time.sleep(0.3)
    assert int(b.cli(["exec", name, "cat", "/tmp/cnt"], check=True).stdout) > int(counted)  # it runs on


def test_answer_lost_past_the_point_of_no_return(lab: tuple[Host, Host, pb_grpc.HostStub, str]) -> None:
    a, b, stub, target = lab
    name = "idem-commit"
    _run(a, name)
    request = pb.MigrateRequest(name=name, dest=target, request_id=str(uuid.uuid4()))
    seen = _drop_at(stub, request, "commit")
    assert seen[-1] == "commit", seen  # dropped while the source is held at source.commit
    started = time.monotonic()
    first, phases = _answer(stub, request)  # sent while the first call still runs: waits for its answer
    assert phases == [] and time.monotonic() - started < HOLD_S + 30
    again, phases = _answer(stub, request)
    assert phases == [] and again == first
    assert first.container_name == name and first.dest == target and first.stats.frozen_ms > 0
    _one_copy_on_target(a, b, name)
    assert _migration_events(stub, name).count("completed") == 1
    assert "start" in _migration_events(stub, name)


def test_answer_lost_while_it_arrived(lab: tuple[Host, Host, pb_grpc.HostStub, str]) -> None:
    a, b, stub, target = lab
    name = "idem-result"
    _run(a, name)
    request = pb.MigrateRequest(name=name, dest=target, request_id=str(uuid.uuid4()))
    call = stub.Migrate(request, timeout=300)
    first = None
    for response in call:
        if response.HasField("result"):
            first = response.result
            call.cancel()  # the caller "lost" it: it never acted on the answer
            break
    assert first is not None
    retried, phases = _answer(stub, request)
    assert phases == [] and retried == first
    _one_copy_on_target(a, b, name)
    assert _migration_events(stub, name).count("completed") == 1
    # the same id with other arguments is refused, not a second migration
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Migrate(pb.MigrateRequest(name=name, dest=target, keep_source=True, request_id=request.request_id),
                          timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("phase", ["preflight", "image"])
def test_answer_lost_before_the_freeze(lab: tuple[Host, Host, pb_grpc.HostStub, str], phase: str) -> None:
    """Dropped at ``preflight`` the call's generator is gone while the daemon still prepares the
    target (no progress to notice the cancel by): the retry must wait for that work to roll back,
    not run beside it (it met the first's reservation on the target: ALREADY_EXISTS)."""
    a, b, stub, target = lab
    name = "idem-early"
    _run(a, name)
    request = pb.MigrateRequest(name=name, dest=target, request_id=str(uuid.uuid4()))
    seen = _drop_at(stub, request, phase)
    assert seen[-1] == phase and "freeze" not in seen, seen
    result, phases = _answer(stub, request)  # the rolled-back first call left no record: this one migrates
    assert "commit" in phases and result.container_name == name
    again, phases = _answer(stub, request)
    assert phases == [] and again == result
    _one_copy_on_target(a, b, name)
    assert _migration_events(stub, name).count("completed") == 1


def test_concurrent_retries_share_one_migration(lab: tuple[Host, Host, pb_grpc.HostStub, str]) -> None:
    """Three callers send the same request at once (a scheduler's retry racing its first try): one
    migration runs, all three get its result."""
    a, b, stub, target = lab
    name = "idem-race"
    _run(a, name)
    request = pb.MigrateRequest(name=name, dest=target, request_id=str(uuid.uuid4()))
    results: list[Any] = [None] * 3

    def call(i: int) -> None:
        results[i] = _answer(stub, request)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(r is not None for r in results), results
    answers = [r[0] for r in results]
    assert answers[0] == answers[1] == answers[2]
    assert sorted(bool(r[1]) for r in results) == [False, False, True]  # one streamed the migration
    _one_copy_on_target(a, b, name)
    assert _migration_events(stub, name).count("completed") == 1


def test_cli_migrate_retried_with_request_id(lab: tuple[Host, Host, pb_grpc.HostStub, str]) -> None:
    """``pymigrate --host SRC migrate --request-id ID`` twice: the same answer, one migration."""
    a, b, stub, target = lab
    name = "idem-cli"
    _run(a, name)
    source = f"{a.address}:7443"
    cli = ["--host", source, "--insecure", "migrate", "--json", "--request-id", f"cli-{uuid.uuid4()}", name, target]
    outs = [a.cli(cli, timeout=300) for _ in range(2)]
    assert [o.returncode for o in outs] == [0, 0], [o.stderr.decode(errors="replace") for o in outs]
    assert json.loads(outs[0].stdout) == json.loads(outs[1].stdout)
    assert json.loads(outs[0].stdout)["stats"]["frozen_ms"] > 0
    _one_copy_on_target(a, b, name)
    assert _migration_events(stub, name).count("completed") == 1


def test_source_daemon_killed_past_the_point_of_no_return(lab: tuple[Host, Host, pb_grpc.HostStub, str]) -> None:
    """The source daemon dies at ``source.commit`` (SIGKILL): no answer was recorded. After its
    restart it settles the migration (the target runs the container) and journals it completed;
    the retry answers from that, instead of migrating again (NOT_FOUND: the container moved)."""
    a, b, _, target = lab
    name = "idem-crash"
    _run(a, name)
    a.stop_daemon()
    source = a.start_daemon("tcp", env={"PYMIGRATE_FAILPOINTS": "source.commit=kill"})
    request = pb.MigrateRequest(name=name, dest=target, request_id=str(uuid.uuid4()))
    with grpc.insecure_channel(source) as channel:
        with pytest.raises(grpc.RpcError) as err:
            list(pb_grpc.HostStub(channel).Migrate(request, timeout=300))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()  # the daemon died mid-call
    a.kill_daemon()
    source = a.start_daemon("tcp")  # its start settles the interrupted migration with the target
    with grpc.insecure_channel(source) as channel:
        stub = pb_grpc.HostStub(channel)
        result, phases = _answer(stub, request)
        assert phases == [] and result.container_name == name and result.dest == target
        again, phases = _answer(stub, request)
        assert phases == [] and again == result
        _one_copy_on_target(a, b, name)
        actions = _migration_events(stub, name)
        assert actions.count("completed") == 1 and "failed" not in actions, actions
