"""Image load, pull, push and inspect over gRPC (LoadImage, PullImage, PushImageToRegistry,
InspectImage): HostServicer + RemoteEngine against FakeEngine on a real unix socket, and the CLI's
``--host`` path over the same daemon.

What crosses: skopeo's report lines as progress in order, the registry options (creds, the
daemon-side paths), the results; every image and registry error comes back as the same class with
its hint and data; an upload is spooled into the state root's tmp and removed; an OCI layout
directory is packed on the client, its symlinks out of it refused before anything is sent; a
cancelled pull reaches the engine; errors about the daemon's spooled copy name the caller's file.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from migrate import api
from migrate._proto.pymigrate.v1 import host_pb2 as pb
from migrate.remote import _rpc_errors
from runtime.errors import ImageError, ImageNotFound, InvalidArgument, Unsupported
from runtime.image_config import ImageConfigError
from runtime.image_store import NotARootfsTarball
from runtime.layer_store import LayerDigestMismatch
from runtime.oci_image import BlobDigestMismatch, ImageFormatError, PlatformNotFound, layout_tar
from runtime.registry import (
    PushResult,
    RegistryAuthFailed,
    RegistryDigestMismatch,
    RegistryError,
    RegistryImageNotFound,
    RegistryOptions,
    RegistryPlatformNotFound,
    RegistryTlsError,
    RegistryUnreachable,
)
from tests.fakes.engine import FakeEngine
from tests.unit.test_service import Daemon, sockdir, start_daemon  # noqa: F401 (sockdir is a fixture)

REF = "127.0.0.1:5000/pmt/app:1"


@pytest.fixture
def daemon(sockdir: Path) -> Iterator[Daemon]:  # noqa: F811
    d = start_daemon(f"unix:{sockdir}/d.sock", spool_dir=sockdir / "spool")
    yield d
    d.close()


def _oci_dir(root: Path) -> Path:
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    (root / "blobs" / "sha256" / ("a" * 64)).write_bytes(os.urandom(3 << 20))
    (root / "blobs" / "sha256" / ("b" * 64)).write_bytes(b"")
    return root


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        out = {}
        for m in tar:
            assert m.isreg(), m.name
            f = tar.extractfile(m)
            assert f is not None
            out[m.name] = f.read()
        return out


# --- pull, push, inspect ---------------------------------------------------------------------------


def test_pull_streams_skopeos_lines_then_the_image(daemon: Daemon) -> None:
    lines: list[str] = []
    options = RegistryOptions(tls_verify=False, cert_dir=Path("/etc/pm/certs.d"), creds="alice:se:cret")
    info = daemon.client.image_pull(REF, name="app:1", platform="linux/arm64", options=options, progress=lines.append)
    assert lines == list(daemon.engine.copy_lines)
    assert info.name == "app:1" and info in daemon.client.images()
    assert daemon.engine.registry_calls == [("pull", REF, "app:1", "linux/arm64", options)]

    daemon.client.image_pull(REF)  # defaults: no name, no platform, default options
    assert daemon.engine.registry_calls[-1] == ("pull", REF, None, None, RegistryOptions())


def test_relative_daemon_side_paths_are_refused_before_the_call(daemon: Daemon) -> None:
    for options in (RegistryOptions(cert_dir=Path("certs")), RegistryOptions(authfile=Path("auth.json"))):
        with pytest.raises(InvalidArgument, match="absolute path on the daemon's host"):
            daemon.client.image_pull(REF, options=options)
        with pytest.raises(InvalidArgument, match="absolute path on the daemon's host"):
            daemon.client.image_push("app:1", REF, options=options)
    assert daemon.engine.registry_calls == []


def test_push_and_inspect(daemon: Daemon) -> None:
    pulled = daemon.client.image_pull(REF, name="app:1")
    lines: list[str] = []
    result = daemon.client.image_push("app:1", "127.0.0.1:5000/pmt/app:2", options=RegistryOptions(authfile=Path("/a.json")),
                                      progress=lines.append)
    assert isinstance(result, PushResult) and result.name == "app:1" and result.reference.endswith("app:2")
    assert result.digest.startswith("sha256:") and lines == list(daemon.engine.copy_lines)

    assert daemon.client.image_inspect("app:1") == api.ImageDetails(pulled, None)
    config = {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "Env": ["A=1"], "StopSignal": "SIGQUIT"}
    daemon.engine.image_configs[pulled.digest] = config
    assert daemon.client.image_inspect("app:1") == api.ImageDetails(pulled, config)
    with pytest.raises(ImageNotFound):
        daemon.client.image_inspect("nope")
    with pytest.raises(ImageNotFound):
        daemon.client.image_push("nope", REF)


def test_a_cancelled_pull_reaches_the_engine(daemon: Daemon) -> None:
    class Stop(Exception):
        pass

    daemon.engine.copy_lines = tuple(f"Copying blob sha256:{i:04}" for i in range(100))
    daemon.engine.step_delay_s = 0.05

    def progress(line: str) -> None:
        raise Stop  # Ctrl-C in the CLI

    with pytest.raises(Stop):
        daemon.client.image_pull(REF, name="app:1", progress=progress)
    assert daemon.engine.cancelled.wait(5.0), "the engine never saw the cancellation"
    assert daemon.client.images() == []


# --- errors ----------------------------------------------------------------------------------------

IMAGE_ERRORS = [
    (RegistryAuthFailed("pull", REF, "registry 127.0.0.1:5000 refused the credentials (unauthorized)",
                        detail="unauthorized: authentication required", hint="give credentials with --creds USER:PASS"),
     grpc.StatusCode.FAILED_PRECONDITION),
    (RegistryTlsError("pull", REF, "registry 127.0.0.1:5000 speaks plain http, not https", hint="--tls-verify=false"),
     grpc.StatusCode.FAILED_PRECONDITION),
    (RegistryUnreachable("push", REF, "registry 127.0.0.1:5000 is not reachable (connection refused)", hint="running?"),
     grpc.StatusCode.UNAVAILABLE),
    (RegistryImageNotFound("pull", REF, "registry has no tag 1 in pmt/app (manifest unknown)", hint="skopeo list-tags"),
     grpc.StatusCode.NOT_FOUND),
    (RegistryDigestMismatch("pull", REF, "content does not match its digest", hint="corrupt"), grpc.StatusCode.DATA_LOSS),
    (RegistryPlatformNotFound("pull", REF, "linux/s390x", ("linux/amd64", "linux/arm64"), detail="no image found"),
     grpc.StatusCode.NOT_FOUND),
    (RegistryError("pull", REF, "the containers trust policy refused it", detail="policy", hint="see policy.json"),
     grpc.StatusCode.UNKNOWN),
    (BlobDigestMismatch("/tmp/a.tar", "blobs/sha256/ab", "sha256:ab", "sha256:cd"), grpc.StatusCode.DATA_LOSS),
    (LayerDigestMismatch("layer 2 of app:1", "sha256:ab", "sha256:cd"), grpc.StatusCode.DATA_LOSS),
    (PlatformNotFound("/tmp/a.tar", "linux/s390x", ("linux/amd64",)), grpc.StatusCode.NOT_FOUND),
    (ImageFormatError("/tmp/a.tar", "neither index.json nor manifest.json found", hint="image import"),
     grpc.StatusCode.INVALID_ARGUMENT),
    (NotARootfsTarball(Path("/tmp/a.tar"), "docker-archive"), grpc.StatusCode.INVALID_ARGUMENT),
    (ImageConfigError("config sha256:ab", "Env is not a list"), grpc.StatusCode.INVALID_ARGUMENT),
]


def _public(exc: BaseException) -> dict[str, object]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(exc).items()}


@pytest.mark.parametrize("exc, code", IMAGE_ERRORS, ids=[type(e).__name__ for e, _ in IMAGE_ERRORS])
def test_image_errors_keep_their_type_hint_and_data(daemon: Daemon, exc: ImageError, code: grpc.StatusCode) -> None:
    daemon.engine.fail["image_pull"] = exc
    with pytest.raises(grpc.RpcError) as raw:
        list(daemon.stub.PullImage(pb.PullImageRequest(reference=REF)))
    assert raw.value.code() == code
    assert dict(raw.value.trailing_metadata())["pymigrate-error-type"] == type(exc).__name__

    daemon.engine.fail["image_pull"] = exc
    with pytest.raises(ImageError) as got:
        daemon.client.image_pull(REF)
    assert type(got.value) is type(exc)
    assert str(got.value) == str(exc) and got.value.hint == exc.hint
    assert _public(got.value) == _public(exc)


def test_every_image_error_class_crosses_by_name() -> None:
    known = _rpc_errors.known_classes()
    for exc, _code in IMAGE_ERRORS:
        assert known[type(exc).__name__] is type(exc)
    for cls in (RegistryAuthFailed, RegistryError, LayerDigestMismatch, BlobDigestMismatch, PlatformNotFound):
        assert _rpc_errors.status_for(cls.__new__(cls))[1], cls


def test_errors_of_the_other_rpcs_cross_too(daemon: Daemon, sockdir: Path) -> None:  # noqa: F811
    daemon.engine.fail["image_push"] = RegistryAuthFailed("push", REF, "refused", hint="--creds")
    with pytest.raises(RegistryAuthFailed, match="cannot push .*: refused"):
        daemon.client.image_push("x", REF)
    daemon.engine.fail["image_inspect"] = ImageNotFound("x")
    with pytest.raises(ImageNotFound):
        daemon.client.image_inspect("x")
    archive = sockdir / "a.tar"
    archive.write_bytes(b"x" * 10)
    daemon.engine.fail["image_load"] = PlatformNotFound("/somewhere/else.tar", "linux/s390x", ("linux/amd64",))
    with pytest.raises(PlatformNotFound) as got:
        daemon.client.image_load(archive, platform="linux/s390x")
    assert got.value.available == ("linux/amd64",) and "--platform" in (got.value.hint or "")


def test_an_engine_without_registries_is_unimplemented(sockdir: Path) -> None:  # noqa: F811
    class Minimal(FakeEngine):
        image_pull = None  # type: ignore[assignment]

    d = start_daemon(f"unix:{sockdir}/m.sock", Minimal())
    try:
        with pytest.raises(Unsupported, match="image_pull is not supported here"):
            d.client.image_pull(REF)
    finally:
        d.close()


# --- load ------------------------------------------------------------------------------------------


def test_load_uploads_an_archive_and_removes_the_spooled_copy(daemon: Daemon, sockdir: Path) -> None:  # noqa: F811
    archive = sockdir / "app.tar"
    archive.write_bytes(os.urandom(3_000_001))
    info = daemon.client.image_load(archive, name="app:1", platform="linux/amd64")
    assert info.name == "app:1" and info.size_bytes == 3_000_001
    assert daemon.engine.loaded == [("app:1", "linux/amd64", archive.read_bytes())]
    assert not list((sockdir / "spool").iterdir()), "the spooled archive is removed after the load"
    info = daemon.client.image_load(archive)  # no name, no platform: the archive's own, the daemon's
    assert daemon.engine.loaded[-1][:2] == (None, None) and info.name == "loaded:latest"


def test_load_of_an_empty_file_still_reaches_the_engine(daemon: Daemon, sockdir: Path) -> None:  # noqa: F811
    empty = sockdir / "empty.tar"
    empty.write_bytes(b"")
    daemon.client.image_load(empty, name="e:1")
    assert daemon.engine.loaded == [("e:1", None, b"")]
    with pytest.raises(InvalidArgument, match="not a file or directory"):
        daemon.client.image_load(sockdir / "missing.tar")


def test_load_checks_chunk_order_and_crc(daemon: Daemon) -> None:
    def load(*requests: pb.LoadImageRequest) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as raw:
            daemon.stub.LoadImage(iter(requests))
        return raw.value

    assert load(pb.LoadImageRequest(data=b"a", seq=1)).code() == grpc.StatusCode.UNAVAILABLE  # TransferError
    assert load(pb.LoadImageRequest(data=b"a", seq=0, crc32=1)).code() == grpc.StatusCode.DATA_LOSS
    err = load()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty stream" in (err.details() or "")
    assert daemon.engine.loaded == []


def test_an_oci_directory_is_packed_on_the_client(daemon: Daemon, sockdir: Path) -> None:  # noqa: F811
    layout = _oci_dir(sockdir / "oci")
    (layout / "blobs" / "sha256" / "link").symlink_to(layout / "index.json")  # inside: packed as that file
    daemon.client.image_load(layout, name="oci:1")
    members = _members(daemon.engine.loaded[-1][2])
    expected = {str(p.relative_to(layout)): p.read_bytes() for p in layout.rglob("*") if p.is_file()}
    assert members == expected and members["blobs/sha256/link"] == (layout / "index.json").read_bytes()


@pytest.mark.parametrize("kind", ["link out", "link to a dir", "fifo"])
def test_an_oci_directory_with_something_unsafe_is_refused_before_sending(daemon: Daemon, sockdir: Path,  # noqa: F811
                                                                         kind: str) -> None:
    layout = _oci_dir(sockdir / "oci")
    secret = sockdir / "secret"
    secret.write_text("not yours")
    blob = layout / "blobs" / "sha256" / ("c" * 64)
    if kind == "link out":
        blob.symlink_to(secret)
    elif kind == "link to a dir":
        blob.symlink_to(layout / "blobs")
    else:
        os.mkfifo(blob)
    with pytest.raises(ImageFormatError, match=f"cannot load image from {layout}: blobs/sha256/c+ is "):
        daemon.client.image_load(layout)
    assert daemon.engine.loaded == [] and "image_load" not in daemon.engine.calls


def test_layout_tar_is_a_tar_of_regular_files(tmp_path: Path) -> None:
    layout = _oci_dir(tmp_path / "oci")
    (layout / "blobs" / "sub").mkdir()
    (layout / "blobs" / "sub" / "x").write_bytes(b"y" * 513)
    data = b"".join(layout_tar(layout, chunk_bytes=4096))
    assert len(data) % 512 == 0
    assert set(_members(data)) == {"oci-layout", "index.json", "blobs/sha256/" + "a" * 64, "blobs/sha256/" + "b" * 64,
                                   "blobs/sub/x"}
    with pytest.raises(ImageFormatError, match="not a directory"):
        list(layout_tar(layout / "index.json"))


def test_errors_about_the_spooled_copy_name_the_callers_file(sockdir: Path) -> None:  # noqa: F811
    class Refusing(FakeEngine):
        def image_load(self, path: Path, name: str | None = None, platform: str | None = None) -> api.ImageInfo:
            raise BlobDigestMismatch(str(path), "blobs/sha256/ab", "sha256:ab", "sha256:cd")

        def image_import(self, name: str, tarball: Path) -> api.ImageInfo:
            raise NotARootfsTarball(tarball, "docker-archive")

    d = start_daemon(f"unix:{sockdir}/r.sock", Refusing(), spool_dir=sockdir / "spool")
    try:
        archive = sockdir / "mine.tar"
        archive.write_bytes(b"x")
        with pytest.raises(BlobDigestMismatch) as got:
            d.client.image_load(archive)
        assert str(got.value) == f"cannot load image from {archive}: blob blobs/sha256/ab has sha256:cd, expected sha256:ab"
        assert got.value.source == str(archive)
        with pytest.raises(NotARootfsTarball) as imported:
            d.client.image_import("x", archive)
        assert str(archive) in str(imported.value) and imported.value.hint == f"use: pymigrate image load {archive}"
    finally:
        d.close()


# --- the CLI over --host ------------------------------------------------------------------------------


def _cli(daemon: Daemon, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    from migrate.cli import main

    code = main(["--host", daemon.server.target, "--json", *argv])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_the_cli_pulls_pushes_loads_and_inspects_over_host(daemon: Daemon, sockdir: Path,  # noqa: F811
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, pulled = _cli(daemon, capsys, "image", "pull", REF, "--tls-verify=false", "--creds", "u:p")
    assert code == 0 and set(pulled) == {"name", "digest", "size_bytes", "created_at", "reference"}
    assert pulled["name"] == "app:1" and pulled["reference"] == REF
    assert daemon.engine.registry_calls[-1][-1] == RegistryOptions(tls_verify=False, creds="u:p")

    code, pushed = _cli(daemon, capsys, "image", "push", "app:1", "127.0.0.1:5000/pmt/app:2", "--cert-dir", "/etc/c")
    assert code == 0 and set(pushed) == {"name", "reference", "digest"}
    assert daemon.engine.registry_calls[-1][-1] == RegistryOptions(cert_dir=Path("/etc/c"))

    code, loaded = _cli(daemon, capsys, "image", "load", str(_oci_dir(sockdir / "oci")), "--name", "oci:1")
    assert code == 0 and loaded["name"] == "oci:1" and set(loaded) == {"name", "digest", "size_bytes", "created_at"}

    code, inspected = _cli(daemon, capsys, "image", "inspect", "app:1")
    assert code == 0 and inspected["config"] is None and inspected["digest"] == pulled["digest"]

    daemon.engine.fail["image_pull"] = RegistryAuthFailed("pull", REF, "refused", hint="give --creds")
    code, error = _cli(daemon, capsys, "image", "pull", REF)
    assert code == 125 and error == {"error": f"cannot pull {REF}: refused", "type": "RegistryAuthFailed", "hint": "give --creds"}

    code, error = _cli(daemon, capsys, "image", "pull", REF, "--authfile", "relative.json")
    assert code == 125 and error["type"] == "InvalidArgument"


def test_login_and_logout_are_local_only(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, error = _cli(daemon, capsys, "image", "login", "127.0.0.1:5000", "-u", "alice", "--password-stdin")
    assert code == 125 and error["type"] == "Unsupported" and "--creds" in error["hint"]
    code, error = _cli(daemon, capsys, "image", "logout", "127.0.0.1:5000")
    assert code == 125 and error["type"] == "Unsupported"

