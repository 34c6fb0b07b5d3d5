"""CheckpointHost.stop_checkpointed: after a committed checkpoint, the veth goes in a thread from the
start, beside the record, the kill and the shim's exit record; the record is written without an fsync
of its own (the shim's exit record carries it to the disk) unless no exit is recorded; the mounts and
the rest go after the exit record. Fakes stand in for the runtime (tests/integration/test_checkpoint.py
stops real containers)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from runtime.checkpointing import CheckpointHost
from runtime.config import Paths
from runtime.spec import ContainerSpec, ContainerState

CID = "c" * 32


class FakeStore:
    def __init__(self, events: list[str], exits: bool) -> None:
        self.events, self.exits = events, exits
        self.state = ContainerState(status="running", pid=4242)
        self.syncs: list[bool] = []

    def update_state(self, cid: str, change: Callable[[ContainerState], ContainerState], *, sync: bool = True) -> ContainerState:
        self.state = change(self.state)
        self.syncs.append(sync)
        self.events.append("record")
        return self.state

    def load_state(self, cid: str) -> ContainerState:
        if self.exits and "kill" in self.events:  # the shim records the exit once the tree is killed
            return dataclasses.replace(self.state, status="exited")
        return self.state

    def sync_state(self, cid: str) -> None:
        self.events.append("sync")


class FakeRuntime:
    def __init__(self, root: Path, *, exits: bool = True) -> None:
        self.paths = Paths(root)
        self.events: list[str] = []
        self.store = FakeStore(self.events, exits)
        self.disconnect_started = threading.Event()
        self.killed = threading.Event()
        self.dying = [False]  # what pids() answers, popped from the end: True while a process is left

    def cgroups(self, parent: Any) -> Any:
        rt = self

        class Cg:
            def kill(self, cid: str) -> None:
                # the veth's removal must already be under way: it waits for nothing of the kill's
                assert rt.disconnect_started.wait(5), "the veth's removal did not start before the kill"
                rt.events.append("kill")
                rt.killed.set()

            def thaw(self, cid: str) -> None:
                rt.events.append("thaw")

            def pids(self, cid: str) -> list[int]:
                rt.events.append("empty?")
                return [4242] if rt.dying.pop() else []

        return Cg()

    def network(self, mode: str) -> Any:
        rt = self

        class Net:
            def disconnect(self, cid: str) -> None:
                rt.disconnect_started.set()
                assert rt.killed.wait(5)  # still deleting while the tree dies
                rt.events.append("veth gone")

        return Net()

    def container(self, cid: str) -> Any:
        return type("C", (), {"status": self.store.load_state(cid).status})()

    def release(self, spec: ContainerSpec) -> None:
        self.events.append("release")


def _container(network: str) -> Any:
    spec = ContainerSpec(container_id=CID, name="web", image="busybox", image_digest="sha256:" + "0" * 64, command=("sh",),
                         network=network)
    return type("C", (), {"container_id": CID, "spec": spec, "status": "running"})()


def test_the_veth_goes_beside_the_kill_and_the_record_is_not_fsynced(tmp_path: Path) -> None:
    rt = FakeRuntime(tmp_path)
    CheckpointHost(rt).stop_checkpointed(_container("bridge"), "ck1", timeout_s=5)
    assert rt.store.state.checkpointed == "ck1" and rt.store.state.frozen_by is None
    assert rt.store.syncs == [False]  # the shim's exit record (fsynced) carries it
    assert "sync" not in rt.events
    assert rt.events.index("kill") < rt.events.index("veth gone") < rt.events.index("release")
    assert rt.events[-1] == "release"


def test_without_an_exit_record_the_checkpoint_record_is_fsynced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rt = FakeRuntime(tmp_path, exits=False)
    CheckpointHost(rt).stop_checkpointed(_container("bridge"), "ck1", timeout_s=0.05)
    assert "sync" in rt.events and rt.events[-1] == "release"
    assert "no exit recorded" in caplog.text


def test_no_veth_no_thread(tmp_path: Path) -> None:
    rt = FakeRuntime(tmp_path)
    rt.disconnect_started.set()  # nothing to wait for: --network none has no veth
    CheckpointHost(rt).stop_checkpointed(_container("none"), "ck1", timeout_s=5)
    assert rt.events == ["record", "kill", "thaw", "release"]
