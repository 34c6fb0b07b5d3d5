"""Container users: USER[:GROUP] syntax, passwd/group parsing of untrusted files, runc's
resolution rules, the safe read, the capability and id order, and how a failed lookup reaches
the caller (a typed error through the init's error pipe)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime import capabilities, users
from runtime.errors import InvalidArgument
from runtime.process import _error_from, container_env, with_home
from runtime.syscalls import PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS
from runtime.users import Credentials, GroupEntry, UserSpec, parse_group, parse_passwd, parse_user, resolve
from tests.fakes.syscalls import FakeSyscalls

PASSWD = b"""\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App,,,:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = b"""\
root:x:0:
wheel:x:10:root,app
app:x:1000:
staff:x:50:app
nogroup:x:65534:
"""


@pytest.mark.parametrize("text,spec", [
    ("", UserSpec()),
    ("nobody", UserSpec("nobody")),
    ("1234:5678", UserSpec("1234", "5678")),
    ("app:staff", UserSpec("app", "staff")),
    ("svc$", UserSpec("svc$")),
    ("0", UserSpec("0")),
])
def test_parse_user(text: str, spec: UserSpec) -> None:
    assert parse_user(text) == spec


@pytest.mark.parametrize("text", [":1000", "app:", "a b", "a/b", "app:staff:x", "-app", "2147483648", "x:4294967295",
                                  "a" * 300, "ro\0ot", "app\n"])
