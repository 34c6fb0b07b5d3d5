"""runtime.port_guard without root: the generated nft scripts, name rules, and the guard's logic
against a fake nft (a dict of tables standing in for the kernel)."""

from __future__ import annotations

import os

import pytest

from runtime import port_guard as pg
from runtime.errors import InvalidArgument, NetworkError, Unsupported


class FakeNft:
    """Stands in for ``port_guard._run``: keeps table names, answers like nft does."""

    def __init__(self, tables: list[str] | None = None) -> None:
        self.tables: list[str] = list(tables or [])
        self.scripts: list[str] = []
        self.fail_with: str | None = None

    def __call__(self, script: str) -> str:
        self.scripts.append(script)
        if self.fail_with is not None:
            raise pg._NftFailed(self.fail_with)
        first = script.splitlines()[0].split()
        if first[:3] == ["list", "tables", "inet"]:
            return "".join(f"table inet {t}\n" for t in self.tables)
        name = first[3]
        if first[:3] == ["create", "table", "inet"]:
            if name in self.tables:
                raise pg._NftFailed("Error: Could not process rule: File exists")
            self.tables.append(name)
            return ""
        if first[:3] == ["delete", "table", "inet"]:
            if name not in self.tables:
                raise pg._NftFailed("Error: Could not process rule: No such file or directory")
            self.tables.remove(name)
            return ""
        raise AssertionError(f"unexpected script {script!r}")


@pytest.fixture
def nft(monkeypatch: pytest.MonkeyPatch) -> FakeNft:
    fake = FakeNft()
    monkeypatch.setattr(pg, "_run", fake)
    return fake


# --- scripts --------------------------------------------------------------------------------


def test_install_script_ipv4_peer_rejects_all_ipv6() -> None:
    table = pg.table_name(4321, 77, 0)
    script = pg.install_script(table, 4321, pg.parse_allowed(["10.0.0.2"]), label="migration=ab12 lazy-pages")
    assert script.splitlines() == [
        'create table inet pymigrate_pg_4321_77_0 { comment "pymigrate page-server guard: migration=ab12 lazy-pages"; }',
        "add chain inet pymigrate_pg_4321_77_0 input { type filter hook input priority -10; policy accept; }",
        "add rule inet pymigrate_pg_4321_77_0 input tcp dport 4321 ip saddr != { 10.0.0.2 } reject with tcp reset",
        "add rule inet pymigrate_pg_4321_77_0 input meta nfproto ipv6 tcp dport 4321 reject with tcp reset",
    ]


def test_install_script_both_families() -> None:
    allowed = pg.parse_allowed(["fd00::2", "10.0.0.3", "10.0.0.2", "::1"])
    script = pg.install_script(pg.table_name(9, 1, 2), 9, allowed, label="x")
    rules = [line for line in script.splitlines() if line.startswith("add rule")]
    assert rules == [
        "add rule inet pymigrate_pg_9_1_2 input tcp dport 9 ip saddr != { 10.0.0.2, 10.0.0.3 } reject with tcp reset",
        "add rule inet pymigrate_pg_9_1_2 input tcp dport 9 ip6 saddr != { ::1, fd00::2 } reject with tcp reset",
    ]


def test_install_script_ipv6_peer_rejects_all_ipv4() -> None:
    script = pg.install_script(pg.table_name(80, 5, 0), 80, pg.parse_allowed(["fd00::2"]), label="")
    assert "meta nfproto ipv4 tcp dport 80 reject with tcp reset" in script
    assert "ip6 saddr != { fd00::2 }" in script


def test_label_cannot_break_out_of_the_comment() -> None:
    script = pg.install_script(pg.table_name(80, 5, 0), 80, pg.parse_allowed(["10.0.0.1"]), label='a"; flush ruleset\n\\x' + "y" * 300)
    first = script.splitlines()[0]
    assert first.count('"') == 2
    assert "\n" not in first and "\\" not in first
    assert len(script.splitlines()) == 4


def test_delete_script() -> None:
    assert pg.delete_script("pymigrate_pg_4321_77_0") == "delete table inet pymigrate_pg_4321_77_0\n"


# --- validation -------------------------------------------------------------------------------


def test_parse_allowed_normalizes() -> None:
    allowed = pg.parse_allowed(["::ffff:10.0.0.9", " 10.0.0.9", "fe80::1%eth0", "FD00::0002"])
    assert allowed == pg.Allowed(ipv4=("10.0.0.9",), ipv6=("fd00::2", "fe80::1"))


@pytest.mark.parametrize("bad", [[], ["10.0.0.0/24"], ["host-b"], ["10.0.0.256"], "10.0.0.1"])
def test_parse_allowed_rejects(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        pg.parse_allowed(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, 65536, -1, True, "80", 80.0])
def test_validate_port_rejects(bad: object) -> None:
    with pytest.raises(InvalidArgument, match="not a TCP port"):
        pg.validate_port(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [
        "pymigrate_pg_4321_77",
        "pymigrate_pg_4321_77_0x",
        "pymigrate_pg_0_77_0",
        "pymigrate_pg_123456_77_0",
        "pymigrate_pg_80_077_0",
        "other_pg_80_77_0",
        "pymigrate_pg_80_77_0; flush ruleset",
        "filter",
    ],
)
def test_foreign_table_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument):
        pg.validate_table(name)
    with pytest.raises(InvalidArgument):
        pg.delete_script(name)
    assert pg.table_owner(name) is None


