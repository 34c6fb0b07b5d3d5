"""The real-server suite's own parts that need no root: image cache keying and reuse, error-line
extraction, the memcached client against a local socket server. Run by plain ``pytest``."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.realworld import client, debian_image
from tests.realworld.lab import first_error_line, incident_cause


def test_image_key_follows_the_build_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "make-debian-image.sh"
    script.write_text("PACKAGES=(postgresql)\n")
    monkeypatch.setattr(debian_image, "BUILD_SCRIPT", script)
    keys = [debian_image.image_key()]
    assert debian_image.image_key() == keys[0], "the same script gives the same key"
    script.write_text("PACKAGES=(postgresql nginx)\n")
    keys.append(debian_image.image_key())
    monkeypatch.setattr(debian_image, "BUILDER_VERSION", "next")
    keys.append(debian_image.image_key())
    assert len(set(keys)) == 3, keys


def test_a_cached_tar_is_reused_and_a_missing_one_is_built_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMIGRATE_TEST_CACHE", str(tmp_path / "cache"))
    builds: list[Path] = []

    def fake_build(tar: Path) -> None:  # stands in for debootstrap: writes the tar the script would
        builds.append(tar)
        tar.write_bytes(b"tar")

    monkeypatch.setattr(debian_image, "_build", fake_build)
    stale = tmp_path / "cache" / "debian-bookworm-0000000000000000.tar"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    tar, build_s = debian_image.debian_image_tar()
    assert builds == [tar] and build_s is not None
    assert not stale.exists(), "an image of another key is removed after a build"
    again, build_s = debian_image.debian_image_tar()
    assert again == tar and build_s is None and builds == [tar]


def test_first_error_line_prefers_json_errors_then_error_lines() -> None:
    assert first_error_line('{"error": {"message": "cannot restore x: boom", "type": "CriuError"}}') == "cannot restore x: boom"
    text = "(00.01) net: Lock network\n(00.02) Error (criu/mount.c:1891): mnt: Can't parse 5's mountinfo\nhint: run check"
    assert first_error_line(text) == "(00.02) Error (criu/mount.c:1891): mnt: Can't parse 5's mountinfo"
    assert first_error_line("\n  just this\n") == "just this"


def test_incident_cause_reads_the_exception_line_from_the_daemon_log(tmp_path: Path) -> None:
    (tmp_path / "daemon.log").write_text(
        "ERROR internal error in Migrate (incident 0123456789ab)\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "    raise KeyError('page_server')\n"
        "KeyError: 'page_server'\n"
    )
    host = SimpleNamespace(workdir=tmp_path, letter="a")
    message = "internal error in the pymigrate daemon (incident 0123456789ab, see its log)"
    assert incident_cause([host], message) == "host a daemon: KeyError: 'page_server'"  # type: ignore[list-item]
    assert incident_cause([host], "no incident here") == ""  # type: ignore[list-item]


def _memcached_like(server: socket.socket, store: dict[bytes, bytes], drop_after: int | None) -> None:
    conn, _ = server.accept()
    buf, served = b"", 0
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            while b"\r\n" in buf:
                line, _, rest = buf.partition(b"\r\n")
                if line.startswith(b"set "):
                    key, length = line.split()[1], int(line.split()[4])
                    if len(rest) < length + 2:
                        break
                    store[key], buf = rest[:length], rest[length + 2 :]
                    served += 1
                    if drop_after is not None and served > drop_after:
                        return  # the connection ends: the client must say so
                    conn.sendall(b"STORED\r\n")
                else:
                    buf = rest
                    keys = line.split()[1:]
                    conn.sendall(b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(store[k]), store[k]) for k in keys if k in store) + b"END\r\n")


@pytest.mark.parametrize("drop_after", [None, 3])
def test_memcached_client_verifies_every_key_and_notices_a_closed_connection(drop_after: int | None) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    store: dict[bytes, bytes] = {}
    thread = threading.Thread(target=_memcached_like, args=(server, store, drop_after), daemon=True)
    thread.start()
    c = client.Memcached("127.0.0.1", server.getsockname()[1])
    try:
        if drop_after is None:
            for i in range(1, 251):
                c.request(i)
            assert c.verify(250) == {"verified": "250 keys"}
            del store[b"rw:17"]
            with pytest.raises(client.ClientError, match="get rw:1..rw:100"):
                c.verify(250)
        else:
            with pytest.raises(client.ClientError, match="closed the connection"):
                for i in range(1, 10):
                    c.request(i)
    finally:
        c.sock.close()
        server.close()
