"""``commit --change`` (runtime/commit_changes.py) and the config a commit carries over from the
container (runtime/commit.py ``run_config``)."""

from __future__ import annotations

import pytest

from runtime.commit import run_config
from runtime.commit_changes import SUPPORTED, apply_changes, parse_changes
from runtime.errors import InvalidArgument
from runtime.image_config import ImageConfig
from runtime.ports import PortMapping
from runtime.spec import ContainerSpec

BASE = ImageConfig(entrypoint=("/entry",), cmd=("serve",), env=("PATH=/bin", "A=1"), working_dir="/app",
                   exposed_ports=("80/tcp",), labels={"k": "v"}, os="linux", architecture="amd64")


def changed(*changes: str, base: ImageConfig = BASE) -> ImageConfig:
    return apply_changes(base, parse_changes(changes))


def test_cmd_and_entrypoint_json_and_shell_forms() -> None:
    assert changed('CMD ["cat", "/hello"]').cmd == ("cat", "/hello")
    assert changed("CMD echo $HOME && ls").cmd == ("/bin/sh", "-c", "echo $HOME && ls")
    assert changed("cmd [not json").cmd == ("/bin/sh", "-c", "[not json")  # docker's fallback to the shell form
    assert changed('CMD ["a", 1]').cmd == ("/bin/sh", "-c", '["a", 1]')
    assert changed('CMD []').cmd == ()


def test_entrypoint_resets_an_inherited_cmd_but_not_one_given_before_it() -> None:
    config = changed('ENTRYPOINT ["/bin/sh", "-c"]')
    assert config.entrypoint == ("/bin/sh", "-c") and config.cmd is None
    config = changed('CMD ["echo hi"]', 'ENTRYPOINT ["/bin/sh", "-c"]')
    assert config.entrypoint == ("/bin/sh", "-c") and config.cmd == ("echo hi",)


def test_env_forms_replace_in_place_and_append() -> None:
    assert changed("ENV A=b").env == ("PATH=/bin", "A=b")
    assert changed('ENV B="two words" C=c\\ d').env == ("PATH=/bin", "A=1", "B=two words", "C=c d")
    assert changed("ENV GREETING hello there").env == ("PATH=/bin", "A=1", "GREETING=hello there")
    assert changed("ENV E=").env[-1] == "E="


def test_label_expose_user_workdir_volume_stopsignal() -> None:
    config = changed('LABEL a=b "c d"=e', "EXPOSE 80 53/udp 8000-8002/TCP", "USER nobody:nogroup", "WORKDIR sub",
                     "WORKDIR ../srv", 'VOLUME ["/data"]', "VOLUME /cache /data", "STOPSIGNAL SIGQUIT")
    assert config.labels == {"k": "v", "a": "b", "c d": "e"}
    assert config.exposed_ports == ("80/tcp", "53/udp", "8000/tcp", "8001/tcp", "8002/tcp")
    assert config.user == "nobody:nogroup"
    assert config.working_dir == "/app/srv"
    assert config.volumes == ("/data", "/cache")
    assert config.stop_signal == "SIGQUIT"
    assert changed("WORKDIR /abs dir").working_dir == "/abs dir"
    # kept through the index's json and an OCI config blob
    assert ImageConfig.from_json(config.to_json()) == config
    assert ImageConfig.from_oci({"config": config.to_oci(), "os": "linux", "architecture": "amd64"}, "t").volumes == ("/cache", "/data")


def test_config_without_volumes_keeps_its_json_form() -> None:
    assert "Volumes" not in BASE.to_json() and "Volumes" not in BASE.to_oci()