def test_table_owner() -> None:
    assert pg.table_owner("pymigrate_pg_4321_77_3") == 77


def test_parse_tables_only_inet_guards() -> None:
    listing = (
        "table inet filter\n"
        "table ip pymigrate_pg_80_5_0\n"
        "table inet pymigrate_pg_80_5_0\n"
        "table inet pymigrate_pg_80_5_0x\n"
        "table inet CRIU\n"
    )
    assert pg.parse_tables(listing) == ["pymigrate_pg_80_5_0"]


# --- the guard against a fake nft -----------------------------------------------------------


def test_guard_installs_and_removes_once(nft: FakeNft) -> None:
    with pg.guard_port(4321, ["10.0.0.2"], label="t") as guard:
        assert guard.table.startswith(f"pymigrate_pg_4321_{os.getpid()}_")
        assert nft.tables == [guard.table]
        assert guard.active and guard.install_ms >= 0
    assert nft.tables == [] and not guard.active
    guard.remove()
    assert sum(s.startswith("delete") for s in nft.scripts) == 1


def test_two_guards_same_port_get_distinct_tables(nft: FakeNft) -> None:
    a = pg.guard_port(4321, ["10.0.0.2"], label="a")
    b = pg.guard_port(4321, ["10.0.0.3"], label="b")
    assert a.table != b.table and sorted(nft.tables) == sorted([a.table, b.table])
    a.remove()
    assert nft.tables == [b.table]
    b.remove()


def test_guard_skips_a_name_a_stale_table_holds(nft: FakeNft, monkeypatch: pytest.MonkeyPatch) -> None:
    import itertools

    monkeypatch.setattr(pg, "_counter", itertools.count(5))
    stale = pg.table_name(4321, os.getpid(), 5)
    nft.tables.append(stale)
    guard = pg.guard_port(4321, ["10.0.0.2"], label="t")
    assert guard.table == pg.table_name(4321, os.getpid(), 6)
    guard.remove()
    assert nft.tables == [stale]  # never touched


def test_guard_error_names_port_and_reason(nft: FakeNft) -> None:
    nft.fail_with = "Error: Could not process rule: Operation not supported\ncreate table ..."
    with pytest.raises(NetworkError, match=r"port 4321 \(mig-1\).*Operation not supported") as info:
        pg.guard_port(4321, ["10.0.0.2"], label="mig-1")
    assert "\n" not in info.value.message


def test_remove_of_a_vanished_table_counts_as_removed(nft: FakeNft) -> None:
    guard = pg.guard_port(4321, ["10.0.0.2"], label="t")
    nft.tables.clear()
    guard.remove()
    assert not guard.active


def test_failed_remove_keeps_the_guard_active(nft: FakeNft) -> None:
    guard = pg.guard_port(4321, ["10.0.0.2"], label="t")
    nft.fail_with = "Error: Could not process rule: Device or resource busy"
    with pytest.raises(NetworkError, match=f"port 4321.*{guard.table}.*busy"):
        guard.remove()
    assert guard.active
    nft.fail_with = None
    guard.remove()
    assert not guard.active and nft.tables == []


def test_bad_arguments_install_nothing(nft: FakeNft) -> None:
    with pytest.raises(InvalidArgument):
        pg.guard_port(70000, ["10.0.0.2"], label="t")
    with pytest.raises(InvalidArgument):
        pg.guard_port(80, [], label="t")
    assert nft.scripts == []


def test_sweep_removes_only_dead_owners(nft: FakeNft) -> None:
    me = os.getpid()
    nft.tables = ["pymigrate_pg_80_111_0", "pymigrate_pg_81_222_0", f"pymigrate_pg_82_{me}_0", "pymigrate_pg_83_111_4"]
    removed = pg.sweep_stale(is_alive=lambda pid: pid == 222)
    assert removed == ["pymigrate_pg_80_111_0", "pymigrate_pg_83_111_4"]
    assert nft.tables == ["pymigrate_pg_81_222_0", f"pymigrate_pg_82_{me}_0"]


def test_sweep_never_asks_about_its_own_pid(nft: FakeNft) -> None:
    nft.tables = [f"pymigrate_pg_82_{os.getpid()}_0"]
    assert pg.sweep_stale(is_alive=lambda pid: False) == []
    assert nft.tables == [f"pymigrate_pg_82_{os.getpid()}_0"]


def test_sweep_tolerates_a_concurrent_sweeper(nft: FakeNft, monkeypatch: pytest.MonkeyPatch) -> None:
    nft.tables = ["pymigrate_pg_80_111_0"]
    real = pg._delete

    def racing_delete(name: str) -> bool:
        nft.tables.remove(name)  # the other sweeper was faster
        return real(name)

    monkeypatch.setattr(pg, "_delete", racing_delete)
    assert pg.sweep_stale(is_alive=lambda pid: False) == []


def test_pid_alive() -> None:
    assert pg.pid_alive(os.getpid())
    assert not pg.pid_alive(2**22 + 1)  # above pid_max's ceiling (4194304)


def test_no_backend_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg, "_library", lambda: None)
    monkeypatch.setattr(pg.shutil, "which", lambda name: None)
    with pytest.raises(Unsupported, match="nftables port guard"):
        pg.guard_port(4321, ["10.0.0.2"], label="t")
    assert pg.available() is False
    assert pg.backend() == "none"
