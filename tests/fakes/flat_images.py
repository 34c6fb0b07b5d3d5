"""An image store holding one flat image (no layers), as the migration code sees it: a migration
pushes it as a raw tar (``export_stream``), optionally failing part-way."""

from __future__ import annotations

import types
from typing import Any


class FlatImages:
    def __init__(self) -> None:
        self.fail: BaseException | None = None

    def has_digest(self, digest: str) -> bool:
        return True

    def get(self, digest: str) -> Any:
        return types.SimpleNamespace(digest=digest, layers=())

    def export_stream(self, digest: str, sink: Any) -> None:
        sink.write(b"image-tar " * 1000)
        if self.fail is not None:
            raise self.fail
