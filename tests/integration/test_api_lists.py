"""Lists and retries against a real daemon (issue 15): AIP-158 pagination over 250 created
containers, filters and labels, bad tokens, request_id retries of RunContainer, Checkpoint and
Restore (one container, one checkpoint), a reused id refused, Stop and Remove idempotent over gRPC.

Containers are made with CreateContainer (no process: ~45 ms each here, so 250 take ~12 s) and
network none (no address leases); everything this module makes carries a per-test label, so the
lists are read through a label filter as a scheduler would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from migrate._proto.pymigrate.v1 import host_pb2 as pb
from migrate._proto.pymigrate.v1 import host_pb2_grpc as pb_grpc
from tests.integration.cli_helpers import start_daemon, stop_daemon

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox")]

Daemon = tuple[pb_grpc.HostStub, Path, str]


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    from runtime.config import Paths
    from runtime.image_store import ImageStore

    root = Path(tempfile.mkdtemp(prefix="pm-lists-", dir="/tmp"))
    Paths(root).ensure()
    ImageStore(Paths(root)).build_busybox("busybox")
    proc, sock = start_daemon(root)
    target = f"unix:{sock}"
    channel = grpc.insecure_channel(target)
    try:
        yield pb_grpc.HostStub(channel), root, target
    finally:
        stub = pb_grpc.HostStub(channel)
        try:
            for c in stub.ListContainers(pb.ListContainersRequest(all=True, page_size=1000), timeout=60).containers:
                stub.RemoveContainer(pb.RemoveContainerRequest(name=c.spec.name, force=True), timeout=60)
        finally:
            channel.close()
            stop_daemon(proc, sock)
            shutil.rmtree(root, ignore_errors=True)


def _options(name: str, labels: dict[str, str], command: tuple[str, ...] = ("true",), **kw: object) -> pb.RunContainerRequest:
    return pb.RunContainerRequest(image="busybox", command=list(command), name=name, labels=labels,
                                  network=pb.NETWORK_MODE_NONE, **kw)


def _all_pages(stub: pb_grpc.HostStub, request: pb.ListContainersRequest) -> list[list[str]]:
    pages = []
    while True:
        reply = stub.ListContainers(request, timeout=60)
        pages.append([c.spec.container_id for c in reply.containers])
        if not reply.next_page_token:
            return pages
        request.page_token = reply.next_page_token


def _refused(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=60)  # type: ignore[operator]
    return err.value


def test_pagination_over_250_containers_with_filters(daemon: Daemon) -> None:
    stub, _, _ = daemon
    run = uuid.uuid4().hex[:8]
    made = {}
    for n in range(250):
        labels = {"set": run, "tier": "web" if n % 2 else "db"}
        info = stub.CreateContainer(pb.CreateContainerRequest(options=_options(f"p{run}-{n:03d}", labels)), timeout=60).container
        made[info.spec.container_id] = labels["tier"]
    mine = [f"label=set={run}"]
    pages = _all_pages(stub, pb.ListContainersRequest(all=True, filter=mine, page_size=100))
    assert [len(p) for p in pages] == [100, 100, 50]
    listed = [cid for p in pages for cid in p]
    assert len(listed) == len(set(listed)) == 250 and set(listed) == set(made)
    # created containers are not running: without all, a status filter asks for them (docker's rule)
    assert not stub.ListContainers(pb.ListContainersRequest(filter=mine), timeout=60).containers
    web = _all_pages(stub, pb.ListContainersRequest(filter=[*mine, "label=tier=web", "status=created"]))  # default size 100
    assert [len(p) for p in web] == [100, 25]
    assert {cid for p in web for cid in p} == {cid for cid, tier in made.items() if tier == "web"}
    # a token only works with the filters it was made for
    first = stub.ListContainers(pb.ListContainersRequest(all=True, filter=mine, page_size=10), timeout=60)
    other = pb.ListContainersRequest(all=True, filter=[*mine, "label=tier=db"], page_token=first.next_page_token)
    assert _refused(stub.ListContainers, other).code() == grpc.StatusCode.INVALID_ARGUMENT
    forged = pb.ListContainersRequest(all=True, filter=mine, page_token="eyJrIjpbMCwiIl19")
    assert _refused(stub.ListContainers, forged).code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = pb.ListContainersRequest(filter=["colour=blue"])
    assert _refused(stub.ListContainers, bad).code() == grpc.StatusCode.INVALID_ARGUMENT
    # the CLI over --host sends ps --filter to the daemon and reads every page
    ps = subprocess.run([sys.executable, "-m", "migrate", "--host", daemon[2], "ps", "--filter", f"label=set={run}",
                         "--filter", "label=tier=db", "--filter", "status=created", "--json"],
                        capture_output=True, text=True, timeout=120)
    assert ps.returncode == 0, ps.stderr
    assert {c["spec"]["container_id"] for c in json.loads(ps.stdout)} == {cid for cid, tier in made.items() if tier == "db"}


def test_run_retried_with_request_id_makes_one_container(daemon: Daemon) -> None:
    stub, root, _ = daemon
    run = uuid.uuid4().hex[:8]
    request = pb.RunContainerRequest(image="busybox", command=["sleep", "100"], labels={"set": run},
                                     network=pb.NETWORK_MODE_NONE, request_id=f"run-{run}")  # no name: a random one
    # the first answer is lost: the caller's deadline ends before it (the daemon may or may not have run it)
    try:
        stub.RunContainer(request, timeout=0.05)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    first = stub.RunContainer(request, timeout=120).container
    again = stub.RunContainer(request, timeout=120).container
    assert again.spec.container_id == first.spec.container_id and again == first
    listed = stub.ListContainers(pb.ListContainersRequest(all=True, filter=[f"label=set={run}"]), timeout=60).containers
    assert [c.spec.container_id for c in listed] == [first.spec.container_id]
    assert len(list((root / "requests").glob("*.json"))) >= 1
    reused = pb.RunContainerRequest(image="busybox", command=["sleep", "5"], network=pb.NETWORK_MODE_NONE,
                                    request_id=f"run-{run}")
    err = _refused(stub.RunContainer, reused)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id reused with different arguments" in (err.details() or "")
    # the CLI: run --request-id over --host twice prints the same container; without --host it is refused
    cli = [sys.executable, "-m", "migrate", "--host", daemon[2], "run", "-d", "--network", "none", "--label", f"cli={run}",
           "--request-id", f"cli-{run}", "busybox", "sleep", "100"]
    outs = [subprocess.run(cli, capture_output=True, text=True, timeout=120) for _ in range(2)]
    assert [o.returncode for o in outs] == [0, 0], outs[0].stderr + outs[1].stderr
    assert outs[0].stdout == outs[1].stdout and outs[0].stdout.strip()
    cli_made = stub.ListContainers(pb.ListContainersRequest(filter=[f"label=cli={run}"]), timeout=60).containers
    assert len(cli_made) == 1
    local = subprocess.run([sys.executable, "-m", "migrate", "--root", str(root), "run", "-d", "--request-id", "x",
                            "busybox", "true"], capture_output=True, text=True, timeout=60)
    assert local.returncode == 125 and "--request-id without --host" in local.stderr
    stub.RemoveContainer(pb.RemoveContainerRequest(name=cli_made[0].spec.name, force=True), timeout=60)
    # Stop and Remove are idempotent over gRPC too (issue 14): an exited container stops, a missing one is removed
    name = first.spec.name
    stub.StopContainer(pb.StopContainerRequest(name=name, timeout_s=2), timeout=60)
    stopped = stub.StopContainer(pb.StopContainerRequest(name=name, timeout_s=2), timeout=60).container
    assert stopped.state.status == pb.CONTAINER_STATUS_EXITED
    stub.RemoveContainer(pb.RemoveContainerRequest(name=name, force=True), timeout=60)
    stub.RemoveContainer(pb.RemoveContainerRequest(name=name, force=True), timeout=60)


@pytest.mark.requires("criu", "pycriu")
def test_checkpoint_labels_and_request_id(daemon: Daemon) -> None:
    stub, root, target = daemon
    run = uuid.uuid4().hex[:8]
    name = f"ck{run}"
    stub.RunContainer(_options(name, {"app": "shop"}, ("sleep", "1000")), timeout=120)
    request = pb.CheckpointRequest(name=name, leave_running=True, labels={"backup": run}, request_id=f"ck-{run}")
    first = [r.result for r in stub.Checkpoint(request, timeout=120) if r.HasField("result")]
    again = list(stub.Checkpoint(request, timeout=120))
    assert len(first) == 1 and len(again) == 1 and again[0].result == first[0]
    listed = stub.ListCheckpoints(pb.ListCheckpointsRequest(filter=[f"label=backup={run}"]), timeout=60).checkpoints
    assert [c.checkpoint_id for c in listed] == [first[0].checkpoint_id]  # one checkpoint, not two
    assert dict(listed[0].labels) == {"backup": run}
    assert not stub.ListCheckpoints(pb.ListCheckpointsRequest(filter=[f"label=backup={run}", "container=other"]),
                                    timeout=60).checkpoints
    # the container's labels stay in the checkpoint's container spec
    manifest = json.loads(stub.InspectCheckpoint(pb.InspectCheckpointRequest(checkpoint_id=first[0].checkpoint_id),
                                                 timeout=60).manifest_json)
    assert manifest["labels"] == {"backup": run} and manifest["container"]["labels"] == {"app": "shop"}
    reused = pb.CheckpointRequest(name=name, leave_running=True, request_id=f"ck-{run}")
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Checkpoint(reused, timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = pb.CheckpointRequest(name=name, leave_running=True, labels={"bad key": "x"})
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Checkpoint(bad, timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # the CLI over --host: checkpoint ls shows and filters the labels
    ls = subprocess.run([sys.executable, "-m", "migrate", "--host", target, "checkpoint", "ls", "--filter",
                         f"label=backup={run}"], capture_output=True, text=True, timeout=60)
    assert ls.returncode == 0, ls.stderr
    assert first[0].checkpoint_id in ls.stdout and f"backup={run}" in ls.stdout and len(ls.stdout.splitlines()) == 2
    # Restore retried with its request_id: one restored container, the same answer
    restore = pb.RestoreRequest(checkpoint_id=first[0].checkpoint_id, name=f"re{run}", request_id=f"re-{run}")
    restored = [[r.result for r in stub.Restore(restore, timeout=180) if r.HasField("result")] for _ in range(2)]
    assert restored[0][0].container.spec.container_id == restored[1][0].container.spec.container_id
    assert restored[0][0].container.state.status == pb.CONTAINER_STATUS_RUNNING
    same = stub.ListContainers(pb.ListContainersRequest(filter=[f"name=^re{run}$"]), timeout=60).containers
    assert len(same) == 1
    stub.RemoveContainer(pb.RemoveContainerRequest(name=f"re{run}", force=True), timeout=60)
    stub.RemoveCheckpoint(pb.RemoveCheckpointRequest(checkpoint_id=first[0].checkpoint_id), timeout=60)
