"""The standard error model, reflection v1 and the package options (docs/api.md).

Errors map to google.rpc.Status (ErrorInfo; BadRequest for bad input) and back; a real
in-process daemon sends the standard trailer that grpcio-status reads, beside our own; the
client rebuilds the typed error from the standard trailer alone; reflection answers over v1
and v1alpha.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status as grpc_rpc_status

from migrate._proto.pymigrate.v1 import host_pb2 as pb
from migrate._proto.pymigrate.v1 import host_pb2_grpc as pb_grpc
from migrate.errors import MigrationTimeout
from migrate.remote import _rpc_errors, rpc_status
from migrate.remote.server import create_server
from runtime.errors import ContainerNotFound, InvalidArgument, InvalidSpec, InvalidState
from tests.fakes.engine import FakeEngine


def _status(exc: BaseException) -> tuple[grpc.StatusCode, str, dict[str, str | bytes]]:
    code, details, metadata = _rpc_errors.encode(exc)
    return code, details, dict(metadata)


def _details(status: object, cls: type) -> list:
    found = []
    for detail in status.details:  # type: ignore[attr-defined]
        message = cls()
        if detail.Unpack(message):
            found.append(message)
    return found


@pytest.mark.parametrize(
    "name, reason",
    [
        ("ContainerNotFound", "CONTAINER_NOT_FOUND"),
        ("OSError", "OS_ERROR"),
        ("InvalidArgument", "INVALID_ARGUMENT"),
        ("CriuTimeout", "CRIU_TIMEOUT"),
        ("RegistryTlsError", "REGISTRY_TLS_ERROR"),
        ("PermissionError", "PERMISSION_ERROR"),
    ],
)
def test_reason_is_the_class_in_upper_snake(name: str, reason: str) -> None:
    assert rpc_status.reason_for(name) == reason


def test_not_found_carries_error_info_with_the_name() -> None:
    code, details, metadata = _status(ContainerNotFound("web"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert metadata[_rpc_errors.DATA_KEY]  # our own trailer stays for the Python client
    status = rpc_status.parse(metadata[rpc_status.DETAILS_KEY])
    assert status is not None and status.code == grpc.StatusCode.NOT_FOUND.value[0] and status.message == details
    (info,) = _details(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("CONTAINER_NOT_FOUND", "pymigrate.io")
    assert dict(info.metadata) == {"type": "ContainerNotFound", "name": "web"}
    assert _details(status, error_details_pb2.BadRequest) == []


def test_bad_input_carries_a_field_violation() -> None:
    _, _, metadata = _status(InvalidSpec("volumes[0].source", "invalid volume source '': expected a path", hint="use -v SRC:DST"))
    status = rpc_status.parse(metadata[rpc_status.DETAILS_KEY])
    assert status is not None
    (info,) = _details(status, error_details_pb2.ErrorInfo)
    assert info.reason == "INVALID_SPEC" and info.metadata["hint"] == "use -v SRC:DST"
    (bad,) = _details(status, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("volumes[0].source", "invalid volume source '': expected a path")
    ]


def test_bad_input_without_a_field_names_the_request_as_a_whole() -> None:
    _, _, metadata = _status(InvalidArgument("invalid memory '12q': expected a number"))
    status = rpc_status.parse(metadata[rpc_status.DETAILS_KEY])
    (bad,) = _details(status, error_details_pb2.BadRequest)
    assert bad.field_violations[0].field == "" and "12q" in bad.field_violations[0].description


def test_non_string_fields_are_json_and_phase_is_kept() -> None:
    exc = MigrationTimeout("the migration of web took over 30 s")
    exc.phase = "dump"
    exc.limit_s = 30.0  # type: ignore[attr-defined]
    _, _, metadata = _status(exc)
    info = rpc_status.error_info(rpc_status.parse(metadata[rpc_status.DETAILS_KEY]))  # type: ignore[arg-type]
    assert info is not None and info.metadata["phase"] == "dump" and info.metadata["limit_s"] == "30.0"


def test_huge_fields_stay_inside_the_metadata_budget() -> None:
    exc = ContainerNotFound("x" * 5000)
    for i in range(40):
        setattr(exc, f"field{i}", "y" * 300)
    _, _, metadata = _status(exc)
    blob = metadata[rpc_status.DETAILS_KEY]
    assert isinstance(blob, bytes) and len(blob) < 4500


def test_the_client_rebuilds_the_typed_error_from_the_standard_trailer_alone() -> None:
    exc = InvalidState("web", "stop", "exited", ("running", "paused"))
    code, details, metadata = _status(exc)
    standard_only = [(rpc_status.DETAILS_KEY, metadata[rpc_status.DETAILS_KEY])]
    back = _rpc_errors.decode(code, details, standard_only, "unix:/x.sock")
    assert type(back) is InvalidState and str(back) == str(exc)
    assert {k: getattr(back, k) for k in vars(exc) if k != "message"} == {k: v for k, v in vars(exc).items() if k != "message"}


def test_our_trailer_wins_when_both_are_present() -> None:
    exc = ContainerNotFound("5")  # the standard trailer alone would read the name back as 5
    code, details, metadata = _status(exc)
    back = _rpc_errors.decode(code, details, list(metadata.items()), "unix:/x.sock")
    assert type(back) is ContainerNotFound and back.name == "5"  # type: ignore[attr-defined]
    standard_only = [(rpc_status.DETAILS_KEY, metadata[rpc_status.DETAILS_KEY])]
    assert _rpc_errors.decode(code, details, standard_only, "unix:/x.sock").name == 5  # type: ignore[attr-defined]


def test_foreign_or_broken_details_fall_back_to_the_code() -> None:
    foreign = rpc_status.to_status(grpc.StatusCode.NOT_FOUND, "gone", {"type": "X"})
    foreign.details[0].value = b"\xff"  # not an ErrorInfo any more
    for value in (b"\x0a\xff\xff", foreign.SerializeToString()):
        back = _rpc_errors.decode(grpc.StatusCode.NOT_FOUND, "gone", [(rpc_status.DETAILS_KEY, value)], "unix:/x.sock")
        assert type(back).__name__ == "PeerError"


# --- over a real in-process daemon ------------------------------------------------------------------


@pytest.fixture
def channel() -> Iterator[grpc.Channel]:
    d = Path(tempfile.mkdtemp(prefix="pm-rst-", dir="/tmp"))
    server, _ = create_server(FakeEngine(), f"unix:{d}/d.sock", spool_dir=d / "spool")  # type: ignore[arg-type]
    server.start()
    ch = grpc.insecure_channel(server.target)
    yield ch
    ch.close()
    server.stop(0)
    shutil.rmtree(d, ignore_errors=True)


def test_a_refused_call_reads_with_grpcio_status(channel: grpc.Channel) -> None:
    stub = pb_grpc.HostStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.InspectContainer(pb.InspectContainerRequest(name="missing"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    status = grpc_rpc_status.from_call(caught.value)  # checks that code and message agree
    assert status is not None
    (info,) = _details(status, error_details_pb2.ErrorInfo)
    assert info.reason == "CONTAINER_NOT_FOUND" and info.metadata["name"] == "missing"


def _list_services(channel: grpc.Channel, method: str) -> list[str]:
    call = channel.stream_stream(
        method,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (reply,) = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    return sorted(s.name for s in reply.list_services_response.service)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_services(channel: grpc.Channel, version: str) -> None:
    services = _list_services(channel, f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo")
    assert services == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "pymigrate.v1.Host",
    ]


def test_reflection_v1_describes_itself(channel: grpc.Channel) -> None:
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection")
    (reply,) = list(call(iter([request]), timeout=10))
    assert reply.WhichOneof("message_response") == "file_descriptor_response"


# --- package options for other languages ------------------------------------------------------------


def test_proto_names_its_go_and_java_packages() -> None:
    options = pb.DESCRIPTOR.GetOptions()
    assert options.go_package == "pymigrate.io/api/pymigrate/v1;pymigratev1"
    assert (options.java_package, options.java_multiple_files, options.java_outer_classname) == ("io.pymigrate.v1", True, "HostProto")


@pytest.mark.skipif(shutil.which("protoc") is None, reason="needs protoc (its Java generator is built in)")
def test_java_code_generates_one_file_per_message_in_its_package(tmp_path: Path) -> None:
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    subprocess.run(["protoc", "-I", str(repo / "protos"), f"--java_out={tmp_path}", "pymigrate/v1/host.proto"], check=True, timeout=60)
    package = tmp_path / "io" / "pymigrate" / "v1"
    assert (package / "HostProto.java").is_file() and (package / "InspectContainerRequest.java").is_file()
    assert "package io.pymigrate.v1;" in (package / "InspectContainerRequest.java").read_text()


def test_names_with_lone_surrogates_still_make_a_status() -> None:
    """A hostile archive's member name decoded with surrogateescape: the answer still goes out
    (escaped), instead of the daemon failing with UNKNOWN (test_trust_archives found it)."""
    import grpc

    from migrate.remote import rpc_status

    data = {"type": "InvalidArgument", "message": "bad member a\udcff", "attrs": {"name": "x\ud800", "field": "f\udcff"}}
    status = rpc_status.to_status(grpc.StatusCode.INVALID_ARGUMENT, "bad member a\udcff", data)
    back = rpc_status.parse(status.SerializeToString())
    assert back is not None and back.message == "bad member a\\udcff"
    info = rpc_status.error_info(back)
    assert info is not None and info.metadata["name"] == "x\\ud800"
