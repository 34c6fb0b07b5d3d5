"""Checkpoint images (migrate/interop/checkpoint_image*.py): the OCI layout written from a
checkpoint directory, read back by the image loader with its annotations; the restore argument
rules; the remote refusal of registry flags. The real builds, pushes and pulls are in
tests/integration/test_checkpoint_image.py."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from migrate import api
from migrate.interop import checkpoint_image as ci
from migrate.interop import checkpoint_image_layout as layout_mod
from runtime.errors import ImageError, InvalidArgument
from runtime.oci_image import ImageArchive

ANNOTATIONS = {layout_mod.PODMAN_NAME: "web", layout_mod.CRIO_NAME: "web", layout_mod.PODMAN_RUNTIME_NAME: "runc"}


def _checkpoint_dir(tmp_path: Path) -> Path:
    root = tmp_path / "ckpt"
    (root / "checkpoint").mkdir(parents=True, mode=0o700)
    (root / "checkpoint" / "pages-1.img").write_bytes(b"\x01" * 5000)
    (root / "checkpoint" / "descriptors.json").write_text('["/dev/null","pipe:[1]","pipe:[2]"]')
    (root / "config.dump").write_text(json.dumps({"name": "web", "rootfsImageName": "localhost/base:1"}))
    (root / "spec.dump").write_text("{}")
    (root / "artifacts").mkdir()
    return root


def test_layout_is_one_gzip_layer_of_the_directory_with_the_marks_on_the_manifest(tmp_path: Path) -> None:
    source = _checkpoint_dir(tmp_path)
    written = layout_mod.write_layout(source, tmp_path / "oci", "1", ANNOTATIONS, created_at=1_000_000)
    index = json.loads((tmp_path / "oci" / "index.json").read_text())
    assert index["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "1"}
    blobs = tmp_path / "oci" / "blobs" / "sha256"
    manifest = json.loads((blobs / written.manifest_digest[7:]).read_bytes())
    assert manifest["annotations"] == ANNOTATIONS
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    data = (blobs / layer["digest"][7:]).read_bytes()
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" == layer["digest"] and len(data) == layer["size"]
    raw = gzip.decompress(data)
    assert f"sha256:{hashlib.sha256(raw).hexdigest()}" == written.diff_id
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == ["artifacts", "checkpoint", "checkpoint/descriptors.json", "checkpoint/pages-1.img",
                               "config.dump", "spec.dump"]  # relative, podman's names: no "./", no parent
    assert members["checkpoint"].isdir() and members["checkpoint"].mode == 0o700
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    assert config["rootfs"] == {"type": "layers", "diff_ids": [written.diff_id]} and config["config"] == {}


def test_the_image_loader_keeps_the_manifest_annotations(tmp_path: Path) -> None:
    layout_mod.write_layout(_checkpoint_dir(tmp_path), tmp_path / "oci", "1", ANNOTATIONS)
    with ImageArchive(tmp_path / "oci") as archive:
        resolved = archive.resolve()
    assert dict(resolved.annotations) == ANNOTATIONS
    assert len(resolved.layers) == 1 and resolved.layers[0].compression == "gzip"


def test_the_layer_is_reproducible(tmp_path: Path) -> None:
    source = _checkpoint_dir(tmp_path)
    one = layout_mod.write_layout(source, tmp_path / "a", "1", ANNOTATIONS, created_at=5.0)
    two = layout_mod.write_layout(source, tmp_path / "b", "1", ANNOTATIONS, created_at=5.0)
    assert one == two


def test_a_directory_with_a_symlink_is_not_written(tmp_path: Path) -> None:
    source = _checkpoint_dir(tmp_path)
    (source / "checkpoint" / "link").symlink_to("/etc/passwd")
    with pytest.raises(ImageError, match="checkpoint/link"):
        layout_mod.write_layout(source, tmp_path / "oci", "1", ANNOTATIONS)


@pytest.mark.parametrize("annotations, marked, name", [
    ({layout_mod.CRIO_NAME: "web"}, True, "web"),  # the kubelet's images (buildah --annotation)
    ({layout_mod.PODMAN_NAME: "ctr1", layout_mod.PODMAN_RUNTIME_NAME: "runc"}, True, "ctr1"),  # podman's
    ({layout_mod.PODMAN_RUNTIME_NAME: "crun"}, True, ""),  # what podman itself tests
    ({"org.opencontainers.image.title": "busybox"}, False, ""),
    ({layout_mod.CRIO_NAME: ""}, False, ""),
])
def test_what_marks_a_checkpoint_image(annotations: dict[str, str], marked: bool, name: str) -> None:
    assert layout_mod.is_checkpoint(annotations) is marked
    assert layout_mod.checkpoint_name(annotations) == name


@pytest.mark.parametrize("version, number", [("4.1.1", "40101"), ("3.17", "31700"), ("4", "40000"), ("", ""), ("4.x", "")])
def test_criu_version_in_podmans_form(version: str, number: str) -> None:
    assert layout_mod.criu_version_number(version) == number


def test_host_annotations_carry_both_families() -> None:
    marks = layout_mod.host_annotations(container_name="web", image_name="busybox", image_id="sha256:1",
                                        criu_version="4.1.1", pymigrate_version="0.1")
    assert marks[layout_mod.CRIO_NAME] == marks[layout_mod.PODMAN_NAME] == "web"
    assert marks[layout_mod.PODMAN_RUNTIME_NAME] == "runc"
    assert marks["io.podman.annotations.checkpoint.criu.version"] == "40101"
    assert marks[layout_mod.PODMAN_ROOTFS_IMAGE_NAME] == "busybox"
    assert all(isinstance(v, str) for v in marks.values())


@pytest.mark.parametrize("text, is_id", [("abcd", True), ("0123456789abcdef" * 4, True), ("abc", False),
                                         ("localhost:5000/ckpt/web:1", False), ("web:1", False), ("ABCD", False)])
def test_checkpoint_ids_and_references_apart(text: str, is_id: bool) -> None:
    assert ci.looks_like_checkpoint_id(text) is is_id


@pytest.mark.parametrize("text, is_ref", [("localhost:5000/ckpt/web:1", True), ("web:1", True), ("quay.io/a/b", True),
                                          ("app@sha256:" + "a" * 64, True), ("web", False), ("abcdef12", False)])
def test_which_positionals_are_image_references(text: str, is_ref: bool) -> None:
    """A bare word is a checkpoint id (refused as one), not a Docker Hub image to pull."""
    assert ci.looks_like_reference(text) is is_ref


def test_store_name_is_the_pulls_default() -> None:
    assert ci.store_name("localhost:5000/ckpt/web:1") == "web:1"
    assert ci.store_name("quay.io/a/b") == "b:latest"
    with pytest.raises(InvalidArgument):
        ci.store_name("Bad Ref")


def _restore_args(**given: Any) -> argparse.Namespace:
    values = {"checkpoint_id": None, "image_ref": None, "import_path": None, "tls_verify": None, "cert_dir": None,
              "creds": None, "authfile": None, "pull_image": False}
    return argparse.Namespace(**{**values, **given})


def test_a_positional_naming_a_registry_path_or_tag_is_an_image() -> None:
    from migrate.cli.checkpoints import _image_restore

    args = _restore_args(checkpoint_id="localhost:5000/ckpt/web:1", tls_verify=False)
    ref, registry = _image_restore(args)
    assert ref == "localhost:5000/ckpt/web:1" and args.checkpoint_id is None and registry.tls_verify is False
    args = _restore_args(checkpoint_id="abcdef12")
    assert _image_restore(args) == ("", None) and args.checkpoint_id == "abcdef12"
    args = _restore_args(checkpoint_id="web")  # podman's restore NAME habit: a bad checkpoint id, not a pull
    assert _image_restore(args) == ("", None) and args.checkpoint_id == "web"
    args = _restore_args(checkpoint_id="abcdef12", image_ref="abcd")  # --image says it is an image
    assert _image_restore(args)[0] == "abcd" and args.checkpoint_id == "abcdef12"  # both given: usage error later


def test_restore_ref_over_host_refuses_registry_flags_it_cannot_send() -> None:
    from migrate.remote.client import RemoteEngine
    from runtime.errors import Unsupported
    from runtime.registry import RegistryOptions

    engine = RemoteEngine.__new__(RemoteEngine)  # the check comes before any call
    options = api.RestoreOptions(image_ref="reg:5000/ck/web:1", image_registry=RegistryOptions(tls_verify=False))
    with pytest.raises(Unsupported, match="registry flags"):
        engine.restore(options)


def test_not_a_checkpoint_image_is_a_typed_image_and_argument_error() -> None:
    exc = ci.NotACheckpointImage("reg:5000/app:1")
    assert isinstance(exc, ImageError) and isinstance(exc, InvalidArgument)
    assert "reg:5000/app:1 is not a checkpoint image" in str(exc) and exc.hint


class _RecordingEngine:
    """Answers Checkpoint and Restore with canned results and keeps the options the daemon decoded."""

    def __init__(self) -> None:
        from tests.fakes.engine import FakeEngine

        self.fake = FakeEngine()
        self.seen: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fake, name)

    def checkpoint(self, name: str, options: api.CheckpointOptions, progress: Any = None) -> api.CheckpointResult:
        self.seen.append(options)
        return api.CheckpointResult("ab12", name, None, api.CheckpointStats(), image_ref=options.create_image,
                                    image_digest="sha256:" + "e" * 64)

    def restore(self, options: api.RestoreOptions, progress: Any = None) -> api.RestoreResult:
        self.seen.append(options)
        raise NotACheckpointImage(options.image_ref)


NotACheckpointImage = ci.NotACheckpointImage


def test_create_image_and_restore_ref_cross_the_api(tmp_path: Path) -> None:
    """CheckpointRequest.create_image / CheckpointResult.image_ref, image_digest and
    RestoreRequest.image_ref over a real gRPC server; the typed refusal comes back typed."""
    import tempfile

    from migrate.remote.client import RemoteEngine
    from migrate.remote.server import create_server

    engine = _RecordingEngine()
    sockdir = Path(tempfile.mkdtemp(prefix="pm-ckimg-", dir="/tmp"))  # unix socket paths are short
    server, _ = create_server(engine, f"unix:{sockdir}/d.sock")  # type: ignore[arg-type]
    server.start()
    client = RemoteEngine(server.target, insecure=True)
    try:
        result = client.checkpoint("web", api.CheckpointOptions(create_image="reg:5000/ck/web:1"))
        assert engine.seen[-1].create_image == "reg:5000/ck/web:1"
        assert (result.image_ref, result.image_digest) == ("reg:5000/ck/web:1", "sha256:" + "e" * 64)
        with pytest.raises(ImageError, match="reg:5000/ck/web:1 is not a checkpoint image") as refused:
            client.restore(api.RestoreOptions(image_ref="reg:5000/ck/web:1"))
        assert refused.value.hint and "--create-image" in refused.value.hint
        assert engine.seen[-1].image_ref == "reg:5000/ck/web:1" and engine.seen[-1].checkpoint_id is None
    finally:
        client.close()
        server.stop(0)
        import shutil

        shutil.rmtree(sockdir, ignore_errors=True)