@pytest.mark.parametrize("change, words", [
    ("RUN apt-get update", "unsupported change instruction 'RUN'"),
    ("COPY a /b", "unsupported change instruction 'COPY'"),
    ("FROM busybox", "unsupported change instruction 'FROM'"),
    ("ONBUILD RUN x", "unsupported change instruction 'ONBUILD'"),
    ("", "expected an instruction"),
    ("CMD", "CMD needs an argument"),
    ("ENV A", "expected KEY=VALUE or KEY VALUE"),
    ("ENV A=1 B", "'B' is not KEY=VALUE"),
    ("ENV 'A=unclosed", "No closing quotation"),
    ("LABEL =v", "a label needs a key"),
    ("EXPOSE 0", "with ports 1-65535"),
    ("EXPOSE 70000", "with ports 1-65535"),
    ("EXPOSE 80/icmp", "PORT[-PORT][/tcp|udp|sctp]"),
    ("EXPOSE 90-80", "with ports 1-65535"),
    ("USER a b", "expected one argument"),
    ("STOPSIGNAL SIGNOPE", "unknown signal"),
    ("VOLUME relative", "expected an absolute path"),
    ('VOLUME ["/a", 1]', "expected a JSON array of paths"),
])
def test_bad_changes_are_typed_errors_with_a_hint(change: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        changed(change)
    assert words in str(info.value)
    assert info.value.hint


def test_unsupported_is_refused_before_any_change_applies() -> None:
    with pytest.raises(InvalidArgument):
        parse_changes(("ENV A=b", "HEALTHCHECK CMD true"))
    assert set(SUPPORTED) == {"CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "USER", "WORKDIR", "VOLUME", "STOPSIGNAL"}


def spec(command: tuple[str, ...], **kw: object) -> ContainerSpec:
    return ContainerSpec(container_id="a" * 32, name="c", image="app", image_digest="sha256:" + "b" * 64,
                         command=command, **kw)  # type: ignore[arg-type]


def test_run_config_splits_the_command_back_at_the_image_entrypoint() -> None:
    config = run_config(BASE, spec(("/entry", "serve", "--fast"), env=("PATH=/bin", "A=1", "A=2", "B=3"),
                                   workdir="/app", user="1000", stop_signal="SIGINT",
                                   ports=(PortMapping(8080, "tcp", 18080), PortMapping(80, "tcp", 81))))
    assert config.entrypoint == ("/entry",) and config.cmd == ("serve", "--fast")
    assert config.env == ("PATH=/bin", "A=2", "B=3")  # a later duplicate wins
    assert config.working_dir == "/app" and config.user == "1000" and config.stop_signal == "SIGINT"
    assert config.exposed_ports == ("80/tcp", "8080/tcp")
    assert config.labels == {"k": "v"} and config.os == "linux"
    assert run_config(BASE, spec(("/entry",))).cmd is None


def test_run_config_of_a_replaced_entrypoint_is_a_plain_cmd() -> None:
    config = run_config(BASE, spec(("/bin/sh", "-c", "x")))
    assert config.entrypoint is None and config.cmd == ("/bin/sh", "-c", "x")
    config = run_config(None, spec(("sleep", "1")))  # a flat image without a config
    assert config.cmd == ("sleep", "1") and config.working_dir == ""


def test_cli_options_as_docker_spells_them() -> None:
    from migrate.cli import build_parser

    parser = build_parser("commit")
    args = parser.parse_args(["commit", "-c", "ENV A=b", "--change", 'CMD ["x"]', "-m", "msg", "-a", "me",
                              "--pause=false", "web", "web:v2", "--json"])
    assert (args.container, args.image, args.change) == ("web", "web:v2", ["ENV A=b", 'CMD ["x"]'])
    assert (args.message, args.author, args.pause, args.json) == ("msg", "me", False, True)
    assert parser.parse_args(["commit", "web", "web:v2"]).pause is True
    assert parser.parse_args(["commit", "-p", "true", "web", "web:v2"]).pause is True
    for bad in (["--pause=maybe", "web", "web:v2"], ["--pause", "web", "web:v2"]):  # a value is needed
        with pytest.raises(SystemExit):
            parser.parse_args(["commit", *bad])
