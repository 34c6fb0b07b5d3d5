"""Durations cross the API twice (issue 15): the double named for its unit (`frozen_ms`, `timeout_s`)
older clients read, and beside it the google.protobuf.Duration Go, Java and Node clients expect
(docs/api.md "Durations"). Both ways: the daemon fills both, a reader takes the Duration when set."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration

from migrate import api
from migrate._proto.pymigrate.v1 import host_pb2 as pb
from migrate.remote import convert as cv
from migrate.remote.stats_stream import serve_stats
from tests.unit.test_convert import CHECKPOINT_STATS, MIGRATION_STATS, RESTORE_OPTIONS, RESTORE_STATS


def _ns(d: Duration) -> int:
    return d.seconds * 1_000_000_000 + d.nanos


def _wire(message: Any) -> Any:
    return type(message).FromString(message.SerializeToString())


def test_every_duration_double_has_its_duration() -> None:
    ck = cv.checkpoint_stats_to_pb(CHECKPOINT_STATS)
    for name in ("freezing", "frozen", "memdump", "memwrite", "archive", "total"):
        assert _ns(getattr(ck, f"{name}_duration")) == round(getattr(CHECKPOINT_STATS, f"{name}_ms") * 1e6), name
    rs = cv.restore_stats_to_pb(RESTORE_STATS)
    for name in ("import", "restore", "total", "since_resume"):
        assert _ns(getattr(rs, f"{name}_duration")) == round(getattr(RESTORE_STATS, f"{name}_ms") * 1e6), name
    ms = cv.migration_stats_to_pb(MIGRATION_STATS)
    assert (_ns(ms.frozen_duration), _ns(ms.total_duration)) == (1_500_000, 2_500_000)
    assert {k: _ns(v) for k, v in ms.phase_durations.items()} == {"dump": 5_500_000, "restore": 6_500_000}
    assert dict(ms.phases_ms) == MIGRATION_STATS.phases_ms  # the deprecated doubles are still filled
    commit = cv.commit_result_to_pb(api.CommitResult(image=api.ImageInfo("i", "sha256:" + "d" * 64, 1, 1.0), layer_diff_id="x",
                                                     layer_bytes=1, whiteouts=0, opaque_dirs=0, skipped=(), frozen_ms=12.25))
    assert _ns(commit.frozen_duration) == 12_250_000
    event = api.ProgressEvent(operation="migrate", phase="dump", elapsed_s=3.000000125)
    assert _ns(cv.progress_to_pb(event).elapsed) == 3_000_000_125
    assert _ns(cv.migration_event_to_pb(event).elapsed) == 3_000_000_125
    assert _ns(cv.restore_request_to_pb(RESTORE_OPTIONS).timeout) == round(RESTORE_OPTIONS.timeout_s * 1e9)


def test_a_zero_duration_is_present() -> None:
    """The daemon sets the Duration even when it is zero: its presence says "read me, not the double"."""
    ck = _wire(cv.checkpoint_stats_to_pb(api.CheckpointStats()))
    assert ck.HasField("frozen_duration") and _ns(ck.frozen_duration) == 0


def test_the_duration_wins_when_reading_results() -> None:
    ck = cv.checkpoint_stats_to_pb(CHECKPOINT_STATS)
    ck.frozen_duration.CopyFrom(cv.as_duration(0.0775))  # a sender whose double is stale or rounded
    assert cv.checkpoint_stats_from_pb(_wire(ck)).frozen_ms == pytest.approx(77.5)
    ms = cv.migration_stats_to_pb(MIGRATION_STATS)
    ms.phase_durations["dump"].CopyFrom(cv.as_duration(0.009))
    assert cv.migration_stats_from_pb(_wire(ms)).phases_ms == {"dump": pytest.approx(9.0), "restore": pytest.approx(6.5)}


def test_an_older_peer_without_durations_is_read_from_its_doubles() -> None:
    old = pb.CheckpointStats(frozen_ms=41.5, total_ms=99.0)
    stats = cv.checkpoint_stats_from_pb(old)
    assert (stats.frozen_ms, stats.total_ms) == (41.5, 99.0)
    migration = cv.migration_stats_from_pb(pb.MigrationStats(frozen_ms=3.0, phases_ms={"dump": 1.25}))
    assert (migration.frozen_ms, migration.phases_ms) == (3.0, {"dump": 1.25})
    assert cv.progress_from_pb(pb.ProgressEvent(phase="x", elapsed_s=2.5)).elapsed_s == 2.5


@pytest.mark.parametrize("value", [0.0, 1e-9, 0.5, 1.25, 59.999999999, 3600.0, 86400 * 365.25 * 50, -0.75, -2.5])
def test_seconds_round_trip_to_the_nanosecond(value: float) -> None:
    d = cv.as_duration(value)
    assert (d.seconds >= 0 and d.nanos >= 0) or (d.seconds <= 0 and d.nanos <= 0)  # one sign, as the type requires
    assert abs(d.nanos) < 1_000_000_000
    assert cv.duration_amount(d) == pytest.approx(value, abs=1e-9)
    assert d.ToTimedelta().total_seconds() == pytest.approx(value, abs=1e-6)  # protobuf's own reading agrees


def test_non_finite_and_huge_amounts() -> None:
    assert _ns(cv.as_duration(math.nan)) == 0 and _ns(cv.as_duration(math.inf)) == 0
    huge = cv.as_duration(1e20)
    assert huge.seconds == 315_576_000_000 and huge.nanos == 0  # clamped to the type's range
    huge.ToJsonString()  # valid: protobuf's own range check passes


def test_requests_read_the_duration_first_then_the_double() -> None:
    both = pb.StopContainerRequest(name="a", timeout_s=30, timeout=cv.as_duration(2.5))
    assert cv.seconds_of(both, "timeout", "timeout_s") == 2.5
    assert cv.seconds_of(pb.StopContainerRequest(name="a", timeout_s=7), "timeout", "timeout_s") == 7.0
    assert cv.seconds_of(pb.StopContainerRequest(name="a"), "timeout", "timeout_s") is None
    zero = pb.StopContainerRequest(name="a", timeout_s=30, timeout=Duration())
    zero.timeout.SetInParent()
    assert cv.seconds_of(_wire(zero), "timeout", "timeout_s") == 0.0  # an explicit zero is no "unset"
    assert cv.seconds_of(pb.WaitContainerRequest(name="a", timeout=cv.as_duration(0.25)), "timeout", "timeout_s") == 0.25
    assert cv.seconds_of(pb.StatsRequest(interval_s=3), "interval", "interval_s") == 3.0  # a plain double: its value


def test_restore_timeout_from_either_field() -> None:
    only_duration = pb.RestoreRequest(checkpoint_id="ck", timeout=cv.as_duration(12))
    assert cv.restore_options_from_pb(only_duration).timeout_s == 12.0
    both = pb.RestoreRequest(checkpoint_id="ck", timeout_s=500, timeout=cv.as_duration(20))
    assert cv.restore_options_from_pb(both).timeout_s == 20.0
    assert cv.restore_options_from_pb(pb.RestoreRequest(checkpoint_id="ck", timeout_s=33)).timeout_s == 33.0
    negative = pb.RestoreRequest(checkpoint_id="ck", timeout_s=33, timeout=cv.as_duration(-1))
    assert cv.restore_options_from_pb(negative).timeout_s == api.DEFAULT_RESTORE_TIMEOUT_S
    assert cv.restore_options_from_pb(cv.restore_request_to_pb(dataclasses.replace(RESTORE_OPTIONS, timeout_s=0.5))).timeout_s == 0.5


class _Context:
    def add_callback(self, _: Any) -> bool:
        return True


class _Engine:
    def stats(self, names: tuple[str, ...]) -> list[Any]:
        return []


def test_stats_interval_duration_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """A streaming Stats with only ``interval`` set waits that long between samples."""
    import migrate.remote.stats_stream as stats_stream

    waits: list[float] = []

    class _Ended:
        def set(self) -> None: ...

        def wait(self, seconds: float) -> bool:
            waits.append(seconds)
            return True  # the call ends after the first wait

    monkeypatch.setattr(stats_stream.threading, "Event", _Ended)
    monkeypatch.setattr(stats_stream, "_sample", lambda engine, names, previous: {})
    list(serve_stats(_Engine(), pb.StatsRequest(stream=True, interval=cv.as_duration(2.5), interval_s=9), _Context()))
    list(serve_stats(_Engine(), pb.StatsRequest(stream=True, interval_s=4), _Context()))
    assert waits == [2.5, 4.0]


def test_deprecated_doubles_are_marked_and_named_with_their_replacement() -> None:
    deprecated = {(m.name, f.name) for m in pb.DESCRIPTOR.message_types_by_name.values() for f in m.fields
                  if f.GetOptions().deprecated}
    replacements = {**{k: v[0] for k, v in cv._DURATIONS.items()}, **cv._TIMESTAMPS, "read_at_unix_s": "read_time",
                    "until": "until_time"}
    by_message = {"Event": {"time": "event_time"}, "StreamLogsResponse": {"time": "write_time"}}
    for message, field in deprecated:
        fields = pb.DESCRIPTOR.message_types_by_name[message].fields_by_name
        replacement = by_message.get(message, {}).get(field, replacements.get(field))
        assert replacement in fields, f"{message}.{field} is deprecated without its replacement beside it"
    assert ("StopContainerRequest", "timeout_s") in deprecated and ("MigrationStats", "phases_ms") in deprecated
    assert ("ContainerState", "started_at") in deprecated and ("Event", "time") in deprecated
    # every unit-named double of an answer or request has been replaced (the monotonic clock reading is no duration)
    left = {(m.name, f.name) for m in pb.DESCRIPTOR.message_types_by_name.values() for f in m.fields
            if f.name.endswith(("_ms", "_s")) and f.type == f.TYPE_DOUBLE and not f.GetOptions().deprecated}
    assert left == {("ContainerStatsSample", "read_at_monotonic_s"),
                    ("MigrationEvent", "throughput_bytes_per_s")}, left


def test_a_stats_sample_has_its_read_time() -> None:
    from runtime.stats import ContainerStats

    sample = ContainerStats(name="web", container_id="a" * 32, status="running", read_at_s=5.0, online_cpus=2)
    m = cv.stats_to_pb(sample, 1796419341.25)
    assert (m.read_time.seconds, m.read_time.nanos) == (1796419341, 250_000_000)


def test_log_times_as_timestamps() -> None:
    from runtime.logs import LogEntry

    entry = LogEntry(stream="stderr", time_ns=1_796_419_341_123_456_789, data=b"x\n")
    m = cv.log_entry_to_pb(entry)
    assert (m.write_time.seconds, m.write_time.nanos) == (1_796_419_341, 123_456_789)
    assert cv.log_entry_from_pb(_wire(m)) == entry  # to the nanosecond (the double alone loses some)
    assert cv.log_entry_from_pb(pb.StreamLogsResponse(data=b"x", time=2.5)).time_ns == 2_500_000_000  # an older daemon
    assert not cv.log_entry_to_pb(LogEntry(stream="stdout", time_ns=0, data=b"")).HasField("write_time")
    request = _wire(cv.logs_request("web", False, None, 1796419000.25, 1796419100.5))
    assert (request.since, request.since_time.seconds, request.since_time.nanos) == (1796419000.25, 1796419000, 250_000_000)
    assert cv.logs_arguments(request)["since"] == 1796419000.25 and cv.logs_arguments(request)["until"] == 1796419100.5
    newer = pb.StreamLogsRequest(name="web", since=1.0)
    newer.since_time.seconds = 1796419000  # the Timestamp wins over the double
    assert cv.logs_arguments(newer)["since"] == 1796419000.0 and cv.logs_arguments(newer)["until"] is None


def test_deprecated_fields_are_documented() -> None:
    """docs/api.md's "Deprecated fields" table names every field host.proto marks."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    table = doc.split("## Deprecated fields", 1)[1].split("\n## ", 1)[0]
    for m in pb.DESCRIPTOR.message_types_by_name.values():
        for f in m.fields:
            if f.GetOptions().deprecated:
                assert f"`{f.name}`" in table or f"`{m.name}.{f.name}`" in table, f"{m.name}.{f.name} not in docs/api.md"
