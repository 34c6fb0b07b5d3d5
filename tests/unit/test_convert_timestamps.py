"""Times cross the API twice (issue 15): the unix-seconds double older clients read, and beside it
the google.protobuf.Timestamp Go, Java and Node clients expect (docs/api.md "Times")."""

from __future__ import annotations

import dataclasses

from google.protobuf.timestamp_pb2 import Timestamp

from migrate import api
from migrate.remote import convert as cv
from runtime.events import Event
from tests.unit.test_convert import FREEZE, IMAGE, INFO, SPEC, STATE


def _seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def test_every_unix_time_has_its_timestamp() -> None:
    spec = dataclasses.replace(SPEC, created_at=1796419341.219333)
    assert _seconds(cv.spec_to_pb(spec).create_time) == spec.created_at
    state = cv.state_to_pb(dataclasses.replace(STATE, started_at=1796419341.5, finished_at=1796419399.25, frozen_by=FREEZE))
    assert (_seconds(state.start_time), _seconds(state.finish_time)) == (1796419341.5, 1796419399.25)
    assert _seconds(state.frozen_by.since_time) == FREEZE.since
    assert _seconds(cv.container_to_pb(INFO).spec.create_time) == INFO.spec.created_at
    assert _seconds(cv.image_to_pb(IMAGE).create_time) == IMAGE.created_at
    checkpoint = api.CheckpointInfo(checkpoint_id="c" * 16, container_name="web", container_id="a" * 32,
                                    image_digest="sha256:" + "d" * 64, created_at=1796419000.125, size_bytes=1, criu_version="4.1.1")
    assert _seconds(cv.checkpoint_info_to_pb(checkpoint).create_time) == 1796419000.125
    volume = api.VolumeInfo(name="data", mountpoint="/m", created_at=1796419001.5, driver="local")
    assert _seconds(cv.volume_info_to_pb(volume).create_time) == 1796419001.5
    event = Event(sequence=7, time=1796419002.75, type="container", action="start", id="a" * 32, name="web", attributes={})
    assert _seconds(cv.event_to_pb(event).event_time) == 1796419002.75


def test_an_unknown_time_has_no_timestamp() -> None:
    state = cv.state_to_pb(dataclasses.replace(STATE, started_at=None, finished_at=None))
    assert not state.HasField("start_time") and not state.HasField("finish_time")
    assert not cv.spec_to_pb(dataclasses.replace(SPEC, created_at=0.0)).HasField("create_time")
