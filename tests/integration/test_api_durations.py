"""google.protobuf.Duration beside the unit-named doubles, against a real daemon (issue 15, docs/api.md
"Durations"): a request with only the Duration set is obeyed (StopContainer waits that long before
SIGKILL, WaitContainer gives up after it, a Stats stream samples at that interval), the Duration wins
over a double sent with it, and results carry both (a Checkpoint's stats).

The stopped containers run ``sleep`` as their PID 1: with no SIGTERM handler the kernel drops the
signal for a namespace's init, so a stop takes exactly its timeout and then kills.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from migrate._proto.pymigrate.v1 import host_pb2 as pb
from migrate._proto.pymigrate.v1 import host_pb2_grpc as pb_grpc
from tests.integration.cli_helpers import start_daemon, stop_daemon

pytestmark = [pytest.mark.integration, pytest.mark.requires("root", "overlay", "busybox")]


@pytest.fixture(scope="module")
def stub() -> Iterator[pb_grpc.HostStub]:
    from runtime.config import Paths
    from runtime.image_store import ImageStore

    root = Path(tempfile.mkdtemp(prefix="pm-durations-", dir="/tmp"))
    Paths(root).ensure()
    ImageStore(Paths(root)).build_busybox("busybox")
    proc, sock = start_daemon(root)
    channel = grpc.insecure_channel(f"unix:{sock}")
    host = pb_grpc.HostStub(channel)
    try:
        yield host
    finally:
        try:
            for c in host.ListContainers(pb.ListContainersRequest(all=True), timeout=60).containers:
                host.RemoveContainer(pb.RemoveContainerRequest(name=c.spec.name, force=True), timeout=60)
        finally:
            channel.close()
            stop_daemon(proc, sock)
            shutil.rmtree(root, ignore_errors=True)


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _run(stub: pb_grpc.HostStub, *command: str) -> str:
    name = f"dur-{uuid.uuid4().hex[:8]}"
    stub.RunContainer(pb.RunContainerRequest(image="busybox", command=list(command) or ["sleep", "1000"], name=name,
                                             network=pb.NETWORK_MODE_NONE), timeout=120)
    return name


def _timed_stop(stub: pb_grpc.HostStub, request: pb.StopContainerRequest) -> tuple[float, pb.ContainerInfo]:
    start = time.monotonic()
    info = stub.StopContainer(request, timeout=120).container
    return time.monotonic() - start, info


def test_stop_with_only_a_duration_waits_that_long(stub: pb_grpc.HostStub) -> None:
    name = _run(stub)
    took, info = _timed_stop(stub, pb.StopContainerRequest(name=name, timeout=_duration(3.0)))
    assert 2.9 <= took < 7.0, f"a 3 s stop timeout took {took:.2f} s (the default would be 10 s)"
    assert info.state.status == pb.CONTAINER_STATUS_EXITED and info.state.exit_code == 137  # SIGKILLed after it
    # the Duration wins over a double sent with it (an older reader of timeout_s would wait 30 s)
    name = _run(stub)
    took, _ = _timed_stop(stub, pb.StopContainerRequest(name=name, timeout_s=30, timeout=_duration(1.0)))
    assert 0.9 <= took < 5.0, took
    # an older client's double alone still works
    name = _run(stub)
    took, _ = _timed_stop(stub, pb.StopContainerRequest(name=name, timeout_s=2))
    assert 1.9 <= took < 6.0, took


def test_wait_gives_up_after_its_duration(stub: pb_grpc.HostStub) -> None:
    name = _run(stub)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.WaitContainer(pb.WaitContainerRequest(name=name, timeout=_duration(1.5)), timeout=60)
    took = time.monotonic() - start
    assert err.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED, "the daemon, not the caller's deadline, must end it"
    assert "still running after 1.5s" in (err.value.details() or ""), err.value.details()
    assert 1.4 <= took < 6.0, took
    stub.KillContainer(pb.KillContainerRequest(name=name), timeout=60)


def test_stats_stream_samples_at_its_duration(stub: pb_grpc.HostStub) -> None:
    name = _run(stub)
    call = stub.Stats(pb.StatsRequest(names=[name], stream=True, interval=_duration(0.3), interval_s=5), timeout=60)
    times = []
    for response in call:
        times.append(response.samples[0].read_at_monotonic_s)
        if len(times) == 4:
            call.cancel()
            break
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(0.25 <= g < 1.5 for g in gaps), gaps  # 5 s apart if the double had won


@pytest.mark.requires("criu", "pycriu")
def test_checkpoint_stats_carry_durations(stub: pb_grpc.HostStub) -> None:
    name = _run(stub)
    (result,) = [r.result for r in stub.Checkpoint(pb.CheckpointRequest(name=name, leave_running=True), timeout=180)
                 if r.HasField("result")]
    stats = result.stats
    for field in ("freezing", "frozen", "memdump", "memwrite", "archive", "total"):
        ms = getattr(stats, f"{field}_ms")
        duration = getattr(stats, f"{field}_duration")
        assert stats.HasField(f"{field}_duration"), field
        assert abs(duration.ToNanoseconds() / 1e6 - ms) < 1e-3, (field, ms, duration)
    assert 0 < stats.frozen_duration.ToNanoseconds() <= stats.total_duration.ToNanoseconds()
    stub.RemoveCheckpoint(pb.RemoveCheckpointRequest(checkpoint_id=result.checkpoint_id), timeout=60)
