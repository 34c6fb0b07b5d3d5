"""Following a zstd stream's frames (RFC 8878 section 3.1) as its compressed bytes are read.

python-zstandard's stream reader ends quietly where its input ends, and a tar cut at a member
boundary still parses: a truncated ``.tar.zst`` would read as a smaller valid archive. Watching
the frame structure (magic, descriptor, block headers, checksum) without decompressing tells a
complete stream from a cut one for the price of one header parse per block (<= 128 KiB).
Used by runtime/tarsafe.py (image tars) and migrate/interop/foreign.py (podman/CRI-O archives).
"""

from __future__ import annotations

import io
from typing import Any, BinaryIO


class ZstdFrameError(ValueError):
    """The bytes are not zstd frames (a bad magic, a reserved block type)."""


class ZstdFrames:
    """The frame structure of the compressed bytes fed so far; ``complete()``: they end between frames."""

    _SKIPPABLE = range(0x184D2A50, 0x184D2A60)
    _MAGIC = 0xFD2FB528

    def __init__(self) -> None:
        self.buf = bytearray()
        self.skip = 0  # content bytes to pass over (block contents, skippable frames)
        self.state = "magic"
        self.need = 4
        self.checksum = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.skip:
                n = min(self.skip, len(view))
                self.skip -= n
                view = view[n:]
                continue
            take = self.need - len(self.buf)
            self.buf += view[:take]
            view = view[take:]
            if len(self.buf) == self.need:
                value = int.from_bytes(self.buf, "little")
                self.buf.clear()
                self._step(value)

    def _step(self, value: int) -> None:
        state = self.state
        if state == "magic":
            if value in self._SKIPPABLE:
                self.state, self.need = "skippable", 4
            elif value == self._MAGIC:
                self.state, self.need = "descriptor", 1
            else:
                raise ZstdFrameError(f"corrupt zstd data: a frame starts with 0x{value:08x}, not zstd's magic")
        elif state == "skippable":
            self.skip, self.state, self.need = value, "magic", 4
        elif state == "descriptor":
            single = bool(value & 0x20)
            self.checksum = bool(value & 0x04)
            fcs = (1 if single else 0, 2, 4, 8)[value >> 6]
            rest = (0 if single else 1) + (0, 1, 2, 4)[value & 3] + fcs
            self.state, self.need = "block", 3
            self.skip = rest
        elif state == "block":
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            if kind == 3:
                raise ZstdFrameError("corrupt zstd data: a block of the reserved type")
            self.skip = 1 if kind == 1 else size
            if last:
                self.state, self.need = ("checksum", 4) if self.checksum else ("magic", 4)
        else:  # checksum
            self.state, self.need = "magic", 4

    def complete(self) -> bool:
        return self.state == "magic" and not self.buf and not self.skip


class FrameTee(io.RawIOBase):
    """The raw stream, each byte read also shown to a ``ZstdFrames``."""

    def __init__(self, stream: BinaryIO, frames: ZstdFrames) -> None:
        self._stream = stream
        self._frames = frames

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        self._frames.feed(data)
        buffer[: len(data)] = data
        return len(data)
