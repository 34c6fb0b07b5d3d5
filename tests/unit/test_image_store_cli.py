"""``pymigrate image ...`` over a tiny fake engine backed by a real ImageStore in tmp_path."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from migrate.api import ImageInfo, ImageRemoval
from migrate.cli import Context, report_error
from migrate.cli import images as images_cli
from migrate.cli.parser import CliParser
from runtime.config import Paths
from runtime.image_store import Image, ImageStore
from tests.fakes.image_tars import compress, make_tar, sample_tree


class StoreEngine:
    """Just the image part of an Engine, delegating to an ImageStore as LocalEngine does."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store

    @staticmethod
    def _info(image: Image) -> ImageInfo:
        return ImageInfo(image.name, image.digest, image.size_bytes, image.created_at, len(image.layers))

    def images(self) -> list[ImageInfo]:
        return [self._info(i) for i in self.store.list()]

    def image_import(self, name: str, tarball: Path) -> ImageInfo:
        return self._info(self.store.import_tarball(name, tarball))

    def image_remove(self, name: str) -> ImageRemoval:
        return ImageRemoval(**dataclasses.asdict(self.store.remove(name)))

    def image_tag(self, source: str, target: str) -> ImageInfo:
        return self._info(self.store.tag(source, target))

    def image_prune(self, all: bool = False) -> ImageRemoval:
        return ImageRemoval(**dataclasses.asdict(self.store.prune(all=all)))

    def image_build_busybox(self, name: str) -> ImageInfo:
        return self._info(self.store.build_busybox(name, busybox=Path("/nonexistent/busybox")))


def run(engine: StoreEngine, *argv: str) -> int:
    parser = CliParser(prog="pymigrate", top=True)  # as migrate.cli builds it: the globals, exit 125
    sub = parser.add_subparsers(dest="command")
    images_cli.register(sub)
    args = parser.parse_args(list(argv))
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
    size = images_cli.human_bytes(engine.store.get("web:v1").size_bytes)
    assert capsys.readouterr().out.splitlines() == [
        "REPOSITORY   TAG   IMAGE ID       CREATED    SIZE",
        f"web          v1    {digest[7:19]}   just now   {size}",
    ]

    assert run(engine, "image", "ls", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        {"name": "web:v1", "digest": digest, "size_bytes": engine.store.get("web:v1").size_bytes,
         "created_at": listed[0]["created_at"], "layers": 0}
    ]

    assert run(engine, "image", "rm", "web:v1") == 0
    assert capsys.readouterr().out == f"untagged: web:v1\ndeleted: {digest}\ntotal reclaimed space: {size}\n"
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


def test_usage_errors_exit_125(engine: StoreEngine) -> None:
    with pytest.raises(SystemExit) as exc:
        run(engine, "image", "import", "only-a-name")
    assert exc.value.code == 125


def test_human_formats() -> None:
    assert images_cli.human_bytes(0) == "0 B"
    assert images_cli.human_bytes(2048) == "2.0 KiB"
    assert images_cli.human_bytes(5 * 1024**3) == "5.0 GiB"
    assert images_cli.human_age(0, now=30) == "just now"
    assert images_cli.human_age(0, now=60) == "1 minute ago"
    assert images_cli.human_age(0, now=7200) == "2 hours ago"
    assert images_cli.human_age(0, now=3 * 86400) == "3 days ago"


def test_ls_shows_docker_columns_and_a_name_without_a_tag_as_none(engine: StoreEngine, tarball: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert run(engine, "image", "import", "busybox", str(tarball)) == 0
    assert run(engine, "image", "import", "registry.local-1:v2.0", str(tarball)) == 0
    capsys.readouterr()
    assert run(engine, "image", "ls") == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    # busybox is not busybox:latest here (names resolve as given): TAG says there is none
    assert [r[:2] for r in rows[1:]] == [["busybox", "<none>"], ["registry.local-1", "v2.0"]]
    assert images_cli.display_name("app:1") == ("app", "1") and images_cli.display_name("app") == ("app", "<none>")


def test_tag_moves_a_name_and_rm_reports_what_went(engine: StoreEngine, tarball: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.tar"
    other.write_bytes(make_tar([m for m in sample_tree() if m.name != "etc/passwd"]))
    assert run(engine, "image", "import", "app:1", str(tarball)) == 0
    assert run(engine, "image", "import", "app:2", str(other)) == 0
    first, second = engine.store.get("app:1").digest, engine.store.get("app:2").digest
    capsys.readouterr()
    assert run(engine, "image", "tag", "app:1", "app:latest") == 0
    assert capsys.readouterr().out == f"tagged app:1 as app:latest {first}\n"
    assert run(engine, "image", "tag", second, "app:1", "--json") == 0  # by digest; app:1 moves
    tagged = json.loads(capsys.readouterr().out)
    assert tagged["name"] == "app:1" and tagged["digest"] == second and tagged["layers"] == 0
    assert engine.store.get("app:latest").digest == first  # still named: kept
    assert run(engine, "image", "rm", "app:2", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "removed": "app:2", "untagged": ["app:2"], "deleted": [], "layers_removed": [], "blobs_removed": 0,
        "scratch_removed": 0, "bytes_freed": 0}
    assert run(engine, "image", "tag", "nope", "x") == 125
    assert "no such image: nope" in capsys.readouterr().err
    assert run(engine, "--json", "image", "tag", "app:1", "Bad/Name") == 125
    assert json.loads(capsys.readouterr().out)["type"] == "InvalidArgument"


def test_prune_all_forced_and_json(engine: StoreEngine, tarball: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(engine, "image", "import", "app:1", str(tarball)) == 0
    assert run(engine, "image", "tag", "app:1", "alias") == 0
    image = engine.store.get("app:1")
    capsys.readouterr()
    assert run(engine, "image", "prune", "--json") == 0  # nothing unnamed
    assert json.loads(capsys.readouterr().out)["deleted"] == []
    assert run(engine, "image", "prune", "-a", "-f") == 0
    assert capsys.readouterr().out == (f"untagged: alias\nuntagged: app:1\ndeleted: {image.digest}\n"
                                       f"total reclaimed space: {images_cli.human_bytes(image.size_bytes)}\n")
    assert engine.store.list() == []


def test_prune_asks_on_a_terminal_and_does_nothing_unless_told_yes(engine: StoreEngine, tarball: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import io

    assert run(engine, "image", "import", "app:1", str(tarball)) == 0
    capsys.readouterr()

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty("n\n"))
    assert run(engine, "image", "prune", "--all") == 1
    assert "continue? [y/N]" in capsys.readouterr().err and [i.name for i in engine.store.list()] == ["app:1"]
    monkeypatch.setattr("sys.stdin", Tty("y\n"))
    assert run(engine, "image", "prune", "--all") == 0
    assert engine.store.list() == []
