"""Shared namespaces (runtime/ns_modes.py): parsing, the rules, the start plan, the refusals."""

from __future__ import annotations

import dataclasses

import pytest

from runtime import namespaces, ns_modes
from runtime.errors import ContainerError, InvalidArgument, InvalidSpec
from runtime.syscalls import CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUTS


def test_default_plan_unshares_what_every_container_always_got() -> None:
    plan = ns_modes.NamespacePlan()
    assert plan.unshare_flags() == namespaces.CONTAINER_UNSHARE_FLAGS
    assert plan.sets_hostname() and not plan.joins_net()


def test_plan_keeps_host_and_joined_namespaces_out_of_unshare() -> None:
    plan = ns_modes.NamespacePlan(joins=(ns_modes.Join("pid", 10, 1, "a"), ns_modes.Join("net", 10, 1, "a")),
                                  host=frozenset({"uts", "cgroup"}))
    assert plan.unshare_flags() == CLONE_NEWNS | CLONE_NEWIPC  # mnt is never shared
    assert plan.joins_net() and not plan.sets_hostname()
    assert not ns_modes.NamespacePlan(host=frozenset({"pid"})).unshare_flags() & CLONE_NEWPID
    assert ns_modes.NamespacePlan(host=frozenset({"pid"})).unshare_flags() & (CLONE_NEWUTS | CLONE_NEWCGROUP)


@pytest.mark.parametrize("text, expected", [
    ("", ("private", "")), ("private", ("private", "")), ("host", ("host", "")),
    ("container:web", ("container", "web")),
])
def test_parse_mode(text: str, expected: tuple[str, str]) -> None:
    assert ns_modes.parse_mode("pid", text) == expected


@pytest.mark.parametrize("kind, text", [("pid", "container:"), ("ipc", "shareable"), ("cgroup", "container:web"), ("uts", "Host")])
def test_parse_mode_refuses(kind: str, text: str) -> None:
    with pytest.raises(InvalidArgument, match=f"invalid {ns_modes.OPTIONS[kind]}") as err:
        ns_modes.parse_mode(kind, text)
    assert err.value.hint


def test_split_network() -> None:
    assert ns_modes.split_network("container:db") == ("container", "db")
    assert ns_modes.split_network("bridge") == ("bridge", "")
    with pytest.raises(InvalidArgument):
        ns_modes.split_network("container:")


ID_A, ID_B = "a" * 32, "b" * 32


def _spec(**changes: object):  # noqa: ANN202
    from runtime.spec import ContainerSpec

    base = ContainerSpec(container_id=ID_B, name="b", image="busybox", image_digest="sha256:" + "0" * 64, command=("sleep", "1"))
    return dataclasses.replace(base, **changes)


