"""``run --entrypoint`` and ``-u`` against an image's config (runtime/image_config.py), the
flags' parsing, and ``exec -u``."""

from __future__ import annotations

import pytest

from runtime.errors import InvalidArgument
from runtime.image_config import ImageConfig, parse_entrypoint, resolve_run

CONFIG = ImageConfig(entrypoint=("/bin/sh", "-c"), cmd=("echo hi",), user="app")


@pytest.mark.parametrize("command,entrypoint,expected", [
    ((), None, ("/bin/sh", "-c", "echo hi")),  # the image's Entrypoint + Cmd
    (("id",), ("/bin/busybox",), ("/bin/busybox", "id")),  # replaced, command appended
    ((), ("/bin/id",), ("/bin/id",)),  # the image's Cmd is dropped with a new entrypoint
    (("id", "-u"), (), ("id", "-u")),  # cleared
    ((), (), ()),  # cleared and no command: run refuses it
])
def test_entrypoint(command: tuple[str, ...], entrypoint: tuple[str, ...] | None, expected: tuple[str, ...]) -> None:
    assert resolve_run(CONFIG, command, (), None, entrypoint=entrypoint).command == expected


def test_user_from_the_image_unless_given_and_entrypoint_without_a_config() -> None:
    assert resolve_run(CONFIG, (), (), None).user == "app"
    assert resolve_run(CONFIG, (), (), None, user="1000:1000").user == "1000:1000"
    r = resolve_run(None, ("x",), ("A=1",), None, user="nobody", entrypoint=("/bin/sh", "-c"))
    assert (r.command, r.env, r.user) == (("/bin/sh", "-c", "x"), ("A=1",), "nobody")


@pytest.mark.parametrize("text,expected", [
    (None, None), ("", ()), ("/bin/sh", ("/bin/sh",)), ("/bin/my tool", ("/bin/my tool",)),
    ('["/bin/sh", "-c"]', ("/bin/sh", "-c")), ("[]", ()),
])
def test_parse_entrypoint(text: str | None, expected: tuple[str, ...] | None) -> None:
    assert parse_entrypoint(text) == expected


@pytest.mark.parametrize("text", ["[1]", "[oops", ' ["a", null]'])
def test_parse_entrypoint_refuses(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid entrypoint"):
        parse_entrypoint(text)


def test_run_and_exec_flags() -> None:
    from migrate.cli import build_parser
    from migrate.cli.containers import run_options

    o = run_options(build_parser().parse_args(["run", "-u", "app:staff", "--entrypoint", "", "img", "id"]))
    assert (o.user, o.entrypoint, o.command) == ("app:staff", (), ("id",))
    o = run_options(build_parser().parse_args(["run", "img"]))
    assert (o.user, o.entrypoint) == ("", None)
    args = build_parser().parse_args(["exec", "--user", "nobody", "c", "id"])
    assert args.user == "nobody"
    assert build_parser().parse_args(["exec", "c", "id"]).user is None  # the container's own
