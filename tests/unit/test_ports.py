"""Published ports: parsing (-p, -P), validation of untrusted specs, the nft script, host port claims."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runtime import port_rules
from runtime.container import validate_spec
from runtime.errors import ContainerError, InvalidArgument, InvalidSpec, PortInUse
from runtime.ports import PortMapping, format_mapping, parse_publish, parse_publish_all, port_filter, validate_ports
from runtime.spec import ContainerSpec, ContainerState

CID = "ab" * 16


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080:80", [PortMapping(80, "tcp", 8080, "")]),
        ("8080:80/udp", [PortMapping(80, "udp", 8080, "")]),
        ("8080:80/TCP", [PortMapping(80, "tcp", 8080, "")]),
        ("127.0.0.1:8080:80", [PortMapping(80, "tcp", 8080, "127.0.0.1")]),
        ("0.0.0.0:8080:80", [PortMapping(80, "tcp", 8080, "")]),
        ("127.0.0.1::80", [PortMapping(80, "tcp", 0, "127.0.0.1")]),
        (":80", [PortMapping(80, "tcp", 0, "")]),
        ("80", [PortMapping(80, "tcp", 0, "")]),
        ("53/udp", [PortMapping(53, "udp", 0, "")]),
        ("8000-8002:80-82", [PortMapping(80, "tcp", 8000), PortMapping(81, "tcp", 8001), PortMapping(82, "tcp", 8002)]),
        ("80-81", [PortMapping(80, "tcp", 0), PortMapping(81, "tcp", 0)]),
    ],
)
def test_parse_publish_accepts_dockers_forms(text: str, expected: list[PortMapping]) -> None:
    assert parse_publish(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("0:80", "host port 0"),
        ("8080:0", "container port 0"),
        ("70000:80", "host port 70000"),
        ("8080:70000", "container port 70000"),
        ("8080:80/sctp", "protocol 'sctp'"),
        ("8080:80/", "protocol ''"),
        ("abc:80", "host port 'abc'"),
        ("8002-8000:80-82", "below the first"),
        ("8000-8001:80-82", "differ in length"),
        ("8000-8002:80", "3 ports for one container port"),
        ("8000:80-82", "a range of container ports"),
        ("::1:8080:80", "only IPv4"),
        ("[::1]:8080:80", "only IPv4"),
        ("300.1.1.1:8080:80", "invalid host address"),
        ("224.0.0.1:8080:80", "unicast"),
        ("", "empty"),
        (" 8080:80", "spaces"),
        ("1:2:3:4", "invalid"),
    ],
)
def test_parse_publish_refuses_bad_input_naming_it(text: str, needle: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_publish(text)
    assert needle in err.value.message
    assert err.value.hint


def test_validate_ports_refuses_a_host_port_twice_and_overlapping_ranges() -> None:
    with pytest.raises(InvalidArgument, match="host port 8080/tcp is published twice"):
        validate_ports(parse_publish("8080:80") + parse_publish("8080:81"))
    with pytest.raises(InvalidArgument, match="host port 8001/tcp is published twice"):
        validate_ports(parse_publish("8000-8002:80-82") + parse_publish("8001:90"))
    with pytest.raises(InvalidArgument, match="published twice"):  # 0.0.0.0 covers every address
        validate_ports(parse_publish("127.0.0.1:8080:80") + parse_publish("8080:81"))
    # other protocol, other address, or "any free one" twice: fine
    ok = validate_ports(parse_publish("8080:80") + parse_publish("8080:80/udp") + parse_publish(":81") + parse_publish(":82"))
    assert len(ok) == 4
    assert len(validate_ports(parse_publish("127.0.0.1:8080:80") + parse_publish("127.0.0.2:8080:80"))) == 2


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ([{"container_port": 0, "protocol": "tcp", "host_port": 1, "host_ip": ""}], "container port 0"),
        ([{"container_port": 80, "protocol": "tcp", "host_port": 65536, "host_ip": ""}], "host port 65536"),
        ([{"container_port": True, "protocol": "tcp", "host_port": 1, "host_ip": ""}], "container port True"),
        ([{"container_port": "80", "protocol": "tcp", "host_port": 1, "host_ip": ""}], "container port '80'"),
        ([{"container_port": 80, "protocol": "icmp", "host_port": 1, "host_ip": ""}], "protocol 'icmp'"),
        ([{"container_port": 80, "protocol": "tcp", "host_port": 1, "host_ip": "1.2.3.4; flush ruleset"}], "host address"),
        ([{"container_port": 80, "protocol": "tcp", "host_port": 1, "host_ip": 7}], "host address"),
        ([{"container_port": 80, "evil": 1}], "unknown keys evil"),
        (["8080:80"], "expected an object"),
        ("8080:80", "expected a list"),
        ([{"container_port": 80, "protocol": "tcp", "host_port": 1, "host_ip": ""}] * 2, "published twice"),
        ([{"container_port": 80, "protocol": "tcp", "host_port": 0, "host_ip": ""}] * 1025, "too many"),
    ],
)
def test_validate_ports_refuses_untrusted_specs(raw: Any, needle: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_ports(raw)
    assert needle in err.value.message


def test_ports_need_a_bridge_network() -> None:
    with pytest.raises(InvalidArgument, match="network none"):
        validate_ports(parse_publish("8080:80"), network="none")
    assert validate_ports((), network="none") == ()


def _spec(**kw: Any) -> ContainerSpec:
    base: dict[str, Any] = dict(container_id=CID, name="web", image="busybox", image_digest="sha256:" + "0" * 64,
                                command=("sh",), ip="10.77.0.5", mac="02:42:0a:4d:00:05")
    base.update(kw)
    return ContainerSpec(**base)


def test_spec_records_ports_and_old_records_load_without_them() -> None:
    spec = _spec(ports=tuple(parse_publish("8000-8001:80-81/udp")))
    again = ContainerSpec.from_dict(spec.to_dict())
    assert again == spec
    old = spec.to_dict()
    del old["ports"]
    assert ContainerSpec.from_dict(old).ports == ()


def test_validate_spec_checks_a_manifests_ports_by_field() -> None:
    with pytest.raises(InvalidSpec) as err:
        validate_spec(_spec(ports=(PortMapping(80, "tcp", 70000, ""),)))
    assert err.value.field == "ports"
    assert validate_spec(_spec(ports=(PortMapping(80, "tcp", 8080, ""),))).ports == (PortMapping(80, "tcp", 8080, ""),)


def test_publish_all_takes_exposed_ports_and_skips_sctp() -> None:
    assert parse_publish_all(["80/tcp", "53/udp", "9/sctp", "8000-8001/tcp", "7"]) == [
        PortMapping(80, "tcp"), PortMapping(53, "udp"), PortMapping(8000, "tcp"), PortMapping(8001, "tcp"), PortMapping(7, "tcp")]
    with pytest.raises(InvalidArgument):
        parse_publish_all(["http/tcp"])


def test_docker_style_lines_and_the_port_filter() -> None:
    assert format_mapping(PortMapping(80, "tcp", 8080, "")) == "80/tcp -> 0.0.0.0:8080"
    assert format_mapping(PortMapping(53, "udp", 5353, "127.0.0.1")) == "53/udp -> 127.0.0.1:5353"
    assert port_filter("80") == (80, None)
    assert port_filter("80/udp") == (80, "udp")
    with pytest.raises(InvalidArgument):
        port_filter("80/icmp")


# --- the nft script -----------------------------------------------------------------------------


def test_table_names_are_scoped_by_state_root(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    ta, tb = port_rules.table_name(a, CID), port_rules.table_name(b, CID)
    assert ta != tb and ta.endswith(CID) and ta.startswith("pymigrate_ports_")
    assert port_rules.container_of(ta) == CID
    with pytest.raises(ContainerError, match="invalid container id"):
        port_rules.table_name(a, "../x")


def test_ruleset_replaces_its_table_and_forwards_each_port(tmp_path: Path) -> None:
    table = port_rules.table_name(tmp_path, CID)
    ports = (PortMapping(80, "tcp", 8080, ""), PortMapping(53, "udp", 5353, "127.0.0.1"))
    script = port_rules.ruleset(table, ports, "10.77.0.5", "pmbr0", "10.77.0.0/16", label='web"; flush ruleset')
    lines = script.splitlines()
    assert lines[:2] == [f"add table ip {table}", f"delete table ip {table}"]  # replace in one transaction
    assert 'comment "pymigrate published ports: web__ flush ruleset"' in script  # no quote escapes the comment
    for chain in ("prerouting", "output"):
        assert f"add rule ip {table} {chain} fib daddr type local tcp dport 8080 dnat to 10.77.0.5:80" in lines
        assert f"add rule ip {table} {chain} fib daddr type local ip daddr 127.0.0.1 udp dport 5353 dnat to 10.77.0.5:53" in lines
    assert any("masquerade" in ln and "127.0.0.0/8, 10.77.0.0/16" in ln and 'oifname "pmbr0"' in ln for ln in lines)
    assert any(ln.endswith("ct status & dnat == 0 drop") for ln in lines)
    with pytest.raises(Exception, match="no host port"):
        port_rules.ruleset(table, (PortMapping(80, "tcp", 0, ""),), "10.77.0.5", "pmbr0", "10.77.0.0/16")


# --- claims -------------------------------------------------------------------------------------


@dataclass
class _Info:
    spec: ContainerSpec
    state: ContainerState


@dataclass
class _FakeRuntime:
    infos: list[_Info] = field(default_factory=list)

    def list(self, all: bool = False) -> list[_Info]:
        return self.infos


def test_claim_refuses_a_port_another_live_container_publishes() -> None:
    other = _spec(container_id="cd" * 16, name="other", ports=(PortMapping(80, "tcp", 18080, ""),))
    rt = _FakeRuntime([_Info(other, ContainerState(status="running"))])
    with pytest.raises(PortInUse) as err:
        port_rules.claim(rt, _spec(ports=(PortMapping(81, "tcp", 18080, "127.0.0.1"),)))
    assert err.value.port == 18080 and "container other" in err.value.message and err.value.hint
    # udp, an exited holder, or the replaced original: not taken
    port_rules.claim(rt, _spec(ports=(PortMapping(81, "udp", 18080, ""),)))
    port_rules.claim(rt, _spec(ports=(PortMapping(81, "tcp", 18080, ""),)), exclude=["cd" * 16])
    rt.infos[0] = _Info(other, ContainerState(status="exited"))
    port_rules.claim(rt, _spec(ports=(PortMapping(81, "tcp", 18080, ""),)))


def test_claim_refuses_a_port_a_host_process_listens_on() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(PortInUse, match=f"host port 0.0.0.0:{port}/tcp is already in use by a host process"):
            port_rules.claim(_FakeRuntime(), _spec(ports=(PortMapping(80, "tcp", port, ""),)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as bound:
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        with pytest.raises(PortInUse, match="/udp"):
            port_rules.claim(_FakeRuntime(), _spec(ports=(PortMapping(53, "udp", port, "127.0.0.1"),)))


def test_claim_chooses_distinct_free_ports_for_port_zero() -> None:
    got = port_rules.claim(_FakeRuntime(), _spec(ports=(PortMapping(80), PortMapping(81), PortMapping(82, "udp"))))
    assert all(m.host_port > 0 for m in got)
    assert len({m.host_port for m in got if m.protocol == "tcp"}) == 2
    assert [m.container_port for m in got] == [80, 81, 82]


def test_claim_refuses_an_address_not_of_this_host() -> None:
    with pytest.raises(InvalidArgument, match="not an address of this host"):
        port_rules.claim(_FakeRuntime(), _spec(ports=(PortMapping(80, "tcp", 18081, "192.0.2.77"),)))


def test_restore_and_migrate_publish_none_and_empty_stay_apart_over_grpc() -> None:
    from migrate import api
    from migrate.remote import convert as cv

    for ports in (None, (), (PortMapping(80, "tcp", 8080, ""),)):
        opts = api.RestoreOptions(checkpoint_id="ck", ports=ports)
        assert cv.restore_options_from_pb(cv.restore_request_to_pb(opts)).ports == ports
        mig = api.MigrateOptions(dest="h:1", ports=ports)
        assert cv.migrate_options_from_pb(cv.migrate_request_to_pb("web", mig)).ports == ports


def test_publish_all_adds_exposed_ports_not_given_with_p(monkeypatch: pytest.MonkeyPatch) -> None:
    from migrate import api
    from migrate.engine import LocalEngine
    from runtime.image_config import ImageConfig

    class _Images:
        def config(self, name: str) -> ImageConfig:
            return ImageConfig(exposed_ports=("80/tcp", "443/tcp", "53/udp"))

    class _Rt:
        images = _Images()

    engine = LocalEngine.__new__(LocalEngine)
    engine.runtime = _Rt()  # type: ignore[attr-defined]
    opts = api.RunOptions(image="web", ports=(PortMapping(80, "tcp", 8080, ""),), publish_all=True)
    got = engine._with_exposed_ports(opts)
    assert not got.publish_all
    assert got.ports == (PortMapping(80, "tcp", 8080, ""), PortMapping(443, "tcp"), PortMapping(53, "udp"))


class _Net:
    def __init__(self) -> None:
        self.released: list[str] = []

    def release(self, container_id: str) -> None:
        self.released.append(container_id)


def _target_host(claim: Any) -> Any:
    from types import SimpleNamespace

    net = _Net()
    return SimpleNamespace(claim_ports=claim, rt=SimpleNamespace(network=lambda mode: net), net=net)


def test_migration_target_checks_a_peers_ports_then_claims_them_and_gives_the_lease_back(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from migrate.migration.target import IncomingMigrations

    calls: list[Any] = []

    def taken(spec: Any, *, replace_id: Any) -> Any:
        calls.append(spec.ports)
        raise PortInUse(8080, "tcp", "", "a host process", hint="x")

    host = _target_host(taken)
    incoming = IncomingMigrations(SimpleNamespace(paths=SimpleNamespace(run=tmp_path / "run")), None)
    incoming.host = host
    with pytest.raises(PortInUse, match="in use by a host process on the migration target") as err:
        incoming._claim_ports(_spec(ports=(PortMapping(80, "tcp", 8080, ""),)), None)
    assert err.value.port == 8080 and host.net.released == [CID] and len(calls) == 1

    host.net.released.clear()
    with pytest.raises(InvalidArgument, match="protocol"):  # a peer's bad mapping: refused before any claim
        incoming._claim_ports(_spec(ports=(PortMapping(80, "sctp", 8080, ""),)), None)  # type: ignore[arg-type]
    assert len(calls) == 1 and host.net.released == [CID]
    host.net.released.clear()
    with pytest.raises(PortInUse):  # replacing an exited original: its lease is not ours to give back
        incoming._claim_ports(_spec(ports=(PortMapping(80, "tcp", 8080, ""),)), CID)
    assert host.net.released == []
