"""Lists and retries over a real gRPC socket with FakeEngine: AIP-158 pages, filters, bad
tokens, request_id on RunContainer and Checkpoint (the servicer, migrate/remote/service.py)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from migrate import api
from migrate._proto.pymigrate.v1 import host_pb2 as pb
from migrate._proto.pymigrate.v1 import host_pb2_grpc as pb_grpc
from migrate.remote.client import RemoteEngine
from migrate.remote.server import create_server
from tests.fakes.engine import FakeEngine


@pytest.fixture
def daemon() -> Iterator[tuple[FakeEngine, str]]:
    d = Path(tempfile.mkdtemp(prefix="pm-lists-", dir="/tmp"))
    engine = FakeEngine()
    engine.image_build_busybox()
    server, path = create_server(engine, f"unix:{d}/s.sock")
    server.start()
    try:
        yield engine, f"unix:{path}"
    finally:
        server.stop(0)
        shutil.rmtree(d, ignore_errors=True)


def _stub(target: str) -> pb_grpc.HostStub:
    return pb_grpc.HostStub(grpc.insecure_channel(target))


def test_pages_cover_every_container_once(daemon: tuple[FakeEngine, str]) -> None:
    engine, target = daemon
    for n in range(250):
        engine.run(api.RunOptions(image="busybox", name=f"w{n:03d}" if n % 2 else f"db{n:03d}"))
    stub = _stub(target)
    names, token, sizes = [], "", []
    while True:
        reply = stub.ListContainers(pb.ListContainersRequest(page_size=100, page_token=token))
        sizes.append(len(reply.containers))
        names += [c.spec.name for c in reply.containers]
        token = reply.next_page_token
        if not token:
            break
    assert sizes == [100, 100, 50] and len(set(names)) == 250
    # a filter is applied before paging, and the default page is 100
    reply = stub.ListContainers(pb.ListContainersRequest(filter=["name=^w"]))
    assert len(reply.containers) == 100 and reply.next_page_token
    rest = stub.ListContainers(pb.ListContainersRequest(filter=["name=^w"], page_token=reply.next_page_token))
    assert len(rest.containers) == 25 and not rest.next_page_token
    assert {c.spec.name for c in [*reply.containers, *rest.containers]} == {f"w{n:03d}" for n in range(1, 250, 2)}
    # the client library reads every page
    assert len(RemoteEngine(target).containers(filters=("name=^db",))) == 125
    assert len(RemoteEngine(target).containers()) == 250


def test_bad_token_and_bad_filter_refused(daemon: tuple[FakeEngine, str]) -> None:
    engine, target = daemon
    for n in range(3):
        engine.run(api.RunOptions(image="busybox", name=f"c{n}"))
    stub = _stub(target)
    token = stub.ListContainers(pb.ListContainersRequest(page_size=1)).next_page_token
    for bad in (pb.ListContainersRequest(page_token="not-a-token"),
                pb.ListContainersRequest(page_token=token, filter=["status=running"]),  # other filters
                pb.ListContainersRequest(page_token=token, all=True),
                pb.ListCheckpointsRequest(page_token=token),  # another list's token
                pb.ListContainersRequest(filter=["colour=red"]),
                pb.ListContainersRequest(page_size=-1)):
        call = stub.ListCheckpoints if isinstance(bad, pb.ListCheckpointsRequest) else stub.ListContainers
        with pytest.raises(grpc.RpcError) as err:
            call(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad


def test_run_retried_with_request_id_makes_one_container(daemon: tuple[FakeEngine, str]) -> None:
    engine, target = daemon
    stub = _stub(target)
    request = pb.RunContainerRequest(image="busybox", command=["sleep", "1"], request_id="run-1")  # no name: a random one
    first = stub.RunContainer(request)
    again = stub.RunContainer(request)
    assert again == first and len(engine.containers(all=True)) == 1
    with pytest.raises(grpc.RpcError) as err:
        stub.RunContainer(pb.RunContainerRequest(image="busybox", command=["true"], request_id="run-1"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id reused with different arguments" in (err.value.details() or "")
    stub.RunContainer(pb.RunContainerRequest(image="busybox", command=["sleep", "1"], request_id="run-2"))
    assert len(engine.containers(all=True)) == 2


def test_checkpoint_retried_with_request_id_makes_one_checkpoint(daemon: tuple[FakeEngine, str]) -> None:
    engine, target = daemon
    engine.run(api.RunOptions(image="busybox", name="web"))
    stub = _stub(target)
    request = pb.CheckpointRequest(name="web", leave_running=True, request_id="ck-1", labels={"tier": "web"})
    first = [r for r in stub.Checkpoint(request) if r.HasField("result")]
    again = list(stub.Checkpoint(request))  # only the recorded result, no progress
    assert len(again) == 1 and again[0].result == first[0].result
    assert len(engine.checkpoints()) == 1
    listed = stub.ListCheckpoints(pb.ListCheckpointsRequest(filter=["container=web"])).checkpoints
    assert [c.checkpoint_id for c in listed] == [first[0].result.checkpoint_id]
    assert not stub.ListCheckpoints(pb.ListCheckpointsRequest(filter=["container=db"])).checkpoints