def _fields(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = dict(pid_mode="private", ipc_mode="private", uts_mode="private", cgroupns_mode="private",
                                     network="bridge", network_container="", hostname=None, ports=(), ip=None)
    fields.update(changes)
    return fields


@pytest.mark.parametrize("changes, field", [
    ({"pid_mode": "container:web"}, "pid_mode"),  # a spec holds ids, never names
    ({"cgroupns_mode": f"container:{ID_A}"}, "cgroupns_mode"),
    ({"ipc_mode": 3}, "ipc_mode"),
    ({"network": "container", "network_container": "web"}, "network_container"),
    ({"network": "bridge", "network_container": ID_A}, "network_container"),
    ({"network": "container", "network_container": ID_A, "ip": "10.77.0.9"}, "ip"),
    ({"network": "container", "network_container": ID_A, "ports": ("8080:80",)}, "ports"),
    ({"uts_mode": "host", "hostname": "web"}, "hostname"),
    ({"uts_mode": f"container:{ID_A}", "hostname": "web"}, "hostname"),
])
def test_validate_refuses(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        ns_modes.validate(**_fields(**changes))  # type: ignore[arg-type]
    assert err.value.field == field


def test_validate_accepts() -> None:
    ns_modes.validate(**_fields(pid_mode="host", ipc_mode=f"container:{ID_A}", uts_mode="host", cgroupns_mode="host",  # type: ignore[arg-type]
                                network="container", network_container=ID_A))


def test_validate_spec_checks_the_modes_of_a_manifest() -> None:
    from runtime.container import validate_spec

    assert validate_spec(_spec(pid_mode=f"container:{ID_A}")).pid_mode == f"container:{ID_A}"
    with pytest.raises(InvalidSpec, match="pid_mode"):
        validate_spec(_spec(pid_mode="container:web"))


def test_old_records_load_with_private_namespaces() -> None:
    from runtime.spec import ContainerSpec

    data = _spec().to_dict()
    for key in ("pid_mode", "ipc_mode", "uts_mode", "cgroupns_mode", "network_container"):
        del data[key]
    spec = ContainerSpec.from_dict(data)
    assert ns_modes.shared(spec) == {} and ns_modes.joined(spec) == {}


def test_shared_joined_and_dependents() -> None:
    b = _spec(pid_mode=f"container:{ID_A}", uts_mode="host", network="container", network_container=ID_A)
    assert ns_modes.shared(b) == {"pid": f"container:{ID_A}", "uts": "host", "net": f"container:{ID_A}"}
    assert ns_modes.joined(b) == {"pid": ID_A, "net": ID_A}
    assert ns_modes.dependents([b, _spec(container_id="c" * 32, name="c")], ID_A) == [("b", "pid"), ("b", "net")]
    assert ns_modes.shown_modes(b, {ID_A: "a"}) == {"pid": "container:a", "uts": "host", "net": "container:a"}
    assert ns_modes.shared(_spec(network="host")) == {"net": "host"}


def test_checkpoint_refused_naming_the_namespace_and_the_other() -> None:
    from runtime.errors import Unsupported

    with pytest.raises(Unsupported, match="shares its ipc namespace with container a") as err:
        ns_modes.refuse_checkpoint(_spec(ipc_mode=f"container:{ID_A}"), [], {ID_A: "a"})
    assert "--ipc" in (err.value.hint or "")
    with pytest.raises(Unsupported, match="with the host"):
        ns_modes.refuse_checkpoint(_spec(cgroupns_mode="host"), [], {})
    with pytest.raises(Unsupported, match="container c shares its net namespace") as err:
        ns_modes.refuse_checkpoint(_spec(name="a"), [("c", "net")], {})
    assert "rm -f c" in (err.value.hint or "")
    ns_modes.refuse_checkpoint(_spec(), [], {})  # private: fine
    ns_modes.refuse_checkpoint(_spec(network="host"), [], {})  # checkpointing.py's own check says it


@pytest.mark.parametrize("changes, field", [
    ({"pid_mode": "host"}, "pid_mode"), ({"uts_mode": f"container:{ID_A}"}, "uts_mode"),
    ({"cgroupns_mode": "host"}, "cgroupns_mode"), ({"network": "container", "network_container": ID_A}, "network"),
])
def test_a_manifest_never_asks_for_a_shared_namespace(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSpec, match="no checkpoint can have") as err:
        ns_modes.refuse_in_manifest(_spec(**changes))
    assert err.value.field == field


def test_restore_refuses_a_manifest_with_host_namespaces_for_every_origin() -> None:
    from migrate.api import RestoreOptions
    from migrate.restore import checked_spec

    manifest = {"container": _spec(pid_mode="host").to_dict()}
    for origin in ("local", "import", "peer"):
        with pytest.raises(InvalidSpec, match="pid namespace"):
            checked_spec(manifest, RestoreOptions(), origin=origin)  # type: ignore[arg-type]


def test_dependents_error_names_them_all() -> None:
    from runtime.errors import InvalidState

    err = ns_modes.dependents_error("a", [("b", "pid"), ("b", "net"), ("c", "ipc")])
    assert isinstance(err, InvalidState)
    assert str(err) == "cannot remove container a: container b, c shares its ipc, net, pid namespaces (container:a)"
    assert err.hint == "remove container b, c first (pymigrate rm -f b c)"


class _C:
    def __init__(self, cid: str, name: str, status: str, pid: int = 0) -> None:
        from runtime.spec import ContainerState

        self.container_id, self.name, self.status = cid, name, status
        self.spec = _spec(container_id=cid, name=name, hostname="ahost")
        self.state = ContainerState(status=status, pid=pid)  # type: ignore[arg-type]


def test_resolve_run_records_ids_and_wants_them_running() -> None:
    from runtime.errors import InvalidState

    running = {"a": _C(ID_A, "a", "running")}
    modes = ns_modes.resolve_run(running.__getitem__, network="container:a", pid_mode="container:a", ipc_mode="host",
                                 uts_mode="", cgroupns_mode="private")
    assert modes == {"network": "container", "network_container": ID_A, "pid_mode": f"container:{ID_A}",
                     "ipc_mode": "host", "uts_mode": "private", "cgroupns_mode": "private"}
    with pytest.raises(InvalidState, match="cannot share the pid namespace of container a: state is exited") as err:
        ns_modes.resolve_run({"a": _C(ID_A, "a", "exited")}.__getitem__, network="bridge", pid_mode="container:a",
                             ipc_mode="private", uts_mode="private", cgroupns_mode="private")
    assert "start container a" in (err.value.hint or "")


def test_runtime_plan_joins_the_running_init_and_takes_its_hostname() -> None:
    import os

    me = _C(ID_A, "a", "running", pid=os.getpid())
    plan, hostname = ns_modes.runtime_plan({ID_A: me}.__getitem__, _spec(uts_mode=f"container:{ID_A}", pid_mode="host"))
    assert [(j.kind, j.pid, j.container) for j in plan.joins] == [("uts", os.getpid(), "a")]
    assert plan.host == frozenset({"pid"}) and hostname == "ahost"
    fds = plan.open()  # this process plays the init: its start time matches
    for _, fd in fds:
        os.close(fd)
    stale = ns_modes.NamespacePlan(joins=(dataclasses.replace(plan.joins[0], pid_start=1),))
    with pytest.raises(ContainerError, match="no longer running"):
        stale.open()


def test_start_order_puts_joiners_after_what_they_join() -> None:
    c_id = "c" * 32
    a = _spec(container_id=ID_A, name="a")
    b = _spec(container_id=ID_B, name="b", pid_mode=f"container:{c_id}")
    c = _spec(container_id=c_id, name="c", network="container", network_container=ID_A)
    assert ns_modes.start_order([ID_B, c_id, ID_A], [a, b, c]) == [ID_A, c_id, ID_B]
    assert ns_modes.start_order([ID_B, ID_A], [a]) == [ID_B, ID_A]  # unknown specs keep their place
    assert ns_modes.start_order([ID_B], [a, b, c]) == [ID_B]  # only the ids asked for


def test_cli_run_options_carry_the_modes() -> None:
    import argparse

    from migrate.cli import containers

    parser = argparse.ArgumentParser()
    containers.register(parser.add_subparsers())
    args = parser.parse_args(["run", "--pid", "container:a", "--ipc", "host", "--uts", "host", "--cgroupns", "host",
                              "--network", "container:a", "busybox", "true"])
    opts = containers.run_options(args)
    assert (opts.pid_mode, opts.ipc_mode, opts.uts_mode, opts.cgroupns_mode, opts.network) == \
        ("container:a", "host", "host", "host", "container:a")
    for bad in (["--network", "container:"], ["--network", "macvlan"], ["--cgroupns", "container:a"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["run", *bad, "busybox", "true"])


def test_joined_init_alive_asks_the_cgroup(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_text(f"9:pids:/pymigrate/x/{ID_B}\n0::/\n")
    shared = _spec(pid_mode="host")
    assert ns_modes.joined_init_alive(shared, 7, proc=str(tmp_path))
    assert not ns_modes.joined_init_alive(shared, 8, proc=str(tmp_path))  # gone
    assert not ns_modes.joined_init_alive(_spec(container_id="c" * 32, pid_mode="host"), 7, proc=str(tmp_path))  # reused
    assert not ns_modes.joined_init_alive(_spec(), 7, proc=str(tmp_path))  # private: PID 1 says it


@pytest.mark.parametrize("changes", [{"pid_mode": "host"}, {"ipc_mode": f"container:{ID_A}"}, {"cgroupns_mode": "host"},
                                     {"network": "container", "network_container": ID_A, "ip": None}])
def test_a_migration_target_refuses_a_shared_namespace_in_its_preflight(tmp_path, changes: dict[str, object]) -> None:  # noqa: ANN001
    from types import SimpleNamespace

    from migrate.api import IncomingRequest
    from migrate.migration.target import IncomingMigrations

    class NoCriu:
        def version(self) -> str:  # pragma: no cover - the refusal comes first
            raise AssertionError("refused before anything else")

    digest = "sha256:" + "ab" * 32
    spec = dict({"name": "web", "container_id": ID_B, "image": "busybox", "image_digest": digest, "ip": None}, **changes)
    request = IncomingRequest(container_name="web", spec=spec, image_digest=digest, criu_version="4.1", cpu_digest="", ip=None)
    host = SimpleNamespace(paths=SimpleNamespace(run=tmp_path / "run"))
    with pytest.raises(InvalidSpec, match="no checkpoint can have"):
        IncomingMigrations(host, NoCriu()).prepare(request)
    assert not (tmp_path / "run").exists()