def test_parse_user_refuses(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid"):
        parse_user(text)


def test_passwd_and_group_parsing_skips_what_is_not_an_entry() -> None:
    data = (b"# comment\n\n+nis::0:0:::\n-gone\nshort:x:1\nbad:x:one:1::/h:/s\nneg:x:-1:0::/:/s\n"
            b"big:x:9999999999:0::/:/s\n:x:5:5::/:/s\nok:x:7:8\nfull:x:9:9:g:/home/full:/bin/sh:extra\n\xff\xfe:x:3:3::/:/s\n")
    entries = parse_passwd(data)
    assert [(e.name, e.uid, e.gid, e.home) for e in entries][:2] == [("ok", 7, 8, ""), ("full", 9, 9, "/home/full")]
    assert {e.name for e in entries} == {"ok", "full", "\ufffd\ufffd"}  # undecodable names never match a user's
    groups = parse_group(b"g:x:5:a, b,,c\nnomembers:x:6\nbad:x:x:a\n:x:7:\n")
    assert groups == [GroupEntry("g", 5, ("a", "b", "c")), GroupEntry("nomembers", 6, ())]


PW, GR = parse_passwd(PASSWD), parse_group(GROUP)


@pytest.mark.parametrize("text,creds", [
    # default: root with its entry's home and the groups that list it
    ("", Credentials(0, 0, (10,), "/root")),
    # a name: its uid, primary gid, home; supplementary groups list it by name
    ("app", Credentials(1000, 1000, (10, 50), "/home/app")),
    ("nobody", Credentials(65534, 65534, (), "/nonexistent")),
    # a number is a uid even when a user has that number as name; with an entry it is that entry
    ("1000", Credentials(1000, 1000, (10, 50), "/home/app")),
    # a number without an entry: gid 0 and home / (Docker's defaults)
    ("1234", Credentials(1234, 0, (), "/")),
    ("1234:5678", Credentials(1234, 5678, (), "/")),
    # an explicit group replaces the primary gid and drops the supplementary ones
    ("app:staff", Credentials(1000, 50, (), "/home/app")),
    ("app:65534", Credentials(1000, 65534, (), "/home/app")),
    ("0:5678", Credentials(0, 5678, (), "/root")),
])
def test_resolve(text: str, creds: Credentials) -> None:
    assert resolve(parse_user(text), PW, GR) == creds


def test_first_entry_wins_and_root_without_files() -> None:
    twice = parse_passwd(b"app:x:1:1::/first:/s\napp:x:2:2::/second:/s\n")
    assert resolve(UserSpec("app"), twice, []).uid == 1
    assert resolve(UserSpec(), [], []) == users.ROOT == Credentials(0, 0, (), "/root")


@pytest.mark.parametrize("text,what", [("ghost", "user ghost"), ("app:ghosts", "group ghosts")])
def test_unknown_names_are_refused_with_a_hint(text: str, what: str) -> None:
    with pytest.raises(InvalidArgument, match=f"unable to find {what}: no matching entry in the container's /etc/") as info:
        resolve(parse_user(text), PW, GR)
    assert info.value.hint and "numeric" in info.value.hint


def db(tmp_path: Path, passwd: bytes | None = PASSWD, group: bytes | None = GROUP) -> tuple[str, str]:
    for name, data in (("passwd", passwd), ("group", group)):
        if data is not None:
            (tmp_path / name).write_bytes(data)
    return str(tmp_path / "passwd"), str(tmp_path / "group")


def test_lookup_reads_the_files(tmp_path: Path) -> None:
    assert users.lookup("app", *db(tmp_path)) == Credentials(1000, 1000, (10, 50), "/home/app")


def test_missing_files_are_empty_databases(tmp_path: Path) -> None:
    paths = db(tmp_path, None, None)
    assert users.lookup("", *paths) == users.ROOT
    assert users.lookup("1234:5678", *paths) == Credentials(1234, 5678, (), "/")
    with pytest.raises(InvalidArgument, match="unable to find user app"):
        users.lookup("app", *paths)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    passwd, group = db(tmp_path, None)
    os.mkfifo(passwd)  # no writer: a blocking open would hang the container's start
    with pytest.raises(InvalidArgument, match="cannot look up app in the container's .*passwd: not a regular file") as info:
        users.lookup("app", passwd, group)
    assert info.value.hint == "use numeric ids (-u UID[:GID])"
    # numbers and the default need no name: the unreadable file counts as empty
    assert users.lookup("1000:1000", passwd, group) == Credentials(1000, 1000, (), "/")
    assert users.lookup("", passwd, group).uid == 0


def test_a_huge_or_odd_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(users, "MAX_DB_BYTES", 100)
    passwd, group = db(tmp_path, PASSWD * 10)
    with pytest.raises(InvalidArgument, match="larger than 100 bytes"):
        users.lookup("app", passwd, group)
    (tmp_path / "passwd").unlink()
    (tmp_path / "passwd").mkdir()
    with pytest.raises(InvalidArgument, match="passwd"):
        users.lookup("app", passwd, group)


def test_a_non_root_user_ends_with_no_capabilities_and_ids_change_in_order() -> None:
    sys = FakeSyscalls()
    capabilities.drop_privileges(sys, cap_last=40, creds=Credentials(1000, 50, (10, 50), "/home/app"))
    names = sys.names()
    last_drop = max(i for i, c in enumerate(sys.calls) if c[0] == "prctl" and c[1] == PR_CAPBSET_DROP)
    # the bounding set is cut while CAP_SETPCAP is there; groups and gid need CAP_SETGID, so before the uid
    assert last_drop < names.index("setgroups") < names.index("setresgid") < names.index("setresuid") < names.index("capset")
    assert ("setgroups", (10, 50)) in sys.calls and ("setresgid", 50) in sys.calls and ("setresuid", 1000) in sys.calls
    assert ("capset", 0, 0, 0) in sys.calls  # inheritable too (setresuid keeps it)
    assert sys.calls[-1] == ("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def test_root_keeps_the_container_set_and_gets_its_own_groups() -> None:
    sys = FakeSyscalls()
    capabilities.drop_privileges(sys, cap_last=40)
    assert ("setgroups", ()) in sys.calls and ("setresuid", 0) in sys.calls  # never the host's groups
    assert ("capset", 0xA80425FB, 0xA80425FB, 0xA80425FB) in sys.calls


def test_an_unknown_user_crosses_the_error_pipe_as_invalid_argument() -> None:
    exc = _error_from(b"125 cannot set up container abc: unable to find user ghost\0InvalidArgument\0give a number")
    assert isinstance(exc, InvalidArgument)
    assert (exc.message, exc.hint, exc.exit_code) == ("cannot set up container abc: unable to find user ghost", "give a number", 125)  # type: ignore[attr-defined]
    plain = _error_from(b"127 container command not found: nope")
    assert type(plain).__name__ == "ContainerError" and plain.exit_code == 127  # type: ignore[attr-defined]


def test_home_comes_from_the_user_unless_set() -> None:
    env = container_env(("A=1",), "h")
    assert not any(e.startswith("HOME=") for e in env)
    assert with_home(env, "/home/app")[-1] == "HOME=/home/app"
    assert with_home(container_env(("HOME=/mine",), "h"), "/home/app").count("HOME=/mine") == 1
    assert "HOME=/home/app" not in with_home(container_env(("HOME=/mine",), "h"), "/home/app")
