"""``pymigrate image ...`` over a tiny fake engine backed by a real ImageStore in tmp_path."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from migrate.api import ImageInfo
from migrate.cli import Context, report_error
from migrate.cli import images as images_cli
from runtime.config import Paths
from runtime.image_store import Image, ImageStore
from tests.fakes.image_tars import compress, make_tar, sample_tree


class StoreEngine:
    """Just the image part of an Engine, delegating to an ImageStore as LocalEngine does."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store

    @staticmethod
    def _info(image: Image) -> ImageInfo:
        return ImageInfo(image.name, image.digest, image.size_bytes, image.created_at)

    def images(self) -> list[ImageInfo]:
        return [self._info(i) for i in self.store.list()]

    def image_import(self, name: str, tarball: Path) -> ImageInfo:
        return self._info(self.store.import_tarball(name, tarball))

    def image_remove(self, name: str) -> None:
        self.store.remove(name)

    def image_build_busybox(self, name: str) -> ImageInfo:
        return self._info(self.store.build_busybox(name, busybox=Path("/nonexistent/busybox")))


def run(engine: StoreEngine, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="pymigrate")
    parser.add_argument("--json", action="store_true")
    sub = parser.add_subparsers(dest="command")
    images_cli.register(sub)
    args = parser.parse_args(list(argv))
    args.json = bool(args.json or getattr(args, "json_sub", False))
    ctx = Context(root=None, json=args.json, debug=False, args=args, _engine=engine)
    try:
        return args.handler(args, ctx)
    except Exception as exc:  # as migrate.cli.main does
        return report_error(exc, ctx)


@pytest.fixture
def engine(tmp_path: Path) -> StoreEngine:
    return StoreEngine(ImageStore(Paths(tmp_path / "root")))


@pytest.fixture
def tarball(tmp_path: Path) -> Path:
    p = tmp_path / "rootfs.tar.zst"
    p.write_bytes(compress(make_tar(sample_tree()), "zstd"))
    return p


def test_import_ls_rm(engine: StoreEngine, tarball: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(engine, "image", "import", "web:v1", str(tarball)) == 0
    out = capsys.readouterr().out
    digest = engine.store.get("web:v1").digest
    assert out.startswith(f"imported web:v1 {digest} (")

    assert run(engine, "image", "ls") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "DIGEST", "SIZE", "CREATED"]
    assert lines[1].split()[:2] == ["web:v1", digest[7:19]]
    assert lines[1].endswith("just now")

    assert run(engine, "image", "ls", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        {"name": "web:v1", "digest": digest, "size_bytes": engine.store.get("web:v1").size_bytes, "created_at": listed[0]["created_at"]}
    ]

    assert run(engine, "image", "rm", "web:v1") == 0
    assert capsys.readouterr().out == "web:v1\n"
    assert engine.store.list() == []


def test_errors_exit_125_with_a_message(engine: StoreEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_text("not a tarball\n")
    assert run(engine, "image", "import", "junk", str(junk)) == 125
    err = capsys.readouterr().err
    assert err == f"pymigrate: refusing {junk}: not a tar archive (plain, gzip or zstd)\n"

    assert run(engine, "image", "rm", "nope") == 125
    err = capsys.readouterr().err
    assert "pymigrate: no such image: nope" in err and "hint: pull, load or import one" in err

    assert run(engine, "image", "import", "Bad/Name", str(junk)) == 125
    assert "invalid image name 'Bad/Name'" in capsys.readouterr().err

    assert run(engine, "--json", "image", "build-busybox") == 125
    payload = json.loads(capsys.readouterr().out)
    assert payload["type"] == "Unsupported" and payload["hint"] == "apt-get install busybox-static"


def test_build_busybox_default_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[str] = []

    class Fake:
        def image_build_busybox(self, name: str) -> ImageInfo:
            calls.append(name)
            return ImageInfo(name, "sha256:" + "a" * 64, 2_000_000, 0.0)

    assert run(Fake(), "image", "build-busybox") == 0  # type: ignore[arg-type]
    assert run(Fake(), "image", "build-busybox", "bb:small", "--json") == 0  # type: ignore[arg-type]
    assert calls == ["busybox", "bb:small"]
    out = capsys.readouterr().out
    assert out.startswith(f"built busybox sha256:{'a' * 64} (1.9 MiB)\n")
    assert json.loads(out.split("\n", 1)[1])["name"] == "bb:small"


def test_usage_errors_exit_2(engine: StoreEngine) -> None:
    with pytest.raises(SystemExit) as exc:
        run(engine, "image", "import", "only-a-name")
    assert exc.value.code == 2


def test_human_formats() -> None:
    assert images_cli.human_bytes(0) == "0 B"
    assert images_cli.human_bytes(2048) == "2.0 KiB"
    assert images_cli.human_bytes(5 * 1024**3) == "5.0 GiB"
    assert images_cli.human_age(0, now=30) == "just now"
    assert images_cli.human_age(0, now=60) == "1 minute ago"
    assert images_cli.human_age(0, now=7200) == "2 hours ago"
    assert images_cli.human_age(0, now=3 * 86400) == "3 days ago"
