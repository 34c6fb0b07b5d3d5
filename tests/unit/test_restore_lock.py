"""runtime/restore_lock.py without the kernel: which checkpoints get the loopback lock (CRIU's
tcp-stream images with not-sent data), and that a restore's handler takes it off at pre-resume."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from runtime import restore_lock, restore_start

pytest.importorskip("pycriu")


def _tcp_stream(path: Path, unsq_len: int) -> None:
    from runtime.criu import _pycriu_module

    magic = _pycriu_module("images/magic")
    pb = _pycriu_module("images/tcp_stream_pb2")
    entry = pb.tcp_stream_entry(inq_len=0, inq_seq=1, outq_len=111, outq_seq=2, opt_mask=0, snd_wscale=7,
                                mss_clamp=65495, unsq_len=unsq_len)
    raw = entry.SerializeToString()
    queues = b"\x00\x01" * 60  # the socket's queues follow the entry raw, as CRIU writes them
    path.write_bytes(struct.pack("<II", magic.by_name["IMG_COMMON"], magic.by_name["TCP_STREAM"]) + struct.pack("<I", len(raw))
                     + raw + queues)


def test_not_sent_data_asks_for_the_lock(tmp_path: Path) -> None:
    assert not restore_lock.unsent_tcp_data(tmp_path)  # no TCP stream at all
    _tcp_stream(tmp_path / "tcp-stream-1.img", 0)
    assert not restore_lock.unsent_tcp_data(tmp_path)
    (tmp_path / "tcp-stream-3.img").write_bytes(b"\x01")  # unreadable: no lock, no error
    assert not restore_lock.unsent_tcp_data(tmp_path)
    _tcp_stream(tmp_path / "tcp-stream-2.img", 2)
    assert restore_lock.unsent_tcp_data(tmp_path)


def test_the_handler_unlocks_at_pre_resume_then_passes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(restore_lock, "unlock", lambda netns: calls.append(f"unlock {netns}") or True)
    handler = restore_start._unlocking(lambda script, pid: calls.append(script) is None, "/ns")
    assert handler("setup-namespaces", 1) and handler(restore_start.LINK_UP_AT, 1)
    assert calls == ["setup-namespaces", "unlock /ns", restore_start.LINK_UP_AT]
    assert restore_start._unlocking(None, "/ns")(restore_start.LINK_UP_AT, 1)
